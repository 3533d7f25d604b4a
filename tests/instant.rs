//! Instant boot: a drill of the test guest boots from its point as the repository holds it (a
//! `lifeboat export` server, qcow2 images backed by it) while its disk hydrates behind it; the
//! export server killed mid-hydration comes back and nothing is lost.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_compute::Compute;
use lifeboat_orchestrator::journal::Event;

use crate::failover::{HELPER, get_in};
use crate::qemu::{Lab, cli, drill_netns, guest, run_events};

const GIB: u64 = 1 << 30;
/// Data written far from the guest's records, so hydration has something to copy.
const FILLED: u64 = 256 << 20;

/// The lab's inventory and plan, its addresses in `127.NET.*` (tests running at once must not
/// share them).
fn inventory(base: &Path, kernel: &Path, initrd: &Path, net: u8) {
    inventory_on(base, kernel, initrd, net, "west");
}

/// [`inventory`], with `west`'s repository at store URL `west`.
fn inventory_on(base: &Path, kernel: &Path, initrd: &Path, net: u8, west: &str) {
    std::fs::write(
        base.join("lifeboat.toml"),
        format!(
            r#"version = 1
[sites.east]
store = "east"
compute = "qemu"
replicate_to = "west"
networks.prod.subnets = {{ app = "127.{net}.1.0/24" }}
[sites.west]
store = "{west}"
compute = "qemu"
# Hydration's own copy reads at most this (the guest's reads, which hydrate what they read,
# are not held back): the test kills the server while it copies.
bandwidth = "8MB/s"
networks.prod-dr.subnets = {{ app = "127.{net}.11.0/24" }}
networks.drill.subnets = {{ app = "127.{net}.91.0/24" }}
[policies.default]
crash_interval = "1h"
retention = "1d"
rpo_threshold = "1d"
[vms.vm-1]
site = "east"
policy = "default"
disks.data = "vms/vm-1.img"
nics = [{{ network = "prod", subnet = "app", ip = "127.{net}.1.10" }}]
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
}

/// A 4 GiB disk: empty but for `FILLED` bytes of data (a deterministic pattern that does not
/// compress or repeat) 3 GiB in.
fn make_disk(path: &Path) {
    make_disk_of(path, 4 * GIB, 3 * GIB, FILLED);
}

/// A disk of `size` bytes, empty but for `filled` bytes of that pattern at `at`.
fn make_disk_of(path: &Path, size: u64, at: u64, filled: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..(filled >> 20) {
        for word in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
}

fn exporting(base: &Path, run: &str) -> Vec<(u32, String)> {
    run_events(base, run)
        .into_iter()
        .filter_map(|e| match e {
            Event::Exporting { pid, socket, .. } => Some((pid, socket)),
            _ => None,
        })
        .collect()
}

fn hydrated(base: &Path, run: &str) -> Vec<(String, f64)> {
    run_events(base, run)
        .into_iter()
        .filter_map(|e| match e {
            Event::Hydrated { disk, seconds, .. } => Some((disk, seconds)),
            _ => None,
        })
        .collect()
}

/// `image` (an instant disk of `vm-1`) has no backing and equals a normal `lifeboat restore` of
/// the latest point, byte for byte.
fn is_a_whole_restore(
    lifeboat: &impl Fn(&[&str]) -> crate::support::Outcome,
    base: &Path,
    image: &Path,
) {
    assert_eq!(backing_of(image), None);
    let restored = base.join("restored");
    let out = lifeboat(&[
        "restore",
        "vm-1",
        "--point",
        "latest",
        "--out",
        &restored.display().to_string(),
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let compare = Command::new("qemu-img")
        .args(["compare", "-U", "-f", "qcow2", "-F", "raw"])
        .arg(image)
        .arg(restored.join("data.img"))
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "{}{}",
        String::from_utf8_lossy(&compare.stdout),
        String::from_utf8_lossy(&compare.stderr)
    );
}

fn backing_of(image: &Path) -> Option<String> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output", "json"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    info.get("backing-filename")
        .and_then(|b| b.as_str())
        .map(str::to_string)
}

#[test]
fn a_drill_boots_from_the_repository_and_hydrates_behind_the_guest_through_a_killed_server() {
    let guest = guest();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let mut lab = Lab::new(base);
    inventory(base, &guest.join("vmlinuz"), &guest.join("initrd.gz"), 191);
    make_disk(&base.join("vms/vm-1.img"));
    let lifeboat = cli(base);

    lab.start("vm-1");
    crate::qemu::wait_healthy("127.191.1.10:8080");
    let out = lifeboat(&["replicate"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // The drill, in a process of its own: it stays to see hydration through.
    let config = base.join("lifeboat.toml").display().to_string();
    let started = Instant::now();
    let drill = Command::new(HELPER)
        .args(["cli", "--config", &config, "failover", "p", "--test"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // kill -9 of the export server as soon as hydration copies (QEMU's job says so), while
    // the guest boots.
    let disks = base.join(".lifeboat/state/runs/p-1/disks/vm-1");
    let image = disks.join("data.qcow2");
    let qmp = disks.join("data.qcow2.drill.qcow2.qmp");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = lab.rt.block_on(lifeboat_compute::hydrate::look(
            &qmp,
            std::slice::from_ref(&image),
        ));
        if let Ok(seen) = &seen
            && matches!(seen[0], lifeboat_compute::hydrate::Hydration::Streaming { done, total, .. } if done > 0 && done < total)
        {
            break;
        }
        assert!(Instant::now() < deadline, "hydration never began: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let servers = exporting(base, "p-1");
    assert_eq!(servers.len(), 1, "{servers:?}");
    let (pid, socket) = servers[0].clone();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();

    // The guest boots healthy, none of its records missing: its reads waited for the server to
    // be back. (This guest reads its whole disk as it starts, and a guest's reads hydrate what
    // they read: its disk is hydrated about when it answers.)
    let netns = drill_netns(base, "p-1");
    let deadline = Instant::now() + Duration::from_secs(180);
    let state = loop {
        if let Some(s) = get_in(&netns, "127.191.91.254:8080", "/state") {
            break s;
        }
        assert!(Instant::now() < deadline, "the drill copy never answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    let healthy = started.elapsed();
    assert_eq!(
        state["recovered"]["missing"],
        serde_json::json!([]),
        "{state}"
    );
    let after = state;

    // The drill's process brings the server back, sees hydration through and exits 0.
    let out = drill.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let servers = exporting(base, "p-1");
    assert_eq!(
        servers.len(),
        2,
        "the server was started again: {servers:?}"
    );
    assert_ne!(servers[1].0, pid);
    let done = hydrated(base, "p-1");
    assert_eq!(done.len(), 1, "{done:?}\n{stderr}");
    assert!(stderr.contains("vm-1/data: hydrated"), "{stderr}");
    assert!(
        run_events(base, "p-1")
            .iter()
            .any(|e| matches!(e, Event::ExportStopped { vm } if vm == "vm-1")),
        "the server stops once its disks are hydrated"
    );
    assert!(!Path::new(&socket).exists(), "the export socket is removed");
    // The first server kept the order the boot read the disk in (this guest reads all of it,
    // its records first), for the VM's next instant boot.
    let trace = std::fs::read_to_string(base.join(".lifeboat/state/traces/vm-1.json")).unwrap();
    let trace: serde_json::Value = serde_json::from_str(&trace).unwrap();
    let runs = trace["disks"]["data"]["runs"]
        .as_array()
        .expect("the data disk's trace");
    let chunks: u64 = runs.iter().map(|r| r[1].as_u64().unwrap()).sum();
    assert!(
        runs[0][0] == 0 && chunks >= FILLED >> 16,
        "the boot's reads begin at the records and cover the data: {trace}"
    );

    // The hydrated image has no backing and equals a normal restore of the point, byte for
    // byte; the guest is still running, its records intact.
    is_a_whole_restore(&lifeboat, base, &image);
    let last = get_in(&netns, "127.191.91.254:8080", "/state").expect("the guest answers");
    assert_eq!(
        last["recovered"]["missing"],
        serde_json::json!([]),
        "{last}"
    );
    assert!(
        last["written_since_start"].as_u64().unwrap_or(0)
            > after["written_since_start"].as_u64().unwrap_or(0),
        "the guest kept writing: {after} -> {last}"
    );

    let out = lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    eprintln!(
        "instant drill: healthy {:.1}s after `failover`, hydrated {:.1}s after boot",
        healthy.as_secs_f64(),
        done[0].1
    );
}

/// The same boot from an encrypted repository on the S3 server: the export reads sealed chunks
/// from the object store, the guest boots healthy with its records, and the hydrated image is
/// a normal restore of the point byte for byte.
#[test]
fn a_drill_boots_from_an_encrypted_repository_on_s3_and_hydrates() {
    let guest = guest();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let mut lab = Lab::new(base);
    std::fs::write(base.join("test.key"), "5e".repeat(32)).unwrap();
    let west =
        crate::servers::s3(&format!("instant-{}", std::process::id())) + "&key_file=test.key";
    inventory_on(
        base,
        &guest.join("vmlinuz"),
        &guest.join("initrd.gz"),
        195,
        &west,
    );
    make_disk_of(&base.join("vms/vm-1.img"), GIB / 2, GIB / 4, 64 << 20);
    let lifeboat = cli(base);
    lab.start("vm-1");
    crate::qemu::wait_healthy("127.195.1.10:8080");
    let out = lifeboat(&["replicate"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    let out = lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("vm-1/data: hydrated"), "{}", out.stderr);
    assert_eq!(exporting(base, "p-1").len(), 1);
    assert_eq!(hydrated(base, "p-1").len(), 1);
    let netns = drill_netns(base, "p-1");
    let state = get_in(&netns, "127.195.91.254:8080", "/state").expect("the drill copy answers");
    assert_eq!(
        state["recovered"]["missing"],
        serde_json::json!([]),
        "{state}"
    );
    let image = base.join(".lifeboat/state/runs/p-1/disks/vm-1/data.qcow2");
    is_a_whole_restore(&lifeboat, base, &image);
    let out = lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // The next drill's server fetches ahead of the guest, from the object store, in the order
    // this boot read the disk; the guest boots as healthy.
    let out = lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let log = std::fs::read_to_string(base.join(".lifeboat/state/runs/p-2/logs/vm-1.export.log"))
        .unwrap();
    assert!(
        log.contains("chunks ahead of the guest, in the order an earlier boot read them"),
        "{log}"
    );
    let netns = drill_netns(base, "p-2");
    let state = get_in(&netns, "127.195.91.254:8080", "/state").expect("the drill copy answers");
    assert_eq!(
        state["recovered"]["missing"],
        serde_json::json!([]),
        "{state}"
    );
    let out = lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

#[test]
fn plan_simulate_predicts_the_rto_with_and_without_instant_boot() {
    let guest = guest();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    std::fs::create_dir_all(base.join("plans")).unwrap();
    std::fs::create_dir_all(base.join("vms")).unwrap();
    inventory(base, &guest.join("vmlinuz"), &guest.join("initrd.gz"), 194);
    let lifeboat = cli(base);
    let simulate = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["plan", "simulate", "p", "--output", "json"];
        args.extend_from_slice(extra);
        let out = lifeboat(&args);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    };
    // A qemu target boots instantly unless told otherwise: no restore to wait for.
    let instant = simulate(&[]);
    let restoring = simulate(&["--no-instant"]);
    assert_eq!(instant["instant"], true, "{instant:#}");
    assert_eq!(restoring["instant"], false, "{restoring:#}");
    let rto = |s: &serde_json::Value| s["rto_seconds"].as_f64().unwrap();
    assert!(
        rto(&restoring) > rto(&instant) + 10.0,
        "{} vs {}",
        rto(&restoring),
        rto(&instant)
    );
    assert_eq!(simulate(&["--instant"])["instant"], true);
    // The human report says which.
    let out = lifeboat(&["plan", "simulate", "p"]);
    assert!(out.stdout.contains("(instant boot"), "{}", out.stdout);
}

#[test]
fn an_instant_failover_commits_reprotects_and_fails_back_with_nothing_lost() {
    let guest = guest();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let mut lab = Lab::new(base);
    inventory(base, &guest.join("vmlinuz"), &guest.join("initrd.gz"), 193);
    std::fs::File::create(base.join("vms/vm-1.img"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let lifeboat = cli(base);
    let (source, _) = lab.start("vm-1");
    crate::qemu::wait_healthy("127.193.1.10:8080");
    let out = lifeboat(&["replicate"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // There: a planned failover boots west's copy from the repository; it has hydrated when
    // the command returns, and commit takes it over.
    let out = lifeboat(&["failover", "p", "--planned"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!lab.rt.block_on(lab.driver.running(&source)));
    assert_eq!(hydrated(base, "p-1").len(), 1, "{}", out.stderr);
    let image = base.join(".lifeboat/state/runs/p-1/disks/vm-1/data.qcow2");
    assert_eq!(backing_of(&image), None);
    let west = crate::failover::get("127.193.11.1:8080", "/state").expect("west's copy answers");
    assert_eq!(
        west["recovered"]["missing"],
        serde_json::json!([]),
        "{west}"
    );
    let out = lifeboat(&["commit", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // Protected the other way from its hydrated image, then home again, instantly too.
    let out = lifeboat(&["reprotect", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    std::thread::sleep(Duration::from_secs(1));
    let out = lifeboat(&["failback", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let run = run_events(base, "p-3");
    assert!(
        run.iter().any(|e| matches!(e, Event::Exporting { .. })),
        "the failback booted from east's repository"
    );
    // Its server found the trace the failover's boot left, and does not follow it from a
    // local folder.
    let log = std::fs::read_to_string(base.join(".lifeboat/state/runs/p-3/logs/vm-1.export.log"))
        .unwrap();
    assert!(
        log.contains("is not followed: the repository is a local folder"),
        "{log}"
    );
    let home = crate::failover::get("127.193.1.10:8080", "/state").expect("home answers");
    assert_eq!(
        home["recovered"]["missing"],
        serde_json::json!([]),
        "{home}"
    );
    assert!(
        home["recovered"]["last"]["seq"].as_u64().unwrap_or(0)
            >= west["last_record"].as_u64().unwrap_or(u64::MAX),
        "home recovered what west wrote: {west} -> {home}"
    );
    let out = lifeboat(&["commit", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

/// A daemon drives an instant drill (`failover --test` goes through it): while the drill's
/// second disk, which the guest never reads, hydrates at west's bandwidth, the daemon's status
/// lists it under `hydrating` with its bytes and `/metrics` carries the same; once it holds
/// everything both are empty, the journal has its time to hydrated and its server is stopped.
#[test]
fn a_daemon_drives_an_instant_drill_and_shows_hydration_as_it_goes() {
    let guest = guest();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let mut lab = Lab::new(base);
    inventory(base, &guest.join("vmlinuz"), &guest.join("initrd.gz"), 196);
    let inv = std::fs::read_to_string(base.join("lifeboat.toml")).unwrap();
    let inv = inv.replacen(
        "disks.data = \"vms/vm-1.img\"",
        "disks.data = \"vms/vm-1.img\"\ndisks.extra = \"vms/vm-1-extra.img\"",
        1,
    );
    std::fs::write(base.join("lifeboat.toml"), inv).unwrap();
    make_disk_of(&base.join("vms/vm-1.img"), 64 << 20, 0, 0);
    make_disk_of(
        &base.join("vms/vm-1-extra.img"),
        128 << 20,
        16 << 20,
        96 << 20,
    );
    let lifeboat = cli(base);
    lab.start("vm-1");
    crate::qemu::wait_healthy("127.196.1.10:8080");
    let out = lifeboat(&["replicate"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    let config = base.join("lifeboat.toml").display().to_string();
    let d = crate::daemon::Daemon::spawn(&config, base, None, "127.196.0.1:7196".into(), &[]);
    let drill = Command::new(HELPER)
        .args(["cli", "--config", &config, "failover", "p", "--test"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // 96 MiB at 8 MB/s: the daemon shows the extra disk part way, with the same bytes in its
    // status and its metrics.
    let extra = |st: &serde_json::Value| {
        st["hydrating"]
            .as_array()
            .and_then(|h| h.iter().find(|d| d["disk"] == "extra").cloned())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let part_way = loop {
        let (code, st) = d.api("GET", "/v1/status", None);
        assert_eq!(code, 200, "{st}");
        if let Some(h) = extra(&st)
            && h["done_bytes"].as_u64().unwrap_or(0) > 0
            && h["done_bytes"].as_u64() < h["total_bytes"].as_u64()
        {
            break h;
        }
        assert!(Instant::now() < deadline, "never seen hydrating: {st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(part_way["run"], "p-1", "{part_way}");
    assert_eq!(part_way["vm"], "vm-1", "{part_way}");
    assert_eq!(part_way["total_bytes"], 128 << 20, "{part_way}");
    let labels = "{run=\"p-1\",vm=\"vm-1\",disk=\"extra\"}";
    let total = d.metric(&format!("lifeboat_hydration_total_bytes{labels}"));
    let done = d.metric(&format!("lifeboat_hydration_done_bytes{labels}"));
    assert_eq!(total, Some((128 << 20) as f64), "{:?}", d.http("/metrics"));
    assert!(
        done.is_some_and(|b| b > 0.0 && b <= (128 << 20) as f64),
        "{done:?}"
    );

    // The command ends with the run; the daemon sees hydration through.
    let out = drill.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, st) = d.api("GET", "/v1/status", None);
        // (An empty list is left out of the document.)
        if st["hydrating"].as_array().is_none_or(|h| h.is_empty())
            && hydrated(base, "p-1").len() == 2
        {
            break;
        }
        assert!(Instant::now() < deadline, "never hydrated: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        d.metric(&format!("lifeboat_hydration_done_bytes{labels}")),
        None,
        "a hydrated disk leaves the metrics"
    );
    let stopped = || {
        run_events(base, "p-1")
            .iter()
            .any(|e| matches!(e, Event::ExportStopped { vm } if vm == "vm-1"))
    };
    crate::failover::wait_for(stopped, "the export server stopped");
    let out = lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let (status, log) = d.term(Duration::from_secs(30));
    assert!(status.success(), "{log}");
}
