//! What the daemon counts per group and per reload, for `/metrics`: kept by the supervisor,
//! published in its snapshot, rendered by `metrics`.

/// Upper bounds of the cycle duration histogram, in seconds.
pub(crate) const BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A group's counters since the daemon started.
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupCounters {
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    /// Cumulative counts per bucket of `BUCKETS`.
    pub buckets: Vec<u64>,
    pub duration_sum: f64,
    pub scanned: u64,
    pub changed: u64,
    pub shipped: u64,
    pub expired: u64,
    pub points_kept: Option<usize>,
}

impl GroupCounters {
    pub fn committed(
        &mut self,
        seconds: f64,
        scanned: u64,
        changed: u64,
        shipped: u64,
        points_kept: Option<usize>,
    ) {
        if self.buckets.len() != BUCKETS.len() {
            self.buckets = vec![0; BUCKETS.len()];
        }
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.buckets[i] += 1;
            }
        }
        self.cycles_ok += 1;
        self.duration_sum += seconds;
        self.scanned += scanned;
        self.changed += changed;
        self.shipped += shipped;
        if points_kept.is_some() {
            self.points_kept = points_kept;
        }
    }

    pub fn failed(&mut self) {
        self.cycles_failed += 1;
    }
}

/// Config reloads since the daemon started.
#[derive(Clone, Debug)]
pub(crate) struct ReloadCounters {
    pub applied: u64,
    pub rejected: u64,
    pub last_ok: bool,
    pub last_seconds: f64,
}

impl Default for ReloadCounters {
    fn default() -> Self {
        Self {
            applied: 0,
            rejected: 0,
            last_ok: true,
            last_seconds: 0.0,
        }
    }
}
