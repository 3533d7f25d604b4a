//! `builtin:approval`: wait until a person approves the run (`lifeboat approve RUN`).
//! `with = { message = "DB team on the bridge?", timeout = "1h" }`.

use lifeboat_plugin_sdk::{Capability, Config, Error, Outputs, Step, StepContext, approval};

struct Approval;

fn timeout_ms(config: &Config) -> Result<u64, String> {
    let Some(text) = config.str("timeout") else {
        return Ok(3_600_000);
    };
    lifeboat_plugin_sdk::duration_ms(text).map_err(|e| format!("`timeout`: {e}"))
}

impl Step for Approval {
    const NAME: &'static str = "approval";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: &'static [Capability] = &[Capability::Approval];

    fn validate(config: &Config, _context: &StepContext) -> Vec<String> {
        let mut problems = config.unknown_keys(&["message", "timeout"]);
        if let Err(e) = timeout_ms(config) {
            problems.push(e);
        }
        problems
    }

    fn run(config: &Config, context: &StepContext) -> Result<Outputs, Error> {
        let message = config
            .str("message")
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "approve group `{}` of plan `{}`?",
                    context.group, context.plan
                )
            });
        let timeout = timeout_ms(config).map_err(Error::Invalid)?;
        let approver = approval::request(&message, timeout)?;
        // In a dry run the host grants it at once and names itself the approver.
        let said = if context.dry_run {
            "dry run (simulated): "
        } else {
            ""
        };
        lifeboat_plugin_sdk::info(&format!("{said}approved by {approver}"));
        let mut outputs = Outputs::new();
        outputs.insert("approved_by".into(), approver.into());
        Ok(outputs)
    }
}

lifeboat_plugin_sdk::export_step!(Approval);
