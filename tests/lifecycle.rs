//! There and back: failover → commit → reprotect → failback → commit → reprotect, with real
//! commands, real demo VMs writing throughout, and the bytes that cross measured.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_compute::driver::{Compute, Handle};
use lifeboat_orchestrator::journal::{Event, Journal};

use crate::failover::{Sites, get};

const CHUNK: usize = 64 << 10;

/// Bytes of the 64 KiB chunks in which two images differ.
fn changed_bytes(a: &Path, b: &Path) -> u64 {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(a.len(), b.len());
    a.chunks(CHUNK)
        .zip(b.chunks(CHUNK))
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.len() as u64)
        .sum()
}

/// The last intact record's sequence number in a demo VM's disk.
fn last_seq(image: &Path) -> u64 {
    let f = std::fs::File::open(image).unwrap();
    let check = lifeboat_demo_vm::disk::check(&f).unwrap();
    assert!(check.torn_slots.is_empty(), "{image:?}: torn records");
    check.last.map_or(0, |r| r.seq)
}

/// The VMs run `run` started and did not stop.
fn running(s: &Sites, run: &str) -> Vec<Handle> {
    let j = Journal::open(&s.path().join(".lifeboat/state/runs.db")).unwrap();
    j.replay(run).unwrap().unwrap().running
}

/// Each VM's disk image as run `run` restored it.
fn run_disks(s: &Sites, run: &str) -> HashMap<String, PathBuf> {
    s.events(run)
        .into_iter()
        .filter_map(|e| match e {
            Event::Restored { vm, disks, .. } => Some((vm, PathBuf::from(&disks[0]))),
            _ => None,
        })
        .collect()
}

/// What the steps of run `run` logged, one string per attempt.
fn step_logs(s: &Sites, run: &str) -> Vec<String> {
    s.events(run)
        .iter()
        .filter_map(|e| match e {
            Event::StepLog { lines, .. } => Some(lines.join("\n")),
            _ => None,
        })
        .collect()
}

fn json(out: &crate::support::Outcome) -> serde_json::Value {
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// A plan step (the template plugin) that runs only on failback and logs the run's operation
/// and direction.
fn failback_step(s: &Sites) -> String {
    let bytes = std::fs::read(lifeboat_builtins::artifacts::TEMPLATE).unwrap();
    std::fs::create_dir_all(s.path().join("plans/plugins")).unwrap();
    std::fs::write(s.path().join("plans/plugins/port-open.wasm"), &bytes).unwrap();
    use sha2::Digest;
    let sha = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    format!(
        r#"[{{ name = "home-port", uses = "plugins/port-open.wasm", sha256 = "{sha}", with = {{ address = "{{vm.app-1.ip}}:8080" }}, allow = {{ tcp = ["{{vm.app-1.ip}}:8080"] }}, on = ["failback"] }}]"#
    )
}

fn with_failback_step(k: u8) -> Sites {
    let s = Sites::new(k, "[]", "[]");
    let step = failback_step(&s);
    let plan = s.path().join("plans/p.toml");
    let text = std::fs::read_to_string(&plan).unwrap();
    let text = text.replace("post = []\n", &format!("post = {step}\n"));
    std::fs::write(&plan, text).unwrap();
    s
}

#[test]
fn there_and_back_loses_nothing_and_ships_only_what_diverged() {
    let mut s = with_failback_step(170);
    s.start_source();
    s.replicate();

    // Out: a planned failover, committed. The group runs at west, unprotected.
    let out = s.lifeboat(&["failover", "p", "--planned"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let steps = step_logs(&s, "p-1");
    assert!(
        !steps.iter().any(|l| l.contains("is open (")),
        "the failback-only step ran on a failover: {steps:?}"
    );
    let out = s.lifeboat(&["commit", "p"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("not protected until"), "{}", out.stdout);
    let out = s.lifeboat(&["points", "list", "db-1"]);
    assert!(
        out.stdout
            .contains("runs at west (booted by run p-1), NOT PROTECTED"),
        "{}",
        out.stdout
    );
    let out = s.lifeboat(&["runs", "show", "p-1"]);
    assert!(
        out.stdout
            .contains("group db-1 runs at west from this run's disks, NOT PROTECTED"),
        "{}",
        out.stdout
    );
    let out = s.lifeboat(&["status"]);
    assert!(
        out.stdout.contains("NOT PROTECTED (lifeboat reprotect)"),
        "{}",
        out.stdout
    );
    // A failover of a group that runs at the target is refused, saying what to do.
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("lifeboat reprotect p"),
        "{}",
        out.stderr
    );
    // So is a failback before a reprotect.
    let out = s.lifeboat(&["failback", "p"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("reprotect p` first"), "{}", out.stderr);

    // The copies at west write on for a while.
    std::thread::sleep(Duration::from_secs(2));

    // Reprotect: east hashes its old disks; the first reverse point ships only the divergence.
    let report = json(&s.lifeboat(&["--output", "json", "reprotect", "p"]));
    assert_eq!(report["run"], "p-2");
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{report}");
    let west_disks = run_disks(&s, "p-1");
    for g in groups {
        assert_eq!(g["site"], "west");
        assert_eq!(g["replicate_to"], "east");
        assert_eq!(g["full_seed"], false, "{g}");
        // Each VM is a group of its own here.
        let vm = g["group"].as_str().unwrap();
        // What the first reverse point holds, against the old disk east still has.
        let point = g["point"].as_u64().unwrap();
        let restored = s.path().join(format!("check-{vm}.img"));
        let out = s.lifeboat(&[
            "restore",
            vm,
            "--point",
            &point.to_string(),
            "--out",
            s.path().join(format!("check-{vm}")).to_str().unwrap(),
        ]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        std::fs::rename(s.path().join(format!("check-{vm}/data.img")), &restored).unwrap();
        let changed = changed_bytes(&restored, &s.path().join(format!("vms/{vm}.img")));
        let shipped = g["shipped_bytes"].as_u64().unwrap();
        assert!(changed > 0, "{vm}: the copy at west wrote nothing");
        assert!(
            shipped as f64 <= 1.1 * changed as f64,
            "{vm}: shipped {shipped} B for {changed} B changed since the failover"
        );
        assert!(west_disks.contains_key(vm));
    }
    let out = s.lifeboat(&["points", "list", "app-1"]);
    assert!(
        out.stdout.contains(
            "points at site east; it runs at west (booted by run p-1), replicating to east"
        ),
        "{}",
        out.stdout
    );
    // The reverse direction replicates like any other.
    let out = s.lifeboat(&["replicate"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // Back: failback stops the copies at west, replicates once more, boots at east at the
    // home addresses, running the failback step with direction = reverse.
    let west_vms = running(&s, "p-1");
    assert_eq!(west_vms.len(), 2);
    let out = s.lifeboat(&["failback", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for h in &west_vms {
        assert!(
            !s.rt.block_on(s.driver.running(h)),
            "{} still runs at west",
            h.vm
        );
    }
    assert!(
        running(&s, "p-1").is_empty(),
        "p-1's record still has VMs running"
    );
    let log = step_logs(&s, "p-3");
    assert!(
        log.iter()
            .any(|l| l.contains("is open (failback, reverse)")),
        "{log:?}"
    );
    let rec = s.record("p-3");
    assert_eq!(rec["operation"], "failback");
    for vm in ["db-1", "app-1"] {
        let home = s.source_addr(vm);
        let state = get(&home, "/state").expect("the VM answers at its home address");
        // Zero loss: the last record the copy at west wrote is the one east recovered.
        assert_eq!(
            state["recovered"]["last"]["seq"].as_u64(),
            Some(last_seq(&west_disks[vm])),
            "{vm}"
        );
    }
    let out = s.lifeboat(&["commit", "p"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("taken over at site east"),
        "{}",
        out.stdout
    );
    // Home again but unprotected: west's points are older than what runs, so no drill yet.
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("unprotected since run p-3 was committed"),
        "{}",
        out.stderr
    );

    // Reprotect again: the original direction, again differential (west hashes the copies it
    // stopped).
    std::thread::sleep(Duration::from_secs(1));
    let report = json(&s.lifeboat(&["--output", "json", "reprotect", "p"]));
    let east_disks = run_disks(&s, "p-3");
    for g in report["groups"].as_array().unwrap() {
        assert_eq!(g["site"], "east");
        assert_eq!(g["replicate_to"], "west");
        assert_eq!(g["full_seed"], false, "{g}");
        // Each VM is a group of its own here.
        let vm = g["group"].as_str().unwrap();
        let shipped = g["shipped_bytes"].as_u64().unwrap();
        let disk = g["disk_bytes"].as_u64().unwrap();
        assert!(shipped < disk / 2, "{vm}: shipped {shipped} B of {disk} B");
    }
    // Points flow east → west again, and restore byte-exact: the VMs stopped, one more cycle,
    // the restored image is the disk.
    for h in running(&s, "p-3") {
        s.rt.block_on(s.driver.stop(&h, Duration::from_secs(5)))
            .unwrap();
    }
    let out = s.lifeboat(&["--output", "json", "replicate"]);
    let cycles = json(&out);
    for c in cycles.as_array().unwrap() {
        let vm = c["group"].as_str().unwrap();
        let to = s.path().join(format!("final-{vm}"));
        let out = s.lifeboat(&[
            "restore",
            vm,
            "--point",
            &c["seq"].to_string(),
            "--out",
            to.to_str().unwrap(),
        ]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(
            std::fs::read(to.join("data.img")).unwrap(),
            std::fs::read(&east_disks[vm]).unwrap(),
            "{vm}: the point is not the disk"
        );
    }
    let out = s.lifeboat(&["points", "list", "db-1"]);
    assert!(
        out.stdout.contains(
            "points at site west; it runs at east (booted by run p-3), replicating to west"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn reprotect_seeds_fully_when_the_old_disks_are_gone() {
    let mut s = Sites::new(171, "[]", "[]");
    s.start_source();
    s.replicate();
    let out = s.lifeboat(&["failover", "p", "--planned"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(s.lifeboat(&["commit", "p"]).code, 0);
    // East lost its disks and its store (and its VMs never came back).
    for vm in ["db-1", "app-1"] {
        std::fs::remove_file(s.path().join(format!("vms/{vm}.img"))).unwrap();
    }
    std::fs::remove_dir_all(s.path().join("east")).unwrap();
    // Reading where groups run does not create the gone site's store again.
    let out = s.lifeboat(&["points", "list", "db-1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !s.path().join("east").exists(),
        "a read recreated east's store"
    );
    let out = s.lifeboat(&["reprotect", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("held none of its disks, a full seed"),
        "{}",
        out.stdout
    );
    let report = s.events("p-2");
    let shipped: Vec<(u64, u64)> = report
        .iter()
        .filter_map(|e| match e {
            Event::Reprotected { report, .. } => Some((report.shipped_bytes, report.new_bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(shipped.len(), 2);
    for (shipped, new) in shipped {
        // Everything the disks hold crossed (compressed), none of it was known.
        assert!(new > 0 && shipped > 0, "{shipped} {new}");
    }
    // Nothing to reprotect twice.
    let out = s.lifeboat(&["reprotect", "p"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("protected already"), "{}", out.stderr);
}

#[test]
fn reprotect_refuses_before_a_commit_and_a_live_old_copy() {
    let mut s = Sites::new(172, "[]", "[]");
    s.start_source();
    s.replicate();
    // Never failed over: nothing to reprotect.
    let out = s.lifeboat(&["reprotect", "p"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("has not failed over"), "{}", out.stderr);
    // Forced past the live source, the failover still refuses to boot a copy at the address
    // the source serves: the copy could not listen there, and its probe would be the source's.
    let out = s.lifeboat(&["failover", "p", "--unplanned", "--force"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    let db = s.source_addr("db-1");
    let ip = db.split(':').next().unwrap();
    assert!(
        out.stderr.contains(&format!(
            "address {ip} is in use: something answers on :5432 (process {}",
            s.source[0].pid
        )),
        "{}",
        out.stderr
    );
    assert!(s.lifeboat(&["runs", "list"]).stdout.contains("no runs yet"));
    // With another address for db-1 at the target, it goes ahead.
    let plan = s.path().join("plans/p.toml");
    let text = std::fs::read_to_string(&plan).unwrap();
    std::fs::write(
        &plan,
        format!(
            "{text}\n[[network.override]]\nvm = \"db-1\"\nip = \"127.{}.2.20\"\n",
            s.k()
        ),
    )
    .unwrap();
    let out = s.lifeboat(&["failover", "p", "--unplanned", "--force"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // Not committed yet.
    let out = s.lifeboat(&["reprotect", "p"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("commit p"), "{}", out.stderr);
    assert_eq!(s.lifeboat(&["commit", "p"]).code, 0);
    // The old copies at east still run from the disks reprotect would seed from.
    let out = s.lifeboat(&["reprotect", "p"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("shut it down first"), "{}", out.stderr);
    for h in std::mem::take(&mut s.source) {
        s.rt.block_on(s.driver.stop(&h, Duration::from_secs(5)))
            .unwrap();
    }
    let out = s.lifeboat(&["reprotect", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

/// A committed failover, then a reprotect killed (-9) once the journal holds `n` of its events,
/// then `retry`: it finishes, and both groups replicate back.
fn reprotect_killed_after(k: u8, n: usize) {
    let mut s = Sites::new(k, "[]", "[]");
    s.start_source();
    s.replicate();
    assert_eq!(s.lifeboat(&["failover", "p", "--planned"]).code, 0);
    assert_eq!(s.lifeboat(&["commit", "p"]).code, 0);
    let booted = running(&s, "p-1");
    let journal = s.path().join(".lifeboat/state/runs.db");
    let mut child = std::process::Command::new(crate::failover::HELPER)
        .args(["cli", "--config", &s.config(), "reprotect", "p"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let killed = loop {
        if let Ok(Some(_)) = child.try_wait() {
            break false;
        }
        let count = Journal::open(&journal)
            .ok()
            .and_then(|j| j.events("p-2").ok())
            .map_or(0, |e| e.len());
        if count >= n {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "reprotect hangs"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let ended = s
        .events("p-2")
        .iter()
        .any(|e| matches!(e, Event::RunFinished { .. }));
    if killed && !ended {
        // Another run cannot start meanwhile; retry finishes this one.
        let out = s.lifeboat(&["reprotect", "p"]);
        assert_eq!(out.code, 4, "after event {n}: {}", out.stderr);
        assert!(out.stderr.contains("lifeboat retry p-2"), "{}", out.stderr);
        let out = s.lifeboat(&["retry", "p-2"]);
        assert_eq!(
            out.code, 0,
            "after event {n}: {}\n{}",
            out.stdout, out.stderr
        );
    }
    let events = s.events("p-2");
    for group in ["db-1", "app-1"] {
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::Placed { group: g, .. } if g == group))
                .count(),
            1,
            "after event {n}: {group} placed once"
        );
    }
    // The copies at west were neither stopped nor started again.
    let now = running(&s, "p-1");
    assert_eq!(now.len(), booted.len());
    for h in &booted {
        assert!(
            s.rt.block_on(s.driver.running(h)),
            "after event {n}: {} stopped",
            h.vm
        );
    }
    let out = s.lifeboat(&["--output", "json", "replicate"]);
    let cycles = json(&out);
    assert_eq!(cycles.as_array().unwrap().len(), 2, "after event {n}");
}

#[test]
fn a_reprotect_killed_at_each_journal_point_finishes_with_retry() {
    // 2 prepared, 3 driving (seeding, first cycle), 4 first group turned, 5 placed, 6 second
    // group turned, 7 placed.
    for (i, n) in (2..=7).enumerate() {
        reprotect_killed_after(173 + i as u8, n);
    }
}

fn group<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap()
}

#[test]
fn the_daemon_protects_whichever_direction_is_active() {
    use crate::daemon::{Daemon, fast_sites, last_id};
    use crate::failover::wait_for;
    let mut s = fast_sites(180);
    s.start_source();
    let d = Daemon::start(&s, None, 9190);
    wait_for(
        || last_id(&d.status(&s).1, "db-1") >= 1 && last_id(&d.status(&s).1, "app-1") >= 1,
        "the first points",
    );
    // Through the daemon: a planned failover and its commit.
    let out = s.lifeboat(&["failover", "p", "--planned"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = s.lifeboat(&["commit", "p"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_for(
        || group(&d.status(&s).1, "db-1")["state"] == "unprotected",
        "the committed group unprotected",
    );
    let (_, st) = d.status(&s);
    let g = group(&st, "db-1");
    assert_eq!(
        (g["site"].as_str(), g["protected"].as_bool()),
        (Some("west"), Some(false)),
        "{g:#}"
    );
    // The commit never let an old-direction cycle start (it would be fenced, and fail).
    assert_eq!(
        (g["failures"].as_u64(), g["last_error"].as_str()),
        (Some(0), None),
        "{g:#}"
    );
    // Reprotect from the CLI: the daemon sees the new placement and replicates west → east.
    let out = s.lifeboat(&["reprotect", "p"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_for(
        || {
            let (_, st) = d.status(&s);
            let g = group(&st, "db-1");
            g["site"] == "west" && g["target_site"] == "east" && last_id(&st, "db-1") >= 3
        },
        "the daemon protecting west → east",
    );
    // Failback through the daemon: it holds the groups, stops the copies, takes the last
    // reverse point and boots at home.
    let out = s.lifeboat(&["failback", "p"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for vm in ["db-1", "app-1"] {
        assert!(get(&s.source_addr(vm), "/health").is_some(), "{vm} at home");
    }
    let out = s.lifeboat(&["commit", "p"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = s.lifeboat(&["reprotect", "p"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_for(
        || {
            let (_, st) = d.status(&s);
            let g = group(&st, "app-1");
            g["site"] == "east" && g["target_site"] == "west" && g["state"] != "unprotected"
        },
        "the daemon turned east → west again",
    );
    let before = last_id(&d.status(&s).1, "app-1");
    wait_for(
        || last_id(&d.status(&s).1, "app-1") > before,
        "points flowing east → west again",
    );
    // `disable` stops the VM's schedule in the daemon too.
    let out = s.lifeboat(&["disable", "db-1"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_for(
        || group(&d.status(&s).1, "db-1")["state"] == "unprotected",
        "the daemon leaving db-1 out",
    );
    let (status, log) = d.term(Duration::from_secs(15));
    assert!(status.success(), "{log}");
}

/// Kill -9 of `lifeboat failback` at each journal point of its run, then `retry`: it finishes,
/// each VM booted once, every record the copies at west wrote is home, and nothing runs at
/// west. Each round is cleaned up for the next (which starts the copies at west again: the
/// next failback stops them and takes its own last point).
#[test]
fn a_failback_killed_at_each_journal_point_finishes_with_retry_and_loses_nothing() {
    let mut s = Sites::new(181, "[]", "[]");
    s.start_source();
    s.replicate();
    assert_eq!(s.lifeboat(&["failover", "p", "--planned"]).code, 0);
    assert_eq!(s.lifeboat(&["commit", "p"]).code, 0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.lifeboat(&["reprotect", "p"]).code, 0);
    let west = run_disks(&s, "p-1");
    // A whole failback first, to count its journal points.
    let out = s.lifeboat(&["failback", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let points = s.events("p-3").len();
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
    let journal = s.path().join(".lifeboat/state/runs.db");
    let mut killed = 0;
    let mut restarted: Vec<Handle> = Vec::new();
    for n in 2..points {
        let run = format!("p-{}", n + 2);
        let mut child = std::process::Command::new(crate::failover::HELPER)
            .args(["cli", "--config", &s.config(), "failback", "p"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let was_killed = loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "the failback failed on its own");
                break false;
            }
            let seen = Journal::open(&journal)
                .ok()
                .and_then(|j| j.events(&run).ok())
                .map_or(0, |e| e.len());
            if seen >= n {
                child.kill().unwrap();
                child.wait().unwrap();
                break true;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "failback stalled"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        if was_killed {
            killed += 1;
            let out = s.lifeboat(&["retry", &run]);
            assert_eq!(
                out.code, 0,
                "killed at event {n}: {}\n{}",
                out.stdout, out.stderr
            );
        }
        let events = s.events(&run);
        // The copies at west are stopped: their disks hold their last records.
        let last: HashMap<String, u64> = west
            .iter()
            .map(|(vm, d)| (vm.clone(), last_seq(d)))
            .collect();
        for vm in ["db-1", "app-1"] {
            let starts = events
                .iter()
                .filter(|e| matches!(e, Event::VmStarted { vm: v, .. } if v == vm))
                .count();
            assert_eq!(
                starts, 1,
                "killed at event {n}: {vm} started {starts} times"
            );
            let state = get(&s.source_addr(vm), "/state").expect("home answers");
            assert_eq!(
                state["recovered"]["last"]["seq"].as_u64(),
                last.get(vm).copied(),
                "killed at event {n}: {vm} lost records"
            );
        }
        assert!(
            running(&s, "p-1").is_empty(),
            "killed at event {n}: west still runs"
        );
        assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0, "killed at event {n}");
        // The copies at west the cleanup started again, for the test to stop at its end.
        restarted = s
            .events(&run)
            .into_iter()
            .filter_map(|e| match e {
                Event::SourceRestarted { vm, pid, started } => Some(Handle {
                    vm,
                    pid,
                    started,
                    key: String::new(),
                    domain: None,
                }),
                _ => None,
            })
            .collect();
    }
    for h in &restarted {
        let _ = s.rt.block_on(s.driver.stop(h, Duration::from_secs(5)));
    }
    assert!(
        killed >= 10,
        "only {killed} kills landed in a run of {points} events"
    );
}

#[test]
fn a_disabled_vm_is_not_replicated_and_its_points_stay_or_are_purged() {
    let mut s = Sites::new(182, "[]", "[]");
    s.start_source();
    s.replicate();
    let out = s.lifeboat(&["disable", "app-1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("its points stay"), "{}", out.stdout);
    let out = s.lifeboat(&["disable", "app-1"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("disabled already"), "{}", out.stderr);
    // `replicate` leaves it out and says so; its points are still listed.
    let out = s.lifeboat(&["--output", "json", "replicate"]);
    let cycles = json(&out);
    let groups: Vec<&str> = cycles
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["group"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["db-1"]);
    assert!(
        out.stderr.contains("`app-1` is not replicated"),
        "{}",
        out.stderr
    );
    let list = json(&s.lifeboat(&["--output", "json", "points", "list", "app-1"]));
    assert_eq!(list["points"].as_array().unwrap().len(), 1);
    assert_eq!(list["placement"]["disabled"][0], "app-1");
    // --purge asks first; without a terminal and without --yes, nothing is deleted.
    let out = s.lifeboat(&["disable", "app-1", "--purge"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    let out = s.lifeboat(&["enable", "app-1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = s.lifeboat(&["replicate", "app-1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(s.lifeboat(&["disable", "app-1"]).code, 0);
    // Purging a VM disabled earlier.
    let out = s.lifeboat(&["disable", "app-1", "--purge", "--yes"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("2 point(s) of group app-1 deleted"),
        "{}",
        out.stdout
    );
    let list = json(&s.lifeboat(&["--output", "json", "points", "list", "app-1"]));
    assert!(list["points"].as_array().unwrap().is_empty(), "{list}");
    // db-1's points are untouched.
    let list = json(&s.lifeboat(&["--output", "json", "points", "list", "db-1"]));
    assert_eq!(list["points"].as_array().unwrap().len(), 2);
}

#[test]
fn a_drill_of_the_failback_boots_at_home_in_its_test_network_and_leaves_the_copies_running() {
    let mut s = Sites::new(183, "[]", "[]");
    let k = s.k();
    crate::daemon::edit(&s, "lifeboat.toml", |inv| {
        inv.replacen(
            "[sites.west]",
            &format!(
                "networks.home-drill.subnets = {{ app = \"127.{k}.81.0/24\", db = \"127.{k}.82.0/24\" }}\n[sites.west]"
            ),
            1,
        )
    });
    crate::daemon::edit(&s, "plans/p.toml", |plan| {
        plan.replacen(
            "test = \"west/drill\"",
            "test = \"west/drill\"\nfailback_test = \"east/home-drill\"",
            1,
        )
    });
    s.start_source();
    s.replicate();
    assert_eq!(s.lifeboat(&["failover", "p", "--planned"]).code, 0);
    assert_eq!(s.lifeboat(&["commit", "p"]).code, 0);
    // Not before the way back is protected.
    let out = s.lifeboat(&["failback", "p", "--test"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("reprotect p` first"), "{}", out.stderr);
    assert_eq!(s.lifeboat(&["reprotect", "p"]).code, 0);
    let west = running(&s, "p-1");
    let out = s.lifeboat(&["failback", "p", "--test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let rec = s.record("p-3");
    assert_eq!(rec["operation"], "test");
    for vm in ["db-1", "app-1"] {
        let v = rec["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vm)
            .unwrap();
        let addr = &v["addresses"][0];
        assert_eq!(addr["network"], "east/home-drill", "{vm}: {addr}");
        let ip = addr["ip"].as_str().unwrap();
        let port = if vm == "db-1" { 5432 } else { 8080 };
        assert!(
            s.get_at("p-3", &format!("{ip}:{port}"), "/health")
                .is_some(),
            "{vm}'s drill copy answers at {ip}"
        );
    }
    // The copies at west ran on, and replication west → east goes on.
    for h in &west {
        assert!(s.rt.block_on(s.driver.running(h)), "{} stopped", h.vm);
    }
    assert_eq!(s.lifeboat(&["replicate"]).code, 0);
    let out = s.lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(running(&s, "p-3").is_empty());
    // The real failback still goes ahead afterwards.
    let out = s.lifeboat(&["failback", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}
