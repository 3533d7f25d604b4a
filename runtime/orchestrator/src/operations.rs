//! The operations users run: a failover (test, planned, unplanned) as a journaled run, and what
//! follows one: `cleanup` (undo every step that ran, stop the VMs, delete their disks, unpin),
//! `commit` (fence the old writer), `approve`, `skip`, `cancel`, and resuming a run.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_plan::plan::Operation;
use lifeboat_plan::{Inventory, Plan};
use lifeboat_plugin_host::PluginEngine;
use lifeboat_replication::{GroupSpec, Repository, Store};

use crate::compile::{RunPlan, StepRun, compile};
use crate::compute::{Compute, Handle, Launch};
use crate::journal::{Event, Journal};
use crate::network::{Assignment, Purpose, assign};
use crate::run::{Controls, Outcome, execute};
use crate::services::{Observer, RunServices};
use crate::steps::{PluginRunner, operation_name};

/// Restores a run makes at once (each is CPU-bound: decompress and re-hash every chunk).
const RESTORES_AT_ONCE: usize = 4;

/// What every operation works with: the inventory, its groups, where runs are kept, the plugin
/// engine and the target's compute driver.
pub struct Environment {
    pub inventory: Arc<Inventory>,
    /// The folder of lifeboat.toml.
    pub base: PathBuf,
    pub groups: Vec<GroupSpec>,
    /// The run journal (`runs.db`) and each run's disks and logs.
    pub state_dir: PathBuf,
    pub engine: PluginEngine,
    pub driver: Arc<dyn Compute>,
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// How a run stands, from its journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStatus {
    pub id: String,
    pub plan: String,
    pub operation: String,
    /// `running` (no end recorded: in progress, or its process died), `succeeded`, `failed`,
    /// `cancelled`, `cleaned-up`, `committed`.
    pub status: String,
    pub plan_path: String,
    pub point: Option<String>,
    /// The process driving the run, while it lives.
    pub driver_pid: Option<u32>,
}

impl RunStatus {
    /// A run still holds VMs, pins or an uncommitted failover.
    pub fn open(&self) -> bool {
        !matches!(self.status.as_str(), "cleaned-up" | "committed")
    }
}

impl Environment {
    pub fn journal_path(&self) -> PathBuf {
        self.state_dir.join("runs.db")
    }

    pub fn journal(&self) -> Result<Journal, String> {
        Journal::open(&self.journal_path())
    }

    pub fn site_store(&self, site: &str) -> Result<Store, String> {
        let s = self
            .inventory
            .sites
            .get(site)
            .ok_or_else(|| format!("no site `{site}` in the inventory"))?;
        Store::open(&s.store.value, &self.base).map_err(|e| e.to_string())
    }

    pub fn run_dir(&self, run: &str) -> PathBuf {
        self.state_dir.join("runs").join(run)
    }

    /// Every run, newest first.
    pub fn runs(&self) -> Result<Vec<RunStatus>, String> {
        let journal = self.journal()?;
        let mut out = Vec::new();
        for (id, _, _, _) in journal.runs()? {
            out.push(status_of(&journal, &id)?);
        }
        Ok(out)
    }

    pub fn status(&self, run: &str) -> Result<RunStatus, String> {
        let journal = self.journal()?;
        if !journal.exists(run)? {
            return Err(format!("no run `{run}` (see `lifeboat runs list`)"));
        }
        status_of(&journal, run)
    }

    /// The open run of `plan`, if any.
    pub fn open_run(&self, plan: &str) -> Result<Option<RunStatus>, String> {
        Ok(self
            .runs()?
            .into_iter()
            .find(|r| r.plan == plan && r.open()))
    }
}

pub fn status_of(journal: &Journal, run: &str) -> Result<RunStatus, String> {
    let mut s = RunStatus {
        id: run.to_string(),
        plan: String::new(),
        operation: String::new(),
        status: "running".into(),
        plan_path: String::new(),
        point: None,
        driver_pid: None,
    };
    for (_, _, e) in journal.events(run)? {
        match e {
            Event::RunStarted { plan, operation } => {
                s.plan = plan;
                s.operation = operation;
            }
            Event::Prepared { plan_path, point } => {
                s.plan_path = plan_path;
                s.point = point;
            }
            Event::RunFinished { status } => s.status = status,
            Event::Driving { pid } => s.driver_pid = Some(pid),
            // A retry or a skip re-opens a failed run.
            Event::StepStarted { .. } | Event::StepSkipped { .. } if s.status == "failed" => {
                s.status = "running".into();
            }
            _ => {}
        }
    }
    // Only a live process drives a run; a dead one's run waits for `retry`.
    if s.status != "running" || !crate::compute::process_alive(s.driver_pid.unwrap_or(0)) {
        s.driver_pid = None;
    }
    Ok(s)
}

/// Refuses to act on a run another live process is driving.
fn not_driven(status: &RunStatus, what: &str) -> Result<(), String> {
    match status.driver_pid {
        Some(pid) if pid != std::process::id() => Err(format!(
            "run {} is in progress in process {pid}: {what} it there, or `lifeboat cancel {}` first",
            status.id, status.id
        )),
        _ => Ok(()),
    }
}

fn parse_operation(name: &str) -> Result<Operation, String> {
    Ok(match name {
        "test" => Operation::Test,
        "planned" => Operation::Planned,
        "unplanned" => Operation::Unplanned,
        "failback" => Operation::Failback,
        "cleanup" => Operation::Cleanup,
        other => return Err(format!("unknown operation `{other}` in the journal")),
    })
}

/// A new run id: `PLAN-N`, N one more than the plan's runs so far.
fn new_run_id(journal: &Journal, plan: &str) -> Result<String, String> {
    let n = journal.runs()?.iter().filter(|r| r.1 == plan).count() + 1;
    let mut n = n;
    loop {
        let id = format!("{plan}-{n}");
        if !journal.exists(&id)? {
            return Ok(id);
        }
        n += 1;
    }
}

fn assignments_of(journal: &Journal, run: &str) -> Result<Vec<Assignment>, String> {
    Ok(journal
        .events(run)?
        .into_iter()
        .find_map(|(_, _, e)| match e {
            Event::Assigned { assignments } => Some(assignments),
            _ => None,
        })
        .unwrap_or_default())
}

/// What a run ended in, with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    pub id: String,
    pub outcome: Outcome,
}

/// Starts a failover of `plan` (`op`: test, planned or unplanned) and runs it to its end.
/// `point` is the command line's `--point` (a kind, a number, or `GROUP/NUMBER`).
pub async fn failover(
    env: &Environment,
    plan: &Plan,
    plan_path: &Path,
    op: Operation,
    point: Option<String>,
    observe: Observer,
    controls: Controls,
) -> Result<RunResult, String> {
    if !matches!(
        op,
        Operation::Test | Operation::Planned | Operation::Unplanned
    ) {
        return Err(format!(
            "`{}` is not a failover operation",
            operation_name(op)
        ));
    }
    let mut journal = env.journal()?;
    let name = &plan.name.value;
    if let Some(open) = env.open_run(name)? {
        let id = &open.id;
        let next = match (open.status.as_str(), open.driver_pid) {
            ("running", Some(pid)) => format!("it is in progress in process {pid}"),
            ("running" | "failed", None) => {
                format!("`lifeboat retry {id}` finishes it, `lifeboat cleanup {name}` undoes it")
            }
            ("succeeded", _) if open.operation != "test" => {
                format!("`lifeboat commit {name}` or `lifeboat cleanup {name}` first")
            }
            _ => format!("`lifeboat cleanup {name}` first"),
        };
        return Err(format!(
            "plan `{name}` has an open run: {} ({}, {}): {next}",
            open.id, open.operation, open.status
        ));
    }
    // Addresses other open runs hold at the target.
    let mut in_use: HashSet<(String, IpAddr)> = HashSet::new();
    for r in env.runs()?.iter().filter(|r| r.open()) {
        for a in assignments_of(&journal, &r.id)? {
            in_use.insert((a.network.clone(), a.ip));
        }
    }
    let vms = plan_vms(plan);
    let purpose = if op == Operation::Test {
        Purpose::Test
    } else {
        Purpose::Failover
    };
    let assignments = assign(&env.inventory, plan, &vms, purpose, &in_use)?;
    preflight_points(env, plan, &vms, point.as_deref()).await?;
    let id = new_run_id(&journal, name)?;
    journal.begin(&id, name, operation_name(op))?;
    journal.append(
        &id,
        &Event::Prepared {
            plan_path: plan_path.display().to_string(),
            point: point.clone(),
        },
    )?;
    journal.append(&id, &Event::Assigned { assignments })?;
    drive(
        env,
        &mut journal,
        &id,
        plan,
        plan_path,
        (op, point),
        observe,
        controls,
    )
    .await
}

/// Every consistency group the plan boots has a point to boot from, before a run is recorded:
/// a failover that cannot start says so and leaves nothing to clean up.
async fn preflight_points(
    env: &Environment,
    plan: &Plan,
    vms: &[&str],
    point: Option<&str>,
) -> Result<(), String> {
    let target = env.site_store(&plan.target.value)?;
    let repo = Repository::open(&target).await.map_err(|e| {
        format!(
            "target site `{}` has no repository yet ({e}): run `lifeboat replicate` first",
            plan.target.value
        )
    })?;
    let default = crate::compile::point_choice(plan);
    for group in env
        .groups
        .iter()
        .filter(|g| g.vms.iter().any(|v| vms.contains(&v.name.as_str())))
    {
        let choice = match point {
            Some(p) => match p.split_once('/') {
                Some((g, _)) if g != group.name => default,
                _ => p,
            },
            None => default,
        };
        lifeboat_replication::points::select(&repo, &group.name, choice)
            .await
            .map_err(|e| format!("cannot fail over: {e}"))?;
    }
    Ok(())
}

/// Resumes run `run` (after its process died, or to retry the step it failed on).
pub async fn resume(
    env: &Environment,
    run: &str,
    plan: &Plan,
    observe: Observer,
    controls: Controls,
) -> Result<RunResult, String> {
    let mut journal = env.journal()?;
    let status = status_of(&journal, run)?;
    if status.status == "succeeded" {
        // Its process died after the last event: there is nothing left to do.
        return Ok(RunResult {
            id: run.to_string(),
            outcome: Outcome::Succeeded,
        });
    }
    if !matches!(status.status.as_str(), "running" | "failed") {
        return Err(format!(
            "run {run} is {}: there is nothing to resume",
            status.status
        ));
    }
    not_driven(&status, "let it finish")?;
    let op = parse_operation(&status.operation)?;
    drive(
        env,
        &mut journal,
        run,
        plan,
        Path::new(&status.plan_path),
        (op, status.point.clone()),
        observe,
        controls,
    )
    .await
}

fn services(
    env: &Environment,
    run: &str,
    plan: &Plan,
    op: Operation,
    point: Option<String>,
    assignments: Vec<Assignment>,
    observe: Observer,
) -> Result<Arc<RunServices>, String> {
    let target_site = plan.target.value.clone();
    Ok(Arc::new(RunServices {
        run: run.to_string(),
        inventory: env.inventory.clone(),
        base: env.base.clone(),
        run_dir: env.run_dir(run),
        purpose: if op == Operation::Test {
            Purpose::Test
        } else {
            Purpose::Failover
        },
        target: env.site_store(&target_site)?,
        target_site,
        groups: env.groups.clone(),
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
    }))
}

fn runner(
    env: &Environment,
    run: &str,
    plan: &Plan,
    plan_path: &Path,
    op: Operation,
    point: Option<String>,
    observe: Observer,
) -> Result<PluginRunner, String> {
    let journal = env.journal()?;
    let assignments = assignments_of(&journal, run)?;
    let services = services(env, run, plan, op, point, assignments, observe)?;
    let plan_dir = plan_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok(PluginRunner::new(
        env.engine.clone(),
        plan_dir,
        plan.name.value.clone(),
        op,
        services,
    ))
}

#[expect(clippy::too_many_arguments)]
async fn drive(
    env: &Environment,
    journal: &mut Journal,
    run: &str,
    plan: &Plan,
    plan_path: &Path,
    (op, point): (Operation, Option<String>),
    observe: Observer,
    controls: Controls,
) -> Result<RunResult, String> {
    journal.append(
        run,
        &Event::Driving {
            pid: std::process::id(),
        },
    )?;
    let compiled: RunPlan = compile(plan, op);
    let runner = runner(env, run, plan, plan_path, op, point, observe.clone())?;
    let show = |e: &Event, _seq: i64| observe(run, e);
    let outcome = execute(journal, run, &compiled, &runner, &show, controls).await?;
    Ok(RunResult {
        id: run.to_string(),
        outcome,
    })
}

/// The first of `plan`'s VMs whose health probe still answers at its source address, with the
/// probe: a source that is up.
pub async fn source_answering(env: &Environment, plan: &Plan) -> Option<(String, String)> {
    use crate::health::{Probe, check};
    for name in plan_vms(plan) {
        let Some(vm) = env.inventory.vms.get(name) else {
            continue;
        };
        let Some(health) = &vm.health else { continue };
        let value = |p: &str| -> Option<String> {
            if let Some(d) = p.strip_prefix("disk.") {
                return vm.disks.get(d).map(|s| s.value.clone());
            }
            let nic: usize = p.strip_prefix("nic")?.strip_suffix(".ip")?.parse().ok()?;
            vm.nics.get(nic)?.ip.as_ref().map(|ip| ip.value.to_string())
        };
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

/// How VM `name` runs at its source site: its boot command filled with the inventory's own
/// values (disk paths as written, source addresses), from the inventory's folder.
pub fn source_launch(inventory: &Inventory, base: &Path, name: &str) -> Option<Launch> {
    let vm = inventory.vms.get(name)?;
    let boot = vm.boot.as_ref()?;
    let value = |p: &str| -> Option<String> {
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
    };
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
    let mut out = Vec::new();
    for name in vms {
        if let Some(launch) = source_launch(inventory, base, name)
            && let Some(h) = driver.locate(&launch).await
        {
            out.push(h);
        }
    }
    out
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

fn plan_vms(plan: &Plan) -> Vec<&str> {
    plan.groups
        .iter()
        .flat_map(|g| g.vms.iter().map(|v| v.value.as_str()))
        .collect()
}

/// A planned failover's last replication cycle of every group of `plan`'s VMs (their VMs shut
/// down), so the failover loses nothing.
pub async fn last_cycle(env: &Environment, plan: &Plan) -> Result<(), String> {
    let vms = plan_vms(plan);
    for group in env
        .groups
        .iter()
        .filter(|g| g.vms.iter().any(|v| vms.contains(&v.name.as_str())))
    {
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

/// What `cleanup` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub run: String,
    /// Steps undone, in the order undone, with the error of those whose undo failed.
    pub undone: Vec<(String, Option<String>)>,
    pub vms_stopped: Vec<String>,
    pub unpinned: Vec<String>,
}

/// Undoes the open run of `plan` (a drill, or a failover not yet committed): `undo` of every
/// step that finished, newest first; stops every VM it started; deletes its disks; unpins its
/// points. The run ends `cleaned-up`.
pub async fn cleanup(
    env: &Environment,
    plan: &Plan,
    observe: Observer,
) -> Result<CleanupReport, String> {
    let name = &plan.name.value;
    let open = env
        .open_run(name)?
        .ok_or_else(|| format!("plan `{name}` has no open run to clean up"))?;
    not_driven(&open, "let it finish")?;
    let journal = env.journal()?;
    let op = parse_operation(&open.operation)?;
    let compiled = compile(plan, op);
    let steps: HashMap<&str, &StepRun> = compiled
        .groups
        .iter()
        .flat_map(|g| g.steps.iter().map(|s| (s.id.as_str(), s)))
        .collect();
    let events = journal.events(&open.id)?;
    let undone_before: HashSet<String> = events
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::StepUndone { step, .. } => Some(step.clone()),
            _ => None,
        })
        .collect();
    let finished: Vec<(String, serde_json::Value)> = events
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::StepFinished { step, output, .. } => Some((step.clone(), output.clone())),
            _ => None,
        })
        .collect();
    let runner = runner(
        env,
        &open.id,
        plan,
        Path::new(&open.plan_path),
        op,
        open.point.clone(),
        observe,
    )?;
    let services = runner.services.clone();
    let mut report = CleanupReport {
        run: open.id.clone(),
        ..CleanupReport::default()
    };
    for (id, output) in finished.iter().rev() {
        if undone_before.contains(id) {
            continue;
        }
        let Some(step) = steps.get(id.as_str()) else {
            continue;
        };
        let error = runner.undo(step, output).await.err();
        services
            .record(Event::StepUndone {
                step: id.clone(),
                error: error.clone(),
            })
            .map_err(|e| format!("{e:?}"))?;
        report.undone.push((id.clone(), error));
    }
    // Whatever a step left running (a boot that failed half-way has no outputs to undo).
    let mut vms: Vec<String> = events
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::VmStarted { vm, .. } => Some(vm.clone()),
            _ => None,
        })
        .collect();
    vms.dedup();
    for vm in vms {
        if let Some((handle, _)) = services.handle(&vm).map_err(|e| format!("{e:?}"))? {
            stop_vm(env.driver.as_ref(), &handle).await?;
            services
                .record(Event::VmStopped { vm: vm.clone() })
                .map_err(|e| format!("{e:?}"))?;
            report.vms_stopped.push(vm);
        }
    }
    // A VM whose start the journal saw begin but not end (the runtime died in it).
    let started: HashSet<&str> = events
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::VmStarted { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    for (_, _, e) in &events {
        if let Event::VmStarting { vm, key } = e
            && !started.contains(key.as_str())
            && let Some(handle) = env.driver.find(vm, key).await
        {
            stop_vm(env.driver.as_ref(), &handle).await?;
            report.vms_stopped.push(vm.clone());
        }
    }
    let disks = env.run_dir(&open.id).join("disks");
    if disks.exists() {
        std::fs::remove_dir_all(&disks)
            .map_err(|e| format!("cannot delete {}: {e}", disks.display()))?;
    }
    report.unpinned = unpin(env, plan, &events, &services.pin_reason()).await?;
    services
        .record(Event::RunFinished {
            status: "cleaned-up".into(),
        })
        .map_err(|e| format!("{e:?}"))?;
    Ok(report)
}

async fn stop_vm(driver: &dyn Compute, handle: &Handle) -> Result<(), String> {
    driver.stop(handle, Duration::from_secs(10)).await
}

async fn unpin(
    env: &Environment,
    plan: &Plan,
    events: &[(i64, i64, Event)],
    reason: &str,
) -> Result<Vec<String>, String> {
    let target = env.site_store(&plan.target.value)?;
    let repo = Repository::open(&target).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (_, _, e) in events {
        if let Event::PointChosen { group, seq, .. } = e {
            repo.unpin(group, *seq, reason)
                .await
                .map_err(|e| e.to_string())?;
            out.push(format!("{group}/{seq}"));
        }
    }
    Ok(out)
}

/// Commits the open failover of `plan`: every consistency group it booted is taken over at the
/// target with a higher writer epoch, so the old source, if it comes back, is fenced.
pub async fn commit(env: &Environment, plan: &Plan) -> Result<Vec<(String, u64, u64)>, String> {
    let name = &plan.name.value;
    let open = env
        .open_run(name)?
        .ok_or_else(|| format!("plan `{name}` has no failover to commit"))?;
    if open.operation == "test" {
        return Err(format!(
            "run {} is a drill: drills are cleaned up (`lifeboat cleanup {name}`), not committed",
            open.id
        ));
    }
    if open.status != "succeeded" {
        return Err(format!(
            "run {} is {}: finish it first (`lifeboat retry {}`) or clean it up",
            open.id, open.status, open.id
        ));
    }
    let mut journal = env.journal()?;
    let events = journal.events(&open.id)?;
    let target = env.site_store(&plan.target.value)?;
    let mut out = Vec::new();
    for (_, _, e) in &events {
        if let Event::PointChosen { group, .. } = e {
            let m = lifeboat_replication::cycle::fence(&target, group)
                .await
                .map_err(|e| format!("group `{group}`: {e}"))?;
            journal.append(
                &open.id,
                &Event::Committed {
                    group: group.clone(),
                    seq: m.seq,
                    epoch: m.epoch,
                },
            )?;
            out.push((group.clone(), m.seq, m.epoch));
        }
    }
    unpin(env, plan, &events, &format!("run-{}", open.id)).await?;
    journal.append(
        &open.id,
        &Event::RunFinished {
            status: "committed".into(),
        },
    )?;
    Ok(out)
}

/// The VM processes runs started and did not stop, over every run in the journal.
pub fn running_vms(journal: &Journal) -> Result<Vec<Handle>, String> {
    let mut out = Vec::new();
    for (id, ..) in journal.runs()? {
        let mut up: Vec<Handle> = Vec::new();
        for (_, _, e) in journal.events(&id)? {
            match e {
                Event::VmStarted { vm, pid, .. } => up.push(Handle { vm, pid }),
                Event::VmStopped { vm } => up.retain(|h| h.vm != vm),
                _ => {}
            }
        }
        out.extend(up);
    }
    Ok(out)
}

/// Approves the pending approval of `run`.
pub fn approve(env: &Environment, run: &str, by: &str) -> Result<String, String> {
    let mut journal = env.journal()?;
    if !journal.exists(run)? {
        return Err(format!("no run `{run}` (see `lifeboat runs list`)"));
    }
    let mut pending = None;
    for (_, _, e) in journal.events(run)? {
        match e {
            Event::ApprovalRequested { message } => pending = Some(message),
            Event::Approved { .. } => pending = None,
            _ => {}
        }
    }
    let message = pending.ok_or_else(|| format!("run {run} is not waiting for an approval"))?;
    journal.append(run, &Event::Approved { by: by.to_string() })?;
    Ok(message)
}

/// Marks the step run `run` failed on as skipped; `resume` then goes on after it.
pub fn skip(env: &Environment, run: &str) -> Result<String, String> {
    let mut journal = env.journal()?;
    let status = env.status(run)?;
    if status.status != "failed" {
        return Err(format!(
            "run {run} is {}: only a failed step can be skipped",
            status.status
        ));
    }
    let replayed = journal
        .replay(run)?
        .ok_or_else(|| format!("no run `{run}`"))?;
    let step = replayed
        .failed
        .keys()
        .next()
        .cloned()
        .ok_or_else(|| format!("run {run} has no failed step"))?;
    journal.append(run, &Event::StepSkipped { step: step.clone() })?;
    Ok(step)
}

/// Ends a run that is not going on: it stays open for `cleanup`.
pub fn cancel(env: &Environment, run: &str) -> Result<(), String> {
    let mut journal = env.journal()?;
    let status = env.status(run)?;
    if !matches!(status.status.as_str(), "running" | "failed") {
        return Err(format!("run {run} is {}: nothing to cancel", status.status));
    }
    journal.append(
        run,
        &Event::RunFinished {
            status: "cancelled".into(),
        },
    )?;
    Ok(())
}
