//! The configuration after validation, resolved once: the inventory as written and as the
//! groups run now (the placements kept in the sites' stores applied), the consistency groups,
//! the valid plans, every component the files name (bytes and digest), and the base folder.
//! The CLI, the daemon and the orchestrator hold it (`Arc<Resolved>`); nobody applies
//! placements again. A moved group's VMs are at the site they run at, with their run's disks
//! and addresses; a group's source and target are as it replicates now.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use lifeboat_plan::{Inventory, Plan, SourceId, Sources, Spanned};
use lifeboat_replication::placement::{self, Placement};
use lifeboat_replication::{GroupSpec, Store};

use crate::{Components, Validation};

/// A valid configuration, resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The inventory file; its folder is `base`.
    pub file: PathBuf,
    /// Where relative paths start (see [`crate::base_dir`]).
    pub base: PathBuf,
    /// The inventory as written.
    pub home: std::sync::Arc<Inventory>,
    /// The inventory as the groups run now (`placements` applied).
    pub inventory: std::sync::Arc<Inventory>,
    /// The groups as the inventory defines them, and as they replicate now.
    pub home_groups: Vec<GroupSpec>,
    pub groups: Vec<GroupSpec>,
    /// Where each group that moved runs now, from the sites' stores.
    pub placements: BTreeMap<String, Placement>,
    /// The valid plans validated with it.
    pub plans: Vec<ResolvedPlan>,
    /// Every component the inventory and the plans name, as validation read it.
    pub components: Components,
    /// The files read, for diagnostics that point into them (`plan simulate`'s).
    pub sources: std::sync::Arc<Sources>,
    pub inventory_source: SourceId,
    pub loaded_at: SystemTime,
}

/// A plan of the configuration.
#[derive(Debug, Clone)]
pub struct ResolvedPlan {
    pub path: PathBuf,
    pub plan: Plan,
}

/// Why a configuration does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The files do not validate (every problem is in the validation's diagnostics).
    #[error("the configuration is not valid ({0} errors)")]
    Invalid(usize),
    #[error("the inventory's consistency groups: {0}")]
    Groups(#[source] lifeboat_replication::Error),
    #[error("cannot record VM `{vm}`'s definition: {source}")]
    Definition {
        vm: String,
        source: serde_json::Error,
    },
}

impl Resolved {
    /// The configuration of a validation of `file` (the inventory) and its plans, placed as the
    /// inventory says (see [`Resolved::with_placements`]).
    pub fn new(file: &Path, validation: Validation) -> Result<Self, ResolveError> {
        if !validation.is_valid() {
            return Err(ResolveError::Invalid(validation.error_count()));
        }
        let Some(inventory) = validation.inventory else {
            return Err(ResolveError::Invalid(1));
        };
        let base = crate::base_dir(file);
        let home_groups =
            lifeboat_replication::groups(&inventory, &base).map_err(ResolveError::Groups)?;
        let home = std::sync::Arc::new(inventory);
        Ok(Self {
            file: file.to_path_buf(),
            base,
            inventory: home.clone(),
            home,
            groups: home_groups.clone(),
            home_groups,
            placements: BTreeMap::new(),
            plans: validation
                .plans
                .into_iter()
                .filter_map(|p| {
                    Some(ResolvedPlan {
                        plan: p.plan?,
                        path: p.path,
                    })
                })
                .collect(),
            components: validation.components,
            sources: std::sync::Arc::new(validation.sources),
            inventory_source: validation.inventory_source,
            loaded_at: SystemTime::now(),
        })
    }

    /// The same configuration with `placements` applied to the inventory as written.
    pub fn with_placements(
        &self,
        placements: BTreeMap<String, Placement>,
    ) -> Result<Self, ResolveError> {
        let (inventory, groups) = apply(&self.home, &self.home_groups, &placements)?;
        Ok(Self {
            inventory: std::sync::Arc::new(inventory),
            groups,
            placements,
            ..self.clone()
        })
    }

    /// Where groups run now, read from the sites' stores (any one answering is enough).
    pub async fn read_placements(
        &self,
    ) -> lifeboat_replication::Result<BTreeMap<String, Placement>> {
        placement::all(&site_stores(&self.home, &self.base)).await
    }

    /// The plans' file names (`erp.toml`).
    pub fn plan_files(&self) -> Vec<String> {
        self.plans
            .iter()
            .filter_map(|p| p.path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    }
}

/// The store of every site of the inventory that is there: placements are kept in each. Only
/// read here, so a site's local folder that is gone is skipped, not created again.
pub fn site_stores(inv: &Inventory, base: &Path) -> Vec<Store> {
    inv.sites
        .iter()
        .filter_map(|(_, s)| Store::open_if_present(&s.store.value, base).ok().flatten())
        .collect()
}

/// The inventory and groups as they stand now, with `placements` applied: a moved group's VMs
/// at the site they run at, with their run's disks and addresses; a group's source and target
/// sites as it replicates now (`protected` false when it does not); disabled VMs left out of
/// the group's captures.
fn apply(
    home: &Inventory,
    home_groups: &[GroupSpec],
    placements: &BTreeMap<String, Placement>,
) -> Result<(Inventory, Vec<GroupSpec>), ResolveError> {
    let mut inv = home.clone();
    let mut groups = Vec::new();
    for g in home_groups {
        let Some(p) = placements.get(&g.name) else {
            groups.push(g.clone());
            continue;
        };
        let mut spec = g.clone();
        spec.source_site = p.site.clone();
        if let Some(to) = &p.replicate_to {
            spec.target_site = to.clone();
        }
        for vm in &mut spec.vms {
            let Some(v) = inv.vms.get_mut(&vm.name) else {
                continue;
            };
            v.site.value = p.site.clone();
            if let Some(place) = p.vms.get(&vm.name) {
                if let Some(domain) = &place.domain {
                    v.domain = Some(Spanned::new(domain.clone(), v.site.span));
                }
                for (disk, path) in &place.disks {
                    if let Some(d) = v.disks.get_mut(disk) {
                        d.value = path.clone();
                    }
                }
                for (nic, now) in v.nics.iter_mut().zip(&place.nics) {
                    nic.network.value = now.network.clone();
                    nic.subnet.value = now.subnet.clone();
                    nic.ip = now
                        .ip
                        .parse::<IpAddr>()
                        .ok()
                        .map(|ip| Spanned::new(ip, nic.network.span));
                }
                for disk in &mut vm.disks {
                    if let Some(path) = place.disks.get(&disk.name) {
                        disk.source = path.clone();
                        disk.path = PathBuf::from(path);
                    }
                }
            }
            vm.definition =
                serde_json::to_value(&*v).map_err(|source| ResolveError::Definition {
                    vm: vm.name.clone(),
                    source,
                })?;
        }
        let enabled: Vec<_> = spec
            .vms
            .iter()
            .filter(|v| !p.disabled.contains(&v.name))
            .cloned()
            .collect();
        spec.protected = p.replicate_to.is_some() && !enabled.is_empty();
        if !enabled.is_empty() {
            spec.vms = enabled;
        }
        groups.push(spec);
    }
    Ok((inv, groups))
}
