//! `verify`: quick checks that every object exists and parses; `--full` re-reads every pack,
//! decompresses and re-hashes every blob. Every damaged object is named; nothing is repaired.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::format::manifest;
use crate::format::pack;
use crate::format::page::{self, FANOUT};
use crate::format::{self, Id};
use crate::repo::{PREFIX, Repository};
use crate::store::Store;

/// One damaged object.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The object's name in the store (under `repo/`).
    pub object: String,
    pub what: String,
}

/// What verify checked and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub full: bool,
    pub points: usize,
    pub packs: usize,
    pub index_files: usize,
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    fn problem(&mut self, object: impl Into<String>, what: impl Into<String>) {
        let p = Problem {
            object: object.into(),
            what: what.into(),
        };
        if !self.problems.contains(&p) {
            self.problems.push(p);
        }
    }
}

/// Verifies the repository of `target`.
pub async fn verify(target: &Store, full: bool) -> Result<VerifyReport> {
    let repo = Repository::open(target).await?;
    let mut report = VerifyReport {
        full,
        ..VerifyReport::default()
    };
    report.index_files = repo.index().files.len();
    for (name, why) in &repo.index().problems {
        report.problem(format!("{PREFIX}/{name}"), why.clone());
    }

    // Packs: quick reads each trailer and compares it with the index; full reads everything.
    let listed = repo.store().list("packs").await?;
    report.packs = listed.len();
    let present: HashMap<String, u64> = listed
        .iter()
        .map(|o| {
            (
                o.name.rsplit('/').next().unwrap_or_default().to_string(),
                o.size,
            )
        })
        .collect();
    let mut bad_blobs: HashSet<Id> = HashSet::new();
    for (i, pack_name) in repo.index().packs.iter().enumerate() {
        let object = pack::object_name(pack_name);
        let Some(size) = present.get(pack_name).copied() else {
            report.problem(format!("{PREFIX}/{object}"), "missing (the index lists it)");
            for (id, loc) in &repo.index().blobs {
                if loc.pack as usize == i {
                    bad_blobs.insert(*id);
                }
            }
            continue;
        };
        let indexed: Vec<(Id, pack::Entry)> = repo
            .index()
            .blobs
            .iter()
            .filter(|(_, loc)| loc.pack as usize == i)
            .map(|(id, loc)| (*id, loc.entry))
            .collect();
        let checked = if full {
            check_pack_full(&repo, pack_name, &indexed, &mut report).await
        } else {
            check_pack_quick(&repo, pack_name, size, &indexed).await
        };
        match checked {
            Ok(bad) => bad_blobs.extend(bad),
            Err(e) if e.kind() == ErrorKind::Damaged || e.kind() == ErrorKind::Failed => {
                report.problem(format!("{PREFIX}/{object}"), e.to_string());
                bad_blobs.extend(indexed.iter().map(|(id, _)| *id));
            }
            Err(e) => return Err(e),
        }
    }

    // Points: every manifest parses and its MAC holds, every page reads, every chunk is indexed
    // and (with --full) was found intact in its pack.
    let mut pages_seen = HashSet::new();
    for group in repo.groups().await? {
        for o in repo.store().list(&format!("points/{group}")).await? {
            report.points += 1;
            let Some(seq) = manifest::seq_of(&o.name) else {
                report.problem(format!("{PREFIX}/{}", o.name), "not a point name");
                continue;
            };
            let m = match repo.point(&group, seq).await {
                Ok(m) => m,
                Err(e) => {
                    report.problem(format!("{PREFIX}/{}", o.name), e.to_string());
                    continue;
                }
            };
            for vm in &m.vms {
                for disk in &vm.disks {
                    let Some(root) = disk.root_id() else {
                        report.problem(format!("{PREFIX}/{}", o.name), "bad root id");
                        continue;
                    };
                    let what = format!("{}/{} in point {group}/{seq}", vm.name, disk.name);
                    check_tree(
                        &repo,
                        root,
                        disk.chunks(),
                        &what,
                        &bad_blobs,
                        &mut pages_seen,
                        &mut report,
                    )
                    .await;
                }
            }
        }
    }
    Ok(report)
}

async fn check_pack_quick(
    repo: &Repository,
    name: &str,
    size: u64,
    indexed: &[(Id, pack::Entry)],
) -> Result<Vec<Id>> {
    let object = pack::object_name(name);
    if size < pack::FOOTER_LEN as u64 {
        return Err(Error::damaged(&object, "shorter than a pack footer"));
    }
    let footer = repo
        .store()
        .get_range(&object, size - pack::FOOTER_LEN as u64..size)
        .await?;
    let footer = pack::parse_footer(&footer).map_err(|w| Error::damaged(&object, w))?;
    let trailer_len = footer.trailer_len();
    if trailer_len > size {
        return Err(Error::damaged(
            &object,
            "pack trailer is longer than the pack",
        ));
    }
    let data_len = size - trailer_len;
    let trailer = repo.store().get_range(&object, data_len..size).await?;
    if !pack::trailer_names(name, &trailer) {
        return Err(Error::damaged(
            &object,
            "pack trailer does not hash to the pack's name",
        ));
    }
    let entries = &trailer[..trailer.len() - pack::FOOTER_LEN];
    let entries =
        pack::parse_entries(&footer, entries, data_len).map_err(|w| Error::damaged(&object, w))?;
    let in_pack: HashMap<Id, pack::Entry> = entries.into_iter().map(|e| (e.id, e)).collect();
    let mut bad = Vec::new();
    for (id, e) in indexed {
        if in_pack.get(id) != Some(e) {
            bad.push(*id);
        }
    }
    if !bad.is_empty() {
        return Err(Error::damaged(
            &object,
            format!("{} blobs differ from the index", bad.len()),
        ));
    }
    Ok(bad)
}

/// Reads a whole pack and checks every blob; returns the ids that failed.
async fn check_pack_full(
    repo: &Repository,
    name: &str,
    indexed: &[(Id, pack::Entry)],
    report: &mut VerifyReport,
) -> Result<Vec<Id>> {
    let object = pack::object_name(name);
    let bytes = repo.store().get(&object).await?;
    report.bytes_checked += bytes.len() as u64;
    let mut bad = Vec::new();
    // The name hash covers every byte; if it fails, still find which blobs are hurt.
    let whole = pack::parse(name, &bytes);
    if let Err(why) = &whole {
        report.problem(format!("{PREFIX}/{object}"), why.clone());
    }
    for (id, e) in indexed {
        report.blobs_checked += 1;
        let end = e.offset + e.stored_len as u64;
        let ok = end <= bytes.len() as u64
            && format::decode_blob(
                repo.keys(),
                *id,
                e.codec,
                e.raw_len,
                &bytes[e.offset as usize..end as usize],
            )
            .is_ok();
        if !ok {
            report.problem(
                format!("{PREFIX}/{object}"),
                format!("blob {id} does not decode to its id"),
            );
            bad.push(*id);
        }
    }
    if whole.is_err() && bad.is_empty() {
        // Damage outside any indexed blob (trailer or padding): the pack still fails.
        return Ok(Vec::new());
    }
    Ok(bad)
}

async fn check_tree(
    repo: &Repository,
    root: Id,
    chunks: u64,
    what: &str,
    bad_blobs: &HashSet<Id>,
    pages_seen: &mut HashSet<Id>,
    report: &mut VerifyReport,
) {
    let levels = page::levels(chunks);
    let Some(top) = levels.len().checked_sub(1) else {
        return;
    };
    let mut ids = vec![(root, 0usize)];
    for level in (0..=top).rev() {
        let count = levels[level];
        let mut next = Vec::new();
        for (id, i) in ids {
            if id.is_zero() || !pages_seen.insert(id) {
                continue;
            }
            let page = repo.read_page(id, level, count, i).await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    report.problem(format!("page {id}"), format!("{e} (in {what})"));
                    continue;
                }
            };
            if level == 0 {
                for c in page.into_iter().filter(|c| !c.is_zero()) {
                    if !repo.index().blobs.contains_key(&c) {
                        report.problem(
                            format!("chunk {c}"),
                            format!("in no index (used by {what})"),
                        );
                    } else if bad_blobs.contains(&c) {
                        report.problem(format!("chunk {c}"), format!("damaged (used by {what})"));
                    }
                }
            } else {
                next.extend(
                    page.into_iter()
                        .enumerate()
                        .map(|(j, c)| (c, i * FANOUT + j)),
                );
            }
        }
        ids = next;
    }
}
