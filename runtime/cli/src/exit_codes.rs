//! Every exit code of `lifeboat`, in one place. They are stable: scripts and CI depend on them.
//! README.md lists them for users; keep the two in step.

/// The command did what was asked; for `plan validate`, every file is valid.
pub const OK: u8 = 0;
/// Something unexpected went wrong (a bug, or output could not be written). Anything not covered
/// by a more specific code exits with this one.
pub const INTERNAL: u8 = 1;
/// The command line is wrong: an unknown command or flag, a missing argument.
pub const USAGE: u8 = 2;
/// `plan validate` found at least one error in the inventory or a plan (or could not read one).
pub const INVALID: u8 = 3;
/// The command could not do its work: a store was unreachable, a disk image or a quiesce
/// command failed, the point, VM or run asked for does not exist, or a run stopped at a failed
/// step. The message says which.
pub const FAILED: u8 = 4;
/// `verify` or `restore` found damaged or missing objects in a repository (each is named).
pub const DAMAGED: u8 = 5;
/// Another writer owns the group: it committed first, or a failover fenced this site.
pub const FENCED: u8 = 6;
