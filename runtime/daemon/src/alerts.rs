//! Alert hooks: the inventory's `[alerts.NAME]`, each a sandboxed step run once for every event
//! of its `events` (RPO breaches and recoveries, failed cycles, runs that finish, approvals
//! waiting, rejected configs). The hooks follow the event bus like any client; each firing is a
//! task of its own, retried with backoff, at most two of a hook at once (a few dozen more wait,
//! then new ones are dropped and told), so a hook that hangs or fails never holds up replication
//! or the other hooks. Each delivery is told on the bus
//! (`alert.sent`, `alert.failed`: not events a hook can fire on, so hooks cannot loop).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_plan::inventory::Alert;
use lifeboat_plugin_host::wit::{Direction, Operation, StepContext};
use lifeboat_plugin_host::{
    Grants, NoServices, Plugin, RunKv, StepLimits, StepOutcome, StepRequest,
};
use tokio::sync::{Mutex, Semaphore, broadcast, watch};

use crate::engine::LazyEngine;
use crate::events::{Bus, Notice, NoticeKind};
use crate::messages::Snapshot;

/// Why an alert hook's component cannot run.
#[derive(Debug, thiserror::Error)]
enum HookError {
    #[error("plugin `{uses}`: {source}")]
    Component {
        uses: lifeboat_plan::plan::PluginRef,
        source: lifeboat_loader::ComponentError,
    },
    #[error(transparent)]
    Engine(#[from] lifeboat_loader::EngineError),
    #[error("plugin `{uses}` cannot be used: {source}")]
    Load {
        uses: lifeboat_plan::plan::PluginRef,
        source: lifeboat_plugin_host::LoadError,
    },
}

/// Deliveries of one hook running at once: a hook that hangs holds only its own.
const AT_ONCE: usize = 2;

/// Deliveries of one hook waiting for a turn; past this, new ones are dropped (and told).
const QUEUED: usize = 32;

/// How long one attempt may take unless the hook says (`timeout`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The wait before the first retry; doubled for each next one, up to `LONGEST_WAIT` (a hook
/// with many retries keeps trying every few minutes, not after hours).
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(300);

/// Follows the bus and fires hooks until the bus closes or `stop` turns true.
pub(crate) async fn run(
    bus: Arc<Bus>,
    engine: Arc<LazyEngine>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    mut stop: watch::Receiver<bool>,
) {
    let (_, mut feed) = bus.subscribe(None);
    let plugins: Arc<Mutex<HashMap<String, Arc<Plugin>>>> = Arc::default();
    let mut turns: HashMap<String, Turns> = HashMap::new();
    let mut firing = tokio::task::JoinSet::new();
    loop {
        let notice = tokio::select! {
            got = feed.recv() => match got {
                Ok(n) => n,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "alert hooks fell behind the event stream; some events fired no hook");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        while firing.try_join_next().is_some() {}
        let config = snapshots.borrow().config.clone();
        for (name, alert) in config.inventory.alerts.iter() {
            if !alert.events.iter().any(|e| e.value == notice.kind.as_str()) {
                continue;
            }
            let job = Firing {
                name: name.to_string(),
                alert: alert.clone(),
                notice: notice.clone(),
                base: config.base.clone(),
                file: config.file.clone(),
            };
            let turns = turns.entry(name.to_string()).or_insert_with(|| Turns {
                running: Arc::new(Semaphore::new(AT_ONCE)),
                waiting: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            });
            if turns.waiting.load(std::sync::atomic::Ordering::Relaxed) >= QUEUED {
                job.tell(
                    &bus,
                    NoticeKind::AlertFailed,
                    format!(
                        "alert {name} for `{}` dropped: {QUEUED} deliveries of it are already waiting behind ones that have not finished",
                        notice.kind
                    ),
                    0,
                );
                continue;
            }
            turns
                .waiting
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (bus, engine, plugins, running, waiting) = (
                bus.clone(),
                engine.clone(),
                plugins.clone(),
                turns.running.clone(),
                turns.waiting.clone(),
            );
            firing.spawn(async move {
                let turn = running.acquire_owned().await;
                waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let Ok(_turn) = turn else { return };
                job.fire(&bus, &engine, &plugins).await;
            });
        }
    }
    // Deliveries in flight get a moment; the rest are dropped with the daemon.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while firing.join_next().await.is_some() {}
    })
    .await;
    firing.abort_all();
}

/// One hook's deliveries: those running, and those waiting for a turn.
struct Turns {
    running: Arc<Semaphore>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

/// One hook fired by one event.
struct Firing {
    name: String,
    alert: Alert,
    notice: Arc<Notice>,
    base: PathBuf,
    file: PathBuf,
}

impl Firing {
    async fn fire(
        self,
        bus: &Bus,
        engine: &LazyEngine,
        plugins: &Mutex<HashMap<String, Arc<Plugin>>>,
    ) {
        let step = &self.alert.step;
        let plugin = match self.plugin(engine, plugins).await {
            Ok(p) => p,
            Err(e) => {
                self.tell(
                    bus,
                    NoticeKind::AlertFailed,
                    format!("alert {}: {e}", self.name),
                    0,
                );
                return;
            }
        };
        let attempts = 1 + step.retries.as_ref().map_or(0, |r| r.value);
        let timeout = step.timeout.as_ref().map_or(DEFAULT_TIMEOUT, |t| t.value.0);
        let mut config = step
            .config
            .as_ref()
            .map(|c| c.value.clone())
            .unwrap_or_default();
        config.insert(
            "event".into(),
            serde_json::to_value(&*self.notice).unwrap_or_default(),
        );
        let config = serde_json::Value::Object(config).to_string();
        let allow = step.allow.clone().unwrap_or_default();
        let grants = Arc::new(Grants {
            vms: Vec::new(),
            tcp: allow.tcp.iter().map(|s| s.value.clone()).collect(),
            http: allow.http.iter().map(|s| s.value.clone()).collect(),
            kv: Vec::new(),
            origin: format!("{} [alerts.{}]", self.file.display(), self.name),
        });
        let mut wait = FIRST_RETRY;
        let mut last = String::new();
        for attempt in 1..=attempts {
            let request = StepRequest {
                config: config.clone(),
                context: StepContext {
                    plan: self.notice.plan.clone().unwrap_or_default(),
                    run_id: self
                        .notice
                        .run
                        .clone()
                        .unwrap_or_else(|| format!("event-{}", self.notice.id)),
                    // The step context has no "alert" operation (adding a case would break
                    // 0.1 plugins): alerts say `test`; `with.event.kind` says what happened.
                    operation: Operation::Test,
                    direction: Direction::Forward,
                    group: self.notice.group.clone().unwrap_or_default(),
                    step: format!("alert:{}", self.name),
                    attempt,
                    dry_run: false,
                },
                grants: grants.clone(),
                services: Arc::new(NoServices),
                kv: RunKv::default(),
                limits: StepLimits {
                    timeout,
                    ..StepLimits::default()
                },
                effect_key: format!("alert/{}/{}/{attempt}", self.name, self.notice.id),
            };
            let report = plugin.run(&request).await;
            match &report.outcome {
                StepOutcome::Ok { .. } => {
                    self.tell(
                        bus,
                        NoticeKind::AlertSent,
                        format!(
                            "alert {}: `{}` ran for {} (attempt {attempt})",
                            self.name, self.notice.kind, self.notice.message
                        ),
                        attempt,
                    );
                    return;
                }
                // A denied call will be denied again: no retry.
                StepOutcome::Denied { message } => {
                    last = message.clone();
                    break;
                }
                other => last = other.summary(),
            }
            tracing::warn!(alert = %self.name, attempt, error = %last, "alert hook failed");
            if attempt < attempts {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2).min(LONGEST_WAIT);
            }
        }
        self.tell(
            bus,
            NoticeKind::AlertFailed,
            format!(
                "alert {} for `{}` failed: {last}",
                self.name, self.notice.kind
            ),
            attempts,
        );
    }

    /// The hook's component, loaded once per daemon (a file verified against its pin).
    async fn plugin(
        &self,
        engine: &LazyEngine,
        plugins: &Mutex<HashMap<String, Arc<Plugin>>>,
    ) -> Result<Arc<Plugin>, HookError> {
        let step = &self.alert.step;
        let uses = || step.uses.value.clone();
        let component =
            lifeboat_loader::Component::read(&step.uses.value, &self.base).map_err(|source| {
                HookError::Component {
                    uses: uses(),
                    source,
                }
            })?;
        let pin = step.sha256.as_ref().map(|s| s.value.clone());
        let key = format!("{}#{}", step.uses.value_text(), component.sha256);
        let mut loaded = plugins.lock().await;
        if let Some(p) = loaded.get(&key) {
            return Ok(p.clone());
        }
        let plugin = Arc::new(
            Plugin::load(&engine.get()?, &component.bytes, pin.as_deref())
                .await
                .map_err(|source| HookError::Load {
                    uses: uses(),
                    source,
                })?,
        );
        loaded.insert(key, plugin.clone());
        Ok(plugin)
    }

    fn tell(&self, bus: &Bus, kind: NoticeKind, message: String, attempts: u32) {
        if kind == NoticeKind::AlertFailed {
            tracing::error!(alert = %self.name, "{message}");
        } else {
            tracing::info!(alert = %self.name, "{message}");
        }
        let mut notice = Notice::new(kind, message).data(serde_json::json!({
            "alert": self.name,
            "event": self.notice.id,
            "event_kind": self.notice.kind,
            "attempts": attempts,
        }));
        notice.group.clone_from(&self.notice.group);
        notice.run.clone_from(&self.notice.run);
        notice.plan.clone_from(&self.notice.plan);
        bus.publish(notice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inventory accepts `on = [...]` names from the plan crate's list; each must be a kind
    /// the daemon sends, or a hook on it would never fire.
    #[test]
    fn every_alertable_event_is_a_notice_the_daemon_sends() {
        for name in lifeboat_plan::inventory::ALERT_EVENTS {
            assert!(
                NoticeKind::parse(name).is_some(),
                "`{name}` is no notice kind"
            );
        }
    }
}
