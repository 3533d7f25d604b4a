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

/// How the engine allocates instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// From preallocated slots (fast).
    Pooling,
    /// On demand, because the pool's address space could not be reserved (`reason`). Every
    /// limit still holds; instantiation is slower. Said, never silent.
    OnDemand { reason: String },
}

/// The engine shared by every plugin of a process.
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) cache: Option<Arc<CompileCache>>,
    pub(crate) max_memory: usize,
    allocation: Allocation,
    _ticker: Arc<Ticker>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("cache", &self.cache)
            .field("max_memory", &self.max_memory)
            .field("allocation", &self.allocation)
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
        let (engine, allocation) = match Engine::new(&config) {
            Ok(engine) => (engine, Allocation::Pooling),
            Err(e) => {
                let reason = crate::describe_error(&e);
                let engine = Engine::new(&base_config()).map_err(|e| crate::describe_error(&e))?;
                (engine, Allocation::OnDemand { reason })
            }
        };
        let cache = options
            .cache_dir
            .map(|dir| CompileCache::new(dir, &engine).map(Arc::new))
            .transpose()?;
        // No ticker, no CPU deadline: an engine that cannot stop a spinning step is refused.
        let ticker = Ticker::start(engine.clone()).map_err(|e| {
            format!(
                "cannot start the epoch ticker thread, so step deadlines could not be enforced: {e}"
            )
        })?;
        Ok(Self {
            engine,
            cache,
            max_memory: options.max_memory,
            allocation,
            _ticker: Arc::new(ticker),
        })
    }

    /// How instances are allocated (pooling, or on demand and why).
    pub fn allocation(&self) -> &Allocation {
        &self.allocation
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lifeboat-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    /// Regression: a pool that cannot be reserved fell back to on-demand allocation silently.
    /// Now the engine says so, with the reason.
    #[test]
    fn a_pool_too_large_to_reserve_falls_back_and_says_why() {
        let engine = PluginEngine::new(EngineOptions {
            max_memory: 1 << 40,
            max_concurrent_steps: 1 << 20,
            ..EngineOptions::default()
        })
        .unwrap();
        match engine.allocation() {
            Allocation::OnDemand { reason } => assert!(!reason.is_empty()),
            Allocation::Pooling => panic!("a 2^60-byte pool was reserved"),
        }
        let normal = PluginEngine::new(EngineOptions::default()).unwrap();
        assert_eq!(normal.allocation(), &Allocation::Pooling);
    }
}
