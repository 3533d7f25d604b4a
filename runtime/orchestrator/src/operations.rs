//! The operations users run: a failover (test, planned, unplanned) as a journaled run, and what
//! follows one: `cleanup` (undo every step that ran, stop the VMs, delete their disks, unpin),
//! `commit` (fence the old writer), `approve`, `skip`, `cancel`, and resuming a run.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_plan::Plan;
use lifeboat_plan::plan::Operation;
use lifeboat_plugin_host::plugin_error_text;
use lifeboat_replication::Repository;

use crate::compile::{RunPlan, StepRun, compile};
use crate::compute::{Compute, Handle};
use crate::journal::{Event, Journal};
use crate::network::{Assignment, Purpose, assign};
use crate::run::{Controls, Outcome, execute};
use crate::runs::{Environment, not_driven, running_in, status_of};
use crate::services::{Observer, RunServices};
use crate::source::{groups_of, plan_vms};
use crate::steps::PluginRunner;

/// Restores a run makes at once (each is CPU-bound: decompress and re-hash every chunk).
const RESTORES_AT_ONCE: usize = 4;

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
        return Err(format!("`{}` is not a failover operation", op.name()));
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
    journal.begin(&id, name, op.name())?;
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
    let repo = Repository::open(&target)
        .await
        .map_err(|e| format!("cannot fail over: {e}: run `lifeboat replicate` first"))?;
    let default = crate::compile::point_choice(plan);
    for group in groups_of(env, vms) {
        let choice = crate::services::choice_for(point, &group.name, default);
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
    not_driven(&status)?;
    let op = status.operation()?;
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
    let services = services(env, run, plan, point, assignments, observe)?;
    let plan_dir = plan_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut runner = PluginRunner::new(
        env.engine.clone(),
        plan_dir,
        plan.name.value.clone(),
        op,
        services,
    );
    // A resumed run's steps see what its finished steps wrote.
    if let Some(entries) = journal
        .events(run)?
        .into_iter()
        .rev()
        .find_map(|(_, _, e)| match e {
            Event::Kv { entries } => Some(entries),
            _ => None,
        })
    {
        runner.kv = lifeboat_plugin_host::RunKv::with_entries(entries);
    }
    Ok(runner)
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
    not_driven(&open)?;
    let journal = env.journal()?;
    let op = open.operation()?;
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
            .map_err(|e| plugin_error_text(&e))?;
        report.undone.push((id.clone(), error));
    }
    // Whatever a step left running (a boot that failed half-way has no outputs to undo).
    for handle in running_in(&journal.events(&open.id)?) {
        stop_vm(env.driver.as_ref(), &handle).await?;
        services
            .record(Event::VmStopped {
                vm: handle.vm.clone(),
            })
            .map_err(|e| plugin_error_text(&e))?;
        report.vms_stopped.push(handle.vm);
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
        .map_err(|e| plugin_error_text(&e))?;
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
    // A commit cut short is finished by the next one: groups already taken over stay as they are.
    let committed: HashSet<&str> = events
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::Committed { group, .. } => Some(group.as_str()),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for (_, _, e) in &events {
        if let Event::PointChosen { group, .. } = e
            && !committed.contains(group.as_str())
        {
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

/// Ends a run: a process driving it stops at the step it is in (it watches the journal); the
/// run stays open for `cleanup`.
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
