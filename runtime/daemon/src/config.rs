//! The config the daemon runs: the inventory, validated together with every plan of the plans
//! folder beside it, and the consistency groups it defines. Loading is all or nothing: a file
//! that does not validate gives every diagnostic and no config, so a bad edit never replaces a
//! good one.

use std::path::{Path, PathBuf};

use lifeboat_loader::Resolved;
use lifeboat_plan::Severity;

/// The config the daemon runs: the resolved configuration (see `lifeboat_loader::Resolved`).
pub type Config = Resolved;

/// Loads and validates the inventory at `file` with every plan of `plans/` beside it. `Err`:
/// every problem, one line each (`file:line:column: error[rule]: message`).
pub fn load(file: &Path) -> Result<Config, Vec<String>> {
    let plans = lifeboat_loader::default_plans(file);
    let validation = lifeboat_loader::validate(file, &plans);
    if !validation.is_valid() {
        return Err(problems(file, &validation));
    }
    Resolved::new(file, validation).map_err(|e| vec![e.to_string()])
}

/// Loads `file` (see [`load`]) and applies where each group runs now, read from the sites'
/// stores.
pub async fn load_placed(file: &Path) -> Result<Config, Vec<String>> {
    let path = file.to_path_buf();
    let config = tokio::task::spawn_blocking(move || load(&path))
        .await
        .map_err(|e| vec![format!("loading stopped: {e}")])??;
    let placements = config
        .read_placements()
        .await
        .map_err(|e| vec![format!("cannot read where groups run: {e}")])?;
    config
        .with_placements(placements)
        .map_err(|e| vec![e.to_string()])
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
