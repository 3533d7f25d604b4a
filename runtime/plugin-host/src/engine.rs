//! The one wasmtime engine of a process, and the thread that drives epoch deadlines.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::cache::CompileCache;

/// How often the epoch advances: the granularity of step deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// The most linear memory any one step may be given.
    pub max_memory: usize,
    /// Steps that may run at once (pooling slots).
    pub max_concurrent_steps: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_memory: 256 << 20,
            max_concurrent_steps: 64,
        }
    }
}

/// The engine shared by every plugin of a process.
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) cache: Option<Arc<CompileCache>>,
    pub(crate) max_memory: usize,
    _ticker: Arc<Ticker>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("cache", &self.cache)
            .field("max_memory", &self.max_memory)
            .finish_non_exhaustive()
    }
}

fn base_config() -> Config {
    let mut config = Config::new();
    config
        .strategy(wasmtime::Strategy::Cranelift)
        .epoch_interruption(true)
        // Plan steps use no component-model async; calls are ~3× cheaper without it.
        .concurrency_support(false)
        .max_wasm_stack(1 << 20);
    config
}

impl PluginEngine {
    pub fn new(options: EngineOptions) -> Result<Self, String> {
        // Pooling: instances come from preallocated slots (fast); sized so interpreter
        // components (a componentize-py step holds 38 core instances) fit. If the address space
        // cannot be reserved, fall back to allocating on demand.
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_component_instances(options.max_concurrent_steps)
            .total_core_instances(options.max_concurrent_steps * 48)
            .max_core_instances_per_component(64)
            .total_memories(options.max_concurrent_steps * 4)
            .max_memories_per_component(4)
            .total_tables(options.max_concurrent_steps * 48)
            .max_tables_per_component(64)
            .total_stacks(options.max_concurrent_steps)
            .max_memory_size(options.max_memory)
            .max_component_instance_size(4 << 20)
            .max_core_instance_size(4 << 20);
        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            Err(_) => Engine::new(&base_config()).map_err(|e| crate::describe_error(&e))?,
        };
        let cache = options
            .cache_dir
            .map(|dir| CompileCache::new(dir, &engine).map(Arc::new))
            .transpose()?;
        let ticker = Ticker::start(engine.clone());
        Ok(Self {
            engine,
            cache,
            max_memory: options.max_memory,
            _ticker: Arc::new(ticker),
        })
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lifeboat-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
