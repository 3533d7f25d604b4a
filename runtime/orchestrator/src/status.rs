//! The status document (`lifeboat_api::status`), computed: the rows of every group from what
//! is known of it (a running daemon's live state, or the repositories alone when no daemon
//! runs). The daemon and `lifeboat status` both build it here, so the two agree.

use std::path::Path;
use std::time::SystemTime;

use lifeboat_api::status::{GroupState, GroupStatus, LastPoint, Rpo, Status, VmStatus};
use lifeboat_plan::Inventory;
use lifeboat_replication::{GroupSpec, Manifest, Repository, Store};

/// A point, as status shows it.
pub fn last_point(m: &Manifest) -> LastPoint {
    LastPoint {
        id: m.seq,
        kind: m.kind.as_str().to_string(),
        captured_at: m.captured_at.clone(),
        captured_unix_ms: m.captured_unix_ms,
    }
}

/// The RPO of a point captured at `captured_unix_ms` (none: no point).
pub fn rpo_of(last: Option<&LastPoint>, threshold: std::time::Duration, now: SystemTime) -> Rpo {
    let now_ms = lifeboat_replication::clock::unix_ms(now);
    let seconds = last.map(|p| now_ms.saturating_sub(p.captured_unix_ms) as f64 / 1000.0);
    Rpo::new(seconds, threshold.as_secs_f64())
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
            state: live.state,
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
    pub state: GroupState,
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
            state: GroupState::Unknown,
            ..GroupRuntime::default()
        };
        match last_and_damaged(inventory, base, group).await {
            Ok((last, damaged)) => {
                live.last_point = last.as_ref().map(last_point);
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
        unprotected_domains: unprotected_domains(inventory).await,
        hydrating: Vec::new(),
    }
}

/// The domains on the hosts of every `libvirt` site that no VM of the inventory protects (a VM
/// protects the domain its `domain` names, or the one named as the VM). A host that cannot be
/// reached is logged and skipped: the status of what is protected does not wait on it.
pub async fn unprotected_domains(
    inventory: &Inventory,
) -> Vec<lifeboat_api::status::UnprotectedDomain> {
    let mut out = Vec::new();
    for (site_name, site) in inventory.sites.iter() {
        if site.compute.value != lifeboat_plan::inventory::ComputeDriver::Libvirt {
            continue;
        }
        let uris: Vec<String> = site.hosts.iter().map(|h| h.value.clone()).collect();
        let found = match lifeboat_compute::libvirt::discover(&uris).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(site = site_name, error = %e, "cannot list the site's domains");
                continue;
            }
        };
        for d in found {
            let protected = inventory.vms.iter().any(|(name, vm)| {
                vm.site.value == site_name
                    && vm
                        .domain
                        .as_ref()
                        .map_or(name == d.spec.name, |x| x.value == d.spec.name)
            });
            if !protected {
                out.push(lifeboat_api::status::UnprotectedDomain {
                    site: site_name.to_string(),
                    host: d.host,
                    domain: d.spec.name,
                    state: d.state.as_str().into(),
                });
            }
        }
    }
    out
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
