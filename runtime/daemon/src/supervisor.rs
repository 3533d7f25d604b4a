//! The supervisor: the one owner of the daemon's state. It holds the live config, runs a task
//! per consistency group (`protect`), and takes every event as a message: a group's state
//! change, a file change or SIGHUP (reload), a maintenance result, SIGTERM/SIGINT (drain). After
//! each one it publishes a snapshot that the HTTP server reads; nothing else is shared.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lifeboat_compute::driver::ProcessDriver;
use lifeboat_replication::GroupSpec;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::config::{self, Config};
use crate::maintenance::{self, Done as MaintenanceDone};
use crate::metrics::{GroupCounters, ReloadCounters};
use crate::protect::{self, Assignment, Event, Shared, Update};
use crate::status::{ConfigState, DaemonInfo, GroupRuntime, Maintenance, Reload, Status};

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The inventory file; the plans are the `plans/` folder beside it.
    pub config: PathBuf,
    /// The state folder: the daemon's socket lives there.
    pub state: PathBuf,
    /// Cycles that may run at once, over all groups.
    pub max_cycles: usize,
    /// How long cycles in flight may take to finish after SIGTERM.
    pub grace: Duration,
    /// How long a group's writer lease lasts unless renewed (a standby daemon takes over
    /// within about this long after the holder dies).
    pub lease_ttl: Duration,
    /// Also serve `/metrics`, `/healthz` and `/readyz` on this TCP address.
    pub listen: Option<SocketAddr>,
    /// How often GC runs on each repository.
    pub gc_every: Duration,
    /// How often a quick verify runs on each repository.
    pub verify_every: Duration,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the config is not valid")]
    Config(Vec<String>),
    #[error("a daemon already runs with state {0} (its socket answers); stop it first")]
    AlreadyRunning(PathBuf),
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
}

/// What the HTTP server reads: the supervisor's state as of its last event.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub daemon: DaemonInfo,
    pub inventory: Arc<lifeboat_plan::Inventory>,
    pub groups: Vec<(GroupSpec, GroupRuntime, GroupCounters)>,
    pub reloads: ReloadCounters,
    /// When the supervisor last went round its loop: `/healthz` fails when it stops.
    pub heartbeat: Instant,
}

impl Snapshot {
    /// The status document as of `now` (RPOs keep counting between events).
    pub fn status(&self, now: SystemTime) -> Status {
        let rows: Vec<(GroupSpec, GroupRuntime)> = self
            .groups
            .iter()
            .map(|(s, r, _)| (s.clone(), r.clone()))
            .collect();
        let (vms, groups) = crate::status::rows(&self.inventory, &rows, now);
        Status {
            source: "daemon".into(),
            daemon: Some(self.daemon.clone()),
            vms,
            groups,
        }
    }
}

/// A group's running task.
struct Running {
    task: u64,
    spec: GroupSpec,
    assign: watch::Sender<Arc<Assignment>>,
    stop: watch::Sender<bool>,
    live: GroupRuntime,
    counters: GroupCounters,
}

struct Supervisor {
    opts: Options,
    config: Config,
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
}

/// How often repository sizes are measured.
const SIZE_EVERY: Duration = Duration::from_secs(60);

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
    let config = {
        let file = opts.config.clone();
        tokio::task::spawn_blocking(move || config::load(&file))
            .await
            .map_err(|e| Error::Config(vec![format!("loading stopped: {e}")]))?
            .map_err(Error::Config)?
    };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        driver: ProcessDriver::new(),
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
            groups: Vec::new(),
            reloads: ReloadCounters::default(),
            heartbeat: now,
        }))
        .0,
        config,
    };
    sup.publish();

    // Listen before protecting anything: a second daemon on the same state stops here.
    let server = crate::server::start(
        &crate::client::socket_path(&opts.state),
        opts.listen,
        sup.published.subscribe(),
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
    let (maint_tx, mut maint_rx) = mpsc::unbounded_channel::<MaintenanceDone>();
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
            _ = tick.tick() => {
                while sup.tasks.try_join_next().is_some() {}
                sup.maintain(&maint_tx);
            }
        }
        sup.publish();
    }
    sup.drain().await;
    server.stop().await;
    Ok(())
}

impl Supervisor {
    fn spawn(&mut self, spec: GroupSpec) {
        self.next_task += 1;
        let task = self.next_task;
        let (assign, assigned) = watch::channel(Arc::new(Assignment {
            inventory: self.config.inventory.clone(),
            base: self.config.base.clone(),
            spec: spec.clone(),
        }));
        let (stop, stopped) = watch::channel(false);
        let span = tracing::info_span!("protect", group = %spec.name);
        self.tasks.spawn(tracing::Instrument::instrument(
            protect::protect(task, assigned, self.shared.clone(), stopped),
            span,
        ));
        self.groups.insert(
            spec.name.clone(),
            Running {
                task,
                spec,
                assign,
                stop,
                live: GroupRuntime {
                    state: "starting".into(),
                    ..GroupRuntime::default()
                },
                counters: GroupCounters::default(),
            },
        );
    }

    /// A group task's news.
    fn apply(&mut self, event: Event) {
        let Some(g) = self.groups.get_mut(&event.group) else {
            return;
        };
        if g.task != event.task {
            // From a task of a group since removed.
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
                live.state = "standby".into();
                live.writer = Some(writer);
                live.next_cycle = Some(retry_at);
            }
            Update::Idle { next } => {
                live.state = "idle".into();
                live.writer = None;
                live.next_cycle = Some(next);
            }
            Update::Cycling => {
                live.state = "cycling".into();
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
            } => {
                live.last_point = Some(last);
                live.last_error = None;
                live.failures = 0;
                live.state = "idle".into();
                g.counters
                    .committed(seconds, scanned, changed, shipped, points_kept);
                g.counters.expired += expired.len() as u64;
            }
            Update::Failed {
                error,
                failures,
                retry_at,
            } => {
                live.state = "backoff".into();
                live.last_error = Some(error);
                live.failures = failures;
                live.next_cycle = Some(retry_at);
                g.counters.failed();
            }
        }
    }

    /// Validates the files again; applies them, or keeps the running config and says why.
    async fn reload(&mut self, trigger: &str) {
        let started = Instant::now();
        let file = self.opts.config.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&file))
            .await
            .unwrap_or_else(|e| Err(vec![format!("loading stopped: {e}")]));
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
            if let Some(g) = self.groups.remove(&name) {
                tracing::info!(group = %name, "no longer protected");
                let _ = g.stop.send(true);
            }
        }
        self.config = config;
        for (name, spec) in wanted {
            match self.groups.get_mut(&name) {
                Some(g) => {
                    if g.spec != spec {
                        tracing::info!(group = %name, "group changed: applies at its next cycle");
                    }
                    g.spec = spec.clone();
                    let _ = g.assign.send(Arc::new(Assignment {
                        inventory: self.config.inventory.clone(),
                        base: self.config.base.clone(),
                        spec,
                    }));
                }
                None => {
                    tracing::info!(group = %name, "newly protected");
                    self.spawn(spec);
                }
            }
        }
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
                ready: !self.draining && self.groups.values().all(|g| g.live.state != "starting"),
                config: ConfigState {
                    file: self.config.file.display().to_string(),
                    generation: self.generation,
                    loaded_at: humantime::format_rfc3339_seconds(self.config.loaded_at).to_string(),
                    plans: self.config.plans.clone(),
                    last_reload: self.last_reload.clone(),
                },
                maintenance: self.maintenance.values().cloned().collect(),
            },
            inventory: self.config.inventory.clone(),
            groups: self
                .groups
                .values()
                .map(|g| (g.spec.clone(), g.live.clone(), g.counters.clone()))
                .collect(),
            reloads: self.reloads.clone(),
            heartbeat: Instant::now(),
        };
        self.published.send_replace(Arc::new(snapshot));
    }

    /// No new cycle starts; those in flight get the grace period, then are stopped (their VMs
    /// resumed by the pause's guard; a staged session is committed by the next start).
    async fn drain(&mut self) {
        self.draining = true;
        self.publish();
        for g in self.groups.values() {
            let _ = g.stop.send(true);
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
