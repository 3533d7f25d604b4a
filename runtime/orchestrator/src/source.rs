//! The source site as a failover sees it: its VMs recognised by their boot command (paused for
//! a cut, stopped by a planned failover), whether any still answers its health probe, and the
//! last replication cycle of a planned failover.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_plan::plan::Operation;
use lifeboat_plan::{Inventory, Plan};
use lifeboat_replication::{GroupSpec, Store};

use crate::compute::{Compute, Handle, Launch};
use crate::runs::Environment;

/// Gets the source site ready for a failover of `plan`. `planned`: stop the source VMs Lifeboat
/// recognises, refuse if any VM still answers its health probe at its source address (a VM
/// started some other way would go on writing after the last cycle), then run the last cycle.
/// `unplanned`: refuse a source that still answers (two copies of a VM would run) unless
/// `force`. A drill leaves the source alone. Returns the VMs it stopped.
pub async fn prepare(
    env: &Environment,
    plan: &Plan,
    op: Operation,
    force: bool,
) -> Result<Vec<Handle>, String> {
    let stopped = match op {
        Operation::Planned => stop_source_vms(env, plan, STOP_GRACE).await?,
        _ => Vec::new(),
    };
    if matches!(op, Operation::Planned | Operation::Unplanned)
        && let Some((vm, probe)) = source_answering(env, plan).await
    {
        if op == Operation::Planned {
            return Err(format!(
                "source VM `{vm}` is still running ({probe} answers): shut it down first, so the last cycle holds its every write"
            ));
        }
        if !force {
            return Err(format!(
                "source VM `{vm}` still answers ({probe}): an unplanned failover now would run two copies of it; shut it down, fail over with --planned, or pass --force if the source is cut off from its users"
            ));
        }
    }
    if op == Operation::Planned {
        last_cycle(env, plan).await?;
    }
    Ok(stopped)
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

/// A planned failover's first move: stop the plan's source VMs (those running as their boot
/// command describes), gracefully, then by force after `grace`. Returns those stopped.
pub async fn stop_source_vms(
    env: &Environment,
    plan: &Plan,
    grace: Duration,
) -> Result<Vec<Handle>, String> {
    let found = locate_source_vms(
        &env.inventory,
        &env.base,
        env.driver.as_ref(),
        &plan_vms(plan),
    )
    .await;
    for h in &found {
        env.driver.stop(h, grace).await?;
    }
    Ok(found)
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
pub async fn last_cycle(env: &Environment, plan: &Plan) -> Result<(), String> {
    for group in groups_of(env, &plan_vms(plan)) {
        let site = env
            .inventory
            .sites
            .get(&group.source_site)
            .ok_or_else(|| format!("no site `{}`", group.source_site))?;
        let source = Store::open_cache(&site.store.value, &env.base).map_err(|e| e.to_string())?;
        let target = env.site_store(&group.target_site)?;
        let opts = lifeboat_replication::CycleOptions {
            app: lifeboat_replication::AppMode::Never,
            ..Default::default()
        };
        lifeboat_replication::replicate(group, &source, &target, &opts)
            .await
            .map_err(|e| format!("last replication cycle of group `{}`: {e}", group.name))?;
    }
    Ok(())
}
