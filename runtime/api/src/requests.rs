//! The daemon API's request bodies, query parameters and answers (its errors are in
//! [`crate::error`]). `lifeboat api openapi` prints the whole contract.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::notice::Notice;

/// A plan in the plans folder, validated with the inventory as the files are now.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanInfo {
    /// What the API and the CLI call it: the file name without `.toml`.
    pub name: String,
    pub file: String,
    pub valid: bool,
    /// Every problem, `file:line:column: error[rule]: message`.
    pub problems: Vec<String>,
    /// Part of the config the daemon runs (the last reload that applied).
    pub loaded: bool,
    /// The plan's open run (a drill, or a failover not yet committed or cleaned up).
    pub open_run: Option<String>,
}

/// `POST /v1/plans/{plan}/failover`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverBody {
    /// `test` (a drill in the test network), `planned` (stop the source, replicate once more,
    /// zero loss), `unplanned` (the source is gone) or `failback` (a planned failover of the
    /// plan reversed, once reprotected).
    pub operation: String,
    /// A point kind (`latest`, `latest-app-consistent`), a number, or `GROUP/NUMBER`.
    #[serde(default)]
    pub point: Option<String>,
    /// An unplanned failover although a source VM still answers.
    #[serde(default)]
    pub force: bool,
    /// With `test`: a drill of the failback (the plan reversed, in its `failback_test`
    /// network), once the plan's groups are reprotected.
    #[serde(default)]
    pub reverse: bool,
    /// Boot the target's VMs straight from the repository (`true`) or restore first
    /// (`false`); absent: the plan's `instant`, else on at a `qemu` target and at a `libvirt`
    /// one whose hosts are the daemon's machine.
    #[serde(default)]
    pub instant: Option<bool>,
}

/// A run the daemon started and drives.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Started {
    pub run: String,
    pub plan: String,
    pub operation: String,
    /// The source VMs a planned failover stopped before it started.
    pub source_stopped: Vec<String>,
}

/// One run, as `lifeboat runs list --output json` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RunSummary {
    pub id: String,
    pub plan: String,
    pub operation: String,
    pub status: String,
    pub started_unix_ms: i64,
    pub rto_seconds: Option<f64>,
    /// The process driving it now, if one does.
    pub driver_pid: Option<u32>,
}

/// `POST /v1/runs/{run}/approve`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// Who approves (recorded in the journal); `api` when not given.
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Approval {
    pub run: String,
    /// What the step asked.
    pub message: String,
    pub by: String,
}

/// `POST /v1/runs/{run}/retry`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// Skip the failed step instead of running it again.
    #[serde(default)]
    pub skip: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Retried {
    pub run: String,
    /// The step marked skipped, for a skip.
    pub skipped: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReplicateQuery {
    /// Answer when the cycle has committed (or failed), not when it was asked for.
    #[serde(default)]
    pub wait: bool,
}

/// A cycle asked for, and with `wait`, how it went.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Replicated {
    pub group: String,
    /// With `wait`: the `cycle.committed` event (its `data.report` is the cycle's report, as
    /// `lifeboat replicate --output json` prints it).
    pub cycle: Option<Notice>,
}

#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Send the kept events after this id first (as the `Last-Event-ID` header does); `0`: every
    /// kept event.
    pub after: Option<u64>,
    /// Only the events of this run.
    pub run: Option<String>,
    /// Only the events of this group.
    pub group: Option<String>,
}
