//! Instant boot against restoring first: the time from `lifeboat failover --test` to the test
//! guest answering healthy, booted from the repository (its disk hydrating behind it) and
//! restored first (`--no-instant`), beside the guest's own boot on a local copy of the same disk,
//! for each disk size; and how long hydration took.
//!
//! An instant boot is timed twice: the VM's first (its export server reads ahead of the guest
//! only) and the next ("again"), whose server has the trace the first recorded (followed only
//! from an object store: `LIFEBOAT_BENCH_WEST=s3` puts the target's repository on a SeaweedFS
//! S3 server started here, else it is a local folder).
//!
//! `cargo bench -p lifeboat-tests --bench instant`. Needs QEMU and the test guest. The disks are
//! sparse with a quarter written, or all of it for a size ending in `f`; `LIFEBOAT_BENCH_SIZES`
//! (MiB, comma-separated, default `1024,4096`; the issue's set is `1024,4096,16384,4096f`),
//! `LIFEBOAT_BENCH_RUNS` (default 3); `LIFEBOAT_BENCH_QUICK=1`: 64 MiB, one run.
//! The test guest reads its whole disk as it starts, so its own boot grows with the disk: the
//! figure to watch is instant against that boot, and against restore-then-boot.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;
#[path = "../servers.rs"]
#[allow(dead_code)]
mod servers;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::guest::{boot, guest, healthy_at, qemu};
use common::{percentile, setting};
use lifeboat_compute::driver::{Compute, ProcessDriver};

const HELPER: &str = env!("CARGO_BIN_EXE_lifeboat-test-helper");
const DRILL_ADDR: &str = "127.192.91.254:8080";

fn lifeboat(config: &Path, args: &[&str]) {
    let out = Command::new(HELPER)
        .arg("cli")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lifeboat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sparse disk of `mib` MiB with `written` MiB at its end written (data that does not
/// compress).
fn make_disk(path: &Path, mib: u64, written: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    f.seek(SeekFrom::Start((mib - written) << 20)).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..written {
        for word in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
}

fn lab(dir: &Path, mib: u64, written: u64, west: &str) {
    let guest = guest();
    std::fs::create_dir_all(dir.join("plans")).unwrap();
    std::fs::create_dir_all(dir.join("vms")).unwrap();
    make_disk(&dir.join("vms/vm-1.img"), mib, written);
    std::fs::write(
        dir.join("lifeboat.toml"),
        format!(
            r#"version = 1
[sites.east]
store = "east"
compute = "qemu"
replicate_to = "west"
networks.prod.subnets = {{ app = "127.192.1.0/24" }}
[sites.west]
store = "{west}"
compute = "qemu"
networks.prod-dr.subnets = {{ app = "127.192.11.0/24" }}
networks.drill.subnets = {{ app = "127.192.91.0/24" }}
[policies.default]
crash_interval = "1h"
retention = "1d"
rpo_threshold = "1d"
# A fully written disk is copied whole at the cut where the file system has no reflinks.
max_pause = "300s"
[vms.vm-1]
site = "east"
policy = "default"
disks.data = "vms/vm-1.img"
nics = [{{ network = "prod", subnet = "app", ip = "127.192.1.10" }}]
machine = {{ kernel = {:?}, initrd = {:?}, append = "console=ttyS0 panic=-1 quiet", ports = [8080] }}
health = {{ http = "http://{{nic0.ip}}:8080/health", timeout = "600s" }}
"#,
            guest.join("vmlinuz"),
            guest.join("initrd.gz")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("plans/p.toml"),
        r#"version = 1
name = "p"
source = "east"
target = "west"
recovery_point = "latest"
[network]
map = [{ from = "east/prod", to = "west/prod-dr" }]
test = "west/drill"
test_isolation = "none"
[[group]]
name = "app"
vms = ["vm-1"]
"#,
    )
    .unwrap();
}

/// One drill: seconds from `failover --test` to healthy, and the drill's own end (after
/// hydration, for an instant one).
fn drill(config: &Path, instant: bool) -> (f64, f64) {
    let started = Instant::now();
    let mut child = Command::new(HELPER)
        .arg("cli")
        .arg("--config")
        .arg(config)
        .args(["failover", "p", "--test"])
        .arg(if instant { "--instant" } else { "--no-instant" })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while !healthy_at(DRILL_ADDR) {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the drill never answered"
        );
        if let Ok(Some(status)) = child.try_wait()
            && !status.success()
        {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("the drill ended ({status}) before its guest answered: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let healthy = started.elapsed().as_secs_f64();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = started.elapsed().as_secs_f64();
    lifeboat(config, &["cleanup", "p"]);
    (healthy, done)
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

fn main() {
    // (MiB, MiB written)
    let sizes: Vec<(u64, u64)> = setting(
        "LIFEBOAT_BENCH_SIZES",
        common::sized("1024,4096".to_string(), "64".to_string()),
    )
    .split(',')
    .filter_map(|s| {
        let s = s.trim();
        match s.strip_suffix('f') {
            Some(full) => full.parse().ok().map(|m| (m, m)),
            None => s.parse().ok().map(|m: u64| (m, m / 4)),
        }
    })
    .collect();
    let runs: usize = setting("LIFEBOAT_BENCH_RUNS", common::sized(3, 1));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = ProcessDriver::new();
    println!(
        "instant boot, test guest under TCG, median of {runs}; the target's repository {}",
        match setting("LIFEBOAT_BENCH_WEST", String::new()).as_str() {
            "s3" => "on a SeaweedFS S3 server here",
            _ => "in a local folder",
        }
    );
    println!(
        "{:>8} {:>8} {:>10} {:>9} {:>9} {:>13} {:>8} {:>16}",
        "disk",
        "written",
        "own boot",
        "instant",
        "again",
        "restore+boot",
        "ratio",
        "instant+hydrated"
    );
    for (mib, written) in sizes {
        let dir = tempfile::tempdir().unwrap();
        let west = match setting("LIFEBOAT_BENCH_WEST", String::new()).as_str() {
            "s3" => servers::s3(&format!("instant-{mib}-{written}")),
            _ => "west".to_string(),
        };
        lab(dir.path(), mib, written, &west);
        let config = dir.path().join("lifeboat.toml");
        let trace = dir.path().join(".lifeboat/state/traces/vm-1.json");
        lifeboat(&config, &["replicate"]);
        let (mut own, mut fast, mut traced, mut full, mut hydrated) =
            (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..runs {
            // The guest's own boot, on a local copy of the disk.
            let copy = dir.path().join("copy.img");
            std::fs::copy(dir.path().join("vms/vm-1.img"), &copy).unwrap();
            let (h, secs) = boot(
                &rt,
                &driver,
                dir.path(),
                qemu(&guest(), &copy, "raw", "127.192.1.99:8080"),
                "127.192.1.99:8080",
            );
            rt.block_on(driver.stop(&h, Duration::from_secs(10)))
                .unwrap();
            own.push(secs);
            // A first boot (no trace), which records one; then a boot that follows it.
            let _ = std::fs::remove_file(&trace);
            let (healthy, done) = drill(&config, true);
            fast.push(healthy);
            hydrated.push(done);
            assert!(trace.exists(), "the first instant boot recorded no trace");
            traced.push(drill(&config, true).0);
            full.push(drill(&config, false).0);
        }
        let (o, f, t, r, d) = (
            median(&mut own),
            median(&mut fast),
            median(&mut traced),
            median(&mut full),
            median(&mut hydrated),
        );
        println!(
            "{:>5} MiB {:>4} MiB {o:>9.2}s {f:>8.2}s {t:>8.2}s {r:>12.2}s {:>7.2}× {d:>15.2}s",
            mib,
            written,
            r / f.min(t)
        );
    }
}
