//! The source site: its VMs recognised by their boot command, whether any still answers its
//! health probe, and the one way a group's point is taken there (`cycle`: hold the writers,
//! capture, release, commit), used by `lifeboat replicate`, by a planned failover's last cycle
//! and by the daemon to come. A failover checks the source (`check`) with every other refusal,
//! before anything changes; only then does a planned failover stop it (`hand_over`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_plan::plan::Operation;
use lifeboat_plan::{Inventory, Plan};
use lifeboat_replication::{AppMode, CycleOptions, CycleReport, GroupSpec, Progress, Store};

use crate::compute::{Compute, Handle, Launch, PauseVms};
use crate::error::{Error, Result};
use crate::runs::Environment;

/// Whether the source site lets a failover of `plan` go ahead, without changing anything.
/// `planned`: every source VM that answers its health probe must be one Lifeboat can stop (one
/// running as its boot command describes), else the last cycle would miss its writes.
/// `unplanned`: refuses a source that still answers (two copies of a VM would run) unless
/// `force`. A drill leaves the source alone. Returns the source VMs a planned failover stops.
pub async fn check(
    env: &Environment,
    plan: &Plan,
    op: Operation,
    force: bool,
) -> Result<Vec<Handle>> {
    match op {
        Operation::Planned => {
            let located = locate_source_vms(
                &env.inventory,
                &env.base,
                env.driver.as_ref(),
                &plan_vms(plan),
            )
            .await;
            if let Some((vm, probe)) = source_answering(env, plan).await
                && !located.iter().any(|h| h.vm == vm)
            {
                return Err(Error::Source(format!(
                    "source VM `{vm}` is still running ({probe} answers) but not as its boot command says, so Lifeboat cannot stop it: shut it down first, so the last cycle holds its every write"
                )));
            }
            Ok(located)
        }
        Operation::Unplanned => {
            if let Some((vm, probe)) = source_answering(env, plan).await
                && !force
            {
                return Err(Error::Source(format!(
                    "source VM `{vm}` still answers ({probe}): an unplanned failover now would run two copies of it; shut it down, fail over with --planned, or pass --force if the source is cut off from its users"
                )));
            }
            Ok(Vec::new())
        }
        _ => Ok(Vec::new()),
    }
}

/// A planned failover's hand-over, once every check passed: stop the source VMs `located`
/// (gracefully, then by force), make sure none still answers, and take the last point of
/// every group so the failover loses nothing.
pub async fn hand_over(env: &Environment, plan: &Plan, located: &[Handle]) -> Result<()> {
    for h in located {
        env.driver
            .stop(h, STOP_GRACE)
            .await
            .map_err(Error::Compute)?;
    }
    if let Some((vm, probe)) = source_answering(env, plan).await {
        return Err(Error::Source(format!(
            "source VM `{vm}` still answers ({probe}) after it was stopped: shut it down, then fail over again"
        )));
    }
    last_cycle(env, plan).await
}

/// How long a source VM may take to shut down before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The first of `plan`'s VMs whose health probe still answers at its source address, with the
/// probe: a source that is up.
pub async fn source_answering(env: &Environment, plan: &Plan) -> Option<(String, String)> {
    use crate::health::{Probe, check};
    for name in plan_vms(plan) {
        let Some(vm) = env.inventory.vms.get(name) else {
            continue;
        };
        let Some(health) = &vm.health else { continue };
        let value = |p: &str| source_value(name, vm, p);
        let probe = match (&health.tcp, &health.http) {
            (Some(t), _) => crate::template::fill(&t.value, &value).ok().map(Probe::Tcp),
            (None, Some(h)) => crate::template::fill(&h.value, &value)
                .ok()
                .map(Probe::Http),
            // A command probe runs here, not at the source: it says nothing about the source.
            (None, None) => None,
        };
        let Some(probe) = probe else { continue };
        let answered = tokio::time::timeout(Duration::from_secs(2), check(&probe, &env.base)).await;
        if matches!(answered, Ok(Ok(()))) {
            let what = match &probe {
                Probe::Tcp(a) => format!("tcp {a}"),
                Probe::Http(u) => format!("http {u}"),
                Probe::Command(c) => c.join(" "),
            };
            return Some((name.to_string(), what));
        }
    }
    None
}

/// A boot or health placeholder's value at VM `name`'s source site: its disks as the
/// inventory writes them, its own addresses.
fn source_value(name: &str, vm: &lifeboat_plan::inventory::Vm, p: &str) -> Option<String> {
    if let Some(d) = p.strip_prefix("disk.") {
        return vm.disks.get(d).map(|s| s.value.clone());
    }
    match p {
        "vm.name" => return Some(name.to_string()),
        "vm.site" => return Some(vm.site.value.clone()),
        _ => {}
    }
    let nic: usize = p.strip_prefix("nic")?.strip_suffix(".ip")?.parse().ok()?;
    vm.nics.get(nic)?.ip.as_ref().map(|ip| ip.value.to_string())
}

/// How VM `name` runs at its source site: its boot command filled with the inventory's own
/// values (disk paths as written, source addresses), from the inventory's folder.
pub fn source_launch(inventory: &Inventory, base: &Path, name: &str) -> Option<Launch> {
    let vm = inventory.vms.get(name)?;
    let boot = vm.boot.as_ref()?;
    let value = |p: &str| source_value(name, vm, p);
    let argv = boot
        .command
        .iter()
        .map(|c| crate::template::fill(&c.value, &value).ok())
        .collect::<Option<Vec<String>>>()?;
    Some(Launch {
        vm: name.to_string(),
        argv,
        dir: base.to_path_buf(),
        log: PathBuf::new(),
        key: String::new(),
    })
}

/// The source VMs of `vms` that are running as their boot command describes.
pub async fn locate_source_vms(
    inventory: &Inventory,
    base: &Path,
    driver: &dyn Compute,
    vms: &[&str],
) -> Vec<Handle> {
    let launches: Vec<Launch> = vms
        .iter()
        .filter_map(|name| source_launch(inventory, base, name))
        .collect();
    driver.locate(&launches).await
}

pub(crate) fn plan_vms(plan: &Plan) -> Vec<&str> {
    plan.groups
        .iter()
        .flat_map(|g| g.vms.iter().map(|v| v.value.as_str()))
        .collect()
}

/// The consistency groups that hold any of `vms`.
pub(crate) fn groups_of<'a>(env: &'a Environment, vms: &[&str]) -> Vec<&'a GroupSpec> {
    env.groups
        .iter()
        .filter(|g| g.vms.iter().any(|v| vms.contains(&v.name.as_str())))
        .collect()
}

/// A planned failover's last replication cycle of every group of `plan`'s VMs (their VMs shut
/// down), so the failover loses nothing.
async fn last_cycle(env: &Environment, plan: &Plan) -> Result<()> {
    for group in groups_of(env, &plan_vms(plan)) {
        cycle(
            &env.inventory,
            &env.base,
            env.driver.clone(),
            group,
            AppMode::Never,
            None,
        )
        .await
        .map_err(|e| {
            Error::replication(
                format!("last replication cycle of group `{}`", group.name),
                e,
            )
        })?;
    }
    Ok(())
}

/// One replication cycle of `group` at its source site: the group's VMs that run as their boot
/// command describes are held still for the cut (paused, under a guardian, never longer than
/// the policy's `max_pause`), the disks captured, the VMs released, the point committed.
pub async fn cycle(
    inventory: &Inventory,
    base: &Path,
    driver: Arc<dyn Compute>,
    group: &GroupSpec,
    app: AppMode,
    progress: Option<Arc<dyn Progress>>,
) -> lifeboat_replication::Result<CycleReport> {
    let site_store = |name: &str, cache: bool| {
        let site = inventory
            .sites
            .get(name)
            .ok_or_else(|| lifeboat_replication::Error::failed(format!("unknown site `{name}`")))?;
        if cache {
            Store::open_cache(&site.store.value, base)
        } else {
            Store::open(&site.store.value, base)
        }
    };
    let source = site_store(&group.source_site, true)?;
    let target = site_store(&group.target_site, false)?;
    let names: Vec<&str> = group.vms.iter().map(|v| v.name.as_str()).collect();
    let held = locate_source_vms(inventory, base, driver.as_ref(), &names).await;
    let held_names: Vec<String> = held.iter().map(|h| h.vm.clone()).collect();
    let cut: Option<Arc<dyn lifeboat_replication::Cut>> = if held.is_empty() {
        None
    } else {
        Some(Arc::new(PauseVms::new(driver, held, group.max_pause)))
    };
    let opts = CycleOptions {
        app,
        cut,
        max_pause: Some(group.max_pause),
        progress,
    };
    let mut report = lifeboat_replication::replicate(group, &source, &target, &opts).await?;
    if !held_names.is_empty() {
        report.notes.push(format!(
            "held {} still for the cut (paused)",
            held_names.join(", ")
        ));
    }
    Ok(report)
}
