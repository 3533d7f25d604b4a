//! The daemon's API under load: 1,000 VMs in 100 consistency groups of 10 (1 MiB disks with a
//! little data, a point every second).
//!
//! Figures, each against its baseline from the same run:
//! - `GET /v1/status` (the whole document: 1,000 VMs, 100 groups), p50 and p99 over
//!   `LIFEBOAT_BENCH_REQUESTS` (default 500) requests on fresh TCP connections with the token,
//!   against `GET /healthz` on the same daemon (the server's floor);
//! - the event stream's fan-out to 50 subscribers while the 100 groups replicate for
//!   `LIFEBOAT_BENCH_SECONDS` (default 30): every subscriber's lag (receipt minus the event's
//!   time) p50 and p99, and events lost (target 0), against 1 subscriber's lag in a first phase.
//!
//! `cargo bench -p lifeboat-tests --bench api`

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{Killed, percentile, setting};

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// 1000 VMs (quick mode: 50).
fn vms() -> usize {
    common::sized(1000, 50)
}
const GROUP: usize = 10;
const TOKEN: &str = "bench-token-0123456789abcdef";
const HELPER: &str = env!("CARGO_BIN_EXE_lifeboat-test-helper");

fn write_sites(dir: &Path) {
    std::fs::create_dir_all(dir.join("vms")).unwrap();
    let mut inv = String::from(
        r#"version = 1
[sites.east]
store = "east"
compute = "process"
replicate_to = "west"
[sites.west]
store = "west"
compute = "process"
[policies.default]
crash_interval = "1s"
retention = "10m"
rpo_threshold = "1m"
"#,
    );
    for i in 0..vms() {
        let mut f = std::fs::File::create(dir.join(format!("vms/vm-{i:04}.img"))).unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all(&[(i % 251) as u8 + 1; 4096]).unwrap();
        writeln!(
            inv,
            "[vms.vm-{i:04}]\nsite = \"east\"\npolicy = \"default\"\ndisks.os = \"vms/vm-{i:04}.img\""
        )
        .unwrap();
    }
    for g in 0..vms() / GROUP {
        let members: Vec<String> = (g * GROUP..(g + 1) * GROUP)
            .map(|i| format!("\"vm-{i:04}\""))
            .collect();
        writeln!(
            inv,
            "[consistency_groups.g{g:03}]\nvms = [{}]",
            members.join(", ")
        )
        .unwrap();
    }
    std::fs::write(dir.join("lifeboat.toml"), inv).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
}

/// One request on a fresh connection: (status, body bytes).
fn get(addr: &str, path: &str) -> (u16, usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (status, raw.len())
}

fn latency(addr: &str, path: &str, n: usize) -> (f64, f64, usize) {
    let mut ms = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let (status, bytes) = get(addr, path);
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "{path}");
        size = bytes;
    }
    (percentile(&mut ms, 0.5), percentile(&mut ms, 0.99), size)
}

/// What one subscriber received: (id, lag in ms) per event.
type Received = Arc<Mutex<Vec<(u64, f64)>>>;

/// A subscriber on its own connection and thread.
fn subscribe(addr: &str, received: Received) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /v1/events HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    std::thread::spawn(move || {
        let reader = BufReader::new(s);
        for line in reader.lines() {
            let Ok(line) = line else { return };
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let Ok(n) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            let (Some(id), Some(at)) = (n["id"].as_u64(), n["at"].as_str()) else {
                continue;
            };
            let at = humantime::parse_rfc3339(at).unwrap();
            let lag = SystemTime::now()
                .duration_since(at)
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0;
            received.lock().unwrap().push((id, lag));
        }
    });
}

/// Lags over every subscriber, and events some subscriber missed (of those any one received).
fn fan_out(addr: &str, subscribers: usize, seconds: u64) -> (f64, f64, usize, usize) {
    let all: Vec<Received> = (0..subscribers).map(|_| Received::default()).collect();
    for r in &all {
        subscribe(addr, r.clone());
    }
    std::thread::sleep(Duration::from_secs(seconds));
    // Events published in the last second may still be on their way: judge those before it.
    let seen: Vec<Vec<(u64, f64)>> = all.iter().map(|r| r.lock().unwrap().clone()).collect();
    let cut = seen
        .iter()
        .filter_map(|s| s.iter().map(|(id, _)| *id).max())
        .min()
        .unwrap_or(0);
    let ids: std::collections::BTreeSet<u64> = seen
        .iter()
        .flat_map(|s| s.iter().map(|(id, _)| *id))
        .filter(|id| *id <= cut)
        .collect();
    let mut lost = 0;
    let mut lags = Vec::new();
    for s in &seen {
        let mine: std::collections::BTreeSet<u64> = s.iter().map(|(id, _)| *id).collect();
        lost += ids.difference(&mine).count();
        lags.extend(s.iter().filter(|(id, _)| *id <= cut).map(|(_, l)| *l));
    }
    let events = ids.len();
    (
        percentile(&mut lags, 0.5),
        percentile(&mut lags, 0.99),
        events,
        lost,
    )
}

fn main() {
    let seconds: u64 = setting("LIFEBOAT_BENCH_SECONDS", common::sized(30, 5));
    let requests: usize = setting("LIFEBOAT_BENCH_REQUESTS", common::sized(500, 50));
    let dir = tempfile::tempdir().unwrap();
    write_sites(dir.path());
    let config = dir.path().join("lifeboat.toml");
    let addr = "127.0.0.1:9291";
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let _daemon = Killed(
        Command::new(HELPER)
            .args([
                "cli",
                "--config",
                &config.display().to_string(),
                "daemon",
                "--listen",
                addr,
                "--token-file",
                &dir.path().join("token").display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(addr).is_err() || get(addr, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "the daemon did not get ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every group's first point, so the status holds 1,000 VMs with points.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /v1/status HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let doc: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let with_points = doc["vms"].as_array().map_or(0, |v| {
            v.iter().filter(|v| !v["last_point"].is_null()).count()
        });
        if with_points == vms() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {with_points} VMs have a point"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    let (h50, h99, _) = latency(addr, "/healthz", requests);
    let (s50, s99, size) = latency(addr, "/v1/status", requests);
    println!(
        "status with {} VMs in {} groups ({size} bytes), {requests} requests, fresh connections:",
        vms(),
        vms() / GROUP
    );
    println!("  /v1/status  p50 {s50:.2} ms  p99 {s99:.2} ms");
    println!("  /healthz    p50 {h50:.2} ms  p99 {h99:.2} ms   (baseline)");
    println!("  ratio       p50 {:.1}×  p99 {:.1}×", s50 / h50, s99 / h99);

    let (b50, b99, b_events, b_lost) = fan_out(addr, 1, seconds / 2);
    let (f50, f99, f_events, f_lost) = fan_out(addr, 50, seconds);
    println!(
        "event fan-out while {} groups replicate every second:",
        vms() / GROUP
    );
    println!(
        "  50 subscribers  lag p50 {f50:.1} ms  p99 {f99:.1} ms  events {f_events}  lost {f_lost}"
    );
    println!(
        "  1 subscriber    lag p50 {b50:.1} ms  p99 {b99:.1} ms  events {b_events}  lost {b_lost}   (baseline)"
    );
    println!(
        "  ratio           p50 {:.1}×  p99 {:.1}×",
        f50 / b50.max(0.001),
        f99 / b99.max(0.001)
    );
}
