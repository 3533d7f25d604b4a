//! The authority behind a run's host calls: the plugin host checks each step's grant, then asks
//! [`RunServices`] to do the work against the real target repository and compute driver. Every
//! effect is journaled, and every effectful call is idempotent by its key: a resumed run that
//! repeats a call finds the journaled result instead of restoring or starting a VM twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_plan::Inventory;
use lifeboat_plugin_host::HostServices;
use lifeboat_plugin_host::wit::Error;
use lifeboat_plugin_host::wit::lifeboat::plan::{compute, inventory, network, recovery};
use lifeboat_replication::{GroupSpec, Manifest, PointKind, Repository, Store, points};

use crate::health::{self, Probe};
use crate::journal::{Event, Journal};
use crate::network::Assignment;
use lifeboat_compute::driver::{Compute, Handle, Launch};
use lifeboat_compute::netns::Netns;
use lifeboat_compute::template;

mod domains;
mod instant;

pub(crate) use instant::serves_libvirt_locally;

pub(crate) use domains::{domain_of_point, release_networks};

/// Called with every event of a run once it is journaled (progress on a terminal): the run's
/// id and the event.
pub type Observer = Arc<dyn Fn(&str, &Event) + Send + Sync>;

/// What one run acts on.
pub struct RunServices {
    pub(crate) run: String,
    pub(crate) inventory: Arc<Inventory>,
    /// The folder of lifeboat.toml: VMs start there.
    base: PathBuf,
    /// This run's folder: restored disks and VM logs.
    run_dir: PathBuf,
    /// The VMs' boot traces (what an instant boot read first, in order), one file per VM, kept
    /// across runs: the next instant boot's server fetches ahead in that order.
    traces: PathBuf,
    target_site: String,
    target: Store,
    /// Consistency groups (the unit of a point).
    groups: Vec<GroupSpec>,
    /// Plan group → its VMs.
    pub(crate) plan_groups: HashMap<String, Vec<String>>,
    pub(crate) assignments: Vec<Assignment>,
    /// The command line's `--point`, over the plan's choice.
    point_override: Option<String>,
    driver: Arc<dyn Compute>,
    journal: Mutex<Journal>,
    observe: Observer,
    /// Serializes point choice, so the VMs of one consistency group share one point.
    choosing: tokio::sync::Mutex<()>,
    /// This run's events as the services know them: loaded from the journal once, then every
    /// event they record (the executor's own events do not matter here).
    seen: Mutex<Option<Vec<(i64, Event)>>>,
    /// The target repository, opened once (and again for a point committed after that).
    repo: tokio::sync::Mutex<Option<(Arc<Repository>, u64)>>,
    /// The plan's point choice (`latest-processed`…), for restores begun ahead of the boot step's
    /// own calls.
    default_point: String,
    /// Restores begun when a group's boot asked for its VMs: VM → (point seq, the restore).
    prefetch: Mutex<HashMap<String, (u64, Prefetch)>>,
    /// How many restores run at once.
    restores: Arc<tokio::sync::Semaphore>,
    /// A drill: at a `qemu` target its VMs write into qcow2 overlays, the restored images stay
    /// the point.
    drill: bool,
    /// An isolated drill's network namespace: its VMs run there, and its probes and steps reach
    /// them there. Made (after it is journaled) before the first VM starts.
    netns: Option<Netns>,
    /// Whether this process has made sure the namespace exists.
    netns_ready: tokio::sync::Mutex<bool>,
    /// The plan's network map, `site/network` → the target network's name: where a libvirt
    /// copy's NICs go.
    network_map: HashMap<String, String>,
    /// Whether this process has made sure a libvirt drill's isolated networks exist.
    drill_networks_ready: tokio::sync::Mutex<bool>,
    /// Each VM of a `libvirt` site in the inventory as written: its home site and domain.
    home_domains: HashMap<String, (String, String)>,
    /// Boot the `qemu` target's machines from the repository (instant), their disks hydrating
    /// behind them, instead of restoring first.
    instant: bool,
    /// How to run `lifeboat export` (see `Environment::lifeboat`), and on which inventory.
    lifeboat: Vec<std::ffi::OsString>,
    config_file: PathBuf,
    /// Tends the run's instant disks while the run goes on (a server that dies during the boot
    /// would otherwise hold the guest's reads until the run's end).
    tender: crate::hydration::Tender,
    tending: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for RunServices {
    fn drop(&mut self) {
        // Past the run, whoever drives it tends its disks (`hydration::until_hydrated`).
        if let Some(task) = self.tending.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// A restore running in the background: the restored disk paths, or why not.
pub type Prefetch = tokio::task::JoinHandle<Result<Vec<String>, String>>;

impl std::fmt::Debug for RunServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunServices")
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

/// Restores a run makes at once (each is CPU-bound: decompress and re-hash every chunk).
pub(crate) const RESTORES_AT_ONCE: usize = 4;

impl RunServices {
    /// The services of run `run` of `plan` in `env`: `point` is the command line's `--point`,
    /// `assignments` the run's addresses (journaled when it began).
    pub fn new(
        env: &crate::runs::Environment,
        run: &str,
        plan: &lifeboat_plan::Plan,
        point: Option<String>,
        assignments: Vec<Assignment>,
        observe: Observer,
    ) -> crate::error::Result<Self> {
        let target_site = plan.target.value.clone();
        Ok(Self {
            run: run.to_string(),
            inventory: env.config.inventory.clone(),
            base: env.config.base.clone(),
            run_dir: env.run_dir(run),
            traces: env.state_dir.join("traces"),
            target: env.site_store(&target_site)?,
            target_site,
            groups: env.config.groups.clone(),
            plan_groups: plan
                .groups
                .iter()
                .map(|g| {
                    (
                        g.name.value.clone(),
                        g.vms.iter().map(|v| v.value.clone()).collect(),
                    )
                })
                .collect(),
            assignments,
            point_override: point,
            driver: env.driver.clone(),
            journal: Mutex::new(env.journal()?),
            observe,
            choosing: tokio::sync::Mutex::new(()),
            seen: Mutex::new(None),
            repo: tokio::sync::Mutex::new(None),
            default_point: crate::compile::point_choice(plan).to_string(),
            prefetch: Mutex::new(HashMap::new()),
            restores: Arc::new(tokio::sync::Semaphore::new(RESTORES_AT_ONCE)),
            drill: false,
            netns: None,
            netns_ready: tokio::sync::Mutex::new(false),
            network_map: plan
                .network
                .iter()
                .flat_map(|n| &n.map)
                .map(|m| (m.from.value.to_string(), m.to.value.network.clone()))
                .collect(),
            drill_networks_ready: tokio::sync::Mutex::new(false),
            home_domains: env
                .config
                .home
                .vms
                .iter()
                .filter(|(_, v)| {
                    env.config.home.sites.get(&v.site.value).is_some_and(|s| {
                        s.compute.value == lifeboat_plan::inventory::ComputeDriver::Libvirt
                    })
                })
                .map(|(name, v)| {
                    let domain = v
                        .domain
                        .as_ref()
                        .map_or(name.to_string(), |d| d.value.clone());
                    (name.to_string(), (v.site.value.clone(), domain))
                })
                .collect(),
            instant: false,
            lifeboat: env.lifeboat.clone(),
            config_file: env.config.file.clone(),
            tender: crate::hydration::Tender::of(env),
            tending: Mutex::new(None),
        })
    }

    /// Boots the run's qemu machines instantly (see `instant`).
    pub fn with_instant(mut self, instant: bool) -> Self {
        self.instant = instant;
        self
    }

    /// Marks the run a drill (see `drill`).
    pub fn with_drill(mut self, drill: bool) -> Self {
        self.drill = drill;
        self
    }

    /// Runs the run's VMs, probes and steps' network calls in `netns` (an isolated drill).
    pub fn with_netns(mut self, netns: Option<Netns>) -> Self {
        self.netns = netns;
        self
    }

    /// The namespace of an isolated drill, made if it is not there yet (journaled first, so
    /// cleanup finds it whatever happens next).
    async fn ensure_netns(&self) -> Result<Option<&Netns>, Error> {
        let Some(ns) = &self.netns else {
            return Ok(None);
        };
        let mut ready = self.netns_ready.lock().await;
        if !*ready {
            let recorded = self.with_events(|events| {
                events
                    .iter()
                    .any(|(_, e)| matches!(e, Event::Isolated { netns } if netns == ns.name()))
            })?;
            if !recorded {
                self.record(Event::Isolated {
                    netns: ns.name().to_string(),
                })?;
            }
            Netns::create(ns.name()).await.map_err(other)?;
            *ready = true;
        }
        Ok(Some(ns))
    }

    /// The namespace a step's connection to `host` goes through: an isolated drill's, when the
    /// host is an address of the run's test network (where its copies are); anything else is
    /// reached from the host's network, as outside a drill.
    fn netns_for(&self, host: &str) -> Option<&Netns> {
        let ns = self.netns.as_ref()?;
        let ip: std::net::IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        self.assignments
            .iter()
            .any(|a| a.cidr.contains(&ip))
            .then_some(ns)
    }

    /// One try of a health probe, where the run's VMs are (inside an isolated drill's
    /// namespace: a command probe runs there too).
    async fn check_once(&self, probe: &Probe) -> Result<(), health::Unhealthy> {
        let Some(ns) = &self.netns else {
            return health::check(probe, &self.base).await;
        };
        let (probe, base) = match probe {
            Probe::Command(argv) => (Probe::Command(ns.wrap(argv)), self.base.clone()),
            p => (p.clone(), self.base.clone()),
        };
        ns.within(move || async move { health::check(&probe, &base).await })
            .await?
    }

    /// Appends an event to this run's journal, then shows it.
    pub fn record(&self, event: Event) -> Result<i64, Error> {
        // Load what is journaled first, so the cache holds this event after it, in order.
        self.with_events(|_| ())?;
        let seq = self
            .journal
            .lock()
            .map_err(|_| other("the journal lock is poisoned"))?
            .append(&self.run, &event)
            .map_err(other)?;
        if let Ok(mut seen) = self.seen.lock()
            && let Some(list) = seen.as_mut()
        {
            list.push((seq, event.clone()));
        }
        (self.observe)(&self.run, &event);
        Ok(seq)
    }

    /// The run's events straight from the journal (to see what other processes appended).
    fn journal_events(&self) -> Result<Vec<(i64, Event)>, Error> {
        let journal = self
            .journal
            .lock()
            .map_err(|_| other("the journal lock is poisoned"))?;
        Ok(journal
            .events(&self.run)
            .map_err(other)?
            .into_iter()
            .map(|(seq, _, e)| (seq, e))
            .collect())
    }

    fn with_events<R>(&self, f: impl FnOnce(&[(i64, Event)]) -> R) -> Result<R, Error> {
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| other("the event cache lock is poisoned"))?;
        if seen.is_none() {
            *seen = Some(self.journal_events()?);
        }
        Ok(f(seen.as_deref().unwrap_or_default()))
    }

    fn group_of(&self, vm: &str) -> Result<&GroupSpec, Error> {
        self.groups
            .iter()
            .find(|g| g.vms.iter().any(|v| v.name == vm))
            .ok_or_else(|| Error::NotFound(format!("VM `{vm}` is not protected")))
    }

    fn vm(&self, name: &str) -> Result<&lifeboat_plan::inventory::Vm, Error> {
        self.inventory
            .vms
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("no VM `{name}` in the inventory")))
    }

    fn addresses(&self, vm: &str) -> Vec<&Assignment> {
        let mut out: Vec<&Assignment> = self.assignments.iter().filter(|a| a.vm == vm).collect();
        out.sort_by_key(|a| a.nic);
        out
    }

    /// The world, not the journal: nothing may answer at `vm`'s addresses before it starts
    /// (probed from `netns`, an isolated drill's, when there is one).
    async fn check_addresses_free(&self, vm: &str, netns: Option<&Netns>) -> Result<(), Error> {
        let def = self.vm(vm)?;
        for a in self.addresses(vm) {
            let ports = crate::occupied::known_ports(def, a.nic);
            if let Some(o) = crate::occupied::occupant(a.ip, &ports, netns).await {
                return Err(Error::Invalid(format!(
                    "VM `{vm}` not started: address {} is in use: {o}",
                    a.ip
                )));
            }
        }
        Ok(())
    }

    /// The disks restored for `vm` in this run, by disk name.
    fn restored(&self, vm: &str) -> Result<Option<Vec<String>>, Error> {
        self.with_events(|events| {
            events.iter().rev().find_map(|(_, e)| match e {
                Event::Restored { vm: v, disks, .. } if v == vm => Some(disks.clone()),
                _ => None,
            })
        })
    }

    /// The VM's process, if this run started one and has not stopped it.
    pub fn handle(&self, vm: &str) -> Result<Option<(Handle, String)>, Error> {
        self.with_events(|events| {
            let mut current = None;
            for (_, e) in events {
                match e {
                    Event::VmStarted {
                        vm: v,
                        pid,
                        key,
                        started,
                        domain,
                        ..
                    } if v == vm => {
                        current = Some((
                            Handle {
                                vm: v.clone(),
                                pid: *pid,
                                started: *started,
                                key: key.clone(),
                                domain: domain.clone(),
                            },
                            key.clone(),
                        ));
                    }
                    Event::VmStopped { vm: v } if v == vm => current = None,
                    _ => {}
                }
            }
            current
        })
    }

    /// `{disk.NAME}`, `{nicN.ip}`, `{vm.name}`, `{vm.site}` at the target.
    fn fill(&self, vm: &str, text: &str, disks: &HashMap<String, String>) -> Result<String, Error> {
        let addresses = self.addresses(vm);
        template::fill(text, &|name| {
            if let Some(disk) = name.strip_prefix("disk.") {
                return disks.get(disk).cloned();
            }
            if name == "vm.name" {
                return Some(vm.to_string());
            }
            if name == "vm.site" {
                return Some(self.target_site.clone());
            }
            let nic: usize = name
                .strip_prefix("nic")?
                .strip_suffix(".ip")?
                .parse()
                .ok()?;
            addresses
                .iter()
                .find(|a| a.nic == nic)
                .map(|a| a.ip.to_string())
        })
        .map_err(|e| Error::Invalid(format!("VM `{vm}`: {e}")))
    }

    fn disk_paths(&self, vm: &str) -> Result<HashMap<String, String>, Error> {
        let restored = self.restored(vm)?.ok_or_else(|| {
            Error::Invalid(format!(
                "VM `{vm}` has no restored disks in this run: restore it first"
            ))
        })?;
        Ok(restored
            .into_iter()
            .filter_map(|p| {
                let name = Path::new(&p).file_stem()?.to_str()?.to_string();
                Some((name, p))
            })
            .collect())
    }

    fn probe(&self, vm: &str) -> Result<Option<Probe>, Error> {
        let Some(health) = &self.vm(vm)?.health else {
            return Ok(None);
        };
        let disks = self.disk_paths(vm).unwrap_or_default();
        let probe = if let Some(tcp) = &health.tcp {
            Probe::Tcp(self.fill(vm, &tcp.value, &disks)?)
        } else if let Some(http) = &health.http {
            Probe::Http(self.fill(vm, &http.value, &disks)?)
        } else if let Some(cmd) = &health.command {
            Probe::Command(
                cmd.iter()
                    .map(|c| self.fill(vm, &c.value, &disks))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            return Ok(None);
        };
        Ok(Some(probe))
    }

    /// The target repository, opened at or after `fresh_from_ms` (a point committed later than
    /// an open repository's index was read needs a newer one).
    async fn repository(&self, fresh_from_ms: u64) -> Result<Arc<Repository>, Error> {
        let mut cached = self.repo.lock().await;
        if let Some((repo, opened)) = cached.as_ref()
            && *opened >= fresh_from_ms
        {
            return Ok(repo.clone());
        }
        let opened = lifeboat_replication::clock::unix_ms(std::time::SystemTime::now());
        let repo = Arc::new(
            Repository::open(&self.target)
                .await
                .map_err(|e| other(format!("target site `{}`: {e}", self.target_site)))?,
        );
        *cached = Some((repo.clone(), opened));
        Ok(repo)
    }

    /// The point consistency group `group` boots from: chosen once per run (journaled, pinned),
    /// the same for all its VMs and for a resumed run.
    async fn choose(&self, group: &str, choice: &str) -> Result<Manifest, Error> {
        let _one_at_a_time = self.choosing.lock().await;
        let repo = self.repository(0).await?;
        let chosen = self.with_events(|events| {
            events.iter().find_map(|(_, e)| match e {
                Event::PointChosen { group: g, seq, .. } if g == group => Some(*seq),
                _ => None,
            })
        })?;
        if let Some(seq) = chosen {
            return repo.point(group, seq).await.map_err(other);
        }
        let choice = choice_for(self.point_override.as_deref(), group, choice);
        let m = points::select(&repo, group, choice)
            .await
            .map_err(|e| Error::NotFound(e.to_string()))?;
        // Retention must not expire a point a run stands on.
        repo.pin(group, m.seq, &self.pin_reason())
            .await
            .map_err(other)?;
        self.record(Event::PointChosen {
            group: group.to_string(),
            seq: m.seq,
            point_kind: m.kind.as_str().to_string(),
            captured_unix_ms: m.captured_unix_ms,
        })?;
        Ok(m)
    }

    /// Begins restoring every VM of plan group `group` in the background (a few at a time), so
    /// the boot step's restores, which it asks for one VM after another, overlap.
    async fn prefetch_group(&self, group: &str) {
        let names = self.plan_groups.get(group).cloned().unwrap_or_default();
        for vm in names {
            let restored = self.restored(&vm).ok().flatten().is_some();
            let begun = self.prefetch.lock().is_ok_and(|p| p.contains_key(&vm));
            if restored || begun || self.boots_instantly(&vm) {
                continue;
            }
            let Ok(cg) = self.group_of(&vm).map(|g| g.name.clone()) else {
                continue;
            };
            let Ok(m) = self.choose(&cg, &self.default_point).await else {
                continue;
            };
            let Ok(repo) = self.repository(m.committed_unix_ms).await else {
                continue;
            };
            let out = self.run_dir.join("disks").join(&vm);
            let permits = self.restores.clone();
            let name = vm.clone();
            let seq = m.seq;
            let task = tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
                let report = lifeboat_replication::restore::restore(&repo, &m, &name, &out, None)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(report
                    .disks
                    .iter()
                    .map(|d| d.path.display().to_string())
                    .collect())
            });
            if let Ok(mut p) = self.prefetch.lock() {
                p.insert(vm, (seq, task));
            }
        }
    }

    /// Who approved `message` for a step attempt that never ended (its runtime died after the
    /// approval and before the step finished), if anyone did.
    /// Who approved `message` in an attempt the runtime died in, if someone did; and the last
    /// journal position read, so an approval that lands after this look is not missed.
    fn granted_before(&self, message: &str) -> Result<(Option<String>, i64), Error> {
        let events = self.journal_events()?;
        let read_to = events.last().map_or(0, |(seq, _)| *seq);
        let Some(asked) = events.iter().rposition(
            |(_, e)| matches!(e, Event::ApprovalRequested { message: m } if m == message),
        ) else {
            return Ok((None, read_to));
        };
        let mut by = None;
        for (_, e) in &events[asked..] {
            match e {
                Event::Approved { by: who } => by = Some(who.clone()),
                Event::StepFinished { .. }
                | Event::StepFailed { .. }
                | Event::StepSkipped { .. } => {
                    return Ok((None, read_to));
                }
                _ => {}
            }
        }
        Ok((by, read_to))
    }

    pub fn pin_reason(&self) -> String {
        format!("run-{}", self.run)
    }
}

/// The point choice that applies to consistency group `group`: the command line's `--point`
/// (a kind or a number for every group, `GROUP/N` for that group only), else the plan's.
pub fn choice_for<'a>(over: Option<&'a str>, group: &str, plan_choice: &'a str) -> &'a str {
    match over {
        Some(o) => match o.split_once('/') {
            Some((g, _)) if g != group => plan_choice,
            _ => o,
        },
        None => plan_choice,
    }
}

/// A VM as a step sees it: at the target site, each NIC with the address the run gave it (the
/// inventory's network and subnet where it has none). The run's services and the simulation
/// answer `get-vm` alike.
pub(crate) fn wit_vm<'a>(
    name: &str,
    site: &str,
    vm: &lifeboat_plan::inventory::Vm,
    addresses: impl IntoIterator<Item = &'a Assignment>,
) -> inventory::Vm {
    let addresses: Vec<&Assignment> = addresses.into_iter().collect();
    inventory::Vm {
        name: name.to_string(),
        site: site.to_string(),
        disks: vm.disks.names().map(str::to_string).collect(),
        nics: vm
            .nics
            .iter()
            .enumerate()
            .map(|(i, nic)| {
                let at = addresses.iter().find(|a| a.vm == name && a.nic == i);
                inventory::Nic {
                    network: at.map_or_else(|| nic.network.value.clone(), |a| a.network.clone()),
                    subnet: at.map_or_else(|| nic.subnet.value.clone(), |a| a.subnet.clone()),
                    ip: at.map(|a| a.ip.to_string()),
                }
            })
            .collect(),
    }
}

pub(crate) fn wit_point(
    group: &str,
    seq: u64,
    kind: PointKind,
    captured: u64,
    committed: u64,
) -> recovery::Point {
    recovery::Point {
        id: format!("{group}/{seq}"),
        kind: match kind {
            PointKind::App => recovery::PointKind::AppConsistent,
            PointKind::Crash => recovery::PointKind::CrashConsistent,
        },
        captured_at_ms: captured,
        committed_at_ms: committed,
    }
}

#[async_trait::async_trait]
impl HostServices for RunServices {
    async fn group_vms(&self, group: &str) -> Vec<inventory::Vm> {
        self.prefetch_group(group).await;
        let names = self.plan_groups.get(group).cloned().unwrap_or_default();
        let mut out = Vec::new();
        for name in names {
            if let Ok(vm) = self.get_vm(&name).await {
                out.push(vm);
            }
        }
        out
    }

    async fn get_vm(&self, name: &str) -> Result<inventory::Vm, Error> {
        let vm = self.vm(name)?;
        Ok(wit_vm(name, &self.target_site, vm, self.addresses(name)))
    }

    async fn list_points(&self, vm: &str) -> Result<Vec<recovery::Point>, Error> {
        let group = self.group_of(vm)?.name.clone();
        let repo = self.repository(0).await?;
        let points = repo.points(&group).await.map_err(other)?;
        Ok(points
            .iter()
            .map(|m| {
                wit_point(
                    &group,
                    m.seq,
                    m.kind,
                    m.captured_unix_ms,
                    m.committed_unix_ms,
                )
            })
            .collect())
    }

    async fn pick_point(&self, vm: &str, choice: &str) -> Result<recovery::Point, Error> {
        let group = self.group_of(vm)?.name.clone();
        let m = self.choose(&group, choice).await?;
        Ok(wit_point(
            &group,
            m.seq,
            m.kind,
            m.captured_unix_ms,
            m.committed_unix_ms,
        ))
    }

    #[tracing::instrument(name = "vm", skip_all, fields(vm = %vm, action = "restore"))]
    async fn restore(&self, vm: &str, point: &str, key: &str) -> Result<Vec<String>, Error> {
        let done = self.with_events(|events| {
            events.iter().find_map(|(_, e)| match e {
                Event::Restored { key: k, disks, .. } if k == key => Some(disks.clone()),
                _ => None,
            })
        })?;
        if let Some(disks) = done
            && disks.iter().all(|d| Path::new(d).exists())
        {
            return Ok(disks);
        }
        if self.boots_instantly(vm) {
            return self.export_and_overlay(vm, point, key).await;
        }
        let group = self.group_of(vm)?.name.clone();
        let mut repo = self.repository(0).await?;
        let m = points::select(&repo, &group, point)
            .await
            .map_err(|e| Error::NotFound(e.to_string()))?;
        let mut begun = self.prefetch.lock().ok().and_then(|mut p| p.remove(vm));
        if let Some((_, task)) = begun.take_if(|(seq, _)| *seq != m.seq) {
            // Begun for another point: stop it before restoring over its folder.
            task.abort();
            let _ = task.await;
        }
        let disks: Vec<String> = match begun {
            Some((_, task)) => task
                .await
                .map_err(other)?
                .map_err(|e| other(format!("restore of `{vm}` from point {point}: {e}")))?,
            None => {
                // Committed after the repository's index was read: read it again.
                repo = self.repository(m.committed_unix_ms).await?;
                let out = self.run_dir.join("disks").join(vm);
                let report = lifeboat_replication::restore::restore(&repo, &m, vm, &out, None)
                    .await
                    .map_err(|e| other(format!("restore of `{vm}` from point {point}: {e}")))?;
                report
                    .disks
                    .iter()
                    .map(|d| d.path.display().to_string())
                    .collect()
            }
        };
        self.record(Event::Restored {
            vm: vm.to_string(),
            key: key.to_string(),
            disks: disks.clone(),
        })?;
        tracing::info!(point = %point, disks = disks.len(), "restored");
        Ok(disks)
    }

    #[tracing::instrument(name = "vm", skip_all, fields(vm = %vm, action = "start"))]
    async fn start(&self, vm: &str, key: &str) -> Result<(), Error> {
        if let Some((handle, started_key)) = self.handle(vm)?
            && self.driver.running(&handle).await
        {
            if started_key == key {
                return Ok(());
            }
            return Err(Error::Invalid(format!(
                "VM `{vm}` is already running in this run (pid {})",
                handle.pid
            )));
        }
        if self.libvirt_target() {
            return self.start_domain(vm, key).await;
        }
        let def = self.vm(vm)?;
        let disks = self.disk_paths(vm)?;
        let fill = |args: &[lifeboat_plan::Spanned<String>]| -> Result<Vec<String>, Error> {
            args.iter()
                .map(|c| self.fill(vm, &c.value, &disks))
                .collect()
        };
        let qemu = self
            .inventory
            .sites
            .get(&self.target_site)
            .is_some_and(|s| s.compute.value == lifeboat_plan::inventory::ComputeDriver::Qemu);
        let argv: Vec<String> = match (&def.machine, qemu) {
            (Some(machine), true) => {
                // The disks in the inventory's order, restored; the run's addresses.
                let mut paths: Vec<String> = def
                    .disks
                    .iter()
                    .filter_map(|(name, _)| disks.get(name).cloned())
                    .collect();
                if self.drill {
                    let mut overlays = Vec::new();
                    for p in &paths {
                        overlays.push(drill_overlay(Path::new(p)).await?);
                    }
                    paths = overlays;
                }
                let ips: Vec<String> = self
                    .addresses(vm)
                    .iter()
                    .map(|a| a.ip.to_string())
                    .collect();
                let mut argv = lifeboat_compute::qemu::command_line(
                    vm,
                    machine,
                    &self.base,
                    &paths,
                    &ips,
                    &fill(&machine.args)?,
                );
                if self.netns.is_some() {
                    lifeboat_compute::qemu::restrict_networking(&mut argv);
                }
                argv
            }
            _ => fill(
                &def.boot
                    .as_ref()
                    .ok_or_else(|| Error::Invalid(format!("VM `{vm}` has no `boot` command")))?
                    .command,
            )?,
        };
        let log = self.run_dir.join("logs").join(format!("{vm}.log"));
        // A start this run journaled and did not see through (the runtime died in it): the VM
        // may be up; adopt it rather than start a second one.
        let begun = self.with_events(|events| {
            events
                .iter()
                .any(|(_, e)| matches!(e, Event::VmStarting { key: k, .. } if k == key))
        })?;
        let found = if begun {
            self.driver.find(vm, key).await
        } else {
            None
        };
        let handle = match found {
            Some(handle) => handle,
            None => {
                let netns = self.ensure_netns().await?;
                self.check_addresses_free(vm, netns).await?;
                self.record(Event::VmStarting {
                    vm: vm.to_string(),
                    key: key.to_string(),
                    domain: None,
                })?;
                let launch = Launch {
                    vm: vm.to_string(),
                    argv: argv.clone(),
                    dir: self.base.clone(),
                    log: log.clone(),
                    key: key.to_string(),
                    netns: netns.map(|n| n.name().to_string()),
                    domain: None,
                };
                self.driver.start(&launch).await.map_err(other)?
            }
        };
        self.record(Event::VmStarted {
            vm: vm.to_string(),
            key: key.to_string(),
            pid: handle.pid,
            started: handle.started,
            argv,
            log: log.display().to_string(),
            domain: None,
        })?;
        tracing::info!(pid = handle.pid, "started");
        if self.boots_instantly(vm) {
            self.begin_hydration(vm);
        }
        Ok(())
    }

    #[tracing::instrument(name = "vm", skip_all, fields(vm = %vm, action = "stop"))]
    async fn stop(&self, vm: &str, _key: &str) -> Result<(), Error> {
        if let Some((handle, _)) = self.handle(vm)? {
            self.driver
                .stop(&handle, Duration::from_secs(10))
                .await
                .map_err(other)?;
            self.record(Event::VmStopped { vm: vm.to_string() })?;
        }
        Ok(())
    }

    async fn status(&self, vm: &str) -> Result<compute::VmState, Error> {
        let Some((handle, _)) = self.handle(vm)? else {
            return Ok(compute::VmState::Absent);
        };
        if !self.driver.running(&handle).await {
            // Say why, in the VM's own words: the end of its log.
            let log = self.run_dir.join("logs").join(format!("{vm}.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(Error::Other(format!(
                "VM `{vm}` exited (pid {}); its log {} ends: {}",
                handle.pid,
                log.display(),
                if tail.is_empty() {
                    "(nothing)".to_string()
                } else {
                    tail.join(" / ")
                }
            )));
        }
        // Running means healthy: the VM's own probe passed, the VM is still there after it, and
        // (where the kernel tells) the VM's own processes hold the socket that answered.
        let Some(probe) = self.probe(vm)? else {
            return Ok(compute::VmState::Running);
        };
        let once = tokio::time::timeout(Duration::from_secs(2), self.check_once(&probe)).await;
        if !matches!(once, Ok(Ok(()))) || !self.driver.running(&handle).await {
            return Ok(compute::VmState::Starting);
        }
        let Some(addr) = probe.socket_addr() else {
            return Ok(compute::VmState::Running);
        };
        // A libvirt guest's sockets are inside the guest, behind a bridge: no process here
        // holds them.
        if handle.domain.is_some() {
            return Ok(compute::VmState::Running);
        }
        let pid = handle.pid;
        let answerer =
            tokio::task::spawn_blocking(move || lifeboat_compute::procfs::answerer(pid, addr))
                .await
                .map_err(other)?;
        match answerer {
            lifeboat_compute::procfs::Answerer::Other(p) => Err(Error::Other(format!(
                "VM `{vm}` (pid {pid}) is not the one answering its health probe: {} is held by {p}; the VM cannot serve its address",
                probe.describe()
            ))),
            lifeboat_compute::procfs::Answerer::Vm
            | lifeboat_compute::procfs::Answerer::Unknown => Ok(compute::VmState::Running),
        }
    }

    async fn assignments(&self, vm: &str) -> Result<Vec<network::Assignment>, Error> {
        self.vm(vm)?;
        Ok(self
            .addresses(vm)
            .into_iter()
            .map(|a| network::Assignment {
                nic: a.nic as u32,
                network: a.network.clone(),
                subnet: a.subnet.clone(),
                ip: a.ip.to_string(),
                kept_source_ip: a.why == crate::network::Why::Kept,
            })
            .collect())
    }

    async fn tcp(&self, address: &str, limit: Duration) -> Result<(), Error> {
        let services = lifeboat_plugin_host::NoServices;
        let Some(ns) = self.netns_for(address.rsplit_once(':').map_or(address, |(h, _)| h)) else {
            return services.tcp(address, limit).await;
        };
        let address = address.to_string();
        ns.within(move || async move { services.tcp(&address, limit).await })
            .await
            .map_err(other)?
    }

    async fn http_get(&self, url: &str, limit: Duration) -> Result<u16, Error> {
        let services = lifeboat_plugin_host::NoServices;
        let Some(ns) = self.netns_for(url_host(url)) else {
            return services.http_get(url, limit).await;
        };
        let url = url.to_string();
        ns.within(move || async move { services.http_get(&url, limit).await })
            .await
            .map_err(other)?
    }

    async fn http_send(
        &self,
        request: &lifeboat_plugin_host::http::Request,
        limit: Duration,
    ) -> Result<lifeboat_plugin_host::http::Answer, Error> {
        let Some(ns) = self.netns_for(url_host(&request.url)) else {
            return lifeboat_plugin_host::send_within(request, limit, true).await;
        };
        let request = request.clone();
        ns.within(
            move || async move { lifeboat_plugin_host::send_within(&request, limit, false).await },
        )
        .await
        .map_err(other)?
    }

    async fn approve(&self, message: &str) -> Result<String, Error> {
        // An approval given to an attempt the runtime died in stands: the person said yes.
        let (granted, read_to) = self.granted_before(message)?;
        if let Some(by) = granted {
            return Ok(by);
        }
        self.record(Event::ApprovalRequested {
            message: message.to_string(),
        })?;
        // From what was read, not from the request just recorded: a `lifeboat approve` of the
        // pending request that landed in between counts.
        let mut seen = read_to;
        loop {
            let new = self
                .journal
                .lock()
                .map_err(|_| other("the journal lock is poisoned"))?
                .events_after(&self.run, seen)
                .map_err(other)?;
            for (seq, _, e) in new {
                seen = seq;
                if let Event::Approved { by } = e {
                    return Ok(by);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The host of an `http://` or `https://` URL (an IPv6 literal with its brackets).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.starts_with('[') {
        return authority.split_once(']').map_or(authority, |(h, _)| h);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// A drill's qcow2 overlay on a restored image (beside it, in the run's folder, so cleanup
/// removes it with the run): the guest's writes go there and the restored image stays the point.
/// Made once per run; a restarted start boots the same overlay.
async fn drill_overlay(restored: &Path) -> Result<String, Error> {
    overlay(restored, "drill").await
}

/// A qcow2 overlay `kind` on a restored image, beside it (see `drill_overlay`).
async fn overlay(restored: &Path, kind: &str) -> Result<String, Error> {
    let mut name = restored.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{kind}.qcow2"));
    let overlay = restored.with_file_name(name);
    if overlay.exists() {
        return Ok(overlay.display().to_string());
    }
    // An instant boot's image is qcow2 (backed by the export): the drill writes above it.
    let format = if restored.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(restored)
        .arg(&overlay)
        .output()
        .await
        .map_err(|e| other(format!("cannot run qemu-img (install qemu-utils): {e}")))?;
    if !out.status.success() {
        return Err(other(format!(
            "cannot create the overlay {}: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(overlay.display().to_string())
}
