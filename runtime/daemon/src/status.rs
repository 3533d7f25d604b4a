//! The status document: every protected VM and group, where it runs, its RPO against its
//! threshold, its last point, and, from a running daemon, its next cycle, last error and the
//! config's reload state. The daemon serves it (`GET /v1/status` on its socket); `lifeboat
//! status` prints it, asking the daemon when one runs (`fetch`) and computing it from the
//! repositories when none does (`from_repositories`). One type for both, so the two agree.

use std::path::Path;
use std::time::SystemTime;

use lifeboat_plan::Inventory;
use lifeboat_replication::points::Rpo;
use lifeboat_replication::{GroupSpec, Manifest, Repository, Store};
use serde::{Deserialize, Serialize};

/// `lifeboat status --output json` (see docs/json-output.md).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    /// Where the figures come from: `daemon` (a running daemon answered) or `repositories`.
    pub source: String,
    /// The daemon's own state, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonInfo>,
    pub vms: Vec<VmStatus>,
    pub groups: Vec<GroupStatus>,
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
    /// `idle` (waiting for its next cycle), `cycling`, `standby` (another writer holds the
    /// group's lease), `backoff` (after a failure), `starting`, `failed-over` (a failover took
    /// it to its target), `unprotected` (committed at `site`, not reprotected yet, or every VM
    /// disabled); `-` from the repositories.
    pub state: String,
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

/// A point, as status shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LastPoint {
    pub id: u64,
    pub kind: String,
    pub captured_at: String,
    pub captured_unix_ms: u64,
}

impl LastPoint {
    pub fn of(m: &Manifest) -> Self {
        Self {
            id: m.seq,
            kind: m.kind.as_str().to_string(),
            captured_at: m.captured_at.clone(),
            captured_unix_ms: m.captured_unix_ms,
        }
    }
}

/// The RPO of a point captured at `captured_unix_ms` (none: no point).
pub fn rpo_of(last: Option<&LastPoint>, threshold: std::time::Duration, now: SystemTime) -> Rpo {
    let now_ms = lifeboat_replication::clock::unix_ms(now);
    let seconds = last.map(|p| now_ms.saturating_sub(p.captured_unix_ms) as f64 / 1000.0);
    Rpo {
        seconds,
        threshold_seconds: threshold.as_secs_f64(),
        ok: seconds.is_some_and(|s| s <= threshold.as_secs_f64()),
    }
}

/// The threshold of VM `name`'s own policy, or the group's when the VM has none.
pub fn threshold_of(inventory: &Inventory, group: &GroupSpec, name: &str) -> std::time::Duration {
    inventory
        .vms
        .get(name)
        .and_then(|v| inventory.policies.get(&v.policy))
        .map_or(group.rpo_threshold, |p| p.rpo_threshold.value.0)
}

/// The rows of `groups`' VMs and the groups themselves, given each group's last point, state
/// and damaged points. Shared by the daemon and the repositories' view.
pub fn rows(
    inventory: &Inventory,
    groups: &[(GroupSpec, GroupRuntime)],
    now: SystemTime,
) -> (Vec<VmStatus>, Vec<GroupStatus>) {
    let mut vms = Vec::new();
    let mut out = Vec::new();
    for (group, live) in groups {
        for vm in &group.vms {
            vms.push(VmStatus {
                name: vm.name.clone(),
                group: group.name.clone(),
                site: group.source_site.clone(),
                target_site: group.target_site.clone(),
                policy: inventory
                    .vms
                    .get(&vm.name)
                    .map(|v| v.policy.value.clone())
                    .unwrap_or_default(),
                rpo: rpo_of(
                    live.last_point.as_ref(),
                    threshold_of(inventory, group, &vm.name),
                    now,
                ),
                last_point: live.last_point.clone(),
                damaged_points: live.damaged_points.clone(),
            });
        }
        out.push(GroupStatus {
            name: group.name.clone(),
            vms: group.vms.iter().map(|v| v.name.clone()).collect(),
            site: group.source_site.clone(),
            target_site: group.target_site.clone(),
            protected: group.protected,
            crash_interval_seconds: group.crash_interval.as_secs_f64(),
            rpo: rpo_of(live.last_point.as_ref(), group.rpo_threshold, now),
            last_point: live.last_point.clone(),
            state: live.state.clone(),
            next_cycle_at: live
                .next_cycle
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            writer: live.writer.clone(),
            last_error: live.last_error.clone(),
            failures: live.failures,
            failed_over_by: live.failed_over_by.clone(),
        });
    }
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (vms, out)
}

/// What is known of a group as it runs.
#[derive(Clone, Debug, Default)]
pub struct GroupRuntime {
    pub last_point: Option<LastPoint>,
    pub damaged_points: Vec<u64>,
    pub state: String,
    pub next_cycle: Option<SystemTime>,
    pub writer: Option<String>,
    pub last_error: Option<String>,
    pub failures: u32,
    pub failed_over_by: Option<String>,
}

/// The status computed from the repositories alone (no daemon runs). A group whose
/// repository cannot be read is reported in its row's `last_error`.
pub async fn from_repositories(inventory: &Inventory, base: &Path, groups: &[GroupSpec]) -> Status {
    let mut rows_in = Vec::new();
    for group in groups {
        let mut live = GroupRuntime {
            state: "-".into(),
            ..GroupRuntime::default()
        };
        match last_and_damaged(inventory, base, group).await {
            Ok((last, damaged)) => {
                live.last_point = last.as_ref().map(LastPoint::of);
                live.damaged_points = damaged;
            }
            Err(e) => live.last_error = Some(e.to_string()),
        }
        rows_in.push((group.clone(), live));
    }
    let (vms, groups) = rows(inventory, &rows_in, SystemTime::now());
    Status {
        source: "repositories".into(),
        daemon: None,
        vms,
        groups,
    }
}

/// The newest intact point of `group` and the numbers of its damaged ones.
pub async fn last_and_damaged(
    inventory: &Inventory,
    base: &Path,
    group: &GroupSpec,
) -> lifeboat_replication::Result<(Option<Manifest>, Vec<u64>)> {
    let site = inventory.sites.get(&group.target_site).ok_or_else(|| {
        lifeboat_replication::Error::failed(format!("unknown site `{}`", group.target_site))
    })?;
    let target = Store::open(&site.store.value, base)?;
    let Some(repo) = Repository::open_if_any(&target).await? else {
        // Nothing replicated there yet.
        return Ok((None, Vec::new()));
    };
    let (intact, damaged) = repo.points_and_damaged(&group.name).await?;
    Ok((
        intact.into_iter().next(),
        damaged.iter().map(|d| d.seq).collect(),
    ))
}
