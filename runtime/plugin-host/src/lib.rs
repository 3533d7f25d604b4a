//! Runs Lifeboat plan steps as sandboxed WebAssembly components.
//!
//! This crate narrows wasmtime to what Lifeboat needs: one [`PluginEngine`] per process
//! (Cranelift, epoch interruption, pooling allocator, a compiled-component cache on disk), a
//! [`Plugin`] per component (verified by sha256, checked for forbidden imports and API version,
//! described once), and a fresh `Store` per step execution with a memory cap, lowered hostcall
//! fuel, an epoch deadline and a timeout. Every host function checks the step's [`Grants`].
//! Outcomes are typed ([`StepOutcome`]); wasmtime's errors do not leave this crate.

mod cache;
mod engine;
mod grants;
mod host;
mod outcome;
mod plugin;
mod services;

/// Bindings generated from `wit/`, for the types host services exchange with plugins.
pub mod wit {
    wasmtime::component::bindgen!({
        world: "step",
        path: "../../wit",
        imports: { default: async | trappable },
        exports: { default: async },
        additional_derives: [PartialEq],
    });

    pub use lifeboat::plan::types::{Capability, Direction, Operation};
}

pub mod http;

pub use engine::{Allocation, EngineOptions, PluginEngine};
pub use grants::Grants;
pub use outcome::{LoadError, LogLine, StepOutcome, StepReport, plugin_error_text};
pub use plugin::{Plugin, StepLimits, StepRequest};
pub use services::{HostServices, NoServices, RunKv, send_within};

/// The WIT package version this host implements; plugins built for `0.1.x` load.
pub const API_VERSION: &str = "0.1.1";

/// Where wasmtime errors become ours: the full chain as one line.
pub(crate) fn describe_error(e: &wasmtime::Error) -> String {
    let full = format!("{e:#}");
    let first = full.lines().next().unwrap_or_default();
    // wasmparser appends dumps of the bytes it expected; the first line says what is wrong.
    first
        .split(" - expected=")
        .next()
        .unwrap_or(first)
        .trim_end_matches('[')
        .trim()
        .to_string()
}
