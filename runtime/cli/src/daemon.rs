//! `lifeboat daemon`: validates the inventory and every plan first (invalid: every diagnostic,
//! exit 3), then hands over to `lifeboat_daemon`, which protects every group until SIGTERM or
//! SIGINT and exits 0 after draining.

use std::path::Path;
use std::time::Duration;

use crate::exit_codes;
use crate::report::{self, Format};

/// The daemon's command-line settings.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub max_cycles: usize,
    pub grace: Duration,
    pub lease_ttl: Duration,
    pub listen: Option<std::net::SocketAddr>,
    pub gc_every: Duration,
    pub verify_every: Duration,
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
    let state = state.map_or_else(
        || crate::orchestration::default_state_dir(&base),
        Path::to_path_buf,
    );
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => return crate::internal(io, &e),
    };
    let options = lifeboat_daemon::Options {
        config: config.to_path_buf(),
        state,
        max_cycles: opts.max_cycles,
        grace: opts.grace,
        lease_ttl: opts.lease_ttl,
        listen: opts.listen,
        gc_every: opts.gc_every,
        verify_every: opts.verify_every,
    };
    match rt.block_on(lifeboat_daemon::run(options)) {
        Ok(()) => {
            let _ = writeln!(io.stderr, "lifeboat daemon: stopped");
            exit_codes::OK
        }
        Err(lifeboat_daemon::Error::Config(problems)) => {
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
