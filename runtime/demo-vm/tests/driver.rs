//! The demo VM under the process driver, as the orchestrator will run it: a boot command
//! template filled with the VM's disk and address, a health probe, pause for a replication cut,
//! stop.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use lifeboat_compute::PauseVms;
use lifeboat_compute::driver::{Compute, Launch, ProcessDriver, process_paused};
use lifeboat_compute::template::fill;
use lifeboat_orchestrator::health::{Probe, wait_healthy};
use lifeboat_replication::Cut;

const DEMO: &str = env!("CARGO_BIN_EXE_demo-vm");

fn last_record(disk: &std::path::Path) -> u64 {
    let out = std::process::Command::new(DEMO)
        .arg("--disk")
        .arg(disk)
        .arg("--check")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["last"]["seq"].as_u64().unwrap_or(0)
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_process_driver_boots_probes_pauses_and_stops_a_vm() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("os.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // An address of the (loopback) target subnet, as network mapping would assign.
    let ip = "127.77.0.10";
    let port = free_port(ip);
    let template = [
        "{demo}",
        "--disk",
        "{disk.os}",
        "--listen",
        "{nic0.ip}:{port}",
        "--rate",
        "100",
    ];
    let value = |name: &str| match name {
        "demo" => Some(DEMO.to_string()),
        "disk.os" => Some(disk.display().to_string()),
        "nic0.ip" => Some(ip.to_string()),
        "port" => Some(port.to_string()),
        _ => None,
    };
    let argv: Vec<String> = template.iter().map(|t| fill(t, &value).unwrap()).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = ProcessDriver::new();
    let launch = Launch {
        vm: "db-1".into(),
        argv,
        dir: dir.path().to_path_buf(),
        log: dir.path().join("logs/db-1.log"),
        key: String::new(),
        netns: None,
        domain: None,
    };
    let vm = rt.block_on(driver.start(&launch)).unwrap();
    let probe = Probe::Http(format!("http://{ip}:{port}/health"));
    let took = rt
        .block_on(wait_healthy(&probe, Duration::from_secs(10), dir.path()))
        .unwrap();
    assert!(took < Duration::from_secs(10));
    assert!(rt.block_on(driver.running(&vm)));

    // Held for a cut: the disk stops changing until released.
    let cut = PauseVms::new(driver.clone(), vec![vm.clone()], Duration::from_secs(30));
    rt.block_on(cut.hold()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let held = last_record(&disk);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(last_record(&disk), held, "the VM wrote while held");
    rt.block_on(cut.release()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while last_record(&disk) <= held {
        assert!(
            std::time::Instant::now() < deadline,
            "the VM did not resume"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!process_paused(vm.pid), "released, yet still stopped");

    // A pauser that goes away without releasing (its future dropped, as when the process
    // dies) leaves a guardian that resumes the VM at once.
    let cut = PauseVms::new(driver.clone(), vec![vm.clone()], Duration::from_secs(30));
    rt.block_on(cut.hold()).unwrap();
    wait_until(Duration::from_secs(1), || process_paused(vm.pid), "held");
    drop(cut);
    wait_until(
        Duration::from_secs(1),
        || !process_paused(vm.pid),
        "the guardian resumes the VM",
    );

    // A pauser that hangs: the guardian resumes the VM once the bound (+1 s) has passed.
    let cut = PauseVms::new(driver.clone(), vec![vm.clone()], Duration::from_secs(1));
    rt.block_on(cut.hold()).unwrap();
    wait_until(Duration::from_secs(1), || process_paused(vm.pid), "held");
    wait_until(
        Duration::from_secs(4),
        || !process_paused(vm.pid),
        "the guardian's bound resumes the VM",
    );
    // Releasing after that is harmless.
    rt.block_on(cut.release()).unwrap();

    rt.block_on(driver.stop(&vm, Duration::from_secs(5)))
        .unwrap();
    assert!(!rt.block_on(driver.running(&vm)));
    let probe = Probe::Tcp(format!("{ip}:{port}"));
    assert!(
        rt.block_on(wait_healthy(&probe, Duration::from_millis(300), dir.path()))
            .is_err()
    );
    assert!(
        std::fs::read_to_string(dir.path().join("logs/db-1.log"))
            .unwrap()
            .contains("listening on")
    );

    // A boot command that cannot start says which VM and program.
    let bad = Launch {
        argv: vec!["/nonexistent/vm".into()],
        ..launch
    };
    let e = rt.block_on(driver.start(&bad)).unwrap_err().to_string();
    assert!(e.contains("db-1") && e.contains("/nonexistent/vm"), "{e}");
}

fn wait_until(within: Duration, ok: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + within;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
