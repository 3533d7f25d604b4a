//! How a command starts a daemon in its own process (`lifeboat daemon`, and the demo's): the
//! options, and the [`Server`] the `lifeboat` binary hands the CLI. The CLI library sees only
//! this trait; the binary links the one implementation (`lifeboat_daemon::Daemon`), so the
//! commands that merely talk to a daemon do not carry its server.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

/// What `lifeboat daemon` runs with.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The inventory file; the plans are the `plans/` folder beside it.
    pub config: PathBuf,
    /// The state folder: the daemon's socket lives there.
    pub state: PathBuf,
    /// Cycles that may run at once, over all groups.
    pub max_cycles: usize,
    /// How long cycles in flight may take to finish after SIGTERM.
    pub grace: Duration,
    /// How long a group's writer lease lasts unless renewed (a standby daemon takes over
    /// within about this long after the holder dies).
    pub lease_ttl: Duration,
    /// Also serve the API, `/metrics`, `/healthz` and `/readyz` on this TCP address.
    pub listen: Option<SocketAddr>,
    /// How often GC runs on each repository.
    pub gc_every: Duration,
    /// How often a quick verify runs on each repository.
    pub verify_every: Duration,
    /// The bearer token every request over TCP must carry (required with `listen`).
    pub token: Option<String>,
    /// How to run this Lifeboat's CLI (see `Environment::lifeboat`).
    pub lifeboat: Vec<std::ffi::OsString>,
}

/// Why a daemon stopped other than when asked.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The inventory or a plan does not validate: every problem, one line each.
    #[error("the config is not valid")]
    Config(Vec<String>),
    /// It could not start or keep running (the message says why).
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// What tells a daemon to stop, with the reason it logs.
pub type Stop = Pin<Box<dyn Future<Output = &'static str> + Send>>;

/// A daemon the CLI can run in its process.
pub trait Server: Send + Sync {
    /// Runs until `stop` completes, or, without one, until SIGTERM or SIGINT (SIGHUP then
    /// reloads the config).
    fn serve(
        &self,
        options: DaemonOptions,
        stop: Option<Stop>,
    ) -> Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send + 'static>>;

    /// The OpenAPI document of the daemon's API, pretty JSON.
    fn openapi(&self) -> serde_json::Result<String>;
}
