//! A template plan step: it checks a TCP port is open and records how long that took; with
//! `notify`, it also POSTs the result there (the `http` interface).
//! Grant it in the plan: `allow = { tcp = ["{vm.db-1.ip}:5432"] }`, and for `notify`,
//! `http = ["POST https://chat.example.com/hooks/"]`.

use lifeboat_plugin_sdk::serde_json;
use lifeboat_plugin_sdk::{
    Capability, Config, Direction, Error, Operation, Outputs, Step, StepContext, clock, http, probe,
};

struct PortOpen;

impl Step for PortOpen {
    const NAME: &'static str = "port-open";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    // `notify` is optional, so HTTP is not a capability it requires: without the grant, a
    // `notify` is denied when it is tried.
    const CAPABILITIES: &'static [Capability] = &[Capability::ProbeTcp];

    fn validate(config: &Config, _context: &StepContext) -> Vec<String> {
        let mut problems = config.unknown_keys(&["address", "timeout_ms", "notify"]);
        if config.str("address").is_none() {
            problems.push("`address` (host:port) is required".to_string());
        }
        problems
    }

    fn run(config: &Config, context: &StepContext) -> Result<Outputs, Error> {
        let address = config
            .str("address")
            .ok_or_else(|| Error::Invalid("`address` is required".into()))?;
        let timeout = config.u64("timeout_ms").unwrap_or(2_000) as u32;
        let started = clock::now_ms();
        probe::tcp(address, timeout)?;
        let mut outputs = Outputs::new();
        outputs.insert("address".into(), address.into());
        outputs.insert("took_ms".into(), (clock::now_ms() - started).into());
        // Which run this is: a step that behaves differently on failback matches on these.
        let operation = match context.operation {
            Operation::Test => "test",
            Operation::Planned => "planned",
            Operation::Unplanned => "unplanned",
            Operation::Failback => "failback",
            Operation::Cleanup => "cleanup",
        };
        let direction = match context.direction {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        };
        lifeboat_plugin_sdk::info(&format!("{address} is open ({operation}, {direction})"));
        if let Some(url) = config.str("notify") {
            let answer = http::send(&http::Request {
                method: "POST".into(),
                url: url.into(),
                headers: vec![http::Header {
                    name: "Content-Type".into(),
                    value: "application/json".into(),
                }],
                body: serde_json::Value::Object(outputs.clone())
                    .to_string()
                    .into_bytes(),
                timeout_ms: timeout,
            })?;
            lifeboat_plugin_sdk::info(&format!("{url} answered {}", answer.status));
        }
        Ok(outputs)
    }
}

lifeboat_plugin_sdk::export_step!(PortOpen);
