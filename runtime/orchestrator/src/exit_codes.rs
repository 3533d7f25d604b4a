//! Every exit code of `lifeboat`, in one place, and which one each engine error gives. They are
//! stable: scripts and CI depend on them, and the daemon's API answers errors with the same codes.
//! README.md lists them for users; keep the two in step.

/// The command did what was asked; for `plan validate`, every file is valid.
pub const OK: u8 = 0;
/// Something unexpected went wrong (a bug, or output could not be written). Anything not covered
/// by a more specific code exits with this one.
pub const INTERNAL: u8 = 1;
/// The command line is wrong: an unknown command or flag, a missing argument.
pub const USAGE: u8 = 2;
/// `plan validate` found at least one error in the inventory or a plan (or could not read one);
/// `plan simulate` found that the plan would not recover (a step fails, addresses clash).
pub const INVALID: u8 = 3;
/// The command could not do its work: a store was unreachable, a disk image or a quiesce
/// command failed, the point, VM or run asked for does not exist, or a run stopped at a failed
/// step. The message says which.
pub const FAILED: u8 = 4;
/// `verify` or `restore` found damaged or missing objects in a repository (each is named).
pub const DAMAGED: u8 = 5;
/// Another writer owns the group: it committed first, or a failover fenced this site.
pub const FENCED: u8 = 6;
/// `status`: some protected VM's RPO is over its policy's threshold (or it has no point yet).
pub const RPO_EXCEEDED: u8 = 7;
/// Another writer holds the group's lease (a running daemon protects it, or another
/// `replicate`): one writer per group. Try again later, or let the daemon take the point.
pub const BUSY: u8 = 8;
/// `plan simulate`: the predicted RTO is longer than the plan's `rto_objective`.
pub const RTO_EXCEEDED: u8 = 9;

/// Every code with what it means, for `--help` (the README's table says the same).
pub const TABLE: &[(u8, &str)] = &[
    (OK, "ok"),
    (INTERNAL, "unexpected failure"),
    (USAGE, "usage error"),
    (INVALID, "invalid inventory or plan"),
    (
        FAILED,
        "failed (replication, a refused or failed run, a missing point, VM or run)",
    ),
    (DAMAGED, "damaged repository"),
    (FENCED, "fenced by another writer"),
    (RPO_EXCEEDED, "rpo exceeded (status)"),
    (BUSY, "busy: another writer holds the group's lease"),
    (RTO_EXCEEDED, "rto objective exceeded (plan simulate)"),
];

/// The exit code of a replication engine error.
pub fn of_replication(e: &lifeboat_replication::Error) -> u8 {
    use lifeboat_replication::ErrorKind;
    match e.kind() {
        ErrorKind::Failed => FAILED,
        ErrorKind::Damaged => DAMAGED,
        ErrorKind::Fenced => FENCED,
        ErrorKind::Busy => BUSY,
    }
}

/// The exit code of an orchestrator error: by its variant, never by its message.
pub fn of_run(e: &crate::error::Error) -> u8 {
    use crate::error::Error;
    match e {
        Error::Replication { source, .. } => of_replication(source),
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
        | Error::Failed(_) => FAILED,
    }
}

/// A code's stable name: what the daemon's API puts beside the number in an error.
pub fn name(code: u8) -> &'static str {
    match code {
        OK => "ok",
        USAGE => "usage",
        INVALID => "invalid",
        FAILED => "failed",
        DAMAGED => "damaged",
        FENCED => "fenced",
        RPO_EXCEEDED => "rpo-exceeded",
        BUSY => "busy",
        RTO_EXCEEDED => "rto-exceeded",
        _ => "internal",
    }
}
