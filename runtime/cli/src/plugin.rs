//! `lifeboat plugin inspect STEP.wasm`: what a step component says of itself (`describe`), the
//! host interfaces it imports, what a plan must grant it, and the sha256 to pin it by — before
//! it is in any plan. The component is loaded exactly as a plan's step is (same checks, same
//! sandbox), so what passes here loads in a plan.

use std::path::Path;

use lifeboat_api::exit_codes;
use lifeboat_plugin_host::Plugin;
use lifeboat_plugin_host::wit::Capability;
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

/// Loads the component at `path` as a plan's step is loaded (the engine, the checks, the
/// sandbox), with a runtime to run it on; on failure, the exit code after saying why.
fn load(path: &Path, io: &mut crate::Io<'_>) -> Result<(tokio::runtime::Runtime, Plugin), u8> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: cannot read {}: {e}", path.display());
            return Err(exit_codes::FAILED);
        }
    };
    let engine = match lifeboat_loader::engine() {
        Ok(e) => e,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {e}");
            return Err(exit_codes::INTERNAL);
        }
    };
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        let _ = writeln!(io.stderr, "error: cannot start a runtime");
        return Err(exit_codes::INTERNAL);
    };
    match rt.block_on(Plugin::load(&engine, &bytes, None)) {
        Ok(p) => Ok((rt, p)),
        Err(e) => {
            let _ = writeln!(
                io.stderr,
                "error: {} is not a step Lifeboat can run: {e}",
                path.display()
            );
            Err(exit_codes::INVALID)
        }
    }
}

pub fn inspect(path: &Path, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let (_rt, plugin) = match load(path, io) {
        Ok(l) => l,
        Err(code) => return code,
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

/// What `lifeboat plugin test` is asked to run.
#[derive(Debug)]
pub struct TestRequest {
    pub component: std::path::PathBuf,
    /// `key=value`: the step's `with` (a value that parses as JSON is that JSON, else a string).
    pub with: Vec<String>,
    /// `tcp=ADDR`, `http=URL`, `kv=KEY`, `vms=VM`: what the step's `allow` would grant.
    pub allow: Vec<String>,
    pub operation: lifeboat_plugin_host::wit::Operation,
    pub timeout: std::time::Duration,
}

#[derive(Serialize)]
struct Tested {
    outcome: String,
    ok: bool,
    /// Stopped by the sandbox (deadline, memory cap, trap, an ungranted call): it harmed nothing.
    contained: bool,
    outputs: Option<serde_json::Value>,
    log: Vec<(String, String)>,
    stdout: String,
    stderr: String,
    seconds: f64,
    /// What the step would have touched and did not (a request not sent, an address assumed
    /// to answer, an approval granted).
    simulated: Vec<String>,
}

/// `lifeboat plugin test`: runs the step's `run` once in the sandbox, with the grants given, as
/// `plan simulate` runs it: a dry run against a simulated site with no VMs (probes of granted
/// addresses are assumed to answer, approvals are granted, requests are not sent, the clock is
/// the simulation's), and prints everything it did. Nothing outside is touched.
pub fn test(req: &TestRequest, json: bool, io: &mut crate::Io<'_>) -> u8 {
    use lifeboat_plugin_host::wit::{Direction, Operation, StepContext};
    use lifeboat_plugin_host::{Grants, StepLimits, StepOutcome, StepRequest};

    let mut config = serde_json::Map::new();
    for kv in &req.with {
        let Some((k, v)) = kv.split_once('=') else {
            let _ = writeln!(io.stderr, "error: --with `{kv}`: write KEY=VALUE");
            return exit_codes::USAGE;
        };
        let value = serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.into()));
        config.insert(k.to_string(), value);
    }
    let mut grants = Grants {
        origin: "lifeboat plugin test --allow".into(),
        ..Grants::default()
    };
    for a in &req.allow {
        match a.split_once('=') {
            Some(("tcp", v)) => grants.tcp.push(v.into()),
            Some(("http", v)) => grants.http.push(v.into()),
            Some(("kv", v)) => grants.kv.push(v.into()),
            Some(("vms", v)) => grants.vms.push(v.into()),
            _ => {
                let _ = writeln!(
                    io.stderr,
                    "error: --allow `{a}`: write tcp=ADDR, http=URL, kv=KEY or vms=VM"
                );
                return exit_codes::USAGE;
            }
        }
    }
    let (rt, plugin) = match load(&req.component, io) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let operation = req.operation;
    let mut request = StepRequest::offline(
        serde_json::Value::Object(config).to_string(),
        StepContext {
            plan: "plugin-test".into(),
            run_id: "plugin-test-1".into(),
            operation,
            direction: if operation == Operation::Failback {
                Direction::Reverse
            } else {
                Direction::Forward
            },
            group: "test".into(),
            step: plugin.info().name.clone(),
            attempt: 1,
            dry_run: true,
        },
    );
    let world = std::sync::Arc::new(lifeboat_orchestrator::simulate::world::SimWorld::empty());
    world.begin_step(&plugin.info().name, "test", req.timeout);
    request.services = world.clone();
    request.grants = std::sync::Arc::new(grants);
    request.limits = StepLimits {
        timeout: req.timeout,
        ..StepLimits::default()
    };
    let report = rt.block_on(plugin.run(&request));
    let (ok, contained, outputs) = match &report.outcome {
        StepOutcome::Ok { outputs } => (true, false, serde_json::from_str(outputs).ok()),
        StepOutcome::Failed(_) => (false, false, None),
        StepOutcome::Timeout { .. }
        | StepOutcome::OutOfMemory { .. }
        | StepOutcome::Trap { .. }
        | StepOutcome::Denied { .. } => (false, true, None),
    };
    let out = Tested {
        outcome: report.outcome.summary(),
        ok,
        contained,
        outputs,
        log: report
            .log
            .iter()
            .map(|l| (l.level.to_string(), l.message.clone()))
            .collect(),
        stdout: report.stdout.clone(),
        stderr: report.stderr.clone(),
        seconds: report.elapsed.as_secs_f64(),
        simulated: world.notes().into_iter().map(|n| n.text).collect(),
    };
    if json {
        crate::print_json(io, &out);
    } else {
        let mut text = String::new();
        for (level, message) in &out.log {
            text.push_str(&format!("  {level:5} {message}\n"));
        }
        if report.log_dropped > 0 {
            text.push_str(&format!(
                "  … {} log lines dropped (over the limit)\n",
                report.log_dropped
            ));
        }
        for (name, stream) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            for line in stream.lines() {
                text.push_str(&format!("  [{name}] {line}\n"));
            }
        }
        if let Some(o) = &out.outputs {
            text.push_str(&format!("  outputs: {o}\n"));
        }
        for n in &out.simulated {
            text.push_str(&format!("  simulated: {n}\n"));
        }
        text.push_str(&format!(
            "{}: {}{} in {:.2}s\n",
            plugin.info().name,
            out.outcome,
            if contained {
                " — contained by the sandbox"
            } else {
                ""
            },
            out.seconds
        ));
        let _ = io.stdout.write_all(text.as_bytes());
    }
    if ok {
        exit_codes::OK
    } else {
        exit_codes::FAILED
    }
}
