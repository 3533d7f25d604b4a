//! What the daemon's parts tell each other: the snapshot the supervisor publishes (the HTTP
//! server, metrics and alerts read it), the commands the API and the run host send it, and why
//! the daemon could not run. A leaf: every other module may import it, it imports none of them
//! but the config and the counters it carries.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use lifeboat_api::status::{DaemonInfo, Status};
use lifeboat_orchestrator::status::GroupRuntime;
use lifeboat_replication::GroupSpec;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::Config;
use crate::counters::{GroupCounters, ReloadCounters};

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
    #[error(
        "the API on TCP needs a bearer token: give --token-file FILE or set LIFEBOAT_API_TOKEN"
    )]
    NoToken,
}

/// What the HTTP server reads: the supervisor's state as of its last event.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub daemon: DaemonInfo,
    pub inventory: Arc<lifeboat_plan::Inventory>,
    /// The running config (the host builds runs' environments from it).
    pub config: Arc<Config>,
    pub groups: Vec<(GroupSpec, GroupRuntime, GroupCounters)>,
    pub reloads: ReloadCounters,
    /// When the supervisor last went round its loop: `/healthz` fails when it stops.
    pub heartbeat: Instant,
    /// Domains of `libvirt` sites nothing protects, as last looked up (the daemon's `unprotected::watch`).
    pub unprotected: Unprotected,
    /// Instant runs' disks still hydrating, as the host last tended them.
    pub hydrating: Hydrating,
}

impl Snapshot {
    /// The status document as of `now` (RPOs keep counting between events).
    pub fn status(&self, now: SystemTime) -> Status {
        let rows: Vec<(GroupSpec, GroupRuntime)> = self
            .groups
            .iter()
            .map(|(s, r, _)| (s.clone(), r.clone()))
            .collect();
        let (vms, groups) = lifeboat_orchestrator::status::rows(&self.inventory, &rows, now);
        Status {
            source: "daemon".into(),
            daemon: Some(self.daemon.clone()),
            vms,
            groups,
            unprotected_domains: self.unprotected.get(),
            hydrating: self.hydrating.get(),
        }
    }
}

/// The last answer, shared by the looking task and the snapshot.
#[derive(Clone, Debug, Default)]
pub(crate) struct Unprotected(Arc<std::sync::Mutex<Vec<lifeboat_api::status::UnprotectedDomain>>>);

impl Unprotected {
    pub fn get(&self) -> Vec<lifeboat_api::status::UnprotectedDomain> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn set(&self, found: Vec<lifeboat_api::status::UnprotectedDomain>) {
        if let Ok(mut v) = self.0.lock() {
            *v = found;
        }
    }
}

/// The disks of the instant runs the host tends, by run: set by the host at each look, read by
/// the snapshot (status and metrics).
#[derive(Clone, Debug, Default)]
pub(crate) struct Hydrating(
    Arc<std::sync::Mutex<std::collections::BTreeMap<String, Vec<lifeboat_api::status::Hydrating>>>>,
);

impl Hydrating {
    pub fn get(&self) -> Vec<lifeboat_api::status::Hydrating> {
        self.0
            .lock()
            .map(|m| m.values().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Run `run`'s disks now; those hydrated leave the list, and the run with its last one.
    pub fn set(&self, run: &str, disks: Vec<lifeboat_api::status::Hydrating>) {
        if let Ok(mut m) = self.0.lock() {
            if disks.is_empty() {
                m.remove(run);
            } else {
                m.insert(run.to_string(), disks);
            }
        }
    }
}

/// What the API asks of the supervisor.
#[derive(Debug)]
pub(crate) enum Command {
    /// Start a cycle of `group` now; the answer says whether it was asked.
    ReplicateNow {
        group: String,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
    /// Stop protecting `groups` (a failover is about to take them); the answer comes once their
    /// tasks have ended and released their leases.
    Hold {
        groups: Vec<String>,
        why: String,
        reply: oneshot::Sender<()>,
    },
    /// Forget the holds of `groups` and look again at which groups failovers hold.
    Release { groups: Vec<String> },
    /// Look again at which groups failovers hold (a run ended, was cleaned up or committed).
    Refresh,
}

/// The supervisor no longer takes commands.
#[derive(Debug, thiserror::Error)]
#[error("the daemon is stopping")]
pub(crate) struct Stopping;

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CommandError {
    NoGroup(String),
    /// Another writer holds the group's lease: this daemon stands by.
    Busy(String),
    Held {
        group: String,
        by: String,
    },
}
