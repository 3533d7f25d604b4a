//! `builtin:wait`: pause the plan, e.g. to let caches warm before the next group.
//! `with = { duration = "30s" }` (units: ms, s, m, h).

use lifeboat_plugin_sdk::{Config, Error, Outputs, Step, StepContext, clock};

struct Wait;

fn duration_ms(config: &Config) -> Result<u64, String> {
    match config.get("duration") {
        Some(v) => match v.as_str() {
            Some(s) => lifeboat_plugin_sdk::duration_ms(s),
            None => v
                .as_u64()
                .map(|s| s * 1_000)
                .ok_or_else(|| "`duration` must be a string like `30s`".into()),
        },
        None => Err("`duration` is required, e.g. `30s`".into()),
    }
}

impl Step for Wait {
    const NAME: &'static str = "wait";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn validate(config: &Config, _context: &StepContext) -> Vec<String> {
        let mut problems = config.unknown_keys(&["duration"]);
        if let Err(e) = duration_ms(config) {
            problems.push(e);
        }
        problems
    }

    fn run(config: &Config, _context: &StepContext) -> Result<Outputs, Error> {
        let ms = duration_ms(config).map_err(Error::Invalid)?;
        // A dry run's clock is the simulation's: the wait counts toward the predicted RTO
        // and takes no time.
        clock::sleep(ms)?;
        let mut outputs = Outputs::new();
        outputs.insert("waited_ms".into(), ms.into());
        Ok(outputs)
    }
}

lifeboat_plugin_sdk::export_step!(Wait);
