//! Every exit code of `lifeboat`, in one place. They are stable: scripts and CI depend on them,
//! and the daemon's API answers errors with the same codes. Which engine error gives which code is
//! the engines' to say (`lifeboat_orchestrator::Error::exit_code`), by variant, never by message.
//! docs/reference/cli.md lists them for users; a test keeps the two in step.

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

/// A second Ctrl-C: the command stopped at once, as shells report a SIGINT (128 + 2). The run it
/// drove is left for `lifeboat retry` (the first Ctrl-C cancels it cleanly instead).
pub const INTERRUPTED: u8 = 130;

/// Every code with what it means, for `--help` (docs/reference/cli.md says the same).
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
    (INTERRUPTED, "interrupted (a second Ctrl-C)"),
];

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
        INTERRUPTED => "interrupted",
        _ => "internal",
    }
}

/// The `Exit codes:` paragraph of `lifeboat --help`, from [`TABLE`].
pub fn after_help() -> String {
    let codes: Vec<String> = TABLE.iter().map(|(c, m)| format!("{c} {m}")).collect();
    format!("Exit codes: {}.", codes.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_code() {
        let help = after_help();
        for (code, meaning) in TABLE {
            assert!(help.contains(&format!("{code} {meaning}")), "{help}");
        }
    }

    #[test]
    fn every_code_but_internal_has_its_own_name() {
        let mut names: Vec<&str> = TABLE.iter().map(|(c, _)| name(*c)).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TABLE.len(), "{names:?}");
    }
}
