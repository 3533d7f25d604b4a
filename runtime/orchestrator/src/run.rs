//! Executing a compiled run: groups in order, each group's steps in order, every transition
//! journaled before it takes effect. A run that finds itself in the journal resumes: finished
//! steps are skipped, a step the runtime died in is entered again with the same attempt number
//! (so its idempotency key, and the host calls made under it, are the same), a failed step is
//! retried up to its `retries`.
//!
//! While a step runs, the executor also takes the run's other events: a cancel from the
//! command's own signals (a `Control` message) or from another process (`lifeboat cancel`,
//! which ends the run in the journal). Either stops the step where it is; `cleanup` undoes
//! what the run did.

use std::time::Duration;

use crate::compile::{RunPlan, StepRun};
use crate::error::{Error, Result};
use crate::journal::{Event, Journal, RunKind, RunStatus, idempotency_key};

/// Why a step could not run, or how it failed. Journaled as its message.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("plugin `{uses}`: {source}")]
    Component {
        uses: lifeboat_plan::plan::PluginRef,
        source: lifeboat_loader::ComponentError,
    },
    #[error("plugin `{uses}` is not pinned with `sha256`")]
    Unpinned {
        uses: lifeboat_plan::plan::PluginRef,
    },
    #[error("plugin `{uses}`: {source}")]
    Load {
        uses: lifeboat_plan::plan::PluginRef,
        source: lifeboat_plugin_host::LoadError,
    },
    #[error("step `{step}`: {source}")]
    Placeholder {
        step: String,
        source: lifeboat_compute::template::TemplateError,
    },
    /// What the step wrote could not be journaled.
    #[error("{0}")]
    Journal(String),
    /// The step ran and did not succeed (failed, trapped, timed out, was refused).
    #[error("{}", .0.summary())]
    Outcome(lifeboat_plugin_host::StepOutcome),
    /// A runner other than the sandbox's says why (tests drive runs with their own).
    #[error("{0}")]
    Failed(String),
}

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
    ) -> Result<serde_json::Value, StepError>;
}

/// A message to a running run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop the step that runs and end the run as cancelled.
    Cancel(String),
}

/// Where a run's control messages come from (`None`: only the journal).
pub type Controls = Option<tokio::sync::mpsc::UnboundedReceiver<Control>>;

/// How often a running step's run checks the journal for a cancel from another process.
const JOURNAL_WATCH: Duration = Duration::from_millis(250);

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Cancelled while `step` ran (or before it started).
    Cancelled {
        step: String,
        reason: String,
    },
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
    mut controls: Controls,
) -> Result<Outcome> {
    let operation = RunKind::of(plan.operation).ok_or_else(|| {
        Error::Failed(format!("{} is not a run of its own", plan.operation.name()))
    })?;
    let state = match journal.replay(id)? {
        Some(state) => state,
        None => {
            journal.begin(id, &plan.plan, operation)?;
            observe(
                &Event::RunStarted {
                    plan: plan.plan.clone(),
                    operation,
                },
                1,
            );
            journal.replay(id)?.unwrap_or_default()
        }
    };
    if state.status == RunStatus::Succeeded {
        return Ok(Outcome::Succeeded);
    }
    if state.plan != plan.plan || state.operation != Some(operation) {
        return Err(Error::Failed(format!(
            "run {id} is a {} of plan `{}`, not a {operation} of `{}`",
            state.operation.map_or("run", RunKind::as_str),
            state.plan,
            plan.plan
        )));
    }
    // Where the watch for a cancel from another process starts reading.
    let mut seen = journal.last_seq(id)?;
    let append = |journal: &mut Journal, event: Event| -> Result<()> {
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
                            name: Some(step.name.clone()),
                        },
                    )?;
                }
                let key = idempotency_key(id, &step.id, attempt);
                let span = tracing::info_span!("step", id = %step.id, attempt, group = %group.name);
                let result = {
                    let work =
                        tracing::Instrument::instrument(runner.run(step, attempt, &key), span);
                    tokio::pin!(work);
                    let mut watch = tokio::time::interval(JOURNAL_WATCH);
                    loop {
                        tokio::select! {
                            r = &mut work => break Ok(r),
                            Some(Control::Cancel(reason)) = recv(&mut controls) => break Err((reason, true)),
                            _ = watch.tick() => {
                                if cancelled_elsewhere(journal, id, &mut seen) {
                                    break Err(("cancelled with `lifeboat cancel`".to_string(), false));
                                }
                            }
                        }
                    }
                };
                let result = match result {
                    Ok(r) => r,
                    Err((reason, record)) => {
                        if record {
                            append(
                                journal,
                                Event::StepFailed {
                                    step: step.id.clone(),
                                    attempt,
                                    error: format!("cancelled: {reason}"),
                                },
                            )?;
                            append(
                                journal,
                                Event::RunFinished {
                                    status: RunStatus::Cancelled,
                                },
                            )?;
                        }
                        return Ok(Outcome::Cancelled {
                            step: step.id.clone(),
                            reason,
                        });
                    }
                };
                match result {
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
                        // The journal keeps the message.
                        let error = error.to_string();
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
                                    status: RunStatus::Failed,
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
            status: RunStatus::Succeeded,
        },
    )?;
    Ok(Outcome::Succeeded)
}

/// The next control message; never ready when there is no channel (or it closed).
async fn recv(controls: &mut Controls) -> Option<Control> {
    match controls {
        Some(rx) => match rx.recv().await {
            Some(c) => Some(c),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Whether another process ended the run (`lifeboat cancel`) since event `seen` (advanced to
/// the newest event looked at: the journal is read only where it grew).
fn cancelled_elsewhere(journal: &Journal, id: &str, seen: &mut i64) -> bool {
    let Ok(new) = journal.events_after(id, *seen) else {
        return false;
    };
    let mut cancelled = false;
    for (seq, _, e) in new {
        *seen = seq;
        cancelled |= matches!(
            e,
            Event::RunFinished {
                status: RunStatus::Cancelled
            }
        );
    }
    cancelled
}
