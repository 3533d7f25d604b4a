//! The status document: every protected VM and group, where it runs, its RPO against its
//! threshold, its last point, and, from a running daemon, its next cycle, last error and the
//! config's reload state. The daemon serves it (`GET /v1/status` on its socket); `lifeboat
//! status` prints it, asking the daemon when one runs and computing it from the repositories
//! when none does (`lifeboat_orchestrator::status`). One type for both, so the two agree.

use serde::{Deserialize, Serialize};

/// `lifeboat status --output json` (see docs/reference/json.md).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    /// Where the figures come from: `daemon` (a running daemon answered) or `repositories`.
    pub source: String,
    /// The daemon's own state, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonInfo>,
    pub vms: Vec<VmStatus>,
    pub groups: Vec<GroupStatus>,
    /// Domains on the hosts of `libvirt` sites that no VM of the inventory protects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unprotected_domains: Vec<UnprotectedDomain>,
    /// The disks of instant runs still filling behind their running VMs (a daemon's runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hydrating: Vec<Hydrating>,
}

/// A disk an instant run booted from the repository, filling behind its running VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hydrating {
    pub run: String,
    pub vm: String,
    pub disk: String,
    /// Bytes the image holds so far (QEMU's job offset) and the disk's size.
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Why it does not move, when it does not (the VM is not running, a paused job…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// A domain nothing protects, found on a host of a `libvirt` site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UnprotectedDomain {
    pub site: String,
    /// The host's libvirt URI.
    pub host: String,
    pub domain: String,
    /// `running`, `paused`, `shut off` or `other`.
    pub state: String,
}

impl Status {
    /// Any VM over its RPO threshold, or without a point yet.
    pub fn rpo_exceeded(&self) -> bool {
        self.vms.iter().any(|v| !v.rpo.ok)
    }
}

/// What a running daemon says about itself.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DaemonInfo {
    pub pid: u32,
    pub version: String,
    pub started_at: String,
    /// Every group's task has started and the config is loaded; false while stopping.
    pub ready: bool,
    pub config: ConfigState,
    /// The last GC and quick verify of each repository.
    pub maintenance: Vec<Maintenance>,
}

/// The config the daemon runs, and how its last reload went.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfigState {
    /// The inventory file.
    pub file: String,
    /// 1 at start, one more per applied reload.
    pub generation: u64,
    /// When the running config was loaded.
    pub loaded_at: String,
    /// The plans validated with it.
    pub plans: Vec<String>,
    pub last_reload: Option<Reload>,
}

/// One reload attempt.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reload {
    pub at: String,
    /// What asked for it: `watch` (a file changed) or `SIGHUP`.
    pub trigger: String,
    /// Applied; when false, the last good config keeps running.
    pub applied: bool,
    pub seconds: f64,
    /// Every problem of the rejected files, `file:line:column: error[rule]: message`.
    pub diagnostics: Vec<String>,
}

/// A repository's housekeeping, as last done.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Maintenance {
    pub site: String,
    /// Bytes of every object of the repository.
    pub repository_bytes: Option<u64>,
    pub last_gc_at: Option<String>,
    pub last_verify_at: Option<String>,
    /// Problems the last quick verify found (each is logged).
    pub verify_problems: usize,
    pub last_error: Option<String>,
}

/// One protected VM.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmStatus {
    pub name: String,
    pub group: String,
    /// The site the VM runs at, and the one that keeps its points.
    pub site: String,
    pub target_site: String,
    pub policy: String,
    pub rpo: Rpo,
    pub last_point: Option<LastPoint>,
    /// Points of the group whose manifest is damaged (from the repositories only).
    #[serde(default)]
    pub damaged_points: Vec<u64>,
}

/// One consistency group (a lone VM is its own).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupStatus {
    pub name: String,
    pub vms: Vec<String>,
    /// Where it runs now (after a committed failover, the other site), and the site its
    /// points go to.
    pub site: String,
    pub target_site: String,
    /// Whether it is replicated at all (see `state` `unprotected`).
    pub protected: bool,
    pub crash_interval_seconds: f64,
    /// Against the strictest threshold of its VMs' policies.
    pub rpo: Rpo,
    pub last_point: Option<LastPoint>,
    pub state: GroupState,
    /// When the next cycle starts (daemon only).
    pub next_cycle_at: Option<String>,
    /// The writer holding the lease while this daemon stands by.
    pub writer: Option<String>,
    /// The error of the last cycle, until one succeeds.
    pub last_error: Option<String>,
    /// Failed cycles in a row.
    pub failures: u32,
    /// The failover run that took the group to its target site: the daemon does not replicate
    /// it from its source until that run is cleaned up (state `failed-over`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_over_by: Option<String>,
}

/// What a group's protection is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GroupState {
    /// Its task is starting (or has not started yet).
    Starting,
    /// Waiting for its next cycle.
    Idle,
    Cycling,
    /// Another writer holds the group's lease; this daemon stands by.
    Standby,
    /// Waiting after a failed cycle.
    Backoff,
    /// A failover took it to its target: not replicated from its source until that run is
    /// cleaned up.
    FailedOver,
    /// Committed at `site`, not reprotected yet, or every VM disabled.
    Unprotected,
    /// Not known: the status was read from the repositories, with no daemon running.
    #[default]
    #[serde(rename = "-")]
    Unknown,
}

impl GroupState {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Starting => "starting",
            GroupState::Idle => "idle",
            GroupState::Cycling => "cycling",
            GroupState::Standby => "standby",
            GroupState::Backoff => "backoff",
            GroupState::FailedOver => "failed-over",
            GroupState::Unprotected => "unprotected",
            GroupState::Unknown => "-",
        }
    }
}

impl std::fmt::Display for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A point, as status shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LastPoint {
    pub id: u64,
    pub kind: String,
    pub captured_at: String,
    pub captured_unix_ms: u64,
}

/// A VM's or group's recovery point objective, now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rpo {
    /// Now minus the capture instant of the newest point; `None` without points.
    pub seconds: Option<f64>,
    pub threshold_seconds: f64,
    /// Within the threshold.
    pub ok: bool,
}

impl Rpo {
    /// The RPO of a point `seconds` old (none: no point) against `threshold_seconds`.
    pub fn new(seconds: Option<f64>, threshold_seconds: f64) -> Self {
        Self {
            seconds,
            threshold_seconds,
            ok: seconds.is_some_and(|s| s <= threshold_seconds),
        }
    }
}
