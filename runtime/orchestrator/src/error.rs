//! The orchestrator's errors. Each variant says what kind of thing went wrong with the fields a
//! caller needs to act on it (which run, in what state); variants map to exit codes in one place
//! (`exit_codes::of_run`). Messages read well after "error: ".

use crate::journal::RunStatus;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No run has this id.
    #[error("no run `{run}` (see `lifeboat runs list`)")]
    NoRun { run: String },
    /// The plan has no open run for an operation that needs one.
    #[error("plan `{plan}` has no {what}")]
    NoOpenRun { plan: String, what: &'static str },
    /// The plan already has an open run: a new failover would compete with it.
    #[error("plan `{plan}` has an open run: {run} ({operation}, {status}): {next}")]
    OpenRun {
        plan: String,
        run: String,
        operation: String,
        status: RunStatus,
        next: String,
    },
    /// The run is in a state the operation cannot act on.
    #[error("run {run} is {status}: {why}")]
    InvalidState {
        run: String,
        status: RunStatus,
        why: String,
    },
    /// Another live process drives the run.
    #[error(
        "run {run} is in progress in process {pid}: let it finish, or `lifeboat cancel {run}` first"
    )]
    Driven { run: String, pid: u32 },
    /// The source site's state forbids the failover (a VM still answers, or cannot be stopped).
    #[error("{0}")]
    Source(String),
    /// The replication engine failed; its kind (failed, damaged, fenced) is kept.
    #[error("{context}: {source}")]
    Replication {
        context: String,
        #[source]
        source: lifeboat_replication::Error,
    },
    /// The run journal could not be read or written.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The compute driver could not start, stop, pause or find a VM.
    #[error(transparent)]
    Compute(#[from] lifeboat_compute::ComputeError),
    /// Where a group runs now does not allow the operation (a failover of a group that runs at
    /// the target, a failback before a reprotect, a reprotect of a group that never moved).
    #[error("{0}")]
    Lifecycle(String),
    /// The plugin sandbox could not load or run a step.
    #[error("{0}")]
    Sandbox(String),
    /// Something answers at an address the run must use as it is (kept or overridden).
    #[error(
        "address {ip} is in use: {occupant}; VM `{vm}` nic{nic} must have it ({}): stop what answers there, or give the NIC another address in the plan's `network.override`",
        match why { crate::network::Why::Kept => "its source address, kept", _ => "the plan's override" }
    )]
    AddressInUse {
        vm: String,
        nic: usize,
        ip: std::net::IpAddr,
        why: crate::network::Why,
        occupant: String,
    },
    /// Anything else: the message says what.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    pub fn replication(
        context: impl std::fmt::Display,
        source: lifeboat_replication::Error,
    ) -> Self {
        Self::Replication {
            context: context.to_string(),
            source,
        }
    }
}

/// Lower layers still speak in messages; they count as plain failures.
impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::Failed(message)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
