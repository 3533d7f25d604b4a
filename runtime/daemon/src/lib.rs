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
mod api_error;

pub mod config;
mod counters;
mod engine;
pub mod events;
mod host;
mod maintenance;
mod messages;
mod metrics;
mod protect;
mod server;

mod supervisor;
mod unprotected;
mod watch;

pub use messages::Error;
pub use supervisor::{Options, run, run_until};

use lifeboat_api::server::{DaemonOptions, ServeError, Server, Stop};

/// The daemon, as the `lifeboat` binary hands it to the CLI.
#[derive(Clone, Copy, Debug, Default)]
pub struct Daemon;

impl Server for Daemon {
    fn serve(
        &self,
        options: DaemonOptions,
        stop: Option<Stop>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send + 'static>> {
        Box::pin(async move {
            let ran = match stop {
                Some(stop) => run_until(options, stop, None).await,
                None => run(options).await,
            };
            ran.map_err(|e| match e {
                Error::Config(problems) => ServeError::Config(problems),
                e => ServeError::Failed(Box::new(e)),
            })
        })
    }

    fn openapi(&self) -> serde_json::Result<String> {
        api::openapi().to_pretty_json()
    }
}
