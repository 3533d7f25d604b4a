//! `builtin:tcp-check`: the step succeeds when `address` accepts a TCP connection.
//! `with = { address = "{vm.db-1.ip}:5432", timeout_ms = 5000 }`, granted in `allow.tcp`.

use lifeboat_plugin_sdk::{Capability, Config, Error, Outputs, Step, StepContext, probe};

struct TcpCheck;

impl Step for TcpCheck {
    const NAME: &'static str = "tcp-check";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: &'static [Capability] = &[Capability::ProbeTcp];

    fn validate(config: &Config, _context: &StepContext) -> Vec<String> {
        let mut problems = config.unknown_keys(&["address", "timeout_ms"]);
        match config.str("address") {
            Some(a)
                if a.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) => {}
            Some(a) => problems.push(format!("`address` must be host:port, got `{a}`")),
            None => problems.push("`address` (host:port) is required".into()),
        }
        problems
    }

    fn run(config: &Config, context: &StepContext) -> Result<Outputs, Error> {
        let address = config
            .str("address")
            .ok_or_else(|| Error::Invalid("`address` is required".into()))?;
        let mut outputs = Outputs::new();
        outputs.insert("address".into(), address.into());
        let timeout = config
            .u64("timeout_ms")
            .unwrap_or(5_000)
            .min(u32::MAX as u64) as u32;
        probe::tcp(address, timeout)?;
        // In a dry run the host answered for the simulated VMs.
        let said = if context.dry_run {
            "dry run (simulated): "
        } else {
            ""
        };
        lifeboat_plugin_sdk::info(&format!("{said}{address} accepts connections"));
        Ok(outputs)
    }
}

lifeboat_plugin_sdk::export_step!(TcpCheck);
