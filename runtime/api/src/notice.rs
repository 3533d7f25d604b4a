//! One event of the daemon's stream (`GET /v1/events`), as clients receive it.

use serde::{Deserialize, Serialize};

/// What a notice tells. Each is sent (and, in JSON, written) as its name, `cycle.committed`:
/// alert hooks subscribe to these names in the inventory (`on = ["rpo.breached"]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum NoticeKind {
    /// A group's cycle committed a point (each).
    #[serde(rename = "cycle.committed")]
    CycleCommitted,
    /// A group's cycle failed (each).
    #[serde(rename = "cycle.failed")]
    CycleFailed,
    /// A group's cycles started failing (the transition).
    #[serde(rename = "cycle.failing")]
    CycleFailing,
    /// A group's cycles succeed again (the transition).
    #[serde(rename = "cycle.recovered")]
    CycleRecovered,
    /// A VM's RPO went over its threshold.
    #[serde(rename = "rpo.breached")]
    RpoBreached,
    /// A VM's RPO is within its threshold again.
    #[serde(rename = "rpo.recovered")]
    RpoRecovered,
    #[serde(rename = "run.started")]
    RunStarted,
    #[serde(rename = "step.started")]
    StepStarted,
    #[serde(rename = "step.finished")]
    StepFinished,
    #[serde(rename = "step.failed")]
    StepFailed,
    #[serde(rename = "approval.waiting")]
    ApprovalWaiting,
    #[serde(rename = "approval.given")]
    ApprovalGiven,
    #[serde(rename = "run.progress")]
    RunProgress,
    #[serde(rename = "run.finished")]
    RunFinished,
    #[serde(rename = "run.failed")]
    RunFailed,
    #[serde(rename = "run.cleaned-up")]
    RunCleanedUp,
    #[serde(rename = "run.committed")]
    RunCommitted,
    /// The daemon stopped protecting groups a failover took.
    #[serde(rename = "protection.paused")]
    ProtectionPaused,
    /// The daemon protects those groups again.
    #[serde(rename = "protection.resumed")]
    ProtectionResumed,
    /// A reload applied.
    #[serde(rename = "config.reloaded")]
    ConfigReloaded,
    /// A reload was refused: the last good config keeps running.
    #[serde(rename = "config.rejected")]
    ConfigRejected,
    /// An alert hook ran.
    #[serde(rename = "alert.sent")]
    AlertSent,
    /// An alert hook failed.
    #[serde(rename = "alert.failed")]
    AlertFailed,
}

impl NoticeKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: &[NoticeKind] = &[
        NoticeKind::CycleCommitted,
        NoticeKind::CycleFailed,
        NoticeKind::CycleFailing,
        NoticeKind::CycleRecovered,
        NoticeKind::RpoBreached,
        NoticeKind::RpoRecovered,
        NoticeKind::RunStarted,
        NoticeKind::StepStarted,
        NoticeKind::StepFinished,
        NoticeKind::StepFailed,
        NoticeKind::ApprovalWaiting,
        NoticeKind::ApprovalGiven,
        NoticeKind::RunProgress,
        NoticeKind::RunFinished,
        NoticeKind::RunFailed,
        NoticeKind::RunCleanedUp,
        NoticeKind::RunCommitted,
        NoticeKind::ProtectionPaused,
        NoticeKind::ProtectionResumed,
        NoticeKind::ConfigReloaded,
        NoticeKind::ConfigRejected,
        NoticeKind::AlertSent,
        NoticeKind::AlertFailed,
    ];

    /// Its name: `cycle.committed`.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::CycleCommitted => "cycle.committed",
            NoticeKind::CycleFailed => "cycle.failed",
            NoticeKind::CycleFailing => "cycle.failing",
            NoticeKind::CycleRecovered => "cycle.recovered",
            NoticeKind::RpoBreached => "rpo.breached",
            NoticeKind::RpoRecovered => "rpo.recovered",
            NoticeKind::RunStarted => "run.started",
            NoticeKind::StepStarted => "step.started",
            NoticeKind::StepFinished => "step.finished",
            NoticeKind::StepFailed => "step.failed",
            NoticeKind::ApprovalWaiting => "approval.waiting",
            NoticeKind::ApprovalGiven => "approval.given",
            NoticeKind::RunProgress => "run.progress",
            NoticeKind::RunFinished => "run.finished",
            NoticeKind::RunFailed => "run.failed",
            NoticeKind::RunCleanedUp => "run.cleaned-up",
            NoticeKind::RunCommitted => "run.committed",
            NoticeKind::ProtectionPaused => "protection.paused",
            NoticeKind::ProtectionResumed => "protection.resumed",
            NoticeKind::ConfigReloaded => "config.reloaded",
            NoticeKind::ConfigRejected => "config.rejected",
            NoticeKind::AlertSent => "alert.sent",
            NoticeKind::AlertFailed => "alert.failed",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One event of the stream (`GET /v1/events`: the SSE `event` is `kind`, `id` is `id`, `data`
/// this document).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notice {
    pub id: u64,
    /// When it happened (RFC 3339).
    pub at: String,
    pub kind: NoticeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// One line for people.
    pub message: String,
    /// The details: for run events, the journal's event as `lifeboat runs show --output json`
    /// prints it in its timeline.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl Notice {
    /// A notice of `kind`, without an id or a time yet (the bus gives both).
    pub fn new(kind: NoticeKind, message: impl Into<String>) -> Self {
        Self {
            id: 0,
            at: String::new(),
            kind,
            group: None,
            run: None,
            plan: None,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }

    pub fn group(mut self, group: &str) -> Self {
        self.group = Some(group.to_string());
        self
    }

    pub fn run(mut self, run: &str) -> Self {
        self.run = Some(run.to_string());
        self
    }

    pub fn plan(mut self, plan: &str) -> Self {
        self.plan = Some(plan.to_string());
        self
    }

    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_written_and_read_as_its_name() {
        for kind in NoticeKind::ALL {
            let json = serde_json::to_string(kind).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(NoticeKind::parse(kind.as_str()), Some(*kind));
            assert_eq!(serde_json::from_str::<NoticeKind>(&json).ok(), Some(*kind));
        }
        assert_eq!(NoticeKind::parse("run.exploded"), None);
    }
}
