//! Staged sessions in the source site's cache: what a cycle writes there before it commits
//! (`Staged`), how a point is committed (index file, then the manifest, put-if-absent), and how
//! the next cycle ships and commits a session an interrupted one staged completely.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::{rfc3339, unix_ms};
use crate::error::{Error, ErrorKind, Result};
use crate::fencing::{check_fence, writer_name};
use crate::format::manifest::{self, Manifest, PointKind, VmPoint};
use crate::format::pack::{self, Entry};
use crate::format::{Id, hex};
use crate::repo::Repository;
use crate::store::{Put, Store};

/// The record that makes a cache session complete: everything needed to commit it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Staged {
    pub parent: Option<u64>,
    /// The point's number: one after every existing point, damaged ones included (absent in
    /// sessions staged before it was recorded: the parent's plus one).
    #[serde(default)]
    pub seq: Option<u64>,
    pub epoch: u64,
    pub kind: PointKind,
    pub captured_unix_ms: u64,
    pub vms: Vec<VmPoint>,
    pub packs: Vec<String>,
    /// The point's notes (`Manifest::notes`).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Writes the index file and the manifest. The manifest is put-if-absent: if another writer
/// committed this sequence number first, this one is fenced.
pub(crate) async fn commit(
    repo: &mut Repository,
    group: &str,
    staged: &Staged,
    packs: Vec<(String, Vec<Entry>)>,
    reused: &HashSet<Id>,
    started: Instant,
) -> Result<u64> {
    if !packs.is_empty() {
        repo.add_index(packs).await?;
    }
    // Blobs reused from earlier packs must still be there: GC condemns dead packs first and
    // deletes them only a grace period later, so a cycle shorter than the grace that finds none
    // of its packs condemned is safe.
    if started.elapsed() >= repo.grace() && !reused.is_empty() {
        return Err(Error::failed(format!(
            "this cycle took longer than the GC grace period ({:?}) and reused stored data; run it again",
            repo.grace()
        )));
    }
    let condemned = repo.condemned().await?;
    for id in reused {
        if let Some(loc) = repo.index().blobs.get(id) {
            let pack = repo.index().pack_name(loc);
            if condemned.contains(pack) {
                return Err(Error::failed(
                    "GC condemned data this cycle reused while it ran; run the cycle again",
                ));
            }
        }
    }
    let latest = repo.latest(group).await?;
    check_fence(latest.as_ref(), staged.epoch, group)?;
    let seq = staged
        .seq
        .unwrap_or_else(|| staged.parent.map_or(1, |p| p + 1));
    let newest = repo.newest_seq(group).await?;
    if latest.as_ref().map(|m| m.seq) != staged.parent || newest.map_or(0, |n| n) + 1 != seq {
        let other = newest.unwrap_or(0);
        return Err(Error::fenced(format!(
            "another writer committed point {other} of group `{group}` while this cycle ran; this writer stops"
        )));
    }
    let now = SystemTime::now();
    let m = Manifest {
        format: Manifest::new_format(),
        group: group.to_string(),
        seq,
        parent: staged.parent,
        kind: staged.kind,
        captured_at: rfc3339(UNIX_EPOCH + Duration::from_millis(staged.captured_unix_ms)),
        captured_unix_ms: staged.captured_unix_ms,
        committed_at: rfc3339(now),
        committed_unix_ms: unix_ms(now),
        epoch: staged.epoch,
        writer: writer_name(),
        vms: staged.vms.clone(),
        notes: staged.notes.clone(),
    };
    let name = manifest::object_name(group, seq);
    match repo
        .store()
        .put_new(&name, Bytes::from(m.encode(repo.keys())))
        .await?
    {
        Put::Created => Ok(seq),
        Put::Exists => {
            let winner = repo.point(group, seq).await.ok();
            Err(Error::fenced(format!(
                "another writer committed point {seq} of group `{group}` first{}; this writer stops",
                winner.map_or(String::new(), |w| format!(
                    " ({}, epoch {})",
                    w.writer, w.epoch
                ))
            )))
        }
    }
}

/// Commits (or discards) what interrupted cycles left in the cache.
pub(crate) async fn resume(
    repo: &mut Repository,
    cache: &Store,
    group: &str,
    latest: Option<&Manifest>,
    epoch: u64,
    notes: &mut Vec<String>,
) -> Result<Option<u64>> {
    let objects = cache.list("sessions").await?;
    let mut sessions: Vec<String> = objects
        .iter()
        .filter_map(|o| o.name.split('/').nth(1).map(str::to_string))
        .collect();
    sessions.dedup();
    let mut committed = None;
    for session in sessions {
        let staged = match cache.get_opt(&format!("sessions/{session}/staged")).await? {
            Some(b) => match serde_json::from_slice::<Staged>(&b) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(%session, error = %e, "dropping a staged session whose record does not parse");
                    None
                }
            },
            None => None,
        };
        let current = latest.map(|m| m.seq);
        if let Some(staged) = staged
            && committed.is_none()
            && staged.parent == current
            && staged.epoch == epoch
        {
            match ship_staged(repo, cache, &session, &staged).await {
                Ok(packs) => {
                    let seq = commit(repo, group, &staged, packs, &HashSet::new(), Instant::now())
                        .await?;
                    notes.push(format!(
                        "committed point {seq}, staged by an interrupted cycle"
                    ));
                    committed = Some(seq);
                }
                Err(e) if e.kind() == ErrorKind::Damaged => {
                    notes.push(format!("dropped a damaged staged session: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        drop_session(cache, &session).await;
    }
    Ok(committed)
}

async fn ship_staged(
    repo: &Repository,
    cache: &Store,
    session: &str,
    staged: &Staged,
) -> Result<Vec<(String, Vec<Entry>)>> {
    let mut out = Vec::new();
    for name in &staged.packs {
        let bytes = cache
            .get(&format!("sessions/{session}/packs/{name}"))
            .await?;
        let (_, entries) = pack::parse(name, &bytes).map_err(|why| Error::damaged(name, why))?;
        // The cache is written without fsync: a power loss can tear a staged pack anywhere, so
        // every blob is checked against its id before the pack goes to the repository.
        let (keys, check, listed) = (repo.keys().clone(), bytes.clone(), entries.clone());
        tokio::task::spawn_blocking(move || {
            use rayon::prelude::*;
            listed.par_iter().try_for_each(|e| {
                let end = e.offset as usize + e.stored_len as usize;
                crate::format::decode_blob(
                    &keys,
                    e.id,
                    e.codec,
                    e.raw_len,
                    &check[e.offset as usize..end],
                )
                .map(drop)
            })
        })
        .await
        .map_err(|e| Error::failed(format!("check of a staged pack stopped: {e}")))?
        .map_err(|why| Error::damaged(name, why))?;
        repo.store()
            .put_new(&pack::object_name(name), bytes)
            .await?;
        out.push((name.clone(), entries));
    }
    Ok(out)
}

pub(crate) async fn drop_session(cache: &Store, session: &str) {
    if let Ok(objects) = cache.list(&format!("sessions/{session}")).await {
        // Packs first, the record last: a half-deleted session is never taken for complete.
        let (records, packs): (Vec<_>, Vec<_>) = objects
            .into_iter()
            .partition(|o| o.name.ends_with("/staged"));
        for o in packs.into_iter().chain(records) {
            if let Err(e) = cache.delete(&o.name).await {
                tracing::warn!(object = %o.name, error = %e, "cannot delete a finished session's object from the cache");
            }
        }
    }
}

pub(crate) fn session_id(at: SystemTime) -> String {
    let mut r = [0u8; 4];
    if let Err(e) = getrandom::fill(&mut r) {
        tracing::warn!(error = %e, "no randomness for the session name; it rests on the clock alone");
    }
    format!("{:013}-{}", unix_ms(at), hex(&r))
}
