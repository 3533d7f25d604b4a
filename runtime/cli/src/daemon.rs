//! `lifeboat daemon`: continuous protection. The inventory is loaded and validated before
//! anything runs (invalid: every diagnostic, exit 3). Then one task per consistency group takes a
//! point every `crash_interval` through the site's one cycle (`lifeboat_compute::site::cycle`:
//! VMs held under a guardian, never past `max_pause`), app-consistent ones when `app_interval`
//! says; a cycle that overruns its interval is not stacked, a failed one is retried with backoff
//! and jitter, and at most `--max-cycles` run at once. SIGTERM or SIGINT stops scheduling; cycles
//! in flight get `--grace` to finish, then are dropped (their VMs resumed by the pause's guard;
//! a staged session is committed by the next start).
//!
//! First slice of the daemon: no hot reload, API, metrics or lease yet (see the README).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lifeboat_compute::driver::{Compute, ProcessDriver};
use lifeboat_plan::Inventory;
use lifeboat_replication::{AppMode, GroupSpec};
use tokio::sync::{Semaphore, watch};

use crate::exit_codes;

/// How the daemon runs.
#[derive(Clone, Copy, Debug)]
pub struct DaemonOptions {
    /// Cycles that may run at once, over all groups.
    pub max_cycles: usize,
    /// How long cycles in flight may take to finish after SIGTERM.
    pub grace: Duration,
}

/// The longest a failing group waits before it tries again.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// `lifeboat daemon`.
pub fn run(
    config: &std::path::Path,
    opts: DaemonOptions,
    json: bool,
    io: &mut crate::Io<'_>,
) -> u8 {
    let loaded = match crate::load::load(config, None, json, io) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => return crate::internal(io, &e),
    };
    let names: Vec<String> = loaded
        .groups
        .iter()
        .map(|g| format!("{} every {:?}", g.name, g.crash_interval))
        .collect();
    let _ = writeln!(
        io.stderr,
        "lifeboat daemon: protecting {} group(s): {}",
        names.len(),
        names.join(", ")
    );
    let code = rt.block_on(supervise(
        loaded.inventory,
        loaded.base,
        loaded.groups,
        opts,
    ));
    let _ = writeln!(io.stderr, "lifeboat daemon: stopped");
    code
}

/// Runs a protection task per group until SIGTERM or SIGINT, then drains them.
async fn supervise(
    inventory: Arc<Inventory>,
    base: std::path::PathBuf,
    groups: Vec<GroupSpec>,
    opts: DaemonOptions,
) -> u8 {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT");
            return exit_codes::INTERNAL;
        }
    };
    let (stop, stopped) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(opts.max_cycles.max(1)));
    let driver: Arc<dyn Compute> = ProcessDriver::new();
    let mut tasks = tokio::task::JoinSet::new();
    for group in groups {
        let span = tracing::info_span!("protect", group = %group.name);
        tasks.spawn(tracing::Instrument::instrument(
            protect(
                inventory.clone(),
                base.clone(),
                driver.clone(),
                group,
                limit.clone(),
                stopped.clone(),
            ),
            span,
        ));
    }
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    // No new cycle starts; those in flight get the grace period.
    let _ = stop.send(true);
    let drained = tokio::time::timeout(opts.grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?opts.grace, "cycles still running after the grace period were stopped; their VMs are resumed and the next start commits what they staged");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    exit_codes::OK
}

/// One group's protection: a cycle every `crash_interval` (measured from the start of the last
/// one, never stacked), backing off after failures.
async fn protect(
    inventory: Arc<Inventory>,
    base: std::path::PathBuf,
    driver: Arc<dyn Compute>,
    group: GroupSpec,
    limit: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut next = Instant::now();
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
        // Waiting for a turn ends with a stop too: no cycle starts after SIGTERM.
        let _permit = tokio::select! {
            p = limit.acquire() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped.changed() => return,
        };
        let started = Instant::now();
        let result = lifeboat_compute::site::cycle(
            &inventory,
            &base,
            driver.clone(),
            &group,
            AppMode::Auto,
            None,
        )
        .await;
        match result {
            Ok(r) => {
                failures = 0;
                // The cycle logged the point itself.
                for note in &r.notes {
                    tracing::info!(group = %group.name, "{note}");
                }
                next = started + group.crash_interval;
            }
            Err(e) => {
                failures += 1;
                let wait = backoff(group.crash_interval, failures);
                tracing::warn!(group = %group.name, error = %e, failures, retry_in = ?wait, "cycle failed");
                next = Instant::now() + wait;
            }
        }
        // An overrun is not made up for: the next cycle starts now, once.
        next = next.max(Instant::now());
    }
}

/// How long to wait after the `failures`-th failure in a row: the interval doubled per failure,
/// at most `MAX_BACKOFF`, with ±20 % jitter so groups that failed together do not retry together.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let base = interval
        .saturating_mul(1u32 << failures.min(16))
        .min(MAX_BACKOFF)
        .max(Duration::from_millis(100));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let factor = 0.8 + f64::from(nanos % 1000) / 1000.0 * 0.4;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds_and_jitters() {
        let i = Duration::from_secs(1);
        for failures in 1..30 {
            let b = backoff(i, failures);
            let base = i.saturating_mul(1u32 << failures.min(16)).min(MAX_BACKOFF);
            assert!(
                b >= base.mul_f64(0.79) && b <= base.mul_f64(1.21),
                "{failures}: {b:?}"
            );
        }
    }
}
