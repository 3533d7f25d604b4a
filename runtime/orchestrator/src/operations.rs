//! The operations users run: a failover (test, planned, unplanned) as a journaled run, and what
//! follows one: `cleanup` (undo every step that ran, stop the VMs, delete their disks, unpin),
//! `commit` (fence the old writer), `approve`, `skip`, `cancel`, and resuming a run.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_plan::Plan;
use lifeboat_plan::plan::Operation;
use lifeboat_plugin_host::plugin_error_text;
use lifeboat_replication::Repository;

use crate::compile::{RunPlan, StepRun, compile};
use crate::error::{Error, Result};
use crate::journal::{Event, Journal, JournalError, RunKind, RunStatus, fold};
use crate::network::{Assignment, Purpose, assign};
use crate::run::{Controls, Outcome, execute};
use crate::runs::{Environment, not_driven, status_of};
use crate::services::{Observer, RunServices};
use crate::source::{self, groups_of, plan_vms};
use crate::steps::PluginRunner;
use lifeboat_compute::driver::{Compute, Handle};
use lifeboat_compute::netns::Netns;

fn assignments_of(journal: &Journal, run: &str) -> Result<Vec<Assignment>> {
    Ok(journal
        .replay(run)?
        .and_then(|r| r.assignments)
        .unwrap_or_default())
}

/// What a run ended in, with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    pub id: String,
    pub outcome: Outcome,
    /// The source VMs a planned failover stopped before it started.
    pub source_stopped: Vec<Handle>,
}

/// What a failover was asked to do, as the command line says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverRequest {
    pub op: Operation,
    /// `--point`: a kind, a number, or `GROUP/NUMBER`.
    pub point: Option<String>,
    /// `--force`: an unplanned failover although a source VM still answers.
    pub force: bool,
    /// Run the plan reversed: a failback, or with `test`, a drill of it.
    pub reverse: bool,
    /// `--instant`/`--no-instant`: over the plan's `instant`.
    pub instant: Option<bool>,
}

/// What a run is, as its journal keeps it: the operation, the `--point`, reversed or not,
/// instant or not.
#[derive(Clone, Debug)]
struct Shape {
    op: Operation,
    point: Option<String>,
    reverse: bool,
    instant: bool,
}

/// Whether a run of `plan` boots instantly: the command line's choice, else the plan's, else
/// on at a `qemu` target and at a `libvirt` one whose hosts are this machine. Asked for at a
/// `libvirt` target with a remote host, that is an error.
pub(crate) fn instant_for(env: &Environment, plan: &Plan, asked: Option<bool>) -> Result<bool> {
    use lifeboat_plan::inventory::ComputeDriver;
    let site = env.config.inventory.sites.get(&plan.target.value);
    let compute = site.map(|s| s.compute.value);
    let wanted = asked.or(plan.instant.as_ref().map(|i| i.value));
    match (compute, wanted) {
        (Some(ComputeDriver::Qemu), w) => Ok(w.unwrap_or(true)),
        (Some(ComputeDriver::Libvirt), w) => {
            let local = site.is_some_and(crate::services::serves_libvirt_locally);
            match w {
                Some(true) if !local => Err(Error::Failed(format!(
                    "instant boot at `libvirt` site `{}` needs its hosts on this machine (the point is served on a local socket; a remote host's QEMU cannot reach it): run with --no-instant",
                    plan.target.value
                ))),
                w => Ok(local && w.unwrap_or(true)),
            }
        }
        _ => Ok(false),
    }
}

/// What the preflight established: everything a failover needs, found before it acts.
#[derive(Debug)]
struct Cleared {
    assignments: Vec<Assignment>,
    /// The source VMs a planned failover will stop, and its groups' leases.
    source: source::HandOver,
}

/// Every refusal a failover can give, before its first side effect: a failover refused here
/// has stopped nothing, recorded nothing and left nothing to clean up.
async fn preflight(env: &Environment, plan: &Plan, req: &FailoverRequest) -> Result<Cleared> {
    if !matches!(
        req.op,
        Operation::Test | Operation::Planned | Operation::Unplanned | Operation::Failback
    ) {
        return Err(Error::Failed(format!(
            "`{}` is not a failover operation",
            req.op.name()
        )));
    }
    let journal = env.journal()?;
    let name = &plan.name.value;
    if let Some(open) = env.open_run(name)? {
        let id = &open.id;
        let next = match (open.status, open.driver_pid) {
            (RunStatus::Running, Some(pid)) => format!("it is in progress in process {pid}"),
            (RunStatus::Running | RunStatus::Failed, None) => {
                format!("`lifeboat retry {id}` finishes it, `lifeboat cleanup {name}` undoes it")
            }
            (RunStatus::Succeeded, _) if open.operation != RunKind::Test => {
                format!("`lifeboat commit {name}` or `lifeboat cleanup {name}` first")
            }
            _ => format!("`lifeboat cleanup {name}` first"),
        };
        return Err(Error::OpenRun {
            plan: name.clone(),
            run: open.id.clone(),
            operation: open.operation,
            status: open.status,
            next,
        });
    }
    crate::lifecycle::check_direction(env, plan, req.op)?;
    if req.op == Operation::Test && in_namespace(env, plan) {
        Netns::available()
            .await
            .map_err(|e| Error::Compute(e.into()))?;
    }
    let vms = plan_vms(plan);
    preflight_points(env, plan, &vms, req.point.as_deref()).await?;
    // The source first: a source VM Lifeboat cannot stop is the better message than the address
    // it holds.
    let source = source::check(env, plan, req.op, req.force).await?;
    let assignments =
        match assignments_for(env, &journal, plan, req.op, None, Some(&source.located)).await {
            Ok(a) => a,
            Err(e) => {
                source.release().await;
                return Err(e);
            }
        };
    Ok(Cleared {
        assignments,
        source,
    })
}

/// Every NIC's address at the target for a run of `op` of `plan`, beside the addresses other
/// open runs (but `run`) hold there, and checked against what answers at them
/// (`occupied::assign_checked`): for a planned failover, the source VMs it stops first do not
/// count; a drill isolated in a namespace of its own is not probed (its addresses exist only
/// there).
/// `stopping`: the source VMs a planned failover will stop, when its preflight located them
/// already (else they are located here).
/// (The journal is read before the future starts: a `&Journal` held across the probes would
/// keep the future from being `Send`.)
pub(crate) fn assignments_for<'a>(
    env: &'a Environment,
    journal: &Journal,
    plan: &'a Plan,
    op: Operation,
    run: Option<&str>,
    stopping: Option<&'a [Handle]>,
) -> impl Future<Output = Result<Vec<Assignment>>> + Send + 'a {
    let in_use = held_by_open_runs(env, journal, run);
    async move { assign_for(env, plan, op, in_use?, stopping).await }
}

/// The addresses open runs (but `run`) hold, as (`site/network`, address).
fn held_by_open_runs(
    env: &Environment,
    journal: &Journal,
    run: Option<&str>,
) -> Result<HashSet<(String, IpAddr)>> {
    let mut in_use: HashSet<(String, IpAddr)> = HashSet::new();
    for r in env
        .runs()?
        .iter()
        .filter(|r| r.open() && Some(r.id.as_str()) != run)
    {
        for a in assignments_of(journal, &r.id)? {
            in_use.insert((a.network.clone(), a.ip));
        }
    }
    Ok(in_use)
}

async fn assign_for(
    env: &Environment,
    plan: &Plan,
    op: Operation,
    in_use: HashSet<(String, IpAddr)>,
    stopping: Option<&[Handle]>,
) -> Result<Vec<Assignment>> {
    let purpose = if op == Operation::Test {
        Purpose::Test
    } else {
        Purpose::Failover
    };
    let vms = plan_vms(plan);
    if op == Operation::Test && isolated(plan) {
        return assign(&env.config.inventory, plan, &vms, purpose, &in_use).map_err(Error::Failed);
    }
    let freed = match (op, stopping) {
        (Operation::Planned | Operation::Failback, Some(located)) => freed_by(env, located),
        (Operation::Planned | Operation::Failback, None) => {
            let located = lifeboat_compute::site::locate_source_vms(
                &env.config.inventory,
                &env.config.base,
                env.driver.as_ref(),
                &vms,
            )
            .await;
            freed_by(env, &located)
        }
        _ => crate::occupied::Freed::default(),
    };
    crate::occupied::assign_checked(&env.config.inventory, plan, &vms, purpose, &in_use, &freed)
        .await
}

/// Whether `plan`'s drills run in a network namespace of their own.
pub(crate) fn isolated(plan: &Plan) -> bool {
    plan.network
        .as_ref()
        .is_none_or(|n| n.isolation() == lifeboat_plan::plan::TestIsolation::Namespace)
}

/// Whether `plan`'s drills run in a network namespace: isolated drills do, but at a `libvirt`
/// target, where the copies boot on isolated libvirt networks the drill defines.
fn in_namespace(env: &Environment, plan: &Plan) -> bool {
    isolated(plan)
        && env
            .config
            .inventory
            .sites
            .get(&plan.target.value)
            .is_none_or(|s| s.compute.value != lifeboat_plan::inventory::ComputeDriver::Libvirt)
}

/// What a planned failover's hand-over frees before the boot: the source VMs it will stop
/// (`located`: their processes and their children) and their source addresses.
fn freed_by(env: &Environment, located: &[Handle]) -> crate::occupied::Freed {
    let mut freed = crate::occupied::Freed::default();
    for h in located {
        // (A domain on another host has no process here.)
        if h.pid != 0 {
            freed.pids.extend(lifeboat_compute::procfs::family(h.pid));
        }
        if let Some(vm) = env.config.inventory.vms.get(&h.vm) {
            freed.ips.extend(
                vm.nics
                    .iter()
                    .filter_map(|n| n.ip.as_ref().map(|ip| ip.value)),
            );
        }
    }
    freed
}

/// A failover recorded and ready to drive (`resume` drives it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begun {
    pub id: String,
    /// The source VMs a planned failover stopped before it started.
    pub source_stopped: Vec<Handle>,
    /// It boots its `qemu` machines instantly.
    pub instant: bool,
}

/// Starts a failover of `plan` and runs it to its end: [`begin`], then drive it.
pub async fn failover(
    env: &Environment,
    plan: &Plan,
    plan_path: &Path,
    req: FailoverRequest,
    observe: Observer,
    controls: Controls,
) -> Result<RunResult> {
    let op = req.op;
    let point = req.point.clone();
    let reverse = req.reverse || op == Operation::Failback;
    let begun = begin(env, plan, plan_path, req).await?;
    let instant = begun.instant;
    let mut journal = env.journal()?;
    let plan = &crate::lifecycle::plan_for(env, plan, reverse);
    let mut result = drive(
        env,
        &mut journal,
        &begun.id,
        plan,
        plan_path,
        Shape {
            op,
            point,
            reverse,
            instant,
        },
        observe,
        controls,
    )
    .await?;
    result.source_stopped = begun.source_stopped;
    Ok(result)
}

/// Everything a failover does before its steps: every check first (open runs, points,
/// addresses, the source site); then a planned failover stops the source VMs and takes the last
/// point; then the run is recorded. What it returns is driven by [`resume`] (the daemon answers
/// its caller in between).
pub async fn begin(
    env: &Environment,
    plan: &Plan,
    plan_path: &Path,
    req: FailoverRequest,
) -> Result<Begun> {
    // A failback runs the plan reversed; callers pass every plan as written.
    let reverse = req.reverse || req.op == Operation::Failback;
    let plan = &crate::lifecycle::plan_for(env, plan, reverse);
    let instant = instant_for(env, plan, req.instant)?;
    let cleared = preflight(env, plan, &req).await?;
    let stopped = if matches!(req.op, Operation::Planned | Operation::Failback) {
        source::hand_over(env, plan, cleared.source).await?
    } else {
        Vec::new()
    };
    let mut journal = env.journal()?;
    if req.op == Operation::Failback {
        // The copies it stopped were booted by the committed failover: its record says so.
        stopped_in_runs(&mut journal, &stopped)?;
    }
    let name = &plan.name.value;
    let id = journal.new_run_id(name)?;
    journal.begin(
        &id,
        name,
        RunKind::of(req.op).ok_or_else(|| Error::Failed("cleanup is not a failover".into()))?,
    )?;
    journal.append(
        &id,
        &Event::Prepared {
            plan_path: plan_path.display().to_string(),
            point: req.point.clone(),
            reverse: req.reverse && req.op == Operation::Test,
            instant,
        },
    )?;
    journal.append(
        &id,
        &Event::Assigned {
            assignments: cleared.assignments,
        },
    )?;
    if !stopped.is_empty() {
        journal.append(
            &id,
            &Event::SourceStopped {
                vms: stopped.iter().map(|h| h.vm.clone()).collect(),
            },
        )?;
    }
    Ok(Begun {
        id,
        source_stopped: stopped,
        instant,
    })
}

/// Journals, in the run that started each of `stopped`, that it was stopped.
fn stopped_in_runs(journal: &mut Journal, stopped: &[Handle]) -> Result<()> {
    for (id, ..) in journal.runs()? {
        let running = journal.replay(&id)?.map(|r| r.running).unwrap_or_default();
        for h in running {
            if stopped.iter().any(|s| s.vm == h.vm && s.pid == h.pid) {
                journal.append(&id, &Event::VmStopped { vm: h.vm.clone() })?;
            }
        }
    }
    Ok(())
}

/// Every consistency group the plan boots has a point to boot from, before a run is recorded:
/// a failover that cannot start says so and leaves nothing to clean up.
async fn preflight_points(
    env: &Environment,
    plan: &Plan,
    vms: &[&str],
    point: Option<&str>,
) -> Result<()> {
    let target = env.site_store(&plan.target.value)?;
    let repo = Repository::open(&target)
        .await
        .map_err(|e| Error::replication("cannot fail over: run `lifeboat replicate` first", e))?;
    let default = crate::compile::point_choice(plan);
    let mut chosen = Vec::new();
    for group in groups_of(env, vms) {
        let choice = crate::services::choice_for(point, &group.name, default);
        chosen.push(
            lifeboat_replication::points::select(&repo, &group.name, choice)
                .await
                .map_err(|e| Error::replication("cannot fail over", e))?,
        );
    }
    preflight_space(env, vms, &chosen)?;
    preflight_capacity(env, plan, vms, &chosen).await
}

/// The run's restored disks fit where runs keep them (each disk at its full size: that is
/// what it may hold once the VM writes), before anything stops.
fn preflight_space(
    env: &Environment,
    vms: &[&str],
    points: &[lifeboat_replication::Manifest],
) -> Result<()> {
    let need: u64 = points
        .iter()
        .flat_map(|m| &m.vms)
        .filter(|v| vms.contains(&v.name.as_str()))
        .flat_map(|v| &v.disks)
        .map(|d| d.size)
        .sum();
    // The nearest folder that exists: the runs' folder is made by the first run.
    let mut at = env.state_dir.join("runs");
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p.to_path_buf(),
            None => return Ok(()),
        }
    }
    let free = lifeboat_compute::site::free_bytes(&at).map_err(|e| {
        Error::Failed(format!(
            "cannot tell the free space at {}: {e}",
            at.display()
        ))
    })?;
    if free < need {
        return Err(Error::Failed(format!(
            "cannot fail over: the restored disks need {} MiB at {}, which has {} MiB free; nothing was stopped",
            need.div_ceil(1 << 20),
            at.display(),
            free / (1 << 20)
        )));
    }
    Ok(())
}

/// At a `libvirt` target, every copy fits on a host of the site (memory and CPUs, each VM
/// placed as its start will place it: where the most memory is free), before anything stops:
/// a failover that does not fit is refused naming the shortfall.
async fn preflight_capacity(
    env: &Environment,
    plan: &Plan,
    vms: &[&str],
    points: &[lifeboat_replication::Manifest],
) -> Result<()> {
    use lifeboat_compute::libvirt::{connect_all, domain, driver};
    let Some(site) = env.config.inventory.sites.get(&plan.target.value) else {
        return Ok(());
    };
    if site.compute.value != lifeboat_plan::inventory::ComputeDriver::Libvirt {
        return Ok(());
    }
    let uris: Vec<String> = site.hosts.iter().map(|h| h.value.clone()).collect();
    let hosts = connect_all(&uris)
        .await
        .map_err(|e| Error::replication("cannot fail over", e))?;
    let mut room = tokio::task::spawn_blocking(move || driver::capacity(&hosts))
        .await
        .map_err(|e| Error::Failed(e.to_string()))?
        .map_err(|e| Error::Failed(format!("cannot fail over: libvirt: {e}")))?;
    for vm in points.iter().flat_map(|m| &m.vms) {
        if !vms.contains(&vm.name.as_str()) {
            continue;
        }
        let Some((_, xml)) = crate::services::domain_of_point(&vm.definition) else {
            continue;
        };
        let spec = domain::parse(&xml)
            .map_err(|e| Error::Failed(format!("VM `{}`: its point's domain XML: {e}", vm.name)))?;
        let at = driver::place(&room, &vm.name, spec.memory_kib, spec.vcpus).map_err(|why| {
            Error::Failed(format!(
                "cannot fail over to site `{}`: {why}; nothing was stopped",
                plan.target.value
            ))
        })?;
        room[at].1 -= spec.memory_kib * 1024;
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
) -> Result<RunResult> {
    let mut journal = env.journal()?;
    let status = status_of(&journal, run)?;
    if status.status == RunStatus::Succeeded {
        // Its process died after the last event: there is nothing left to do.
        return Ok(RunResult {
            id: run.to_string(),
            outcome: Outcome::Succeeded,
            source_stopped: Vec::new(),
        });
    }
    if !status.status.is_resumable() {
        return Err(Error::InvalidState {
            run: run.to_string(),
            status: status.status,
            why: "there is nothing to resume".into(),
        });
    }
    not_driven(&status)?;
    if status.operation == RunKind::Reprotect {
        let path = std::path::PathBuf::from(&status.plan_path);
        crate::lifecycle::reprotect(env, plan, &path, Some(run), observe).await?;
        return Ok(RunResult {
            id: run.to_string(),
            outcome: Outcome::Succeeded,
            source_stopped: Vec::new(),
        });
    }
    let op = status.operation()?;
    let plan = &crate::lifecycle::plan_for(env, plan, status.reverse);
    // A run whose process died while it was being recorded has no addresses yet: nothing of it
    // ran, so they are assigned now by the same rules.
    if journal.replay(run)?.is_none_or(|r| r.assignments.is_none()) {
        let assignments = assignments_for(env, &journal, plan, op, Some(run), None).await?;
        journal.append(run, &Event::Assigned { assignments })?;
    }
    drive(
        env,
        &mut journal,
        run,
        plan,
        Path::new(&status.plan_path),
        Shape {
            op,
            point: status.point.clone(),
            reverse: status.reverse,
            instant: status.instant,
        },
        observe,
        controls,
    )
    .await
}

fn runner(
    env: &Environment,
    run: &str,
    plan: &Plan,
    plan_path: &Path,
    shape: Shape,
    observe: Observer,
) -> Result<PluginRunner> {
    let Shape {
        op,
        point,
        reverse,
        instant,
    } = shape;
    let journal = env.journal()?;
    let assignments = assignments_of(&journal, run)?;
    let netns =
        (op == Operation::Test && in_namespace(env, plan)).then(|| netns_of(env, &journal, run));
    let services = Arc::new(
        RunServices::new(env, run, plan, point, assignments, observe)?
            .with_drill(op == Operation::Test)
            .with_instant(instant)
            .with_netns(netns.transpose()?),
    );
    let plan_dir = plan_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut runner = PluginRunner::new(
        env.engine.clone(),
        env.config.components.clone(),
        plan_dir,
        plan.name.value.clone(),
        op,
        services,
    );
    runner.reverse = reverse;
    // A resumed run's steps see what its finished steps wrote.
    if let Some(entries) = journal.replay(run)?.and_then(|r| r.kv) {
        runner.kv = lifeboat_plugin_host::RunKv::with_entries(entries);
    }
    Ok(runner)
}

/// The network namespace of drill `run`: the one its journal names, else the name it gets.
fn netns_of(env: &Environment, journal: &Journal, run: &str) -> Result<Netns> {
    let recorded = journal.replay(run)?.and_then(|r| r.isolated);
    Ok(Netns::named(
        &recorded.unwrap_or_else(|| Netns::name_for(&env.state_dir, run)),
    ))
}

/// The network namespace run `run` made, if it made one (`lifeboat drill exec` enters it).
pub fn run_netns(env: &Environment, run: &str) -> Result<Option<Netns>> {
    let journal = env.journal()?;
    if !journal.exists(run)? {
        return Err(Error::NoRun {
            run: run.to_string(),
        });
    }
    Ok(journal
        .replay(run)?
        .and_then(|r| r.netns().map(Netns::named)))
}

#[expect(clippy::too_many_arguments)]
async fn drive(
    env: &Environment,
    journal: &mut Journal,
    run: &str,
    plan: &Plan,
    plan_path: &Path,
    shape: Shape,
    observe: Observer,
    controls: Controls,
) -> Result<RunResult> {
    let op = shape.op;
    let pid = std::process::id();
    journal.append(
        run,
        &Event::Driving {
            pid,
            started: lifeboat_compute::driver::process_start_time(pid),
            daemon: env.daemon,
        },
    )?;
    let compiled: RunPlan = compile(plan, op);
    let runner = runner(env, run, plan, plan_path, shape, observe.clone())?;
    let show = |e: &Event, _seq: i64| observe(run, e);
    let span =
        tracing::info_span!("run", id = %run, plan = %plan.name.value, operation = op.name());
    let outcome = tracing::Instrument::instrument(
        execute(journal, run, &compiled, &runner, &show, controls),
        span,
    )
    .await?;
    Ok(RunResult {
        id: run.to_string(),
        outcome,
        source_stopped: Vec::new(),
    })
}

/// What `cleanup` did (`--output json` prints it as it is).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct CleanupReport {
    pub run: String,
    /// Steps undone, in the order undone.
    pub undone: Vec<Undone>,
    /// VMs stopped, by a step's undo or by cleanup itself.
    pub vms_stopped: Vec<String>,
    /// Points unpinned, as `GROUP/SEQ`.
    pub unpinned: Vec<String>,
    /// The drill's network namespace, removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_namespace: Option<String>,
    /// The libvirt networks a drill defined, removed, and those the run reserved addresses
    /// in, released (`NETWORK on HOST`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub libvirt_networks: Vec<String>,
    /// Source VMs a planned failover (or failback) had stopped, started again as their boot
    /// commands say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_restarted: Vec<String>,
    /// Source VMs it had stopped that could not be started again, with why and what to do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_left_stopped: Vec<String>,
}

/// One step's undo.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Undone {
    pub step: String,
    /// Why the undo failed, if it did.
    pub error: Option<String>,
}

/// Undoes the open run of `plan` (a drill, or a failover not yet committed): `undo` of every
/// step that finished, newest first; stops every VM it started; deletes its disks; unpins its
/// points. The run ends `cleaned-up`.
pub async fn cleanup(env: &Environment, plan: &Plan, observe: Observer) -> Result<CleanupReport> {
    let name = &plan.name.value;
    let open = env.open_run(name)?.ok_or_else(|| Error::NoOpenRun {
        plan: name.clone(),
        what: "open run to clean up",
    })?;
    not_driven(&open)?;
    if open.operation == RunKind::Reprotect {
        return Err(Error::InvalidState {
            run: open.id.clone(),
            status: open.status,
            why: format!(
                "a reprotect has nothing to undo: `lifeboat retry {}` finishes it",
                open.id
            ),
        });
    }
    let journal = env.journal()?;
    let op = open.operation()?;
    let plan = &crate::lifecycle::plan_for(env, plan, open.reverse);
    let compiled = compile(plan, op);
    let steps: HashMap<&str, &StepRun> = compiled
        .groups
        .iter()
        .flat_map(|g| g.steps.iter().map(|s| (s.id.as_str(), s)))
        .collect();
    let events = journal.events(&open.id)?;
    // What this cleanup does starts after here (an undo stops VMs too: they are counted).
    let before = journal.last_seq(&open.id)?;
    let undone_before = fold(events.iter().map(|(_, _, e)| e)).undone;
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
        Shape {
            op,
            point: open.point.clone(),
            reverse: open.reverse,
            instant: open.instant,
        },
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
        // Journaled and reported as its message.
        let error = runner.undo(step, output).await.err().map(|e| e.to_string());
        services
            .record(Event::StepUndone {
                step: id.clone(),
                error: error.clone(),
            })
            .map_err(journal_error)?;
        report.undone.push(Undone {
            step: id.clone(),
            error,
        });
    }
    // Whatever a step left running (a boot that failed half-way has no outputs to undo).
    let now = journal.replay(&open.id)?.unwrap_or_default();
    for handle in &now.running {
        stop_vm(env.driver.as_ref(), handle).await?;
        services
            .record(Event::VmStopped {
                vm: handle.vm.clone(),
            })
            .map_err(journal_error)?;
    }
    // The export servers of instant boots (their VMs are stopped: nothing reads them now).
    crate::hydration::stop_servers(env, &open.id).await?;
    // A VM whose start the journal saw begin but not end (the runtime died in it).
    for (vm, key) in &now.starting {
        if let Some(handle) = env.driver.find(vm, key).await {
            stop_vm(env.driver.as_ref(), &handle).await?;
            report.vms_stopped.push(vm.clone());
        }
        // A libvirt copy is found by its name on the target's hosts; only one that carries
        // this start's key is stopped and undefined (see `LibvirtDriver::stop`).
        let copy = events.iter().find_map(|(_, _, e)| match e {
            Event::VmStarting {
                key: k,
                domain: Some(d),
                ..
            } if k == key => Some(d.clone()),
            _ => None,
        });
        let hosts = env
            .config
            .inventory
            .sites
            .get(&plan.target.value)
            .map(|s| s.hosts.iter().map(|h| h.value.clone()).collect::<Vec<_>>())
            .unwrap_or_default();
        if let Some(name) = &copy {
            for host in &hosts {
                let handle = Handle {
                    vm: vm.clone(),
                    pid: 0,
                    started: None,
                    key: key.clone(),
                    domain: Some(lifeboat_compute::driver::Domain {
                        host: host.clone(),
                        name: name.clone(),
                        owned: true,
                    }),
                };
                stop_vm(env.driver.as_ref(), &handle).await?;
            }
        }
        if copy.is_some() && !report.vms_stopped.contains(vm) {
            report.vms_stopped.push(vm.clone());
        }
    }
    let disks = env.run_dir(&open.id).join("disks");
    if disks.exists() {
        let dir = disks.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
            .await
            .map_err(|e| Error::Failed(format!("cannot delete {}: {e}", disks.display())))?
            .map_err(|e| Error::Failed(format!("cannot delete {}: {e}", disks.display())))?;
    }
    // Its copies gone, a libvirt drill's networks and the run's reservations go too.
    let recorded: Vec<Event> = events.iter().map(|(_, _, e)| e.clone()).collect();
    let released = crate::services::release_networks(&recorded)
        .await
        .map_err(Error::Failed)?;
    for r in &released {
        let (network, host) = r.split_once(" on ").unwrap_or((r.as_str(), ""));
        services
            .record(Event::NetworkReleased {
                host: host.to_string(),
                network: network.to_string(),
            })
            .map_err(journal_error)?;
    }
    report.libvirt_networks = released;
    // The source VMs a planned failover stopped run again, now that its copies are gone.
    restart_source(env, &events, &services, &mut report).await?;
    // Nothing of the run runs any more: its network namespace goes too.
    for (_, _, e) in &events {
        if let Event::Isolated { netns } = e {
            let ns = Netns::named(netns);
            ns.delete().await.map_err(|e| Error::Compute(e.into()))?;
            services
                .record(Event::NamespaceRemoved {
                    netns: netns.clone(),
                })
                .map_err(journal_error)?;
            report.network_namespace = Some(netns.clone());
        }
    }
    report.unpinned = unpin(env, plan, &events, &services.pin_reason()).await?;
    for (_, _, e) in journal.events_after(&open.id, before)? {
        if let Event::VmStopped { vm } = e
            && !report.vms_stopped.contains(&vm)
        {
            report.vms_stopped.push(vm);
        }
    }
    services
        .record(Event::RunFinished {
            status: RunStatus::CleanedUp,
        })
        .map_err(journal_error)?;
    Ok(report)
}

/// Starts again the source VMs run `events` stopped before it began (a planned failover's, or
/// a failback's), each as its boot command says so that Lifeboat recognises it; one that cannot
/// start is reported with what to do. A cleanup that ran before started them already.
async fn restart_source(
    env: &Environment,
    events: &[(i64, i64, Event)],
    services: &RunServices,
    report: &mut CleanupReport,
) -> Result<()> {
    let stopped: Vec<String> = events
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::SourceStopped { vms } => Some(vms.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let restarted: HashSet<&str> = events
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::SourceRestarted { vm, .. } => Some(vm.as_str()),
            _ => None,
        })
        .collect();
    for vm in stopped.iter().filter(|v| !restarted.contains(v.as_str())) {
        let Some(mut launch) =
            lifeboat_compute::site::source_launch(&env.config.inventory, &env.config.base, vm)
        else {
            report.source_left_stopped.push(format!(
                "{vm}: its boot command cannot be filled in; start it yourself"
            ));
            continue;
        };
        // Already up (someone started it since): nothing to do.
        if !env
            .driver
            .locate(std::slice::from_ref(&launch))
            .await
            .is_empty()
        {
            report.source_restarted.push(vm.clone());
            continue;
        }
        launch.log = env.state_dir.join("source-logs").join(format!("{vm}.log"));
        match env.driver.start(&launch).await {
            Ok(h) => {
                services
                    .record(Event::SourceRestarted {
                        vm: vm.clone(),
                        pid: h.pid,
                        started: h.started,
                    })
                    .map_err(journal_error)?;
                report.source_restarted.push(vm.clone());
            }
            Err(e) => report.source_left_stopped.push(format!(
                "{vm}: {e}; start it as its boot command says (`{}`, from {})",
                launch.argv.join(" "),
                launch.dir.display()
            )),
        }
    }
    Ok(())
}

/// A journal write the run's services failed (they speak the plugin host's error type).
fn journal_error(e: lifeboat_plugin_host::wit::Error) -> Error {
    Error::Journal(JournalError(plugin_error_text(&e)))
}

async fn stop_vm(driver: &dyn Compute, handle: &Handle) -> Result<()> {
    driver
        .stop(handle, Duration::from_secs(10))
        .await
        .map_err(Error::Compute)
}

async fn unpin(
    env: &Environment,
    plan: &Plan,
    events: &[(i64, i64, Event)],
    reason: &str,
) -> Result<Vec<String>> {
    let target = env.site_store(&plan.target.value)?;
    let repo = Repository::open(&target)
        .await
        .map_err(|e| Error::replication("cannot unpin the run's points", e))?;
    let mut out = Vec::new();
    for (_, _, e) in events {
        if let Event::PointChosen { group, seq, .. } = e {
            repo.unpin(group, *seq, reason)
                .await
                .map_err(|e| Error::replication(format!("cannot unpin point {group}/{seq}"), e))?;
            out.push(format!("{group}/{seq}"));
        }
    }
    Ok(out)
}

/// A consistency group a commit took over at the target.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Committed {
    pub group: String,
    /// The site that took it over (the plan's target).
    pub site: String,
    /// The point it was taken over at.
    pub point: u64,
    /// The writer epoch the target writes with from now on.
    pub epoch: u64,
}

/// Commits the open failover of `plan`: every consistency group it booted is taken over at the
/// target with a higher writer epoch, so the old source, if it comes back, is fenced.
pub async fn commit(env: &Environment, plan: &Plan, wait: bool) -> Result<Vec<Committed>> {
    let name = &plan.name.value;
    let open = env.open_run(name)?.ok_or_else(|| Error::NoOpenRun {
        plan: name.clone(),
        what: "failover to commit",
    })?;
    if open.operation == RunKind::Reprotect {
        return Err(Error::InvalidState {
            run: open.id.clone(),
            status: open.status,
            why: format!(
                "a reprotect is not committed: `lifeboat retry {}` finishes it",
                open.id
            ),
        });
    }
    let plan = &crate::lifecycle::plan_for(env, plan, open.reverse);
    if open.operation == RunKind::Test {
        return Err(Error::InvalidState {
            run: open.id.clone(),
            status: open.status,
            why: format!(
                "it is a drill: drills are cleaned up (`lifeboat cleanup {name}`), not committed"
            ),
        });
    }
    if open.status != RunStatus::Succeeded {
        return Err(Error::InvalidState {
            run: open.id.clone(),
            status: open.status,
            why: format!(
                "finish it first (`lifeboat retry {}`) or clean it up",
                open.id
            ),
        });
    }
    // An instant run's disks must hold all their data first: once committed, the point its
    // disks still read from may expire.
    if crate::hydration::is_instant(env, &open.id)? {
        let seen = if wait {
            let seen = crate::hydration::until_hydrated(env, &open.id, |_| {}).await?;
            if crate::hydration::unhydrated(&seen).is_some() {
                // What is left belongs to VMs that are not running: no job copies for them.
                crate::hydration::hydrate_stopped(env, &open.id).await?;
                crate::hydration::tend(env, &open.id).await?
            } else {
                seen
            }
        } else {
            crate::hydration::tend(env, &open.id).await?
        };
        if let Some(open_disks) = crate::hydration::unhydrated(&seen) {
            return Err(Error::InvalidState {
                run: open.id.clone(),
                status: open.status,
                why: format!(
                    "its disks are not hydrated yet: {open_disks} (`lifeboat commit` without --no-wait waits for them, and hydrates those of a VM that is not running)"
                ),
            });
        }
    }
    let mut journal = env.journal()?;
    let events = journal.events(&open.id)?;
    let target = env.site_store(&plan.target.value)?;
    // A commit cut short is finished by the next one: groups already taken over stay as they are.
    let committed = fold(events.iter().map(|(_, _, e)| e)).committed;
    let mut out = Vec::new();
    for (_, _, e) in &events {
        if let Event::PointChosen { group, .. } = e
            && !committed.contains(group.as_str())
        {
            let m = lifeboat_replication::fencing::fence(&target, group)
                .await
                .map_err(|e| Error::replication(format!("group `{group}`"), e))?;
            journal.append(
                &open.id,
                &Event::Committed {
                    group: group.clone(),
                    seq: m.seq,
                    epoch: m.epoch,
                },
            )?;
            out.push(Committed {
                group: group.clone(),
                site: plan.target.value.clone(),
                point: m.seq,
                epoch: m.epoch,
            });
        }
    }
    let taken: Vec<String> = events
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::PointChosen { group, .. } => Some(group.clone()),
            _ => None,
        })
        .collect();
    crate::lifecycle::record_commit(env, &open.id, &plan.target.value, &taken, &events).await?;
    unpin(env, plan, &events, &format!("run-{}", open.id)).await?;
    journal.append(
        &open.id,
        &Event::RunFinished {
            status: RunStatus::Committed,
        },
    )?;
    Ok(out)
}

/// Approves the pending approval of `run`.
pub fn approve(env: &Environment, run: &str, by: &str) -> Result<String> {
    let mut journal = env.journal()?;
    if !journal.exists(run)? {
        return Err(Error::NoRun {
            run: run.to_string(),
        });
    }
    let message = journal
        .replay(run)?
        .and_then(|r| r.pending_approval)
        .ok_or_else(|| Error::Failed(format!("run {run} is not waiting for an approval")))?;
    journal.append(run, &Event::Approved { by: by.to_string() })?;
    Ok(message)
}

/// Marks the step run `run` failed on as skipped; `resume` then goes on after it.
pub fn skip(env: &Environment, run: &str) -> Result<String> {
    let mut journal = env.journal()?;
    let status = env.status(run)?;
    if status.status != RunStatus::Failed {
        return Err(Error::InvalidState {
            run: run.to_string(),
            status: status.status,
            why: "only a failed step can be skipped".into(),
        });
    }
    let replayed = journal.replay(run)?.ok_or_else(|| Error::NoRun {
        run: run.to_string(),
    })?;
    let step = replayed
        .failed
        .keys()
        .next()
        .cloned()
        .ok_or_else(|| Error::Failed(format!("run {run} has no failed step")))?;
    journal.append(run, &Event::StepSkipped { step: step.clone() })?;
    Ok(step)
}

/// Ends a run: a process driving it stops at the step it is in (it watches the journal); the
/// run stays open for `cleanup`.
pub fn cancel(env: &Environment, run: &str) -> Result<()> {
    let mut journal = env.journal()?;
    let status = env.status(run)?;
    if !status.status.is_resumable() {
        return Err(Error::InvalidState {
            run: run.to_string(),
            status: status.status,
            why: "nothing to cancel".into(),
        });
    }
    journal.append(
        run,
        &Event::RunFinished {
            status: RunStatus::Cancelled,
        },
    )?;
    Ok(())
}
