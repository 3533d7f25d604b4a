//! The repository at the target site: opening it, the in-memory index, reading blobs, trees and
//! points, and pins. Writing new points is `cycle`'s job; removing them is `gc`'s.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::format::index::{self, PackEntries};
use crate::format::manifest::{self, Manifest};
use crate::format::pack::{self, Entry};
use crate::format::page::{self, FANOUT};
use crate::format::{self, FORMAT_VERSION, Id, Keys, hex, unhex};
use crate::store::{Put, Store};

/// The repository's `config` object: written once, with put-if-absent, when it is created.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Config {
    format: u16,
    /// Key for chunk ids and manifest MACs. It makes ids specific to this repository; it is not a
    /// secret from anyone who can read the repository.
    chunk_key: String,
    created_at: String,
    /// How long GC leaves an unreferenced pack alone, so a cycle in flight can still commit it.
    gc_grace_secs: u64,
}

/// Where a blob lives.
#[derive(Clone, Copy, Debug)]
pub struct Location {
    pub pack: u32,
    pub entry: Entry,
}

/// Every index file, merged: blob id → location.
#[derive(Clone, Debug, Default)]
pub struct Index {
    pub packs: Vec<String>,
    pack_numbers: HashMap<String, u32>,
    pub blobs: HashMap<Id, Location>,
    /// The index files this was loaded from.
    pub files: Vec<String>,
    /// Index files that could not be read, with why.
    pub problems: Vec<(String, String)>,
}

impl Index {
    pub fn add(&mut self, pack: &str, entries: &[Entry]) {
        let n = match self.pack_numbers.get(pack) {
            Some(n) => *n,
            None => {
                let n = self.packs.len() as u32;
                self.packs.push(pack.to_string());
                self.pack_numbers.insert(pack.to_string(), n);
                n
            }
        };
        for e in entries {
            self.blobs
                .entry(e.id)
                .or_insert(Location { pack: n, entry: *e });
        }
    }

    pub fn contains(&self, id: &Id) -> bool {
        id.is_zero() || self.blobs.contains_key(id)
    }

    pub fn pack_name(&self, loc: &Location) -> &str {
        &self.packs[loc.pack as usize]
    }
}

/// An open repository.
#[derive(Debug)]
pub struct Repository {
    store: Store,
    keys: Keys,
    grace: Duration,
    index: std::sync::Arc<Index>,
}

/// The merged index of each repository this process opened, by store identity (see
/// `Repository::reload_index`).
static INDEX_CACHE: std::sync::LazyLock<std::sync::Mutex<HashMap<String, std::sync::Arc<Index>>>> =
    std::sync::LazyLock::new(Default::default);

/// Serializes `reload_index` per repository (see there).
type IndexLock = std::sync::Arc<tokio::sync::Mutex<()>>;
static INDEX_LOCKS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, IndexLock>>> =
    std::sync::LazyLock::new(Default::default);

/// The name of the repository inside a site's store.
pub const PREFIX: &str = "repo";

impl Repository {
    /// Opens the repository in `site` (a site's store), creating it if there is none.
    pub async fn open_or_create(site: &Store) -> Result<Self> {
        let store = site.scoped(PREFIX);
        if store.get_opt("config").await?.is_none() {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key)
                .map_err(|e| Error::failed(format!("no randomness for a repository key: {e}")))?;
            let config = Config {
                // Version 2: every object sealed with the store's key.
                format: if store.sealed() { 2 } else { FORMAT_VERSION },
                chunk_key: hex(&key),
                created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                gc_grace_secs: 3600,
            };
            let bytes = serde_json::to_vec_pretty(&config)
                .map_err(|e| Error::failed(format!("cannot encode the repository config: {e}")))?;
            // Two creators race: put-if-absent picks one config and both read it back.
            store.put_new("config", Bytes::from(bytes)).await?;
        }
        Self::open_scoped(store).await
    }

    /// Opens the repository in `site`, `None` when nothing has been replicated there yet (any
    /// other failure, such as a key it needs, is an error).
    pub async fn open_if_any(site: &Store) -> Result<Option<Self>> {
        let store = site.scoped(PREFIX);
        if store.get_opt("config").await?.is_none() {
            return Ok(None);
        }
        Self::open_scoped(store).await.map(Some)
    }

    /// Opens the repository in `site`; an error if there is none.
    pub async fn open(site: &Store) -> Result<Self> {
        let store = site.scoped(PREFIX);
        if store.get_opt("config").await?.is_none() {
            return Err(Error::failed(format!(
                "no repository in `{}` (nothing has been replicated there yet)",
                site.location()
            )));
        }
        Self::open_scoped(store).await
    }

    async fn open_scoped(store: Store) -> Result<Self> {
        let bytes = store.get("config").await?;
        let config: Config = serde_json::from_slice(&bytes)
            .map_err(|e| Error::damaged(format!("{}/config", store.location()), e))?;
        // Version 2 is version 1 sealed; the store opened the config, so it has the key.
        if config.format != FORMAT_VERSION && config.format != 2 {
            return Err(Error::failed(format!(
                "repository format {} is not supported by this version (it reads 1 and 2)",
                config.format
            )));
        }
        let key: [u8; 32] = unhex(&config.chunk_key)
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| Error::damaged("config", "chunk_key is not 32 hex bytes"))?;
        let mut repo = Self {
            store,
            keys: Keys::new(key),
            grace: Duration::from_secs(config.gc_grace_secs),
            index: Default::default(),
        };
        repo.reload_index().await?;
        Ok(repo)
    }

    /// Reads every index file again (after another process committed, or after GC).
    pub async fn reload_index(&mut self) -> Result<()> {
        // One reader per repository at a time: a daemon starting a hundred groups at once would
        // otherwise read every index file a hundred times over, all in memory together.
        let lock = INDEX_LOCKS
            .lock()
            .map(|mut l| {
                l.entry(self.store.identity().to_string())
                    .or_default()
                    .clone()
            })
            .unwrap_or_default();
        let _reading = lock.lock().await;
        let listed = self.store.list("index").await?;
        let names: HashSet<&str> = listed.iter().map(|o| o.name.as_str()).collect();
        // Index files are immutable (put-if-absent): what this process read before is reused,
        // and only new files are read — a daemon's cycles would otherwise read every index
        // file of the repository each time. When any file it read is gone (GC merged or
        // deleted it), or one could not be read, it starts over.
        let cached = INDEX_CACHE
            .lock()
            .ok()
            .and_then(|c| c.get(self.store.identity()).cloned());
        let mut index = match cached {
            Some(c)
                if c.problems.is_empty() && c.files.iter().all(|f| names.contains(f.as_str())) =>
            {
                (*c).clone()
            }
            _ => Index::default(),
        };
        let known: HashSet<String> = index.files.iter().cloned().collect();
        for obj in listed.iter().filter(|o| !known.contains(&o.name)) {
            let name = obj.name.rsplit('/').next().unwrap_or_default().to_string();
            let bytes = match self.store.get(&obj.name).await {
                Ok(b) => b,
                Err(e) => {
                    index.problems.push((obj.name.clone(), e.to_string()));
                    continue;
                }
            };
            match index::decode(&name, &bytes) {
                Ok(packs) => {
                    for p in packs {
                        index.add(&p.pack, &p.entries);
                    }
                    index.files.push(obj.name.clone());
                }
                Err(e) => index.problems.push((obj.name.clone(), e)),
            }
        }
        let index = std::sync::Arc::new(index);
        if let Ok(mut c) = INDEX_CACHE.lock() {
            c.insert(self.store.identity().to_string(), index.clone());
        }
        self.index = index;
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The index, shared (the capture reads it on a blocking thread).
    pub fn index_arc(&self) -> std::sync::Arc<Index> {
        self.index.clone()
    }

    /// Writes the index file of `packs` (already in the repository) and adds them to the index
    /// this process holds.
    pub(crate) async fn add_index(&mut self, packs: Vec<(String, Vec<Entry>)>) -> Result<()> {
        let (name, bytes) = index::encode(&pack_entries(packs.clone()));
        self.store
            .put_new(&format!("index/{name}"), Bytes::from(bytes))
            .await?;
        let index = self.index_mut();
        for (pack, entries) in &packs {
            index.add(pack, entries);
        }
        Ok(())
    }

    pub fn index_mut(&mut self) -> &mut Index {
        std::sync::Arc::make_mut(&mut self.index)
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Sets how long GC spares unreferenced packs (stored in the repository's config only at
    /// creation; this overrides it for this process, e.g. `lifeboat gc --grace 0s`).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Reads one blob and checks it: the bytes returned are the ones its id names.
    pub async fn read_blob(&self, id: Id) -> Result<Vec<u8>> {
        let loc = *self
            .index
            .blobs
            .get(&id)
            .ok_or_else(|| Error::damaged(format!("blob {id}"), "in no index"))?;
        let pack = self.index.pack_name(&loc).to_string();
        let e = loc.entry;
        let object = pack::object_name(&pack);
        let stored = self
            .store
            .get_range(&object, e.offset..e.offset + e.stored_len as u64)
            .await?;
        format::decode_blob(&self.keys, id, e.codec, e.raw_len, &stored)
            .map_err(|why| Error::damaged(object, why))
    }

    /// Group names that have points, sorted.
    pub async fn groups(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .store
            .list("points")
            .await?
            .into_iter()
            .filter_map(|o| o.name.split('/').nth(1).map(str::to_string))
            .collect();
        out.dedup();
        Ok(out)
    }

    /// The sequence numbers of a group's points, newest first.
    pub async fn point_seqs(&self, group: &str) -> Result<Vec<u64>> {
        Ok(self
            .store
            .list(&format!("points/{group}"))
            .await?
            .iter()
            .filter_map(|o| manifest::seq_of(&o.name))
            .collect())
    }

    /// Reads and checks one point's manifest.
    pub async fn point(&self, group: &str, seq: u64) -> Result<Manifest> {
        let name = manifest::object_name(group, seq);
        let bytes = self
            .store
            .get_opt(&name)
            .await?
            .ok_or_else(|| Error::failed(format!("group `{group}` has no point {seq}")))?;
        let m = Manifest::decode(&self.keys, &bytes).map_err(|why| Error::damaged(&name, why))?;
        if m.group != group || m.seq != seq {
            return Err(Error::damaged(&name, "manifest names another point"));
        }
        Ok(m)
    }

    /// The newest intact point of a group, if any. A damaged manifest costs only its own point:
    /// it is skipped here (and named by `points_and_damaged` and `verify`), so restores and
    /// cycles go on from the last intact point. A new point still takes a number after every
    /// existing one (`newest_seq`), so nothing is overwritten.
    pub async fn latest(&self, group: &str) -> Result<Option<Manifest>> {
        for seq in self.point_seqs(group).await? {
            match self.point(group, seq).await {
                Ok(m) => return Ok(Some(m)),
                Err(e) if e.kind() == ErrorKind::Damaged => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// The highest point number of a group, damaged or not: the next point is one more.
    pub async fn newest_seq(&self, group: &str) -> Result<Option<u64>> {
        Ok(self.point_seqs(group).await?.first().copied())
    }

    /// Every point of a group, newest first; any damaged manifest is an error (GC and
    /// retention must see every point before they delete anything).
    pub async fn points(&self, group: &str) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for seq in self.point_seqs(group).await? {
            out.push(self.point(group, seq).await?);
        }
        Ok(out)
    }

    /// Every point of a group, newest first: the intact ones, and the damaged ones with why.
    pub async fn points_and_damaged(
        &self,
        group: &str,
    ) -> Result<(Vec<Manifest>, Vec<DamagedPoint>)> {
        let mut intact = Vec::new();
        let mut damaged = Vec::new();
        for seq in self.point_seqs(group).await? {
            match self.point(group, seq).await {
                Ok(m) => intact.push(m),
                Err(e) if e.kind() == ErrorKind::Damaged => damaged.push(DamagedPoint {
                    seq,
                    error: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        Ok((intact, damaged))
    }

    /// Packs that GC has condemned and not yet deleted: a cycle must not reuse their data.
    /// A record that does not parse is damage, not an empty list (a cycle that missed a
    /// condemned pack would build on data GC is about to delete).
    pub async fn condemned(&self) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        for o in self.store.list("gc/condemned").await? {
            if let Some(b) = self.store.get_opt(&o.name).await? {
                let record: CondemnedRecord = serde_json::from_slice(&b)
                    .map_err(|e| Error::damaged(&o.name, format!("does not parse: {e}")))?;
                out.extend(record.packs);
            }
        }
        Ok(out)
    }

    /// Pins a point so retention keeps it (a test failover, a failover in progress).
    pub async fn pin(&self, group: &str, seq: u64, reason: &str) -> Result<()> {
        self.point(group, seq).await?;
        let name = format!("pins/{group}/{seq:020}/{reason}");
        if self.store.put_new(&name, Bytes::from_static(b"")).await? == Put::Exists {
            return Ok(());
        }
        Ok(())
    }

    pub async fn unpin(&self, group: &str, seq: u64, reason: &str) -> Result<()> {
        self.store
            .delete(&format!("pins/{group}/{seq:020}/{reason}"))
            .await
    }

    /// Pinned points of a group: seq → reasons.
    pub async fn pins(&self, group: &str) -> Result<HashMap<u64, Vec<String>>> {
        let mut out: HashMap<u64, Vec<String>> = HashMap::new();
        for o in self.store.list(&format!("pins/{group}")).await? {
            let mut parts = o.name.split('/').skip(2);
            if let (Some(seq), Some(reason)) = (parts.next(), parts.next())
                && let Ok(seq) = seq.parse::<u64>()
            {
                out.entry(seq).or_default().push(reason.to_string());
            }
        }
        Ok(out)
    }

    /// Reads page `i` of a tree level holding `count` ids, checking its level and length.
    pub async fn read_page(&self, id: Id, level: usize, count: u64, i: usize) -> Result<Vec<Id>> {
        let bytes = self.read_blob(id).await?;
        page::decode(&bytes, level as u8, page_len(count, i))
            .map_err(|why| Error::damaged(format!("page {id}"), why))
    }

    /// The flat chunk map of a disk: one id per chunk, in offset order.
    pub async fn chunk_map(&self, root: Id, chunks: u64) -> Result<Vec<Id>> {
        let levels = page::levels(chunks);
        let Some(top) = levels.len().checked_sub(1) else {
            return Ok(Vec::new());
        };
        // Walk down from the root: at each level, the ids of the level below.
        let mut ids = vec![root];
        for level in (0..=top).rev() {
            let count = levels[level];
            let mut next = Vec::with_capacity(count as usize);
            for (i, id) in ids.iter().enumerate() {
                if id.is_zero() {
                    next.extend(std::iter::repeat_n(Id::ZERO, page_len(count, i)));
                } else {
                    next.extend(self.read_page(*id, level, count, i).await?);
                }
            }
            ids = next;
        }
        Ok(ids)
    }

    /// Adds every page id and chunk id reachable from `root` to `live`, reading each page once
    /// across calls (`seen` memoizes pages shared between points).
    pub async fn mark(
        &self,
        root: Id,
        chunks: u64,
        seen: &mut HashSet<Id>,
        live: &mut HashSet<Id>,
    ) -> Result<()> {
        let levels = page::levels(chunks);
        let Some(top) = levels.len().checked_sub(1) else {
            return Ok(());
        };
        let mut ids = vec![(root, 0usize)];
        for level in (0..=top).rev() {
            let count = levels[level];
            let mut next = Vec::new();
            for (id, i) in ids {
                if id.is_zero() || !seen.insert(id) {
                    continue;
                }
                live.insert(id);
                let page = self.read_page(id, level, count, i).await?;
                let base = i * FANOUT;
                if level == 0 {
                    live.extend(page.into_iter().filter(|c| !c.is_zero()));
                } else {
                    next.extend(page.into_iter().enumerate().map(|(j, c)| (c, base + j)));
                }
            }
            ids = next;
        }
        Ok(())
    }
}

/// How many ids page `i` of a level with `count` ids holds.
fn page_len(count: u64, i: usize) -> usize {
    let start = (i * FANOUT) as u64;
    (count.saturating_sub(start)).min(FANOUT as u64) as usize
}

/// Builds the pages of a chunk map: returns the root and every non-zero page (id, plaintext),
/// leaves first. Unchanged pages get the ids they had, so the caller stores only the new ones.
/// What GC writes under `gc/condemned/`: packs it found dead, and when.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct CondemnedRecord {
    pub at_unix_ms: u64,
    pub packs: Vec<String>,
}

/// A point whose manifest is damaged: listed, never used.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DamagedPoint {
    pub seq: u64,
    pub error: String,
}

pub fn build_tree(keys: &Keys, map: &[Id]) -> (Id, Vec<(Id, Vec<u8>)>) {
    let mut pages = Vec::new();
    let mut ids: Vec<Id> = map.to_vec();
    let levels = page::levels(map.len() as u64);
    for level in 0..levels.len() {
        let mut next = Vec::with_capacity(ids.len().div_ceil(FANOUT));
        for group in ids.chunks(FANOUT) {
            if group.iter().all(Id::is_zero) {
                next.push(Id::ZERO);
                continue;
            }
            let bytes = page::encode(level as u8, group);
            let id = keys.id(&bytes);
            pages.push((id, bytes));
            next.push(id);
        }
        ids = next;
    }
    (ids.first().copied().unwrap_or(Id::ZERO), pages)
}

/// A listing of `PackEntries` for an index file, from packs written in one go.
pub fn pack_entries(packs: Vec<(String, Vec<Entry>)>) -> Vec<PackEntries> {
    packs
        .into_iter()
        .map(|(pack, entries)| PackEntries { pack, entries })
        .collect()
}
