//! Asking each step's plugin about itself, offline: `describe` (which capabilities it wants,
//! compared with what the step's `allow` grants) and `validate` (its own checks of `with`).
//! Plugins run in the sandbox with no grants and no services, so validation touches no site.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_plan::plan::{Operation, PluginRef, Step};
use lifeboat_plan::{Diagnostic, Plan, Rule};
use lifeboat_plugin_host::wit::{self, Capability};
use lifeboat_plugin_host::{EngineOptions, LoadError, Plugin, PluginEngine, StepRequest};

use crate::components::{ComponentError, Components};

/// Where compiled components are cached between runs: `$LIFEBOAT_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/lifeboat/components`, else `~/.cache/lifeboat/components`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LIFEBOAT_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("lifeboat/components"))
}

/// The plugin engine could not start (the reason is the sandbox's).
#[derive(Clone, Debug, thiserror::Error)]
#[error("the plugin engine could not start: {0}")]
pub struct EngineError(String);

/// The process's one plugin engine: validation, runs and alert hooks share it (its compiled
/// components, its pool of instances and its epoch ticker), started on first use, so a command
/// that runs no step pays for none of it.
pub fn engine() -> Result<PluginEngine, EngineError> {
    static ENGINE: std::sync::OnceLock<Result<PluginEngine, EngineError>> =
        std::sync::OnceLock::new();
    ENGINE
        .get_or_init(|| {
            PluginEngine::new(EngineOptions {
                cache_dir: default_cache_dir(),
                max_concurrent_steps: 8,
                ..EngineOptions::default()
            })
            .map_err(EngineError)
        })
        .clone()
}

/// Loads each distinct component once per validation.
pub(crate) struct PluginChecker {
    engine: Option<PluginEngine>,
    runtime: Option<tokio::runtime::Runtime>,
    loaded: HashMap<String, Result<Arc<Plugin>, LoadError>>,
}

impl PluginChecker {
    pub fn new() -> Self {
        Self {
            engine: None,
            runtime: None,
            loaded: HashMap::new(),
        }
    }

    fn start(&mut self) -> Result<(), String> {
        if self.engine.is_none() {
            let engine = engine().map_err(|e| e.to_string())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            self.engine = Some(engine);
            self.runtime = Some(runtime);
        }
        Ok(())
    }

    fn load(&mut self, key: String, bytes: &[u8]) -> Result<Arc<Plugin>, LoadError> {
        if let Some(loaded) = self.loaded.get(&key) {
            return loaded.clone();
        }
        let result = match self.start() {
            Err(e) => Err(LoadError::Invalid(format!(
                "the plugin engine could not start: {e}"
            ))),
            Ok(()) => match (&self.engine, &self.runtime) {
                // On a thread of its own: a caller inside an async runtime (the daemon) must
                // not have `block_on` called on its thread (tokio panics there).
                (Some(engine), Some(runtime)) => std::thread::scope(|s| {
                    s.spawn(|| runtime.block_on(Plugin::load(engine, bytes, None)))
                        .join()
                        .unwrap_or_else(|_| {
                            Err(LoadError::Invalid(
                                "the plugin loader thread panicked".into(),
                            ))
                        })
                })
                .map(Arc::new),
                _ => Err(LoadError::Invalid(
                    "the plugin engine could not start".into(),
                )),
            },
        };
        self.loaded.insert(key, result.clone());
        result
    }

    /// Check every step of `plan` whose plugin can be read. `usable(step)` says whether the
    /// static checks left the step's file and pin trustworthy (a missing file or a wrong pin is
    /// reported already and not run).
    pub fn check(
        &mut self,
        plan_path: &Path,
        plan: &Plan,
        components: &mut Components,
        usable: impl Fn(&Step) -> bool,
    ) -> Vec<Diagnostic> {
        let dir = plan_path.parent().unwrap_or(Path::new(""));
        let mut out = Vec::new();
        for group in &plan.groups {
            for step in group.pre.iter().chain(&group.post) {
                // Never run a file that is not pinned by a well-formed sha256.
                let pinned =
                    matches!(step.uses.value, PluginRef::Builtin(_)) || step.sha256.is_some();
                if !pinned || !usable(step) {
                    continue;
                }
                // Unknown built-ins and unreadable files are reported by the plan checks.
                let Ok(component) = components.resolve(&step.uses.value, dir) else {
                    continue;
                };
                let loaded = self.load(component.sha256.clone(), &component.bytes);
                let plugin = match loaded {
                    Ok(plugin) => plugin,
                    Err(e) => {
                        out.push(
                            Diagnostic::error(
                                Rule::PluginLoad,
                                step.uses.span,
                                format!("plugin `{}` cannot be used: {e}", step.uses.value_text()),
                                "not a usable step component",
                            )
                            .with_help("build it against wit/ (lifeboat:plan@0.1.x) with WASI file system and sockets unused"),
                        );
                        continue;
                    }
                };
                out.extend(capability_checks(step, &plugin));
                if !step.config_invalid {
                    out.extend(self.config_checks(&plan.name.value, &group.name, step, &plugin));
                }
            }
        }
        out
    }

    /// Check every alert hook of `inventory` (at `inventory_path`): its component loads (a file
    /// must be pinned and match its pin), its capabilities are granted, its `with` validates.
    pub fn check_alerts(
        &mut self,
        inventory_path: &Path,
        inventory: &lifeboat_plan::Inventory,
        components: &mut Components,
    ) -> Vec<Diagnostic> {
        let dir = crate::base_dir(inventory_path);
        let mut out = Vec::new();
        for (name, alert) in inventory.alerts.iter() {
            let step = &alert.step;
            if matches!(step.uses.value, PluginRef::Path(_)) && step.sha256.is_none() {
                continue; // unpinned: reported by the decoding
            }
            let component = match components.resolve(&step.uses.value, &dir) {
                Ok(component) => component,
                Err(ComponentError::NoBuiltin(_)) => continue, // reported by the decoding
                Err(ComponentError::Unreadable { path, reason }) => {
                    out.push(Diagnostic::error(
                        Rule::PluginNotFound,
                        step.uses.span,
                        format!("alert `{name}`: cannot read {path}: {reason}"),
                        "no such component",
                    ));
                    continue;
                }
            };
            if let Some(pin) = &step.sha256
                && !component.sha256.eq_ignore_ascii_case(&pin.value)
            {
                out.push(Diagnostic::error(
                    Rule::PluginHashMismatch,
                    pin.span,
                    format!(
                        "alert `{name}`: {} has sha256 {}, not its pin",
                        dir.join(step.uses.value_text()).display(),
                        component.sha256
                    ),
                    "does not match the file",
                ));
                continue;
            }
            let loaded = self.load(component.sha256.clone(), &component.bytes);
            match loaded {
                Ok(plugin) => {
                    out.extend(capability_checks(step, &plugin));
                    if !step.config_invalid {
                        out.extend(self.config_checks("alerts", name, step, &plugin));
                    }
                }
                Err(e) => out.push(Diagnostic::error(
                    Rule::PluginLoad,
                    step.uses.span,
                    format!(
                        "alert `{name}`: plugin `{}` cannot be used: {e}",
                        step.uses.value_text()
                    ),
                    "not a usable step component",
                )),
            }
        }
        out
    }

    fn config_checks(
        &self,
        plan: &str,
        group: &str,
        step: &Step,
        plugin: &Plugin,
    ) -> Vec<Diagnostic> {
        let Some(runtime) = &self.runtime else {
            return Vec::new();
        };
        let config = step
            .config
            .as_ref()
            .map(|c| serde_json::Value::Object(c.value.clone()).to_string())
            .unwrap_or_else(|| "{}".into());
        let operation = step
            .on
            .as_ref()
            .and_then(|ops| ops.first())
            .map(|op| match op.value {
                Operation::Test => wit::Operation::Test,
                Operation::Planned => wit::Operation::Planned,
                Operation::Unplanned => wit::Operation::Unplanned,
                Operation::Failback => wit::Operation::Failback,
                Operation::Cleanup => wit::Operation::Cleanup,
            })
            .unwrap_or(wit::Operation::Test);
        let context = wit::StepContext {
            plan: plan.to_string(),
            run_id: "validate".into(),
            operation,
            direction: wit::Direction::Forward,
            group: group.to_string(),
            step: step
                .name
                .as_ref()
                .map(|n| n.value.clone())
                .unwrap_or_else(|| plugin.info().name.clone()),
            attempt: 1,
            dry_run: true,
        };
        let span = step
            .config
            .as_ref()
            .map(|c| c.span)
            .unwrap_or(step.uses.span);
        let uses = step.uses.value_text();
        let request = StepRequest::offline(config, context);
        let validated = std::thread::scope(|s| {
            s.spawn(|| {
                runtime
                    .block_on(plugin.validate(&request))
                    .map_err(Box::new)
            })
            .join()
        });
        let Ok(validated) = validated else {
            return vec![Diagnostic::error(
                Rule::PluginConfig,
                span,
                format!("`{uses}`: the plugin validation thread panicked"),
                "not validated",
            )];
        };
        match validated {
            Ok(problems) => problems
                .into_iter()
                .map(|problem| {
                    Diagnostic::error(
                        Rule::PluginConfig,
                        span,
                        format!("`{uses}`: {problem}"),
                        "rejected by the plugin's `validate`",
                    )
                })
                .collect(),
            Err(report) => vec![Diagnostic::error(
                Rule::PluginLoad,
                step.uses.span,
                format!(
                    "`{uses}`: `validate` did not complete: {}",
                    report.outcome.summary()
                ),
                "plugin failed while validating",
            )],
        }
    }
}

/// What a capability needs from `allow`, for the diagnostic.
fn capability_grant(capability: Capability) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match capability {
        Capability::KvWrite => ("write run-scoped kv keys", "kv", "[\"key\"]"),
        Capability::Recovery => ("restore recovery points", "vms", "[\"vm\"]"),
        Capability::Compute => ("start and stop VMs", "vms", "[\"vm\"]"),
        Capability::Network => ("read VM addresses", "vms", "[\"vm\"]"),
        Capability::ProbeTcp => ("probe TCP addresses", "tcp", "[\"{vm.NAME.ip}:PORT\"]"),
        Capability::ProbeHttp => (
            "probe HTTP URLs or send HTTP requests",
            "http",
            "[\"http://{vm.NAME.ip}:PORT/\"]",
        ),
        Capability::Inventory | Capability::Approval => return None,
    })
}

fn capability_checks(step: &Step, plugin: &Plugin) -> Vec<Diagnostic> {
    let allow = step.allow.clone().unwrap_or_default();
    let mut reported: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for capability in &plugin.info().capabilities {
        let Some((what, key, example)) = capability_grant(*capability) else {
            continue;
        };
        let granted = match key {
            "kv" => !allow.kv.is_empty(),
            "vms" => !allow.vms.is_empty(),
            "tcp" => !allow.tcp.is_empty(),
            _ => !allow.http.is_empty(),
        };
        if granted || reported.contains(&key) {
            continue;
        }
        reported.push(key);
        out.push(
            Diagnostic::error(
                Rule::CapabilityNotGranted,
                step.uses.span,
                format!(
                    "`{}` wants to {what}, but this step's `allow.{key}` grants nothing",
                    step.uses.value_text()
                ),
                "capability not granted",
            )
            .with_help(format!(
                "add `allow = {{ {key} = {example} }}` to the step, naming only what it needs"
            )),
        );
    }
    out
}
