//! The daemon at scale: 100 VMs, each with a 1 GiB mostly-sparse disk (4 MiB of data) that a
//! writer keeps changing, `crash_interval = "10s"`, for `LIFEBOAT_BENCH_SECONDS` (default 300).
//!
//! Figures, each against its baseline from the same run:
//! - achieved RPO per VM, p50 and p99 over status samples taken every second, against the
//!   interval plus one cycle of every group by `lifeboat replicate` (the target: p99 ≤ that);
//! - the daemon's peak RSS (target ≤ 100 MiB) against `lifeboat plan validate`'s;
//! - its CPU while idle between cycles (target ≤ 2 % of a core), measured over 30 s after a
//!   reload that sets the interval to an hour;
//! - that reload's time to apply (edit → the new generation in `status`) against `lifeboat plan
//!   validate` of the same files.
//!
//! `cargo bench -p lifeboat-tests --bench daemon`

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{Killed, percentile, setting};

use std::fmt::Write as _;
use std::io::{Seek, SeekFrom, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// 100 VMs (quick mode: 10).
fn vms() -> usize {
    common::sized(100, 10)
}
const DISK: u64 = 1 << 30;
const DATA: usize = 4 << 20;
const HELPER: &str = env!("CARGO_BIN_EXE_lifeboat-test-helper");

#[path = "../support.rs"]
#[allow(dead_code)]
mod support;

fn lifeboat(config: &Path, args: &[&str]) -> (u8, String) {
    let config = config.display().to_string();
    let mut full = vec!["--config", config.as_str()];
    full.extend_from_slice(args);
    let out = support::lifeboat(&full);
    (out.code, format!("{}{}", out.stdout, out.stderr))
}

fn inventory(interval: &str, threshold: &str) -> String {
    let mut inv = format!(
        r#"version = 1
[sites.east]
store = "east"
compute = "process"
replicate_to = "west"
[sites.west]
store = "west"
compute = "process"
[policies.default]
crash_interval = "{interval}"
retention = "1h"
rpo_threshold = "{threshold}"
"#
    );
    // The disks' writer is this benchmark's own thread, not a VM a cut could hold still: the
    // VMs say so (a cycle that catches it mid-write takes the point and marks it).
    for i in 0..vms() {
        writeln!(
            inv,
            "[vms.vm-{i:03}]\nsite = \"east\"\npolicy = \"default\"\ndisks.os = \"vms/vm-{i:03}.img\"\nunsafe_live_read = true"
        )
        .unwrap();
    }
    inv
}

fn write_sites(dir: &Path) {
    std::fs::create_dir_all(dir.join("vms")).unwrap();
    for i in 0..vms() {
        let mut f = std::fs::File::create(dir.join(format!("vms/vm-{i:03}.img"))).unwrap();
        f.set_len(DISK).unwrap();
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
        let mut data = vec![0u8; DATA];
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&data).unwrap();
    }
    std::fs::write(dir.join("lifeboat.toml"), inventory("10s", "1m")).unwrap();
}

/// Keeps changing 4 KiB somewhere in each disk's data, one disk every 100 ms.
fn writer(dir: std::path::PathBuf, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let mut n: u64 = 1;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let i = (n as usize) % vms();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(format!("vms/vm-{i:03}.img")))
            .unwrap();
        f.seek(SeekFrom::Start((n * 7919 * 4096) % DATA as u64))
            .unwrap();
        f.write_all(&[n as u8; 4096]).unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (utime + stime) of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn status(config: &Path) -> serde_json::Value {
    let (_, out) = lifeboat(config, &["--output", "json", "status"]);
    let json = &out[..out.rfind('}').map_or(out.len(), |i| i + 1)];
    serde_json::from_str(json).unwrap_or(serde_json::Value::Null)
}

fn main() {
    let seconds: u64 = setting("LIFEBOAT_BENCH_SECONDS", common::sized(300, 15));
    let dir = tempfile::tempdir().unwrap();
    write_sites(dir.path());
    let config = dir.path().join("lifeboat.toml");

    // Baselines: one cycle of every group (the seed, then an incremental one), validation.
    let (code, out) = lifeboat(&config, &["replicate"]);
    assert_eq!(code, 0, "{out}");
    let t = Instant::now();
    let (code, out) = lifeboat(&config, &["replicate"]);
    assert_eq!(code, 0, "{out}");
    let one_cycle = t.elapsed().as_secs_f64();
    let mut validate = Vec::new();
    let mut validate_rss = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let (code, out) = lifeboat(&config, &["plan", "validate"]);
        assert_eq!(code, 0, "{out}");
        validate.push(t.elapsed().as_secs_f64());
        validate_rss = validate_rss.max(peak_rss_of_validate(&config));
    }

    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut daemon = Killed(
        Command::new(HELPER)
            .args(["cli", "--config", &config.display().to_string(), "daemon"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let pid = daemon.0.id();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = {
        let (d, s) = (dir.path().to_path_buf(), stop.clone());
        std::thread::spawn(move || writer(d, s))
    };
    // Let every group get its first daemon cycle, then sample.
    std::thread::sleep(Duration::from_secs(15));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut rpos = Vec::new();
    let mut failures = 0;
    while Instant::now() < until {
        let st = status(&config);
        assert_eq!(st["source"], "daemon", "{st}");
        for v in st["vms"].as_array().unwrap() {
            if let Some(s) = v["rpo"]["seconds"].as_f64() {
                rpos.push(s);
            }
        }
        for g in st["groups"].as_array().unwrap() {
            failures += usize::from(!g["last_error"].is_null());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    w.join().unwrap();

    // Reload to an hour's interval: its time to apply, then the idle CPU.
    let generation = status(&config)["daemon"]["config"]["generation"]
        .as_u64()
        .unwrap();
    let t = Instant::now();
    let tmp = dir.path().join("lifeboat.toml.new");
    std::fs::write(&tmp, inventory("1h", "2h")).unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    while status(&config)["daemon"]["config"]["generation"].as_u64() != Some(generation + 1) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the reload did not apply"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let reload = t.elapsed().as_secs_f64();
    // Of which validating and applying (the rest is the watch's 300 ms settle and this poll).
    let applying = status(&config)["daemon"]["config"]["last_reload"]["seconds"]
        .as_f64()
        .unwrap_or(f64::NAN);
    // Cycles scheduled under the old interval finish within one.
    std::thread::sleep(Duration::from_secs(15));
    let ticks = cpu_ticks(pid);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let hz = 100.0; // USER_HZ on Linux
    let idle_cpu = (cpu_ticks(pid) - ticks) as f64 / hz / t.elapsed().as_secs_f64();
    let rss = status_kib(pid, "VmHWM:");

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exit = daemon.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");

    let p50 = percentile(&mut rpos, 0.5);
    let p99 = percentile(&mut rpos, 0.99);
    let target = 10.0 + one_cycle;
    let validate = percentile(&mut validate, 0.5);
    println!(
        "daemon: {} VMs, 1 GiB disks with 4 MiB of data, crash_interval 10s, {seconds}s",
        vms()
    );
    println!(
        "  RPO per VM: p50 {p50:.2}s, p99 {p99:.2}s ({} samples); interval + one cycle of every group ({one_cycle:.2}s by `replicate`) = {target:.2}s → p99 {:.2}× that (target ≤ 1)",
        rpos.len(),
        p99 / target
    );
    println!("  groups reporting an error in a sample: {failures}");
    println!(
        "  peak RSS {:.1} MiB (target ≤ 100) vs `plan validate` {:.1} MiB → {:.2}×",
        rss as f64 / 1024.0,
        validate_rss as f64 / 1024.0,
        rss as f64 / validate_rss.max(1) as f64
    );
    println!(
        "  idle CPU between cycles {:.2} % of a core (target ≤ 2 %)",
        idle_cpu * 100.0
    );
    println!(
        "  reload: edit to applied {reload:.3}s (300 ms of it the watch settling), validate + apply inside the daemon {applying:.3}s vs `plan validate` of the same files {validate:.3}s → {:.2}×",
        applying / validate
    );
}

/// Peak RSS of a `plan validate` process, in KiB: its VmHWM, read until it exits.
fn peak_rss_of_validate(config: &Path) -> u64 {
    let mut child = Command::new(HELPER)
        .args([
            "cli",
            "--config",
            &config.display().to_string(),
            "plan",
            "validate",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            let hwm = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            peak = peak.max(hwm);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    peak
}
