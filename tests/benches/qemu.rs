//! A real VM under QEMU (TCG): the test guest's boot-to-healthy beside the same workload started
//! as a plain process; replication cycles of the running guest with 1 % of its disk written
//! between them, reading the dirty bitmap's extents against reading the whole disk (time, bytes
//! read), and the guest's pause per cut; the RPO achieved with the guest writing flat out.
//!
//! `cargo bench -p lifeboat-tests --bench qemu`. Needs QEMU and the test guest (see CONTRIBUTING.md,
//! `LIFEBOAT_TEST_GUEST`). `LIFEBOAT_BENCH_MIB` sets the disk (default 4096), `LIFEBOAT_BENCH_RUNS`
//! the boots and cycles (default 5 and 4× that); `LIFEBOAT_BENCH_QUICK=1`: 64 MiB, one boot.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::guest::{boot, guest, hmp, qemu, scattered};
use common::{percentile, setting};
use lifeboat_compute::GroupCut;
use lifeboat_compute::driver::{Compute, Handle, ProcessDriver};
use lifeboat_replication::groups::GroupSpec;
use lifeboat_replication::{CycleOptions, Store};

const HELPER: &str = env!("CARGO_BIN_EXE_lifeboat-test-helper");

/// Writes `bytes` through the running VM's own block layer (HMP `qemu-io` on its disk), in
/// 64 KiB blocks at pseudo-random places: what a guest writing would leave to capture.
fn write_through_qemu(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
    disk_bytes: u64,
    bytes: u64,
    round: u64,
) {
    let commands: Vec<String> = scattered(disk_bytes, bytes, 65536, round)
        .into_iter()
        .map(|at| {
            format!(
                "qemu-io virtio0 \"write -P {} {at} 65536\"",
                (round % 250) + 1
            )
        })
        .collect();
    hmp(rt, socket, commands);
}

fn state(addr: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /state HTTP/1.0\r\n\r\n").unwrap();
    let mut b = String::new();
    s.read_to_string(&mut b).unwrap();
    serde_json::from_str(b.split("\r\n\r\n").nth(1).unwrap_or("{}")).unwrap()
}

fn main() {
    let guest = guest();
    let mib: u64 = setting("LIFEBOAT_BENCH_MIB", common::sized(4096, 64));
    let runs: usize = setting("LIFEBOAT_BENCH_RUNS", common::sized(5, 1));
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
        let (h, t) = boot(&rt, &driver, dir, qemu(&guest, &disk, "raw", &addr), &addr);
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

    // Cycles of the running guest: QEMU cuts each disk (copy-before-write fleece, read over
    // NBD); 1 % of the disk is written through QEMU between cycles; a cycle reads only the
    // bitmap's dirty extents, or (the baseline, alternating) the whole disk.
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let qmp_socket = dir.join("vm.qmp");
    let with_qmp = |mut argv: Vec<String>, append: &str| {
        if let Some(a) = argv.iter_mut().find(|a| a.starts_with("console=")) {
            a.push_str(append);
        }
        argv.extend([
            "-qmp".to_string(),
            format!("unix:{},server=on,wait=off", qmp_socket.display()),
        ]);
        argv
    };
    let addr = "127.77.2.10:8080";
    let (h, _) = boot(
        &rt,
        &driver,
        dir,
        with_qmp(qemu(&guest, &disk, "raw", addr), ""),
        addr,
    );
    let mut group = GroupSpec::one_disk("vm", "data", &disk, dir);
    group.max_pause = Duration::from_secs(30);
    let cut_of = |h: &Handle| -> Arc<dyn lifeboat_replication::Cut> {
        let disk = disk.clone();
        Arc::new(GroupCut::new(
            driver.clone(),
            vec![h.clone()],
            move |_| vec![disk.clone()],
            Duration::from_secs(30),
        ))
    };
    let (east, west) = (
        Store::open_cache("east", dir).unwrap(),
        Store::open("west", dir).unwrap(),
    );
    let cycle = |h: &Handle, full_scan: bool| {
        let opts = CycleOptions {
            cut: Some(cut_of(h)),
            full_scan,
            ..Default::default()
        };
        rt.block_on(lifeboat_replication::replicate(&group, &east, &west, &opts))
            .unwrap()
    };
    cycle(&h, false);
    let one_percent = (mib << 20) / 100;
    let (mut inc_t, mut inc_read, mut full_t, mut full_read, mut paused) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs * 4 {
        write_through_qemu(&rt, &qmp_socket, mib << 20, one_percent, i as u64);
        let full = i % 2 == 1;
        let r = cycle(&h, full);
        let (t, read) = if full {
            (&mut full_t, &mut full_read)
        } else {
            (&mut inc_t, &mut inc_read)
        };
        t.push(r.seconds);
        read.push(r.read_bytes as f64 / 1048576.0);
        paused.push(r.paused_seconds.unwrap_or(0.0) * 1000.0);
    }
    rt.block_on(driver.stop(&h, Duration::from_secs(5)))
        .unwrap();
    let (inc, fullp) = (
        percentile(&mut inc_t.clone(), 0.5),
        percentile(&mut full_t.clone(), 0.5),
    );
    println!(
        "cycle, {:.0} MiB (1 %) written between cycles: dirty bitmap p50 {inc:.2}s p99 {:.2}s read {:.1} MiB   full scan (baseline) p50 {fullp:.2}s p99 {:.2}s read {:.1} MiB   ratio {:.3} (time) {:.4} (bytes read)",
        one_percent as f64 / 1048576.0,
        percentile(&mut inc_t, 0.99),
        percentile(&mut inc_read.clone(), 0.5),
        percentile(&mut full_t, 0.99),
        percentile(&mut full_read.clone(), 0.5),
        inc / fullp,
        percentile(&mut inc_read, 0.5) / percentile(&mut full_read, 0.5)
    );
    println!(
        "guest pause per cut (the transaction) p50 {:.1} ms p99 {:.1} ms",
        percentile(&mut paused.clone(), 0.5),
        percentile(&mut paused, 0.99)
    );

    // The achieved RPO with the guest writing as fast as it can (each record synced): cycles
    // back to back; a disaster just before a point commits loses what was written since the
    // previous point's cut.
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let (h, _) = boot(
        &rt,
        &driver,
        dir,
        with_qmp(qemu(&guest, &disk, "raw", addr), " lifeboat.rate=100000"),
        addr,
    );
    let mut group2 = GroupSpec::one_disk("vm", "data", &disk, dir);
    group2.name = "fast".into();
    group2.max_pause = Duration::from_secs(30);
    let written_before = state(addr)["written_since_start"].as_u64().unwrap_or(0);
    let began = Instant::now();
    let mut rpo = Vec::new();
    let mut previous_cut: Option<u64> = None;
    while began.elapsed() < Duration::from_secs(20) || rpo.len() < 5 {
        let opts = CycleOptions {
            cut: Some(cut_of(&h)),
            ..Default::default()
        };
        let r = rt
            .block_on(lifeboat_replication::replicate(
                &group2, &east, &west, &opts,
            ))
            .unwrap();
        let committed = lifeboat_replication::clock::unix_ms(std::time::SystemTime::now());
        if let Some(cut) = previous_cut {
            rpo.push((committed - cut) as f64 / 1000.0);
        }
        previous_cut = Some(r.captured_unix_ms);
    }
    let seconds = began.elapsed().as_secs_f64();
    let written = state(addr)["written_since_start"].as_u64().unwrap_or(0) - written_before;
    rt.block_on(driver.stop(&h, Duration::from_secs(5)))
        .unwrap();
    println!(
        "achieved RPO, guest writing flat out ({:.0} records/s, {:.2} MiB/s, each synced): p50 {:.2}s p99 {:.2}s over {} points (crash_interval 0: cycles back to back)",
        written as f64 / seconds,
        written as f64 * 4096.0 / seconds / 1048576.0,
        percentile(&mut rpo.clone(), 0.5),
        percentile(&mut rpo, 0.99),
        rpo.len() + 1
    );
}
