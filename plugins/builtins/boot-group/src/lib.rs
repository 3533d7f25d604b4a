//! `builtin:boot-group`: the boot of one plan group. For every VM of the group: pick the
//! recovery point, restore its disks, read its mapped addresses, start it; at most
//! `parallelism` VMs are starting at once; then wait until every VM is running and healthy, or
//! `health_timeout_ms` passes. `undo` stops the VMs it started.
//!
//! `with = { point = "latest-processed", parallelism = 8, health_timeout_ms = 300000, poll_ms = 250 }`

use lifeboat_plugin_sdk::compute::VmState;
use lifeboat_plugin_sdk::serde_json::{Value, json};
use lifeboat_plugin_sdk::{
    Capability, Config, Error, Outputs, Step, StepContext, clock, compute, inventory, network,
    recovery,
};

struct BootGroup;

struct Settings {
    point: String,
    parallelism: usize,
    health_timeout_ms: u64,
    poll_ms: u64,
}

fn settings(config: &Config) -> Settings {
    Settings {
        point: config
            .str("point")
            .unwrap_or("latest-processed")
            .to_string(),
        parallelism: config.u64("parallelism").unwrap_or(8).max(1) as usize,
        health_timeout_ms: config.u64("health_timeout_ms").unwrap_or(300_000),
        poll_ms: config.u64("poll_ms").unwrap_or(250).max(10),
    }
}

/// One VM's progress through the boot.
struct Boot {
    name: String,
    state: VmState,
    record: Value,
}

fn key(context: &StepContext, action: &str, vm: &str) -> String {
    format!(
        "{}/{}/{}/{action}/{vm}",
        context.run_id, context.group, context.step
    )
}

/// How a log line starts: a dry run's restores and starts are the host's simulation, and the
/// log says so.
fn said(context: &StepContext) -> &'static str {
    if context.dry_run {
        "dry run (simulated): "
    } else {
        ""
    }
}

fn prepare_and_start(vm: &str, s: &Settings, context: &StepContext) -> Result<Value, Error> {
    let point = recovery::pick_point(vm, &s.point)?;
    let addresses: Vec<Value> = network::assignments(vm)?
        .into_iter()
        .map(|a| json!({ "nic": a.nic, "network": a.network, "subnet": a.subnet, "ip": a.ip, "kept": a.kept_source_ip }))
        .collect();
    let disks = recovery::restore(vm, &point.id, &key(context, "restore", vm))?;
    compute::start(vm, &key(context, "start", vm))?;
    lifeboat_plugin_sdk::info(&format!(
        "{}{vm}: started from point {}",
        said(context),
        point.id
    ));
    Ok(
        json!({ "point": point.id, "captured_at_ms": point.captured_at_ms, "disks": disks, "addresses": addresses }),
    )
}

impl Step for BootGroup {
    const NAME: &'static str = "boot-group";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: &'static [Capability] = &[
        Capability::Inventory,
        Capability::Recovery,
        Capability::Compute,
        Capability::Network,
    ];

    fn validate(config: &Config, _context: &StepContext) -> Vec<String> {
        let mut problems =
            config.unknown_keys(&["point", "parallelism", "health_timeout_ms", "poll_ms"]);
        for key in ["parallelism", "health_timeout_ms", "poll_ms"] {
            if config.get(key).is_some() && config.u64(key).is_none() {
                problems.push(format!("`{key}` must be a positive integer"));
            }
        }
        problems
    }

    fn run(config: &Config, context: &StepContext) -> Result<Outputs, Error> {
        let s = settings(config);
        let vms = inventory::group_vms();
        let deadline = clock::now_ms() + s.health_timeout_ms;
        let mut pending: Vec<String> = vms.iter().map(|v| v.name.clone()).collect();
        pending.reverse();
        let mut booting: Vec<Boot> = Vec::new();
        let mut healthy: Vec<Boot> = Vec::new();
        while !pending.is_empty() || !booting.is_empty() {
            // Start VMs while fewer than `parallelism` are still coming up.
            while booting.len() < s.parallelism
                && let Some(vm) = pending.pop()
            {
                let record = prepare_and_start(&vm, &s, context)?;
                booting.push(Boot {
                    name: vm,
                    state: VmState::Starting,
                    record,
                });
            }
            let mut still = Vec::new();
            for mut boot in booting {
                boot.state = compute::status(&boot.name)?;
                match boot.state {
                    VmState::Running => {
                        lifeboat_plugin_sdk::info(&format!(
                            "{}{}: healthy",
                            said(context),
                            boot.name
                        ));
                        healthy.push(boot);
                    }
                    VmState::Failed | VmState::Stopped | VmState::Absent => {
                        return Err(Error::Other(format!(
                            "VM `{}` did not come up ({:?})",
                            boot.name, boot.state
                        )));
                    }
                    VmState::Starting | VmState::Stopping => still.push(boot),
                }
            }
            booting = still;
            if booting.is_empty() && pending.is_empty() {
                break;
            }
            if clock::now_ms() >= deadline {
                let waiting: Vec<&str> = booting.iter().map(|b| b.name.as_str()).collect();
                return Err(Error::Timeout(format!(
                    "not healthy after {} ms: {}",
                    s.health_timeout_ms,
                    waiting.join(", ")
                )));
            }
            if booting.len() >= s.parallelism || pending.is_empty() {
                clock::sleep(s.poll_ms)?;
            }
        }
        let mut outputs = Outputs::new();
        let booted: lifeboat_plugin_sdk::serde_json::Map<String, Value> =
            healthy.into_iter().map(|b| (b.name, b.record)).collect();
        outputs.insert("vms".into(), Value::Object(booted));
        Ok(outputs)
    }

    fn undo(_config: &Config, context: &StepContext, outputs: &Outputs) -> Result<(), Error> {
        let Some(Value::Object(vms)) = outputs.get("vms") else {
            return Ok(());
        };
        for vm in vms.keys() {
            compute::stop(vm, &key(context, "stop", vm))?;
            lifeboat_plugin_sdk::info(&format!("{}{vm}: stopped", said(context)));
        }
        Ok(())
    }
}

lifeboat_plugin_sdk::export_step!(BootGroup);
