//! `lifeboat daemon`: validates the inventory and every plan first (invalid: every diagnostic,
//! exit 3), then hands over to the daemon the binary links (`lifeboat_daemon`), which protects every group until SIGTERM or
//! SIGINT and exits 0 after draining.

use lifeboat_api::server::ServeError;
use std::path::Path;
use std::time::Duration;

use crate::exit_codes;
use crate::report::{self, Format};

/// The daemon's command-line settings.
#[derive(Clone, Debug, clap::Args)]
pub struct DaemonOptions {
    /// Replication cycles that may run at once, over all groups.
    #[arg(long, default_value_t = 2)]
    pub max_cycles: usize,
    /// How long cycles in flight may take to finish after SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub grace: Duration,
    /// How long a group's writer lease lasts unless renewed: a standby daemon takes over
    /// about this long after the one writing dies. Keep it well above clock skew.
    #[arg(long, value_parser = at_least::<3>, default_value = "30s")]
    pub lease_ttl: Duration,
    /// Also serve the API on this TCP address (e.g. 127.0.0.1:9187): every route, metrics and
    /// health included, needs the bearer token (--token-file or LIFEBOAT_API_TOKEN).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// A file holding the bearer token the API on TCP requires (its first line).
    #[arg(long, requires = "listen")]
    pub token_file: Option<std::path::PathBuf>,
    /// How often GC runs on each repository.
    #[arg(long, value_parser = at_least::<60>, default_value = "1h")]
    pub gc_every: Duration,
    /// How often a quick verify runs on each repository.
    #[arg(long, value_parser = at_least::<60>, default_value = "6h")]
    pub verify_every: Duration,
}

/// A duration of at least `SECS` seconds: a lease renewed, or a repository swept, more often
/// would only load the store (a zero would spin).
fn at_least<const SECS: u64>(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(SECS) {
        return Err(format!("must be at least {SECS}s"));
    }
    Ok(d)
}

/// `lifeboat daemon`.
pub fn run(
    config: &Path,
    state: Option<&Path>,
    opts: DaemonOptions,
    json: bool,
    io: &mut crate::Io<'_>,
) -> u8 {
    // Every problem, rendered as `plan validate` renders it, before anything starts.
    let plans = lifeboat_loader::default_plans(config);
    let validation = lifeboat_loader::validate(config, &plans);
    if !validation.is_valid() {
        let format = if json { Format::Json } else { Format::Human };
        let _ = report::write(format, &validation, false, io.stderr);
        return exit_codes::INVALID;
    }
    let base = lifeboat_loader::base_dir(config);
    let state = crate::orchestration::absolute(&state.map_or_else(
        || crate::orchestration::default_state_dir(&base),
        Path::to_path_buf,
    ));
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => return crate::internal(io, &e),
    };
    let token = match api_token(&opts) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {e}");
            return exit_codes::USAGE;
        }
    };
    let options = lifeboat_api::server::DaemonOptions {
        config: config.to_path_buf(),
        state,
        max_cycles: opts.max_cycles,
        grace: opts.grace,
        lease_ttl: opts.lease_ttl,
        listen: opts.listen,
        gc_every: opts.gc_every,
        verify_every: opts.verify_every,
        token,
        lifeboat: io.program.clone(),
    };
    match rt.block_on(io.server.serve(options, None)) {
        Ok(()) => {
            let _ = writeln!(io.stderr, "lifeboat daemon: stopped");
            exit_codes::OK
        }
        Err(ServeError::Config(problems)) => {
            for p in problems {
                let _ = writeln!(io.stderr, "{p}");
            }
            exit_codes::INVALID
        }
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {e}");
            exit_codes::FAILED
        }
    }
}

/// The TCP API's bearer token: from `--token-file` (its first line), else `LIFEBOAT_API_TOKEN`;
/// required with `--listen`.
fn api_token(opts: &DaemonOptions) -> Result<Option<String>, String> {
    let token = match &opts.token_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read the token file {}: {e}", file.display()))?;
            Some(text.lines().next().unwrap_or_default().trim().to_string())
        }
        None => std::env::var("LIFEBOAT_API_TOKEN")
            .ok()
            .map(|t| t.trim().to_string()),
    };
    match (opts.listen, token) {
        (None, _) => Ok(None),
        (Some(_), Some(t)) if t.len() >= 16 => Ok(Some(t)),
        (Some(_), Some(_)) => Err("the API token must be at least 16 characters".into()),
        (Some(addr), None) => Err(format!(
            "--listen {addr} serves the API on TCP, which needs a bearer token: --token-file FILE or LIFEBOAT_API_TOKEN"
        )),
    }
}
