//! The test guest, as the VM benchmarks boot it: its files, a QEMU command line that forwards
//! its workload's port, and boot-to-healthy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_compute::driver::{Compute, Handle, Launch, ProcessDriver};

pub fn guest() -> PathBuf {
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

pub fn qemu(guest: &Path, disk: &Path, format: &str, addr: &str) -> Vec<String> {
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
        &format!("file={},if=virtio,format={format}", disk.display()),
        "-netdev",
        &format!("user,id=n0,hostfwd=tcp:{addr}-:8080"),
        "-device",
        "virtio-net-pci,netdev=n0",
    ]
    .map(String::from)
    .to_vec()
}

pub fn healthy_at(addr: &str) -> bool {
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
pub fn boot(
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
            netns: None,
            domain: None,
        }))
        .unwrap();
    while !healthy_at(addr) {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{addr} never healthy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (h, started.elapsed().as_secs_f64())
}

/// Where `bytes` worth of `block`-sized writes land on a disk of `disk_bytes`: pseudo-random
/// block-aligned offsets, the same for the same `round` (at least one write).
pub fn scattered(disk_bytes: u64, bytes: u64, block: u64, round: u64) -> Vec<u64> {
    let blocks = disk_bytes / block;
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ round;
    (0..(bytes / block).max(1))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % blocks) * block
        })
        .collect()
}

/// Runs HMP `commands` (`qemu-io …`) through the QMP socket of a QEMU the qemu driver started.
pub fn hmp(rt: &tokio::runtime::Runtime, socket: &Path, commands: Vec<String>) {
    rt.block_on(async {
        let mut q = lifeboat_compute::qmp::Qmp::connect(socket).await?;
        for c in commands {
            q.execute(
                "human-monitor-command",
                Some(serde_json::json!({ "command-line": c })),
            )
            .await?;
        }
        Ok::<_, String>(())
    })
    .unwrap();
}
