//! What loading a plugin or running a step can end in.

use std::time::Duration;

use crate::wit::Error as PluginError;

/// One line of a step's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: &'static str,
    pub message: String,
}

/// How a step execution ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// `run` (or `undo`) returned ok; `outputs` is the step's JSON.
    Ok { outputs: String },
    /// The plugin returned its own error.
    Failed(PluginError),
    /// The step did not finish before its deadline.
    Timeout { after: Duration },
    /// The step asked for more memory than its cap.
    OutOfMemory { limit: usize },
    /// The guest trapped (panic, stack overflow, unreachable, oversized host call…).
    Trap { message: String },
    /// The step called the host for something its plan did not grant.
    Denied { message: String },
}

impl StepOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, StepOutcome::Ok { .. })
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        match self {
            StepOutcome::Ok { .. } => "ok".into(),
            StepOutcome::Failed(e) => format!("failed: {}", plugin_error_text(e)),
            StepOutcome::Timeout { after } => format!("timed out after {} ms", after.as_millis()),
            StepOutcome::OutOfMemory { limit } => {
                format!("out of memory (limit {} MiB)", limit >> 20)
            }
            StepOutcome::Trap { message } => format!("trapped: {message}"),
            StepOutcome::Denied { message } => format!("denied: {message}"),
        }
    }
}

pub fn plugin_error_text(e: &PluginError) -> String {
    match e {
        PluginError::Denied(s) => format!("denied: {s}"),
        PluginError::NotFound(s) => format!("not found: {s}"),
        PluginError::Timeout(s) => format!("timeout: {s}"),
        PluginError::Invalid(s) => format!("invalid: {s}"),
        PluginError::Cancelled => "cancelled".into(),
        PluginError::Other(s) => s.clone(),
    }
}

/// A step execution: its outcome, its log and what it printed.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub outcome: StepOutcome,
    pub log: Vec<LogLine>,
    /// Log lines dropped because the step logged past its limit.
    pub log_dropped: usize,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Why a component could not become a plugin.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error("sha256 mismatch: the plan pins {expected}, the file is {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error(
        "imports `{import}`, which Lifeboat never grants (no file system, sockets or environment)"
    )]
    ForbiddenImport { import: String },
    #[error("built against Lifeboat plugin API {wanted}; this Lifeboat supports {supported}")]
    ApiVersion { wanted: String, supported: String },
    #[error("imports `{import}`, which the plan does not grant: {hint}")]
    NotGranted { import: String, hint: String },
    #[error("`describe` failed: {0}")]
    Describe(String),
}
