//! `lifeboat plan simulate`: the run a failover of a plan would be, without running it — the
//! steps compiled as a failover compiles them, the addresses assigned by the same rules (beside
//! those open runs hold), the point each group would boot, and the RTO predicted from what the
//! plan's earlier runs measured (the journal, or a profile exported from it). Nothing is
//! started, restored or changed. What it does not do yet: run each step in the sandbox against
//! simulated services (a step that would fail is not caught here).

use std::collections::HashMap;

use lifeboat_plan::Plan;
use lifeboat_plan::plan::Operation;
use serde::{Deserialize, Serialize};

use crate::compile::{Phase, compile};
use crate::error::Result;
use crate::journal::Event;
use crate::runs::Environment;

/// Seconds a step takes when no earlier run measured it: a boot step restores and boots VMs,
/// the others are probes and hooks.
pub const DEFAULT_BOOT_SECONDS: f64 = 60.0;
pub const DEFAULT_STEP_SECONDS: f64 = 2.0;

/// What earlier runs measured: each step's duration (its last attempt, by step id).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Where the figures come from (`run p-3 (test)`).
    pub source: String,
    pub steps: HashMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimStep {
    pub id: String,
    pub group: String,
    pub phase: Phase,
    pub name: String,
    pub uses: String,
    /// Predicted start, from the run's start.
    pub start_seconds: f64,
    pub seconds: f64,
    /// Measured by an earlier run (else a default).
    pub measured: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimVm {
    pub vm: String,
    pub group: String,
    /// `nicN network address (why)`, as `runs show` prints a run's.
    pub addresses: Vec<String>,
    /// The point it would boot (`erp/12, captured …`), or why it is not known.
    pub point: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Simulation {
    pub plan: String,
    pub operation: Operation,
    pub steps: Vec<SimStep>,
    pub vms: Vec<SimVm>,
    /// Predicted RTO: the run's steps end to end (groups one after another).
    pub rto_seconds: f64,
    /// What the prediction rests on.
    pub basis: String,
    /// The plan's `rto_objective`, when it states one.
    pub objective_seconds: Option<f64>,
}

impl Simulation {
    pub fn exceeds_objective(&self) -> bool {
        self.objective_seconds.is_some_and(|o| self.rto_seconds > o)
    }
}

/// The profile of `plan`'s most recent finished run of `op` (else of any operation).
pub fn profile_from_journal(
    env: &Environment,
    plan: &str,
    op: Operation,
) -> Result<Option<Profile>> {
    let journal = env.journal()?;
    let runs = env.runs()?;
    let finished = |r: &&crate::runs::RunInfo| {
        r.plan == plan
            && matches!(
                r.status,
                crate::journal::RunStatus::Succeeded
                    | crate::journal::RunStatus::CleanedUp
                    | crate::journal::RunStatus::Committed
            )
    };
    let chosen = runs
        .iter()
        .filter(finished)
        .find(|r| r.operation == op.name())
        .or_else(|| runs.iter().find(finished));
    let Some(run) = chosen else {
        return Ok(None);
    };
    drop(journal);
    profile_of(env, &run.id).map(Some)
}

/// What run `run` measured: each step's duration (its last attempt).
pub fn profile_of(env: &Environment, run: &str) -> Result<Profile> {
    let info = env.status(run)?;
    let journal = env.journal()?;
    let mut started: HashMap<String, i64> = HashMap::new();
    let mut steps = HashMap::new();
    for (_, at, e) in journal.events(run)? {
        match e {
            Event::StepStarted { step, .. } => {
                started.insert(step, at);
            }
            Event::StepFinished { step, .. } => {
                if let Some(s) = started.get(&step) {
                    steps.insert(step, (at - s).max(0) as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }
    Ok(Profile {
        source: format!("run {run} ({})", info.operation),
        steps,
    })
}

/// Simulates a run of `op` of `plan`; `profile` the measurements to predict from.
pub async fn simulate(
    env: &Environment,
    plan: &Plan,
    op: Operation,
    profile: Option<&Profile>,
) -> Result<Simulation> {
    let reverse = op == Operation::Failback;
    let plan = &crate::lifecycle::plan_for(env, plan, reverse);
    let compiled = compile(plan, op);
    let journal = env.journal()?;
    let assignments = crate::operations::assignments_for(env, &journal, plan, op, None)?;
    let points = points(env, plan).await;
    let mut steps = Vec::new();
    let mut at = 0.0;
    let mut measured_all = true;
    for group in &compiled.groups {
        for s in &group.steps {
            let measured = profile.and_then(|p| p.steps.get(&s.id)).copied();
            measured_all &= measured.is_some();
            let seconds = measured.unwrap_or(if s.phase == Phase::Boot {
                DEFAULT_BOOT_SECONDS
            } else {
                DEFAULT_STEP_SECONDS
            });
            steps.push(SimStep {
                id: s.id.clone(),
                group: s.group.clone(),
                phase: s.phase,
                name: s.name.clone(),
                uses: s.uses.clone(),
                start_seconds: at,
                seconds,
                measured: measured.is_some(),
            });
            at += seconds;
        }
    }
    let mut vms = Vec::new();
    for group in &compiled.groups {
        for vm in &group.vms {
            let addresses = assignments
                .iter()
                .filter(|a| &a.vm == vm)
                .map(|a| {
                    format!("nic{} {} {} ({:?})", a.nic, a.network, a.ip, a.why).to_lowercase()
                })
                .collect();
            let point = crate::source::groups_of(env, &[vm.as_str()])
                .first()
                .and_then(|g| points.get(&g.name).cloned())
                .unwrap_or_else(|| "unknown: the VM is in no consistency group".into());
            vms.push(SimVm {
                vm: vm.clone(),
                group: group.name.clone(),
                addresses,
                point,
            });
        }
    }
    let basis = match profile {
        Some(p) if measured_all => format!("every step as {} measured it", p.source),
        Some(p) => format!(
            "{}; steps it did not run: {DEFAULT_BOOT_SECONDS:.0} s a boot step, {DEFAULT_STEP_SECONDS:.0} s any other",
            p.source
        ),
        None => format!(
            "no earlier run of this plan: {DEFAULT_BOOT_SECONDS:.0} s a boot step, {DEFAULT_STEP_SECONDS:.0} s any other (run a drill, or pass --profile)"
        ),
    };
    Ok(Simulation {
        plan: plan.name.value.clone(),
        operation: op,
        steps,
        vms,
        rto_seconds: at,
        basis,
        objective_seconds: plan.rto_objective.as_ref().map(|d| d.value.0.as_secs_f64()),
    })
}

/// The point each consistency group of the plan would boot, as a failover would choose it, or
/// why it is not known (the repository out of reach, no point yet).
async fn points(env: &Environment, plan: &Plan) -> HashMap<String, String> {
    let vms = crate::source::plan_vms(plan);
    let default = crate::compile::point_choice(plan);
    let mut out = HashMap::new();
    // Read-only: a target folder that does not exist is not created.
    let repo = match env.inventory.sites.get(&plan.target.value) {
        Some(site) => {
            match lifeboat_replication::Store::open_if_present(&site.store.value, &env.base) {
                Ok(Some(store)) => lifeboat_replication::Repository::open(&store)
                    .await
                    .map_err(|e| e.to_string()),
                Ok(None) => Err(format!(
                    "nothing has been replicated to `{}` yet",
                    site.store.value
                )),
                Err(e) => Err(e.to_string()),
            }
        }
        None => Err(format!("no site `{}` in the inventory", plan.target.value)),
    };
    for group in crate::source::groups_of(env, &vms) {
        let choice = crate::services::choice_for(None, &group.name, default);
        let said = match &repo {
            Ok(repo) => match lifeboat_replication::points::select(repo, &group.name, choice).await
            {
                Ok(m) => format!(
                    "{}/{} ({}, captured {})",
                    group.name,
                    m.seq,
                    m.kind.as_str(),
                    lifeboat_replication::clock::rfc3339(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_millis(m.captured_unix_ms)
                    )
                ),
                Err(e) => format!("{choice}: not available ({e})"),
            },
            Err(e) => format!("{choice} (the repository is out of reach: {e})"),
        };
        out.insert(group.name.clone(), said);
    }
    out
}
