//! Loading what a command works on: the resolved configuration (validated, with the plan when one
//! is named, placements applied). The one loader every command shares; on a problem it prints
//! why and gives the exit code.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_loader::{Resolved, ResolvedPlan};

use crate::exit_codes;
use crate::report::{self, Format};

/// The resolved configuration, and the plan asked for.
#[derive(Debug)]
pub struct Loaded {
    /// The inventory as written and as the groups run now (where a group failed over to and
    /// was committed, its VMs run from their run's disks there), the groups, the components.
    pub config: Arc<Resolved>,
    pub plan: Option<ResolvedPlan>,
}

/// Loads and validates `config` (and `plan`, when given) and resolves it with where each group
/// runs now; renders every problem and returns the exit code when there is one.
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
    let fail = |io: &mut crate::Io<'_>, e: lifeboat_orchestrator::error::Error| {
        let _ = writeln!(io.stderr, "error: {e}");
        e.exit_code()
    };
    let unplaced = match Resolved::new(config, validation) {
        Ok(r) => r,
        Err(e) => return Err(fail(io, e.into())),
    };
    // Where each group runs now: read from the sites' stores, which any one answering is enough.
    let read = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| lifeboat_orchestrator::error::Error::Failed(e.to_string()))
        .and_then(|rt| {
            rt.block_on(unplaced.read_placements()).map_err(|e| {
                lifeboat_orchestrator::error::Error::replication("cannot read where groups run", e)
            })
        });
    let resolved = match read.and_then(|p| Ok(unplaced.with_placements(p)?)) {
        Ok(r) => r,
        Err(e) => return Err(fail(io, e)),
    };
    let plan = resolved.plans.first().cloned();
    Ok(Loaded {
        config: Arc::new(resolved),
        plan,
    })
}
