//! The demo VM as a drill uses it: a real process writing its disk, killed and restarted,
//! replicated while it runs, its restored disk checked for what was lost.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_replication::groups::GroupSpec;
use lifeboat_replication::{Cut, CycleOptions, Repository, Store};

const DEMO: &str = env!("CARGO_BIN_EXE_demo-vm");

/// Starts the demo VM; returns it and the address it listens on.
fn start(disk: &Path) -> (Child, String) {
    let mut child = Command::new(DEMO)
        .arg("--disk")
        .arg(disk)
        .args(["--rate", "200"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .rsplit("listening on ")
        .next()
        .unwrap()
        .trim()
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    (child, addr)
}

fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Polls until `done` holds; the machine may be loaded (each record is an fsync), so tests wait
/// for what they need rather than sleeping a fixed time.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state(addr: &str) -> serde_json::Value {
    serde_json::from_str(&get(addr, "/state").1).unwrap()
}

fn check(disk: &Path) -> (bool, serde_json::Value) {
    let out = Command::new(DEMO)
        .arg("--disk")
        .arg(disk)
        .arg("--check")
        .output()
        .unwrap();
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

fn disk(dir: &Path, slots: u64) -> std::path::PathBuf {
    let p = dir.join("disk.img");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(slots * 4096)
        .unwrap();
    p
}

#[test]
fn it_serves_health_and_state_and_recovers_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), 64); // a small ring: it wraps many times
    let (mut vm, addr) = start(&disk);
    assert_eq!(get(&addr, "/health").0, "HTTP/1.1 200 OK");
    assert_eq!(get(&addr, "/nope").0, "HTTP/1.1 404 Not Found");
    wait_until("the ring wrapped", || {
        state(&addr)["last_record"].as_u64().unwrap() > 80
    });
    let seen = state(&addr)["last_record"].as_u64().unwrap();
    vm.kill().unwrap();
    vm.wait().unwrap();
    let (ok, found) = check(&disk);
    assert!(ok, "{found}");
    let last = found["last"]["seq"].as_u64().unwrap();
    assert!(
        last >= seen,
        "acknowledged record {seen} lost: disk ends at {last}"
    );
    // Restarted, it reports what it recovered and goes on from there.
    let (mut vm, addr) = start(&disk);
    let s = state(&addr);
    assert_eq!(s["recovered"]["last"]["seq"].as_u64().unwrap(), last);
    wait_until("it wrote on", || {
        state(&addr)["last_record"].as_u64().unwrap() > last
    });
    vm.kill().unwrap();
    vm.wait().unwrap();
}

#[test]
fn a_damaged_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), 64);
    let (mut vm, addr) = start(&disk);
    wait_until("20 records", || {
        state(&addr)["last_record"].as_u64().unwrap() >= 20
    });
    vm.kill().unwrap();
    vm.wait().unwrap();
    let last = check(&disk).1["last"]["seq"].as_u64().unwrap();
    // Zero a record in the middle of the ring: a hole no crash leaves.
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0u8; 4096], ((last - 5) % 64) * 4096)
        .unwrap();
    let (ok, found) = check(&disk);
    assert!(!ok);
    assert_eq!(found["missing"], serde_json::json!([last - 5]));
    let out = Command::new(DEMO)
        .arg("--disk")
        .arg(&disk)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not consistent"));
}

/// Holds the demo VM still for the cut, as the process driver does.
struct Pause(u32);

#[async_trait::async_trait]
impl Cut for Pause {
    async fn hold(&self) -> lifeboat_replication::Result<()> {
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -STOP {}", self.0)])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(lifeboat_replication::Error::failed("cannot pause the VM"));
        }
        // The signal lands asynchronously: the cut is when the VM has stopped.
        let started = std::time::Instant::now();
        while !lifeboat_compute::driver::process_paused(self.0) {
            if started.elapsed() > Duration::from_secs(5) {
                return Err(lifeboat_replication::Error::failed("the VM did not stop"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }
    async fn release(&self) -> lifeboat_replication::Result<()> {
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -CONT {}", self.0)])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(())
        } else {
            Err(lifeboat_replication::Error::failed("cannot resume the VM"))
        }
    }
}

#[test]
fn a_point_of_a_running_vm_restores_consistent_and_measures_its_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path(), 4096); // 16 MiB
    let (mut vm, addr) = start(&disk);
    wait_until("10 records", || {
        state(&addr)["last_record"].as_u64().unwrap() >= 10
    });
    let group = GroupSpec::one_disk("demo", "os", &disk, dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = CycleOptions {
        cut: Some(Arc::new(Pause(vm.id()))),
        ..CycleOptions::default()
    };
    let source = Store::open_cache("east", dir.path()).unwrap();
    let target = Store::open("west", dir.path()).unwrap();
    for _ in 0..3 {
        rt.block_on(lifeboat_replication::replicate(
            &group, &source, &target, &opts,
        ))
        .unwrap();
        let before = state(&addr)["last_record"].as_u64().unwrap();
        wait_until("it wrote after the cut", || {
            state(&addr)["last_record"].as_u64().unwrap() > before
        });
    }
    let source_last = state(&addr);
    vm.kill().unwrap();
    vm.wait().unwrap();
    // Restore every point: each is consistent, and the newest is at most one cycle behind.
    let out = dir.path().join("restored");
    let (points, last_point) = rt.block_on(async {
        let repo = Repository::open(&target).await.unwrap();
        let mut points = Vec::new();
        for m in repo.points("demo").await.unwrap() {
            let o = out.join(m.seq.to_string());
            lifeboat_replication::restore::restore(&repo, &m, "demo", &o, None)
                .await
                .unwrap();
            points.push((m.seq, m.captured_unix_ms, o.join("os.img")));
        }
        let latest = points[0].clone();
        (points, latest)
    });
    assert_eq!(points.len(), 3);
    let mut previous = u64::MAX;
    for (seq, captured_ms, image) in &points {
        let (ok, found) = check(image);
        assert!(ok, "point {seq} is not consistent: {found}");
        let rec = found["last"]["seq"].as_u64().unwrap();
        let rec_ms = found["last"]["unix_ms"].as_u64().unwrap();
        assert!(rec < previous, "point {seq} is not newer than the next one");
        previous = rec;
        // The point holds what was written before its cut, and nothing after it.
        assert!(
            rec_ms <= *captured_ms,
            "point {seq} holds record {rec} written after its cut"
        );
    }
    // The achieved RPO: the source's newest record against the restored newest one. The newest
    // point was cut before the source wrote on, so it lost something, and what it holds was
    // written shortly before its cut (one record period, plus an fsync on a loaded machine).
    let (_, found) = check(&last_point.2);
    let restored_ms = found["last"]["unix_ms"].as_u64().unwrap();
    let rpo_ms = source_last["last_record_unix_ms"].as_u64().unwrap() - restored_ms;
    let lost =
        source_last["last_record"].as_u64().unwrap() - found["last"]["seq"].as_u64().unwrap();
    assert!(
        lost > 0 && rpo_ms > 0,
        "the source wrote after the last cut: something must be lost"
    );
    assert!(
        last_point.1 - restored_ms < 2000,
        "the newest point is {} ms stale at its cut",
        last_point.1 - restored_ms
    );
}
