//! Reads the inventory and plan files from disk, checks the plugin files plans pin, and
//! validates everything together. The only layer of validation that touches the file system; it
//! never touches a site or a store, so it runs offline in CI.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use lifeboat_plan::plan::PluginRef;
use lifeboat_plan::{
    Diagnostic, Inventory, MAX_FILE_BYTES, Plan, Rule, SourceId, Sources, check_inventory,
    check_plan, parse_inventory, parse_plan,
};

pub mod components;
mod plugins;
pub mod resolved;

pub use components::{Component, ComponentError, Components};
pub use plugins::{EngineError, default_cache_dir, engine};
pub use resolved::{ResolveError, Resolved, ResolvedPlan};

/// One plan file and, when it parsed, its typed plan.
#[derive(Debug)]
pub struct LoadedPlan {
    pub path: PathBuf,
    pub source: SourceId,
    pub plan: Option<Plan>,
}

/// The outcome of validating an inventory and its plans: every file read, every diagnostic
/// (ordered by file and position), and the typed values that parsed.
#[derive(Debug)]
pub struct Validation {
    pub sources: Sources,
    pub inventory_source: SourceId,
    pub inventory: Option<Inventory>,
    pub plans: Vec<LoadedPlan>,
    pub diagnostics: Vec<Diagnostic>,
    /// Every component the files name, as validation read it.
    pub components: Components,
}

impl Validation {
    pub fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == lifeboat_plan::Severity::Error)
            .count()
    }

    pub fn is_valid(&self) -> bool {
        self.error_count() == 0
    }
}

/// The folder of the inventory file: relative paths in it (disks, stores, `plans/`, the state
/// folder) start here. The one place this rule is written.
pub fn base_dir(config: &Path) -> PathBuf {
    config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// The plans validated when none are named: every `*.toml` in `plans/` beside the inventory,
/// sorted by name.
pub fn default_plans(config: &Path) -> Vec<PathBuf> {
    let dir = base_dir(config).join("plans");
    let mut plans: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .collect();
    plans.sort();
    plans
}

/// Validate the inventory at `config` and each plan in `plans` against it.
pub fn validate(config: &Path, plans: &[PathBuf]) -> Validation {
    let mut sources = Sources::new();
    let mut diagnostics = Vec::new();

    let (inventory_source, readable) =
        read_or_report(&mut sources, config, "inventory", &mut diagnostics);
    let inventory = readable
        .then(|| {
            let text = sources.get(inventory_source).text();
            let (inventory, mut found) = parse_inventory(inventory_source, text);
            diagnostics.append(&mut found);
            inventory
        })
        .flatten();
    if let Some(inventory) = &inventory {
        diagnostics.extend(check_inventory(inventory, &sources));
    }

    let mut components = Components::default();
    let mut checker = plugins::PluginChecker::new();
    if let Some(inventory) = &inventory {
        diagnostics.extend(checker.check_alerts(config, inventory, &mut components));
    }
    let mut loaded = Vec::new();
    for path in plans {
        let (source, readable) = read_or_report(&mut sources, path, "plan", &mut diagnostics);
        let plan = readable
            .then(|| {
                let (plan, mut found) = parse_plan(source, sources.get(source).text());
                diagnostics.append(&mut found);
                plan
            })
            .flatten();
        if let Some(plan) = &plan {
            if let Some(inventory) = &inventory {
                diagnostics.extend(check_plan(inventory, plan, &sources));
            }
            let found = check_plugin_files(&mut components, path, plan);
            // Run only plugins whose file was found and matched its pin.
            let bad: Vec<_> = found
                .iter()
                .filter_map(|d| d.primary.as_ref().map(|l| l.span))
                .collect();
            diagnostics.extend(found);
            diagnostics.extend(checker.check(path, plan, &mut components, |step| {
                !bad.contains(&step.uses.span)
                    && step.sha256.as_ref().is_none_or(|s| !bad.contains(&s.span))
            }));
        }
        loaded.push(LoadedPlan {
            path: path.clone(),
            source,
            plan,
        });
    }

    diagnostics.sort_by_key(Diagnostic::sort_key);
    diagnostics.dedup();
    Validation {
        sources,
        inventory_source,
        inventory,
        plans: loaded,
        diagnostics,
        components,
    }
}

/// Add the file at `path` to `sources`; returns its id and whether it could be read (if not, the
/// file is added empty and a diagnostic says why).
fn read_or_report(
    sources: &mut Sources,
    path: &Path,
    what: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> (SourceId, bool) {
    let shown = path.display().to_string();
    let result = File::open(path).and_then(|file| {
        let mut text = String::new();
        file.take(MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut text)?;
        Ok(text)
    });
    match result {
        Ok(text) => (sources.add(shown, text), true),
        Err(e) => {
            let id = sources.add(shown.clone(), "");
            let reason = match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_string(),
                std::io::ErrorKind::InvalidData => "it is not UTF-8 text".to_string(),
                std::io::ErrorKind::IsADirectory => "it is a directory".to_string(),
                _ => e.to_string(),
            };
            diagnostics.push(Diagnostic::file_error(
                Rule::Io,
                id,
                format!("cannot read {what} `{shown}`: {reason}"),
            ));
            (id, false)
        }
    }
}

/// Every file plugin of `plan` can be read and matches its pin. Paths are relative to the plan.
fn check_plugin_files(
    components: &mut Components,
    plan_path: &Path,
    plan: &Plan,
) -> Vec<Diagnostic> {
    let dir = plan_path.parent().unwrap_or(Path::new(""));
    let mut out = Vec::new();
    for step in plan.groups.iter().flat_map(|g| g.pre.iter().chain(&g.post)) {
        let PluginRef::Path(relative) = &step.uses.value else {
            continue;
        };
        match components.resolve(&step.uses.value, dir) {
            Err(e) => out.push(
                Diagnostic::error(
                    Rule::PluginNotFound,
                    step.uses.span,
                    format!("plugin `{relative}` cannot be read: {e}"),
                    format!("looked for {}", dir.join(relative).display()),
                )
                .with_help("plugin paths are relative to the plan file"),
            ),
            Ok(component) => {
                let Some(pinned) = &step.sha256 else { continue };
                if !pinned.eq_ignore_ascii_case(&component.sha256) {
                    out.push(
                        Diagnostic::error(
                            Rule::PluginHashMismatch,
                            pinned.span,
                            format!("plugin `{relative}` does not match its pinned sha256"),
                            "pinned digest",
                        )
                        .with_note(step.uses.span, "this file")
                        .with_help(format!(
                            "the file's sha256 is {}; if the new build is intended, pin that",
                            component.sha256
                        )),
                    );
                }
            }
        }
    }
    out
}
