//! A local seed: the chunks of disk images a site already holds, stored in that site's own
//! repository without committing a point. Reprotect uses it at the site that receives the
//! reverse direction (its old disks, stopped since the failover): the first reverse cycle then
//! finds every chunk those disks share with the running copies already stored, and ships only
//! the ones that diverged. Content addressing needs no protocol for this: a chunk is known or not.
//!
//! Nothing is committed: the packs and their index file are what a killed cycle leaves behind,
//! unreferenced until a point names them, and GC removes whatever no point ever does.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::capture::{self, PackSink, SealedPack};
use crate::error::{Error, Result};
use crate::format::Id;
use crate::format::pack::{self, Entry, PackClass};
use crate::repo::Repository;
use crate::store::Store;

/// What a seed did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeedReport {
    /// Images read, and those that were not there.
    pub read: Vec<String>,
    pub missing: Vec<String>,
    /// Logical bytes of the images read.
    pub disk_bytes: u64,
    /// Bytes of chunks stored by this seed (uncompressed): what the repository did not hold.
    pub new_bytes: u64,
    /// Bytes of packs written to the repository (local to the site: nothing crossed a link).
    pub stored_bytes: u64,
    pub seconds: f64,
}

/// Stores the chunks of `images` (each with its chunk size) in the repository of `site` (a
/// site's store, created if it has none). Images that do not exist are listed as missing.
pub async fn seed(site: &Store, images: &[(PathBuf, u32)]) -> Result<SeedReport> {
    let started = Instant::now();
    let mut repo = Repository::open_or_create(site).await?;
    let mut report = SeedReport::default();
    let present: Vec<(PathBuf, u32)> = images
        .iter()
        .filter(|(p, _)| {
            let there = p.is_file();
            if !there {
                report.missing.push(p.display().to_string());
            }
            there
        })
        .cloned()
        .collect();
    if present.is_empty() {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let (tx, mut rx) = mpsc::channel::<SealedPack>(2);
    let target = repo.store().clone();
    let uploader = tokio::spawn(async move {
        let mut done: Vec<(String, Vec<Entry>, u64)> = Vec::new();
        while let Some(p) = rx.recv().await {
            let len = p.bytes.len() as u64;
            target
                .put_new(&pack::object_name(&p.name), Bytes::from(p.bytes))
                .await?;
            done.push((p.name, p.entries, len));
        }
        Ok::<_, Error>(done)
    });
    let keys = repo.keys().clone();
    let index = repo.index_arc();
    let condemned = repo.condemned().await?;
    let scan = tokio::task::spawn_blocking(move || -> Result<Vec<(String, u64, u64)>> {
        let known = |id: &Id| {
            index
                .blobs
                .get(id)
                .is_some_and(|loc| !condemned.contains(index.pack_name(loc)))
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut sink = PackSink::new(PackClass::Seed, tx);
        for (path, chunk_size) in present {
            // A qcow2 image holds the guest's disk in its own layout: scanned as the raw disk
            // it is (the chunks a cycle stores), through a sparse conversion beside it.
            let view = capture::raw_view(&path)?;
            let reader = capture::FileReader::open(&view.path)?;
            let scanned = capture::scan(
                &reader,
                None,
                chunk_size,
                &keys,
                None,
                &known,
                &mut seen,
                &mut sink,
                &|_| {},
            )
            .map_err(|e| e.context(format!("seed from {}", path.display())))?;
            out.push((path.display().to_string(), scanned.size, scanned.new_bytes));
        }
        sink.flush()?;
        Ok(out)
    });
    let scanned = scan
        .await
        .map_err(|e| Error::failed(format!("seed stopped: {e}")))?;
    let shipped = uploader
        .await
        .map_err(|e| Error::failed(format!("seed upload stopped: {e}")))??;
    let scanned = scanned?;
    for (path, size, new) in scanned {
        report.read.push(path);
        report.disk_bytes += size;
        report.new_bytes += new;
    }
    report.stored_bytes = shipped.iter().map(|(_, _, len)| *len).sum();
    if !shipped.is_empty() {
        let packs: Vec<(String, Vec<Entry>)> =
            shipped.into_iter().map(|(n, e, _)| (n, e)).collect();
        repo.add_index(packs).await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
