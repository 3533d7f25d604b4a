//! The real [`StepRunner`]: each step is its plugin (built-in or a pinned file) run in the
//! sandbox, with the plan's `with` and `allow` filled with this run's values, the run's
//! services behind its host calls, and what it logged journaled.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use lifeboat_loader::Components;
use lifeboat_plan::plan::{Operation, PluginRef};
use lifeboat_plugin_host::wit::{self, StepContext};
use lifeboat_plugin_host::{
    Grants, Plugin, PluginEngine, RunKv, StepLimits, StepOutcome, StepReport, StepRequest,
};

use crate::compile::{Phase, StepRun};
use crate::journal::Event;
use crate::run::{StepError, StepRunner};
use crate::services::RunServices;
use lifeboat_compute::template;

/// Runs a run's steps in the plugin host.
pub struct PluginRunner {
    pub engine: PluginEngine,
    /// File plugins are relative to the plan's folder.
    pub plan_dir: PathBuf,
    pub plan: String,
    pub operation: Operation,
    pub services: Arc<RunServices>,
    pub kv: RunKv,
    /// The run moves VMs back to the plan's source (a failback, or a drill of one): steps see
    /// `direction = reverse`.
    pub reverse: bool,
    /// The configuration's components (what validation read).
    components: Components,
    loaded: Mutex<HashMap<PluginRef, Arc<Plugin>>>,
}

impl std::fmt::Debug for PluginRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRunner")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

pub fn wit_operation(op: Operation) -> wit::Operation {
    match op {
        Operation::Test => wit::Operation::Test,
        Operation::Planned => wit::Operation::Planned,
        Operation::Unplanned => wit::Operation::Unplanned,
        Operation::Failback => wit::Operation::Failback,
        Operation::Cleanup => wit::Operation::Cleanup,
    }
}

impl PluginRunner {
    pub fn new(
        engine: PluginEngine,
        components: Components,
        plan_dir: PathBuf,
        plan: String,
        operation: Operation,
        services: Arc<RunServices>,
    ) -> Self {
        Self {
            engine,
            components,
            plan_dir,
            plan,
            operation,
            services,
            kv: RunKv::default(),
            reverse: operation == Operation::Failback,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// What this run's requests are filled from.
    fn facts(&self) -> Facts<'_> {
        Facts {
            plan: &self.plan,
            operation: self.operation,
            reverse: self.reverse,
            run: &self.services.run,
            inventory: &self.services.inventory,
            plan_groups: &self.services.plan_groups,
            assignments: &self.services.assignments,
            dry_run: false,
        }
    }

    async fn plugin(&self, step: &StepRun) -> Result<Arc<Plugin>, StepError> {
        if let Some(p) = self
            .loaded
            .lock()
            .ok()
            .and_then(|l| l.get(&step.uses).cloned())
        {
            return Ok(p);
        }
        let plugin =
            Arc::new(load_plugin(&self.engine, &self.components, &self.plan_dir, step).await?);
        if let Ok(mut l) = self.loaded.lock() {
            l.insert(step.uses.clone(), plugin.clone());
        }
        Ok(plugin)
    }

    /// The request for one execution of `step`; `key` keys every effect its host calls make.
    fn request(&self, step: &StepRun, attempt: u32, key: &str) -> Result<StepRequest, StepError> {
        self.facts()
            .request(step, attempt, key, self.services.clone(), self.kv.clone())
    }

    fn journal_log(&self, step: &StepRun, attempt: u32, report: &StepReport) {
        let mut lines: Vec<String> = report
            .log
            .iter()
            .map(|l| format!("{}: {}", l.level, l.message))
            .collect();
        if report.log_dropped > 0 {
            lines.push(format!("({} log lines dropped)", report.log_dropped));
        }
        lines.extend(report.stdout.lines().map(|l| format!("stdout: {l}")));
        lines.extend(report.stderr.lines().map(|l| format!("stderr: {l}")));
        if !lines.is_empty() {
            let recorded = self.services.record(Event::StepLog {
                step: step.id.clone(),
                attempt,
                lines,
            });
            if let Err(e) = recorded {
                tracing::warn!(step = %step.id, attempt, error = %lifeboat_plugin_host::plugin_error_text(&e), "cannot journal the step's log");
            }
        }
    }

    /// Calls the step's `undo` with what its `run` returned.
    pub async fn undo(&self, step: &StepRun, outputs: &serde_json::Value) -> Result<(), StepError> {
        let plugin = self.plugin(step).await?;
        // An undo's effects are its own, whichever attempt of the step it undoes.
        let key = format!("{}/{}/undo", self.services.run, step.id);
        let request = self.request(step, 1, &key)?;
        let report = plugin.undo(&request, &outputs.to_string()).await;
        self.journal_log(step, 0, &report);
        match report.outcome {
            StepOutcome::Ok { .. } => Ok(()),
            other => Err(StepError::Outcome(other)),
        }
    }
}

/// Loads `step`'s component as the configuration resolved it (`components`): a built-in, or the
/// plan's file under its pin.
pub async fn load_plugin(
    engine: &PluginEngine,
    components: &Components,
    plan_dir: &std::path::Path,
    step: &StepRun,
) -> Result<Plugin, StepError> {
    let uses = || step.uses.clone();
    let component =
        components
            .get(&step.uses, plan_dir)
            .map_err(|source| StepError::Component {
                uses: uses(),
                source,
            })?;
    // A file plugin runs only under its pin; plan validation already demands one.
    let pin = match &step.uses {
        PluginRef::Builtin(_) => None,
        PluginRef::Path(_) => Some(
            step.sha256
                .as_deref()
                .ok_or_else(|| StepError::Unpinned { uses: uses() })?,
        ),
    };
    Plugin::load(engine, &component.bytes, pin)
        .await
        .map_err(|source| StepError::Load {
            uses: uses(),
            source,
        })
}

/// What a step's request is filled from: the run, its groups and the addresses it assigned.
/// A real run and a simulation fill requests the same way.
#[derive(Debug)]
pub struct Facts<'a> {
    pub plan: &'a str,
    pub operation: Operation,
    /// The run moves VMs back to the plan's source: steps see `direction = reverse`.
    pub reverse: bool,
    pub run: &'a str,
    pub inventory: &'a lifeboat_plan::Inventory,
    pub plan_groups: &'a HashMap<String, Vec<String>>,
    pub assignments: &'a [crate::network::Assignment],
    /// Steps see `dry-run`: the services behind them are simulated.
    pub dry_run: bool,
}

impl Facts<'_> {
    /// A plan placeholder's value in this run: `{vm.NAME.ip}`, `{vm.NAME.nicN.ip}`, `{run.id}`,
    /// `{plan.name}`, `{group.name}`, `{operation}`.
    fn value(&self, step: &StepRun, name: &str) -> Option<String> {
        match name {
            "run.id" => return Some(self.run.to_string()),
            "plan.name" => return Some(self.plan.to_string()),
            "group.name" => return Some(step.group.clone()),
            "operation" => return Some(self.operation.name().to_string()),
            _ => {}
        }
        let rest = name.strip_prefix("vm.")?;
        let (vm, nic) = if let Some(vm) = rest.strip_suffix(".ip") {
            match vm.rsplit_once(".nic") {
                Some((vm, n)) => (vm, n.parse::<usize>().ok()?),
                None => (vm, 0),
            }
        } else {
            return None;
        };
        self.assignments
            .iter()
            .find(|a| a.vm == vm && a.nic == nic)
            .map(|a| a.ip.to_string())
    }

    /// The longest `health.timeout` among the VMs of `step`'s group, if any VM sets one.
    fn health_timeout_ms(&self, step: &StepRun) -> Option<u64> {
        self.plan_groups
            .get(&step.group)?
            .iter()
            .filter_map(|vm| {
                self.inventory
                    .vms
                    .get(vm)?
                    .health
                    .as_ref()?
                    .timeout
                    .as_ref()
            })
            .map(|t| t.value.0.as_millis() as u64)
            .max()
    }

    fn fill(&self, step: &StepRun, text: &str) -> Result<String, StepError> {
        template::fill(text, &|name| self.value(step, name)).map_err(|source| {
            StepError::Placeholder {
                step: step.id.clone(),
                source,
            }
        })
    }

    fn fill_json(
        &self,
        step: &StepRun,
        v: &serde_json::Value,
    ) -> Result<serde_json::Value, StepError> {
        use serde_json::Value;
        Ok(match v {
            Value::String(s) => Value::String(self.fill(step, s)?),
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|x| self.fill_json(step, x))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| Ok((k.clone(), self.fill_json(step, x)?)))
                    .collect::<Result<_, StepError>>()?,
            ),
            other => other.clone(),
        })
    }

    /// The request for one execution of `step`, its host calls served by `services`; `key`
    /// keys every effect they make.
    pub fn request(
        &self,
        step: &StepRun,
        attempt: u32,
        key: &str,
        services: Arc<dyn lifeboat_plugin_host::HostServices>,
        kv: RunKv,
    ) -> Result<StepRequest, StepError> {
        let list = |l: &[String]| -> Result<Vec<String>, StepError> {
            l.iter().map(|s| self.fill(step, s)).collect()
        };
        let grants = Grants {
            vms: list(&step.allow.vms)?,
            tcp: list(&step.allow.tcp)?,
            http: list(&step.allow.http)?,
            kv: list(&step.allow.kv)?,
            origin: format!("plan `{}`, step `{}`", self.plan, step.id),
        };
        let mut config = self.fill_json(step, &step.config)?;
        let boot = step.phase == Phase::Boot;
        // A boot waits as long as its slowest VM's own health timeout (the inventory's).
        if boot
            && let Some(with) = config.as_object_mut()
            && !with.contains_key("health_timeout_ms")
            && let Some(ms) = self.health_timeout_ms(step)
        {
            with.insert("health_timeout_ms".into(), ms.into());
        }
        Ok(StepRequest {
            config: config.to_string(),
            context: StepContext {
                plan: self.plan.to_string(),
                run_id: self.run.to_string(),
                operation: wit_operation(self.operation),
                direction: if self.operation == Operation::Failback || self.reverse {
                    wit::Direction::Reverse
                } else {
                    wit::Direction::Forward
                },
                group: step.group.clone(),
                step: step.id.clone(),
                attempt,
                dry_run: self.dry_run,
            },
            grants: Arc::new(grants),
            services,
            kv,
            limits: StepLimits {
                timeout: step.timeout,
                // A restore of a large disk, or a person's approval, takes longer than a probe.
                host_call_timeout: if boot || step.uses.is_builtin("approval") {
                    step.timeout
                } else {
                    StepLimits::default().host_call_timeout
                },
                ..StepLimits::default()
            },
            effect_key: key.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl StepRunner for PluginRunner {
    async fn run(
        &self,
        step: &StepRun,
        attempt: u32,
        key: &str,
    ) -> Result<serde_json::Value, StepError> {
        let plugin = self.plugin(step).await?;
        let request = self.request(step, attempt, key)?;
        let before = self.kv.entries();
        let report = plugin.run(&request).await;
        self.journal_log(step, attempt, &report);
        // What the step wrote must outlive this process before the step counts as finished.
        let after = self.kv.entries();
        if after != before {
            self.services
                .record(Event::Kv { entries: after })
                .map_err(|e| StepError::Journal(lifeboat_plugin_host::plugin_error_text(&e)))?;
        }
        match report.outcome {
            StepOutcome::Ok { outputs } => {
                Ok(serde_json::from_str(&outputs).unwrap_or(serde_json::Value::String(outputs)))
            }
            other => Err(StepError::Outcome(other)),
        }
    }
}
