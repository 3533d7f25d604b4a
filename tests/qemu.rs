//! Real virtual machines: the test guest (a Debian kernel and an initramfs running the demo
//! workload on its virtio disk, `contrib/guest/build.sh`) under QEMU with TCG, at `qemu` sites,
//! protected and recovered by Lifeboat. Its `machine` settings become the QEMU command line
//! (`lifeboat_compute::qemu`), which the driver starts, pauses for the cut, finds again and stops
//! through its QMP socket (`system_powerdown`); its NIC is user-mode networking forwarding the
//! workload's port from the address network mapping assigned.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lifeboat_compute::driver::{Compute, Handle, ProcessDriver};
use lifeboat_orchestrator::journal::Journal;

use crate::failover::get;

/// The test guest: `.ci/run` builds it into the cache (`LIFEBOAT_TEST_GUEST` names another
/// folder). Not built here: the build runs cargo, which the running `cargo test` holds locked.
pub(crate) fn guest() -> PathBuf {
    let dir = std::env::var_os("LIFEBOAT_TEST_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/lifeboat-ci/guest")
        });
    assert!(
        dir.join("vmlinuz").is_file() && dir.join("initrd.gz").is_file(),
        "no test guest in {}: run `contrib/guest/build.sh {}` (QEMU and the guest are installed by .ci/run)",
        dir.display(),
        dir.display()
    );
    dir
}

/// A test's inventory folder: it starts the source VMs and stops whatever the test left running.
pub(crate) struct Lab {
    dir: PathBuf,
    pub(crate) driver: std::sync::Arc<ProcessDriver>,
    pub(crate) rt: tokio::runtime::Runtime,
    source: Vec<Handle>,
}

impl Lab {
    /// On `dir`, which holds (or will hold) `lifeboat.toml`, `plans/` and `vms/`.
    pub(crate) fn new(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir.join("plans")).unwrap();
        std::fs::create_dir_all(dir.join("vms")).unwrap();
        Self {
            dir: dir.to_path_buf(),
            driver: ProcessDriver::new(),
            rt: tokio::runtime::Runtime::new().unwrap(),
            source: Vec::new(),
        }
    }

    /// Starts source VM `vm` as the inventory describes it (so Lifeboat recognises it), its
    /// output in `VM.log`.
    pub(crate) fn start(&mut self, vm: &str) -> (Handle, lifeboat_compute::Launch) {
        let inventory = lifeboat_loader::validate(&self.dir.join("lifeboat.toml"), &[])
            .inventory
            .expect("the inventory is valid");
        let mut launch = lifeboat_compute::site::source_launch(&inventory, &self.dir, vm).unwrap();
        launch.log = self.dir.join(format!("{vm}.log"));
        let h = self.rt.block_on(self.driver.start(&launch)).unwrap();
        self.source.push(h.clone());
        (h, launch)
    }
}

/// The CLI on the inventory in `dir`.
pub(crate) fn cli(dir: &std::path::Path) -> impl Fn(&[&str]) -> crate::support::Outcome {
    let config = dir.join("lifeboat.toml").display().to_string();
    move |args: &[&str]| {
        let mut full = vec!["--config", config.as_str()];
        full.extend_from_slice(args);
        crate::support::lifeboat(&full)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut all = self.source.clone();
        if let Ok(j) = Journal::open(&self.dir.join(".lifeboat/state/runs.db")) {
            all.extend(lifeboat_orchestrator::runs::running_vms(&j).unwrap_or_default());
        }
        for h in all {
            let _ = self
                .rt
                .block_on(self.driver.stop(&h, Duration::from_secs(2)));
        }
        // A test that failed before its `cleanup` leaves its runs' export servers serving.
        kill_exports_of(&self.dir.join("lifeboat.toml"));
    }
}

/// Kills every `lifeboat export` started on the inventory `config` (found by their command
/// lines).
pub(crate) fn kill_exports_of(config: &std::path::Path) {
    let config = config.display().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let has = |a: &str| args.contains(&a.as_bytes());
        if has(&config)
            && has("export")
            && let Some(p) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

/// Files under `dir` (recursively) whose name ends with `suffix`.
fn files_ending(dir: &std::path::Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_ending(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            out.push(path);
        }
    }
    out
}

pub(crate) fn wait_healthy(addr: &str) -> Duration {
    let started = Instant::now();
    while get(addr, "/health").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the guest at {addr} is not healthy after 90 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

#[test]
fn a_real_qemu_vm_is_replicated_drilled_and_failed_over_with_nothing_lost() {
    let guest = guest();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let mut guard = Lab::new(base);
    let (kernel, initrd) = (guest.join("vmlinuz"), guest.join("initrd.gz"));
    std::fs::write(
        base.join("lifeboat.toml"),
        format!(
            r#"version = 1
[sites.east]
store = "east"
compute = "qemu"
replicate_to = "west"
networks.prod.subnets = {{ app = "127.190.1.0/24" }}
[sites.west]
store = "west"
compute = "qemu"
networks.prod-dr.subnets = {{ app = "127.190.11.0/24" }}
networks.drill.subnets = {{ app = "127.190.91.0/24" }}
[policies.default]
crash_interval = "10s"
retention = "1h"
rpo_threshold = "1m"
[vms.vm-1]
site = "east"
policy = "default"
disks.data = "vms/vm-1.img"
nics = [{{ network = "prod", subnet = "app", ip = "127.190.1.10" }}]
machine = {{ kernel = {kernel:?}, initrd = {initrd:?}, append = "console=ttyS0 panic=-1 quiet", ports = [8080] }}
health = {{ http = "http://{{nic0.ip}}:8080/health", timeout = "90s" }}
"#
        ),
    )
    .unwrap();
    std::fs::write(
        base.join("plans/p.toml"),
        r#"version = 1
name = "p"
source = "east"
target = "west"
recovery_point = "latest"
[network]
map = [{ from = "east/prod", to = "west/prod-dr" }]
test = "west/drill"
[[group]]
name = "app"
vms = ["vm-1"]
post = [{ uses = "builtin:http-check", with = { url = "http://{vm.vm-1.ip}:8080/health" }, allow = { http = ["http://{vm.vm-1.ip}:8080/"] } }]
"#,
    )
    .unwrap();
    std::fs::File::create(base.join("vms/vm-1.img"))
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let lifeboat = cli(base);

    // The source VM, started from its machine settings (so Lifeboat recognises it).
    let (source, launch) = guard.start("vm-1");
    assert!(
        launch
            .argv
            .iter()
            .any(|a| a == "user,id=n0,hostfwd=tcp:127.190.1.10:8080-:8080"),
        "{:?}",
        launch.argv
    );
    let boot = wait_healthy("127.190.1.10:8080");
    std::thread::sleep(Duration::from_secs(1));

    // A point of the running VM, cut by QEMU itself (copy-before-write) while it runs.
    let out = lifeboat(&["replicate"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("note: cut vm-1 while running (QEMU copy-before-write)"),
        "{}",
        out.stderr
    );
    assert!(
        !base.join("vms/vm-1.img.fleece.qcow2").exists(),
        "the fleece overlay is gone once the point is taken"
    );

    // A drill boots a second real VM from that point in the drill network.
    let out = lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // In the drill's own network namespace, with user networking restricted to the guest.
    let netns = drill_netns(base, "p-1");
    let drill = crate::failover::get_in(&netns, "127.190.91.254:8080", "/state")
        .expect("the drill copy answers");
    assert!(
        get("127.190.91.254:8080", "/health").is_none(),
        "the drill copy answers outside its namespace"
    );
    let argv = drill_argv(base, "p-1", "vm-1");
    assert!(
        argv.iter()
            .any(|a| a.starts_with("user,id=n0,") && a.ends_with(",restrict=on")),
        "{argv:?}"
    );
    assert!(
        drill["recovered"]["last"]["seq"].as_u64().unwrap_or(0) > 0,
        "{drill}"
    );
    assert_eq!(
        drill["recovered"]["missing"],
        serde_json::json!([]),
        "{drill}"
    );
    // The drill's guest writes into a qcow2 overlay on the restored image; cleanup removes both.
    let overlays = files_ending(&base.join(".lifeboat"), ".drill.qcow2");
    assert_eq!(overlays.len(), 1, "{overlays:?}");
    assert_eq!(lifeboat(&["cleanup", "p"]).code, 0);
    assert!(files_ending(&base.join(".lifeboat"), ".drill.qcow2").is_empty());
    let j = Journal::open(&base.join(".lifeboat/state/runs.db")).unwrap();
    assert!(
        lifeboat_orchestrator::runs::running_vms(&j)
            .unwrap()
            .is_empty(),
        "cleanup left a QEMU running"
    );

    // A planned failover stops the source VM, replicates once more and boots it at west with
    // every record the source wrote.
    let out = lifeboat(&["failover", "p", "--planned"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!guard.rt.block_on(guard.driver.running(&source)));
    // It was shut down through QMP as a power button would: the guest's workload stopped and
    // the machine powered off (not QEMU killed under it).
    let console = std::fs::read_to_string(base.join("vms/vm-1.img.console")).unwrap();
    assert!(
        console.contains("guest: the workload exited") && console.contains("Power down"),
        "{console}"
    );
    let written = {
        let f = std::fs::File::open(base.join("vms/vm-1.img")).unwrap();
        lifeboat_demo_vm::disk::check(&f).unwrap().last.unwrap().seq
    };
    let state = get("127.190.11.1:8080", "/state").expect("the failed-over VM answers");
    assert_eq!(
        state["recovered"]["last"]["seq"].as_u64(),
        Some(written),
        "{state}"
    );
    eprintln!(
        "guest healthy {:.1}s after QEMU started",
        boot.as_secs_f64()
    );
}

/// A QMP command to a running test VM (the test's own hand on the machine).
fn qmp(rt: &tokio::runtime::Runtime, disk: &std::path::Path, command: &str) {
    let socket = PathBuf::from(format!("{}.qmp", disk.display()));
    rt.block_on(async {
        let mut q = lifeboat_compute::qmp::Qmp::connect(&socket).await?;
        q.execute(command, None).await
    })
    .unwrap_or_else(|e| panic!("QMP {command} on {}: {e}", socket.display()));
}

/// The guest's disk as it reads now, raw (a qcow2 image through qemu-img, sharing QEMU's lock).
fn disk_bytes(path: &std::path::Path) -> Vec<u8> {
    if path.extension().is_some_and(|e| e == "qcow2") {
        let raw = path.with_extension("raw-now");
        let out = std::process::Command::new("qemu-img")
            .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
            .arg(path)
            .arg(&raw)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let bytes = std::fs::read(&raw).unwrap();
        std::fs::remove_file(raw).unwrap();
        bytes
    } else {
        std::fs::read(path).unwrap()
    }
}

#[test]
fn two_running_qemu_vms_are_cut_together_and_only_what_changed_is_read() {
    let guest = guest();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let mut guard = Lab::new(base);
    let (kernel, initrd) = (guest.join("vmlinuz"), guest.join("initrd.gz"));
    let machine = format!(
        r#"machine = {{ kernel = {kernel:?}, initrd = {initrd:?}, append = "console=ttyS0 panic=-1 quiet", ports = [8080] }}
health = {{ http = "http://{{nic0.ip}}:8080/health", timeout = "90s" }}"#
    );
    std::fs::write(
        base.join("lifeboat.toml"),
        format!(
            r#"version = 1
[sites.east]
store = "east"
compute = "qemu"
replicate_to = "west"
networks.prod.subnets = {{ app = "127.190.2.0/24" }}
[sites.west]
store = "west"
compute = "qemu"
networks.prod-dr.subnets = {{ app = "127.190.12.0/24" }}
[policies.default]
crash_interval = "10s"
retention = "1h"
rpo_threshold = "1m"
[vms.vm-a]
site = "east"
policy = "default"
disks.data = "vms/vm-a.img"
nics = [{{ network = "prod", subnet = "app", ip = "127.190.2.10" }}]
{machine}
[vms.vm-b]
site = "east"
policy = "default"
disks.data = "vms/vm-b.qcow2"
nics = [{{ network = "prod", subnet = "app", ip = "127.190.2.11" }}]
{machine}
[consistency_groups.app]
vms = ["vm-a", "vm-b"]
"#
        ),
    )
    .unwrap();
    std::fs::write(
        base.join("plans/p.toml"),
        r#"version = 1
name = "p"
source = "east"
target = "west"
recovery_point = "latest"
[network]
map = [{ from = "east/prod", to = "west/prod-dr" }]
[[group]]
name = "app"
vms = ["vm-a", "vm-b"]
"#,
    )
    .unwrap();
    let (disk_a, disk_b) = (base.join("vms/vm-a.img"), base.join("vms/vm-b.qcow2"));
    std::fs::File::create(&disk_a)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk_b)
        .arg("32M")
        .status()
        .unwrap();
    assert!(made.success());
    let lifeboat = cli(base);
    let cycle = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--output", "json", "replicate"];
        args.extend_from_slice(extra);
        let out = lifeboat(&args);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        let reports: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        reports[0].clone()
    };
    let restored = |seq: u64, vm: &str| -> PathBuf {
        let out_dir = base.join(format!("restored-{seq}-{vm}"));
        let point = seq.to_string();
        let out = lifeboat(&[
            "restore",
            vm,
            "--point",
            &point,
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        out_dir.join("data.img")
    };
    let launches = [guard.start("vm-a").1, guard.start("vm-b").1];
    wait_healthy("127.190.2.10:8080");
    wait_healthy("127.190.2.11:8080");
    std::thread::sleep(Duration::from_secs(1));

    // The first point reads both disks whole; the guests stop only for the two transactions.
    let first = cycle(&[]);
    let notes = first["notes"].to_string();
    assert!(
        notes.contains("cut vm-a, vm-b at one instant (QEMU copy-before-write; stopped only for the transactions)"),
        "{notes}"
    );
    assert_eq!(first["read_bytes"], first["disk_bytes"], "{first}");
    let pause = first["paused_seconds"].as_f64().unwrap();
    assert!(pause < 1.0, "the guests were stopped {pause} s for the cut");

    // While they run, the next point reads only what they wrote since.
    std::thread::sleep(Duration::from_secs(2));
    let second = cycle(&[]);
    let (read, size) = (
        second["read_bytes"].as_u64().unwrap(),
        second["disk_bytes"].as_u64().unwrap(),
    );
    assert!(
        read > 0 && read * 8 < size,
        "read {read} of {size}: {second}"
    );
    assert!(
        !second["notes"].to_string().contains("full scan"),
        "{second}"
    );
    // Points of running guests hold consistent records, newer in the later point.
    let mut newest = Vec::new();
    for seq in [1, 2] {
        for vm in ["vm-a", "vm-b"] {
            let f = std::fs::File::open(restored(seq, vm)).unwrap();
            let check = lifeboat_demo_vm::disk::check(&f).unwrap();
            assert!(
                check.consistent() && check.torn_slots.is_empty(),
                "point {seq} of {vm}: {check:?}"
            );
            newest.push(check.last.map_or(0, |r| r.seq));
        }
    }
    assert!(newest[2] > newest[0] && newest[3] > newest[1], "{newest:?}");

    // With the guests stopped, an incremental point is the disks byte for byte, and a full
    // read of the same disks finds nothing it did not hold.
    qmp(&guard.rt, &disk_a, "stop");
    qmp(&guard.rt, &disk_b, "stop");
    let third = cycle(&[]);
    assert!(third["read_bytes"].as_u64().unwrap() * 8 < size, "{third}");
    let seq3 = third["seq"].as_u64().unwrap();
    assert!(std::fs::read(restored(seq3, "vm-a")).unwrap() == disk_bytes(&disk_a));
    assert!(std::fs::read(restored(seq3, "vm-b")).unwrap() == disk_bytes(&disk_b));
    let full = cycle(&["--full-scan"]);
    assert_eq!(full["read_bytes"], full["disk_bytes"], "{full}");
    assert_eq!(full["changed_bytes"], 0, "{full}");
    qmp(&guard.rt, &disk_a, "cont");
    qmp(&guard.rt, &disk_b, "cont");

    // kill -9 of one QEMU loses its bitmap: its next cycle reads it whole and says so; the other
    // VM's stays incremental; and the points are still exact.
    let a = guard.source.remove(0);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(a.pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    while guard.rt.block_on(guard.driver.running(&a)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let h = guard.rt.block_on(guard.driver.start(&launches[0])).unwrap();
    guard.source.push(h);
    wait_healthy("127.190.2.10:8080");
    let after_kill = cycle(&[]);
    let notes = after_kill["notes"].to_string();
    assert!(
        notes.contains(&format!("full scan of {}", disk_a.display())),
        "{notes}"
    );
    assert!(!notes.contains("vm-b.qcow2"), "{notes}");
    let read = after_kill["read_bytes"].as_u64().unwrap();
    assert!(
        (32 << 20..40 << 20).contains(&read),
        "vm-a read whole, vm-b only what changed: {after_kill}"
    );
    qmp(&guard.rt, &disk_a, "stop");
    qmp(&guard.rt, &disk_b, "stop");
    let last = cycle(&[]);
    assert!(!last["notes"].to_string().contains("full scan"), "{last}");
    let seq = last["seq"].as_u64().unwrap();
    assert!(std::fs::read(restored(seq, "vm-a")).unwrap() == disk_bytes(&disk_a));
    assert!(std::fs::read(restored(seq, "vm-b")).unwrap() == disk_bytes(&disk_b));
    qmp(&guard.rt, &disk_a, "cont");
    qmp(&guard.rt, &disk_b, "cont");
    // A clean stop keeps a qcow2 disk's persistent bitmap: after vm-b powers down and starts
    // again, its next cycle still reads only what changed.
    let b = guard.source.remove(0);
    assert_eq!(b.vm, "vm-b");
    guard
        .rt
        .block_on(guard.driver.stop(&b, Duration::from_secs(30)))
        .unwrap();
    let h = guard.rt.block_on(guard.driver.start(&launches[1])).unwrap();
    guard.source.push(h);
    wait_healthy("127.190.2.11:8080");
    let after_restart = cycle(&[]);
    assert!(
        !after_restart["notes"].to_string().contains("full scan"),
        "{after_restart}"
    );
    assert!(
        after_restart["read_bytes"].as_u64().unwrap() * 8 < size,
        "{after_restart}"
    );
    for disk in [&disk_a, &disk_b] {
        let fleece = PathBuf::from(format!("{}.fleece.qcow2", disk.display()));
        assert!(!fleece.exists(), "{} left behind", fleece.display());
    }
    eprintln!(
        "two guests stopped {:.1} ms for the first cut; second cut read {read} of {size} bytes",
        pause * 1000.0
    );
}

#[test]
fn a_plan_of_a_qemu_group_and_a_process_group_drills_and_fails_over_in_order() {
    let guest = guest();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let mut guard = Lab::new(base);
    let (kernel, initrd) = (guest.join("vmlinuz"), guest.join("initrd.gz"));
    let helper = crate::failover::HELPER;
    std::fs::write(
        base.join("lifeboat.toml"),
        format!(
            r#"version = 1
[sites.east]
store = "east"
compute = "qemu"
replicate_to = "west"
networks.prod.subnets = {{ app = "127.190.3.0/24", db = "127.190.4.0/24" }}
[sites.west]
store = "west"
compute = "qemu"
networks.prod-dr.subnets = {{ app = "127.190.13.0/24", db = "127.190.14.0/24" }}
networks.drill.subnets = {{ app = "127.190.93.0/24", db = "127.190.94.0/24" }}
[policies.default]
crash_interval = "10s"
retention = "1h"
rpo_threshold = "1m"
[vms.db-1]
site = "east"
policy = "default"
disks.data = "vms/db-1.img"
nics = [{{ network = "prod", subnet = "db", ip = "127.190.4.10" }}]
boot = {{ command = ["{helper}", "demo-vm", "--disk", "{{disk.data}}", "--listen", "{{nic0.ip}}:5432"] }}
health = {{ http = "http://{{nic0.ip}}:5432/health", timeout = "30s" }}
[vms.web-1]
site = "east"
policy = "default"
disks.data = "vms/web-1.img"
nics = [{{ network = "prod", subnet = "app", ip = "127.190.3.10" }}]
machine = {{ kernel = {kernel:?}, initrd = {initrd:?}, append = "console=ttyS0 panic=-1 quiet", ports = [8080] }}
health = {{ http = "http://{{nic0.ip}}:8080/health", timeout = "90s" }}
"#
        ),
    )
    .unwrap();
    std::fs::write(
        base.join("plans/p.toml"),
        r#"version = 1
name = "p"
source = "east"
target = "west"
recovery_point = "latest"
[network]
map = [{ from = "east/prod", to = "west/prod-dr" }]
test = "west/drill"
[[group]]
name = "database"
vms = ["db-1"]
[[group]]
name = "web"
vms = ["web-1"]
post = [{ uses = "builtin:http-check", with = { url = "http://{vm.web-1.ip}:8080/health" }, allow = { http = ["http://{vm.web-1.ip}:8080/"] } }]
"#,
    )
    .unwrap();
    for vm in ["db-1", "web-1"] {
        std::fs::File::create(base.join(format!("vms/{vm}.img")))
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
    }
    let lifeboat = cli(base);
    let out = lifeboat(&["plan", "validate"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    guard.start("db-1");
    guard.start("web-1");
    wait_healthy("127.190.4.10:5432");
    wait_healthy("127.190.3.10:8080");
    std::thread::sleep(Duration::from_secs(1));

    // The process is paused for its cut, the QEMU guest is cut while it runs.
    let out = lifeboat(&["replicate"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("note: held db-1 still for the cut (paused)")
            && out
                .stderr
                .contains("note: cut web-1 while running (QEMU copy-before-write)"),
        "{}",
        out.stderr
    );

    // Where a run put each VM, from its record.
    let placed = |run: &str| -> std::collections::HashMap<String, String> {
        let out = lifeboat(&["--output", "json", "runs", "show", run]);
        let rec: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let mut at = std::collections::HashMap::new();
        for v in rec["vms"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap().to_string();
            let ip = v["addresses"][0]["ip"].as_str().unwrap().to_string();
            let port = if name == "db-1" { 5432 } else { 8080 };
            at.insert(name, format!("{ip}:{port}"));
        }
        at
    };
    let in_order = |run: &str| {
        let j = Journal::open(&base.join(".lifeboat/state/runs.db")).unwrap();
        let events: Vec<lifeboat_orchestrator::journal::Event> = j
            .events(run)
            .unwrap()
            .into_iter()
            .map(|(_, _, e)| e)
            .collect();
        let at = |want: &str| {
            events
                .iter()
                .position(|e| matches!(e, lifeboat_orchestrator::journal::Event::VmStarted { vm, .. } if vm == want))
                .unwrap_or_else(|| panic!("{want} was not started in {run}"))
        };
        let db_healthy = events
            .iter()
            .position(|e| matches!(e, lifeboat_orchestrator::journal::Event::GroupHealthy { group } if group == "database"))
            .unwrap();
        assert!(
            at("db-1") < db_healthy && db_healthy < at("web-1"),
            "{events:#?}"
        );
    };

    // A drill: the database group, then the web group, in the drill network.
    let out = lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    in_order("p-1");
    let drill = placed("p-1");
    let netns = drill_netns(base, "p-1");
    for (vm, addr) in &drill {
        assert!(addr.starts_with("127.190.9"), "{vm} at {addr}");
        let state = crate::failover::get_in(&netns, addr, "/state")
            .unwrap_or_else(|| panic!("{vm} answers at {addr}"));
        assert!(
            state["recovered"]["last"]["seq"].as_u64().unwrap_or(0) > 0,
            "{vm}: {state}"
        );
    }
    assert_eq!(files_ending(base, ".drill.qcow2").len(), 1);
    let out = lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let j = Journal::open(&base.join(".lifeboat/state/runs.db")).unwrap();
    assert!(
        lifeboat_orchestrator::runs::running_vms(&j)
            .unwrap()
            .is_empty(),
        "cleanup left a VM running"
    );
    assert!(
        !std::path::Path::new("/run/netns").join(&netns).exists(),
        "cleanup left namespace {netns}"
    );
    assert!(files_ending(base, ".drill.qcow2").is_empty());
    assert!(files_ending(base, ".fleece.qcow2").is_empty());

    // The source site is lost: an unplanned failover boots both from the last point, in order,
    // at their mapped addresses.
    for h in guard.source.drain(..) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(h.pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
    }
    let out = lifeboat(&["failover", "p", "--unplanned"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    in_order("p-2");
    let failed_over = placed("p-2");
    assert!(
        failed_over["db-1"].starts_with("127.190.14."),
        "{failed_over:?}"
    );
    assert!(
        failed_over["web-1"].starts_with("127.190.13."),
        "{failed_over:?}"
    );
    for (vm, addr) in &failed_over {
        let state = get(addr, "/state").unwrap_or_else(|| panic!("{vm} answers at {addr}"));
        assert_eq!(
            state["recovered"]["missing"],
            serde_json::json!([]),
            "{vm}: {state}"
        );
    }
}

/// The events of run `run` of the lab in `base`.
pub(crate) fn run_events(
    base: &std::path::Path,
    run: &str,
) -> Vec<lifeboat_orchestrator::journal::Event> {
    Journal::open(&base.join(".lifeboat/state/runs.db"))
        .unwrap()
        .events(run)
        .unwrap()
        .into_iter()
        .map(|(_, _, e)| e)
        .collect()
}

/// The network namespace drill `run` of the lab in `base` runs its copies in.
pub(crate) fn drill_netns(base: &std::path::Path, run: &str) -> String {
    run_events(base, run)
        .into_iter()
        .find_map(|e| match e {
            lifeboat_orchestrator::journal::Event::Isolated { netns } => Some(netns),
            _ => None,
        })
        .expect("the drill made a network namespace")
}

/// The command line run `run` started `vm` with.
fn drill_argv(base: &std::path::Path, run: &str, vm: &str) -> Vec<String> {
    run_events(base, run)
        .into_iter()
        .find_map(|e| match e {
            lifeboat_orchestrator::journal::Event::VmStarted { vm: v, argv, .. } if v == vm => {
                Some(argv)
            }
            _ => None,
        })
        .expect("the VM was started")
}
