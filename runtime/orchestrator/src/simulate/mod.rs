//! `lifeboat plan simulate`: the run a failover of a plan would be, without running it. The run
//! is compiled as a failover compiles it, the addresses assigned by the same rules (beside those
//! open runs hold), the point each group would boot chosen from the target repository when it
//! can be read; then every step — the real built-in or pinned component, in the sandbox, with
//! `dry-run` in its context — runs against a simulated site ([`world`]): restores take the time
//! the model gives them, VMs become healthy after their measured boot times, probes are answered
//! as those VMs would answer at that moment, approvals are granted. Nothing is started, restored
//! or changed, and no site need be reachable. A step that fails there is a diagnostic; the
//! simulated clock is the predicted RTO.

pub mod world;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_plan::Plan;
use lifeboat_plan::plan::Operation;
use lifeboat_plugin_host::{RunKv, StepOutcome};
use serde::{Deserialize, Serialize};

use crate::compile::{Phase, compile};
use crate::error::Result;
use crate::journal::Event;
use crate::journal::RunKind;
use crate::runs::Environment;
use crate::steps::{Facts, load_plugin};
use world::{SimPoint, SimWorld, Timing, VmTimeline};

/// What the model assumes where no earlier run measured: a VM boots to healthy in a minute
/// (at most half its own health timeout), a restore reads 200 MiB/s (30 s when the point's
/// size is not known), a step that spends no simulated time (a probe, a hook) takes a second.
pub const DEFAULT_BOOT_SECONDS: f64 = 60.0;
pub const DEFAULT_RESTORE_BYTES_PER_SECOND: f64 = 200.0 * 1024.0 * 1024.0;
pub const DEFAULT_RESTORE_SECONDS: f64 = 30.0;
pub const DEFAULT_STEP_SECONDS: f64 = 1.0;

/// How often `builtin:boot-group` polls a starting VM unless its `with` says (`poll_ms`).
const BOOT_POLL_MS: u64 = 250;

/// How long one simulated step may run for real: its simulated time costs nothing, so only a
/// step that spins (or a hostile one) gets near this.
const REAL_STEP_LIMIT: Duration = Duration::from_secs(20);

/// What an earlier run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Where the figures come from (`run p-3 (test)`).
    pub source: String,
    /// Each step's duration (its last attempt), by step id.
    pub steps: HashMap<String, f64>,
    /// Each VM's restore and boot, by VM name.
    #[serde(default)]
    pub vms: HashMap<String, VmMeasured>,
}

/// What a run measured of one VM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VmMeasured {
    /// From the previous restore or start of its step to its restore's end.
    pub restore_seconds: Option<f64>,
    /// From its start to the end of its boot step (when every VM of the group was healthy).
    pub boot_seconds: Option<f64>,
    /// It booted instantly: its "restore" was the export server's start, not a restore.
    #[serde(default)]
    pub instant: bool,
}

/// An instant boot's restore when nothing measured one: start the export server, make the
/// images (0.1–0.3 s measured here).
const DEFAULT_INSTANT_SECONDS: f64 = 0.5;

/// Where a predicted duration comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// The simulated time the step's own calls spent (restores, boots, waits), from the model.
    Simulated,
    /// The step's duration in the profile's run.
    Measured,
    /// Nothing measured it: the default.
    Default,
}

/// How a step ended in the simulation.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "detail")]
pub enum SimOutcome {
    Ok,
    Failed(String),
    /// An earlier step failed: a real run would stop there.
    NotReached,
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
    pub basis: Basis,
    pub outcome: SimOutcome,
    /// What the step logged in the simulation.
    pub log: Vec<String>,
    pub outputs: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimVm {
    pub vm: String,
    pub group: String,
    /// Where each NIC lands, as a run records it.
    pub addresses: Vec<crate::record::AddressRecord>,
    /// The point it would boot (`erp/12, captured …`), or why it is not known.
    pub point: String,
    /// What the simulated run did with it.
    pub timeline: VmTimeline,
    pub restore_basis: Basis,
    pub boot_basis: Basis,
}

/// Something that would stop the recovery, found by the simulation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    /// The diagnostic rule (`step-fails-in-dry-run`, `boots-later`, `address-clash`,
    /// `address-in-use`).
    pub rule: &'static str,
    /// The step it concerns (`GROUP/post/0`), if one.
    pub step: Option<String>,
    /// The VM it concerns, if one.
    pub vm: Option<String>,
    pub message: String,
    pub help: Option<String>,
}

/// One stretch of the critical path: a group, and what made it as long as it is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathLeg {
    pub group: String,
    pub seconds: f64,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Simulation {
    pub plan: String,
    pub operation: Operation,
    pub steps: Vec<SimStep>,
    pub vms: Vec<SimVm>,
    /// Groups run one after another: the path is every group, each led by its slowest part.
    pub critical_path: Vec<PathLeg>,
    /// Predicted RTO: the simulated run end to end.
    pub rto_seconds: f64,
    /// What the prediction rests on.
    pub basis: String,
    /// The plan's `rto_objective`, when it states one.
    pub objective_seconds: Option<f64>,
    /// The `qemu` VMs boot instantly (from the repository, hydrating behind): their restores
    /// are the export server's start.
    pub instant: bool,
    /// What the steps would have touched and did not (a request not sent, an address outside
    /// the plan assumed to answer, an approval granted).
    pub notes: Vec<world::Note>,
    pub problems: Vec<Problem>,
}

impl Simulation {
    pub fn exceeds_objective(&self) -> bool {
        self.objective_seconds.is_some_and(|o| self.rto_seconds > o)
    }

    /// Whether the recovery would go through: no step failed, nothing clashed.
    pub fn recovers(&self) -> bool {
        self.problems.is_empty()
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
        .find(|r| RunKind::of(op) == Some(r.operation))
        .or_else(|| runs.iter().find(finished));
    let Some(run) = chosen else {
        return Ok(None);
    };
    drop(journal);
    profile_of(env, &run.id).map(Some)
}

/// What run `run` measured: each step's duration (its last attempt), each VM's restore and
/// boot.
pub fn profile_of(env: &Environment, run: &str) -> Result<Profile> {
    let info = env.status(run)?;
    let journal = env.journal()?;
    let mut started: HashMap<String, i64> = HashMap::new();
    let mut steps = HashMap::new();
    let mut vms: HashMap<String, VmMeasured> = HashMap::new();
    // Within the step that runs: when its last restore or start ended, and the VMs it started.
    let mut mark = 0i64;
    let mut booting: HashMap<String, i64> = HashMap::new();
    for (_, at, e) in journal.events(run)? {
        match e {
            Event::StepStarted { step, .. } => {
                started.insert(step, at);
                mark = at;
                booting.clear();
            }
            Event::Restored { vm, .. } => {
                vms.entry(vm).or_default().restore_seconds =
                    Some((at - mark).max(0) as f64 / 1000.0);
                mark = at;
            }
            Event::Exporting { vm, .. } => vms.entry(vm).or_default().instant = true,
            Event::VmStarted { vm, .. } => {
                booting.insert(vm, at);
                mark = at;
            }
            Event::StepFinished { step, .. } => {
                if let Some(s) = started.get(&step) {
                    steps.insert(step, (at - s).max(0) as f64 / 1000.0);
                }
                for (vm, from) in booting.drain() {
                    vms.entry(vm).or_default().boot_seconds =
                        Some((at - from).max(0) as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }
    Ok(Profile {
        source: format!("run {run} ({})", info.operation),
        steps,
        vms,
    })
}

/// Simulates a run of `op` of `plan` (its file in `plan_dir`'s folder); `profile` the
/// measurements to predict from.
pub async fn simulate(
    env: &Environment,
    plan: &Plan,
    plan_dir: &Path,
    op: Operation,
    profile: Option<&Profile>,
    instant: Option<bool>,
) -> Result<Simulation> {
    let reverse = op == Operation::Failback;
    let plan = &crate::lifecycle::plan_for(env, plan, reverse);
    let instant = crate::operations::instant_for(env, plan, instant)?;
    let compiled = compile(plan, op);
    let journal = env.journal()?;
    let mut problems = Vec::new();
    let assignments = match crate::operations::assignments_for(env, &journal, plan, op, None, None)
        .await
    {
        Ok(a) => a,
        Err(crate::error::Error::AddressInUse {
            vm,
            nic,
            ip,
            why,
            occupant,
        }) => {
            let e = crate::error::Error::AddressInUse {
                vm: vm.clone(),
                nic,
                ip,
                why,
                occupant,
            };
            problems.push(Problem {
                rule: "address-in-use",
                step: None,
                vm: Some(vm),
                message: format!("the run would refuse: {e}"),
                help: Some(
                    "a failover probes every address it assigns: stop what answers there, or override the NIC's address"
                        .into(),
                ),
            });
            Vec::new()
        }
        Err(e) => {
            // The assignment names the VM it could not place: the diagnostic points there.
            let text = e.to_string();
            let vm = text
                .split_once("VM `")
                .and_then(|(_, rest)| rest.split_once('`'))
                .map(|(vm, _)| vm.to_string());
            problems.push(Problem {
                    rule: "address-clash",
                    step: None,
                    vm,
                    message: format!("the run's addresses cannot be assigned: {text}"),
                    help: Some(
                        "an open run holds addresses at the target, or a kept or static address is taken: clean up the run, or map the network to a subnet with room"
                            .into(),
                    ),
                });
            Vec::new()
        }
    };
    drop(journal);
    problems.extend(clashes(&assignments));
    let target_site = plan.target.value.clone();
    let points = points(env, plan).await;
    let empty = Profile::default();
    let profile_or_empty = profile.unwrap_or(&empty);
    let plan_groups: Vec<(String, Vec<String>)> = compiled
        .groups
        .iter()
        .map(|g| (g.name.clone(), g.vms.clone()))
        .collect();
    let (timing, bases) = timing(
        env,
        (plan, instant),
        &compiled.groups,
        &points,
        profile_or_empty,
    );
    let plan_vms: HashMap<String, lifeboat_plan::inventory::Vm> = plan_groups
        .iter()
        .flat_map(|(_, vms)| vms)
        .filter_map(|vm| Some((vm.clone(), env.config.inventory.vms.get(vm)?.clone())))
        .collect();
    let world = Arc::new(SimWorld::new(
        target_site,
        plan_vms,
        plan_groups.clone(),
        assignments.clone(),
        points
            .iter()
            .map(|(vm, (_, p))| (vm.clone(), p.clone()))
            .collect(),
        timing,
    ));
    let groups_map: HashMap<String, Vec<String>> = plan_groups.iter().cloned().collect();
    let run_id = format!("simulation-{}", plan.name.value);
    let facts = Facts {
        plan: &plan.name.value,
        operation: op,
        reverse,
        run: &run_id,
        inventory: &env.config.inventory,
        plan_groups: &groups_map,
        assignments: &assignments,
        dry_run: true,
    };
    let kv = RunKv::default();
    let mut loaded = HashMap::new();
    let mut steps = Vec::new();
    let mut failed = !problems.is_empty();
    for group in &compiled.groups {
        for s in &group.steps {
            let start = world.now_seconds();
            let mut step = SimStep {
                id: s.id.clone(),
                group: s.group.clone(),
                phase: s.phase,
                name: s.name.clone(),
                uses: s.uses.to_string(),
                start_seconds: start,
                seconds: 0.0,
                basis: Basis::Simulated,
                outcome: SimOutcome::NotReached,
                log: Vec::new(),
                outputs: serde_json::Value::Null,
            };
            if failed {
                steps.push(step);
                continue;
            }
            world.begin_step(&s.id, &s.group, s.timeout);
            let outcome = run_step(&facts, &world, &kv, &mut loaded, env, plan_dir, s).await;
            let (outcome, log, outputs) = outcome;
            let spent = world.now_seconds() - start;
            if spent <= 0.0 {
                let (seconds, basis) = match profile_or_empty.steps.get(&s.id) {
                    Some(m) => (*m, Basis::Measured),
                    None => (DEFAULT_STEP_SECONDS, Basis::Default),
                };
                world.advance(seconds);
                step.basis = basis;
            }
            step.seconds = world.now_seconds() - start;
            step.log = log;
            step.outputs = outputs;
            if let SimOutcome::Failed(why) = &outcome {
                failed = true;
                problems.push(step_problem(s, why, &world));
            }
            step.outcome = outcome;
            steps.push(step);
        }
    }
    let timelines = world.timelines();
    let mut vms = Vec::new();
    for group in &compiled.groups {
        for vm in &group.vms {
            let addresses = assignments
                .iter()
                .filter(|a| &a.vm == vm)
                .map(crate::record::AddressRecord::from)
                .collect();
            let point = points
                .get(vm)
                .map(|(said, _)| said.clone())
                .unwrap_or_else(|| "unknown: the VM is in no consistency group".into());
            let (restore_basis, boot_basis) = bases
                .get(vm)
                .copied()
                .unwrap_or((Basis::Default, Basis::Default));
            vms.push(SimVm {
                vm: vm.clone(),
                group: group.name.clone(),
                addresses,
                point,
                timeline: timelines.get(vm).cloned().unwrap_or_default(),
                restore_basis,
                boot_basis,
            });
        }
    }
    let critical_path = critical_path(&compiled.groups, &steps, &vms);
    let measured_any = steps.iter().any(|s| s.basis == Basis::Measured)
        || vms
            .iter()
            .any(|v| v.boot_basis == Basis::Measured || v.restore_basis == Basis::Measured);
    let defaults_any = steps.iter().any(|s| s.basis == Basis::Default)
        || vms
            .iter()
            .any(|v| v.boot_basis == Basis::Default || v.restore_basis == Basis::Default);
    let defaults = format!(
        "defaults: a VM boots in {DEFAULT_BOOT_SECONDS:.0} s (at most half its health timeout), a restore reads {:.0} MiB/s ({DEFAULT_RESTORE_SECONDS:.0} s when the point's size is unknown), a probe or hook takes {DEFAULT_STEP_SECONDS:.0} s",
        DEFAULT_RESTORE_BYTES_PER_SECOND / 1048576.0
    );
    let basis = match profile {
        Some(p) if measured_any && !defaults_any => {
            format!("boot, restore and step times as {} measured them", p.source)
        }
        Some(p) if measured_any => format!(
            "boot, restore and step times as {} measured them; where it did not, {defaults}",
            p.source
        ),
        _ => format!(
            "no earlier run of this plan measured anything: {defaults} (run a drill, or pass --profile)"
        ),
    };
    let rto_seconds = steps
        .iter()
        .map(|s| s.start_seconds + s.seconds)
        .fold(0.0, f64::max);
    Ok(Simulation {
        plan: plan.name.value.clone(),
        operation: op,
        steps,
        vms,
        critical_path,
        rto_seconds,
        basis,
        objective_seconds: plan.rto_objective.as_ref().map(|d| d.value.0.as_secs_f64()),
        instant,
        notes: world.notes(),
        problems,
    })
}

/// Runs one step in the sandbox against the simulated site: how it ended, its log, its outputs.
async fn run_step(
    facts: &Facts<'_>,
    world: &Arc<SimWorld>,
    kv: &RunKv,
    loaded: &mut HashMap<lifeboat_plan::plan::PluginRef, Arc<lifeboat_plugin_host::Plugin>>,
    env: &Environment,
    plan_dir: &Path,
    s: &crate::compile::StepRun,
) -> (SimOutcome, Vec<String>, serde_json::Value) {
    let plugin = match loaded.get(&s.uses) {
        Some(p) => p.clone(),
        None => match load_plugin(&env.engine, &env.config.components, plan_dir, s).await {
            Ok(p) => {
                let p = Arc::new(p);
                loaded.insert(s.uses.clone(), p.clone());
                p
            }
            Err(e) => {
                return (
                    SimOutcome::Failed(e.to_string()),
                    Vec::new(),
                    serde_json::Value::Null,
                );
            }
        },
    };
    let key = crate::journal::idempotency_key(facts.run, &s.id, 1);
    let mut request = match facts.request(s, 1, &key, world.clone(), kv.clone()) {
        Ok(r) => r,
        Err(e) => {
            return (
                SimOutcome::Failed(e.to_string()),
                Vec::new(),
                serde_json::Value::Null,
            );
        }
    };
    request.limits.timeout = request.limits.timeout.min(REAL_STEP_LIMIT);
    let report = plugin.run(&request).await;
    let mut log: Vec<String> = report
        .log
        .iter()
        .map(|l| format!("{}: {}", l.level, l.message))
        .collect();
    log.extend(report.stdout.lines().map(|l| format!("stdout: {l}")));
    log.extend(report.stderr.lines().map(|l| format!("stderr: {l}")));
    match report.outcome {
        StepOutcome::Ok { outputs } => (
            SimOutcome::Ok,
            log,
            serde_json::from_str(&outputs).unwrap_or(serde_json::Value::String(outputs)),
        ),
        other => (
            SimOutcome::Failed(other.summary()),
            log,
            serde_json::Value::Null,
        ),
    }
}

/// A failed step as a problem: an order diagnostic when it reached a VM its group's place in
/// the plan has not booted yet.
fn step_problem(s: &crate::compile::StepRun, why: &str, world: &SimWorld) -> Problem {
    if let Some(early) = world.early().into_iter().find(|e| e.step == s.id) {
        return Problem {
            rule: "boots-later",
            step: Some(s.id.clone()),
            vm: Some(early.vm.clone()),
            message: format!(
                "step `{}` of group `{}` needs VM `{}`, which group `{}` boots later in the plan: {why}",
                s.id, s.group, early.vm, early.vm_group
            ),
            help: Some(format!(
                "move group `{}` before group `{}`, or move this step to a group after it",
                early.vm_group, s.group
            )),
        };
    }
    Problem {
        rule: "step-fails-in-dry-run",
        step: Some(s.id.clone()),
        vm: None,
        message: format!("step `{}` ({}) would fail: {why}", s.id, s.uses),
        help: Some(format!(
            "try it alone with `lifeboat plugin test {} --dry-run`",
            s.uses
        )),
    }
}

/// Two NICs of the run given one address on one network.
fn clashes(assignments: &[crate::network::Assignment]) -> Vec<Problem> {
    let mut seen: HashMap<(&str, std::net::IpAddr), &crate::network::Assignment> = HashMap::new();
    let mut out = Vec::new();
    for a in assignments {
        if let Some(first) = seen.insert((a.network.as_str(), a.ip), a) {
            out.push(Problem {
                rule: "address-clash",
                step: None,
                vm: Some(a.vm.clone()),
                message: format!(
                    "VM `{}` nic{} and VM `{}` nic{} would both hold {} on {}",
                    first.vm, first.nic, a.vm, a.nic, a.ip, a.network
                ),
                help: Some("give one of them another address, or map its network elsewhere".into()),
            });
        }
    }
    out
}

/// Each VM's restore and boot time for the model, and where each comes from.
fn timing(
    env: &Environment,
    (plan, instant): (&Plan, bool),
    groups: &[crate::compile::GroupRun],
    points: &HashMap<String, (String, std::result::Result<SimPoint, String>)>,
    profile: &Profile,
) -> (Timing, HashMap<String, (Basis, Basis)>) {
    let mut timing = Timing::default();
    let mut bases = HashMap::new();
    for (group, vm) in groups
        .iter()
        .flat_map(|g| g.vms.iter().map(move |v| (g, v)))
    {
        // A measured boot ends at the first poll that found the VM healthy; the simulated boot
        // polls the same way, so half a poll comes off (the VM was healthy within that poll).
        let poll = group
            .steps
            .iter()
            .find(|s| s.phase == Phase::Boot)
            .and_then(|s| s.config.get("poll_ms")?.as_u64())
            .unwrap_or(BOOT_POLL_MS) as f64
            / 1000.0;
        let measured = profile.vms.get(vm);
        // An instant boot of a `qemu` machine; a restore measured the other way does not count.
        let vm_instant = instant
            && env
                .config
                .inventory
                .vms
                .get(vm)
                .is_some_and(|v| v.machine.is_some())
            && env
                .config
                .inventory
                .sites
                .get(&plan.target.value)
                .is_some_and(|s| s.compute.value == lifeboat_plan::inventory::ComputeDriver::Qemu);
        let measured_restore = measured
            .filter(|m| m.instant == vm_instant)
            .and_then(|m| m.restore_seconds);
        let (restore, restore_basis) = match measured_restore {
            Some(s) => (s, Basis::Measured),
            None if vm_instant => (DEFAULT_INSTANT_SECONDS, Basis::Default),
            None => {
                let bytes = points
                    .get(vm)
                    .and_then(|(_, p)| p.as_ref().ok())
                    .and_then(|p| p.vm_bytes.get(vm).copied());
                (
                    bytes.map_or(DEFAULT_RESTORE_SECONDS, |b| {
                        b as f64 / DEFAULT_RESTORE_BYTES_PER_SECOND
                    }),
                    Basis::Default,
                )
            }
        };
        let (boot, boot_basis) = match measured.and_then(|m| m.boot_seconds) {
            Some(s) => ((s - poll / 2.0).max(0.0), Basis::Measured),
            None => {
                let health = env
                    .config
                    .inventory
                    .vms
                    .get(vm)
                    .and_then(|v| v.health.as_ref()?.timeout.as_ref())
                    .map(|t| t.value.0.as_secs_f64() / 2.0);
                (
                    health.map_or(DEFAULT_BOOT_SECONDS, |h| h.min(DEFAULT_BOOT_SECONDS)),
                    Basis::Default,
                )
            }
        };
        timing.restore_seconds.insert(vm.clone(), restore);
        timing.boot_seconds.insert(vm.clone(), boot);
        bases.insert(vm.clone(), (restore_basis, boot_basis));
    }
    (timing, bases)
}

/// Groups run one after another, so each is on the path; within one, its boot's slowest VM
/// (restore and boot) or its longest step says why it takes as long as it does.
fn critical_path(
    groups: &[crate::compile::GroupRun],
    steps: &[SimStep],
    vms: &[SimVm],
) -> Vec<PathLeg> {
    let mut out = Vec::new();
    for group in groups {
        let own: Vec<&SimStep> = steps.iter().filter(|s| s.group == group.name).collect();
        let seconds: f64 = own.iter().map(|s| s.seconds).sum();
        let slowest_vm = vms
            .iter()
            .filter(|v| v.group == group.name)
            .filter_map(|v| Some((v, v.timeline.healthy_at?)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let longest = own.iter().max_by(|a, b| a.seconds.total_cmp(&b.seconds));
        let why = match (slowest_vm, longest) {
            (Some((v, _)), Some(step)) if step.phase == Phase::Boot => {
                let t = &v.timeline;
                let restore = t
                    .restored_at
                    .zip(t.restored_from)
                    .map_or(0.0, |(a, b)| a - b);
                let boot = t.healthy_at.zip(t.started_at).map_or(0.0, |(a, b)| a - b);
                format!(
                    "{}: the last VM healthy, `{}` (restore {restore:.1} s, boot {boot:.1} s)",
                    step.id, v.vm
                )
            }
            (_, Some(step)) => format!("{} ({}) {:.1} s", step.id, step.uses, step.seconds),
            _ => "no steps".into(),
        };
        out.push(PathLeg {
            group: group.name.clone(),
            seconds,
            why,
        });
    }
    out
}

/// The point each VM of the plan would boot (its consistency group's, as a failover would
/// choose it), said for people, and as the simulated site serves it — or why it is not known.
/// Offline (the repository out of reach) a point is assumed: the plan's choice, its size unknown.
async fn points(
    env: &Environment,
    plan: &Plan,
) -> HashMap<String, (String, std::result::Result<SimPoint, String>)> {
    use lifeboat_plugin_host::wit::lifeboat::plan::recovery;
    let vms = crate::source::plan_vms(plan);
    let default = crate::compile::point_choice(plan);
    let mut out = HashMap::new();
    // Read-only: a target folder that does not exist is not created.
    let repo = match env.config.inventory.sites.get(&plan.target.value) {
        Some(site) => {
            match lifeboat_replication::Store::open_if_present(&site.store.value, &env.config.base)
            {
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
        let (said, point) = match &repo {
            Ok(repo) => match lifeboat_replication::points::select(repo, &group.name, choice).await
            {
                Ok(m) => (
                    format!(
                        "{}/{} ({}, captured {})",
                        group.name,
                        m.seq,
                        m.kind.as_str(),
                        lifeboat_replication::clock::rfc3339(
                            std::time::UNIX_EPOCH + Duration::from_millis(m.captured_unix_ms)
                        )
                    ),
                    Ok(SimPoint {
                        point: crate::services::wit_point(
                            &group.name,
                            m.seq,
                            m.kind,
                            m.captured_unix_ms,
                            m.committed_unix_ms,
                        ),
                        vm_bytes: m
                            .vms
                            .iter()
                            .map(|v| (v.name.clone(), v.disks.iter().map(|d| d.size).sum()))
                            .collect(),
                    }),
                ),
                Err(e) => {
                    let why = format!("{choice}: not available ({e})");
                    (why.clone(), Err(format!("group `{}`: {why}", group.name)))
                }
            },
            Err(e) => (
                format!("{choice} (the repository is out of reach: {e}; assumed)"),
                Ok(SimPoint {
                    point: recovery::Point {
                        id: format!("{}/{choice}", group.name),
                        kind: recovery::PointKind::CrashConsistent,
                        captured_at_ms: 0,
                        committed_at_ms: 0,
                    },
                    vm_bytes: HashMap::new(),
                }),
            ),
        };
        for vm in &group.vms {
            if vms.contains(&vm.name.as_str()) {
                out.insert(vm.name.clone(), (said.clone(), point.clone()));
            }
        }
    }
    out
}
