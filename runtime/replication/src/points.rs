//! Choosing a point, and the RPO of a group.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::clock::unix_ms;
use crate::error::{Error, Result};
use crate::format::manifest::{Manifest, PointKind};
use crate::repo::Repository;

/// Resolves a point choice for `group`: `latest` (the newest intact point: the lowest RPO),
/// `latest-processed` (the newest point whose every page and chunk is present at the target —
/// [`complete`] — so its restore cannot stop half-way on a missing object: the lowest RTO),
/// `latest-app-consistent`, a sequence number, or `GROUP/SEQ`.
pub async fn select(repo: &Repository, group: &str, choice: &str) -> Result<Manifest> {
    let choice = choice.trim();
    let seq_text = match choice.split_once('/') {
        Some((g, s)) if g == group => s,
        Some((g, _)) => {
            return Err(Error::failed(format!(
                "point `{choice}` belongs to group `{g}`, not `{group}`"
            )));
        }
        None => choice,
    };
    match seq_text {
        "latest-processed" => latest_processed(repo, group).await,
        "latest" => match repo.latest(group).await? {
            Some(m) => Ok(m),
            // Points exist, none intact: that is damage, not an empty group.
            None => match repo.newest_seq(group).await? {
                Some(seq) => Err(Error::damaged(
                    crate::format::manifest::object_name(group, seq),
                    format!("group `{group}` has no intact point (see `lifeboat verify`)"),
                )),
                None => Err(Error::failed(format!(
                    "group `{group}` has no recovery points yet"
                ))),
            },
        },
        "latest-app-consistent" => repo
            .points_and_damaged(group)
            .await?
            .0
            .into_iter()
            .find(|m| m.kind == PointKind::App)
            .ok_or_else(|| Error::failed(format!("group `{group}` has no app-consistent point"))),
        s => {
            let seq: u64 = s.parse().map_err(|_| {
                Error::failed(format!(
                    "`{choice}` is not a point: use a number from `lifeboat points list`, `latest` or `latest-app-consistent`"
                ))
            })?;
            repo.point(group, seq).await
        }
    }
}

/// The newest point of `group` that is [`complete`] at the target; newer points that are not
/// are skipped with a warning naming what they miss.
async fn latest_processed(repo: &Repository, group: &str) -> Result<Manifest> {
    let (points, _) = repo.points_and_damaged(group).await?;
    if points.is_empty() {
        return Box::pin(select(repo, group, "latest")).await;
    }
    let present = present_packs(repo).await?;
    let mut skipped = Vec::new();
    for m in points {
        match complete(repo, &m, &present).await {
            Ok(()) => {
                for (seq, why) in &skipped {
                    tracing::warn!(group, point = seq, why = %why, "latest-processed skips a point that is not complete at the target");
                }
                return Ok(m);
            }
            Err(why) => skipped.push((m.seq, why)),
        }
    }
    let said: Vec<String> = skipped
        .iter()
        .map(|(seq, why)| format!("point {seq}: {why}"))
        .collect();
    Err(Error::damaged(
        format!("points/{group}"),
        format!(
            "no point of group `{group}` is complete at the target ({}); see `lifeboat verify`",
            said.join("; ")
        ),
    ))
}

/// The packs the target's store holds, by name.
pub async fn present_packs(repo: &Repository) -> Result<std::collections::HashSet<String>> {
    Ok(repo
        .store()
        .list("packs")
        .await?
        .into_iter()
        .filter_map(|o| o.name.rsplit('/').next().map(str::to_string))
        .collect())
}

/// Whether everything point `m` needs is at the target: each disk's chunk map reads (its pages'
/// packs are there), and every chunk is in the index, in a pack the store lists (`present`).
/// What is missing, if anything. Reads the pages, not the chunks: a check of presence that
/// costs a listing and the maps, not a restore (`verify --full` re-hashes the data).
pub async fn complete(
    repo: &Repository,
    m: &Manifest,
    present: &std::collections::HashSet<String>,
) -> std::result::Result<(), String> {
    for vm in &m.vms {
        for disk in &vm.disks {
            let what = format!("{}/{}", vm.name, disk.name);
            let root = disk
                .root_id()
                .ok_or_else(|| format!("{what}: bad root id"))?;
            let map = repo
                .chunk_map(root, disk.chunks())
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            let index = repo.index();
            for id in map.iter().filter(|id| !id.is_zero()) {
                let Some(loc) = index.blobs.get(id) else {
                    return Err(format!("{what}: chunk {id} is in no index file"));
                };
                let pack = index.pack_name(loc);
                if !present.contains(pack) {
                    return Err(format!("{what}: pack {pack} is missing"));
                }
            }
        }
    }
    Ok(())
}

/// A group's recovery point objective as it stands.
#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Rpo {
    /// Now minus the capture instant of the newest point; `None` without points.
    pub seconds: Option<f64>,
    pub threshold_seconds: f64,
    /// Within the threshold.
    pub ok: bool,
}

pub fn rpo(latest: Option<&Manifest>, threshold: Duration, now: SystemTime) -> Rpo {
    let seconds = latest.map(|m| unix_ms(now).saturating_sub(m.captured_unix_ms) as f64 / 1000.0);
    Rpo {
        seconds,
        threshold_seconds: threshold.as_secs_f64(),
        ok: seconds.is_some_and(|s| s <= threshold.as_secs_f64()),
    }
}

/// Deletes every point of `group` from the repository in `site` (`disable --purge`): its
/// manifests, newest first, so an interruption leaves the older points listed and intact. A
/// pinned point (a drill or failover holds it) stops the purge before anything is deleted. The
/// data the points alone held is left to GC. Returns how many points were deleted.
pub async fn purge(site: &crate::Store, group: &str) -> Result<usize> {
    let repo = Repository::open(site).await?;
    let pins = repo.pins(group).await?;
    if let Some((seq, reasons)) = pins.iter().next() {
        return Err(Error::failed(format!(
            "point {seq} of group `{group}` is pinned ({}): clean up the run that holds it first",
            reasons.join(", ")
        )));
    }
    let seqs = repo.point_seqs(group).await?;
    for seq in &seqs {
        repo.store()
            .delete(&crate::format::manifest::object_name(group, *seq))
            .await?;
    }
    Ok(seqs.len())
}
