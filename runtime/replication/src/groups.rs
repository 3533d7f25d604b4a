//! What to replicate, from the inventory: consistency groups (one cut across all their VMs'
//! disks), and every other protected VM as a group of its own, named after the VM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_plan::inventory::Inventory;

use crate::error::{Error, Result};

/// Chunk size unless a disk says otherwise: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 << 10;

/// One disk to capture.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskSpec {
    pub name: String,
    /// The path as the inventory writes it.
    pub source: String,
    /// The path resolved against the inventory's folder.
    pub path: PathBuf,
    pub chunk_size: u32,
}

/// The quiesce hook of a VM.
#[derive(Clone, Debug, PartialEq)]
pub struct QuiesceSpec {
    pub freeze: Vec<String>,
    pub thaw: Vec<String>,
    pub timeout: Duration,
}

/// One VM to capture.
#[derive(Clone, Debug, PartialEq)]
pub struct VmSpec {
    pub name: String,
    /// Its inventory entry, stored in each point so the target can boot it alone.
    pub definition: serde_json::Value,
    pub disks: Vec<DiskSpec>,
    pub quiesce: Option<QuiesceSpec>,
}

/// How long a cut may hold VMs paused when no policy says.
pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(10);

/// A consistency group: the unit of a cut, a point and fencing.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSpec {
    pub name: String,
    pub vms: Vec<VmSpec>,
    /// The source site (its store holds the cache) and the target site (the repository).
    pub source_site: String,
    pub target_site: String,
    /// The strictest policy among the members: shortest intervals and RPO, longest retention.
    pub retention: Duration,
    pub rpo_threshold: Duration,
    pub app_interval: Option<Duration>,
    /// How often a crash-consistent point is taken (the shortest of its policies').
    pub crash_interval: Duration,
    /// The longest a cut may hold the group's VMs paused (the shortest of its policies').
    pub max_pause: Duration,
    /// The folder the inventory's relative paths start from.
    pub base: PathBuf,
    /// Whether it is replicated: not after a commit until a reprotect, nor when every VM of
    /// it is disabled (see `placement`).
    pub protected: bool,
    /// The source site's `bandwidth` (bytes per second shipped, all its groups together).
    pub bandwidth: Option<u64>,
}

impl GroupSpec {
    /// A group of one VM `name` with one disk `disk` at `image`, from site `east` to `west`
    /// with default policies: what benchmarks and tests replicate without an inventory.
    pub fn one_disk(name: &str, disk: &str, image: &Path, base: &Path) -> Self {
        Self {
            name: name.into(),
            vms: vec![VmSpec {
                name: name.into(),
                definition: serde_json::json!({}),
                disks: vec![DiskSpec {
                    name: disk.into(),
                    source: image.display().to_string(),
                    path: image.to_path_buf(),
                    chunk_size: DEFAULT_CHUNK_SIZE,
                }],
                quiesce: None,
            }],
            source_site: "east".into(),
            target_site: "west".into(),
            retention: Duration::from_secs(3600),
            rpo_threshold: Duration::from_secs(60),
            app_interval: None,
            max_pause: DEFAULT_MAX_PAUSE,
            crash_interval: Duration::from_secs(300),
            base: base.to_path_buf(),
            protected: true,
            bandwidth: None,
        }
    }
}

/// Every group of the inventory, in name order. `base` is the folder of lifeboat.toml.
pub fn groups(inv: &Inventory, base: &Path) -> Result<Vec<GroupSpec>> {
    let mut out = Vec::new();
    let mut grouped = std::collections::HashSet::new();
    for (name, cg) in inv.consistency_groups.iter() {
        let members: Vec<String> = cg.vms.iter().map(|v| v.value.clone()).collect();
        grouped.extend(members.iter().cloned());
        out.push(group(inv, base, name, &members)?);
    }
    for (name, _) in inv.vms.iter() {
        if grouped.contains(name) {
            continue;
        }
        if inv.consistency_groups.contains(name) {
            return Err(Error::failed(format!(
                "VM `{name}` is in no consistency group but has the name of one: rename one of them"
            )));
        }
        out.push(group(inv, base, name, &[name.to_string()])?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn group(inv: &Inventory, base: &Path, name: &str, members: &[String]) -> Result<GroupSpec> {
    let mut vms = Vec::new();
    let mut sites = Vec::new();
    let mut retention = Duration::ZERO;
    let mut rpo = Duration::MAX;
    let mut app: Option<Duration> = None;
    // The shortest any member's policy sets; the default only when none sets one (a policy may
    // allow longer: a disk copied whole at the cut, on a file system without reflinks).
    let mut max_pause: Option<Duration> = None;
    let mut crash = Duration::MAX;
    for vm_name in members {
        let vm = inv
            .vms
            .get(vm_name)
            .ok_or_else(|| Error::failed(format!("group `{name}` names unknown VM `{vm_name}`")))?;
        sites.push(vm.site.value.clone());
        if let Some(policy) = inv.policies.get(&vm.policy) {
            retention = retention.max(policy.retention.value.0);
            rpo = rpo.min(policy.rpo_threshold.value.0);
            crash = crash.min(policy.crash_interval.value.0);
            if let Some(m) = &policy.max_pause {
                max_pause = Some(max_pause.map_or(m.value.0, |x| x.min(m.value.0)));
            }
            if let Some(a) = &policy.app_interval {
                app = Some(app.map_or(a.value.0, |x: Duration| x.min(a.value.0)));
            }
        }
        let disks = vm
            .disks
            .iter()
            .map(|(disk, path)| DiskSpec {
                name: disk.to_string(),
                source: path.value.clone(),
                path: base.join(&path.value),
                chunk_size: DEFAULT_CHUNK_SIZE,
            })
            .collect();
        let quiesce = vm.quiesce.as_ref().map(|q| QuiesceSpec {
            freeze: q.freeze.iter().map(|s| s.value.clone()).collect(),
            thaw: q.thaw.iter().map(|s| s.value.clone()).collect(),
            timeout: q
                .timeout
                .as_ref()
                .map_or(Duration::from_secs(30), |t| t.value.0),
        });
        vms.push(VmSpec {
            name: vm_name.clone(),
            definition: serde_json::to_value(vm).map_err(|e| {
                Error::failed(format!("cannot record VM `{vm_name}`'s definition: {e}"))
            })?,
            disks,
            quiesce,
        });
    }
    sites.dedup();
    let [source] = sites.as_slice() else {
        return Err(Error::failed(format!(
            "group `{name}` spans sites {}: a consistency group must live at one site",
            sites.join(", ")
        )));
    };
    let site = inv
        .sites
        .get(source)
        .ok_or_else(|| Error::failed(format!("unknown site `{source}`")))?;
    let target = site.replicate_to.as_ref().ok_or_else(|| {
        Error::failed(format!(
            "site `{source}` has no `replicate_to`: say which site keeps its recovery points"
        ))
    })?;
    Ok(GroupSpec {
        name: name.to_string(),
        vms,
        source_site: source.clone(),
        target_site: target.value.clone(),
        retention,
        rpo_threshold: if rpo == Duration::MAX {
            Duration::from_secs(900)
        } else {
            rpo
        },
        app_interval: app,
        crash_interval: if crash == Duration::MAX {
            Duration::from_secs(300)
        } else {
            crash
        },
        max_pause: max_pause.unwrap_or(DEFAULT_MAX_PAUSE),
        base: base.to_path_buf(),
        protected: true,
        bandwidth: site.bandwidth.as_ref().map(|b| b.value.0),
    })
}
