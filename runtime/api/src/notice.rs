//! One event of the daemon's stream (`GET /v1/events`), as clients receive it.

use serde::{Deserialize, Serialize};

/// One event of the stream (`GET /v1/events`: the SSE `event` is `kind`, `id` is `id`, `data`
/// this document).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notice {
    pub id: u64,
    /// When it happened (RFC 3339).
    pub at: String,
    /// `cycle.committed`, `cycle.failed` (each), `cycle.failing` and `cycle.recovered` (the
    /// transitions), `rpo.breached`, `rpo.recovered`, `run.started`, `step.started`,
    /// `step.finished`, `step.failed`, `approval.waiting`, `approval.given`, `run.progress`,
    /// `run.finished`, `run.failed`, `run.cleaned-up`, `run.committed`, `protection.paused`,
    /// `protection.resumed`, `config.reloaded`, `config.rejected`, `alert.sent`, `alert.failed`.
    pub kind: String,
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
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            id: 0,
            at: String::new(),
            kind: kind.to_string(),
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
