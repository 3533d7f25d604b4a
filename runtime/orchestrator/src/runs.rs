//! Which runs exist and how they stand: the environment every operation works in, a run's
//! status from its journal (and the process driving it), the VMs runs left running.

use std::path::PathBuf;
use std::sync::Arc;

use lifeboat_plan::Inventory;
use lifeboat_plugin_host::PluginEngine;
use lifeboat_replication::{GroupSpec, Store};

use crate::compute::{Compute, Handle};
use crate::journal::{Event, Journal};

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
    /// The run's operation, as journaled.
    pub fn operation(&self) -> Result<lifeboat_plan::plan::Operation, String> {
        lifeboat_plan::plan::Operation::parse(&self.operation).ok_or_else(|| {
            format!(
                "run {} has an unknown operation `{}` in the journal",
                self.id, self.operation
            )
        })
    }

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
pub(crate) fn not_driven(status: &RunStatus) -> Result<(), String> {
    match status.driver_pid {
        Some(pid) if pid != std::process::id() => Err(format!(
            "run {} is in progress in process {pid}: let it finish, or `lifeboat cancel {}` first",
            status.id, status.id
        )),
        _ => Ok(()),
    }
}

/// The VM processes a run started and did not stop, from its events.
pub fn running_in(events: &[(i64, i64, Event)]) -> Vec<Handle> {
    let mut up: Vec<Handle> = Vec::new();
    for (_, _, e) in events {
        match e {
            Event::VmStarted { vm, pid, .. } => up.push(Handle {
                vm: vm.clone(),
                pid: *pid,
            }),
            Event::VmStopped { vm } => up.retain(|h| h.vm != *vm),
            _ => {}
        }
    }
    up
}

/// The VM processes runs started and did not stop, over every run in the journal.
pub fn running_vms(journal: &Journal) -> Result<Vec<Handle>, String> {
    let mut out = Vec::new();
    for (id, ..) in journal.runs()? {
        out.extend(running_in(&journal.events(&id)?));
    }
    Ok(out)
}
