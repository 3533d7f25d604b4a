//! `lifeboat plugin inspect STEP.wasm`: what a step component says of itself (`describe`), the
//! host interfaces it imports, what a plan must grant it, and the sha256 to pin it by — before
//! it is in any plan. The component is loaded exactly as a plan's step is (same checks, same
//! sandbox), so what passes here loads in a plan.

use std::path::Path;

use lifeboat_orchestrator::exit_codes;
use lifeboat_plugin_host::wit::Capability;
use lifeboat_plugin_host::{EngineOptions, Plugin, PluginEngine};
use serde::Serialize;

#[derive(Serialize)]
struct Inspected {
    path: String,
    sha256: String,
    name: String,
    version: String,
    api_version: String,
    capabilities: Vec<&'static str>,
    /// What each capability needs in the step's `allow` (none for some).
    grants: Vec<String>,
    imports: Vec<String>,
    config_schema: Option<serde_json::Value>,
}

/// The name a capability has in the WIT package and in diagnostics.
fn capability_name(c: Capability) -> &'static str {
    match c {
        Capability::KvWrite => "kv-write",
        Capability::Inventory => "inventory",
        Capability::Recovery => "recovery",
        Capability::Compute => "compute",
        Capability::Network => "network",
        Capability::ProbeTcp => "probe-tcp",
        Capability::ProbeHttp => "probe-http",
        Capability::Approval => "approval",
    }
}

/// What `allow` must say for a capability, if anything.
fn grant(c: Capability) -> Option<&'static str> {
    Some(match c {
        Capability::KvWrite => "allow.kv = [\"key\", …]",
        Capability::Recovery | Capability::Compute | Capability::Network => {
            "allow.vms = [\"vm\", …]"
        }
        Capability::ProbeTcp => "allow.tcp = [\"{vm.NAME.ip}:PORT\", …]",
        Capability::ProbeHttp => "allow.http = [\"http://{vm.NAME.ip}:PORT/\", …]",
        Capability::Inventory | Capability::Approval => return None,
    })
}

pub fn inspect(path: &Path, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: cannot read {}: {e}", path.display());
            return exit_codes::FAILED;
        }
    };
    let engine = match PluginEngine::new(EngineOptions {
        cache_dir: lifeboat_loader::default_cache_dir(),
        ..EngineOptions::default()
    }) {
        Ok(e) => e,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: the plugin engine could not start: {e}");
            return exit_codes::INTERNAL;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: cannot start a runtime: {e}");
            return exit_codes::INTERNAL;
        }
    };
    let plugin = match rt.block_on(Plugin::load(&engine, &bytes, None)) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(
                io.stderr,
                "error: {} is not a step Lifeboat can run: {e}",
                path.display()
            );
            return exit_codes::INVALID;
        }
    };
    let info = plugin.info();
    let caps: Vec<Capability> = info.capabilities.clone();
    let out = Inspected {
        path: path.display().to_string(),
        sha256: plugin.sha256().to_string(),
        name: info.name.clone(),
        version: info.version.clone(),
        api_version: info.api_version.clone(),
        capabilities: caps.iter().map(|c| capability_name(*c)).collect(),
        grants: caps
            .iter()
            .filter_map(|c| grant(*c))
            .map(String::from)
            .collect(),
        imports: plugin.imports().to_vec(),
        config_schema: info
            .config_schema
            .as_deref()
            .map(|s| serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.into()))),
    };
    if json {
        crate::print_json(io, &out);
        return exit_codes::OK;
    }
    let mut text = format!(
        "{} {} (built against lifeboat:plan@{})\n  capabilities: {}\n",
        out.name,
        out.version,
        out.api_version,
        if out.capabilities.is_empty() {
            "none".to_string()
        } else {
            out.capabilities.join(", ")
        }
    );
    for g in &out.grants {
        text.push_str(&format!("  a plan grants it: {g}\n"));
    }
    text.push_str(&format!("  imports: {}\n", out.imports.join(", ")));
    match &out.config_schema {
        Some(schema) => text.push_str(&format!(
            "  `with` schema: {}\n",
            serde_json::to_string(schema).unwrap_or_default()
        )),
        None => text.push_str("  `with` schema: none published\n"),
    }
    text.push_str(&format!(
        "  sha256: {}\n  pin it: uses = \"{}\", sha256 = \"{}\"\n",
        out.sha256, out.path, out.sha256
    ));
    let _ = io.stdout.write_all(text.as_bytes());
    exit_codes::OK
}
