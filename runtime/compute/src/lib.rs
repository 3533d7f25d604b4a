//! Lifeboat's compute layer: how a site's VMs are started, paused, stopped and found, and how a
//! consistent point of a running group is taken.
//!
//! `driver` is the `Compute` trait and the process driver (a VM is a process in its own group,
//! known by pid, start time and the key it was started under); `cut` is a group's cut: `pause`
//! holds process VMs still under a guardian process and a bound, `fleece` cuts a running QEMU VM
//! through QMP without stopping it (and knows what changed since the last cut); `site` recognises a site's running VMs by
//! their boot command and runs the one replication cycle of a site (`site::cycle`); `template`
//! fills `{…}` placeholders of boot commands and probes.

pub mod cut;
pub mod driver;
pub mod fleece;
pub mod hydrate;
pub mod libvirt;
pub mod machines;
pub mod netns;
pub mod pause;
pub mod procfs;
pub mod qemu;
pub mod qmp;
pub mod site;
pub mod template;

pub use cut::GroupCut;
pub use driver::{Compute, ComputeError, Handle, KEY_VAR, Launch, ProcessDriver};
pub use machines::Driver;
pub use pause::PauseVms;
