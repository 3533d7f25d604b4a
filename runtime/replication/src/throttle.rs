//! A site's bandwidth: every cycle of the site's groups in this process draws the bytes it
//! ships to the target from one bucket, so together they never ship faster than the site's
//! `bandwidth`. The bucket may run into debt (a pack is larger than a second's worth): the taker
//! then waits until the debt is paid, so the average over any transfer is the limit. Idle time
//! earns at most one second of credit.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Bytes per second, and the bucket.
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    /// Tokens (bytes; negative: debt) and when they were counted.
    bucket: Mutex<(f64, Instant)>,
}

/// One throttle per source (by its cache store's identity) and rate.
static THROTTLES: LazyLock<Mutex<HashMap<String, Arc<Throttle>>>> = LazyLock::new(Default::default);

impl Throttle {
    /// The throttle of source `key` at `rate` bytes per second (a new one if the rate changed).
    pub fn of(key: &str, rate: u64) -> Arc<Self> {
        let mut all = THROTTLES.lock().unwrap_or_else(|e| e.into_inner());
        match all.get(key) {
            Some(t) if t.rate == rate => t.clone(),
            _ => {
                let t = Arc::new(Self {
                    rate: rate.max(1),
                    bucket: Mutex::new((0.0, Instant::now())),
                });
                all.insert(key.to_string(), t.clone());
                t
            }
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Waits until `bytes` may be shipped.
    pub async fn take(&self, bytes: u64) {
        let wait = {
            let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let earned = now.duration_since(b.1).as_secs_f64() * self.rate as f64;
            b.0 = (b.0 + earned).min(self.rate as f64) - bytes as f64;
            b.1 = now;
            if b.0 < 0.0 {
                Duration::from_secs_f64(-b.0 / self.rate as f64)
            } else {
                Duration::ZERO
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shipping_takes_the_time_the_rate_allows_and_takers_share_it() {
        let t = Throttle::of("test-site", 4 << 20);
        let start = Instant::now();
        for _ in 0..4 {
            t.take(1 << 20).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((0.95..1.5).contains(&took), "{took} s for 4 MiB at 4 MiB/s");
        // Two takers share the bucket: 4 MiB together take a second too.
        let start = Instant::now();
        let (a, b) = (t.clone(), Throttle::of("test-site", 4 << 20));
        tokio::join!(a.take(2 << 20), b.take(2 << 20));
        let took = start.elapsed().as_secs_f64();
        assert!((0.95..1.5).contains(&took), "{took} s for 4 MiB shared");
    }
}
