//! Writer epochs: which site may commit a group's points. A source site writes with the epoch
//! recorded in its cache; a failover's commit takes the group over with a higher one (`fence`),
//! so a revived old source finds a newer epoch in the repository and stops.

use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::{rfc3339, unix_ms};
use crate::error::{Error, Result};
use crate::format::manifest::{self, Manifest};
use crate::repo::Repository;
use crate::store::{Put, Store};

/// The writer record in the cache: the epoch this source site writes with.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct WriterRecord {
    epoch: u64,
}

pub(crate) fn check_fence(latest: Option<&Manifest>, epoch: u64, group: &str) -> Result<()> {
    if let Some(m) = latest
        && m.epoch > epoch
    {
        return Err(Error::fenced(format!(
            "group `{group}` is fenced: point {} was committed with epoch {} by {}, this site writes with epoch {epoch} (a failover took it over); this writer stops",
            m.seq, m.epoch, m.writer
        )));
    }
    Ok(())
}

/// The epoch this source site writes the group with: recorded in its cache the first time,
/// from the newest point (or 1). A site that was failed away from keeps its old epoch, so it
/// finds a newer one in the repository and stops.
pub(crate) async fn writer_epoch(cache: &Store, latest: Option<&Manifest>) -> Result<u64> {
    let record = match cache.get_opt("writer").await? {
        Some(b) => b,
        None => {
            let epoch = latest.map_or(1, |m| m.epoch);
            let bytes = serde_json::to_vec(&WriterRecord { epoch })
                .map_err(|e| Error::failed(format!("cannot encode the writer record: {e}")))?;
            cache.put_new("writer", Bytes::from(bytes)).await?;
            cache.get("writer").await?
        }
    };
    let record: WriterRecord = serde_json::from_slice(&record)
        .map_err(|e| Error::damaged(format!("{}/writer", cache.location()), e))?;
    check_fence(
        latest,
        record.epoch,
        latest.map_or("", |m| m.group.as_str()),
    )?;
    Ok(record.epoch)
}

pub(crate) fn writer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host} pid {}", std::process::id())
}

/// Takes a group over with a new epoch: commits a point with the latest point's disks and the
/// epoch one higher. A writer still holding the old epoch (the old source site, revived) finds
/// it and stops. Failover's commit uses this; it needs nothing but the target repository.
pub async fn fence(target: &Store, group: &str) -> Result<Manifest> {
    let repo = Repository::open(target).await?;
    let latest = repo
        .latest(group)
        .await?
        .ok_or_else(|| Error::failed(format!("group `{group}` has no point to take over")))?;
    let now = SystemTime::now();
    let newest = repo.newest_seq(group).await?.unwrap_or(latest.seq);
    let m = Manifest {
        seq: newest + 1,
        parent: Some(latest.seq),
        epoch: latest.epoch + 1,
        committed_at: rfc3339(now),
        committed_unix_ms: unix_ms(now),
        writer: writer_name(),
        ..latest
    };
    match repo
        .store()
        .put_new(
            &manifest::object_name(group, m.seq),
            Bytes::from(m.encode(repo.keys())),
        )
        .await?
    {
        Put::Created => Ok(m),
        Put::Exists => Err(Error::fenced(format!(
            "another writer committed point {} of group `{group}` first; take-over not done",
            m.seq
        ))),
    }
}

/// Makes the source site `source` (a site's store) the group's writer into `target`'s
/// repository with an epoch one above any point there: what a reprotect does at the site that
/// now runs the group. What the site's cache held for the group (an old direction's writer
/// record and staged sessions, which the new direction must not commit) is deleted first.
/// Returns the epoch.
pub async fn take_writer(source: &Store, target: &Store, group: &str) -> Result<u64> {
    let repo = Repository::open_or_create(target).await?;
    let newest = match repo.newest_seq(group).await? {
        Some(seq) => Some(repo.point(group, seq).await?.epoch),
        None => None,
    };
    let epoch = newest.map_or(1, |e| e + 1);
    let cache = source.scoped(&format!("cache/{group}"));
    for listed in cache.list("").await? {
        cache.delete(&listed.name).await?;
    }
    let bytes = serde_json::to_vec(&WriterRecord { epoch })
        .map_err(|e| Error::failed(format!("cannot encode the writer record: {e}")))?;
    if cache.put_new("writer", Bytes::from(bytes)).await? == Put::Exists {
        return Err(Error::busy(format!(
            "another writer of group `{group}` started in `{}` meanwhile",
            cache.location()
        )));
    }
    Ok(epoch)
}
