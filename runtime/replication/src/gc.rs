//! Retention and garbage collection. Retention deletes the manifests of points that fell out of
//! their group's window (never the latest, never a pinned one). GC marks every blob reachable from
//! the remaining points, repacks packs that are mostly dead, and removes dead packs in two
//! phases: it condemns them first (`gc/condemned/…`), and deletes them on a later run once the
//! grace period has passed and they are still dead. A cycle never reuses a condemned pack's data
//! and checks at commit that none of what it reused was condemned meanwhile.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;

use crate::clock::unix_ms;
use crate::error::{Error, Result};
use crate::format::index;
use crate::format::manifest;
use crate::format::pack::{self, Entry, PackBuilder, PackClass};
use crate::format::{BlobKind, Id};
use crate::groups::GroupSpec;
use crate::repo::{self, CondemnedRecord, Location, Repository};
use crate::store::Store;

/// How GC runs.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Overrides the repository's grace period.
    pub grace: Option<Duration>,
    /// Repack packs whose live bytes are below this share of their size.
    pub repack_below: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: None,
            repack_below: 0.5,
        }
    }
}

/// What GC did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Points removed by retention: (group, seq).
    pub expired: Vec<(String, u64)>,
    pub points_kept: usize,
    pub packs_total: usize,
    pub packs_repacked: usize,
    pub packs_condemned: usize,
    pub packs_deleted: usize,
    pub bytes_deleted: u64,
    pub index_files_merged: usize,
    /// Groups in the repository that the inventory does not name: all their points are kept.
    pub unknown_groups: Vec<String>,
}

/// Retention's rule: the newest point (`i == 0`), a pinned one, or one inside the window.
fn kept(
    i: usize,
    m: &manifest::Manifest,
    pins: &HashMap<u64, Vec<String>>,
    retention: Duration,
    now: SystemTime,
) -> bool {
    let age = Duration::from_millis(unix_ms(now).saturating_sub(m.captured_unix_ms));
    i == 0 || pins.contains_key(&m.seq) || age <= retention
}

/// Retention alone, for one group (the daemon runs it after each commit): deletes the manifests
/// of its points that fell out of the window. Their data stays until GC. Returns the expired
/// points and how many are kept.
pub async fn expire(target: &Store, group: &GroupSpec) -> Result<(Vec<u64>, usize)> {
    let repo = Repository::open(target).await?;
    let now = SystemTime::now();
    let pins = repo.pins(&group.name).await?;
    let mut expired = Vec::new();
    let mut kept_count = 0;
    for (i, m) in repo.points(&group.name).await?.into_iter().enumerate() {
        if kept(i, &m, &pins, group.retention, now) {
            kept_count += 1;
        } else {
            repo.store()
                .delete(&manifest::object_name(&group.name, m.seq))
                .await?;
            expired.push(m.seq);
        }
    }
    Ok((expired, kept_count))
}

/// Applies retention and collects garbage in the repository of `target`.
pub async fn gc(target: &Store, groups: &[GroupSpec], opts: &GcOptions) -> Result<GcReport> {
    let mut repo = Repository::open(target).await?;
    if let Some(g) = opts.grace {
        repo.set_grace(g);
    }
    if !repo.index().problems.is_empty() {
        let (name, why) = &repo.index().problems[0];
        return Err(Error::damaged(
            name,
            format!("{why}; GC does nothing on a damaged index (run `lifeboat verify --full`)"),
        ));
    }
    let now = SystemTime::now();
    let mut report = GcReport::default();

    // Retention.
    let specs: HashMap<&str, &GroupSpec> = groups.iter().map(|g| (g.name.as_str(), g)).collect();
    let mut manifests = Vec::new();
    for group in repo.groups().await? {
        let pins = repo.pins(&group).await?;
        let points = repo.points(&group).await?;
        let Some(spec) = specs.get(group.as_str()) else {
            report.unknown_groups.push(group.clone());
            manifests.extend(points);
            continue;
        };
        for (i, m) in points.into_iter().enumerate() {
            if kept(i, &m, &pins, spec.retention, now) {
                manifests.push(m);
            } else {
                repo.store()
                    .delete(&manifest::object_name(&group, m.seq))
                    .await?;
                report.expired.push((group.clone(), m.seq));
            }
        }
    }
    report.points_kept = manifests.len();

    // Mark.
    let mut seen = HashSet::new();
    let mut live = HashSet::new();
    for m in &manifests {
        for vm in &m.vms {
            for disk in &vm.disks {
                let root = disk.root_id().ok_or_else(|| {
                    Error::damaged(manifest::object_name(&m.group, m.seq), "bad root")
                })?;
                repo.mark(root, disk.chunks(), &mut seen, &mut live)
                    .await
                    .map_err(|e| e.context("GC stopped before deleting anything"))?;
            }
        }
    }

    // Live bytes per pack, as the index places each blob.
    let listed = repo.store().list("packs").await?;
    report.packs_total = listed.len();
    let mut live_bytes: HashMap<String, u64> = HashMap::new();
    for (id, loc) in &repo.index().blobs {
        if live.contains(id) {
            *live_bytes
                .entry(repo.index().pack_name(loc).to_string())
                .or_default() += loc.entry.stored_len as u64;
        }
    }
    let grace = repo.grace();
    let old_enough =
        |modified: SystemTime| now.duration_since(modified).unwrap_or_default() >= grace;

    // Repack packs that are mostly dead: their live blobs move to new packs.
    let mut repack = Vec::new();
    for o in &listed {
        let name = o.name.rsplit('/').next().unwrap_or_default().to_string();
        let lb = live_bytes.get(&name).copied().unwrap_or(0);
        if lb > 0 && (lb as f64) < opts.repack_below * o.size as f64 && old_enough(o.modified) {
            repack.push(name);
        }
    }
    if !repack.is_empty() {
        report.packs_repacked = repack.len();
        repack_packs(&mut repo, &repack, &live).await?;
        for name in &repack {
            live_bytes.remove(name);
        }
    }

    // Condemn, then delete what has been condemned for the grace period and is still dead.
    let mut records = Vec::new();
    for o in repo.store().list("gc/condemned").await? {
        if let Some(b) = repo.store().get_opt(&o.name).await? {
            let c: CondemnedRecord = serde_json::from_slice(&b)
                .map_err(|e| Error::damaged(&o.name, format!("does not parse: {e}")))?;
            records.push((o.name, c));
        }
    }
    let already: HashSet<&String> = records.iter().flat_map(|(_, c)| &c.packs).collect();
    let mut newly = Vec::new();
    let sizes: HashMap<String, (u64, SystemTime)> = listed
        .iter()
        .map(|o| {
            (
                o.name.rsplit('/').next().unwrap_or_default().to_string(),
                (o.size, o.modified),
            )
        })
        .collect();
    for (name, (_, modified)) in &sizes {
        if !live_bytes.contains_key(name) && !already.contains(name) && old_enough(*modified) {
            newly.push(name.clone());
        }
    }
    let mut deleted: HashSet<String> = HashSet::new();
    let immediate = repo.grace().is_zero();
    for (record, c) in &records {
        let age = Duration::from_millis(unix_ms(now).saturating_sub(c.at_unix_ms));
        if age < repo.grace() {
            continue;
        }
        for name in &c.packs {
            if !live_bytes.contains_key(name) {
                report.bytes_deleted += sizes.get(name).map_or(0, |s| s.0);
                repo.store().delete(&pack::object_name(name)).await?;
                deleted.insert(name.clone());
                report.packs_deleted += 1;
            }
        }
        repo.store().delete(record).await?;
    }
    newly.sort();
    if immediate {
        for name in &newly {
            report.bytes_deleted += sizes.get(name).map_or(0, |s| s.0);
            repo.store().delete(&pack::object_name(name)).await?;
            deleted.insert(name.clone());
            report.packs_deleted += 1;
        }
    } else if !newly.is_empty() {
        report.packs_condemned = newly.len();
        let record = CondemnedRecord {
            at_unix_ms: unix_ms(now),
            packs: newly.clone(),
        };
        repo.store()
            .put_new(
                &format!("gc/condemned/{:013}", unix_ms(now)),
                Bytes::from(serde_json::to_vec(&record).map_err(|e| {
                    Error::failed(format!("cannot encode a condemned record: {e}"))
                })?),
            )
            .await?;
    }

    // One index for what is left; the files it replaces go after it is written.
    let condemned_now = repo.condemned().await?;
    let mut by_pack: HashMap<String, Vec<Entry>> = HashMap::new();
    for loc in repo.index().blobs.values() {
        let pack = repo.index().pack_name(loc);
        if !deleted.contains(pack) && !condemned_now.contains(pack) && sizes.contains_key(pack) {
            by_pack.entry(pack.to_string()).or_default().push(loc.entry);
        }
    }
    let old_files = repo.index().files.clone();
    if old_files.len() > 1 || !deleted.is_empty() || report.packs_repacked > 0 || !newly.is_empty()
    {
        let mut packs: Vec<(String, Vec<Entry>)> = by_pack.into_iter().collect();
        packs.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, entries) in &mut packs {
            entries.sort_by_key(|e| e.offset);
        }
        let (name, bytes) = index::encode(&repo::pack_entries(packs));
        let new_file = format!("index/{name}");
        repo.store().put_new(&new_file, Bytes::from(bytes)).await?;
        for f in old_files.iter().filter(|f| **f != new_file) {
            repo.store().delete(f).await?;
            report.index_files_merged += 1;
        }
    }
    Ok(report)
}

/// Copies the live blobs of `packs` into new packs and indexes them; the old packs are then
/// dead. Each blob is checked on the way: a damaged one stops GC.
async fn repack_packs(repo: &mut Repository, packs: &[String], live: &HashSet<Id>) -> Result<()> {
    let targets: HashSet<&String> = packs.iter().collect();
    let mut moving: Vec<(Id, Location)> = repo
        .index()
        .blobs
        .iter()
        .filter(|(id, loc)| {
            live.contains(id) && targets.contains(&repo.index().pack_name(loc).to_string())
        })
        .map(|(id, loc)| (*id, *loc))
        .collect();
    moving.sort_by_key(|(_, loc)| (loc.pack, loc.entry.offset));
    let mut chunks = PackBuilder::new(PackClass::Delta);
    let mut pages = PackBuilder::new(PackClass::Meta);
    let mut written: Vec<(String, Vec<Entry>)> = Vec::new();
    for (id, loc) in moving {
        let name = repo.index().pack_name(&loc).to_string();
        let e = loc.entry;
        let stored = repo
            .store()
            .get_range(
                &pack::object_name(&name),
                e.offset..e.offset + e.stored_len as u64,
            )
            .await?;
        crate::format::decode_blob(repo.keys(), id, e.codec, e.raw_len, &stored)
            .map_err(|why| Error::damaged(pack::object_name(&name), why))?;
        let builder = if e.kind == BlobKind::Page {
            &mut pages
        } else {
            &mut chunks
        };
        builder.add(id, e.kind, e.codec, e.raw_len, &stored);
        if builder.is_full() {
            let class = if e.kind == BlobKind::Page {
                PackClass::Meta
            } else {
                PackClass::Delta
            };
            let full = std::mem::replace(builder, PackBuilder::new(class));
            written.push(write_pack(repo, full).await?);
        }
    }
    for b in [chunks, pages] {
        if !b.is_empty() {
            written.push(write_pack(repo, b).await?);
        }
    }
    if written.is_empty() {
        return Ok(());
    }
    let (name, bytes) = index::encode(&repo::pack_entries(written.clone()));
    repo.store()
        .put_new(&format!("index/{name}"), Bytes::from(bytes))
        .await?;
    // The new copies take over: later lookups (and the merged index) point at them.
    let index = repo.index_mut();
    for (pack, entries) in &written {
        index.add(pack, &[]);
        let n = index.packs.iter().position(|p| p == pack).unwrap_or(0) as u32;
        for e in entries {
            index.blobs.insert(e.id, Location { pack: n, entry: *e });
        }
    }
    Ok(())
}

async fn write_pack(repo: &Repository, b: PackBuilder) -> Result<(String, Vec<Entry>)> {
    let (name, bytes, entries) = b.finish();
    repo.store()
        .put_new(&pack::object_name(&name), Bytes::from(bytes))
        .await?;
    Ok((name, entries))
}
