//! A site as its running VMs are seen from outside Lifeboat's runs: each recognised by its boot
//! command filled with the inventory's own values, and the one way a group's point is taken
//! there (`cycle`: hold the writers, capture, release, commit). `lifeboat replicate`, a planned
//! failover's last cycle and the daemon all take points through `cycle`, each under the group's
//! writer lease.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_plan::Inventory;
use lifeboat_replication::lease::{Holder, Lease};
use lifeboat_replication::{AppMode, CycleOptions, CycleReport, GroupSpec, Progress, Store};

use crate::cut::GroupCut;
use crate::driver::{Compute, Handle, Launch};

/// A boot or health placeholder's value at VM `name`'s source site: its disks as the
/// inventory writes them, its own addresses.
pub fn source_value(name: &str, vm: &lifeboat_plan::inventory::Vm, p: &str) -> Option<String> {
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
    let value = |p: &str| source_value(name, vm, p);
    let fill = |args: &[lifeboat_plan::Spanned<String>]| {
        args.iter()
            .map(|c| crate::template::fill(&c.value, &value).ok())
            .collect::<Option<Vec<String>>>()
    };
    let site = inventory.sites.get(&vm.site.value)?;
    if site.compute.value == lifeboat_plan::inventory::ComputeDriver::Libvirt {
        // A domain, on one of the site's hosts: libvirt knows how it runs.
        return Some(Launch {
            vm: name.to_string(),
            argv: Vec::new(),
            dir: base.to_path_buf(),
            log: PathBuf::new(),
            key: String::new(),
            netns: None,
            domain: Some(crate::driver::DomainLaunch {
                hosts: site.hosts.iter().map(|h| h.value.clone()).collect(),
                name: vm
                    .domain
                    .as_ref()
                    .map_or_else(|| name.to_string(), |d| d.value.clone()),
                xml: None,
                replaces: false,
            }),
        });
    }
    let qemu = site.compute.value == lifeboat_plan::inventory::ComputeDriver::Qemu;
    let argv = match (&vm.machine, qemu) {
        (Some(machine), true) => {
            let disks: Vec<String> = vm.disks.iter().map(|(_, p)| p.value.clone()).collect();
            let ips: Vec<String> = vm
                .nics
                .iter()
                .filter_map(|n| n.ip.as_ref().map(|ip| ip.value.to_string()))
                .collect();
            crate::qemu::command_line(name, machine, base, &disks, &ips, &fill(&machine.args)?)
        }
        _ => fill(&vm.boot.as_ref()?.command)?,
    };
    Some(Launch {
        vm: name.to_string(),
        argv,
        dir: base.to_path_buf(),
        log: PathBuf::new(),
        key: String::new(),
        netns: None,
        domain: None,
    })
}

/// The space free for an unprivileged writer in the file system holding `path`, in bytes.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
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

fn site_store(
    inventory: &Inventory,
    base: &Path,
    name: &str,
    cache: bool,
) -> lifeboat_replication::Result<Store> {
    let site = inventory
        .sites
        .get(name)
        .ok_or_else(|| lifeboat_replication::Error::failed(format!("unknown site `{name}`")))?;
    if cache {
        Store::open_cache(&site.store.value, base)
    } else {
        Store::open(&site.store.value, base)
    }
}

/// What a cycle is asked for beyond its group's policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ask {
    pub app: AppMode,
    /// Read every disk in full, even where the cut knows what changed.
    pub full_scan: bool,
}

impl From<AppMode> for Ask {
    fn from(app: AppMode) -> Self {
        Self {
            app,
            full_scan: false,
        }
    }
}

/// Whether `group`'s target store keeps one writer per group: its put-if-absent is probed once
/// per store and process (`lifeboat_replication::probe`). A daemon asks before it takes a
/// lease and refuses to hold leases on a store that lets several concurrent creates through.
pub async fn check_target_store(
    inventory: &Inventory,
    base: &Path,
    group: &GroupSpec,
) -> lifeboat_replication::Result<()> {
    static PROBED: tokio::sync::Mutex<Vec<(String, lifeboat_replication::probe::Probe)>> =
        tokio::sync::Mutex::const_new(Vec::new());
    let target = site_store(inventory, base, &group.target_site, false)?;
    let mut probed = PROBED.lock().await;
    let probe = match probed.iter().find(|(l, _)| l == target.location()) {
        Some((_, p)) => p.clone(),
        None => {
            let p = lifeboat_replication::probe::probe(&target).await?;
            tracing::info!(store = target.location(), winners = p.winners, racers = p.racers, skew_ms = ?p.skew_ms, "store probed");
            probed.push((target.location().to_string(), p.clone()));
            p
        }
    };
    match probe.refusal(target.location()) {
        Some(why) => Err(lifeboat_replication::Error::failed(why)),
        None => Ok(()),
    }
}

/// Takes `group`'s writer lease in its target site's repository (see
/// `lifeboat_replication::lease`): a daemon keeps it while it protects the group.
pub async fn lease(
    inventory: &Inventory,
    base: &Path,
    group: &GroupSpec,
    holder: &Holder,
    ttl: Duration,
) -> lifeboat_replication::Result<Lease> {
    let target = site_store(inventory, base, &group.target_site, false)?;
    lifeboat_replication::lease::acquire(&target, &group.name, holder, ttl).await
}

/// One cycle under a lease taken for it alone (`lifeboat replicate`, a planned failover's last
/// cycle): refused with a `Busy` error when another writer (a daemon) holds the group.
pub async fn cycle_once(
    inventory: &Inventory,
    base: &Path,
    driver: Arc<dyn Compute>,
    group: &GroupSpec,
    ask: impl Into<Ask>,
    progress: Option<Arc<dyn Progress>>,
    holder: &Holder,
) -> lifeboat_replication::Result<CycleReport> {
    let lease = lease(
        inventory,
        base,
        group,
        holder,
        lifeboat_replication::lease::DEFAULT_TTL,
    )
    .await?;
    let result = cycle(inventory, base, driver, group, ask, progress, &lease).await;
    if let Err(e) = lease.release().await {
        // It expires on its own; the point (or the cycle's error) is what matters here.
        tracing::warn!(group = %group.name, error = %e, "the lease was not released");
    }
    result
}

/// One replication cycle of `group` at its source site, by the holder of its `lease`: the
/// group's VMs that run as their boot command describes are held still for the cut (paused,
/// under a guardian, never longer than the policy's `max_pause`), the disks captured, the VMs
/// released, the point committed.
pub async fn cycle(
    inventory: &Inventory,
    base: &Path,
    driver: Arc<dyn Compute>,
    group: &GroupSpec,
    ask: impl Into<Ask>,
    progress: Option<Arc<dyn Progress>>,
    lease: &Lease,
) -> lifeboat_replication::Result<CycleReport> {
    let Ask { app, full_scan } = ask.into();
    if let Some(why) = lease.lost() {
        return Err(lifeboat_replication::Error::busy(format!(
            "the lease of group `{}` was lost: {why}",
            group.name
        )));
    }
    let source = site_store(inventory, base, &group.source_site, true)?;
    let target = site_store(inventory, base, &group.target_site, false)?;
    let libvirt = inventory
        .sites
        .get(&group.source_site)
        .is_some_and(|s| s.compute.value == lifeboat_plan::inventory::ComputeDriver::Libvirt);
    if libvirt {
        // libvirt's QEMU writes the disks; its pull backup is the cut, so no writer check.
        let dir = base.join(".lifeboat/libvirt");
        let (group, cut) = crate::libvirt::resolve_group(inventory, group, &dir).await?;
        let how = cut.as_ref().map(|c| c.describe());
        let opts = CycleOptions {
            app,
            cut: cut.map(|c| Arc::new(c) as Arc<dyn lifeboat_replication::Cut>),
            max_pause: Some(group.max_pause),
            progress,
            full_scan,
            point_notes: Vec::new(),
        };
        let mut report = lifeboat_replication::replicate(&group, &source, &target, &opts).await?;
        report.notes.extend(how.into_iter().flatten());
        return Ok(report);
    }
    let names: Vec<&str> = group.vms.iter().map(|v| v.name.as_str()).collect();
    let held = locate_source_vms(inventory, base, driver.as_ref(), &names).await;
    let point_notes = check_writers(inventory, group, &held).await?;
    let cut = (!held.is_empty()).then(|| {
        let disks_of = |vm: &str| {
            group
                .vms
                .iter()
                .filter(|v| v.name == vm)
                .flat_map(|v| v.disks.iter().map(|d| d.path.clone()))
                .collect()
        };
        Arc::new(GroupCut::new(driver, held, disks_of, group.max_pause))
    });
    let how = cut.as_ref().map(|c| c.describe());
    let opts = CycleOptions {
        app,
        cut: cut.map(|c| c as Arc<dyn lifeboat_replication::Cut>),
        max_pause: Some(group.max_pause),
        progress,
        full_scan,
        point_notes: point_notes.clone(),
    };
    let mut report = lifeboat_replication::replicate(group, &source, &target, &opts).await?;
    report.notes.extend(how.into_iter().flatten());
    report.notes.extend(point_notes);
    Ok(report)
}

/// A walk of every process's open files that began after this call did: the groups of a daemon
/// that cut at the same moment share one walk (a hundred groups on a one-second interval would
/// otherwise walk `/proc` a hundred times a second), and none reads a walk older than its own
/// request.
async fn open_files() -> lifeboat_replication::Result<Arc<crate::procfs::OpenFiles>> {
    use std::sync::atomic::{AtomicU64, Ordering};
    /// How many walks have begun.
    static BEGUN: AtomicU64 = AtomicU64::new(0);
    /// The newest finished walk and its number; held while a walk runs.
    static LAST: tokio::sync::Mutex<Option<(u64, Arc<crate::procfs::OpenFiles>)>> =
        tokio::sync::Mutex::const_new(None);
    let asked_after = BEGUN.load(Ordering::SeqCst);
    let mut last = LAST.lock().await;
    if let Some((n, walk)) = last.as_ref()
        && *n > asked_after
    {
        return Ok(walk.clone());
    }
    let n = BEGUN.fetch_add(1, Ordering::SeqCst) + 1;
    let walk = tokio::task::spawn_blocking(crate::procfs::OpenFiles::walk)
        .await
        .map(Arc::new)
        .map_err(|e| {
            lifeboat_replication::Error::failed(format!("cannot look for writers: {e}"))
        })?;
    *last = Some((n, walk.clone()));
    Ok(walk)
}

/// The note an `unsafe_live_read` point carries (in its manifest, `points list` and JSON).
pub const UNSAFE_LIVE_READ: &str = "unsafe-live-read";

/// Before a cut: every process that holds one of `group`'s disks open for writing must be one
/// the cut holds still — a VM recognised by its boot command (`held`), the very process, not a
/// child or a stranger. Anyone else is an error naming the process, unless the VM opted into
/// `unsafe_live_read`; then the point is taken and marked, with the writer named in its notes.
async fn check_writers(
    inventory: &Inventory,
    group: &GroupSpec,
    held: &[Handle],
) -> lifeboat_replication::Result<Vec<String>> {
    let paths: Vec<PathBuf> = group
        .vms
        .iter()
        .flat_map(|v| v.disks.iter().map(|d| d.path.clone()))
        .collect();
    let writers = open_files().await?.writers(&paths);
    let mut notes = Vec::new();
    for w in writers {
        let Some(vm) = group
            .vms
            .iter()
            .find(|v| v.disks.iter().any(|d| d.path == w.path))
        else {
            continue;
        };
        if held
            .iter()
            .any(|h| h.vm == vm.name && h.pid == w.process.pid)
        {
            continue;
        }
        let opted_in = inventory
            .vms
            .get(&vm.name)
            .and_then(|v| v.unsafe_live_read.as_ref())
            .is_some_and(|b| b.value);
        if opted_in {
            notes.push(format!(
                "{UNSAFE_LIVE_READ}: {} of VM `{}` was read while {} wrote it; this point may be torn",
                w.path.display(),
                vm.name,
                w.process
            ));
            continue;
        }
        return Err(lifeboat_replication::Error::failed(format!(
            "cannot take a consistent point of group `{}`: {} (disk of VM `{}`) is open for writing by {}, which Lifeboat cannot hold still (it is not the VM as its boot command starts it, from the inventory's folder); stop it and start the VM as its boot command says, or set `unsafe_live_read = true` on VM `{}` to take points that may be torn",
            group.name,
            w.path.display(),
            vm.name,
            w.process,
            vm.name
        )));
    }
    Ok(notes)
}
