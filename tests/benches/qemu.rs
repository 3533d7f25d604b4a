//! A real VM under QEMU (TCG): the test guest's boot-to-healthy beside the same workload started
//! as a plain process, and replication cycles of the running guest — how long each cut holds it
//! paused, and the cycle's time and bytes read (a full scan: the dirty-bitmap capture of the
//! `qemu` driver is not there yet, so this is its baseline).
//!
//! `cargo bench -p lifeboat-tests --bench qemu`. Needs QEMU and the test guest (see README.md,
//! `LIFEBOAT_TEST_GUEST`). `LIFEBOAT_BENCH_MIB` sets the disk (default 1024), `LIFEBOAT_BENCH_RUNS`
//! the boots and cycles (default 5 and 4× that).

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{percentile, setting};
use lifeboat_compute::PauseVms;
use lifeboat_compute::driver::{Compute, Handle, Launch, ProcessDriver};
use lifeboat_replication::groups::GroupSpec;
use lifeboat_replication::{CycleOptions, Store};

const HELPER: &str = env!("CARGO_BIN_EXE_lifeboat-test-helper");

fn guest() -> PathBuf {
    let dir = std::env::var_os("LIFEBOAT_TEST_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/lifeboat-ci/guest")
        });
    assert!(
        dir.join("vmlinuz").is_file(),
        "no test guest in {}: run contrib/guest/build.sh {}",
        dir.display(),
        dir.display()
    );
    dir
}

fn qemu(guest: &Path, disk: &Path, addr: &str) -> Vec<String> {
    [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "256",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "null",
        "-kernel",
        &guest.join("vmlinuz").display().to_string(),
        "-initrd",
        &guest.join("initrd.gz").display().to_string(),
        "-append",
        "console=ttyS0 panic=-1 quiet",
        "-drive",
        &format!("file={},if=virtio,format=raw", disk.display()),
        "-netdev",
        &format!("user,id=n0,hostfwd=tcp:{addr}-:8080"),
        "-device",
        "virtio-net-pci,netdev=n0",
    ]
    .map(String::from)
    .to_vec()
}

fn healthy(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200))
        .ok()
        .and_then(|mut s| {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            s.write_all(b"GET /health HTTP/1.0\r\n\r\n").ok()?;
            let mut b = String::new();
            s.read_to_string(&mut b).ok()?;
            Some(b.starts_with("HTTP/1.1 200") || b.starts_with("HTTP/1.0 200"))
        })
        .unwrap_or(false)
}

/// Starts `argv` and returns the handle and the time until `addr` answers /health.
fn boot(
    rt: &tokio::runtime::Runtime,
    driver: &Arc<ProcessDriver>,
    dir: &Path,
    argv: Vec<String>,
    addr: &str,
) -> (Handle, f64) {
    let started = Instant::now();
    let h = rt
        .block_on(driver.start(&Launch {
            vm: "vm".into(),
            argv,
            dir: dir.to_path_buf(),
            log: dir.join("vm.log"),
            key: String::new(),
        }))
        .unwrap();
    while !healthy(addr) {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{addr} never healthy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (h, started.elapsed().as_secs_f64())
}

/// Times each hold of the cut it wraps: how long the guest stayed paused.
struct Timed {
    inner: PauseVms,
    since: Mutex<Option<Instant>>,
    held: Mutex<Vec<f64>>,
}

#[async_trait::async_trait]
impl lifeboat_replication::Cut for Timed {
    async fn hold(&self) -> lifeboat_replication::Result<()> {
        self.inner.hold().await?;
        *self.since.lock().unwrap() = Some(Instant::now());
        Ok(())
    }
    async fn release(&self) -> lifeboat_replication::Result<()> {
        let r = self.inner.release().await;
        if let Some(t) = self.since.lock().unwrap().take() {
            self.held
                .lock()
                .unwrap()
                .push(t.elapsed().as_secs_f64() * 1000.0);
        }
        r
    }
}

fn main() {
    let guest = guest();
    let mib: u64 = setting("LIFEBOAT_BENCH_MIB", 1024);
    let runs: usize = setting("LIFEBOAT_BENCH_RUNS", 5);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = ProcessDriver::new();
    println!(
        "guest: {}; disk {mib} MiB; {runs} boots, {} cycles; medians and p99",
        guest.display(),
        runs * 4
    );

    // Boot to healthy: the guest under TCG, and the same workload as a process.
    let disk = dir.join("disk.img");
    let (mut vm_t, mut proc_t) = (Vec::new(), Vec::new());
    for i in 0..runs {
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let addr = format!("127.77.0.{}:8080", 10 + i);
        let (h, t) = boot(&rt, &driver, dir, qemu(&guest, &disk, &addr), &addr);
        vm_t.push(t);
        rt.block_on(driver.stop(&h, Duration::from_secs(5)))
            .unwrap();
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let addr = format!("127.77.1.{}:8080", 10 + i);
        let argv = [HELPER, "demo-vm", "--disk", "disk.img", "--listen", &addr]
            .map(String::from)
            .to_vec();
        let (h, t) = boot(&rt, &driver, dir, argv, &addr);
        proc_t.push(t);
        rt.block_on(driver.stop(&h, Duration::from_secs(5)))
            .unwrap();
    }
    println!(
        "boot to healthy  guest (TCG) p50 {:.2}s p99 {:.2}s   demo-vm process p50 {:.3}s   ratio {:.0}×",
        percentile(&mut vm_t.clone(), 0.5),
        percentile(&mut vm_t.clone(), 0.99),
        percentile(&mut proc_t.clone(), 0.5),
        percentile(&mut vm_t, 0.5) / percentile(&mut proc_t, 0.5)
    );

    // Cycles of the running guest: each cut pauses QEMU; the scan reads the whole disk.
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let addr = "127.77.2.10:8080";
    let (h, _) = boot(&rt, &driver, dir, qemu(&guest, &disk, addr), addr);
    let mut group = GroupSpec::one_disk("vm", "data", &disk, dir);
    group.max_pause = Duration::from_secs(30);
    let cut = Arc::new(Timed {
        inner: PauseVms::new(driver.clone(), vec![h.clone()], Duration::from_secs(30)),
        since: Mutex::new(None),
        held: Mutex::new(Vec::new()),
    });
    let (east, west) = (
        Store::open_cache("east", dir).unwrap(),
        Store::open("west", dir).unwrap(),
    );
    let (mut cycle_t, mut changed) = (Vec::new(), Vec::new());
    for i in 0..runs * 4 {
        std::thread::sleep(Duration::from_millis(500));
        let opts = CycleOptions {
            cut: Some(cut.clone()),
            ..Default::default()
        };
        let report = rt
            .block_on(lifeboat_replication::replicate(&group, &east, &west, &opts))
            .unwrap();
        if i > 0 {
            cycle_t.push(report.seconds);
            changed.push(report.changed_bytes as f64);
        }
    }
    rt.block_on(driver.stop(&h, Duration::from_secs(5)))
        .unwrap();
    let mut held = cut.held.lock().unwrap().clone();
    println!(
        "pause per cut    p50 {:.1} ms p99 {:.1} ms (QEMU stopped by signal until the disk's view is a copy: it grows with the data to copy where there are no reflinks)",
        percentile(&mut held.clone(), 0.5),
        percentile(&mut held, 0.99)
    );
    println!(
        "cycle (full scan) p50 {:.2}s p99 {:.2}s of a {mib} MiB disk (holes skipped) for {:.2} MiB changed: the baseline of bitmap capture",
        percentile(&mut cycle_t.clone(), 0.5),
        percentile(&mut cycle_t, 0.99),
        percentile(&mut changed, 0.5) / 1048576.0
    );
}
