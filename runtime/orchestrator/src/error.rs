//! The orchestrator's errors. Each variant says what kind of thing went wrong with the fields a
//! caller needs to act on it (which run, in what state); variants map to exit codes in one place
//! (`Error::exit_code`). Messages read well after "error: ".

use lifeboat_api::exit_codes;

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
        operation: crate::journal::RunKind,
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
    /// The configuration could not be resolved (its groups, placements applied).
    #[error(transparent)]
    Resolve(#[from] lifeboat_loader::ResolveError),
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

impl Error {
    /// The exit code of this error (the CLI exits with it, the daemon's API answers with it):
    /// by its variant, never by its message.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Replication { source, .. } => replication_exit_code(source),
            Error::NoRun { .. }
            | Error::NoOpenRun { .. }
            | Error::OpenRun { .. }
            | Error::InvalidState { .. }
            | Error::Driven { .. }
            | Error::Source(_)
            | Error::Lifecycle(_)
            | Error::Journal(_)
            | Error::Compute(_)
            | Error::Sandbox(_)
            | Error::AddressInUse { .. }
            | Error::Resolve(_)
            | Error::Failed(_) => exit_codes::FAILED,
        }
    }
}

/// The exit code of a replication engine error, by its kind.
pub fn replication_exit_code(e: &lifeboat_replication::Error) -> u8 {
    use lifeboat_replication::ErrorKind;
    match e.kind() {
        ErrorKind::Failed => exit_codes::FAILED,
        ErrorKind::Damaged => exit_codes::DAMAGED,
        ErrorKind::Fenced => exit_codes::FENCED,
        ErrorKind::Busy => exit_codes::BUSY,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `commit` of a failover that has not finished said "finish it first" and
    /// exited 6 (fenced), because the code was chosen by searching the message for "first".
    #[test]
    fn a_run_in_the_wrong_state_is_a_failure_not_a_fence() {
        let e = Error::InvalidState {
            run: "p-1".into(),
            status: RunStatus::Failed,
            why: "finish it first (`lifeboat retry p-1`) or clean it up".into(),
        };
        assert_eq!(e.exit_code(), exit_codes::FAILED);
        let fenced = Error::replication(
            "group `g`",
            lifeboat_replication::Error::fenced("site east is fenced"),
        );
        assert_eq!(fenced.exit_code(), exit_codes::FENCED);
    }
}
