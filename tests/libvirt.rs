//! Domains that libvirt runs, at a `libvirt` site: a real libvirtd (`.ci/run` starts it), real
//! domains booting the test guest under TCG, found by `discover`, cut through libvirt's pull
//! backups and checkpoints, restored byte for byte.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_compute::libvirt::{DomainState, Host, UNDEFINE_CHECKPOINTS_METADATA};
use lifeboat_orchestrator::journal::Event;

use crate::qemu::{cli, guest};

const URI: &str = "qemu:///system";

/// The test's domains, destroyed and undefined however the test ends.
struct Domains {
    host: Arc<Host>,
    /// Domains and networks removed at the end (a run's copies and networks too, should the
    /// run's own cleanup not have come).
    names: Vec<String>,
    networks: Vec<String>,
    /// Inventories whose runs' export servers are killed at the end (the same reason).
    configs: Vec<PathBuf>,
}

impl Domains {
    fn new() -> Self {
        Self::on(URI)
    }

    /// The domains of the libvirt daemon at `uri`.
    fn on(uri: &str) -> Self {
        Self {
            host: Arc::new(Host::open(uri).expect("libvirtd runs (.ci/run starts it)")),
            names: Vec::new(),
            networks: Vec::new(),
            configs: Vec::new(),
        }
    }

    /// Defines a domain booting the test guest from `disk` (`format`: qcow2 or raw), its
    /// console in `console`.
    fn define(&mut self, name: &str, disk: &Path, format: &str, console: &Path) {
        self.define_with(name, (disk, format), console, None, 256);
    }

    /// Defines a domain as `define` does, with a NIC (`mac`) on libvirt network `network` and
    /// `memory_mib` of memory.
    fn define_on(
        &mut self,
        name: &str,
        disk: &Path,
        console: &Path,
        nic: (&str, &str),
        memory_mib: u64,
    ) {
        self.define_with(name, (disk, "qcow2"), console, Some(nic), memory_mib);
    }

    /// Defines (again, if it is there) a domain booting the test guest.
    fn define_with(
        &mut self,
        name: &str,
        (disk, format): (&Path, &str),
        console: &Path,
        nic: Option<(&str, &str)>,
        memory_mib: u64,
    ) {
        let guest = guest();
        let interface = nic.map_or(String::new(), |(network, mac)| {
            format!(
                "<interface type='network'><mac address='{mac}'/><source network='{network}'/><model type='virtio'/></interface>"
            )
        });
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
             <cmdline>console=ttyS0 panic=-1 quiet lifeboat.rate=200</cmdline></os><features><acpi/></features>\
             <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
             <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
             <disk type='file' device='disk'><driver name='qemu' type='{format}'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>\
             {interface}<serial type='file'><source path='{}'/><target port='0'/></serial>\
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
        for config in &self.configs {
            crate::qemu::kill_exports_of(config);
        }
        for name in &self.names {
            if let Ok(d) = self.host.lookup(name) {
                let _ = self.host.destroy(&d);
                let _ = self.host.undefine(&d, UNDEFINE_CHECKPOINTS_METADATA);
            }
        }
        for name in &self.networks {
            if let Ok(n) = self.host.network(name) {
                let _ = self.host.remove_network(&n);
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
    // A copy's name rule: only at libvirt sites, naming each copy apart, with known placeholders.
    for (site, rule, says) in [
        ("west", "{domain}-dr", "this site is not a `libvirt` site"),
        ("east", "{host}-dr", "`target_name` has `{host}`"),
        ("east", "copy", "would give every copy the same name"),
    ] {
        let text = format!(
            "{head}[sites.east]\nstore = \"east\"\ncompute = \"libvirt\"\nhosts = [\"qemu:///system\"]\nreplicate_to = \"west\"\n[vms.a]\nsite = \"east\"\npolicy = \"default\"\n"
        );
        let marker = format!("[sites.{site}]\nstore = \"{site}\"\n");
        write(&text.replacen(&marker, &format!("{marker}target_name = \"{rule}\"\n"), 1));
        let out = lifeboat(&["plan", "validate"]);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert_eq!(out.code, 3, "{text}");
        assert!(text.contains(says), "{rule}: {text}");
    }
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
    // A plan cannot fail a libvirt domain over to a driver that cannot start it: refused
    // offline, before any run.
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
    // Nor a VM that is no domain over to a libvirt site: there is no XML to define its copy from.
    write(&format!(
        "version = 1\n[policies.default]\ncrash_interval = \"10s\"\nretention = \"1h\"\nrpo_threshold = \"1m\"\n\
         [sites.west]\nstore = \"west\"\ncompute = \"libvirt\"\nhosts = [\"{URI}\"]\n\
         [sites.east]\nstore = \"east\"\ncompute = \"process\"\nreplicate_to = \"west\"\n\
         [vms.a]\nsite = \"east\"\npolicy = \"default\"\ndisks.data = \"a.img\"\nboot = {{ command = [\"sleep\", \"60\"] }}\n"
    ));
    let out = lifeboat(&["plan", "validate"]);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 3, "{text}");
    assert!(text.contains("error[unsupported-compute]: VM `a` is not a libvirt domain: site `west` defines each copy from the domain XML its points keep"), "{text}");
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

/// `GET http://ADDR/health` answered 200, from this host.
fn healthy(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: vm\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

/// A libvirt network on this host with a DHCP range, and `reserved` (MAC, address) fixed.
fn network(doms: &mut Domains, name: &str, bridge: &str, net: &str, reserved: &[(&str, &str)]) {
    if let Ok(old) = doms.host.network(name) {
        let _ = doms.host.remove_network(&old);
    }
    let hosts: String = reserved
        .iter()
        .map(|(mac, ip)| format!("<host mac='{mac}' ip='{ip}'/>"))
        .collect();
    let xml = format!(
        "<network><name>{name}</name><bridge name='{bridge}' stp='off' delay='0'/>\
         <ip address='{net}.1' netmask='255.255.255.0'><dhcp><range start='{net}.100' end='{net}.200'/>{hosts}</dhcp></ip></network>"
    );
    doms.host.define_network(&xml).unwrap();
    doms.networks.push(name.to_string());
}

/// A running domain on a network of the source site, protected, drilled and failed over to a
/// `libvirt` site on this same libvirtd, booting instantly from the repository. The drill's
/// copy boots on an isolated network the drill defines (no `<forward>`), with a new MAC and the
/// test address the run reserved for it, and answers there, its export server killed with -9 as
/// it starts and its disk hydrated all the same; cleanup leaves no domain, network or overlay. A planned failover shuts
/// the source down through libvirt (still defined), takes the last point (the source's disk
/// byte for byte: nothing lost) and boots the copy by the naming rule with the source's MAC on
/// the mapped network, at its assigned address; commit fences the source; reprotect and
/// failback bring the VM home under its own domain with nothing lost. A VM no host has room for,
/// and disks that would not fit where runs keep them, are refused before anything stops, naming
/// the shortfall.
#[test]
fn a_libvirt_target_drills_on_an_isolated_network_fails_over_and_back_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let tag = std::process::id();
    let k = 20 + tag % 200;
    let (prod, dr) = (format!("lbt{tag}-prod"), format!("lbt{tag}-dr"));
    let (src_net, dr_net, test_net) = (
        format!("10.77.{k}"),
        format!("10.78.{k}"),
        format!("10.79.{k}"),
    );
    let mac = format!("52:54:00:77:{:02x}:10", k);
    let mut doms = Domains::new();
    doms.configs.push(base.join("lifeboat.toml"));
    let src_ip = format!("{src_net}.10");
    network(
        &mut doms,
        &prod,
        &format!("lbp{tag}"),
        &src_net,
        &[(&mac, &src_ip)],
    );
    network(&mut doms, &dr, &format!("lbd{tag}"), &dr_net, &[]);
    let name = format!("lb-{tag}-app");
    let disk = base.join("app.qcow2");
    qcow2(&disk, "32M");
    // A second disk, of data the guest does not read: hydration copies it at west's
    // `bandwidth`, so the drill's export server is killed while it does.
    let data = base.join("app-data.qcow2");
    qcow2(&data, "16M");
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 16M"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    doms.define_on(&name, &disk, &base.join("app.console"), (&prod, &mac), 256);
    let defined = doms
        .host
        .xml(
            &doms.host.lookup(&name).unwrap(),
            lifeboat_compute::libvirt::XML_INACTIVE,
        )
        .unwrap();
    doms.host
        .define(&defined.replacen(
            "</devices>",
            &format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vdb' bus='virtio'/></disk></devices>",
                data.display()
            ),
            1,
        ))
        .unwrap();
    doms.host.start(&doms.host.lookup(&name).unwrap()).unwrap();
    // A VM no host could hold: 64 TiB of memory (defined, never started; read from its file).
    let big = format!("lb-{tag}-big");
    let big_disk = base.join("big.qcow2");
    qcow2(&big_disk, "1M");
    doms.define_on(
        &big,
        &big_disk,
        &base.join("big.console"),
        (&prod, "52:54:00:77:00:99"),
        64 << 20,
    );
    // Copies at `west` named by the source site's rule.
    let (copy, drill_copy) = (format!("{name}-west"), format!("{name}-drill"));
    doms.names
        .extend([copy.clone(), drill_copy.clone(), format!("{big}-west")]);
    // The drill's network, should the test end before its cleanup.
    doms.networks.push("lifeboat-app-1-0".into());
    std::fs::write(
        base.join("lifeboat.toml"),
        format!(
            r#"version = 1
[sites.east]
store = "east"
compute = "libvirt"
hosts = ["{URI}"]
replicate_to = "west"
target_name = "{{domain}}-west"
networks.{prod}.subnets = {{ lan = "{src_net}.0/24" }}
[sites.west]
store = "west"
compute = "libvirt"
hosts = ["{URI}"]
# Hydration's own copy reads at most this (the guest's reads are not held back): the drill's
# export server is killed while it copies, the failover's copy stopped.
bandwidth = "512KB/s"
networks.{dr}.subnets = {{ lan = "{dr_net}.0/24" }}
networks.drill.subnets = {{ lan = "{test_net}.0/24" }}
[policies.default]
crash_interval = "1m"
retention = "1h"
rpo_threshold = "5m"
[vms.app]
site = "east"
policy = "default"
domain = "{name}"
nics = [{{ network = "{prod}", subnet = "lan", ip = "{src_ip}" }}]
health = {{ http = "http://{{nic0.ip}}:8080/health", timeout = "2m" }}
[vms.big]
site = "east"
policy = "default"
domain = "{big}"
"#
        ),
    )
    .unwrap();
    std::fs::create_dir_all(base.join("plans")).unwrap();
    let plan = |plan: &str, vm: &str| {
        format!(
            r#"version = 1
name = "{plan}"
source = "east"
target = "west"
recovery_point = "latest"
[network]
map = [{{ from = "east/{prod}", to = "west/{dr}" }}]
test = "west/drill"
[[network.override]]
vm = "app"
ip = "{dr_net}.10"
test_ip = "{test_net}.10"
[[group]]
name = "g"
vms = ["{vm}"]
"#
        )
    };
    std::fs::write(base.join("plans/app.toml"), plan("app", "app")).unwrap();
    std::fs::write(
        base.join("plans/big.toml"),
        plan("big", "big").replace(
            &format!("[[network.override]]\nvm = \"app\"\nip = \"{dr_net}.10\"\ntest_ip = \"{test_net}.10\"\n"),
            "",
        ),
    )
    .unwrap();
    let lifeboat = cli(base);
    let v = lifeboat(&["plan", "validate"]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    wait_for("the guest to write", Duration::from_secs(60), || {
        std::fs::read_to_string(base.join("app.console"))
            .is_ok_and(|c| c.contains("guest: starting the workload"))
    });
    wait_for("the source to answer", Duration::from_secs(30), || {
        healthy(&format!("{src_ip}:8080"))
    });
    let r = lifeboat(&["replicate"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // The VM that fits nowhere: refused before anything, naming what it needs and what there is.
    let out = lifeboat(&["failover", "big", "--planned"]);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{text}");
    assert!(
        text.contains("VM `big` needs 67108864 MiB of memory and 1 CPU(s); no host of the site has them (qemu:///system: "),
        "{text}"
    );
    assert!(doms.host.lookup(&format!("{big}-west")).is_err());
    assert_eq!(doms.state(&name), DomainState::Running, "nothing stopped");

    // Nor one whose restored disks would not fit where runs keep them (a 1 MiB file system).
    let small = base.join("small-state");
    std::fs::create_dir_all(&small).unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mount.success());
    let small_arg = small.display().to_string();
    let out = lifeboat(&["--state", &small_arg, "failover", "app", "--test"]);
    let _ = std::process::Command::new("umount").arg(&small).status();
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{text}");
    assert!(
        text.contains("cannot fail over: the restored disks need 48 MiB at"),
        "{text}"
    );

    // The drill boots instantly (the default at a libvirt site whose hosts are this machine):
    // the copy runs on a qcow2 image backed by the point as west's repository holds it. It runs
    // in a process of its own, which stays until the disk is hydrated; the export server is
    // killed with -9 as soon as the copy starts, so libvirt's copy and any read the guest makes
    // meanwhile fail: the run starts the server again, lets a guest held on a read error go on,
    // and starts the copy again.
    let config = base.join("lifeboat.toml").display().to_string();
    let drill = std::process::Command::new(crate::failover::HELPER)
        .args(["cli", "--config", &config, "failover", "app", "--test"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = "app-1";
    let exporting = || -> Vec<u32> {
        crate::qemu::run_events(base, run)
            .into_iter()
            .filter_map(|e| match e {
                Event::Exporting { pid, .. } => Some(pid),
                _ => None,
            })
            .collect()
    };
    wait_for(
        "the drill's copy to start",
        Duration::from_secs(120),
        || {
            crate::qemu::run_events(base, run)
                .iter()
                .any(|e| matches!(e, Event::VmStarted { .. }))
        },
    );
    let first = exporting();
    assert_eq!(first.len(), 1, "{first:?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first[0] as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let out = drill.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(exporting().len(), 2, "the killed server was started again");
    let hydrated: Vec<Event> = crate::qemu::run_events(base, run)
        .into_iter()
        .filter(|e| matches!(e, Event::Hydrated { .. }))
        .collect();
    assert_eq!(hydrated.len(), 2, "both disks: {hydrated:?}");
    let copy_dom = doms.host.lookup(&drill_copy).unwrap();
    let xml = doms.host.xml(&copy_dom, 0).unwrap();
    let spec = lifeboat_compute::libvirt::domain::parse(&xml).unwrap();
    let drill_net = spec.nics[0].network.clone().unwrap();
    assert!(drill_net.starts_with("lifeboat-"), "{xml}");
    assert_ne!(
        spec.nics[0].mac.as_deref(),
        Some(mac.as_str()),
        "a drill's copy gets a new MAC"
    );
    assert!(
        spec.disks[0]
            .source
            .ends_with(format!(".lifeboat/state/runs/{run}/disks/app/vda.qcow2")),
        "the copy runs on its instant image: {xml}"
    );
    assert!(
        xml.contains("rerror_policy='stop'"),
        "a read the server could not serve holds the guest: {xml}"
    );
    // Hydrated: libvirt's chain under the disk is gone, the image holds everything.
    assert!(
        !xml.contains("protocol='nbd'"),
        "the copy no longer reads the export: {xml}"
    );
    let net_xml = {
        let n = doms.host.network(&drill_net).unwrap();
        doms.host.network_xml(&n).unwrap()
    };
    assert!(!net_xml.contains("<forward"), "isolated: {net_xml}");
    // …and libvirt rejects whatever the copy sends off its bridge: the source's network (its VMs
    // behind another bridge) is out of reach.
    let bridge = net_xml
        .split("<bridge name='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_else(|| panic!("no bridge in {net_xml}"))
        .to_string();
    let rules = std::process::Command::new("iptables-save")
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains(&format!("-A LIBVIRT_FWO -i {bridge} -j REJECT")),
        "nothing is forwarded from {bridge}: {rules}"
    );
    assert!(
        healthy(&format!("{test_net}.10:8080")),
        "the drill copy answers on its network"
    );
    assert!(healthy(&format!("{src_ip}:8080")), "the source runs on");
    let overlay = spec.disks[0].source.clone();
    let out = lifeboat(&["cleanup", "app"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        doms.host.lookup(&drill_copy).is_err(),
        "the drill's copy is undefined"
    );
    assert!(
        doms.host.network(&drill_net).is_err(),
        "the drill's network is gone"
    );
    assert!(!overlay.exists(), "{} is gone", overlay.display());

    // The planned failover, in a process of its own. Once its run is through (the copy
    // answered), the copy is pulled down while its data disk still hydrates: the process stops
    // waiting for a VM that no longer runs, and `commit` hydrates that disk offline from the
    // export before it takes the group over.
    let failover = std::process::Command::new(crate::failover::HELPER)
        .args(["cli", "--config", &config, "failover", "app", "--planned"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = "app-2";
    let hydrated_in = |run: &str| {
        crate::qemu::run_events(base, run)
            .iter()
            .filter(|e| matches!(e, Event::Hydrated { .. }))
            .count()
    };
    wait_for(
        "the failover's run to end",
        Duration::from_secs(180),
        || {
            crate::qemu::run_events(base, run)
                .iter()
                .any(|e| matches!(e, Event::RunFinished { .. }))
        },
    );
    assert!(
        healthy(&format!("{dr_net}.10:8080")),
        "the copy answers at its address"
    );
    assert!(hydrated_in(run) < 2, "the data disk still hydrates");
    doms.host
        .destroy(&doms.host.lookup(&copy).unwrap())
        .unwrap();
    let out = failover.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("not hydrated") && stderr.contains("app/vdb"),
        "{stderr}"
    );
    assert_eq!(
        doms.state(&name),
        DomainState::ShutOff,
        "the source was shut down through libvirt (and is still defined)"
    );
    let img = restore(&lifeboat, "app", "latest", &base.join("last"));
    identical(&img, &disk, "qcow2");
    assert!(consistent(&img) > 0, "the guest wrote records");
    let copy_dom = doms.host.lookup(&copy).unwrap();
    let spec =
        lifeboat_compute::libvirt::domain::parse(&doms.host.xml(&copy_dom, 0).unwrap()).unwrap();
    assert_eq!(spec.nics[0].network.as_deref(), Some(dr.as_str()));
    assert_eq!(
        spec.nics[0].mac.as_deref(),
        Some(mac.as_str()),
        "a failover keeps the MAC"
    );
    let out = lifeboat(&["commit", "app", "--no-wait"]);
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("the VM is not running"),
        "{}",
        out.stderr
    );
    let out = lifeboat(&["commit", "app"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(hydrated_in(run), 2, "commit hydrated the data disk");
    let copy_data = spec.disks[1].source.clone();
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output", "json"])
        .arg(&copy_data)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info}");
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "qcow2"])
        .arg(&copy_data)
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "the data disk came whole: {out:?}");
    // The copy runs again on its hydrated images.
    doms.host.start(&doms.host.lookup(&copy).unwrap()).unwrap();
    wait_for("the copy to answer again", Duration::from_secs(120), || {
        healthy(&format!("{dr_net}.10:8080"))
    });

    // And back: the copy is protected where it runs (cut through libvirt at `west`), then a
    // failback shuts it down, takes its last point and brings the VM home under its own
    // domain's name, on its own network, MAC and address.
    // Reprotect seeds `east` from the home domain's own disk (shut off since the failover): the
    // first cycle back ships only what the copy changed.
    let out = lifeboat(&["--output", "json", "reprotect", "app"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let g = &report["groups"][0];
    assert_eq!(g["full_seed"], false, "{report:#}");
    let (disk_bytes, new_bytes) = (
        g["disk_bytes"].as_u64().unwrap(),
        g["new_bytes"].as_u64().unwrap(),
    );
    eprintln!("reprotect: {disk_bytes} bytes of disk, {new_bytes} new after the seed");
    assert!(
        disk_bytes > 0 && new_bytes * 4 < disk_bytes,
        "the first cycle back found most of the disk seeded: {report:#}"
    );
    // The copy runs on qcow2 overlays: once reprotected it is cut through checkpoints like any
    // domain, reading only what changed.
    let again = lifeboat(&["replicate", "app"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(
        !again.stderr.contains("full scan of"),
        "a reprotected copy is cut incrementally: {}",
        again.stderr
    );
    assert_eq!(
        doms.host
            .checkpoints(&doms.host.lookup(&copy).unwrap())
            .unwrap()
            .len(),
        1
    );
    let out = lifeboat(&["failback", "app"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        doms.state(&copy),
        DomainState::ShutOff,
        "the copy was shut down"
    );
    assert_eq!(
        doms.state(&name),
        DomainState::Running,
        "the VM runs at home again"
    );
    let home = doms.host.lookup(&name).unwrap();
    let spec = lifeboat_compute::libvirt::domain::parse(&doms.host.xml(&home, 0).unwrap()).unwrap();
    assert_eq!(spec.nics[0].network.as_deref(), Some(prod.as_str()));
    assert_eq!(spec.nics[0].mac.as_deref(), Some(mac.as_str()));
    let copy_disk = {
        let c = doms.host.lookup(&copy).unwrap();
        lifeboat_compute::libvirt::domain::parse(&doms.host.xml(&c, 0).unwrap())
            .unwrap()
            .disks[0]
            .source
            .clone()
    };
    assert!(
        copy_disk.ends_with("disks/app/vda.qcow2"),
        "a failover's copy runs on its instant image: {}",
        copy_disk.display()
    );
    let back = restore(&lifeboat, "app", "latest", &base.join("back"));
    identical(&back, &copy_disk, "qcow2");
    assert!(
        consistent(&back) >= consistent(&img),
        "the copy's records came home"
    );
    wait_for("the VM to answer at home", Duration::from_secs(60), || {
        healthy(&format!("{src_ip}:8080"))
    });
    let out = lifeboat(&["commit", "app"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

/// A second libvirt "host" on this machine: a libvirtd (and its virtlogd) in a mount and a
/// network namespace of its own (its own /run/libvirt, domain and state folders, bridges),
/// answering on a socket in `dir`.
/// Stopped by pid when dropped (after the domains on it: drop those first).
struct SecondHost {
    uri: String,
    pids: Vec<u32>,
}

impl SecondHost {
    fn start(dir: &Path) -> Self {
        for d in ["sock", "lib", "etc", "cache"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(
            dir.join("libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n",
                dir.join("sock").display()
            ),
        )
        .unwrap();
        let d = dir.display();
        let script = format!(
            "set -e; mount -t tmpfs tmpfs /run/libvirt; mount --bind {d}/lib /var/lib/libvirt; \
             mount --bind {d}/etc /etc/libvirt/qemu; mount --bind {d}/cache /var/cache/libvirt; \
             virtlogd -d -p {d}/virtlogd.pid; libvirtd -d -f {d}/libvirtd.conf -p {d}/libvirtd.pid"
        );
        // A network namespace too: its bridges are its own, as another machine's would be.
        let status = std::process::Command::new("unshare")
            .args(["-m", "-n", "--propagation", "private", "sh", "-c", &script])
            .status()
            .unwrap();
        assert!(status.success(), "the second libvirtd did not start");
        let uri = format!(
            "qemu+unix:///system?socket={}",
            dir.join("sock/libvirt-sock").display()
        );
        wait_for("the second libvirtd", Duration::from_secs(30), || {
            Host::open(&uri).is_ok()
        });
        let pids = ["libvirtd.pid", "virtlogd.pid"]
            .iter()
            .filter_map(|f| {
                std::fs::read_to_string(dir.join(f))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect();
        Self { uri, pids }
    }
}

impl Drop for SecondHost {
    fn drop(&mut self) {
        for pid in &self.pids {
            if let Some(p) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            }
        }
    }
}

/// An ssh server on 127.0.0.1 (a port of its own) that lets in root with a key made here: how
/// a libvirt daemon on "another host" is reached (`qemu+ssh://`). Stopped when dropped.
struct Sshd {
    child: std::process::Child,
    /// `qemu+ssh://` to this machine's own libvirtd, through this server.
    uri: String,
}

impl Sshd {
    fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        for key in ["host_key", "client_key"] {
            let out = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = 20_000 + std::process::id() % 20_000;
        let d = dir.display();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPidFile {d}/sshd.pid\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let child = std::process::Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stderr(log)
            .spawn()
            .expect("sshd (openssh-server; .ci/run installs it)");
        wait_for("sshd to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port as u16)).is_ok()
        });
        Self {
            child,
            uri: format!(
                "qemu+ssh://root@127.0.0.1:{port}/system?keyfile={d}/client_key&no_verify=1"
            ),
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two libvirt daemons on this machine as two hosts of one site: `discover` lists each domain
/// on its host, both are protected and cut where they run; a drill at a two-host site defines
/// each copy on a host with room and answers; cleanup leaves no copy on either host. Then two
/// Lifeboat daemons, one per host, each protecting its own domain, share one repository: both
/// take points, and a daemon whose inventory also lists the other's VM stands by for that
/// group (the writer lease), taking none of its points.
#[test]
fn two_libvirt_hosts_of_one_site_and_a_daemon_on_each_sharing_one_repository() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let tag = std::process::id();
    let host2 = SecondHost::start(&base.join("host2"));
    let mut one = Domains::new();
    let mut two = Domains::on(&host2.uri);
    let (a, b) = (format!("lb-{tag}-h1"), format!("lb-{tag}-h2"));
    let (disk_a, disk_b) = (base.join("a.qcow2"), base.join("b.qcow2"));
    qcow2(&disk_a, "32M");
    qcow2(&disk_b, "32M");
    one.start(&a, &disk_a, "qcow2", &base.join("a.console"));
    two.start(&b, &disk_b, "qcow2", &base.join("b.console"));
    for drill in [format!("{a}-drill"), format!("{b}-drill")] {
        one.names.push(drill.clone());
        two.names.push(drill);
    }
    // The target site reaches its first host through ssh, as it would another machine's.
    let sshd = Sshd::start(&base.join("sshd"));
    let hosts = format!("[\"{URI}\", \"{}\"]", host2.uri);
    let target_hosts = format!("[\"{}\", \"{}\"]", sshd.uri, host2.uri);
    let inventory = |store: &str, vms: &[&str]| {
        let mut t = format!(
            "version = 1\n[sites.east]\nstore = \"{store}\"\ncompute = \"libvirt\"\nhosts = {hosts}\nreplicate_to = \"west\"\n\
             [sites.west]\nstore = \"{}\"\ncompute = \"libvirt\"\nhosts = {target_hosts}\nnetworks.drill.subnets = {{ lan = \"10.80.{}.0/24\" }}\n\
             [policies.default]\ncrash_interval = \"2s\"\nretention = \"1h\"\nrpo_threshold = \"1m\"\n",
            base.join("west").display(),
            20 + tag % 200
        );
        for vm in vms {
            t.push_str(&format!(
                "[vms.{vm}]\nsite = \"east\"\npolicy = \"default\"\n"
            ));
        }
        t
    };
    std::fs::write(base.join("lifeboat.toml"), inventory("east", &[&a, &b])).unwrap();
    let lifeboat = cli(base);
    let listed = lifeboat(&["discover", "east"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        listed.stdout.contains(&format!("{a} on {URI} (running")),
        "{}",
        listed.stdout
    );
    assert!(
        listed
            .stdout
            .contains(&format!("{b} on {} (running", host2.uri)),
        "{}",
        listed.stdout
    );
    // Through ssh, the same daemon lists the same domain.
    let far = lifeboat(&["discover", "west"]);
    assert_eq!(far.code, 0, "{}", far.stderr);
    assert!(
        far.stdout
            .contains(&format!("{a} on {} (running", sshd.uri)),
        "{}",
        far.stdout
    );
    // A domain of another host is cut by a Lifeboat there: refused here, saying so.
    let elsewhere = base.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(
        elsewhere.join("lifeboat.toml"),
        format!(
            "version = 1\n[sites.far]\nstore = \"far\"\ncompute = \"libvirt\"\nhosts = [\"{}\"]\nreplicate_to = \"west\"\n\
             [sites.west]\nstore = \"west\"\ncompute = \"process\"\n\
             [policies.default]\ncrash_interval = \"1m\"\nretention = \"1h\"\nrpo_threshold = \"5m\"\n\
             [vms.c]\nsite = \"far\"\npolicy = \"default\"\ndomain = \"{a}\"\n",
            sshd.uri
        ),
    )
    .unwrap();
    let refused = cli(&elsewhere)(&["replicate"]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        refused.stderr.contains(&format!(
            "domain `{a}` runs on {}, another host: its disks are read where it runs",
            sshd.uri
        )),
        "{}",
        refused.stderr
    );
    wait_for("both guests to write", Duration::from_secs(60), || {
        ["a.console", "b.console"].iter().all(|c| {
            std::fs::read_to_string(base.join(c))
                .is_ok_and(|t| t.contains("guest: starting the workload"))
        })
    });
    let r = lifeboat(&["replicate"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = lifeboat(&["replicate"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        one.host
            .checkpoints(&one.host.lookup(&a).unwrap())
            .unwrap()
            .len()
            == 1
            && two
                .host
                .checkpoints(&two.host.lookup(&b).unwrap())
                .unwrap()
                .len()
                == 1,
        "each domain was cut through its own host"
    );

    // A drill at the two-host site: each copy on one of the hosts, running.
    std::fs::create_dir_all(base.join("plans")).unwrap();
    std::fs::write(
        base.join("plans/both.toml"),
        format!(
            "version = 1\nname = \"both\"\nsource = \"east\"\ntarget = \"west\"\nrecovery_point = \"latest\"\n\
             [network]\ntest = \"west/drill\"\n[[group]]\nname = \"g\"\nvms = [\"{a}\", \"{b}\"]\n"
        ),
    )
    .unwrap();
    let out = lifeboat(&["failover", "both", "--test"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for vm in [&a, &b] {
        let copy = format!("{vm}-drill");
        let on_one = one
            .host
            .lookup(&copy)
            .is_ok_and(|d| one.host.state(&d).ok() == Some(DomainState::Running));
        let on_two = two
            .host
            .lookup(&copy)
            .is_ok_and(|d| two.host.state(&d).ok() == Some(DomainState::Running));
        assert!(
            on_one != on_two,
            "{copy} runs on exactly one host ({on_one}, {on_two})"
        );
    }
    let out = lifeboat(&["cleanup", "both"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for vm in [&a, &b] {
        let copy = format!("{vm}-drill");
        assert!(one.host.lookup(&copy).is_err() && two.host.lookup(&copy).is_err());
    }

    // A Lifeboat daemon per host, one repository (`west`): each protects its own domain; the
    // second also lists the first's VM, and stands by for it.
    let mut daemons = Vec::new();
    for (folder, store, vms) in [
        ("d1", "east1", vec![a.as_str()]),
        ("d2", "east2", vec![b.as_str(), a.as_str()]),
    ] {
        let d = base.join(folder);
        std::fs::create_dir_all(&d).unwrap();
        let mut text = inventory(store, &vms);
        // Each daemon's site is its own host.
        let own = if folder == "d1" {
            URI.to_string()
        } else {
            host2.uri.clone()
        };
        text = text.replacen(
            &format!("hosts = {hosts}"),
            &format!("hosts = [\"{own}\"]"),
            1,
        );
        if folder == "d2" {
            // The first's domain is on the other host: this daemon cannot cut it, and must not try
            // while the other holds its group.
            text = text.replacen(
                &format!("hosts = [\"{own}\"]"),
                &format!("hosts = {hosts}"),
                1,
            );
        }
        std::fs::write(d.join("lifeboat.toml"), text).unwrap();
        let config = d.join("lifeboat.toml").display().to_string();
        let log = std::fs::File::create(d.join("daemon.log")).unwrap();
        let child = std::process::Command::new(crate::failover::HELPER)
            .args(["cli", "--config", &config, "daemon", "--grace", "10s"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        daemons.push((d, child));
        if folder == "d1" {
            // The first takes the lease of `a` before the second starts.
            let d1 = base.join("d1");
            let first = cli(&d1);
            let points = || {
                let out = first(&["--output", "json", "points", "list", &a]);
                serde_json::from_str::<serde_json::Value>(&out.stdout)
                    .ok()
                    .and_then(|v| v["points"].as_array().map(Vec::len))
                    .unwrap_or(0)
            };
            let before = points();
            wait_for(
                "the first daemon's point of a",
                Duration::from_secs(60),
                || points() > before,
            );
        }
    }
    let d2 = base.join("d2");
    let second = cli(&d2);
    let count = |vm: &str| {
        let out = second(&["--output", "json", "points", "list", vm]);
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["points"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let (a0, b0) = (count(&a), count(&b));
    wait_for(
        "points of both from their own daemons",
        Duration::from_secs(60),
        || count(&a) >= a0 + 2 && count(&b) >= b0 + 2,
    );
    let st = second(&["--output", "json", "status"]);
    let doc: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let group = |name: &str| {
        doc["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(group(&a)["state"], "standby", "{doc:#}");
    assert_ne!(group(&b)["state"], "standby", "{doc:#}");
    for (d, mut child) in daemons {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(d.join("daemon.log")).unwrap_or_default();
        assert!(status.success(), "{status:?}: {log}");
    }
    drop(one);
    drop(two);
    drop(host2);
}
