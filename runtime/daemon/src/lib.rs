//! `lifeboat daemon`: Lifeboat as a runtime. The config (inventory and plans) is loaded and
//! validated before anything else; then the daemon protects every consistency group
//! continuously, reloads its files when they change, and answers on a socket.
//!
//! ```text
//!  run: load + validate ─► bind the socket ─► a task per group ─► wait for SIGTERM/SIGINT ─► drain
//!                                               │
//!   watch (notify, settled) ──reload──► supervisor: owns the live config and the status; one
//!   SIGHUP ──────────────────reload──►  task per group (lease, schedule, backoff, retention),
//!   maintenance (size, GC, verify) ───► a maintenance pass at a time; publishes a snapshot
//!                                               ▼
//!                  server: /v1/status, /metrics, /healthz, /readyz (reads the snapshot)
//! ```
//!
//! The engines are not re-implemented here: a group's point is `lifeboat_compute::site::cycle`
//! under the group's writer lease (`lifeboat_replication::lease`), exactly as `lifeboat
//! replicate` takes one.

mod alerts;
pub mod api;
pub mod client;
pub mod config;
pub mod events;
mod host;
mod maintenance;
mod metrics;
mod protect;
mod server;
pub mod status;
mod supervisor;
mod watch;

pub use supervisor::{Error, Options, run, run_until};
