//! The config the daemon runs: the inventory, validated together with every plan of the plans
//! folder beside it, and the consistency groups it defines. Loading is all or nothing: a file
//! that does not validate gives every diagnostic and no config, so a bad edit never replaces a
//! good one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use lifeboat_plan::{Inventory, Severity};
use lifeboat_replication::GroupSpec;
use lifeboat_replication::placement::Placement;
use std::collections::BTreeMap;

/// A validated config.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub inventory: Arc<Inventory>,
    /// The folder of the inventory (relative paths start there).
    pub base: PathBuf,
    /// The groups as they replicate now (placements applied, see `placed`).
    pub groups: Vec<GroupSpec>,
    /// The inventory as written (`inventory` is as the groups run now).
    pub home: Arc<Inventory>,
    /// Where each group that moved runs now, from the sites' stores.
    pub placements: BTreeMap<String, Placement>,
    /// The plans validated with it, by file name.
    pub plans: Vec<String>,
    pub loaded_at: SystemTime,
}

/// Loads and validates the inventory at `file` with every plan of `plans/` beside it. `Err`:
/// every problem, one line each (`file:line:column: error[rule]: message`).
pub fn load(file: &Path) -> Result<Config, Vec<String>> {
    let plans = lifeboat_loader::default_plans(file);
    let validation = lifeboat_loader::validate(file, &plans);
    if !validation.is_valid() {
        return Err(problems(file, &validation));
    }
    let Some(inventory) = validation.inventory else {
        return Err(vec![format!("{}: no inventory", file.display())]);
    };
    let base = lifeboat_loader::base_dir(file);
    let groups =
        lifeboat_replication::groups(&inventory, &base).map_err(|e| vec![e.to_string()])?;
    let inventory = Arc::new(inventory);
    Ok(Config {
        file: file.to_path_buf(),
        inventory: inventory.clone(),
        home: inventory,
        base,
        groups,
        placements: BTreeMap::new(),
        plans: plans
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect(),
        loaded_at: SystemTime::now(),
    })
}

/// Loads `file` (see [`load`]) and applies where each group runs now, read from the sites'
/// stores (see `lifeboat_orchestrator::lifecycle`).
pub async fn load_placed(file: &Path) -> Result<Config, Vec<String>> {
    let path = file.to_path_buf();
    let mut config = tokio::task::spawn_blocking(move || load(&path))
        .await
        .map_err(|e| vec![format!("loading stopped: {e}")])??;
    let placements = lifeboat_orchestrator::lifecycle::read_placements(&config.home, &config.base)
        .await
        .map_err(|e| vec![format!("cannot read where groups run: {e}")])?;
    place(&mut config, placements).map_err(|e| vec![e])?;
    Ok(config)
}

/// Applies `placements` to a config loaded from the files.
pub fn place(config: &mut Config, placements: BTreeMap<String, Placement>) -> Result<(), String> {
    let home_groups =
        lifeboat_replication::groups(&config.home, &config.base).map_err(|e| e.to_string())?;
    let (inventory, groups) =
        lifeboat_orchestrator::lifecycle::apply(&config.home, &home_groups, &placements)
            .map_err(|e| e.to_string())?;
    config.inventory = Arc::new(inventory);
    config.groups = groups;
    config.placements = placements;
    Ok(())
}

/// Every error of `validation`, one line each (`file:line:column: error[rule]: message`).
pub fn problems(file: &Path, validation: &lifeboat_loader::Validation) -> Vec<String> {
    let mut lines: Vec<String> = validation
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| {
            let source = validation.sources.get(d.source);
            let place = match &d.primary {
                Some(label) => {
                    let at = source.location(label.span.start);
                    format!("{}:{}:{}", source.name(), at.line, at.column)
                }
                None => source.name().to_string(),
            };
            format!("{place}: error[{}]: {}", d.rule.name(), d.message)
        })
        .collect();
    if lines.is_empty() && !validation.is_valid() {
        lines.push(format!("{}: not valid", file.display()));
    }
    lines
}

/// The plan file `plans/NAME.toml` beside the inventory `file`, if `name` can name one (a plain
/// name: no path separators).
pub fn plan_file(file: &Path, name: &str) -> Option<PathBuf> {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    plain.then(|| {
        lifeboat_loader::base_dir(file)
            .join("plans")
            .join(format!("{name}.toml"))
    })
}

/// Plan `path`, validated with the inventory `file` as the files are now. `Err`: every problem.
pub fn plan(file: &Path, path: &Path) -> Result<lifeboat_plan::Plan, Vec<String>> {
    let validation = lifeboat_loader::validate(file, &[path.to_path_buf()]);
    if !validation.is_valid() {
        return Err(problems(file, &validation));
    }
    validation
        .plans
        .into_iter()
        .next()
        .and_then(|p| p.plan)
        .ok_or_else(|| vec![format!("{}: no plan", path.display())])
}
