//! Where a consistency group runs now, and which way it replicates: state that changes at a
//! commit (the group runs at the other site, unprotected), a reprotect (it replicates back) and
//! `disable`. It is kept in the sites' stores, not in the inventory (the user's file) nor on one
//! host: each record is written, put-if-absent and numbered, to every site store that answers,
//! and the newest number any store holds wins, so it can be read with either site gone.
//!
//! A group with no record is where the inventory says, replicating to its site's
//! `replicate_to`, every VM protected.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::{rfc3339, unix_ms};
use crate::error::{Error, Result};
use crate::store::{Put, Store};

/// One NIC of a VM where it runs now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicPlace {
    /// The network, of the site the VM runs at.
    pub network: String,
    pub subnet: String,
    pub ip: String,
}

/// One VM where it runs now: its disks (absolute paths) and addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlace {
    pub disks: BTreeMap<String, String>,
    pub nics: Vec<NicPlace>,
    /// The libvirt domain the VM is now (a run's copy), when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// A group's placement, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub group: String,
    /// Numbers only grow; the highest any store holds is the group's placement.
    pub generation: u64,
    /// The site its VMs run at.
    pub site: String,
    /// The site whose repository receives its points; none: not protected.
    pub replicate_to: Option<String>,
    /// The run that booted the VMs running now; none: the inventory's own VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The VMs running from a run's disks (absent: the inventory's disks and addresses).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vms: BTreeMap<String, VmPlace>,
    /// VMs `lifeboat disable` took out of protection.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub disabled: BTreeSet<String>,
    /// What recorded it: `commit`, `reprotect`, `disable`, `enable`.
    pub reason: String,
    pub at: String,
    pub unix_ms: u64,
}

impl Placement {
    /// The placement of a group that never moved: at `site`, replicating to `target`.
    pub fn home(group: &str, site: &str, target: Option<&str>) -> Self {
        Self {
            group: group.to_string(),
            generation: 0,
            site: site.to_string(),
            replicate_to: target.map(str::to_string),
            run: None,
            vms: BTreeMap::new(),
            disabled: BTreeSet::new(),
            reason: "inventory".into(),
            at: String::new(),
            unix_ms: 0,
        }
    }

    /// Whether it runs from a run's disks rather than the inventory's.
    pub fn moved(&self) -> bool {
        self.run.is_some()
    }
}

fn object_name(group: &str, generation: u64) -> String {
    format!("placement/{group}/{generation:020}")
}

/// The newest placement of `group` in one store.
async fn newest_in(store: &Store, group: &str) -> Result<Option<Placement>> {
    let listed = store.list(&format!("placement/{group}/")).await?;
    let Some(newest) = listed
        .iter()
        .filter_map(|l| {
            l.name
                .rsplit('/')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .max()
    else {
        return Ok(None);
    };
    let name = object_name(group, newest);
    let bytes = store.get(&name).await?;
    let p: Placement = serde_json::from_slice(&bytes)
        .map_err(|e| Error::damaged(format!("{}/{name}", store.location()), e))?;
    Ok(Some(p))
}

/// The newest placement of `group` in any of `stores` that answers, with what the others said
/// (a store that does not answer is not a reason to stop: the point is to read it with a site
/// gone). An error only when none answers.
pub async fn current(stores: &[Store], group: &str) -> Result<Option<Placement>> {
    let mut best: Option<Placement> = None;
    let mut answered = false;
    let mut last_error = None;
    for store in stores {
        match newest_in(store, group).await {
            Ok(p) => {
                answered = true;
                if let Some(p) = p
                    && best.as_ref().is_none_or(|b| p.generation > b.generation)
                {
                    best = Some(p);
                }
            }
            Err(e) => {
                tracing::warn!(store = store.location(), group, error = %e, "placement not read");
                last_error = Some(e);
            }
        }
    }
    match (answered, last_error) {
        (false, Some(e)) => Err(e.context(format!("cannot read where group `{group}` runs"))),
        _ => Ok(best),
    }
}

/// The newest placement of every group any of `stores` holds one for (one listing per store).
/// A store that does not answer is skipped (said in the log); an error only when none answers.
pub async fn all(stores: &[Store]) -> Result<BTreeMap<String, Placement>> {
    let mut newest: BTreeMap<String, (u64, Store)> = BTreeMap::new();
    let mut answered = stores.is_empty();
    let mut last_error = None;
    for store in stores {
        match store.list("placement/").await {
            Ok(listed) => {
                answered = true;
                for l in listed {
                    let mut parts = l.name.rsplit('/');
                    let (Some(generation), Some(group)) = (
                        parts.next().and_then(|n| n.parse::<u64>().ok()),
                        parts.next(),
                    ) else {
                        continue;
                    };
                    if newest.get(group).is_none_or(|(g, _)| generation > *g) {
                        newest.insert(group.to_string(), (generation, store.clone()));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(store = store.location(), error = %e, "placements not read");
                last_error = Some(e);
            }
        }
    }
    if let (false, Some(e)) = (answered, last_error) {
        return Err(e.context("cannot read where groups run"));
    }
    let mut out = BTreeMap::new();
    for (group, (generation, store)) in newest {
        let name = object_name(&group, generation);
        let bytes = store.get(&name).await?;
        let p: Placement = serde_json::from_slice(&bytes)
            .map_err(|e| Error::damaged(format!("{}/{name}", store.location()), e))?;
        out.insert(group, p);
    }
    Ok(out)
}

/// Every placement `group` had, oldest first, from whichever store holds each generation.
pub async fn history(stores: &[Store], group: &str) -> Result<Vec<Placement>> {
    let mut out: BTreeMap<u64, Placement> = BTreeMap::new();
    for store in stores {
        let Ok(listed) = store.list(&format!("placement/{group}/")).await else {
            continue;
        };
        for l in listed {
            let Some(generation) = l
                .name
                .rsplit('/')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if out.contains_key(&generation) {
                continue;
            }
            let bytes = store.get(&object_name(group, generation)).await?;
            let p: Placement = serde_json::from_slice(&bytes)
                .map_err(|e| Error::damaged(format!("{}/{}", store.location(), l.name), e))?;
            out.insert(generation, p);
        }
    }
    Ok(out.into_values().collect())
}

/// Records `next` (its generation set one past the newest any store holds) in every store that
/// answers; `required` must take it (the store of the site the group now runs at). Returns the
/// record and the stores that did not take it.
pub async fn record(
    stores: &[Store],
    required: &Store,
    mut next: Placement,
) -> Result<(Placement, Vec<String>)> {
    let mut all: Vec<&Store> = vec![required];
    all.extend(
        stores
            .iter()
            .filter(|s| s.identity() != required.identity()),
    );
    let newest = current(
        &all.iter().map(|s| (*s).clone()).collect::<Vec<_>>(),
        &next.group,
    )
    .await?;
    next.generation = newest.map_or(1, |p| p.generation + 1);
    let now = SystemTime::now();
    next.at = rfc3339(now);
    next.unix_ms = unix_ms(now);
    let bytes = Bytes::from(
        serde_json::to_vec_pretty(&next)
            .map_err(|e| Error::failed(format!("cannot encode the placement: {e}")))?,
    );
    let name = object_name(&next.group, next.generation);
    match required.put_new(&name, bytes.clone()).await? {
        Put::Created => {}
        Put::Exists => {
            return Err(Error::busy(format!(
                "another process recorded where group `{}` runs at the same time; look again",
                next.group
            )));
        }
    }
    let mut missed = Vec::new();
    for store in all.into_iter().skip(1) {
        if let Err(e) = store.put_new(&name, bytes.clone()).await {
            tracing::warn!(store = store.location(), error = %e, "placement not copied");
            missed.push(store.location().to_string());
        }
    }
    Ok((next, missed))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn the_newest_generation_in_any_store_wins() {
        let (a, b) = (Store::memory(), Store::memory());
        assert_eq!(current(&[a.clone(), b.clone()], "g").await.unwrap(), None);
        let mut p = Placement::home("g", "west", None);
        p.reason = "commit".into();
        let (first, missed) = record(&[a.clone(), b.clone()], &b, p.clone())
            .await
            .unwrap();
        assert_eq!((first.generation, missed.len()), (1, 0));
        // Only `a` takes the next one (as when `b`'s site is down).
        p.replicate_to = Some("east".into());
        let (second, _) = record(std::slice::from_ref(&a), &a, p).await.unwrap();
        assert_eq!(second.generation, 2);
        let seen = current(&[b.clone(), a.clone()], "g")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.replicate_to.as_deref(), Some("east"));
        assert_eq!(
            current(std::slice::from_ref(&b), "g")
                .await
                .unwrap()
                .unwrap()
                .generation,
            1
        );
        let every = all(&[b, a]).await.unwrap();
        assert_eq!(every["g"].generation, 2);
    }
}
