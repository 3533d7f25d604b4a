//! Lifeboat's orchestrator: runs of recovery plans.
//!
//! `compile` turns a plan and an operation into a run's ordered steps; `journal` records every
//! transition durably; `run` executes a compiled run through a `StepRunner` (resuming from the
//! journal, taking cancels while a step runs); `steps` is the real runner (each step a sandboxed
//! component); `services` is what those components' host calls reach (points, restores, VMs,
//! addresses, approvals) for one run; `operations` are the commands users run (failover, cleanup,
//! commit, approve, skip, cancel, resume); `runs` says which runs exist and how they stand;
//! `source` is the source site as a failover sees it; `record` rebuilds a run for people. Below them:
//! `network` (ASR's address rules) and `health` (probes); `status` computes the status document.
//! Each error gives its exit code (`Error::exit_code`, from `lifeboat_api::exit_codes`). VMs are
//! driven through `lifeboat-compute`.

pub mod compile;
pub mod error;
pub mod health;
pub mod hydration;
pub mod journal;
pub mod lifecycle;
pub mod network;
pub mod occupied;
pub mod operations;
pub mod record;
pub mod run;
pub mod runs;
pub mod services;
pub mod simulate;
pub mod source;
pub mod status;
pub mod steps;
