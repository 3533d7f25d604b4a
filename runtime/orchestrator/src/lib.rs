//! Lifeboat's orchestrator: what a run needs beyond the plan's text. Built so far: `network`
//! (the addresses each VM's NICs get at the target or in the test network), `compute` (the
//! driver trait and the process driver, which can also hold VMs still for a replication cut),
//! `health` (probes), `template` (placeholders in boot commands and health checks), `compile`
//! (a plan and an operation into the ordered steps of a run) and `journal` (the durable record
//! of every transition, replayed to resume a run), and `run` (executing a compiled run through a
//! `StepRunner`, journaled, resumable).

pub mod compile;
pub mod compute;
pub mod health;
pub mod journal;
pub mod network;
pub mod operations;
pub mod record;
pub mod run;
pub mod services;
pub mod steps;
pub mod template;
