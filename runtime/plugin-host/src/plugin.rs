//! A loaded plugin, and one execution of it in a fresh, limited `Store`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::engine::PluginEngine;
use crate::grants::Grants;
use crate::host::{Denied, MemoryCap, StepState};
use crate::outcome::{LoadError, StepOutcome, StepReport};
use crate::services::{HostServices, NoServices, RunKv};
use crate::wit::lifeboat::plan as iface;
use crate::wit::{Error as PluginError, PluginInfo, StepContext, StepPre};

/// Limits of one step execution.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    /// Linear memory cap (default 64 MiB).
    pub memory: usize,
    /// The whole call, instantiation included (default 5 minutes; the plan's `timeout`).
    pub timeout: Duration,
    /// Each host call (default 30 s).
    pub host_call_timeout: Duration,
    /// Bytes the guest may pass to the host in one call (default 4 MiB).
    pub hostcall_fuel: usize,
    /// Bytes of stdout and of stderr kept (default 256 KiB each).
    pub output_bytes: usize,
}

impl Default for StepLimits {
    fn default() -> Self {
        Self {
            memory: 64 << 20,
            timeout: Duration::from_secs(300),
            host_call_timeout: Duration::from_secs(30),
            hostcall_fuel: 4 << 20,
            output_bytes: 256 << 10,
        }
    }
}

/// A dry run promises that nothing real is touched: the host keeps that promise by running one
/// only against simulated services, whatever the step does with the flag.
fn unsimulated_dry_run(request: &StepRequest) -> Option<StepReport> {
    (request.context.dry_run && !request.services.simulated()).then(|| StepReport {
        outcome: StepOutcome::Failed(crate::wit::Error::Invalid(
            "a dry run needs simulated host services; these reach real VMs".into(),
        )),
        log: Vec::new(),
        log_dropped: 0,
        stdout: String::new(),
        stderr: String::new(),
        elapsed: Duration::ZERO,
    })
}

/// One execution's inputs.
#[derive(Clone)]
pub struct StepRequest {
    /// The step's `with` table as JSON.
    pub config: String,
    pub context: StepContext,
    pub grants: Arc<Grants>,
    pub services: Arc<dyn HostServices>,
    pub kv: RunKv,
    pub limits: StepLimits,
    /// The key of this execution (run, step, attempt). Every effect a host call makes is keyed
    /// `{effect_key}/{action}/{vm}` by the host; a key the plugin passes is ignored, so no step
    /// can claim another's effects. Empty offline.
    pub effect_key: String,
}

impl std::fmt::Debug for StepRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepRequest")
            .field("config", &self.config)
            .field("context", &self.context)
            .field("grants", &self.grants)
            .field("limits", &self.limits)
            .field("effect_key", &self.effect_key)
            .finish_non_exhaustive()
    }
}

impl StepRequest {
    /// A request with no grants and no services, as `plan validate` makes.
    pub fn offline(config: String, context: StepContext) -> Self {
        Self {
            config,
            context,
            grants: Arc::new(Grants::default()),
            services: Arc::new(NoServices),
            kv: RunKv::default(),
            limits: StepLimits {
                timeout: Duration::from_secs(10),
                ..StepLimits::default()
            },
            effect_key: String::new(),
        }
    }
}

/// The WASI interfaces a plugin may import: output streams and clocks and randomness, with an
/// empty environment. Never the file system, sockets or HTTP.
const ALLOWED_WASI: &[&str] = &[
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/random",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/stdin",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/terminal-",
];

/// Every Lifeboat interface is linked for every step: each host function checks the step's
/// grant on every call. (Leaving ungranted interfaces unlinked would refuse interpreted
/// plugins, which import the whole world, and stop nothing the call-time check does not.)
fn build_linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<StepState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_proxy_interfaces_async(&mut linker)?;
    wasmtime_wasi::p2::bindings::cli::environment::add_to_linker::<
        StepState,
        wasmtime_wasi::cli::WasiCli,
    >(
        &mut linker,
        <StepState as wasmtime_wasi::cli::WasiCliView>::cli,
    )?;
    wasmtime_wasi::p2::bindings::cli::exit::add_to_linker::<StepState, wasmtime_wasi::cli::WasiCli>(
        &mut linker,
        <StepState as wasmtime_wasi::cli::WasiCliView>::cli,
    )?;
    // Rust's standard library asks whether stdio is a terminal; it never is.
    {
        use wasmtime_wasi::cli::{WasiCli, WasiCliView};
        use wasmtime_wasi::p2::bindings::cli;
        cli::terminal_input::add_to_linker::<StepState, WasiCli>(&mut linker, StepState::cli)?;
        cli::terminal_output::add_to_linker::<StepState, WasiCli>(&mut linker, StepState::cli)?;
        cli::terminal_stdin::add_to_linker::<StepState, WasiCli>(&mut linker, StepState::cli)?;
        cli::terminal_stdout::add_to_linker::<StepState, WasiCli>(&mut linker, StepState::cli)?;
        cli::terminal_stderr::add_to_linker::<StepState, WasiCli>(&mut linker, StepState::cli)?;
    }
    let l = &mut linker;
    iface::types::add_to_linker::<_, HasSelf<_>>(l, |s| s)?;
    iface::log::add_to_linker::<_, HasSelf<_>>(l, |s| s)?;
    iface::kv::add_to_linker::<_, HasSelf<_>>(l, |s| s)?;
    iface::inventory::add_to_linker::<_, HasSelf<_>>(l, |s| s)?;
    iface::approval::add_to_linker::<_, HasSelf<_>>(l, |s| s)?;
    iface::http::add_to_linker::<_, HasSelf<_>>(l, |s| s)?;
    iface::clock::add_to_linker::<_, HasSelf<_>>(l, |s| s)?;
    iface::recovery::add_to_linker::<_, HasSelf<_>>(l, |s| s)?;
    iface::compute::add_to_linker::<_, HasSelf<_>>(l, |s| s)?;
    iface::network::add_to_linker::<_, HasSelf<_>>(l, |s| s)?;
    iface::probe::add_to_linker::<_, HasSelf<_>>(l, |s| s)?;
    Ok(linker)
}

/// A verified, compiled component that exports the `step` world.
pub struct Plugin {
    engine: PluginEngine,
    sha256: String,
    imports: Vec<String>,
    info: PluginInfo,
    /// Imports resolved once; each execution only instantiates.
    pre: StepPre<StepState>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("sha256", &self.sha256)
            .field("info", &self.info)
            .field("imports", &self.imports)
            .finish_non_exhaustive()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `lifeboat:plan/log@0.2.0` → `Some("0.2.0")`.
fn lifeboat_version(import: &str) -> Option<&str> {
    import
        .strip_prefix("lifeboat:plan/")?
        .split_once('@')
        .map(|(_, v)| v)
}

/// Whether a `0.x.y` version is one this host speaks (`0.1.*`).
fn compatible(version: &str) -> bool {
    let mut parts = version.split('.');
    matches!((parts.next(), parts.next()), (Some("0"), Some("1")))
}

impl Plugin {
    /// Verify, compile (or load from the cache), check imports and call `describe`.
    pub async fn load(
        engine: &PluginEngine,
        bytes: &[u8],
        expected_sha256: Option<&str>,
    ) -> Result<Self, LoadError> {
        let sha256 = sha256_hex(bytes);
        if let Some(expected) = expected_sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(LoadError::HashMismatch {
                expected: expected.to_string(),
                actual: sha256,
            });
        }
        let cached = engine
            .cache
            .as_ref()
            .and_then(|c| c.load(&engine.engine, &sha256));
        let component = match cached {
            Some(component) => component,
            None => {
                let component = Component::new(&engine.engine, bytes)
                    .map_err(|e| LoadError::Invalid(crate::describe_error(&e)))?;
                if let Some(cache) = &engine.cache {
                    cache.store(&sha256, &component);
                }
                component
            }
        };
        let imports: Vec<String> = component
            .component_type()
            .imports(&engine.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        for import in &imports {
            if let Some(version) = lifeboat_version(import) {
                if !compatible(version) {
                    return Err(LoadError::ApiVersion {
                        wanted: version.to_string(),
                        supported: crate::API_VERSION.to_string(),
                    });
                }
            } else if !ALLOWED_WASI
                .iter()
                .any(|allowed| import.starts_with(allowed))
            {
                return Err(LoadError::ForbiddenImport {
                    import: import.clone(),
                });
            }
        }
        let pre = build_linker(&engine.engine)
            .and_then(|linker| linker.instantiate_pre(&component))
            .and_then(StepPre::new)
            .map_err(|e| LoadError::Invalid(crate::describe_error(&e)))?;
        let mut plugin = Self {
            engine: engine.clone(),
            sha256,
            imports,
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                api_version: String::new(),
                config_schema: None,
                capabilities: Vec::new(),
            },
            pre,
        };
        let context = StepContext {
            plan: String::new(),
            run_id: String::new(),
            operation: crate::wit::Operation::Test,
            direction: crate::wit::Direction::Forward,
            group: String::new(),
            step: "describe".into(),
            attempt: 1,
            dry_run: true,
        };
        let request = StepRequest::offline(String::new(), context);
        let (result, report) = plugin.execute(&request, Call::Describe).await;
        match result {
            Some(Returned::Describe(info)) => {
                if !compatible(&info.api_version) {
                    return Err(LoadError::ApiVersion {
                        wanted: info.api_version,
                        supported: crate::API_VERSION.to_string(),
                    });
                }
                plugin.info = info;
                Ok(plugin)
            }
            _ => Err(LoadError::Describe(report.outcome.summary())),
        }
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The component's imports, e.g. `lifeboat:plan/probe@0.1.0`.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Call `validate`: the plugin's own list of problems with `config`.
    pub async fn validate(&self, request: &StepRequest) -> Result<Vec<String>, StepReport> {
        let (result, report) = self.execute(request, Call::Validate).await;
        match result {
            Some(Returned::Validate(problems)) => Ok(problems),
            _ => Err(report),
        }
    }

    /// Call `run`.
    pub async fn run(&self, request: &StepRequest) -> StepReport {
        if let Some(refused) = unsimulated_dry_run(request) {
            return refused;
        }
        self.execute(request, Call::Run).await.1
    }

    /// Call `undo` with the outputs of a previous `run`.
    pub async fn undo(&self, request: &StepRequest, outputs: &str) -> StepReport {
        if let Some(refused) = unsimulated_dry_run(request) {
            return refused;
        }
        self.execute(request, Call::Undo(outputs.to_string()))
            .await
            .1
    }

    async fn execute(&self, request: &StepRequest, call: Call) -> (Option<Returned>, StepReport) {
        let started = Instant::now();
        let limits = request.limits;
        let label = format!(
            "step `{}` of group `{}`",
            request.context.step, request.context.group
        );
        let pre = self.pre.clone();
        let stdout = MemoryOutputPipe::new(limits.output_bytes);
        let stderr = MemoryOutputPipe::new(limits.output_bytes);
        // Deny by default: no preopened directories, no environment, no arguments, no network.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let memory_limit = limits.memory.min(self.engine.max_memory);
        let state = StepState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap {
                limit: memory_limit,
                hit: false,
            },
            grants: request.grants.clone(),
            services: request.services.clone(),
            kv: request.kv.clone(),
            effect_key: request.effect_key.clone(),
            group: request.context.group.clone(),
            label,
            host_call_timeout: limits.host_call_timeout,
            log: Vec::new(),
            log_bytes: 0,
            log_dropped: 0,
        };
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.memory);
        store.set_hostcall_fuel(limits.hostcall_fuel);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);

        let result = {
            let store = &mut store;
            let config = request.config.as_str();
            let context = &request.context;
            let work = async move {
                let step = pre.instantiate_async(&mut *store).await?;
                Ok::<_, wasmtime::Error>(match call {
                    Call::Describe => Returned::Describe(step.call_describe(&mut *store).await?),
                    Call::Validate => {
                        Returned::Validate(step.call_validate(&mut *store, config, context).await?)
                    }
                    Call::Run => Returned::Run(step.call_run(&mut *store, config, context).await?),
                    Call::Undo(outputs) => Returned::Undo(
                        step.call_undo(&mut *store, config, context, &outputs)
                            .await?,
                    ),
                })
            };
            tokio::time::timeout(limits.timeout, work).await
        };

        let state = store.into_data();
        let (returned, outcome) = match result {
            Err(_) => (
                None,
                StepOutcome::Timeout {
                    after: limits.timeout,
                },
            ),
            Ok(Err(e)) => (None, classify_trap(&e, &state)),
            Ok(Ok(returned)) => {
                let outcome = match &returned {
                    Returned::Run(Ok(outputs)) => StepOutcome::Ok {
                        outputs: outputs.clone(),
                    },
                    Returned::Run(Err(e)) | Returned::Undo(Err(e)) => {
                        StepOutcome::Failed(e.clone())
                    }
                    Returned::Undo(Ok(())) | Returned::Validate(_) | Returned::Describe(_) => {
                        StepOutcome::Ok {
                            outputs: String::from("{}"),
                        }
                    }
                };
                (Some(returned), outcome)
            }
        };
        let text = |pipe: &MemoryOutputPipe| String::from_utf8_lossy(&pipe.contents()).into_owned();
        let report = StepReport {
            outcome,
            log: state.log,
            log_dropped: state.log_dropped,
            stdout: text(&stdout),
            stderr: text(&stderr),
            elapsed: started.elapsed(),
        };
        (returned, report)
    }
}

fn classify_trap(e: &wasmtime::Error, state: &StepState) -> StepOutcome {
    if let Some(denied) = e.downcast_ref::<Denied>() {
        return StepOutcome::Denied {
            message: denied.0.clone(),
        };
    }
    if state.memory.hit {
        return StepOutcome::OutOfMemory {
            limit: state.memory.limit,
        };
    }
    let message = match e.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => "stack overflow".to_string(),
        Some(Trap::UnreachableCodeReached) => {
            "unreachable code reached (a panic or abort in the plugin)".to_string()
        }
        Some(trap) => trap.to_string(),
        None => crate::describe_error(e),
    };
    StepOutcome::Trap { message }
}

enum Call {
    Describe,
    Validate,
    Run,
    Undo(String),
}

enum Returned {
    Describe(PluginInfo),
    Validate(Vec<String>),
    Run(Result<String, PluginError>),
    Undo(Result<(), PluginError>),
}
