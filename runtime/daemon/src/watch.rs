//! Watching the config: the inventory's folder and the plans folder (not the files: editors
//! save by writing a new file and renaming it over the old one). Changes are debounced — a
//! burst of events within `SETTLE` is one reload — and a plans folder created later is watched
//! from then on. A watcher that cannot start is logged; SIGHUP still reloads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// How long the files must be quiet before a reload.
const SETTLE: Duration = Duration::from_millis(300);

/// Keeps the watch alive while it lives.
#[derive(Debug)]
pub(crate) struct Watch {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Starts watching the inventory `config` and the plans beside it; sends on `reload` after
/// each settled change.
pub(crate) fn start(config: &Path, reload: mpsc::UnboundedSender<()>) -> Watch {
    let base = lifeboat_loader::base_dir(config);
    let plans = base.join("plans");
    let name = config.file_name().map(|n| n.to_os_string());
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) if !matches!(event.kind, EventKind::Access(_)) => {
                for p in event.paths {
                    let _ = tx.send(p);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "file watch error"),
        });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the config; reload with SIGHUP");
            return Watch { task: None };
        }
    };
    if let Err(e) = watcher.watch(&base, RecursiveMode::NonRecursive) {
        tracing::error!(error = %e, folder = %base.display(), "cannot watch the config; reload with SIGHUP");
        return Watch { task: None };
    }
    let mut plans_watched = watcher.watch(&plans, RecursiveMode::NonRecursive).is_ok();
    let relevant = move |p: &Path| {
        let parent = p.parent().unwrap_or(Path::new(""));
        (parent == base && p.file_name().map(|n| n.to_os_string()) == name)
            || p == plans
            || (parent == plans && p.extension().is_some_and(|e| e == "toml"))
    };
    let plans = lifeboat_loader::base_dir(config).join("plans");
    let task = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // A plans folder created (or removed) since: watch it from now on.
            if plans_watched != plans.is_dir() {
                plans_watched =
                    plans.is_dir() && watcher.watch(&plans, RecursiveMode::NonRecursive).is_ok();
            }
            // Other files in the folder (a log beside the inventory) neither start nor prolong
            // the wait.
            if !relevant(&first) {
                continue;
            }
            // Settle: until the config's files are quiet for `SETTLE`.
            let mut quiet_at = tokio::time::Instant::now() + SETTLE;
            loop {
                match tokio::time::timeout_at(quiet_at, rx.recv()).await {
                    Ok(Some(p)) if relevant(&p) => quiet_at = tokio::time::Instant::now() + SETTLE,
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if reload.send(()).is_err() {
                return;
            }
        }
    });
    Watch { task: Some(task) }
}
