//! One writer per group: a lease in the target repository. A daemon holds its groups' leases
//! for as long as it protects them (renewing them in the background); `lifeboat replicate` and a
//! planned failover's last cycle hold one for their cycle. A second writer finds the lease held
//! and waits (a standby daemon) or refuses (the CLI) with the holder's name, instead of
//! interleaving cycles.
//!
//! The store has put-if-absent and nothing else conditional, so a lease is a sequence of
//! generations, `repo/leases/<group>/<generation>`: taking or renewing the lease writes the
//! next generation with put-if-absent, so of two writers racing for it exactly one wins. The
//! newest generation says who holds it and until when; a holder that dies stops renewing and
//! the lease is free once it expires. The lease keeps writers polite; the writer epochs remain
//! what makes a stale writer's commit impossible (a holder that lost its lease unnoticed is
//! still fenced at commit).
//!
//! Expiry compares wall clocks of the hosts involved: the TTL (default 30 s) must be well above
//! their skew.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::{rfc3339, unix_ms};
use crate::error::{Error, Result};
use crate::repo::PREFIX;
use crate::store::{Put, Store};

/// How long a lease lasts unless renewed, unless the holder says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// Who holds a lease, as the other writers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Unique per holding process (random).
    pub id: String,
    /// What holds it: `daemon`, `replicate`, `planned failover`.
    pub kind: String,
    pub host: String,
    pub pid: u32,
    /// The kernel boot and pid namespace the pid belongs to: two machines (or containers) may
    /// share a host name, never this. Empty in leases written before it existed.
    #[serde(default)]
    pub machine: String,
}

/// This process's kernel boot id and pid namespace, or empty when they cannot be read.
fn machine() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    let ns = std::fs::read_link("/proc/self/ns/pid");
    match (boot, ns) {
        (Ok(b), Ok(n)) => format!("{} {}", b.trim(), n.display()),
        _ => String::new(),
    }
}

impl Holder {
    /// A new holder identity for this process.
    pub fn new(kind: &str) -> Self {
        let mut id = [0u8; 8];
        // Without randomness the pid and the time still tell holders apart.
        let _ = getrandom::fill(&mut id);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Self {
            id: format!(
                "{}-{}-{}",
                std::process::id(),
                unix_ms(SystemTime::now()),
                id.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
            kind: kind.to_string(),
            host,
            pid: std::process::id(),
            machine: machine(),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {} on {})", self.kind, self.pid, self.host)
    }
}

/// One generation of a group's lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: Holder,
    pub expires_unix_ms: u64,
    /// When it expires, for people reading the object.
    pub expires_at: String,
    /// The holder let it go before it expired.
    #[serde(default)]
    pub released: bool,
}

impl LeaseRecord {
    /// Held at `now`: not released, not expired, and its holder not known dead (a holder in
    /// this kernel and pid namespace whose process is gone, as after kill -9 and a restart,
    /// frees it at once; a holder elsewhere is only ever waited out).
    fn live_at(&self, now: SystemTime, me: &Holder) -> bool {
        let dead = !me.machine.is_empty()
            && self.holder.machine == me.machine
            && !std::path::Path::new(&format!("/proc/{}", self.holder.pid)).exists();
        !self.released && !dead && self.expires_unix_ms > unix_ms(now)
    }
}

fn folder(group: &str) -> String {
    format!("{PREFIX}/leases/{group}")
}

fn object(group: &str, generation: u64) -> String {
    format!("{}/{generation:020}", folder(group))
}

/// The newest generation of `group`'s lease in the site store `target`, if any.
pub async fn current(target: &Store, group: &str) -> Result<Option<(u64, LeaseRecord)>> {
    let listed = target.list(&folder(group)).await?;
    let Some(newest) = listed
        .iter()
        .filter_map(|o| o.name.rsplit('/').next()?.parse::<u64>().ok())
        .max()
    else {
        return Ok(None);
    };
    let name = object(group, newest);
    let Some(bytes) = target.get_opt(&name).await? else {
        // Deleted between the listing and the read: an older generation being cleaned up is
        // never the newest, so someone released and cleaned up; read again.
        return Box::pin(current(target, group)).await;
    };
    let record: LeaseRecord =
        serde_json::from_slice(&bytes).map_err(|e| Error::damaged(&name, e))?;
    Ok(Some((newest, record)))
}

/// A held lease. Renewed in the background every third of its TTL until `release` (or drop,
/// after which it expires on its own).
#[derive(Debug)]
pub struct Lease {
    target: Store,
    group: String,
    holder: Holder,
    ttl: Duration,
    state: Arc<Mutex<LeaseState>>,
    renewer: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct LeaseState {
    generation: u64,
    /// Why the lease was lost (taken over, or not renewed in time), once it was.
    lost: Option<String>,
}

/// Takes `group`'s lease in the site store `target` for `holder`, or says who holds it
/// (an error of kind `Busy`). A lease this holder already holds is renewed.
pub async fn acquire(target: &Store, group: &str, holder: &Holder, ttl: Duration) -> Result<Lease> {
    let generation = take(target, group, holder, ttl, false).await?;
    let state = Arc::new(Mutex::new(LeaseState {
        generation,
        lost: None,
    }));
    let renewer = tokio::spawn(renew_loop(
        target.clone(),
        group.to_string(),
        holder.clone(),
        ttl,
        state.clone(),
    ));
    Ok(Lease {
        target: target.clone(),
        group: group.to_string(),
        holder: holder.clone(),
        ttl,
        state,
        renewer,
    })
}

/// Writes the next generation for `holder` when the lease is free or already theirs.
async fn take(
    target: &Store,
    group: &str,
    holder: &Holder,
    ttl: Duration,
    release: bool,
) -> Result<u64> {
    let now = SystemTime::now();
    let newest = current(target, group).await?;
    let next = match &newest {
        Some((generation, record)) => {
            if record.holder.id != holder.id && record.live_at(now, holder) {
                return Err(busy(record));
            }
            generation + 1
        }
        None => 1,
    };
    let expires = if release { now } else { now + ttl };
    let record = LeaseRecord {
        holder: holder.clone(),
        expires_unix_ms: unix_ms(expires),
        expires_at: rfc3339(expires),
        released: release,
    };
    let bytes = serde_json::to_vec_pretty(&record)
        .map_err(|e| Error::failed(format!("cannot encode a lease: {e}")))?;
    match target
        .put_new(&object(group, next), Bytes::from(bytes))
        .await?
    {
        Put::Created => {}
        Put::Exists => {
            // Another writer took this generation first: it holds the lease now.
            return Err(match current(target, group).await? {
                Some((_, r)) if r.holder.id != holder.id => busy(&r),
                _ => Error::busy(format!(
                    "the lease of group `{group}` changed hands while it was being taken; try again"
                )),
            });
        }
    }
    // Older generations are history: drop them (a failure only leaves litter).
    if let Some((generation, _)) = newest
        && let Err(e) = target.delete(&object(group, generation)).await
    {
        tracing::debug!(group, error = %e, "an old lease generation stays");
    }
    Ok(next)
}

fn busy(record: &LeaseRecord) -> Error {
    // Callers name the group in their context.
    Error::busy(format!(
        "another writer holds the group's lease: {}, until {} unless renewed; one writer per group: wait for it, or stop it",
        record.holder, record.expires_at
    ))
}

async fn renew_loop(
    target: Store,
    group: String,
    holder: Holder,
    ttl: Duration,
    state: Arc<Mutex<LeaseState>>,
) {
    let every = ttl / 3;
    let mut valid_until = tokio::time::Instant::now() + ttl;
    loop {
        tokio::time::sleep(every).await;
        match take(&target, &group, &holder, ttl, false).await {
            Ok(generation) => {
                valid_until = tokio::time::Instant::now() + ttl;
                if let Ok(mut s) = state.lock() {
                    s.generation = generation;
                }
            }
            Err(e) => {
                let taken = e.kind() == crate::ErrorKind::Busy;
                if taken || tokio::time::Instant::now() >= valid_until {
                    tracing::warn!(group, error = %e, "lease lost");
                    if let Ok(mut s) = state.lock() {
                        s.lost = Some(e.to_string());
                    }
                    return;
                }
                tracing::warn!(group, error = %e, "lease not renewed; trying again");
            }
        }
    }
}

impl Lease {
    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Why the lease was lost, if it was: the holder must stop writing.
    pub fn lost(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.lost.clone())
    }

    /// Lets the lease go at once, so another writer need not wait for it to expire.
    pub async fn release(self) -> Result<()> {
        self.renewer.abort();
        if self.lost().is_some() {
            return Ok(());
        }
        match take(&self.target, &self.group, &self.holder, self.ttl, true).await {
            Ok(_) => Ok(()),
            // Someone else holds it now: nothing of ours to release.
            Err(e) if e.kind() == crate::ErrorKind::Busy => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_lease_refuses_a_second_writer_and_is_free_after_release() {
        let store = Store::memory();
        let ttl = Duration::from_secs(30);
        let daemon = Holder::new("daemon");
        let cli = Holder::new("replicate");
        let lease = acquire(&store, "web", &daemon, ttl).await.expect("free");
        let refused = acquire(&store, "web", &cli, ttl).await.expect_err("held");
        assert_eq!(refused.kind(), crate::ErrorKind::Busy);
        assert!(refused.to_string().contains("daemon (pid"), "{refused}");
        // Another group is independent.
        acquire(&store, "db", &cli, ttl).await.expect("other group");
        // The holder renews its own.
        let again = acquire(&store, "web", &daemon, ttl).await.expect("own");
        drop(again);
        lease.release().await.expect("release");
        acquire(&store, "web", &cli, ttl).await.expect("released");
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_its_holder_learns_it_lost() {
        let store = Store::memory();
        let old = Holder::new("daemon");
        let new = Holder::new("daemon");
        let short = Duration::from_millis(300);
        let lease = acquire(&store, "web", &old, short).await.expect("free");
        // The holder stops renewing (as a killed process would).
        lease.renewer.abort();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let taken = acquire(&store, "web", &new, Duration::from_secs(30))
            .await
            .expect("expired lease is free");
        let (_, record) = current(&store, "web").await.expect("read").expect("some");
        assert_eq!(record.holder, new);
        // Only the newest generation is kept.
        assert_eq!(store.list(&folder("web")).await.expect("list").len(), 1);
        // The old holder, renewing now, finds it taken.
        let err = take(&store, "web", &old, short, false)
            .await
            .expect_err("taken");
        assert_eq!(err.kind(), crate::ErrorKind::Busy);
        drop(taken);
    }

    #[tokio::test]
    async fn a_lease_of_a_dead_process_on_this_host_is_free_at_once() {
        let store = Store::memory();
        let mut dead = Holder::new("daemon");
        // A pid beyond pid_max: no such process.
        dead.pid = u32::MAX;
        let lease = acquire(&store, "web", &dead, Duration::from_secs(300))
            .await
            .expect("free");
        acquire(
            &store,
            "web",
            &Holder::new("daemon"),
            Duration::from_secs(30),
        )
        .await
        .expect("the holder is dead");
        drop(lease);
    }

    #[tokio::test]
    async fn a_lease_of_another_machine_with_the_same_host_name_is_waited_out() {
        let store = Store::memory();
        let mut elsewhere = Holder::new("daemon");
        // Same host name, a pid that does not exist here, but another machine.
        elsewhere.pid = u32::MAX;
        elsewhere.machine = "another-boot pid:[1]".into();
        let _lease = acquire(&store, "web", &elsewhere, Duration::from_secs(300))
            .await
            .expect("free");
        let err = acquire(
            &store,
            "web",
            &Holder::new("daemon"),
            Duration::from_secs(30),
        )
        .await
        .expect_err("its holder may be alive on its own machine");
        assert_eq!(err.kind(), crate::ErrorKind::Busy);
    }

    #[tokio::test]
    async fn of_two_racing_writers_exactly_one_takes_the_lease() {
        for _ in 0..20 {
            let store = Store::memory();
            let (a, b) = (Holder::new("daemon"), Holder::new("daemon"));
            let ttl = Duration::from_secs(30);
            let (ra, rb) = tokio::join!(
                acquire(&store, "web", &a, ttl),
                acquire(&store, "web", &b, ttl)
            );
            assert!(ra.is_ok() != rb.is_ok(), "exactly one must win");
        }
    }
}
