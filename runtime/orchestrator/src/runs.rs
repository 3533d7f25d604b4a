//! Which runs exist and how they stand: the environment every operation works in, a run's
//! status from its journal (and the process driving it), the VMs runs left running.

use std::path::PathBuf;
use std::sync::Arc;

use lifeboat_loader::Resolved;
use lifeboat_plugin_host::PluginEngine;
use lifeboat_replication::{GroupSpec, Store};

use crate::error::{Error, Result};
use crate::journal::{Journal, JournalError, RunKind, RunStatus};
use lifeboat_compute::driver::{Compute, Handle};

/// What every operation works with: the resolved configuration (the inventory as written and as
/// the groups run now, the groups, the plans' components), where runs are kept, the plugin
/// engine and the target's compute driver.
pub struct Environment {
    pub config: Arc<Resolved>,
    /// The run journal (`runs.db`) and each run's disks and logs.
    pub state_dir: PathBuf,
    pub engine: PluginEngine,
    pub driver: Arc<dyn Compute>,
    /// Runs here are driven by the daemon (journaled, so a daemon that restarts resumes them).
    pub daemon: bool,
    /// How to run this Lifeboat's CLI: an instant boot serves a point's disks from a
    /// `lifeboat export` process of its own, which outlives a CLI run and a daemon restart.
    pub lifeboat: Vec<std::ffi::OsString>,
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
pub struct RunInfo {
    pub id: String,
    pub plan: String,
    pub operation: RunKind,
    pub status: RunStatus,
    pub plan_path: String,
    pub point: Option<String>,
    /// The process driving the run, while it lives (checked by pid and start time, so a
    /// recycled pid does not count).
    pub driver_pid: Option<u32>,
    /// The last process to drive it was a daemon.
    pub daemon: bool,
    /// It runs its plan reversed (a drill of the failback; a failback always does).
    pub reverse: bool,
    /// It boots its `qemu` machines instantly.
    pub instant: bool,
}

impl RunInfo {
    /// The plan operation whose steps the run runs.
    pub fn operation(&self) -> Result<lifeboat_plan::plan::Operation> {
        self.operation
            .operation()
            .ok_or_else(|| Error::InvalidState {
                run: self.id.clone(),
                status: self.status,
                why: format!("a {} runs no plan steps", self.operation),
            })
    }

    /// A run still holds VMs, pins or an uncommitted failover (a reprotect: until it ends).
    pub fn open(&self) -> bool {
        if self.operation == RunKind::Reprotect {
            return self.status.is_resumable();
        }
        self.status.is_open()
    }
}

impl Environment {
    pub fn journal_path(&self) -> PathBuf {
        self.state_dir.join("runs.db")
    }

    pub fn journal(&self) -> Result<Journal, JournalError> {
        Journal::open(&self.journal_path())
    }

    pub fn site_store(&self, site: &str) -> Result<Store> {
        let s = self
            .config
            .inventory
            .sites
            .get(site)
            .ok_or_else(|| Error::Failed(format!("no site `{site}` in the inventory")))?;
        Store::open(&s.store.value, &self.config.base)
            .map_err(|e| Error::replication(format_args!("site `{site}`'s store"), e))
    }

    pub fn run_dir(&self, run: &str) -> PathBuf {
        self.state_dir.join("runs").join(run)
    }

    /// Every run, newest first.
    pub fn runs(&self) -> Result<Vec<RunInfo>> {
        let journal = self.journal()?;
        let mut out = Vec::new();
        for (id, _, _, _) in journal.runs()? {
            out.push(status_of(&journal, &id)?);
        }
        Ok(out)
    }

    pub fn status(&self, run: &str) -> Result<RunInfo> {
        status_of(&self.journal()?, run)
    }

    /// The open run of `plan`, if any.
    pub fn open_run(&self, plan: &str) -> Result<Option<RunInfo>> {
        Ok(self
            .runs()?
            .into_iter()
            .find(|r| r.plan == plan && r.open()))
    }
}

/// How run `run` stands: the journal's one fold, and whether its driving process still lives.
pub fn status_of(journal: &Journal, run: &str) -> Result<RunInfo> {
    let r = journal.replay(run)?.ok_or_else(|| Error::NoRun {
        run: run.to_string(),
    })?;
    // Only a live process drives a run; a dead one's run waits for `retry`.
    let driver_pid = match r.driver {
        Some((pid, started)) if r.status == RunStatus::Running && same_process(pid, started) => {
            Some(pid)
        }
        _ => None,
    };
    let operation = r.operation.ok_or_else(|| {
        Error::Journal(JournalError(format!(
            "run {run} has events but no start in the journal"
        )))
    })?;
    let reverse = r.reverse || operation == RunKind::Failback;
    Ok(RunInfo {
        id: run.to_string(),
        plan: r.plan,
        operation,
        status: r.status,
        plan_path: r.plan_path,
        point: r.point,
        driver_pid,
        daemon: r.daemon,
        reverse,
        instant: r.instant,
    })
}

/// Whether process `pid` is alive and, when its start time was recorded, is the same process.
fn same_process(pid: u32, started: Option<u64>) -> bool {
    lifeboat_compute::driver::process_alive(pid)
        && started.is_none_or(|t| lifeboat_compute::driver::process_start_time(pid) == Some(t))
}

/// Refuses to act on a run another live process is driving.
pub(crate) fn not_driven(status: &RunInfo) -> Result<()> {
    match status.driver_pid {
        Some(pid) if pid != std::process::id() => Err(Error::Driven {
            run: status.id.clone(),
            pid,
        }),
        _ => Ok(()),
    }
}

/// The VM processes runs started and did not stop, over every run in the journal.
pub fn running_vms(journal: &Journal) -> Result<Vec<Handle>, JournalError> {
    let mut out = Vec::new();
    for (id, ..) in journal.runs()? {
        out.extend(journal.replay(&id)?.map(|r| r.running).unwrap_or_default());
    }
    Ok(out)
}

/// The consistency groups a planned or unplanned failover took to its target and that have not
/// come back (its run is open; once committed, the group's placement says where it runs): group → run. The source must not replicate them:
/// their VMs were stopped or lost there, and after a commit the source is fenced.
pub fn failed_over(
    journal: &Journal,
    groups: &[GroupSpec],
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    // Oldest first: a newer run of the same group wins.
    let mut runs = journal.runs()?;
    runs.reverse();
    for (id, _, operation, _) in runs {
        if !operation.moves_groups() {
            continue;
        }
        let Some(replayed) = journal.replay(&id)? else {
            continue;
        };
        let vms: Vec<String> = replayed
            .assignments
            .iter()
            .flatten()
            .map(|a| a.vm.clone())
            .collect();
        for g in groups
            .iter()
            .filter(|g| g.vms.iter().any(|v| vms.contains(&v.name)))
        {
            // A committed run's groups are where their placement says (see `lifecycle`).
            if matches!(replayed.status, RunStatus::CleanedUp | RunStatus::Committed) {
                out.remove(&g.name);
            } else {
                out.insert(g.name.clone(), id.clone());
            }
        }
    }
    Ok(out)
}
