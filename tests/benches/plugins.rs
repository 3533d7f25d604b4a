//! Plugin host figures, each beside a baseline measured in the same run:
//! - per-step overhead (new store + instantiate + run + drop) of a Rust step and of a Python
//!   step, p50/p99, against running a step as a process (`true`: fork + exec + wait);
//! - loading a component from the compile cache, against compiling it cold.
//!
//! The Rust step does nothing (`plugins/fixtures/noop`), so its figure is the host's own cost;
//! the Python step writes one key.
//!
//! `cargo bench -p lifeboat-tests --bench plugins` (`LIFEBOAT_BENCH_QUICK=1`: a few iterations)

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;
#[path = "../support.rs"]
#[allow(dead_code)]
mod support;

use common::sized;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_plugin_host::wit::{Direction, Operation, StepContext};
use lifeboat_plugin_host::{
    EngineOptions, Grants, NoServices, Plugin, PluginEngine, RunKv, StepLimits, StepRequest,
};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn request(config: &str, grants: Grants) -> StepRequest {
    StepRequest {
        config: config.into(),
        context: StepContext {
            plan: "bench".into(),
            run_id: "bench".into(),
            operation: Operation::Test,
            direction: Direction::Forward,
            group: "g".into(),
            step: "s".into(),
            attempt: 1,
            dry_run: false,
        },
        grants: Arc::new(grants),
        services: Arc::new(NoServices),
        kv: RunKv::default(),
        limits: StepLimits::default(),
        effect_key: "bench/s/1".into(),
    }
}

async fn per_step(plugin: &Plugin, req: &StepRequest, n: usize) -> (Duration, Duration) {
    for _ in 0..n / 10 {
        assert!(plugin.run(req).await.outcome.is_ok());
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let report = plugin.run(req).await;
        samples.push(start.elapsed());
        assert!(report.outcome.is_ok(), "{report:?}");
    }
    (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    )
}

fn process_step(n: usize) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let status = std::process::Command::new("true").status().unwrap();
        samples.push(start.elapsed());
        assert!(status.success());
    }
    (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    )
}

async fn load_times(bytes: &[u8], runs: usize) -> (Duration, Duration) {
    let mut cold = Vec::new();
    let mut cached = Vec::new();
    for i in 0..runs {
        let dir =
            std::env::temp_dir().join(format!("lifeboat-bench-cache-{}-{i}", std::process::id()));
        let engine = PluginEngine::new(EngineOptions {
            cache_dir: Some(dir.clone()),
            ..EngineOptions::default()
        })
        .unwrap();
        let start = Instant::now();
        Plugin::load(&engine, bytes, None).await.unwrap();
        cold.push(start.elapsed());
        let start = Instant::now();
        Plugin::load(&engine, bytes, None).await.unwrap();
        cached.push(start.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
    }
    (percentile(&mut cold, 0.5), percentile(&mut cached, 0.5))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let engine = PluginEngine::new(EngineOptions::default()).unwrap();
        let noop_bytes = std::fs::read(lifeboat_builtins::artifacts::NOOP).unwrap();
        let noop = Plugin::load(&engine, &noop_bytes, None).await.unwrap();
        let python_bytes = support::python_kv_note();
        let python = Plugin::load(&engine, &python_bytes, None).await.unwrap();

        let (process_p50, process_p99) = process_step(sized(2_000, 50));
        let (rust_p50, rust_p99) = per_step(&noop, &request("{}", Grants::default()), sized(20_000, 200)).await;
        let kv = Grants {
            kv: vec!["bench.*".into()],
            ..Grants::default()
        };
        let (py_p50, py_p99) = per_step(&python, &request(r#"{"key":"bench.k","value":"v"}"#, kv), sized(2_000, 20)).await;
        println!("per-step overhead (new store + instantiate + run + drop), 2 cores:");
        println!("  baseline, a step as a process (`true`): p50 {:8.1} µs  p99 {:8.1} µs", us(process_p50), us(process_p99));
        println!(
            "  Rust step (noop, {:.0} KB):             p50 {:8.1} µs  p99 {:8.1} µs  ({:.3}x the process p50; target p50 <= 50 µs)",
            noop_bytes.len() as f64 / 1e3,
            us(rust_p50),
            us(rust_p99),
            rust_p50.as_secs_f64() / process_p50.as_secs_f64()
        );
        println!(
            "  Python step (kv-note, {:.0} MB):         p50 {:8.1} µs  p99 {:8.1} µs  ({:.3}x the process p50; target p50 <= 2000 µs)",
            python_bytes.len() as f64 / 1e6,
            us(py_p50),
            us(py_p99),
            py_p50.as_secs_f64() / process_p50.as_secs_f64()
        );

        let (rust_cold, rust_cached) = load_times(&noop_bytes, sized(7, 1)).await;
        let (py_cold, py_cached) = load_times(&python_bytes, sized(3, 1)).await;
        let mut hashing = Vec::new();
        for _ in 0..5 {
            use sha2::Digest;
            let start = Instant::now();
            std::hint::black_box(sha2::Sha256::digest(&python_bytes));
            hashing.push(start.elapsed());
        }
        let py_hash = percentile(&mut hashing, 0.5);
        println!("load (compile + describe), median:");
        println!(
            "  Rust step:   cold {:8.1} ms  cached {:6.2} ms  ({:.3}x cold; target cached <= 5 ms)",
            rust_cold.as_secs_f64() * 1e3,
            rust_cached.as_secs_f64() * 1e3,
            rust_cached.as_secs_f64() / rust_cold.as_secs_f64()
        );
        println!(
            "  Python step: cold {:8.1} ms  cached {:6.2} ms  ({:.3}x cold; target cached <= 5 ms)",
            py_cold.as_secs_f64() * 1e3,
            py_cached.as_secs_f64() * 1e3,
            py_cached.as_secs_f64() / py_cold.as_secs_f64()
        );
        println!(
            "    of which verifying the sha256 of the 19 MB file: {:.2} ms (cached load without it: {:.2} ms)",
            py_hash.as_secs_f64() * 1e3,
            (py_cached.saturating_sub(py_hash)).as_secs_f64() * 1e3
        );
    });
}
