//! The runs the daemon hosts: failovers, retries and skips asked for through the API run here,
//! with the orchestrator's own operations, executor and journal (the same as the CLI's), and
//! the daemon's pid in the journal as their driver. A daemon that restarts takes its runs up
//! again where the journal says they stopped. Every transition goes to the event bus.
//!
//! A planned or unplanned failover takes its groups away from protection first (the supervisor
//! stops their tasks and their leases are released), so the daemon's own cycles never race the
//! failover's; the journal then says which groups failovers hold until they are cleaned up.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use lifeboat_compute::driver::Compute;
use lifeboat_orchestrator::journal::{Journal, RunStatus};
use lifeboat_orchestrator::operations::{self, Begun, CleanupReport, Committed, FailoverRequest};
use lifeboat_orchestrator::run::Outcome;
use lifeboat_orchestrator::runs::Environment;
use lifeboat_orchestrator::services::Observer;
use lifeboat_plan::Plan;
use lifeboat_plan::plan::Operation;
use tokio::sync::{mpsc, oneshot, watch};

use crate::api_error::ApiError;
use crate::engine::LazyEngine;
use crate::events::{Bus, Notice, NoticeKind};
use crate::messages::{Command, Snapshot, Stopping};

pub(crate) struct Host {
    state: PathBuf,
    engine: Arc<LazyEngine>,
    driver: Arc<dyn Compute>,
    bus: Arc<Bus>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    commands: mpsc::UnboundedSender<Command>,
    /// How to run this Lifeboat's CLI (for a run's `Environment`).
    lifeboat: Vec<std::ffi::OsString>,
    /// What tending instant runs sees, for status and metrics.
    hydrating: crate::messages::Hydrating,
    /// The runs this daemon drives now: a second `retry` of one is refused, not run twice.
    driving: Mutex<HashSet<String>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
    /// One failover start, cleanup or commit at a time: two requests for one plan would both
    /// pass the "no open run" check before either recorded its run.
    gate: tokio::sync::Mutex<()>,
}

/// What the host's instant runs need: how to run `lifeboat export`, and where their hydration
/// progress goes (status and metrics).
#[derive(Debug)]
pub struct InstantBoot {
    pub lifeboat: Vec<std::ffi::OsString>,
    pub hydrating: crate::messages::Hydrating,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Host {
    pub fn new(
        state: PathBuf,
        engine: Arc<LazyEngine>,
        driver: Arc<dyn Compute>,
        bus: Arc<Bus>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        commands: mpsc::UnboundedSender<Command>,
        instant: InstantBoot,
    ) -> Self {
        Self {
            lifeboat: instant.lifeboat,
            hydrating: instant.hydrating,
            state,
            engine,
            driver,
            bus,
            snapshots,
            commands,
            driving: Mutex::new(HashSet::new()),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `command` to the supervisor.
    pub fn command(&self, command: Command) -> Result<(), Stopping> {
        self.commands.send(command).map_err(|_| Stopping)
    }

    /// The environment of a run, from the config running now (starting the plugin engine).
    pub fn env(&self) -> Result<Environment, ApiError> {
        let config = self.snapshots.borrow().config.clone();
        Ok(Environment {
            config,
            state_dir: self.state.clone(),
            engine: self
                .engine
                .get()
                .map_err(|e| ApiError::internal(e.to_string()))?,
            driver: self.driver.clone(),
            daemon: true,
            lifeboat: self.lifeboat.clone(),
        })
    }

    /// The run journal, to read runs (`None` before the first run).
    pub fn journal(&self) -> Result<Option<Journal>, ApiError> {
        let path = self.state.join("runs.db");
        if !path.exists() {
            return Ok(None);
        }
        Journal::open(&path)
            .map(Some)
            .map_err(|e| ApiError::of_run(&e.into()))
    }

    /// Where each group that moved runs now, as the running config says.
    pub fn placements(
        &self,
    ) -> std::collections::BTreeMap<String, lifeboat_replication::placement::Placement> {
        self.snapshots.borrow().config.placements.clone()
    }

    /// The consistency group of each VM, as the running config says.
    pub fn groups(&self) -> Vec<lifeboat_replication::GroupSpec> {
        self.snapshots.borrow().config.groups.clone()
    }

    /// Plan `name` (`plans/NAME.toml`), validated with the inventory as the files are now.
    pub async fn plan(&self, name: &str) -> Result<(Plan, PathBuf), ApiError> {
        let file = self.snapshots.borrow().config.file.clone();
        let path = crate::config::plan_file(&file, name)
            .filter(|p| p.is_file())
            .ok_or_else(|| ApiError::no_plan(format!("no plan `{name}` in the plans folder")))?;
        self.plan_at(file, path).await
    }

    async fn plan_at(&self, file: PathBuf, path: PathBuf) -> Result<(Plan, PathBuf), ApiError> {
        let at = path.clone();
        let plan = tokio::task::spawn_blocking(move || crate::config::plan(&file, &at))
            .await
            .map_err(|e| ApiError::internal(format!("validation stopped: {e}")))?
            .map_err(|problems| {
                ApiError::invalid(format!("plan {} is not valid", path.display()), problems)
            })?;
        Ok((plan, path))
    }

    /// Starts a failover of plan `name`: every check, the hand-over of a planned one, the run
    /// recorded; then the run goes on in the daemon and this returns its id.
    pub async fn failover(
        self: &Arc<Self>,
        name: &str,
        req: FailoverRequest,
    ) -> Result<Begun, ApiError> {
        let (plan, path) = self.plan(name).await?;
        let _one = self.gate.lock().await;
        let env = self.env()?;
        let takes = matches!(
            req.op,
            Operation::Planned | Operation::Unplanned | Operation::Failback
        );
        let groups: Vec<String> = lifeboat_orchestrator::source::groups_of(
            &env,
            &lifeboat_orchestrator::source::plan_vms(&plan),
        )
        .into_iter()
        .map(|g| g.name.clone())
        .collect();
        if takes {
            // The daemon's own cycles of these groups end (and release their leases) first.
            let (reply, done) = oneshot::channel();
            let _ = self.commands.send(Command::Hold {
                groups: groups.clone(),
                why: format!("a {} failover of plan {name} starts", req.op.name()),
                reply,
            });
            let _ = done.await;
        }
        let op = req.op;
        let point = req.point.clone();
        let begun = operations::begin(&env, &plan, &path, req).await;
        if takes {
            let _ = self.commands.send(Command::Release { groups });
        }
        let begun = begun.map_err(|e| ApiError::of_run(&e))?;
        let stopped: Vec<&str> = begun.source_stopped.iter().map(|h| h.vm.as_str()).collect();
        self.bus.publish(
            Notice::new(
                NoticeKind::RunStarted,
                format!(
                    "run {}: {} failover of plan {name} started",
                    begun.id,
                    op.name()
                ),
            )
            .run(&begun.id)
            .plan(name)
            .data(serde_json::json!({
                "operation": op.name(),
                "point": point,
                "source_stopped": stopped,
            })),
        );
        self.drive(&begun.id, plan, path)?;
        Ok(begun)
    }

    /// Drives run `id` again (after a failed step; `skip` first marks that step skipped).
    /// Returns the skipped step.
    pub async fn retry(self: &Arc<Self>, id: &str, skip: bool) -> Result<Option<String>, ApiError> {
        let env = self.env()?;
        let status = env.status(id).map_err(|e| ApiError::of_run(&e))?;
        self.not_driving_here(id)?;
        let file = self.snapshots.borrow().config.file.clone();
        let (plan, path) = self.plan_at(file, PathBuf::from(&status.plan_path)).await?;
        if let Some(pid) = status.driver_pid.filter(|p| *p != std::process::id()) {
            return Err(ApiError::of_run(
                &lifeboat_orchestrator::error::Error::Driven {
                    run: id.to_string(),
                    pid,
                },
            ));
        }
        // As `lifeboat retry` without a daemon: a run that succeeded is driven to its end again,
        // which does nothing and says so; only a closed run has nothing to retry.
        if !(skip || status.status.is_resumable() || status.status == RunStatus::Succeeded) {
            return Err(ApiError::of_run(
                &lifeboat_orchestrator::error::Error::InvalidState {
                    run: id.to_string(),
                    status: status.status,
                    why: "there is nothing to resume".into(),
                },
            ));
        }
        let skipped = if skip {
            Some(operations::skip(&env, id).map_err(|e| ApiError::of_run(&e))?)
        } else {
            None
        };
        self.bus.publish(
            Notice::new(
                NoticeKind::RunStarted,
                match &skipped {
                    Some(step) => format!("run {id}: step `{step}` skipped, going on"),
                    None => format!("run {id}: retried"),
                },
            )
            .run(id)
            .plan(&status.plan)
            .data(serde_json::json!({ "operation": status.operation, "skipped": skipped })),
        );
        self.drive(id, plan, path)?;
        Ok(skipped)
    }

    fn not_driving_here(&self, id: &str) -> Result<(), ApiError> {
        if self
            .driving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
        {
            return Err(ApiError::of_run(
                &lifeboat_orchestrator::error::Error::Driven {
                    run: id.to_string(),
                    pid: std::process::id(),
                },
            ));
        }
        Ok(())
    }

    /// Drives run `id` in the background to its end.
    fn drive(self: &Arc<Self>, id: &str, plan: Plan, path: PathBuf) -> Result<(), ApiError> {
        if !self
            .driving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string())
        {
            return self.not_driving_here(id);
        }
        let host = self.clone();
        let id = id.to_string();
        let span = tracing::info_span!("run", id = %id);
        let work = async move {
            let name = plan.name.value.clone();
            let observe = host.observer(&name);
            let result = match host.env() {
                Ok(env) => operations::resume(&env, &id, &plan, observe, None).await,
                Err(e) => Err(lifeboat_orchestrator::error::Error::Failed(e.message)),
            };
            let succeeded = matches!(&result, Ok(r) if r.outcome == Outcome::Succeeded);
            host.ended(&id, &name, &path, result);
            host.driving
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            let _ = host.commands.send(Command::Refresh);
            if succeeded {
                host.hydrate(&id, &name).await;
            }
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(tracing::Instrument::instrument(work, span));
        Ok(())
    }

    /// Tends an instant run's disks until they are hydrated (restarting an export server that
    /// died), each disk's end a notice.
    async fn hydrate(&self, id: &str, plan: &str) {
        use lifeboat_orchestrator::hydration;
        let Ok(env) = self.env() else {
            return;
        };
        if !hydration::is_instant(&env, id).unwrap_or(false) {
            return;
        }
        let told = Mutex::new(HashSet::new());
        let progress = |seen: &[hydration::DiskHydration]| {
            self.hydrating.set(
                id,
                seen.iter()
                    .filter(|d| !d.hydrated)
                    .map(|d| lifeboat_api::status::Hydrating {
                        run: id.to_string(),
                        vm: d.vm.clone(),
                        disk: d.disk.clone(),
                        done_bytes: d.done,
                        total_bytes: d.total,
                        waiting: d.waiting.clone(),
                    })
                    .collect(),
            );
            let mut told = told.lock().unwrap_or_else(PoisonError::into_inner);
            for d in seen.iter().filter(|d| d.hydrated) {
                if told.insert(format!("{}/{}", d.vm, d.disk)) {
                    self.bus.publish(
                        Notice::new(
                            NoticeKind::RunProgress,
                            format!(
                                "run {id}: {}/{}: hydrated ({} MiB) {:.1}s after its VM started",
                                d.vm,
                                d.disk,
                                d.total >> 20,
                                d.seconds.unwrap_or_default()
                            ),
                        )
                        .run(id)
                        .plan(plan)
                        .data(serde_json::to_value(d).unwrap_or_default()),
                    );
                }
            }
        };
        if let Err(e) = hydration::until_hydrated(&env, id, progress).await {
            tracing::warn!(run = %id, error = %e, "hydration not seen through");
        }
        self.hydrating.set(id, Vec::new());
    }

    /// Every event a run journals, as a notice (those people see in `lifeboat failover`'s
    /// progress lines; the journal keeps the rest).
    fn observer(&self, plan: &str) -> Observer {
        let bus = self.bus.clone();
        let plan = plan.to_string();
        Arc::new(move |run: &str, e| {
            use lifeboat_orchestrator::journal::Event;
            let Some(message) = lifeboat_orchestrator::record::describe(run, e) else {
                return;
            };
            let kind = match e {
                Event::StepStarted { .. } => NoticeKind::StepStarted,
                Event::StepFinished { .. } => NoticeKind::StepFinished,
                Event::StepFailed { .. } => NoticeKind::StepFailed,
                Event::ApprovalRequested { .. } => NoticeKind::ApprovalWaiting,
                Event::Approved { .. } => NoticeKind::ApprovalGiven,
                _ => NoticeKind::RunProgress,
            };
            bus.publish(
                Notice::new(kind, format!("run {run}: {message}"))
                    .run(run)
                    .plan(&plan)
                    .data(serde_json::to_value(e).unwrap_or_default()),
            );
        })
    }

    fn ended(
        &self,
        id: &str,
        plan: &str,
        path: &std::path::Path,
        result: Result<operations::RunResult, lifeboat_orchestrator::error::Error>,
    ) {
        let (status, message, data) = match &result {
            Ok(r) => match &r.outcome {
                Outcome::Succeeded => (
                    "succeeded",
                    format!("run {id}: succeeded"),
                    serde_json::json!({}),
                ),
                Outcome::Failed { step, error } => (
                    "failed",
                    format!("run {id}: stopped at step `{step}`: {error}"),
                    serde_json::json!({ "step": step, "error": error }),
                ),
                Outcome::Cancelled { step, reason } => (
                    "cancelled",
                    format!("run {id}: cancelled at step `{step}`: {reason}"),
                    serde_json::json!({ "step": step, "error": reason }),
                ),
            },
            Err(e) => (
                "failed",
                format!("run {id}: {e}"),
                serde_json::json!({ "error": e.to_string(), "exit_code": e.exit_code() }),
            ),
        };
        match status {
            "succeeded" => tracing::info!(plan = %path.display(), "{message}"),
            _ => tracing::warn!(plan = %path.display(), "{message}"),
        }
        let mut data = data;
        data["status"] = serde_json::Value::from(status);
        if status != "succeeded" {
            // The transition alerts want, without every finished run.
            self.bus.publish(
                Notice::new(NoticeKind::RunFailed, message.clone())
                    .run(id)
                    .plan(plan)
                    .data(data.clone()),
            );
        }
        self.bus.publish(
            Notice::new(NoticeKind::RunFinished, message)
                .run(id)
                .plan(plan)
                .data(data),
        );
    }

    /// `cleanup` of plan `name`'s open run.
    pub async fn cleanup(&self, name: &str) -> Result<CleanupReport, ApiError> {
        let (plan, _) = self.plan(name).await?;
        let _one = self.gate.lock().await;
        let env = self.env()?;
        let report = operations::cleanup(&env, &plan, self.observer(name)).await;
        let _ = self.commands.send(Command::Refresh);
        let report = report.map_err(|e| ApiError::of_run(&e))?;
        self.bus.publish(
            Notice::new(
                NoticeKind::RunCleanedUp,
                format!(
                    "run {}: cleaned up ({} step(s) undone, {} VM(s) stopped)",
                    report.run,
                    report.undone.len(),
                    report.vms_stopped.len()
                ),
            )
            .run(&report.run)
            .plan(name)
            .data(serde_json::to_value(&report).unwrap_or_default()),
        );
        Ok(report)
    }

    /// `commit` of plan `name`'s failover.
    pub async fn commit(&self, name: &str) -> Result<Vec<Committed>, ApiError> {
        let (plan, _) = self.plan(name).await?;
        let _one = self.gate.lock().await;
        let env = self.env()?;
        let run = env.open_run(name).ok().flatten().map(|r| r.id);
        // The daemon tends hydration itself: a commit it is asked for does not wait for it.
        let committed = operations::commit(&env, &plan, false).await;
        let _ = self.commands.send(Command::Refresh);
        let committed = committed.map_err(|e| ApiError::of_run(&e))?;
        let mut notice = Notice::new(
            NoticeKind::RunCommitted,
            format!(
                "plan {name}: {} group(s) taken over at site {}; the old source is fenced",
                committed.len(),
                plan.target.value
            ),
        )
        .plan(name)
        .data(serde_json::to_value(&committed).unwrap_or_default());
        if let Some(run) = run {
            notice = notice.run(&run);
        }
        self.bus.publish(notice);
        Ok(committed)
    }

    /// Approves run `id`'s pending approval as `by`; the approval's message.
    pub fn approve(&self, id: &str, by: &str) -> Result<String, ApiError> {
        let env = self.env()?;
        let message = operations::approve(&env, id, by).map_err(|e| ApiError::of_run(&e))?;
        self.bus.publish(
            Notice::new(
                NoticeKind::ApprovalGiven,
                format!("run {id}: approved by {by}"),
            )
            .run(id)
            .data(serde_json::json!({ "by": by, "message": message })),
        );
        Ok(message)
    }

    /// Cancels run `id` (its driver stops at the step it is in; the run stays open for cleanup).
    pub fn cancel(&self, id: &str) -> Result<(), ApiError> {
        let env = self.env()?;
        operations::cancel(&env, id).map_err(|e| ApiError::of_run(&e))?;
        self.bus.publish(
            Notice::new(NoticeKind::RunProgress, format!("run {id}: cancel asked"))
                .run(id)
                .data(serde_json::json!({ "status": RunStatus::Cancelled.as_str() })),
        );
        Ok(())
    }

    /// Takes up again every run a daemon drove and that no process drives now (the daemon
    /// stopped or died during it). Runs stopped at a failed step wait for a `retry`.
    pub async fn resume_interrupted(self: &Arc<Self>) {
        let read = self.journal().and_then(|j| match j {
            None => Ok(Vec::new()),
            Some(j) => {
                let mut out = Vec::new();
                for (id, ..) in j.runs().map_err(|e| ApiError::of_run(&e.into()))? {
                    out.push(
                        lifeboat_orchestrator::runs::status_of(&j, &id)
                            .map_err(|e| ApiError::of_run(&e))?,
                    );
                }
                Ok(out)
            }
        });
        let runs = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e.message, "cannot read the run journal: no run is resumed");
                return;
            }
        };
        let file = self.snapshots.borrow().config.file.clone();
        for r in runs {
            // An instant run it drove to its end, its disks perhaps still hydrating: tended
            // again (its export servers never stopped with the daemon).
            if r.daemon && r.instant && r.status == RunStatus::Succeeded && r.open() {
                let host = self.clone();
                let (id, plan) = (r.id.clone(), r.plan.clone());
                let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
                tasks.spawn(async move { host.hydrate(&id, &plan).await });
                continue;
            }
            if !(r.daemon && r.status == RunStatus::Running && r.driver_pid.is_none()) {
                continue;
            }
            match self
                .plan_at(file.clone(), PathBuf::from(&r.plan_path))
                .await
            {
                Ok((plan, path)) => {
                    tracing::info!(run = %r.id, "resuming a run the daemon drove");
                    self.bus.publish(
                        Notice::new(NoticeKind::RunStarted, format!("run {}: resumed", r.id))
                            .run(&r.id)
                            .plan(&r.plan)
                            .data(serde_json::json!({ "operation": r.operation, "resumed": true })),
                    );
                    if let Err(e) = self.drive(&r.id, plan, path) {
                        tracing::error!(run = %r.id, error = %e.message, "not resumed");
                    }
                }
                Err(e) => {
                    tracing::error!(run = %r.id, error = %e.message, problems = ?e.details, "not resumed: its plan does not validate; fix it, then `lifeboat retry`");
                }
            }
        }
    }

    /// Stops driving: runs in flight stay in the journal as they are, and the next daemon (or
    /// `lifeboat retry`) takes them up.
    pub async fn stop(&self) {
        let mut tasks =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}
