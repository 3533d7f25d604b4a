//! A running libvirt domain (the test guest under TCG) with a qcow2 disk, 1 % of it written
//! between cycles: Lifeboat's cycle through libvirt (an incremental pull backup from the parent's
//! checkpoint, only the dirty extents read) against a full pull read of the same disk, and
//! against the qemu driver's own bitmap cycle on a QEMU it started (time, bytes read, guest
//! pause); the domain's start-to-healthy against the same guest started by the qemu driver.
//!
//! `cargo bench -p lifeboat-tests --bench libvirt`. Needs libvirtd (`qemu:///system`), QEMU and
//! the test guest. `LIFEBOAT_BENCH_MIB` sets the disk (default 4096), `LIFEBOAT_BENCH_RUNS` the
//! boots and cycles (default 5 and 4× that); `LIFEBOAT_BENCH_QUICK=1`: 64 MiB, one boot.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::guest::{boot, guest, healthy_at, hmp, qemu, scattered};
use common::{percentile, setting};
use lifeboat_compute::GroupCut;
use lifeboat_compute::driver::{Compute, Handle, ProcessDriver};
use lifeboat_compute::libvirt::backup::{LibvirtCut, LibvirtVm};
use lifeboat_compute::libvirt::{DomainDisk, Host, UNDEFINE_CHECKPOINTS_METADATA};
use lifeboat_replication::groups::GroupSpec;
use lifeboat_replication::{CycleOptions, Store};

const URI: &str = "qemu:///system";

/// The domain: the guest from a qcow2 disk, its workload's port forwarded to `addr` (QEMU's
/// user networking, as the qemu driver gives it), a QMP-free monitor reached through libvirt.
fn domain_xml(name: &str, guest: &Path, disk: &Path, addr: &str) -> String {
    format!(
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>{name}</name>\
         <memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 panic=-1 quiet</cmdline></os><features><acpi/></features>\
         <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <serial type='null'><target port='0'/></serial><memballoon model='none'/></devices>\
         <qemu:commandline><qemu:arg value='-netdev'/><qemu:arg value='user,id=n0,hostfwd=tcp:{addr}-:8080'/>\
         <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev=n0,addr=0x9'/></qemu:commandline></domain>",
        guest.join("vmlinuz").display(),
        guest.join("initrd.gz").display(),
        disk.display()
    )
}

/// Writes `bytes` in 1 MiB blocks at pseudo-random places through the domain's own block layer
/// (HMP `qemu-io` on the virtio device's backend, through `virsh`; the format node itself is
/// locked by the device): what a guest writing would leave to capture.
fn write_through_libvirt(name: &str, disk_bytes: u64, bytes: u64, round: u64) {
    for at in scattered(disk_bytes, bytes, 1 << 20, round) {
        let command = format!(
            "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P {} {at} 1M\"",
            (round % 250) + 1
        );
        let out = std::process::Command::new("virsh")
            .args(["-c", URI, "qemu-monitor-command", name, "--hmp", &command])
            .output()
            .unwrap();
        // HMP answers errors as text, with success; a write says nothing.
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{command}: {out:?}"
        );
    }
}

fn qcow2(path: &Path, mib: u64) {
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(format!("{mib}M"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

struct Cycles {
    seconds: Vec<f64>,
    read_mib: Vec<f64>,
    paused_ms: Vec<f64>,
}

impl Cycles {
    fn new() -> Self {
        Self {
            seconds: Vec::new(),
            read_mib: Vec::new(),
            paused_ms: Vec::new(),
        }
    }

    fn push(&mut self, r: &lifeboat_replication::CycleReport) {
        self.seconds.push(r.seconds);
        self.read_mib.push(r.read_bytes as f64 / 1048576.0);
        self.paused_ms
            .push(r.paused_seconds.unwrap_or(0.0) * 1000.0);
    }

    fn line(&mut self, what: &str) -> f64 {
        let p50 = percentile(&mut self.seconds.clone(), 0.5);
        println!(
            "  {what:<34} p50 {p50:.3}s p99 {:.3}s  read {:.1} MiB  pause p50 {:.1} ms",
            percentile(&mut self.seconds, 0.99),
            percentile(&mut self.read_mib, 0.5),
            percentile(&mut self.paused_ms, 0.5)
        );
        p50
    }
}

fn main() {
    let guest = guest();
    let mib: u64 = setting("LIFEBOAT_BENCH_MIB", common::sized(4096, 64));
    let runs: usize = setting("LIFEBOAT_BENCH_RUNS", common::sized(5, 1));
    let scratch = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(scratch.path()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = ProcessDriver::new();
    let host = Arc::new(Host::open(URI).expect("libvirtd runs at qemu:///system"));
    let name = format!("lb-bench-{}", std::process::id());
    let undefine = |host: &Host| {
        if let Ok(d) = host.lookup(&name) {
            let _ = host.destroy(&d);
            let _ = host.undefine(&d, UNDEFINE_CHECKPOINTS_METADATA);
        }
    };
    println!(
        "guest: {}; qcow2 disk {mib} MiB; {runs} boots, {} cycles; medians and p99",
        guest.display(),
        runs * 4
    );

    // Start to healthy: the domain defined and started by libvirt, against the same guest
    // started by the qemu driver (both under TCG, both with the port forwarded).
    let disk = dir.join("disk.qcow2");
    let (mut lv_t, mut q_t) = (Vec::new(), Vec::new());
    for i in 0..runs {
        qcow2(&disk, 16);
        let addr = format!("127.78.0.{}:8080", 10 + i);
        undefine(&host);
        let started = Instant::now();
        let d = host
            .define(&domain_xml(&name, &guest, &disk, &addr))
            .unwrap();
        host.start(&d).unwrap();
        while !healthy_at(&addr) {
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "{addr} never healthy"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        lv_t.push(started.elapsed().as_secs_f64());
        undefine(&host);
        qcow2(&disk, 16);
        let addr = format!("127.78.1.{}:8080", 10 + i);
        let (h, t) = boot(
            &rt,
            &driver,
            &dir,
            qemu(&guest, &disk, "qcow2", &addr),
            &addr,
        );
        q_t.push(t);
        rt.block_on(driver.stop(&h, Duration::from_secs(5)))
            .unwrap();
    }
    let (lv, q) = (
        percentile(&mut lv_t.clone(), 0.5),
        percentile(&mut q_t.clone(), 0.5),
    );
    println!(
        "start to healthy  libvirt domain p50 {lv:.2}s p99 {:.2}s   qemu driver (baseline) p50 {q:.2}s p99 {:.2}s   ratio {:.2}",
        percentile(&mut lv_t, 0.99),
        percentile(&mut q_t, 0.99),
        lv / q
    );

    // Cycles through libvirt: incremental (the checkpoint's dirty extents) and, alternating,
    // a full pull read of the same disk; 1 % of the disk written between cycles.
    qcow2(&disk, mib);
    let addr = "127.78.2.10:8080";
    undefine(&host);
    let d = host
        .define(&domain_xml(&name, &guest, &disk, addr))
        .unwrap();
    host.start(&d).unwrap();
    let started = Instant::now();
    while !healthy_at(addr) {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{addr} never healthy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut group = GroupSpec::one_disk("vm", "vda", &disk, &dir);
    group.max_pause = Duration::from_secs(30);
    let (east, west) = (
        Store::open_cache("east", &dir).unwrap(),
        Store::open("west", &dir).unwrap(),
    );
    let lv_cut = || -> Arc<dyn lifeboat_replication::Cut> {
        Arc::new(LibvirtCut::new(
            vec![LibvirtVm {
                vm: "vm".into(),
                host: URI.into(),
                domain: name.clone(),
                disks: vec![DomainDisk {
                    target: "vda".into(),
                    source: disk.clone(),
                    format: "qcow2".into(),
                }],
            }],
            vec![host.clone()],
            dir.join("backup"),
            Duration::from_secs(30),
        ))
    };
    let cycle = |group: &GroupSpec, cut: Arc<dyn lifeboat_replication::Cut>, full_scan: bool| {
        let opts = CycleOptions {
            cut: Some(cut),
            full_scan,
            ..Default::default()
        };
        rt.block_on(lifeboat_replication::replicate(group, &east, &west, &opts))
            .unwrap()
    };
    cycle(&group, lv_cut(), false);
    let one_percent = (mib << 20) / 100;
    let (mut inc, mut full) = (Cycles::new(), Cycles::new());
    for i in 0..runs * 4 {
        write_through_libvirt(&name, mib << 20, one_percent, i as u64);
        let f = i % 2 == 1;
        let r = cycle(&group, lv_cut(), f);
        if f { &mut full } else { &mut inc }.push(&r);
    }
    undefine(&host);
    println!(
        "cycle, {:.0} MiB (1 %) written between cycles:",
        one_percent as f64 / 1048576.0
    );
    let inc50 = inc.line("libvirt incremental pull backup");
    let full50 = full.line("libvirt full pull read (baseline)");

    // The qemu driver's own cut of the same guest on the same kind of disk.
    qcow2(&disk, mib);
    let qmp = dir.join("vm.qmp");
    let mut argv = qemu(&guest, &disk, "qcow2", "127.78.3.10:8080");
    argv.extend([
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ]);
    let (h, _) = boot(&rt, &driver, &dir, argv, "127.78.3.10:8080");
    let mut group_q = GroupSpec::one_disk("vm", "vda", &disk, &dir);
    group_q.name = "qemu".into();
    group_q.max_pause = Duration::from_secs(30);
    let q_cut = |h: &Handle| -> Arc<dyn lifeboat_replication::Cut> {
        let disk = disk.clone();
        Arc::new(GroupCut::new(
            driver.clone(),
            vec![h.clone()],
            move |_| vec![disk.clone()],
            Duration::from_secs(30),
        ))
    };
    cycle(&group_q, q_cut(&h), false);
    let mut qd = Cycles::new();
    for i in 0..runs * 2 {
        write_qmp(&rt, &qmp, mib << 20, one_percent, i as u64);
        qd.push(&cycle(&group_q, q_cut(&h), false));
    }
    rt.block_on(driver.stop(&h, Duration::from_secs(5)))
        .unwrap();
    let qd50 = qd.line("qemu driver bitmap cycle");
    println!(
        "  ratios (time, p50): libvirt incremental / full pull read {:.3}   libvirt incremental / qemu driver {:.2}",
        inc50 / full50,
        inc50 / qd50
    );
}

/// The same writes as `write_through_libvirt`, through the QMP socket of a QEMU the qemu driver
/// started.
fn write_qmp(rt: &tokio::runtime::Runtime, socket: &Path, disk_bytes: u64, bytes: u64, round: u64) {
    let commands: Vec<String> = scattered(disk_bytes, bytes, 1 << 20, round)
        .into_iter()
        .map(|at| format!("qemu-io virtio0 \"write -P {} {at} 1M\"", (round % 250) + 1))
        .collect();
    hmp(rt, socket, commands);
}
