//! The daemon's event stream: every transition worth telling people (a cycle committed or
//! failed, an RPO breached or recovered, a run's steps, approvals, config reloads) as a
//! [`Notice`] with an id. Ids only grow, also across restarts (they start at the daemon's start
//! time in microseconds), so a client that reconnects with the last id it saw gets what it missed
//! from the recent ones the bus keeps, and a client of an older daemon is never confused by ids
//! starting again at 1.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

pub use lifeboat_api::{Notice, NoticeKind};
use tokio::sync::broadcast;

/// How many recent notices a reconnecting client can catch up on.
const KEPT: usize = 4096;

/// Where notices are published and subscribed to.
#[derive(Debug)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Notice>>,
    /// The recent notices and the next id, under one lock so a subscriber's catch-up and its
    /// live feed neither overlap nor leave a gap.
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    recent: VecDeque<Arc<Notice>>,
    next: u64,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    pub fn new() -> Self {
        let start = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Self {
            tx: broadcast::channel(1024).0,
            inner: Mutex::new(Inner {
                recent: VecDeque::with_capacity(KEPT),
                next: start.max(1),
            }),
        }
    }

    /// Gives `notice` its id and time and sends it to every subscriber.
    pub fn publish(&self, mut notice: Notice) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        notice.id = inner.next;
        inner.next += 1;
        notice.at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let notice = Arc::new(notice);
        if inner.recent.len() == KEPT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(notice.clone());
        // No subscriber is not an error.
        let _ = self.tx.send(notice.clone());
        tracing::debug!(id = notice.id, kind = %notice.kind, "{}", notice.message);
        notice.id
    }

    /// The kept notices after `after` (all of them for `Some(0)`, none for `None`), and the live
    /// feed from there on.
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (Vec<Arc<Notice>>, broadcast::Receiver<Arc<Notice>>) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let missed = match after {
            Some(after) => inner
                .recent
                .iter()
                .filter(|n| n.id > after)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (missed, self.tx.subscribe())
    }

    /// The kept notices after `after`: what a subscriber that fell behind the live feed missed.
    pub fn since(&self, after: u64) -> Vec<Arc<Notice>> {
        self.subscribe(Some(after)).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscriber_catches_up_from_an_id_then_follows_without_gaps_or_repeats() {
        let bus = Bus::new();
        let first = bus.publish(Notice::new(NoticeKind::CycleCommitted, "a"));
        let second = bus.publish(Notice::new(NoticeKind::CycleCommitted, "b"));
        assert!(second > first);
        let (missed, mut live) = bus.subscribe(Some(first));
        assert_eq!(
            missed
                .iter()
                .map(|n| n.message.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        bus.publish(Notice::new(NoticeKind::CycleFailed, "c"));
        let next = live.recv().await.expect("live notice");
        assert_eq!(next.message, "c");
        assert_eq!(next.id, second + 1);
        let (none, _) = bus.subscribe(None);
        assert!(none.is_empty());
    }

    #[test]
    fn ids_of_a_later_bus_are_greater() {
        let a = Bus::new();
        let last = a.publish(Notice::new(NoticeKind::RunProgress, "x"));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = Bus::new();
        assert!(b.publish(Notice::new(NoticeKind::RunProgress, "x")) > last);
    }
}
