//! Lifeboat's compute layer: how a site's VMs are started, paused, stopped and found, and how a
//! consistent point of a running group is taken.
//!
//! `driver` is the `Compute` trait and the process driver (a VM is a process in its own group,
//! known by pid, start time and the key it was started under); `pause` holds a group's VMs still
//! for a cut, under a guardian process and a bound; `site` recognises a site's running VMs by
//! their boot command and runs the one replication cycle of a site (`site::cycle`); `template`
//! fills `{…}` placeholders of boot commands and probes.

pub mod driver;
pub mod pause;
pub mod qemu;
pub mod qmp;
pub mod site;
pub mod template;

pub use driver::{Compute, ComputeError, Handle, KEY_VAR, Launch, ProcessDriver};
pub use pause::PauseVms;
