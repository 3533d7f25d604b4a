//! Restore a point's disks to raw images: walk each chunk map in offset order, skip zero chunks
//! (the output stays sparse), fetch runs of neighbouring blobs with several reads in flight,
//! check every blob against its id, write in order. The image is written to `NAME.img.partial`
//! and renamed only when every byte checked out: restore never leaves a wrong image behind.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use rayon::prelude::*;
use serde::Serialize;

use crate::cycle::Progress;
use crate::error::{Error, Result};
use crate::format::manifest::Manifest;
use crate::format::pack;
use crate::format::{self, Id};
use crate::repo::{Location, Repository};

/// Reads coalesced up to this size.
const RUN_BYTES: u64 = 8 << 20;
/// Reads in flight.
const IN_FLIGHT: usize = 4;

/// One restored disk.
#[derive(Clone, Debug, Serialize)]
pub struct RestoredDisk {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// Bytes of non-zero chunks written (the rest is holes).
    pub written: u64,
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub group: String,
    pub seq: u64,
    pub vm: String,
    pub disks: Vec<RestoredDisk>,
    pub seconds: f64,
}

/// A run of chunks stored back to back in one pack: one read.
struct Run {
    pack: String,
    start: u64,
    end: u64,
    /// (chunk index, id, location) in order.
    chunks: Vec<(u64, Id, Location)>,
}

/// Restores every disk of `vm` in `point` into `out` as `<disk>.img`.
pub async fn restore(
    repo: &Repository,
    point: &Manifest,
    vm: &str,
    out: &Path,
    progress: Option<Arc<dyn Progress>>,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let spec = point.vms.iter().find(|v| v.name == vm).ok_or_else(|| {
        Error::failed(format!(
            "point {}/{} does not hold VM `{vm}`",
            point.group, point.seq
        ))
    })?;
    std::fs::create_dir_all(out)
        .map_err(|e| Error::io(format!("cannot create {}", out.display()), e))?;
    if let Some(p) = &progress {
        p.begin(vm, spec.disks.iter().map(|d| d.size).sum());
    }
    let mut disks = Vec::new();
    for disk in &spec.disks {
        let path = out.join(format!("{}.img", disk.name));
        let partial = out.join(format!("{}.img.partial", disk.name));
        let root = disk.root_id().ok_or_else(|| {
            Error::damaged(
                format!("point {}/{}", point.group, point.seq),
                "bad root id",
            )
        })?;
        let result = async {
            let map = repo.chunk_map(root, disk.chunks()).await?;
            write_image(
                repo,
                &map,
                disk.size,
                disk.chunk_size,
                &partial,
                progress.as_deref(),
            )
            .await
        }
        .await;
        match result {
            Ok(written) => {
                std::fs::rename(&partial, &path)
                    .map_err(|e| Error::io(format!("cannot rename {}", partial.display()), e))?;
                disks.push(RestoredDisk {
                    name: disk.name.clone(),
                    path,
                    size: disk.size,
                    written,
                });
            }
            Err(e) => {
                if let Err(rm) = std::fs::remove_file(&partial)
                    && rm.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %partial.display(), error = %rm, "cannot remove a refused restore's partial image");
                }
                return Err(e.context(format!(
                    "restore of `{vm}/{}` from point {}/{} refused",
                    disk.name, point.group, point.seq
                )));
            }
        }
    }
    if let Some(p) = &progress {
        p.end();
    }
    Ok(RestoreReport {
        group: point.group.clone(),
        seq: point.seq,
        vm: vm.to_string(),
        disks,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn write_image(
    repo: &Repository,
    map: &[Id],
    size: u64,
    chunk_size: u32,
    path: &Path,
    progress: Option<&dyn Progress>,
) -> Result<u64> {
    let file = File::create(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    file.set_len(size)
        .map_err(|e| Error::io(format!("cannot size {}", path.display()), e))?;
    let file = Arc::new(file);
    let runs = plan_runs(repo, map)?;
    let cs = chunk_size as u64;
    let keys = repo.keys().clone();
    let mut written = 0u64;
    let mut reads = futures::stream::iter(runs)
        .map(|run| async move {
            let object = pack::object_name(&run.pack);
            let bytes = repo.store().get_range(&object, run.start..run.end).await?;
            Ok::<_, Error>((run, bytes))
        })
        .buffered(IN_FLIGHT);
    let mut last_progress = 0u64;
    while let Some((run, bytes)) = reads.try_next().await? {
        let keys = keys.clone();
        let file = file.clone();
        let n = tokio::task::spawn_blocking(move || -> Result<u64> {
            let object = pack::object_name(&run.pack);
            let plains: Vec<(u64, Vec<u8>)> = run
                .chunks
                .par_iter()
                .map(|(index, id, loc)| {
                    let e = loc.entry;
                    let at = (e.offset - run.start) as usize;
                    let stored = &bytes[at..at + e.stored_len as usize];
                    format::decode_blob(&keys, *id, e.codec, e.raw_len, stored)
                        .map(|p| (*index, p))
                        .map_err(|why| Error::damaged(&object, why))
                })
                .collect::<Result<_>>()?;
            let mut n = 0;
            for (index, plain) in plains {
                let expect = (size - index * cs).min(cs);
                if plain.len() as u64 != expect {
                    return Err(Error::damaged(
                        &object,
                        format!("chunk {index} has the wrong length"),
                    ));
                }
                file.write_all_at(&plain, index * cs)
                    .map_err(|e| Error::io("cannot write the restored image", e))?;
                n += plain.len() as u64;
            }
            Ok(n)
        })
        .await
        .map_err(|e| Error::failed(format!("restore stopped: {e}")))??;
        written += n;
        if let Some(p) = progress {
            let at = run_end_offset(n, written);
            p.advance(at.saturating_sub(last_progress));
            last_progress = at;
        }
    }
    // An fsync of a large image takes a while: off the async threads.
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(|e| Error::failed(format!("sync of {shown} stopped: {e}")))?
        .map_err(|e| Error::io(format!("cannot sync {shown}"), e))?;
    Ok(written)
}

fn run_end_offset(_n: u64, written: u64) -> u64 {
    written
}

/// Groups the non-zero chunks into runs: same pack, contiguous bytes, at most `RUN_BYTES`.
fn plan_runs(repo: &Repository, map: &[Id]) -> Result<Vec<Run>> {
    let index = repo.index();
    let mut runs: Vec<Run> = Vec::new();
    for (i, id) in map.iter().enumerate() {
        if id.is_zero() {
            continue;
        }
        let loc = *index
            .blobs
            .get(id)
            .ok_or_else(|| Error::damaged(format!("chunk {id}"), "in no index"))?;
        let pack = index.pack_name(&loc);
        let e = loc.entry;
        let end = e.offset + e.stored_len as u64;
        if let Some(run) = runs.last_mut()
            && run.pack == pack
            && run.end == e.offset
            && end - run.start <= RUN_BYTES
        {
            run.end = end;
            run.chunks.push((i as u64, *id, loc));
            continue;
        }
        runs.push(Run {
            pack: pack.to_string(),
            start: e.offset,
            end,
            chunks: vec![(i as u64, *id, loc)],
        });
    }
    Ok(runs)
}
