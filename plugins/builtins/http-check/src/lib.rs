//! `builtin:http-check`: the step succeeds when `url` answers with an expected status.
//! `with = { url = "http://{vm.app-1.ip}:8080/health", status = 200, timeout_ms = 5000 }`,
//! granted in `allow.http`. Without `status`, any 2xx or 3xx passes.

use lifeboat_plugin_sdk::{Capability, Config, Error, Outputs, Step, StepContext, probe};

struct HttpCheck;

impl Step for HttpCheck {
    const NAME: &'static str = "http-check";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: &'static [Capability] = &[Capability::ProbeHttp];

    fn validate(config: &Config, _context: &StepContext) -> Vec<String> {
        let mut problems = config.unknown_keys(&["url", "status", "timeout_ms"]);
        match config.str("url") {
            Some(u) if u.starts_with("http://") => {}
            Some(u) => problems.push(format!("`url` must be an http:// URL, got `{u}`")),
            None => problems.push("`url` is required".into()),
        }
        if let Some(status) = config.get("status")
            && !status.as_u64().is_some_and(|s| (100..600).contains(&s))
        {
            problems.push("`status` must be an HTTP status code (100–599)".into());
        }
        problems
    }

    fn run(config: &Config, context: &StepContext) -> Result<Outputs, Error> {
        let url = config
            .str("url")
            .ok_or_else(|| Error::Invalid("`url` is required".into()))?;
        let timeout = config
            .u64("timeout_ms")
            .unwrap_or(5_000)
            .min(u32::MAX as u64) as u32;
        let status = probe::http_get(url, timeout)?;
        let ok = match config.u64("status") {
            Some(expected) => u64::from(status) == expected,
            None => (200..400).contains(&status),
        };
        if !ok {
            return Err(Error::Other(format!("{url} answered {status}")));
        }
        // In a dry run the host answered for the simulated VMs.
        let said = if context.dry_run {
            "dry run (simulated): "
        } else {
            ""
        };
        lifeboat_plugin_sdk::info(&format!("{said}{url} answered {status}"));
        let mut outputs = Outputs::new();
        outputs.insert("status".into(), status.into());
        Ok(outputs)
    }
}

lifeboat_plugin_sdk::export_step!(HttpCheck);
