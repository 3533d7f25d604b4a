//! What the daemon benchmarks share: a daemon process killed with the benchmark, percentiles,
//! settings from the environment.

#![allow(dead_code)]

pub mod guest;

/// A process (a daemon) killed if the benchmark stops early: its folder is about to be deleted.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `p` percentile (0.0–1.0) of `v`, sorting it.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A number from the environment variable `name`, else `default`.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Quick mode (`LIFEBOAT_BENCH_QUICK=1`, what `.ci/run` sets): few iterations and small sizes,
/// so CI proves every benchmark still runs; its figures are not comparable with a full run.
pub fn quick() -> bool {
    std::env::var_os("LIFEBOAT_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `full` in a full run, `small` in quick mode.
pub fn sized<T>(full: T, small: T) -> T {
    if quick() { small } else { full }
}
