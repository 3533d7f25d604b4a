//! Write a Lifeboat plan step in Rust.
//!
//! ```ignore
//! use lifeboat_plugin_sdk::{Config, Error, Outputs, Step, StepContext};
//!
//! struct Hello;
//!
//! impl Step for Hello {
//!     const NAME: &'static str = "hello";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!
//!     fn run(config: &Config, _context: &StepContext) -> Result<Outputs, Error> {
//!         let who = config.str("who").unwrap_or("world");
//!         lifeboat_plugin_sdk::info(&format!("hello, {who}"));
//!         Ok(Outputs::new())
//!     }
//! }
//!
//! lifeboat_plugin_sdk::export_step!(Hello);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to pin in a plan.

pub use serde_json;

/// The bindings generated from `wit/`. Host interfaces live under `bindings::lifeboat::plan`.
#[allow(clippy::too_many_arguments)] // generated glue
pub mod bindings {
    wit_bindgen::generate!({
        world: "step",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_step_world",
        default_bindings_module: "lifeboat_plugin_sdk::bindings",
    });
}

pub use bindings::lifeboat::plan::types::{Capability, Direction, Operation};
pub use bindings::lifeboat::plan::{
    approval, clock, compute, http, inventory, kv, log as host_log, network, probe, recovery,
};
pub use bindings::{Error, PluginInfo, StepContext};

/// The version of the WIT package this SDK builds against.
pub const API_VERSION: &str = "0.1.1";

/// A step's `with` table, parsed from JSON.
#[derive(Debug, Clone)]
pub struct Config(pub serde_json::Value);

impl Config {
    pub fn parse(json: &str) -> Result<Self, String> {
        serde_json::from_str(json)
            .map(Config)
            .map_err(|e| format!("config is not JSON: {e}"))
    }

    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.get(key)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.as_u64())
    }

    /// Keys of the config that are not in `known`, for `validate`.
    pub fn unknown_keys(&self, known: &[&str]) -> Vec<String> {
        match &self.0 {
            serde_json::Value::Object(map) => map
                .keys()
                .filter(|k| !known.contains(&k.as_str()))
                .map(|k| {
                    format!(
                        "unknown config key `{k}`; expected one of: {}",
                        known.join(", ")
                    )
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Milliseconds in a duration written like `500ms`, `30s`, `5m`, `1h` (a bare number is seconds).
pub fn duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like `30s`"))?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m or h)"
            ));
        }
    };
    Ok(n.saturating_mul(scale))
}

/// What `run` returns: JSON kept in the run journal and handed to `undo`.
pub type Outputs = serde_json::Map<String, serde_json::Value>;

/// A plan step. Implement `run`; the rest has defaults.
pub trait Step {
    /// The step's name, e.g. `pg-ready`.
    const NAME: &'static str;
    /// The step's own version.
    const VERSION: &'static str;
    /// The host interfaces the step calls; the plan must grant each.
    const CAPABILITIES: &'static [Capability] = &[];

    /// A JSON Schema for `with`, if you publish one.
    fn config_schema() -> Option<String> {
        None
    }

    /// Every problem with `config`; empty when valid. Called by `lifeboat plan validate`.
    fn validate(_config: &Config, _context: &StepContext) -> Vec<String> {
        Vec::new()
    }

    /// Do the step.
    fn run(config: &Config, context: &StepContext) -> Result<Outputs, Error>;

    /// Reverse `run`, given its outputs (test-failover cleanup).
    fn undo(_config: &Config, _context: &StepContext, _outputs: &Outputs) -> Result<(), Error> {
        Ok(())
    }
}

/// Log at info level into the step log.
pub fn info(message: &str) {
    host_log::log(host_log::Level::Info, message);
}

/// Log at warn level into the step log.
pub fn warn(message: &str) {
    host_log::log(host_log::Level::Warn, message);
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    pub fn describe<S: Step>() -> PluginInfo {
        PluginInfo {
            name: S::NAME.to_string(),
            version: S::VERSION.to_string(),
            api_version: API_VERSION.to_string(),
            config_schema: S::config_schema(),
            capabilities: S::CAPABILITIES.to_vec(),
        }
    }

    pub fn validate<S: Step>(config: String, context: StepContext) -> Vec<String> {
        match Config::parse(&config) {
            Ok(config) => S::validate(&config, &context),
            Err(e) => vec![e],
        }
    }

    pub fn run<S: Step>(config: String, context: StepContext) -> Result<String, Error> {
        let config = Config::parse(&config).map_err(Error::Invalid)?;
        let outputs = S::run(&config, &context)?;
        Ok(serde_json::Value::Object(outputs).to_string())
    }

    pub fn undo<S: Step>(
        config: String,
        context: StepContext,
        outputs: String,
    ) -> Result<(), Error> {
        let config = Config::parse(&config).map_err(Error::Invalid)?;
        let outputs = match serde_json::from_str(&outputs) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => Outputs::new(),
        };
        S::undo(&config, &context, &outputs)
    }
}

/// Export a [`Step`] as the component's `step` world.
#[macro_export]
macro_rules! export_step {
    ($step:ty) => {
        struct __LifeboatStep;

        impl $crate::bindings::Guest for __LifeboatStep {
            fn describe() -> $crate::PluginInfo {
                $crate::__private::describe::<$step>()
            }
            fn validate(config: String, context: $crate::StepContext) -> Vec<String> {
                $crate::__private::validate::<$step>(config, context)
            }
            fn run(config: String, context: $crate::StepContext) -> Result<String, $crate::Error> {
                $crate::__private::run::<$step>(config, context)
            }
            fn undo(config: String, context: $crate::StepContext, outputs: String) -> Result<(), $crate::Error> {
                $crate::__private::undo::<$step>(config, context, outputs)
            }
        }

        $crate::bindings::export_step_world!(__LifeboatStep with_types_in $crate::bindings);
    };
}
