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
