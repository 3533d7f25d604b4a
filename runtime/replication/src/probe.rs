//! Whether a store keeps the promise a lease rests on: of writers racing to create one name,
//! exactly one wins (`put_new`). A store whose conditional create lets several through (an S3
//! server that ignores `If-None-Match`) would let two daemons both believe they hold a group;
//! writer epochs would still fence the loser at commit, but only after it had cut and shipped.
//! The probe also reads the store's clock (an object's modification time against this host's)
//! because lease expiry compares wall clocks.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::error::Result;
use crate::store::{Put, Store};

/// How many writers race for the probe's name.
pub const RACERS: usize = 8;

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub racers: usize,
    /// How many of them were told they created the object: exactly 1 on a store leases can
    /// trust.
    pub winners: usize,
    /// The store's clock minus this host's, in milliseconds, when the store reports
    /// modification times: how far the probe object's lies outside the window its write took
    /// here (0 inside it; the window starts a second early because S3 reports whole seconds).
    pub skew_ms: Option<i64>,
}

impl Probe {
    pub fn conditional_create_holds(&self) -> bool {
        self.winners == 1
    }

    /// The refusal a lease taker gives on a store that lets several creates through.
    pub fn refusal(&self, store: &str) -> Option<String> {
        (!self.conditional_create_holds()).then(|| {
            format!(
                "store `{store}` let {} of {} concurrent creates of one object through: its put-if-absent cannot keep one writer per group, so Lifeboat takes no lease there (use a store whose conditional writes hold; see docs/guide/stores.md)",
                self.winners, self.racers
            )
        })
    }
}

/// Races `RACERS` creates of one fresh name in `store`, then removes what they wrote.
pub async fn probe(store: &Store) -> Result<Probe> {
    let mut tag = [0u8; 8];
    let _ = getrandom::fill(&mut tag);
    let name = format!(
        "{}/probe/{}-{}",
        crate::repo::PREFIX,
        std::process::id(),
        u64::from_le_bytes(tag)
    );
    let before = SystemTime::now();
    let puts = (0..RACERS).map(|i| {
        let (store, name) = (store.clone(), name.clone());
        async move {
            store
                .put_new(&name, Bytes::from(format!("racer {i}\n")))
                .await
        }
    });
    let results = futures::future::join_all(puts).await;
    let after = SystemTime::now();
    let mut winners = 0;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(Put::Created) => winners += 1,
            Ok(Put::Exists) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let skew_ms = store
        .list(&format!("{}/probe", crate::repo::PREFIX))
        .await
        .ok()
        .and_then(|l| l.into_iter().find(|o| o.name == name))
        .map(|o| skew(o.modified, before, after));
    let _ = store.delete(&name).await;
    if let Some(e) = first_error
        && winners == 0
    {
        return Err(e);
    }
    Ok(Probe {
        racers: RACERS,
        winners,
        skew_ms,
    })
}

/// How far the store's modification time `modified` lies outside the write's window
/// `[before, after]` on this host's clock (0 inside it). The window starts a second early:
/// S3 reports whole seconds.
fn skew(modified: SystemTime, before: SystemTime, after: SystemTime) -> i64 {
    let early = before - Duration::from_secs(1);
    if modified < early {
        signed_ms(modified, early)
    } else if modified > after {
        signed_ms(modified, after)
    } else {
        0
    }
}

fn signed_ms(a: SystemTime, b: SystemTime) -> i64 {
    match a.duration_since(b) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_folder_lets_exactly_one_create_win_and_keeps_this_hosts_clock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().display().to_string(), dir.path()).unwrap();
        let p = probe(&store).await.unwrap();
        assert_eq!((p.racers, p.winners), (RACERS, 1), "{p:?}");
        assert!(p.refusal("x").is_none());
        assert!(p.skew_ms.unwrap().abs() < 2_000, "{p:?}");
        assert!(store.list(crate::repo::PREFIX).await.unwrap().is_empty());
        let bad = Probe {
            racers: 8,
            winners: 3,
            skew_ms: None,
        };
        assert!(bad.refusal("s3://b").unwrap().contains("let 3 of 8"));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Duration::from_secs(1);
        assert_eq!(skew(t, t, t + s), 0);
        assert_eq!(skew(t - s / 2, t, t + s), 0, "S3's whole seconds");
        assert_eq!(skew(t + 3 * s, t, t + s), 2_000);
        assert_eq!(skew(t - 4 * s, t, t + s), -3_000);
    }
}
