//! Domains nothing protects: the daemon looks at the hosts of its `libvirt` sites every
//! `EVERY` (and when the config changes) and keeps the answer for `status`, the API and the
//! metrics, which must not wait on a hypervisor to answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::messages::{Snapshot, Unprotected};

/// How often the hosts are asked.
const EVERY: Duration = Duration::from_secs(30);

/// Looks every `EVERY`, or sooner when a new config is published; until aborted.
pub(crate) async fn watch(into: Unprotected, mut snapshots: watch::Receiver<Arc<Snapshot>>) {
    loop {
        let (inventory, generation) = {
            let s = snapshots.borrow_and_update();
            (s.inventory.clone(), s.daemon.config.generation)
        };
        into.set(lifeboat_orchestrator::status::unprotected_domains(&inventory).await);
        let deadline = tokio::time::Instant::now() + EVERY;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if snapshots.borrow().daemon.config.generation != generation {
                        break;
                    }
                }
            }
        }
    }
}
