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
fn guest() -> PathBuf {
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

/// Stops whatever the test left running.
struct Cleanup {
    dir: PathBuf,
    driver: std::sync::Arc<ProcessDriver>,
    rt: tokio::runtime::Runtime,
    source: Vec<Handle>,
}

impl Drop for Cleanup {
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
    }
}

fn wait_healthy(addr: &str) -> Duration {
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
    std::fs::create_dir_all(base.join("plans")).unwrap();
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
    std::fs::create_dir_all(base.join("vms")).unwrap();
    std::fs::File::create(base.join("vms/vm-1.img"))
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let config = base.join("lifeboat.toml").display().to_string();
    let lifeboat = |args: &[&str]| {
        let mut full = vec!["--config", config.as_str()];
        full.extend_from_slice(args);
        crate::support::lifeboat(&full)
    };
    let mut guard = Cleanup {
        dir: base.to_path_buf(),
        driver: ProcessDriver::new(),
        rt: tokio::runtime::Runtime::new().unwrap(),
        source: Vec::new(),
    };

    // The source VM, started from its machine settings (so Lifeboat recognises it).
    let inventory = lifeboat_loader::validate(&base.join("lifeboat.toml"), &[])
        .inventory
        .expect("the inventory is valid");
    let mut launch = lifeboat_compute::site::source_launch(&inventory, base, "vm-1").unwrap();
    launch.log = base.join("vm-1.log");
    assert!(
        launch
            .argv
            .iter()
            .any(|a| a == "user,id=n0,hostfwd=tcp:127.190.1.10:8080-:8080"),
        "{:?}",
        launch.argv
    );
    let source = guard.rt.block_on(guard.driver.start(&launch)).unwrap();
    guard.source.push(source.clone());
    let boot = wait_healthy("127.190.1.10:8080");
    std::thread::sleep(Duration::from_secs(1));

    // A point of the running VM, cut by QEMU itself (copy-before-write) while it runs.
    let out = lifeboat(&["replicate"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("the cut: fleeced vm-1 (copy-before-write over QMP)"),
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
    let drill = get("127.190.91.254:8080", "/state").expect("the drill copy answers");
    assert!(
        drill["recovered"]["last"]["seq"].as_u64().unwrap_or(0) > 0,
        "{drill}"
    );
    assert_eq!(
        drill["recovered"]["missing"],
        serde_json::json!([]),
        "{drill}"
    );
    assert_eq!(lifeboat(&["cleanup", "p"]).code, 0);
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
