//! Domains that libvirt runs, at a `libvirt` site: a real libvirtd (`.ci/run` starts it), real
//! domains booting the test guest under TCG, found by `discover`, cut through libvirt's pull
//! backups and checkpoints, restored byte for byte.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_compute::libvirt::{DomainState, Host, UNDEFINE_CHECKPOINTS_METADATA};

use crate::qemu::{cli, guest};

const URI: &str = "qemu:///system";

/// The test's domains, destroyed and undefined however the test ends.
struct Domains {
    host: Arc<Host>,
    names: Vec<String>,
}

impl Domains {
    fn new() -> Self {
        Self {
            host: Arc::new(Host::open(URI).expect("libvirtd runs (.ci/run starts it)")),
            names: Vec::new(),
        }
    }

    /// Defines a domain booting the test guest from `disk` (`format`: qcow2 or raw), its
    /// console in `console`.
    fn define(&mut self, name: &str, disk: &Path, format: &str, console: &Path) {
        let guest = guest();
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
             <cmdline>console=ttyS0 panic=-1 quiet lifeboat.rate=200</cmdline></os><features><acpi/></features>\
             <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
             <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
             <disk type='file' device='disk'><driver name='qemu' type='{format}'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>\
             <serial type='file'><source path='{}'/><target port='0'/></serial>\
             <memballoon model='none'/></devices></domain>",
            guest.join("vmlinuz").display(),
            guest.join("initrd.gz").display(),
            disk.display(),
            console.display(),
        );
        if let Ok(old) = self.host.lookup(name) {
            let _ = self.host.destroy(&old);
            let _ = self.host.undefine(&old, UNDEFINE_CHECKPOINTS_METADATA);
        }
        self.host.define(&xml).unwrap();
        self.names.push(name.to_string());
    }

    /// Defines the domain (`define`) and starts it.
    fn start(&mut self, name: &str, disk: &Path, format: &str, console: &Path) {
        self.define(name, disk, format, console);
        self.host.start(&self.host.lookup(name).unwrap()).unwrap();
    }

    fn state(&self, name: &str) -> DomainState {
        self.host.state(&self.host.lookup(name).unwrap()).unwrap()
    }
}

impl Drop for Domains {
    fn drop(&mut self) {
        for name in &self.names {
            if let Ok(d) = self.host.lookup(name) {
                let _ = self.host.destroy(&d);
                let _ = self.host.undefine(&d, UNDEFINE_CHECKPOINTS_METADATA);
            }
        }
    }
}

fn qcow2(path: &Path, size: &str) {
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// An inventory of a libvirt site `east` on this machine's libvirtd replicating to a process
/// site `west`, with one policy taking a point every `interval`; no VMs yet.
fn east_to_west(interval: &str) -> String {
    format!(
        r#"version = 1
[sites.east]
store = "east"
compute = "libvirt"
hosts = ["{URI}"]
replicate_to = "west"
[sites.west]
store = "west"
compute = "process"
[policies.default]
crash_interval = "{interval}"
retention = "1h"
rpo_threshold = "1m"
"#
    )
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn restore(
    lifeboat: &impl Fn(&[&str]) -> crate::support::Outcome,
    vm: &str,
    point: &str,
    out: &Path,
) -> PathBuf {
    let out_s = out.display().to_string();
    let r = lifeboat(&["restore", vm, "--point", point, "--out", &out_s, "--force"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    out.join("vda.img")
}

fn consistent(image: &Path) -> u64 {
    let check = lifeboat_demo_vm::disk::check(&std::fs::File::open(image).unwrap()).unwrap();
    assert!(
        check.missing.is_empty() && check.torn_slots.is_empty(),
        "{}: {check:?}",
        image.display()
    );
    check.last.map_or(0, |r| r.seq)
}

fn identical(raw: &Path, source: &Path, format: &str) {
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", format])
        .arg(raw)
        .arg(source)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {out:?}", raw.display());
}

/// Two running domains (one qcow2, one raw) found by `discover`, written into the inventory by
/// `discover --write` as one consistency group, cut together through libvirt (a backup job left
/// behind aborted first): the first point in full, the next incremental for the qcow2 disk and in full (said why) for the raw one; a
/// checkpoint deleted behind Lifeboat's back makes the next cycle full, saying why; an
/// incremental and a full point of a still domain are identical; every point restores
/// consistent; after the domains shut down, the newest point is their disks byte for byte.
#[test]
fn libvirt_domains_are_discovered_cut_together_incrementally_and_restore_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let tag = std::process::id();
    let (a, b) = (format!("lb-{tag}-db"), format!("lb-{tag}-logs"));
    let (disk_a, disk_b) = (base.join("db.qcow2"), base.join("logs.img"));
    qcow2(&disk_a, "32M");
    std::fs::File::create(&disk_b)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    std::fs::write(base.join("lifeboat.toml"), east_to_west("10s")).unwrap();
    let mut doms = Domains::new();
    doms.start(&a, &disk_a, "qcow2", &base.join("db.console"));
    doms.start(&b, &disk_b, "raw", &base.join("logs.console"));
    let lifeboat = cli(base);

    // `discover` lists both, unprotected, with their disks; `--write` protects them.
    let listed = lifeboat(&["discover", "east"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    for (name, disk) in [(&a, &disk_a), (&b, &disk_b)] {
        assert!(
            listed.stdout.contains(&format!(
                "{name} on {URI} (running, 256 MiB, 1 CPU): not protected"
            )),
            "{}",
            listed.stdout
        );
        assert!(
            listed
                .stdout
                .contains(&format!("disk vda: {}", disk.display())),
            "{}",
            listed.stdout
        );
    }
    // `status` (from the repositories: no daemon) names the domains nothing protects.
    let st = lifeboat(&["status"]);
    for name in [&a, &b] {
        assert!(
            st.stdout.contains(&format!(
                "not protected: domain {name} on {URI} (site east, running)"
            )),
            "{}",
            st.stdout
        );
    }
    let wrote = lifeboat(&["discover", "east", "--write", "--vm", &a, "--vm", &b]);
    assert_eq!(wrote.code, 0, "{}", wrote.stderr);
    let again = lifeboat(&["discover", "east", "--write", "--vm", &a]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(
        again.stderr.contains("already protected"),
        "{}",
        again.stderr
    );
    let mut inv = std::fs::read_to_string(base.join("lifeboat.toml")).unwrap();
    assert!(
        inv.contains(&format!(
            "[vms.{a}]\nsite = \"east\"\npolicy = \"default\"\ndomain = \"{a}\""
        )),
        "{inv}"
    );
    inv.push_str(&format!(
        "\n[consistency_groups.pair]\nvms = [\"{a}\", \"{b}\"]\n"
    ));
    std::fs::write(base.join("lifeboat.toml"), inv).unwrap();
    let listed = lifeboat(&["discover", "east"]);
    assert!(
        listed.stdout.contains(&format!("protected as VM `{a}`")),
        "{}",
        listed.stdout
    );
    let online = lifeboat(&["plan", "validate", "--online"]);
    assert_eq!(online.code, 0, "{}{}", online.stdout, online.stderr);

    // The guests write; the first point is full, cut at one instant.
    wait_for("the guests to write", Duration::from_secs(60), || {
        std::fs::read_to_string(base.join("db.console"))
            .is_ok_and(|c| c.contains("guest: starting the workload"))
            && std::fs::read_to_string(base.join("logs.console"))
                .is_ok_and(|c| c.contains("guest: starting the workload"))
    });
    std::thread::sleep(Duration::from_secs(2));
    // A backup job left behind (as by a cycle killed mid-way): the next cycle aborts it.
    let stale = base.join("stale.nbd");
    doms.host
        .backup_begin(
            &doms.host.lookup(&a).unwrap(),
            &format!(
                "<domainbackup mode='pull'><server transport='unix' socket='{}'/><disks><disk name='vda' backup='yes' type='file'><scratch file='{}'/></disk></disks></domainbackup>",
                stale.display(),
                base.join("stale.scratch").display()
            ),
            None,
        )
        .unwrap();
    let first = lifeboat(&["replicate"]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert!(
        first
            .stderr
            .contains(&format!("cut {a}, {b} at one instant through libvirt")),
        "{}",
        first.stderr
    );
    std::thread::sleep(Duration::from_secs(1));
    let second = lifeboat(&["replicate"]);
    assert_eq!(second.code, 0, "{}{}", second.stdout, second.stderr);
    assert!(
        second.stderr.contains(&format!(
            "full scan of {}: disk vda is raw: libvirt keeps no checkpoint of it",
            disk_b.display()
        )),
        "{}",
        second.stderr
    );
    assert!(
        !second
            .stderr
            .contains(&format!("full scan of {}", disk_a.display())),
        "{}",
        second.stderr
    );
    // One checkpoint per domain with bitmaps: the newest point's.
    let dom_a = doms.host.lookup(&a).unwrap();
    let cps = doms.host.checkpoints(&dom_a).unwrap();
    assert_eq!(cps.len(), 1, "{cps:?}");
    assert!(
        doms.host
            .checkpoints(&doms.host.lookup(&b).unwrap())
            .unwrap()
            .is_empty()
    );
    // Deleted behind Lifeboat's back: the next cycle reads in full and says why.
    doms.host.delete_checkpoint(&dom_a, &cps[0], 0).unwrap();
    let third = lifeboat(&["replicate"]);
    assert_eq!(third.code, 0, "{}{}", third.stdout, third.stderr);
    assert!(
        third.stderr.contains(&format!(
            "full scan of {}: libvirt has no checkpoint `{}` of the parent point",
            disk_a.display(),
            cps[0]
        )),
        "{}",
        third.stderr
    );
    // Every point restores consistent.
    for point in ["1", "2", "3"] {
        for vm in [&a, &b] {
            let img = restore(&lifeboat, vm, point, &base.join(format!("r-{vm}-{point}")));
            consistent(&img);
        }
    }

    // A domain held still: its incremental point and a full read are identical.
    doms.host.suspend(&dom_a).unwrap();
    doms.host.suspend(&doms.host.lookup(&b).unwrap()).unwrap();
    let inc = lifeboat(&["replicate"]);
    assert_eq!(inc.code, 0, "{}", inc.stderr);
    assert!(
        !inc.stderr
            .contains(&format!("full scan of {}", disk_a.display())),
        "{}",
        inc.stderr
    );
    let full = lifeboat(&["replicate", "--full-scan"]);
    assert_eq!(full.code, 0, "{}", full.stderr);
    let (i, f) = (
        restore(&lifeboat, &a, "4", &base.join("inc")),
        restore(&lifeboat, &a, "5", &base.join("full")),
    );
    assert!(
        std::fs::read(&i).unwrap() == std::fs::read(&f).unwrap(),
        "incremental and full points differ"
    );
    doms.host.resume(&dom_a).unwrap();
    doms.host.resume(&doms.host.lookup(&b).unwrap()).unwrap();

    // Shut down through libvirt (ACPI): the newest point is the disks as they were left.
    std::thread::sleep(Duration::from_secs(1));
    for name in [&a, &b] {
        doms.host
            .shutdown(&doms.host.lookup(name).unwrap())
            .unwrap();
    }
    wait_for("the domains to shut off", Duration::from_secs(60), || {
        doms.state(&a) == DomainState::ShutOff && doms.state(&b) == DomainState::ShutOff
    });
    let last = lifeboat(&["replicate"]);
    assert_eq!(last.code, 0, "{}", last.stderr);
    let img_a = restore(&lifeboat, &a, "latest", &base.join("last-a"));
    let img_b = restore(&lifeboat, &b, "latest", &base.join("last-b"));
    identical(&img_a, &disk_a, "qcow2");
    identical(&img_b, &disk_b, "raw");
    assert!(
        consistent(&img_a) > 0 && consistent(&img_b) > 0,
        "the guests wrote records"
    );
}

/// The inventory says what a libvirt site needs, offline.
#[test]
fn a_libvirt_site_is_validated_offline() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let write = |text: &str| std::fs::write(base.join("lifeboat.toml"), text).unwrap();
    let head = r#"version = 1
[policies.default]
crash_interval = "10s"
retention = "1h"
rpo_threshold = "1m"
[sites.west]
store = "west"
compute = "process"
"#;
    let lifeboat = cli(base);
    write(&format!(
        "{head}[sites.east]\nstore = \"east\"\ncompute = \"libvirt\"\nreplicate_to = \"west\"\n[vms.a]\nsite = \"east\"\npolicy = \"default\"\ndisks.data = \"a.img\"\n"
    ));
    let out = lifeboat(&["plan", "validate"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("a `libvirt` site needs `hosts`"), "{text}");
    assert!(
        text.contains("its disks are its domain's, read from libvirt"),
        "{text}"
    );
    write(&format!(
        "{head}[sites.east]\nstore = \"east\"\ncompute = \"libvirt\"\nhosts = [\"qemu:///system\"]\nreplicate_to = \"west\"\n[vms.a]\nsite = \"east\"\npolicy = \"default\"\ndomain = \"erp-a\"\n[vms.b]\nsite = \"west\"\npolicy = \"default\"\n"
    ));
    let out = lifeboat(&["plan", "validate"]);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 3, "{text}");
    assert!(text.contains("VM `b` has no `disks`"), "{text}");
    assert!(!text.contains("VM `a`"), "{text}");
    write(&format!(
        "{head}[sites.east]\nstore = \"east\"\ncompute = \"libvirt\"\nhosts = [\"qemu:///system\"]\nreplicate_to = \"west\"\n[vms.a]\nsite = \"east\"\npolicy = \"default\"\ndomain = \"erp-a\"\n"
    ));
    let out = lifeboat(&["plan", "validate"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // Online, the world is asked: the domain is not there, nor is the second host.
    write(&format!(
        "{head}[sites.east]\nstore = \"east\"\ncompute = \"libvirt\"\nhosts = [\"{URI}\", \"qemu+unix:///system?socket=/nonexistent/libvirt-sock\"]\nreplicate_to = \"west\"\n[vms.a]\nsite = \"east\"\npolicy = \"default\"\ndomain = \"lb-no-such-domain\"\n"
    ));
    assert_eq!(lifeboat(&["plan", "validate"]).code, 0);
    let out = lifeboat(&["plan", "validate", "--online"]);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 3, "{text}");
    assert!(text.contains("error[host-unreachable]: libvirt host `qemu+unix:///system?socket=/nonexistent/libvirt-sock` of site `east`"), "{text}");
    assert!(
        text.contains(
            "error[not-found-online]: VM `a`: no host of site `east` has domain `lb-no-such-domain`"
        ),
        "{text}"
    );
    // A plan cannot fail a libvirt domain over to a driver that cannot start it, nor (yet) to
    // a libvirt site: refused offline, before any run.
    std::fs::create_dir_all(base.join("plans")).unwrap();
    std::fs::write(
        base.join("plans/p.toml"),
        "version = 1\nname = \"p\"\nsource = \"east\"\ntarget = \"west\"\nrecovery_point = \"latest\"\n[[group]]\nname = \"g\"\nvms = [\"a\"]\n",
    )
    .unwrap();
    let out = lifeboat(&["plan", "validate"]);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 3, "{text}");
    assert!(text.contains("error[unsupported-compute]: VM `a` is a libvirt domain with neither `machine` nor `boot`: site `west` uses the `process` driver"), "{text}");
}

/// The daemon protects a discovered domain on its interval; once the domain is shut down
/// through libvirt, the daemon's newest point is its disk byte for byte.
#[test]
fn the_daemon_protects_a_libvirt_domain_and_its_last_point_is_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let name = format!("lb-{}-daemon", std::process::id());
    let disk = base.join("d.qcow2");
    qcow2(&disk, "32M");
    std::fs::write(base.join("lifeboat.toml"), east_to_west("2s")).unwrap();
    let mut doms = Domains::new();
    doms.start(&name, &disk, "qcow2", &base.join("d.console"));
    let lifeboat = cli(base);
    let wrote = lifeboat(&["discover", "east", "--write", "--vm", &name]);
    assert_eq!(wrote.code, 0, "{}", wrote.stderr);
    wait_for("the guest to write", Duration::from_secs(60), || {
        std::fs::read_to_string(base.join("d.console"))
            .is_ok_and(|c| c.contains("guest: starting the workload"))
    });
    // A domain nothing protects, defined and never started.
    let stray = format!("lb-{}-stray", std::process::id());
    let stray_disk = base.join("stray.img");
    std::fs::File::create(&stray_disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    doms.define(&stray, &stray_disk, "raw", &base.join("stray.console"));
    let log = std::fs::File::create(base.join("daemon.log")).unwrap();
    let config = base.join("lifeboat.toml").display().to_string();
    let mut daemon = std::process::Command::new(crate::failover::HELPER)
        .args(["cli", "--config", &config, "daemon", "--grace", "10s"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let points = || -> Vec<serde_json::Value> {
        let out = lifeboat(&["--output", "json", "points", "list", &name]);
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["points"].as_array().cloned())
            .unwrap_or_default()
    };
    wait_for(
        "three points from the daemon",
        Duration::from_secs(60),
        || points().len() >= 3,
    );
    // The daemon's status (through its socket) lists the stray domain, not the protected one
    // (other tests' domains on this libvirtd are unprotected here too).
    let st = lifeboat(&["--output", "json", "status"]);
    let doc: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(doc["source"], "daemon", "{doc:#}");
    let listed: Vec<&str> = doc["unprotected_domains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["domain"].as_str())
        .collect();
    assert!(listed.contains(&stray.as_str()), "{doc:#}");
    assert!(!listed.contains(&name.as_str()), "{doc:#}");
    let domain = doms.host.lookup(&name).unwrap();
    doms.host.shutdown(&domain).unwrap();
    wait_for("the domain to shut off", Duration::from_secs(60), || {
        doms.state(&name) == DomainState::ShutOff
    });
    let off = points().len();
    wait_for(
        "a point of the shut-off domain",
        Duration::from_secs(30),
        || points().len() > off,
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = daemon.wait().unwrap();
    let log = std::fs::read_to_string(base.join("daemon.log")).unwrap_or_default();
    assert!(status.success(), "{status:?}: {log}");
    let img = restore(&lifeboat, &name, "latest", &base.join("last"));
    identical(&img, &disk, "qcow2");
    assert!(consistent(&img) > 0, "the guest wrote records");
    // Only the newest point's checkpoint is left on the domain.
    assert!(doms.host.checkpoints(&domain).unwrap().len() <= 1);
}
