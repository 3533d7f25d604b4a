//! Loading what a command works on: the inventory (validated, with the plan when one is named),
//! its folder and its consistency groups. The one loader every command shares; on a problem it
//! prints why and gives the exit code.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_plan::{Inventory, Plan};
use lifeboat_replication::GroupSpec;

use crate::exit_codes;
use crate::report::{self, Format};

/// A validated inventory, and the plan asked for.
#[derive(Debug)]
pub struct Loaded {
    pub inventory: Arc<Inventory>,
    /// The folder of lifeboat.toml (see `lifeboat_loader::base_dir`).
    pub base: PathBuf,
    pub groups: Vec<GroupSpec>,
    pub plan: Option<(Plan, PathBuf)>,
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
    Ok(Loaded {
        inventory: Arc::new(inventory),
        base,
        groups,
        plan,
    })
}
