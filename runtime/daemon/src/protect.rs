//! One consistency group's protection: its task holds the group's writer lease (standing by
//! while another writer holds it), takes a point through the site's one cycle every
//! `crash_interval` (measured from the start of the last one; an overrun is never stacked),
//! applies retention after each commit, and backs off with jitter after failures; a cycle asked
//! for through the API starts at once (or right after the one in flight). It reports
//! every change of state to the supervisor, which owns the status.

use lifeboat_api::status::LastPoint;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lifeboat_compute::driver::Compute;
use lifeboat_plan::Inventory;
use lifeboat_replication::lease::{Holder, Lease};
use lifeboat_replication::{AppMode, ErrorKind, GroupSpec, Store};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;

/// What a group's task protects: its spec, with the inventory and folder it came from.
#[derive(Debug)]
pub(crate) struct Assignment {
    pub inventory: Arc<Inventory>,
    pub base: PathBuf,
    pub spec: GroupSpec,
}

/// What every group's task shares.
pub(crate) struct Shared {
    pub driver: Arc<dyn Compute>,
    /// Cycles that may run at once, over all groups.
    pub limit: Arc<Semaphore>,
    pub lease_ttl: Duration,
    pub events: mpsc::UnboundedSender<Event>,
}

/// A change in a group's state, for the supervisor.
#[derive(Debug)]
pub(crate) struct Event {
    pub group: String,
    /// Which task of the group (a group removed and added again gets a new one).
    pub task: u64,
    pub update: Update,
}

#[derive(Debug)]
pub(crate) enum Update {
    /// What the repository already holds, read at the start.
    Known {
        last: Option<LastPoint>,
        damaged: Vec<u64>,
    },
    /// Another writer holds the lease; this task tries again at `retry_at`.
    Standby {
        writer: String,
        retry_at: SystemTime,
    },
    /// Waiting for the next cycle.
    Idle {
        next: SystemTime,
    },
    Cycling,
    Committed {
        last: LastPoint,
        seconds: f64,
        scanned: u64,
        changed: u64,
        shipped: u64,
        expired: Vec<u64>,
        points_kept: Option<usize>,
        /// The cycle's own report (as `lifeboat replicate` prints it).
        report: Box<lifeboat_replication::CycleReport>,
    },
    Failed {
        error: String,
        failures: u32,
        retry_at: SystemTime,
    },
}

/// The longest a failing group waits before it tries again.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

enum Wake {
    Due,
    Reassigned,
    Stop,
}

/// Waits until `at`, a cycle asked for now, a new assignment, or the stop.
async fn wait(
    at: Instant,
    now: &Notify,
    stopped: &mut watch::Receiver<bool>,
    assigned: &mut watch::Receiver<Arc<Assignment>>,
) -> Wake {
    tokio::select! {
        () = tokio::time::sleep_until(at) => Wake::Due,
        () = now.notified() => Wake::Due,
        _ = stopped.wait_for(|s| *s) => Wake::Stop,
        changed = assigned.changed() => match changed {
            Ok(()) => Wake::Reassigned,
            Err(_) => Wake::Stop,
        },
    }
}

fn wall(at: Instant) -> SystemTime {
    SystemTime::now() + at.saturating_duration_since(Instant::now())
}

/// Protects one group until stopped (or its assignment is dropped).
pub(crate) async fn protect(
    task: u64,
    mut assigned: watch::Receiver<Arc<Assignment>>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    now: Arc<Notify>,
) {
    let mut a = assigned.borrow_and_update().clone();
    let group = a.spec.name.clone();
    let send = |update: Update| {
        let _ = shared.events.send(Event {
            group: group.clone(),
            task,
            update,
        });
    };
    match lifeboat_orchestrator::status::last_and_damaged(&a.inventory, &a.base, &a.spec).await {
        Ok((last, damaged)) => send(Update::Known {
            last: last.as_ref().map(lifeboat_orchestrator::status::last_point),
            damaged,
        }),
        Err(e) => tracing::warn!(error = %e, "cannot read the group's points yet"),
    }
    // One holder per task: a group removed and added again waits for its old task's lease.
    let holder = Holder::new("daemon");
    let mut lease: Option<Lease> = None;
    let mut failures: u32 = 0;
    let mut last_start: Option<Instant> = None;
    let mut next = Instant::now();
    loop {
        if lease.as_ref().is_some_and(|l| l.lost().is_some()) {
            lease = None;
        }
        if lease.is_none() {
            let taken =
                match lifeboat_compute::site::check_target_store(&a.inventory, &a.base, &a.spec)
                    .await
                {
                    Ok(()) => {
                        lifeboat_compute::site::lease(
                            &a.inventory,
                            &a.base,
                            &a.spec,
                            &holder,
                            shared.lease_ttl,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
            match taken {
                Ok(l) => {
                    tracing::info!("writer lease taken");
                    lease = Some(l);
                }
                Err(e) => {
                    let busy = e.kind() == ErrorKind::Busy;
                    let retry = if busy {
                        shared.lease_ttl / 3
                    } else {
                        failures += 1;
                        backoff(a.spec.crash_interval, failures)
                    };
                    let at = Instant::now() + retry;
                    if busy {
                        tracing::info!(error = %e, "standing by");
                        send(Update::Standby {
                            writer: e.to_string(),
                            retry_at: wall(at),
                        });
                    } else {
                        tracing::warn!(error = %e, failures, retry_in = ?retry, "cannot take the writer lease");
                        send(Update::Failed {
                            error: e.to_string(),
                            failures,
                            retry_at: wall(at),
                        });
                    }
                    match wait(at, &now, &mut stopped, &mut assigned).await {
                        Wake::Stop => break,
                        Wake::Reassigned => a = assigned.borrow_and_update().clone(),
                        Wake::Due => {}
                    }
                    continue;
                }
            }
        }
        send(Update::Idle { next: wall(next) });
        match wait(next, &now, &mut stopped, &mut assigned).await {
            Wake::Stop => break,
            Wake::Reassigned => {
                let old_target = a.spec.target_site.clone();
                a = assigned.borrow_and_update().clone();
                // A new interval counts from the last cycle's start.
                next = last_start.map_or_else(Instant::now, |s| s + a.spec.crash_interval);
                if a.spec.target_site != old_target
                    && let Some(l) = lease.take()
                {
                    let _ = l.release().await;
                }
                continue;
            }
            Wake::Due => {}
        }
        // Waiting for a turn ends with a stop too: no cycle starts after SIGTERM.
        let permit = tokio::select! {
            p = shared.limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped.wait_for(|s| *s) => break,
        };
        let Some(held) = lease.as_ref() else { continue };
        send(Update::Cycling);
        let started = Instant::now();
        last_start = Some(started);
        let result = lifeboat_compute::site::cycle(
            &a.inventory,
            &a.base,
            shared.driver.clone(),
            &a.spec,
            AppMode::Auto,
            None,
            held,
        )
        .await;
        drop(permit);
        match result {
            Ok(r) => {
                failures = 0;
                for note in &r.notes {
                    tracing::info!("{note}");
                }
                let (expired, points_kept) = match retention(&a).await {
                    Ok((e, k)) => (e, Some(k)),
                    Err(e) => {
                        tracing::warn!(error = %e, "retention did not run; the next commit tries again");
                        (Vec::new(), None)
                    }
                };
                if !expired.is_empty() {
                    tracing::info!(?expired, "points past retention removed");
                }
                send(Update::Committed {
                    last: LastPoint {
                        id: r.seq,
                        kind: r.kind.as_str().to_string(),
                        captured_at: r.captured_at.clone(),
                        captured_unix_ms: r.captured_unix_ms,
                    },
                    seconds: r.seconds,
                    scanned: r.disk_bytes,
                    changed: r.changed_bytes,
                    shipped: r.shipped_bytes,
                    expired,
                    points_kept,
                    report: Box::new(r),
                });
                next = started + a.spec.crash_interval;
            }
            Err(e) => {
                if e.kind() == ErrorKind::Busy {
                    lease = None;
                }
                failures += 1;
                let retry = backoff(a.spec.crash_interval, failures);
                tracing::warn!(error = %e, failures, retry_in = ?retry, "cycle failed");
                next = Instant::now() + retry;
                send(Update::Failed {
                    error: e.to_string(),
                    failures,
                    retry_at: wall(next),
                });
            }
        }
        // An overrun is not made up for: the next cycle starts now, once.
        next = next.max(Instant::now());
    }
    // Let a standby daemon take over at once rather than after the lease expires.
    if let Some(l) = lease
        && let Err(e) = l.release().await
    {
        tracing::warn!(error = %e, "the writer lease was not released; it expires on its own");
    }
}

/// Retention of the group's points, after a commit.
async fn retention(a: &Assignment) -> lifeboat_replication::Result<(Vec<u64>, usize)> {
    let site = a.inventory.sites.get(&a.spec.target_site).ok_or_else(|| {
        lifeboat_replication::Error::failed(format!("unknown site `{}`", a.spec.target_site))
    })?;
    let target = Store::open(&site.store.value, &a.base)?;
    lifeboat_replication::gc::expire(&target, &a.spec).await
}

/// How long to wait after the `failures`-th failure in a row: the interval doubled per failure,
/// at most `MAX_BACKOFF`, with ±20 % jitter so groups that failed together do not retry together.
pub(crate) fn backoff(interval: Duration, failures: u32) -> Duration {
    let base = interval
        .saturating_mul(1u32 << failures.min(16))
        .min(MAX_BACKOFF)
        .max(Duration::from_millis(100));
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
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
