//! Loading what a command works on: the inventory (validated, with the plan when one is named),
//! its folder and its consistency groups. The one loader every command shares; on a problem it
//! prints why and gives the exit code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_plan::{Inventory, Plan};
use lifeboat_replication::GroupSpec;
use lifeboat_replication::placement::Placement;

use crate::exit_codes;
use crate::report::{self, Format};

/// A validated inventory, and the plan asked for.
#[derive(Debug)]
pub struct Loaded {
    /// The inventory as the groups run now: where a group failed over to and was committed,
    /// its VMs run from their run's disks there (see `lifeboat_orchestrator::lifecycle`).
    pub inventory: Arc<Inventory>,
    /// The inventory as written.
    pub home: Arc<Inventory>,
    /// The folder of lifeboat.toml (see `lifeboat_loader::base_dir`).
    pub base: PathBuf,
    /// The groups as they replicate now.
    pub groups: Vec<GroupSpec>,
    pub placements: BTreeMap<String, Placement>,
    pub plan: Option<(Plan, PathBuf)>,
    /// The files read, for diagnostics that point into them (`plan simulate`'s).
    pub sources: lifeboat_plan::Sources,
    pub inventory_source: lifeboat_plan::SourceId,
}

/// Loads and validates `config` (and `plan`, when given); renders every problem and returns
/// the exit code when there is one.
pub fn load(
    config: &Path,
    plan: Option<&Path>,
    json: bool,
    io: &mut crate::Io<'_>,
) -> Result<Loaded, u8> {
    let plans: Vec<PathBuf> = plan.map(Path::to_path_buf).into_iter().collect();
    if let Some(p) = plan
        && !p.exists()
    {
        let _ = writeln!(io.stderr, "error: no plan file {}", p.display());
        return Err(exit_codes::INVALID);
    }
    let validation = lifeboat_loader::validate(config, &plans);
    if !validation.is_valid() {
        let format = if json { Format::Json } else { Format::Human };
        let _ = report::write(format, &validation, false, io.stderr);
        return Err(exit_codes::INVALID);
    }
    let Some(inventory) = validation.inventory else {
        return Err(exit_codes::INVALID);
    };
    let base = lifeboat_loader::base_dir(config);
    let groups = match lifeboat_replication::groups(&inventory, &base) {
        Ok(g) => g,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {e}");
            return Err(exit_codes::FAILED);
        }
    };
    let plan = validation
        .plans
        .into_iter()
        .next()
        .and_then(|p| Some((p.plan?, p.path)));
    // Where each group runs now: read from the sites' stores, which any one answering is enough.
    let read = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| lifeboat_orchestrator::error::Error::Failed(e.to_string()))
        .and_then(|rt| {
            rt.block_on(lifeboat_orchestrator::lifecycle::read_placements(
                &inventory, &base,
            ))
            .map_err(|e| {
                lifeboat_orchestrator::error::Error::replication("cannot read where groups run", e)
            })
        });
    let placements = match read {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {e}");
            return Err(exit_codes::of_run(&e));
        }
    };
    let (placed, groups) =
        match lifeboat_orchestrator::lifecycle::apply(&inventory, &groups, &placements) {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(io.stderr, "error: {e}");
                return Err(exit_codes::of_run(&e));
            }
        };
    Ok(Loaded {
        inventory: Arc::new(placed),
        home: Arc::new(inventory),
        base,
        groups,
        placements,
        plan,
        sources: validation.sources,
        inventory_source: validation.inventory_source,
    })
}
