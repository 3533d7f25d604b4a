//! The supervisor: the one owner of the daemon's state. It holds the live config, runs a task
//! per consistency group (`protect`), and takes every event as a message: a group's state
//! change, a file change or SIGHUP (reload), a maintenance result, a command from the API
//! (replicate now; hold the groups a failover takes; look again at which groups failovers hold),
//! SIGTERM/SIGINT (drain). After each one it publishes a snapshot that the HTTP server reads,
//! and tells the event bus what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lifeboat_compute::Driver;
use lifeboat_replication::GroupSpec;
use lifeboat_replication::placement::Placement;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::config::{self, Config};
use crate::counters::{GroupCounters, ReloadCounters};
use crate::events::{Bus, Notice, NoticeKind};
use crate::maintenance::{self, Done as MaintenanceDone};
use crate::messages::{Command, CommandError, Error, Snapshot};
use crate::protect::{self, Assignment, Event, Shared, Update};
use lifeboat_api::status::{ConfigState, DaemonInfo, GroupState, Maintenance, Reload};
use lifeboat_orchestrator::status::GroupRuntime;

/// What the daemon runs with (the CLI builds it from `lifeboat daemon`'s flags).
pub use lifeboat_api::server::DaemonOptions as Options;

/// A protected group, and its task unless a failover holds it.
struct Running {
    task: Option<Task>,
    spec: GroupSpec,
    live: GroupRuntime,
    counters: GroupCounters,
}

/// A group's running task and the handles to it.
struct Task {
    id: u64,
    assign: watch::Sender<Arc<Assignment>>,
    stop: watch::Sender<bool>,
    /// Wakes it for a cycle now.
    now: Arc<Notify>,
    /// True (or closed) once it has ended and released its lease.
    done: watch::Receiver<bool>,
}

struct Supervisor {
    opts: Options,
    /// Domains of `libvirt` sites nothing protects (looked up by `unprotected::watch`).
    unprotected: crate::messages::Unprotected,
    /// Instant runs' disks still hydrating (set by the host).
    hydrating: crate::messages::Hydrating,
    config: Arc<Config>,
    generation: u64,
    last_reload: Option<Reload>,
    reloads: ReloadCounters,
    shared: Arc<Shared>,
    groups: BTreeMap<String, Running>,
    next_task: u64,
    tasks: tokio::task::JoinSet<()>,
    maintenance: BTreeMap<String, Maintenance>,
    maintaining: bool,
    last_gc: Instant,
    last_verify: Instant,
    last_sized: Option<Instant>,
    started_at: SystemTime,
    draining: bool,
    published: watch::Sender<Arc<Snapshot>>,
    bus: Arc<Bus>,
    /// Groups failovers took to their targets (from the journal): group → run.
    failed_over: BTreeMap<String, String>,
    /// Groups held for a failover that is starting: group → why.
    pending: BTreeMap<String, String>,
    /// Groups whose RPO is over its threshold, as last told.
    breached: BTreeSet<String>,
}

/// How often repository sizes are measured.
const SIZE_EVERY: Duration = Duration::from_secs(60);
/// What holds a group that is not to be replicated (committed at the other site and not
/// reprotected, or every VM disabled).
const UNPROTECTED: &str = "its placement (not protected)";
/// How often the daemon looks for placements changed by someone else.
const PLACEMENT_POLL: Duration = Duration::from_secs(3);

/// Runs the daemon until SIGTERM or SIGINT; then drains within the grace period. SIGHUP
/// reloads the config.
pub async fn run(opts: Options) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let hup = signal(SignalKind::hangup()).map_err(Error::Signals)?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    };
    run_until(opts, stop, Some(hup)).await
}

/// Runs the daemon until `stop` completes (with what stopped it, for the log), then drains
/// within the grace period; `hup`, when given, reloads the config on each signal. `lifeboat
/// demo` runs a daemon in its own process this way, leaving Ctrl-C to the demo.
pub async fn run_until(
    opts: Options,
    stop: impl Future<Output = &'static str>,
    mut hup: Option<tokio::signal::unix::Signal>,
) -> Result<(), Error> {
    if opts.listen.is_some() && opts.token.as_deref().is_none_or(str::is_empty) {
        return Err(Error::NoToken);
    }
    let config = {
        Arc::new(
            config::load_placed(&opts.config)
                .await
                .map_err(Error::Config)?,
        )
    };
    // Started when a run or an alert hook first needs it.
    let engine = Arc::new(crate::engine::LazyEngine::default());
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let driver = Driver::new();
    let bus = Arc::new(Bus::new());
    let shared = Arc::new(Shared {
        driver: driver.clone(),
        limit: Arc::new(Semaphore::new(opts.max_cycles.max(1))),
        lease_ttl: opts.lease_ttl,
        events: events_tx,
    });
    let now = Instant::now();
    let mut sup = Supervisor {
        opts: opts.clone(),
        generation: 1,
        last_reload: None,
        reloads: ReloadCounters::default(),
        shared,
        groups: BTreeMap::new(),
        next_task: 0,
        tasks: tokio::task::JoinSet::new(),
        maintenance: BTreeMap::new(),
        maintaining: false,
        last_gc: now,
        last_verify: now,
        last_sized: None,
        started_at: SystemTime::now(),
        draining: false,
        published: watch::channel(Arc::new(Snapshot {
            daemon: DaemonInfo {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
                started_at: String::new(),
                ready: false,
                config: ConfigState {
                    file: String::new(),
                    generation: 0,
                    loaded_at: String::new(),
                    plans: Vec::new(),
                    last_reload: None,
                },
                maintenance: Vec::new(),
            },
            inventory: config.inventory.clone(),
            config: config.clone(),
            groups: Vec::new(),
            reloads: ReloadCounters::default(),
            heartbeat: now,
            unprotected: crate::messages::Unprotected::default(),
            hydrating: crate::messages::Hydrating::default(),
        }))
        .0,
        unprotected: crate::messages::Unprotected::default(),
        hydrating: crate::messages::Hydrating::default(),
        config,
        bus: bus.clone(),
        failed_over: BTreeMap::new(),
        pending: BTreeMap::new(),
        breached: BTreeSet::new(),
    };
    sup.failed_over = sup.read_failed_over();
    sup.publish();
    let unprotected = tokio::spawn(crate::unprotected::watch(
        sup.unprotected.clone(),
        sup.published.subscribe(),
    ));
    let (commands_tx, mut commands) = mpsc::unbounded_channel();
    let (alerts_stop, alerts_stopped) = watch::channel(false);
    let alerts = tokio::spawn(crate::alerts::run(
        bus.clone(),
        engine.clone(),
        sup.published.subscribe(),
        alerts_stopped,
    ));
    let host = Arc::new(crate::host::Host::new(
        opts.state.clone(),
        engine,
        driver,
        bus.clone(),
        sup.published.subscribe(),
        commands_tx,
        crate::host::InstantBoot {
            lifeboat: opts.lifeboat.clone(),
            hydrating: sup.hydrating.clone(),
        },
    ));

    // Listen before protecting anything: a second daemon on the same state stops here.
    let server = crate::server::start(
        &lifeboat_api::client::socket_path(&opts.state),
        opts.listen,
        crate::api::Api::new(
            sup.published.subscribe(),
            bus.clone(),
            host.clone(),
            opts.token.clone(),
        ),
    )
    .await?;
    let (reload_tx, mut reloads) = mpsc::unbounded_channel();
    let _watcher = crate::watch::start(&opts.config, reload_tx);
    let groups = sup.config.groups.clone();
    for spec in groups {
        sup.spawn(spec);
    }
    tracing::info!(
        groups = sup.groups.len(),
        plans = sup.config.plans.len(),
        "protecting"
    );
    // Runs this daemon drove when it stopped go on.
    host.resume_interrupted().await;
    let (maint_tx, mut maint_rx) = mpsc::unbounded_channel::<MaintenanceDone>();
    // Placements change under the daemon (a commit, reprotect or disable from the CLI, or on
    // another host): they are read every few seconds, and a change reloads the config.
    let (placed_tx, mut placed_rx) = mpsc::unbounded_channel();
    let mut placement_poll = tokio::time::interval(PLACEMENT_POLL);
    placement_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hangup = async |hup: &mut Option<tokio::signal::unix::Signal>| match hup {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            why = &mut stop => { tracing::info!("{why}: stopping"); break }
            Some(()) = hangup(&mut hup) => sup.reload("SIGHUP").await,
            Some(()) = reloads.recv() => sup.reload("watch").await,
            Some(event) = events.recv() => sup.apply(event),
            Some(done) = maint_rx.recv() => sup.maintained(done),
            Some(command) = commands.recv() => match command {
                // A run ended or was committed: where groups run may have changed with it.
                Command::Refresh => sup.refresh().await,
                command => sup.command(command),
            },
            _ = placement_poll.tick() => {
                let (config, tx) = (sup.config.clone(), placed_tx.clone());
                tokio::spawn(async move {
                    if let Ok(p) = config.read_placements().await {
                        let _ = tx.send(p);
                    }
                });
            }
            Some(placements) = placed_rx.recv() => sup.take_placements(placements),
            _ = tick.tick() => {
                while sup.tasks.try_join_next().is_some() {}
                sup.maintain(&maint_tx);
            }
        }
        sup.publish();
        sup.tell_rpo();
    }
    sup.drain().await;
    server.stop().await;
    host.stop().await;
    let _ = alerts_stop.send(true);
    let _ = alerts.await;
    unprotected.abort();
    Ok(())
}

impl Supervisor {
    /// Protects a group of the config: a task starts unless a failover holds it.
    fn spawn(&mut self, spec: GroupSpec) {
        let name = spec.name.clone();
        self.groups.insert(
            name.clone(),
            Running {
                task: None,
                spec,
                live: GroupRuntime {
                    state: GroupState::Starting,
                    ..GroupRuntime::default()
                },
                counters: GroupCounters::default(),
            },
        );
        match self.hold_of(&name) {
            Some(by) => self.mark_held(&name, by),
            None => self.start_task(&name),
        }
    }

    /// Why `group` is held, if it is: the failover run, or the failover starting.
    fn hold_of(&self, group: &str) -> Option<String> {
        self.pending
            .get(group)
            .or_else(|| self.failed_over.get(group))
            .cloned()
            .or_else(|| {
                let g = self.groups.get(group)?;
                (!g.spec.protected).then(|| UNPROTECTED.to_string())
            })
    }

    fn mark_held(&mut self, name: &str, by: String) {
        if let Some(g) = self.groups.get_mut(name) {
            g.live.state = if by == UNPROTECTED {
                GroupState::Unprotected
            } else {
                GroupState::FailedOver
            };
            g.live.next_cycle = None;
            g.live.writer = None;
            g.live.failed_over_by = (by != UNPROTECTED).then_some(by);
        }
    }

    fn start_task(&mut self, name: &str) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        if g.task.is_some() {
            return;
        }
        self.next_task += 1;
        let id = self.next_task;
        let (assign, assigned) = watch::channel(Arc::new(Assignment {
            inventory: self.config.inventory.clone(),
            base: self.config.base.clone(),
            spec: g.spec.clone(),
        }));
        let (stop, stopped) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let now = Arc::new(Notify::new());
        let span = tracing::info_span!("protect", group = %name);
        let work = protect::protect(id, assigned, self.shared.clone(), stopped, now.clone());
        self.tasks.spawn(tracing::Instrument::instrument(
            async move {
                work.await;
                let _ = done_tx.send(true);
            },
            span,
        ));
        g.live.state = GroupState::Starting;
        g.live.failed_over_by = None;
        g.task = Some(Task {
            id,
            assign,
            stop,
            now,
            done,
        });
    }

    /// Stops `name`'s task (after its cycle in flight): what it releases when it has ended.
    fn stop_task(&mut self, name: &str) -> Option<watch::Receiver<bool>> {
        let task = self.groups.get_mut(name)?.task.take()?;
        let _ = task.stop.send(true);
        Some(task.done)
    }

    /// The groups failovers hold, from the journal (none when it cannot be read: said once
    /// in the log, and protection goes on).
    fn read_failed_over(&self) -> BTreeMap<String, String> {
        let path = self.opts.state.join("runs.db");
        if !path.exists() {
            return BTreeMap::new();
        }
        let read = lifeboat_orchestrator::journal::Journal::open(&path)
            .map_err(lifeboat_orchestrator::error::Error::from)
            .and_then(|j| lifeboat_orchestrator::runs::failed_over(&j, &self.config.groups));
        match read {
            Ok(held) => held
                .into_iter()
                .map(|(g, run)| (g, format!("run {run}")))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the run journal: groups failovers hold are protected as usual");
                BTreeMap::new()
            }
        }
    }

    /// Holds and releases groups as the holds now say.
    fn apply_holds(&mut self) {
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let hold = self.hold_of(&name);
            let has_task = self.groups.get(&name).is_some_and(|g| g.task.is_some());
            match (hold, has_task) {
                (Some(by), true) => {
                    self.stop_task(&name);
                    self.bus.publish(
                        Notice::new(
                            NoticeKind::ProtectionPaused,
                            format!("group {name}: not replicated while {by} holds it"),
                        )
                        .group(&name),
                    );
                    self.mark_held(&name, by);
                }
                (Some(by), false) => self.mark_held(&name, by),
                (None, false) => {
                    self.start_task(&name);
                    self.bus.publish(
                        Notice::new(
                            NoticeKind::ProtectionResumed,
                            format!("group {name}: protected again"),
                        )
                        .group(&name),
                    );
                }
                (None, true) => {}
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::ReplicateNow { group, reply } => {
                let answer = match self.groups.get(&group) {
                    None => Err(CommandError::NoGroup(group)),
                    Some(g) => match &g.task {
                        Some(_) if g.live.state == GroupState::Standby => {
                            Err(CommandError::Busy(g.live.writer.clone().unwrap_or_else(
                                || format!("another writer holds group {group}'s lease"),
                            )))
                        }
                        Some(t) => {
                            t.now.notify_one();
                            Ok(())
                        }
                        None => Err(CommandError::Held {
                            by: g.live.failed_over_by.clone().unwrap_or_default(),
                            group,
                        }),
                    },
                };
                let _ = reply.send(answer);
            }
            Command::Hold { groups, why, reply } => {
                let mut ending = Vec::new();
                for name in groups {
                    self.pending.insert(name.clone(), why.clone());
                    if let Some(done) = self.stop_task(&name) {
                        ending.push(done);
                        self.bus.publish(
                            Notice::new(
                                NoticeKind::ProtectionPaused,
                                format!("group {name}: not replicated while {why}"),
                            )
                            .group(&name),
                        );
                    }
                    self.mark_held(&name, why.clone());
                }
                tokio::spawn(async move {
                    for mut done in ending {
                        let _ = done.wait_for(|d| *d).await;
                    }
                    let _ = reply.send(());
                });
            }
            Command::Release { groups } => {
                for g in groups {
                    self.pending.remove(&g);
                }
                self.failed_over = self.read_failed_over();
                self.apply_holds();
            }
            Command::Refresh => {
                self.failed_over = self.read_failed_over();
                self.apply_holds();
            }
        }
    }

    /// Tells the bus of every group whose RPO went over its threshold or came back under it. A
    /// group without a point counts once the daemon has run for its threshold (not while the
    /// first cycle runs); groups failovers hold are not replicated here and do not count.
    fn tell_rpo(&mut self) {
        let now = SystemTime::now();
        let up = now
            .duration_since(self.started_at)
            .unwrap_or_default()
            .as_secs_f64();
        let mut changed = Vec::new();
        for (name, g) in &self.groups {
            let rpo = lifeboat_orchestrator::status::rpo_of(
                g.live.last_point.as_ref(),
                g.spec.rpo_threshold,
                now,
            );
            // A group that is not protected (committed elsewhere, every VM disabled) has no
            // RPO to keep: `status` says `unprotected` instead.
            let over = !rpo.ok
                && g.live.failed_over_by.is_none()
                && g.spec.protected
                && (g.live.last_point.is_some() || up > rpo.threshold_seconds);
            if over != self.breached.contains(name) {
                changed.push((name.clone(), over, rpo, g.live.clone()));
            }
        }
        for (name, over, rpo, live) in changed {
            let data = serde_json::json!({
                "rpo_seconds": rpo.seconds,
                "threshold_seconds": rpo.threshold_seconds,
                "last_point": live.last_point,
                "last_error": live.last_error,
            });
            let rpo_text = rpo
                .seconds
                .map_or_else(|| "no point yet".to_string(), |s| format!("RPO {s:.1}s"));
            let (kind, against) = if over {
                self.breached.insert(name.clone());
                (NoticeKind::RpoBreached, "over")
            } else {
                self.breached.remove(&name);
                (NoticeKind::RpoRecovered, "within")
            };
            self.bus.publish(
                Notice::new(
                    kind,
                    format!(
                        "group {name}: {rpo_text}, {against} its threshold of {}s",
                        rpo.threshold_seconds
                    ),
                )
                .group(&name)
                .data(data),
            );
        }
    }

    /// A group task's news.
    fn apply(&mut self, event: Event) {
        let Some(g) = self.groups.get_mut(&event.group) else {
            return;
        };
        if g.task.as_ref().map(|t| t.id) != Some(event.task) {
            // From a task of a group since removed, or held.
            return;
        }
        let live = &mut g.live;
        match event.update {
            Update::Known { last, damaged } => {
                if live.last_point.is_none() {
                    live.last_point = last;
                }
                live.damaged_points = damaged;
            }
            Update::Standby { writer, retry_at } => {
                live.state = GroupState::Standby;
                live.writer = Some(writer);
                live.next_cycle = Some(retry_at);
            }
            Update::Idle { next } => {
                live.state = GroupState::Idle;
                live.writer = None;
                live.next_cycle = Some(next);
            }
            Update::Cycling => {
                live.state = GroupState::Cycling;
                live.writer = None;
            }
            Update::Committed {
                last,
                seconds,
                scanned,
                changed,
                shipped,
                expired,
                points_kept,
                report,
            } => {
                live.last_point = Some(last.clone());
                live.last_error = None;
                let failed_before = std::mem::take(&mut live.failures);
                live.state = GroupState::Idle;
                g.counters
                    .committed(seconds, scanned, changed, shipped, points_kept);
                g.counters.expired += expired.len() as u64;
                self.bus.publish(
                    Notice::new(
                        NoticeKind::CycleCommitted,
                        format!(
                            "group {}: point {} committed in {seconds:.1}s ({shipped} bytes shipped)",
                            event.group, last.id
                        ),
                    )
                    .group(&event.group)
                    .data(serde_json::json!({
                        "point": last,
                        "seconds": seconds,
                        "scanned_bytes": scanned,
                        "changed_bytes": changed,
                        "shipped_bytes": shipped,
                        "expired": expired,
                        "report": report,
                    })),
                );
                if failed_before > 0 {
                    self.bus.publish(
                        Notice::new(
                            NoticeKind::CycleRecovered,
                            format!(
                                "group {}: cycles commit again (point {}) after {failed_before} failure(s)",
                                event.group, last.id
                            ),
                        )
                        .group(&event.group)
                        .data(serde_json::json!({ "point": last, "failures": failed_before })),
                    );
                }
            }
            Update::Failed {
                error,
                failures,
                retry_at,
            } => {
                live.state = GroupState::Backoff;
                live.last_error = Some(error.clone());
                live.failures = failures;
                live.next_cycle = Some(retry_at);
                g.counters.failed();
                self.bus.publish(
                    Notice::new(
                        NoticeKind::CycleFailed,
                        format!(
                            "group {}: cycle failed ({failures} in a row): {error}",
                            event.group
                        ),
                    )
                    .group(&event.group)
                    .data(serde_json::json!({
                        "error": error,
                        "failures": failures,
                        "retry_at": humantime::format_rfc3339_seconds(retry_at).to_string(),
                    })),
                );
                // The transition, told once however long the failures last.
                if failures == 1 {
                    self.bus.publish(
                        Notice::new(
                            NoticeKind::CycleFailing,
                            format!("group {}: cycles fail: {error}", event.group),
                        )
                        .group(&event.group)
                        .data(serde_json::json!({ "error": error })),
                    );
                }
            }
        }
    }

    /// Reads where groups run and the runs that hold them again, and applies both.
    async fn refresh(&mut self) {
        match self.config.read_placements().await {
            Ok(p) => self.take_placements(p),
            Err(e) => tracing::warn!(error = %e, "placements not read; the last ones stand"),
        }
        self.failed_over = self.read_failed_over();
        self.apply_holds();
    }

    /// Applies changed placements to the running config (the files are not read again).
    fn take_placements(&mut self, placements: BTreeMap<String, Placement>) {
        if placements == self.config.placements {
            return;
        }
        match self.config.with_placements(placements) {
            Ok(next) => {
                tracing::info!("where groups run changed");
                self.apply_config(next);
            }
            Err(e) => tracing::error!(error = %e, "placements not applied"),
        }
    }

    /// Validates the files again; applies them, or keeps the running config and says why.
    async fn reload(&mut self, trigger: &str) {
        let started = Instant::now();
        let loaded = config::load_placed(&self.opts.config).await;
        let seconds = started.elapsed().as_secs_f64();
        let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        match loaded {
            Ok(config) => {
                self.apply_config(config);
                self.generation += 1;
                self.reloads.applied += 1;
                self.reloads.last_ok = true;
                self.reloads.last_seconds = seconds;
                tracing::info!(
                    trigger,
                    generation = self.generation,
                    groups = self.groups.len(),
                    seconds,
                    "config reloaded"
                );
                self.last_reload = Some(Reload {
                    at,
                    trigger: trigger.into(),
                    applied: true,
                    seconds,
                    diagnostics: Vec::new(),
                });
                self.bus.publish(
                    Notice::new(
                        NoticeKind::ConfigReloaded,
                        format!(
                            "config generation {} applied ({trigger}): {} group(s)",
                            self.generation,
                            self.groups.len()
                        ),
                    )
                    .data(serde_json::json!({
                        "generation": self.generation,
                        "trigger": trigger,
                        "groups": self.groups.keys().collect::<Vec<_>>(),
                    })),
                );
            }
            Err(diagnostics) => {
                for d in &diagnostics {
                    tracing::error!(trigger, "{d}");
                }
                tracing::error!(
                    trigger,
                    problems = diagnostics.len(),
                    "config rejected: the last good config keeps running"
                );
                self.reloads.rejected += 1;
                self.reloads.last_ok = false;
                self.reloads.last_seconds = seconds;
                self.bus.publish(
                    Notice::new(
                        NoticeKind::ConfigRejected,
                        format!(
                            "config rejected ({trigger}): {} problem(s); the last good config keeps running",
                            diagnostics.len()
                        ),
                    )
                    .data(serde_json::json!({
                        "trigger": trigger,
                        "diagnostics": diagnostics,
                    })),
                );
                self.last_reload = Some(Reload {
                    at,
                    trigger: trigger.into(),
                    applied: false,
                    seconds,
                    diagnostics,
                });
            }
        }
    }

    /// Swaps in a validated config: new groups start at once, removed ones stop after their
    /// cycle in flight, changed ones take the change at their next cycle.
    fn apply_config(&mut self, config: Config) {
        let config = Arc::new(config);
        let wanted: BTreeMap<String, GroupSpec> = config
            .groups
            .iter()
            .map(|g| (g.name.clone(), g.clone()))
            .collect();
        let removed: Vec<String> = self
            .groups
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            self.stop_task(&name);
            if self.groups.remove(&name).is_some() {
                tracing::info!(group = %name, "no longer protected");
            }
        }
        self.config = config;
        self.failed_over = self.read_failed_over();
        for (name, spec) in wanted {
            match self.groups.get_mut(&name) {
                Some(g) => {
                    let turned = g.spec.source_site != spec.source_site
                        || g.spec.target_site != spec.target_site;
                    if turned {
                        // Another repository, another lease: a new task takes it.
                        tracing::info!(group = %name, from = %spec.source_site, to = %spec.target_site, "group replicates in another direction now");
                        g.spec = spec.clone();
                        self.stop_task(&name);
                        continue;
                    }
                    if g.spec != spec {
                        tracing::info!(group = %name, "group changed: applies at its next cycle");
                    }
                    g.spec = spec.clone();
                    if let Some(t) = &g.task {
                        let _ = t.assign.send(Arc::new(Assignment {
                            inventory: self.config.inventory.clone(),
                            base: self.config.base.clone(),
                            spec,
                        }));
                    }
                }
                None => {
                    tracing::info!(group = %name, "newly protected");
                    self.spawn(spec);
                }
            }
        }
        self.apply_holds();
    }

    /// Starts a maintenance pass when one is due and none runs.
    fn maintain(&mut self, done: &mpsc::UnboundedSender<MaintenanceDone>) {
        if self.maintaining || self.draining {
            return;
        }
        let now = Instant::now();
        let gc = now.duration_since(self.last_gc) >= self.opts.gc_every;
        let verify = now.duration_since(self.last_verify) >= self.opts.verify_every;
        let size = self
            .last_sized
            .is_none_or(|t| now.duration_since(t) >= SIZE_EVERY);
        if !(gc || verify || size) {
            return;
        }
        if gc {
            self.last_gc = now;
        }
        if verify {
            self.last_verify = now;
        }
        self.last_sized = Some(now);
        self.maintaining = true;
        let job = maintenance::Job {
            inventory: self.config.inventory.clone(),
            base: self.config.base.clone(),
            groups: self.config.groups.clone(),
            gc,
            verify,
        };
        let done = done.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _ = done.send(maintenance::run(job).await);
            },
            tracing::info_span!("maintenance"),
        ));
    }

    fn maintained(&mut self, done: MaintenanceDone) {
        self.maintaining = false;
        for mut m in done.sites {
            // A pass that did not run GC or verify keeps the last one's time and findings.
            if let Some(old) = self.maintenance.get(&m.site) {
                if m.last_gc_at.is_none() {
                    m.last_gc_at = old.last_gc_at.clone();
                }
                if m.last_verify_at.is_none() {
                    m.last_verify_at = old.last_verify_at.clone();
                    m.verify_problems = old.verify_problems;
                }
            }
            self.maintenance.insert(m.site.clone(), m);
        }
    }

    fn publish(&self) {
        let snapshot = Snapshot {
            daemon: DaemonInfo {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
                started_at: humantime::format_rfc3339_seconds(self.started_at).to_string(),
                ready: !self.draining
                    && self
                        .groups
                        .values()
                        .all(|g| g.live.state != GroupState::Starting),
                config: ConfigState {
                    file: self.config.file.display().to_string(),
                    generation: self.generation,
                    loaded_at: humantime::format_rfc3339_seconds(self.config.loaded_at).to_string(),
                    plans: self.config.plan_files(),
                    last_reload: self.last_reload.clone(),
                },
                maintenance: self.maintenance.values().cloned().collect(),
            },
            inventory: self.config.inventory.clone(),
            config: self.config.clone(),
            groups: self
                .groups
                .values()
                .map(|g| (g.spec.clone(), g.live.clone(), g.counters.clone()))
                .collect(),
            reloads: self.reloads.clone(),
            heartbeat: Instant::now(),
            unprotected: self.unprotected.clone(),
            hydrating: self.hydrating.clone(),
        };
        self.published.send_replace(Arc::new(snapshot));
    }

    /// No new cycle starts; those in flight get the grace period, then are stopped (their VMs
    /// resumed by the pause's guard; a staged session is committed by the next start).
    async fn drain(&mut self) {
        self.draining = true;
        self.publish();
        for t in self.groups.values().filter_map(|g| g.task.as_ref()) {
            let _ = t.stop.send(true);
        }
        let grace = self.opts.grace;
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?grace,
                "cycles still running after the grace period were stopped; their VMs are resumed and the next start commits what they staged"
            );
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}
