//! Executing a compiled run: groups in order, each group's steps in order, every transition
//! journaled before it takes effect. A run that finds itself in the journal resumes: finished
//! steps are skipped, a step the runtime died in is entered again with the same attempt number
//! (so its idempotency key, and the host calls made under it, are the same), a failed step is
//! retried up to its `retries`.

use crate::compile::{RunPlan, StepRun};
use crate::journal::{Event, Journal, idempotency_key};

/// Runs one step; the orchestrator's real runner calls the plugin host.
#[async_trait::async_trait]
pub trait StepRunner: Send + Sync {
    /// Runs attempt `attempt` of `step`. `key` is the attempt's idempotency key, for every host
    /// call it makes.
    async fn run(
        &self,
        step: &StepRun,
        attempt: u32,
        key: &str,
    ) -> Result<serde_json::Value, String>;
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// A step failed after its retries: which one, and why.
    Failed {
        step: String,
        error: String,
    },
}

/// Executes (or resumes) run `id` of `plan`. `observe` sees every journaled event with its
/// sequence number, after it is durable (progress on a terminal; crash points in tests).
pub async fn execute(
    journal: &mut Journal,
    id: &str,
    plan: &RunPlan,
    runner: &dyn StepRunner,
    observe: &(dyn Fn(&Event, i64) + Sync),
) -> Result<Outcome, String> {
    let operation = serde_json::to_value(plan.operation)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let state = match journal.replay(id)? {
        Some(state) => state,
        None => {
            journal.begin(id, &plan.plan, &operation)?;
            observe(
                &Event::RunStarted {
                    plan: plan.plan.clone(),
                    operation: operation.clone(),
                },
                1,
            );
            journal.replay(id)?.unwrap_or_default()
        }
    };
    if state.status.as_deref() == Some("succeeded") {
        return Ok(Outcome::Succeeded);
    }
    if state.plan != plan.plan || state.operation != operation {
        return Err(format!(
            "run {id} is a {} of plan `{}`, not a {operation} of `{}`",
            state.operation, state.plan, plan.plan
        ));
    }
    let append = |journal: &mut Journal, event: Event| -> Result<(), String> {
        let seq = journal.append(id, &event)?;
        observe(&event, seq);
        Ok(())
    };
    for group in &plan.groups {
        if state.healthy_groups.contains(&group.name) {
            continue;
        }
        for step in &group.steps {
            if state.finished.contains_key(&step.id) {
                continue;
            }
            let mut attempt = match (state.interrupted.get(&step.id), state.failed.get(&step.id)) {
                // The runtime died inside this attempt: enter it again under the same key.
                (Some(attempt), _) => *attempt,
                // A retry of a run that failed here: a new attempt, a new key.
                (None, Some((failed, _))) => failed + 1,
                (None, None) => 1,
            };
            // Attempts this execution made: `retries` counts per execution, so a retry of a failed
            // run gets the step's full budget again.
            let mut tries = 0;
            loop {
                if state.interrupted.get(&step.id) != Some(&attempt) {
                    append(
                        journal,
                        Event::StepStarted {
                            step: step.id.clone(),
                            attempt,
                        },
                    )?;
                }
                let key = idempotency_key(id, &step.id, attempt);
                match runner.run(step, attempt, &key).await {
                    Ok(output) => {
                        append(
                            journal,
                            Event::StepFinished {
                                step: step.id.clone(),
                                attempt,
                                output,
                            },
                        )?;
                        break;
                    }
                    Err(error) => {
                        append(
                            journal,
                            Event::StepFailed {
                                step: step.id.clone(),
                                attempt,
                                error: error.clone(),
                            },
                        )?;
                        tries += 1;
                        if tries > step.retries {
                            append(
                                journal,
                                Event::RunFinished {
                                    status: "failed".into(),
                                },
                            )?;
                            return Ok(Outcome::Failed {
                                step: step.id.clone(),
                                error,
                            });
                        }
                        attempt += 1;
                    }
                }
            }
        }
        append(
            journal,
            Event::GroupHealthy {
                group: group.name.clone(),
            },
        )?;
    }
    append(
        journal,
        Event::RunFinished {
            status: "succeeded".into(),
        },
    )?;
    Ok(Outcome::Succeeded)
}
