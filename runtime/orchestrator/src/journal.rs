//! The run journal: every transition of a run is appended here, durably, before it takes
//! effect; a restarted runtime replays it to resume a run without repeating a finished step.
//! SQLite in WAL mode with `synchronous = FULL`: an append that returned is on disk, and a
//! process killed mid-append leaves the journal as it was before that append.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// The journal's layout version, kept in the journal itself. A journal of another version is
/// refused rather than misread (as a repository of another format is).
pub const SCHEMA_VERSION: i64 = 1;

/// The journal could not be opened, read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct JournalError(pub String);

impl From<JournalError> for String {
    fn from(e: JournalError) -> Self {
        e.0
    }
}

fn jerr(e: impl std::fmt::Display) -> JournalError {
    JournalError(e.to_string())
}

/// How a run stands. A run is `running` until it ends (or while its process is dead: it waits
/// for `retry`); a retry or a skip re-opens a `failed` run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    #[default]
    Running,
    Succeeded,
    Failed,
    Cancelled,
    CleanedUp,
    Committed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::CleanedUp => "cleaned-up",
            Self::Committed => "committed",
        }
    }

    /// A run still holds VMs, pins or an uncommitted failover.
    pub fn is_open(self) -> bool {
        !matches!(self, Self::CleanedUp | Self::Committed)
    }

    /// A run a process can drive on (`retry`): it has not ended, or it stopped at a failed step.
    pub fn is_resumable(self) -> bool {
        matches!(self, Self::Running | Self::Failed)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a run does: one of a plan's operations, or a reprotect (which runs no plan steps).
/// Journaled by name, so a journal written before this type reads the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    Test,
    Planned,
    Unplanned,
    Failback,
    Reprotect,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Test => "test",
            RunKind::Planned => "planned",
            RunKind::Unplanned => "unplanned",
            RunKind::Failback => "failback",
            RunKind::Reprotect => "reprotect",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "test" => RunKind::Test,
            "planned" => RunKind::Planned,
            "unplanned" => RunKind::Unplanned,
            "failback" => RunKind::Failback,
            "reprotect" => RunKind::Reprotect,
            _ => return None,
        })
    }

    /// The run of a plan operation (`cleanup` is not a run of its own).
    pub fn of(operation: lifeboat_plan::plan::Operation) -> Option<Self> {
        use lifeboat_plan::plan::Operation;
        Some(match operation {
            Operation::Test => RunKind::Test,
            Operation::Planned => RunKind::Planned,
            Operation::Unplanned => RunKind::Unplanned,
            Operation::Failback => RunKind::Failback,
            Operation::Cleanup => return None,
        })
    }

    /// The plan operation whose steps this run runs; a reprotect runs none.
    pub fn operation(self) -> Option<lifeboat_plan::plan::Operation> {
        use lifeboat_plan::plan::Operation;
        Some(match self {
            RunKind::Test => Operation::Test,
            RunKind::Planned => Operation::Planned,
            RunKind::Unplanned => Operation::Unplanned,
            RunKind::Failback => Operation::Failback,
            RunKind::Reprotect => return None,
        })
    }

    /// A failover: it moves groups to the other site (a drill does not).
    pub fn moves_groups(self) -> bool {
        matches!(
            self,
            RunKind::Planned | RunKind::Unplanned | RunKind::Failback
        )
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One group a reprotect turned round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reprotected {
    pub group: String,
    /// Where it runs (the new source).
    pub site: String,
    /// Where its points go now (the old source).
    pub replicate_to: String,
    /// What the receiving site already held, hashed there (nothing crosses for it).
    #[schema(value_type = Object)]
    pub seed: lifeboat_replication::seed::SeedReport,
    /// The receiving site had none of the group's old disks: the first cycle is a full seed.
    pub full_seed: bool,
    /// The first point in the new direction.
    pub point: u64,
    /// Bytes of its disks, bytes that differ from what the receiving site held, bytes shipped.
    pub disk_bytes: u64,
    pub new_bytes: u64,
    pub shipped_bytes: u64,
}

/// One transition of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    RunStarted {
        plan: String,
        operation: RunKind,
    },
    StepStarted {
        step: String,
        attempt: u32,
        /// The step's name (the plan's `name`, else what it `uses`), for people.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    StepFinished {
        step: String,
        attempt: u32,
        output: serde_json::Value,
    },
    StepFailed {
        step: String,
        attempt: u32,
        error: String,
    },
    GroupHealthy {
        group: String,
    },
    RunFinished {
        status: RunStatus,
    },
    /// What the run was started with, so a resume rebuilds the same run.
    Prepared {
        plan_path: String,
        /// The `--point` of the command line, if any.
        point: Option<String>,
        /// A drill of the failback: the plan runs reversed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reverse: bool,
        /// The run boots its `qemu` machines instantly (from the repository, hydrating behind).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        instant: bool,
    },
    /// A process took the run up (started or resumed it): while it lives, no other may.
    Driving {
        pid: u32,
        /// When the process started (clock ticks since boot), so a recycled pid is not taken
        /// for it. Absent in journals written before it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started: Option<u64>,
        /// The daemon drives it: a daemon that restarts takes its runs up again.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        daemon: bool,
    },
    /// Every NIC's address at the target, fixed once per run.
    Assigned {
        assignments: Vec<crate::network::Assignment>,
    },
    /// The point a consistency group boots from (pinned while the run holds it).
    PointChosen {
        group: String,
        seq: u64,
        point_kind: String,
        captured_unix_ms: u64,
    },
    /// A VM's disks, restored from its point.
    Restored {
        vm: String,
        key: String,
        disks: Vec<String>,
    },
    /// A VM is about to be started under `key` (journaled first: a runtime that dies before
    /// `vm-started` finds the VM by its key).
    VmStarting {
        vm: String,
        key: String,
        /// The name of the copy a start at a `libvirt` target defines: what a cleanup looks
        /// for when the runtime died before it journaled the start's end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
    },
    /// A VM process started (its process group is `pid`).
    VmStarted {
        vm: String,
        key: String,
        pid: u32,
        /// When the process started (clock ticks since boot): with `key`, what tells this VM
        /// from a process that reuses its pid.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started: Option<u64>,
        argv: Vec<String>,
        log: String,
        /// The libvirt domain, when the VM is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<lifeboat_compute::driver::Domain>,
    },
    VmStopped {
        vm: String,
    },
    /// An instant boot's export server (`lifeboat export`) serves `vm`'s point from the
    /// repository on `socket`: the VM boots from `images`, qcow2 images backed by it, one per
    /// disk (`disks`, in the inventory's order), while they hydrate. Journaled again when the
    /// server is restarted.
    Exporting {
        vm: String,
        key: String,
        pid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started: Option<u64>,
        argv: Vec<String>,
        log: String,
        socket: String,
        disks: Vec<String>,
        images: Vec<String>,
        /// The most each disk's hydration reads per second (0: no limit): the target site's
        /// `bandwidth`, shared by the run's instant disks.
        #[serde(default)]
        speed: u64,
    },
    /// An instant disk holds all its data and has no backing left, `seconds` after its VM
    /// started.
    Hydrated {
        vm: String,
        disk: String,
        seconds: f64,
        bytes: u64,
    },
    /// The export server of `vm` was stopped (its disks hydrated, or cleanup).
    ExportStopped {
        vm: String,
    },
    /// A drill's network namespace, journaled before it is made: its VMs run there and its
    /// probes and steps reach them there; cleanup removes it.
    Isolated {
        netns: String,
    },
    /// The source VMs a planned failover (or a failback) stopped before it began: cleanup
    /// starts them again.
    SourceStopped {
        vms: Vec<String>,
    },
    /// Cleanup started a source VM the run had stopped, as its boot command says.
    SourceRestarted {
        vm: String,
        pid: u32,
        /// When the process started (clock ticks since boot): what tells it from a process
        /// that reuses its pid.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started: Option<u64>,
    },
    /// A drill's isolated libvirt network, journaled before it is defined on `host`: cleanup
    /// removes it.
    NetworkDefined {
        host: String,
        network: String,
    },
    /// A DHCP reservation in a libvirt network the run's copy joins (so it gets the address
    /// the run assigned), journaled before it is made: cleanup drops it; a commit keeps it.
    AddressReserved {
        host: String,
        network: String,
        mac: String,
        ip: String,
    },
    /// Cleanup removed a drill's libvirt network, or dropped a reservation.
    NetworkReleased {
        host: String,
        network: String,
    },
    /// Cleanup removed the run's network namespace.
    NamespaceRemoved {
        netns: String,
    },
    /// The run-scoped kv after a step changed it: what a resumed run starts from.
    Kv {
        entries: std::collections::BTreeMap<String, String>,
    },
    /// What a step logged in one attempt.
    StepLog {
        step: String,
        attempt: u32,
        lines: Vec<String>,
    },
    /// A step waits for a person: `lifeboat approve RUN`.
    ApprovalRequested {
        message: String,
    },
    Approved {
        by: String,
    },
    /// A failed step the operator chose to skip: the run goes on as if it had finished.
    StepSkipped {
        step: String,
    },
    /// A finished step's `undo` ran (cleanup).
    StepUndone {
        step: String,
        error: Option<String>,
    },
    /// A consistency group taken over at the target (failover commit).
    Committed {
        group: String,
        seq: u64,
        epoch: u64,
    },
    /// A reprotect's seed and first cycle of a group in the new direction.
    Reprotected {
        group: String,
        report: Reprotected,
    },
    /// Where a group runs now, as recorded in the sites' stores.
    Placed {
        group: String,
        generation: u64,
        site: String,
        replicate_to: Option<String>,
    },
}

/// A run as its journal tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replayed {
    pub plan: String,
    /// `None` only for a run whose start was never journaled.
    pub operation: Option<RunKind>,
    /// Steps that finished, with their output: never run again.
    pub finished: HashMap<String, serde_json::Value>,
    /// A step that started and did not finish (the runtime died in it): the next attempt.
    pub interrupted: HashMap<String, u32>,
    /// Steps whose last attempt failed: that attempt and why.
    pub failed: HashMap<String, (u32, String)>,
    pub healthy_groups: HashSet<String>,
    pub status: RunStatus,
    /// Whether the run recorded its end (`status` is then final unless a retry re-opens it).
    pub ended: bool,
    pub plan_path: String,
    /// The `--point` it was started with.
    pub point: Option<String>,
    /// The run runs its plan reversed (a drill of the failback).
    pub reverse: bool,
    /// The run boots its `qemu` machines instantly.
    pub instant: bool,
    /// The last process that took the run up, and when that process started.
    pub driver: Option<(u32, Option<u64>)>,
    /// The last process to drive it was a daemon.
    pub daemon: bool,
    pub events: usize,
    /// The addresses the run assigned (its first `Assigned`).
    pub assignments: Option<Vec<crate::network::Assignment>>,
    /// The run-scoped key-value entries its steps wrote (the last `Kv`).
    pub kv: Option<std::collections::BTreeMap<String, String>>,
    /// The network namespace the run was isolated in, as recorded, and whether it is still
    /// there (not removed by a cleanup).
    pub isolated: Option<String>,
    pub namespace_removed: bool,
    /// The VM processes it started and did not stop, in start order.
    pub running: Vec<lifeboat_compute::driver::Handle>,
    /// VM starts it began and never saw end (the runtime died in them): (VM, key).
    pub starting: Vec<(String, String)>,
    /// Steps whose effects a cleanup undid.
    pub undone: HashSet<String>,
    /// Groups a commit took over.
    pub committed: HashSet<String>,
    /// Groups a reprotect turned round, and groups whose placement it recorded.
    pub reprotected: HashMap<String, Reprotected>,
    pub placed: HashSet<String>,
    /// What a step asks approval for, while nobody has given it.
    pub pending_approval: Option<String>,
}

impl Replayed {
    /// The namespace the run's VMs run in now, if any.
    pub fn netns(&self) -> Option<&str> {
        self.isolated.as_deref().filter(|_| !self.namespace_removed)
    }
}

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    db: Connection,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Journal {
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| JournalError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Connection::open(path)
            .map_err(|e| JournalError(format!("cannot open journal {}: {e}", path.display())))?;
        // Several connections (the executor, host services, `lifeboat approve` in another
        // process) write one journal: wait for the lock rather than fail.
        db.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| JournalError(format!("cannot open journal {}: {e}", path.display())))?;
        db.pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| db.pragma_update(None, "synchronous", "FULL"))
            .and_then(|()| {
                db.execute_batch(
                    "CREATE TABLE IF NOT EXISTS runs (
                        id TEXT PRIMARY KEY, plan TEXT NOT NULL, operation TEXT NOT NULL,
                        created_unix_ms INTEGER NOT NULL);
                     CREATE TABLE IF NOT EXISTS events (
                        run TEXT NOT NULL, seq INTEGER NOT NULL, at_unix_ms INTEGER NOT NULL,
                        event TEXT NOT NULL, PRIMARY KEY (run, seq));",
                )
            })
            .map_err(|e| JournalError(format!("cannot set up journal {}: {e}", path.display())))?;
        check_schema(&db, path)?;
        Ok(Self { db })
    }

    /// Starts a run: records it and its first event, in one transaction.
    pub fn begin(&mut self, run: &str, plan: &str, operation: RunKind) -> Result<(), JournalError> {
        off_async_workers(|| self.begin_now(run, plan, operation))
    }

    fn begin_now(&mut self, run: &str, plan: &str, operation: RunKind) -> Result<(), JournalError> {
        let first = Event::RunStarted {
            plan: plan.into(),
            operation,
        };
        let text = serde_json::to_string(&first).map_err(jerr)?;
        let tx = self.db.transaction().map_err(jerr)?;
        tx.execute(
            "INSERT INTO runs (id, plan, operation, created_unix_ms) VALUES (?1, ?2, ?3, ?4)",
            params![run, plan, operation.as_str(), now_ms()],
        )
        .and_then(|_| {
            tx.execute(
                "INSERT INTO events (run, seq, at_unix_ms, event) VALUES (?1, 1, ?2, ?3)",
                params![run, now_ms(), text],
            )
        })
        .map_err(|e| JournalError(format!("cannot record run {run}: {e}")))?;
        tx.commit()
            .map_err(|e| JournalError(format!("cannot record run {run}: {e}")))
    }

    /// Appends one event; returns its sequence number once it is durable.
    pub fn append(&mut self, run: &str, event: &Event) -> Result<i64, JournalError> {
        off_async_workers(|| self.append_now(run, event))
    }

    fn append_now(&mut self, run: &str, event: &Event) -> Result<i64, JournalError> {
        let text = serde_json::to_string(event).map_err(jerr)?;
        // Immediate: take the write lock before reading the next sequence number, so two
        // writers never pick the same one.
        let tx = self
            .db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| JournalError(format!("cannot append to run {run}: {e}")))?;
        let seq: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run = ?1",
                [run],
                |r| r.get(0),
            )
            .map_err(jerr)?;
        tx.execute(
            "INSERT INTO events (run, seq, at_unix_ms, event) VALUES (?1, ?2, ?3, ?4)",
            params![run, seq, now_ms(), text],
        )
        .map_err(|e| JournalError(format!("cannot append to run {run}: {e}")))?;
        tx.commit()
            .map_err(|e| JournalError(format!("cannot append to run {run}: {e}")))?;
        Ok(seq)
    }

    /// Every event of a run, in order, with its instant.
    pub fn events(&self, run: &str) -> Result<Vec<(i64, i64, Event)>, JournalError> {
        self.events_after(run, 0)
    }

    /// The events of a run after sequence number `seq` (what pollers have not seen yet).
    pub fn events_after(
        &self,
        run: &str,
        seq: i64,
    ) -> Result<Vec<(i64, i64, Event)>, JournalError> {
        let mut stmt = self
            .db
            .prepare(
                "SELECT seq, at_unix_ms, event FROM events WHERE run = ?1 AND seq > ?2 ORDER BY seq",
            )
            .map_err(jerr)?;
        let rows = stmt
            .query_map(params![run, seq], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(jerr)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, text) = row.map_err(jerr)?;
            let event = serde_json::from_str(&text).map_err(|e| {
                JournalError(format!(
                    "journal event {seq} of run {run} does not parse: {e}"
                ))
            })?;
            out.push((seq, at, event));
        }
        Ok(out)
    }

    /// The sequence number of a run's newest event (0 for none).
    pub fn last_seq(&self, run: &str) -> Result<i64, JournalError> {
        self.db
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run = ?1",
                [run],
                |r| r.get(0),
            )
            .map_err(jerr)
    }

    /// Whether a run id is taken.
    pub fn exists(&self, run: &str) -> Result<bool, JournalError> {
        self.db
            .query_row("SELECT 1 FROM runs WHERE id = ?1", [run], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
            .map_err(jerr)
    }

    /// Run ids, newest first.
    pub fn runs(&self) -> Result<Vec<(String, String, RunKind, i64)>, JournalError> {
        let mut stmt = self
            .db
            .prepare("SELECT id, plan, operation, created_unix_ms FROM runs ORDER BY created_unix_ms DESC, id DESC")
            .map_err(jerr)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                ))
            })
            .map_err(jerr)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, plan, operation, created) = row.map_err(jerr)?;
            let kind = RunKind::parse(&operation).ok_or_else(|| {
                JournalError(format!(
                    "run {id} has an unknown operation `{operation}` in the journal"
                ))
            })?;
            out.push((id, plan, kind, created));
        }
        Ok(out)
    }

    /// A new run id: `PLAN-N`, N one more than the plan's runs so far.
    pub fn new_run_id(&self, plan: &str) -> Result<String, JournalError> {
        let mut n = self.runs()?.iter().filter(|r| r.1 == plan).count() + 1;
        loop {
            let id = format!("{plan}-{n}");
            if !self.exists(&id)? {
                return Ok(id);
            }
            n += 1;
        }
    }

    /// Replays a run's events into its state; `None` for an unknown run.
    pub fn replay(&self, run: &str) -> Result<Option<Replayed>, JournalError> {
        if !self.exists(run)? {
            return Ok(None);
        }
        let events = self.events(run)?;
        Ok(Some(fold(events.iter().map(|(_, _, e)| e))))
    }
}

/// Runs `f`, a durable write (an fsync), without stalling the async tasks that share its thread:
/// on a worker of a multi-thread runtime the runtime hands those tasks to other workers first
/// (`block_in_place`); elsewhere (a plain thread, a blocking thread) it just runs.
fn off_async_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Checks (or, on a journal that has none, records) the layout version.
fn check_schema(db: &Connection, path: &Path) -> Result<(), JournalError> {
    let fail =
        |e: rusqlite::Error| JournalError(format!("cannot set up journal {}: {e}", path.display()));
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    )
    .map_err(fail)?;
    // Journals written before the version was recorded have version 1's layout.
    db.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?1)",
        [SCHEMA_VERSION],
    )
    .map_err(fail)?;
    let version: i64 = db
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .map_err(fail)?;
    if version != SCHEMA_VERSION {
        return Err(JournalError(format!(
            "journal {} has schema version {version}; this Lifeboat reads version {SCHEMA_VERSION} (use the Lifeboat that wrote it)",
            path.display()
        )));
    }
    Ok(())
}

/// The one fold of a run's events into how it stands: replay, status, records and services
/// all read a run through it.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Replayed {
    let mut r = Replayed::default();
    for event in events {
        r.events += 1;
        match event {
            Event::RunStarted { plan, operation } => {
                r.plan.clone_from(plan);
                r.operation = Some(*operation);
            }
            Event::Prepared {
                plan_path,
                point,
                reverse,
                instant,
            } => {
                r.plan_path.clone_from(plan_path);
                r.point.clone_from(point);
                r.reverse = *reverse;
                r.instant = *instant;
            }
            Event::Driving {
                pid,
                started,
                daemon,
            } => {
                r.driver = Some((*pid, *started));
                r.daemon = *daemon;
                // A process took a failed run up again (`retry`).
                if r.status == RunStatus::Failed {
                    r.status = RunStatus::Running;
                }
            }
            Event::StepStarted { step, attempt, .. } => {
                r.failed.remove(step);
                r.interrupted.insert(step.clone(), *attempt);
                // A retry re-opens a failed run.
                if r.status == RunStatus::Failed {
                    r.status = RunStatus::Running;
                }
            }
            Event::StepFinished { step, output, .. } => {
                r.interrupted.remove(step);
                r.finished.insert(step.clone(), output.clone());
            }
            Event::StepFailed {
                step,
                attempt,
                error,
            } => {
                r.interrupted.remove(step);
                r.failed.insert(step.clone(), (*attempt, error.clone()));
            }
            Event::GroupHealthy { group } => {
                r.healthy_groups.insert(group.clone());
            }
            Event::RunFinished { status } => {
                r.status = *status;
                r.ended = true;
            }
            Event::StepSkipped { step } => {
                r.interrupted.remove(step);
                r.failed.remove(step);
                r.finished
                    .insert(step.clone(), serde_json::json!({ "skipped": true }));
                // A skip re-opens a failed run.
                if r.status == RunStatus::Failed {
                    r.status = RunStatus::Running;
                }
            }
            Event::Assigned { assignments } => {
                if r.assignments.is_none() {
                    r.assignments = Some(assignments.clone());
                }
            }
            Event::Kv { entries } => r.kv = Some(entries.clone()),
            Event::Isolated { netns } => {
                r.isolated = Some(netns.clone());
                r.namespace_removed = false;
            }
            Event::NamespaceRemoved { .. } => r.namespace_removed = true,
            Event::VmStarting { vm, key, .. } => r.starting.push((vm.clone(), key.clone())),
            Event::VmStarted {
                vm,
                pid,
                key,
                started,
                domain,
                ..
            } => {
                r.starting.retain(|(_, k)| k != key);
                r.running.push(lifeboat_compute::driver::Handle {
                    vm: vm.clone(),
                    pid: *pid,
                    started: *started,
                    key: key.clone(),
                    domain: domain.clone(),
                });
            }
            Event::VmStopped { vm } => r.running.retain(|h| h.vm != *vm),
            Event::StepUndone { step, .. } => {
                r.undone.insert(step.clone());
            }
            Event::Committed { group, .. } => {
                r.committed.insert(group.clone());
            }
            Event::Reprotected { group, report } => {
                r.reprotected.insert(group.clone(), report.clone());
            }
            Event::Placed { group, .. } => {
                r.placed.insert(group.clone());
            }
            Event::ApprovalRequested { message } => r.pending_approval = Some(message.clone()),
            Event::Approved { .. } => r.pending_approval = None,
            Event::PointChosen { .. }
            | Event::Restored { .. }
            | Event::Exporting { .. }
            | Event::Hydrated { .. }
            | Event::ExportStopped { .. }
            | Event::SourceStopped { .. }
            | Event::SourceRestarted { .. }
            | Event::NetworkDefined { .. }
            | Event::AddressReserved { .. }
            | Event::NetworkReleased { .. }
            | Event::StepLog { .. } => {}
        }
    }
    r
}

/// The idempotency key of a host call made by an attempt of a step: the same after a restart,
/// so a call the runtime made before it died is recognised rather than repeated.
pub fn idempotency_key(run: &str, step: &str, attempt: u32) -> String {
    format!("{run}/{step}/{attempt}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_reopened_journal_replays_what_finished_and_what_was_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        {
            let mut j = Journal::open(&path).unwrap();
            j.begin("r1", "erp", RunKind::Test).unwrap();
            j.append(
                "r1",
                &Event::StepStarted {
                    step: "database/boot".into(),
                    attempt: 1,
                    name: None,
                },
            )
            .unwrap();
            j.append(
                "r1",
                &Event::StepFinished {
                    step: "database/boot".into(),
                    attempt: 1,
                    output: serde_json::json!({"ok": true}),
                },
            )
            .unwrap();
            j.append(
                "r1",
                &Event::GroupHealthy {
                    group: "database".into(),
                },
            )
            .unwrap();
            j.append(
                "r1",
                &Event::StepStarted {
                    step: "app/boot".into(),
                    attempt: 1,
                    name: None,
                },
            )
            .unwrap();
        }
        let j = Journal::open(&path).unwrap();
        let r = j.replay("r1").unwrap().unwrap();
        assert_eq!((r.plan.as_str(), r.operation), ("erp", Some(RunKind::Test)));
        assert!(r.finished.contains_key("database/boot"));
        assert_eq!(r.interrupted.get("app/boot"), Some(&1));
        assert!(r.healthy_groups.contains("database"));
        assert_eq!((r.status, r.ended), (RunStatus::Running, false));
        assert_eq!(r.events, 5);
        assert!(j.replay("nope").unwrap().is_none());
        assert_eq!(j.runs().unwrap()[0].0, "r1");
    }

    /// A journal written by a Lifeboat with another layout is refused, not misread.
    #[test]
    fn a_journal_of_another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        Journal::open(&path)
            .unwrap()
            .begin("r1", "erp", RunKind::Test)
            .unwrap();
        let db = Connection::open(&path).unwrap();
        db.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'", [])
            .unwrap();
        drop(db);
        let e = Journal::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("schema version 2") && e.contains("reads version 1"),
            "{e}"
        );
    }
}
