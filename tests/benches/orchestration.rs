//! Orchestration overhead: a drill of a plan of 100 VMs in 10 groups, whose VMs are healthy the
//! moment they start (a `sleep` process, no health probe), so the run's whole time is what the
//! orchestrator adds: validation and plugin loading, the journal, point choice, restores of 100
//! small disks, 100 process starts, 10 boot steps in the sandbox. Baseline in the same run:
//! starting and stopping the same 100 processes directly. Beside it, `plan simulate` of the same
//! plan (its time against the drill's, and its predicted RTO against the measured one).
//!
//! A second figure: the RTO of one group of 4 VMs with 256 MiB disks of random data (restores
//! dominate), against `cp` of the same four images one after another, each synced.
//!
//! Checking the world: the same drill with `test_isolation = "none"` (the host's network) beside
//! the isolated one (a network namespace of the run's, every VM entered through `ip netns
//! exec`), run by run; and the writer check a cycle makes before its cut (a walk of every
//! process's descriptors for one group's disks) beside the cycle itself.
//!
//! `cargo bench -p lifeboat-tests --bench orchestration` (`LIFEBOAT_BENCH_RUNS`, default 5;
//! `LIFEBOAT_BENCH_QUICK=1`: one run of 10 VMs and 8 MiB disks).

#![allow(clippy::unwrap_used, clippy::panic)]

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

/// 100 VMs in 10 groups (quick mode: 10 in 2).
fn vms() -> usize {
    common::sized(100, 10)
}

fn groups() -> usize {
    common::sized(10, 2)
}

#[path = "../support.rs"]
#[allow(dead_code)]
mod support;

/// `lifeboat --config CONFIG ARGS…`, in this process: the exit code and everything it printed.
fn lifeboat(config: &Path, args: &[&str]) -> (u8, String) {
    let config = config.display().to_string();
    let mut full = vec!["--config", config.as_str()];
    full.extend_from_slice(args);
    let out = support::lifeboat(&full);
    (out.code, format!("{}{}", out.stdout, out.stderr))
}

/// One drill of plan `bench` as run `bench-N`, then its cleanup: the wall time of the
/// `failover` command and the run's RTO.
fn drill(config: &Path, run: usize) -> (f64, f64) {
    let started = Instant::now();
    let (code, out) = lifeboat(config, &["failover", "bench", "--test"]);
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{out}");
    let (_, rec) = lifeboat(
        config,
        &["--output", "json", "runs", "show", &format!("bench-{run}")],
    );
    let rec: serde_json::Value = serde_json::from_str(&rec).unwrap();
    let (code, out) = lifeboat(config, &["cleanup", "bench"]);
    assert_eq!(code, 0, "{out}");
    (wall, rec["rto_seconds"].as_f64().unwrap())
}

fn ip(net: u8, i: usize) -> String {
    format!("127.{net}.{}.{}", i / 200, i % 200 + 10)
}

fn write_sites(dir: &Path) {
    write_sites_sized(dir, vms(), groups(), 256 << 10, false);
}

/// `vms` VMs in `groups` groups, each with a disk of `bytes` (random data when `random`).
fn write_sites_sized(dir: &Path, vms: usize, groups: usize, bytes: usize, random: bool) {
    let mut inv = String::from(
        r#"version = 1
[sites.east]
store = "east"
compute = "process"
replicate_to = "west"
networks.prod.subnets = { app = "127.62.0.0/16" }
[sites.west]
store = "west"
compute = "process"
networks.prod-dr.subnets = { app = "127.63.0.0/16" }
networks.drill.subnets = { app = "127.64.0.0/16" }
[policies.default]
crash_interval = "1m"
retention = "1h"
rpo_threshold = "5m"
"#,
    );
    std::fs::create_dir_all(dir.join("vms")).unwrap();
    for i in 0..vms {
        writeln!(
            inv,
            r#"[vms.vm-{i:03}]
site = "east"
policy = "default"
disks.os = "vms/vm-{i:03}.img"
nics = [{{ network = "prod", subnet = "app", ip = "{}" }}]
boot = {{ command = ["sleep", "600"] }}"#,
            ip(62, i)
        )
        .unwrap();
        let mut disk = vec![0u8; bytes];
        if random {
            // xorshift: incompressible, different per VM.
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
            for chunk in disk.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
        }
        disk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        std::fs::write(dir.join(format!("vms/vm-{i:03}.img")), disk).unwrap();
    }
    std::fs::write(dir.join("lifeboat.toml"), inv).unwrap();
    let mut plan = String::from(
        r#"version = 1
name = "bench"
source = "east"
target = "west"
[network]
map = [{ from = "east/prod", to = "west/prod-dr" }]
test = "west/drill"
"#,
    );
    for g in 0..groups {
        let vms: Vec<String> = (0..vms / groups)
            .map(|j| format!("\"vm-{:03}\"", g * (vms / groups) + j))
            .collect();
        writeln!(
            plan,
            "[[group]]\nname = \"g{g}\"\nvms = [{}]\nparallelism = 10",
            vms.join(", ")
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.join("plans")).unwrap();
    std::fs::write(dir.join("plans/bench.toml"), plan).unwrap();
}

fn sync() {
    let _ = std::process::Command::new("sync").status();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::var("LIFEBOAT_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(common::sized(5, 1));
    let dir = tempfile::tempdir().unwrap();
    write_sites(dir.path());
    let config = dir.path().join("lifeboat.toml");
    let started = Instant::now();
    let (code, out) = lifeboat(&config, &["replicate"]);
    assert_eq!(code, 0, "{out}");
    let cycle_per_group = started.elapsed().as_secs_f64() / vms() as f64;
    // The writer check of one group (one disk), as each cycle makes it.
    let disk = vec![dir.path().join("vms/vm-000.img")];
    let mut scan = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let found = lifeboat_compute::procfs::writers(&disk);
        scan.push(started.elapsed().as_secs_f64());
        assert!(found.is_empty(), "{found:?}");
    }
    let scan = median(scan);
    let processes = lifeboat_compute::procfs::processes().count();
    // The same sites, drilled in the host's network.
    let shared = tempfile::tempdir().unwrap();
    write_sites(shared.path());
    let plan = shared.path().join("plans/bench.toml");
    let text = std::fs::read_to_string(&plan).unwrap();
    std::fs::write(
        &plan,
        text.replace(
            "test = \"west/drill\"",
            "test = \"west/drill\"\ntest_isolation = \"none\"",
        ),
    )
    .unwrap();
    let shared_config = shared.path().join("lifeboat.toml");
    let (code, out) = lifeboat(&shared_config, &["replicate"]);
    assert_eq!(code, 0, "{out}");
    let mut host_network = Vec::new();

    let mut total = Vec::new();
    let mut rto = Vec::new();
    let mut spawn = Vec::new();
    let mut simulated = Vec::new();
    let mut predicted = 0.0;
    for run in 1..=runs {
        // `plan simulate` of the same plan (from run 2 on, predicted from the drill before).
        let started = Instant::now();
        let (code, out) = lifeboat(&config, &["--output", "json", "plan", "simulate", "bench"]);
        simulated.push(started.elapsed().as_secs_f64());
        assert_eq!(code, 0, "{out}");
        predicted = serde_json::from_str::<serde_json::Value>(&out).unwrap()["rto_seconds"]
            .as_f64()
            .unwrap();
        let (wall, run_rto) = drill(&config, run);
        total.push(wall);
        rto.push(run_rto);
        host_network.push(drill(&shared_config, run).0);

        // Baseline: the same 100 processes, started and stopped directly.
        let started = Instant::now();
        let mut children: Vec<std::process::Child> = (0..vms())
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("600")
                    .spawn()
                    .unwrap()
            })
            .collect();
        spawn.push(started.elapsed().as_secs_f64());
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (total, rto, spawn) = (median(total), median(rto), median(spawn));
    let simulated = median(simulated);
    let host_network = median(host_network);
    let (big_rto, big_cp) = restore_heavy(runs);
    println!(
        "orchestration   {} VMs in {} groups, healthy at once; {runs} runs, medians",
        vms(),
        groups()
    );
    println!(
        "failover --test {total:6.3}s end to end (validation, plugin loading, run)   run alone (RTO) {rto:6.3}s"
    );
    println!(
        "baseline        {spawn:6.3}s to start the same {} processes directly; overhead above it {:.3}s (target ≤ 1 s above the health waits, here 0)",
        vms(),
        total - spawn
    );
    println!(
        "plan simulate   {simulated:6.3}s (target ≤ 2 s) vs the drill {total:6.3}s: {:.2}× its time; predicted RTO {predicted:.3}s vs measured {rto:.3}s",
        simulated / total
    );
    println!(
        "restore-heavy   4 VMs × 256 MiB random in one group: RTO {big_rto:6.3}s   cp+sync of the 4 images {big_cp:6.3}s   ratio {:.2}× cp",
        big_cp / big_rto
    );
    println!(
        "isolated drill  {total:6.3}s in a network namespace   vs {host_network:6.3}s in the host's network (test_isolation = \"none\"): {:+.3}s, {:.2}×",
        total - host_network,
        total / host_network
    );
    println!(
        "writer check    {:6.3} ms per group ({processes} processes' descriptors walked)   vs a cycle of that group {:6.3} ms: {:.1} %",
        scan * 1e3,
        cycle_per_group * 1e3,
        scan / cycle_per_group * 100.0
    );
}

/// One group of 4 VMs with 256 MiB random disks: the drill's RTO, and `cp` + sync of the 4
/// images.
fn restore_heavy(runs: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    write_sites_sized(dir.path(), 4, 1, common::sized(256 << 20, 8 << 20), true);
    let config = dir.path().join("lifeboat.toml");
    let (code, out) = lifeboat(&config, &["replicate"]);
    assert_eq!(code, 0, "{out}");
    let mut rto = Vec::new();
    let mut cp = Vec::new();
    for run in 1..=runs {
        rto.push(drill(&config, run).1);
        // Restore syncs each image it writes: so does the baseline.
        let copies = dir.path().join("copies");
        std::fs::create_dir_all(&copies).unwrap();
        sync();
        let started = Instant::now();
        for i in 0..4 {
            let to = copies.join(format!("{i}.img"));
            std::fs::copy(dir.path().join(format!("vms/vm-{i:03}.img")), &to).unwrap();
            std::fs::File::open(&to).unwrap().sync_all().unwrap();
        }
        cp.push(started.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&copies).unwrap();
    }
    (median(rto), median(cp))
}
