//! Lifeboat's orchestrator: what a run needs beyond the plan's text. Built so far: `network`
//! (the addresses each VM's NICs get at the target or in the test network), `compute` (the
//! driver trait and the process driver, which can also hold VMs still for a replication cut),
//! `health` (probes) and `template` (placeholders in boot commands and health checks).

pub mod compute;
pub mod health;
pub mod network;
pub mod template;
