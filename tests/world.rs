//! Check the world, not Lifeboat's own notes: addresses something else answers at, VMs that are
//! not the ones answering, disks written by processes a cut cannot hold still, and drills that
//! cannot touch production. Real runs of the real commands, as in `failover`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lifeboat_orchestrator::journal::Event;

use crate::daemon::edit;
use crate::failover::{HELPER, Sites, get, replace_app_vm, wait_for};

/// A process that is none of Lifeboat's: the demo workload on its own disk, at `addr`.
struct Stranger(Child);

impl Stranger {
    fn at(dir: &Path, name: &str, addr: &str) -> Self {
        let disk = dir.join(format!("{name}.img"));
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let child = Command::new(HELPER)
            .args([
                "demo-vm",
                "--disk",
                disk.to_str().unwrap(),
                "--listen",
                addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(|| get(addr, "/health").is_some(), "the stranger answers");
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The address record of `vm`'s first NIC in run `run`.
fn address(s: &Sites, run: &str, vm: &str) -> serde_json::Value {
    s.record(run)["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vm)
        .unwrap()["addresses"][0]
        .clone()
}

/// Adds `lines` to the plan after its line `after`.
fn with_plan_lines(s: &Sites, after: &str, lines: &str) {
    edit(s, "plans/p.toml", |text| {
        assert!(text.contains(after), "{text}");
        text.replacen(after, &format!("{after}\n{lines}"), 1)
    });
}

/// Adds `line` to every VM of the inventory.
fn every_vm_gets(s: &Sites, line: &str) {
    edit(s, "lifeboat.toml", |inv| {
        inv.replace(
            "policy = \"default\"\n",
            &format!("policy = \"default\"\n{line}\n"),
        )
    });
}

#[test]
fn a_drill_runs_apart_from_production_reaches_its_own_copies_and_leaves_no_namespace() {
    let mut s = Sites::new(230, "[]", "[]");
    let k = s.k();
    let production_db = s.source_addr("db-1");
    let drill_db = format!("127.{k}.92.254:5432");
    // app-1's copy first tries production's database and the drill's own copy of it, and says
    // in its log what it reached; then it runs as usual.
    std::fs::write(
        s.path().join("probe.sh"),
        r#"for t in "$1" "$2"; do
  if timeout 2 bash -c 'exec 3<>"/dev/tcp/${0%:*}/${0##*:}"' "$t" 2>/dev/null; then echo "reached $t"; else echo "unreachable $t"; fi
done
shift 2
exec "$@"
"#,
    )
    .unwrap();
    replace_app_vm(
        &s,
        &format!(
            r#"boot = {{ command = ["bash", "probe.sh", "{production_db}", "{drill_db}", "{HELPER}", "demo-vm", "--disk", "{{disk.data}}", "--listen", "{{nic0.ip}}:8080"] }}"#
        ),
        r#"health = { http = "http://{nic0.ip}:8080/health", timeout = "30s" }"#,
    );
    s.start_source();
    s.replicate();
    // Something of the host's serves the drill's address there: no matter, the drill's own
    // address is in its namespace.
    let host_side = Stranger::at(s.path(), "host-side", &drill_db);
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // The copy could not reach production, and reached its own group's database.
    let log = s
        .events("p-1")
        .into_iter()
        .find_map(|e| match e {
            Event::VmStarted { vm, log, .. } if vm == "app-1" => Some(log),
            _ => None,
        })
        .unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains(&format!("unreachable {production_db}")),
        "{said}"
    );
    assert!(said.contains(&format!("reached {drill_db}")), "{said}");

    // The drill's check step reached the copy (through the namespace); the host cannot.
    assert_eq!(
        address(&s, "p-1", "db-1"),
        serde_json::json!({ "nic": 0, "network": "west/drill", "subnet": "db", "ip": format!("127.{k}.92.254"), "why": "next-free" })
    );
    let steps = s.record("p-1")["steps"].clone();
    assert!(
        steps
            .as_array()
            .unwrap()
            .iter()
            .any(|st| st["id"] == "database/post/0" && st["status"] == "finished"),
        "{steps}"
    );
    // In the namespace, db-1's copy answers, with the records of its point; in the host's
    // network, the stranger, with none.
    let copy = s
        .get_at("p-1", &drill_db, "/state")
        .expect("the copy answers");
    assert!(
        copy["recovered"]["last"]["seq"].as_u64().unwrap_or(0) > 0,
        "{copy}"
    );
    let host = get(&drill_db, "/state").expect("the stranger answers");
    assert!(host["recovered"]["last"].is_null(), "{host}");
    let netns = s.netns("p-1").expect("the run's namespace");
    assert!(Path::new("/run/netns").join(&netns).exists());

    // A person reaches the copies with `lifeboat drill exec`; production stays out of reach.
    let reach = |addr: &str| {
        let (ip, port) = addr.split_once(':').unwrap();
        s.lifeboat(&[
            "drill",
            "exec",
            "p-1",
            "--",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{ip}/{port}"),
        ])
        .code
    };
    assert_eq!(reach(&drill_db), 0);
    assert_ne!(reach(&production_db), 0);

    let out = s.lifeboat(&["--output", "json", "cleanup", "p"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["network_namespace"], netns.as_str());
    assert!(!Path::new("/run/netns").join(&netns).exists());
    let out = s.lifeboat(&["drill", "exec", "p-1", "--", "true"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("has no network namespace"),
        "{}",
        out.stderr
    );
    // The source never noticed, nor did the host's process at the drill's address.
    assert!(get(&production_db, "/health").is_some());
    assert!(get(&drill_db, "/health").is_some());
    drop(host_side);
}

#[test]
fn addresses_something_else_answers_at_are_passed_over_or_refused_before_anything_stops() {
    let mut s = Sites::new(231, "[]", "[]");
    let k = s.k();
    // Drills in the host's network here, where the test network's addresses can be taken.
    with_plan_lines(&s, r#"test = "west/drill""#, r#"test_isolation = "none""#);
    s.start_source();
    s.replicate();

    // A drill whose address (the top of the test subnet) something else serves: the next one.
    let top = format!("127.{k}.92.254:5432");
    let stranger = Stranger::at(s.path(), "stranger", &top);
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let db = address(&s, "p-1", "db-1");
    assert_eq!(db["ip"], format!("127.{k}.92.253"), "{db}");
    assert_eq!(db["why"], "next-free");
    let copy = get(&format!("127.{k}.92.253:5432"), "/state").expect("the copy answers");
    assert!(copy["recovered"]["last"]["seq"].as_u64().unwrap() > 0);
    assert!(get(&top, "/health").is_some(), "the stranger was disturbed");
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
    drop(stranger);

    // A planned failover whose overridden address a copy left over from earlier serves: refused
    // before the source is stopped, naming the process; plan simulate says the same.
    with_plan_lines(
        &s,
        r#"test_isolation = "none""#,
        &format!("override = [{{ vm = \"app-1\", ip = \"127.{k}.11.12\" }}]"),
    );
    let leftover = Stranger::at(s.path(), "leftover", &format!("127.{k}.11.12:8080"));
    let expected = format!(
        "address 127.{k}.11.12 is in use: something answers on :8080 (process {}",
        leftover.pid()
    );
    let out = s.lifeboat(&["plan", "simulate", "p", "--planned"]);
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("address-in-use") && said.contains(&expected),
        "{said}"
    );
    let out = s.lifeboat(&["failover", "p", "--planned"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&expected), "{}", out.stderr);
    for h in &s.source {
        assert!(
            s.rt.block_on(lifeboat_compute::Compute::running(s.driver.as_ref(), h)),
            "{} was stopped",
            h.vm
        );
    }
    assert!(!s.lifeboat(&["runs", "list"]).stdout.contains("p-2"));

    // Gone, the same failover goes ahead: db-1 keeps the address its own source served.
    drop(leftover);
    let out = s.lifeboat(&["failover", "p", "--planned"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(address(&s, "p-2", "app-1")["why"], "override");
    assert_eq!(address(&s, "p-2", "db-1")["why"], "kept");
    for vm in ["db-1", "app-1"] {
        let at = s.target_addr("p-2", vm);
        assert!(get(&at, "/health").is_some(), "{vm} at {at}");
    }
}

#[test]
fn a_vm_is_healthy_only_while_it_is_the_one_answering() {
    let mut s = Sites::new(232, "[]", "[]");
    let k = s.k();
    s.start_source();
    s.replicate();
    s.stop_source();

    // A VM that exits during its boot fails its step at once, in its own words.
    replace_app_vm(
        &s,
        r#"boot = { command = ["sh", "-c", "echo cannot listen on {nic0.ip}:8080: Address already in use >&2; sleep 0.3; exit 1"] }"#,
        r#"health = { http = "http://{nic0.ip}:8080/health", timeout = "2m" }"#,
    );
    let out = s.lifeboat(&["failover", "p", "--unplanned"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("VM `app-1` exited") && out.stderr.contains("Address already in use"),
        "{}",
        out.stderr
    );
    let rec = s.record("p-1");
    let at = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        rec["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .find(|pair| pred(&pair[1]))
            .unwrap_or_else(|| panic!("{rec}"))[0]
            .as_f64()
            .unwrap()
    };
    let started = at(&|e| e["kind"] == "vm-started" && e["vm"] == "app-1");
    let failed = at(&|e| e["kind"] == "step-failed" && e["step"] == "app/boot");
    assert!(
        failed - started < 2.0,
        "failed {:.2}s after its start",
        failed - started
    );
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);

    // A probe that something else answers is no health of the VM's: the step fails naming it.
    let stranger = Stranger::at(s.path(), "stranger", &format!("127.{k}.99.1:7000"));
    edit(&s, "lifeboat.toml", |inv| {
        inv.replace(
        r#"boot = { command = ["sh", "-c", "echo cannot listen on {nic0.ip}:8080: Address already in use >&2; sleep 0.3; exit 1"] }"#,
        r#"boot = { command = ["sleep", "60"] }"#,
    ).replace(
        r#"health = { http = "http://{nic0.ip}:8080/health", timeout = "2m" }"#,
        &format!(r#"health = {{ tcp = "127.{k}.99.1:7000", timeout = "2m" }}"#),
    )
    });
    // (The stranger answers app-1's probe at the source too: forced past that check.)
    let out = s.lifeboat(&["failover", "p", "--unplanned", "--force"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("is not the one answering its health probe")
            && out.stderr.contains(&format!("process {}", stranger.pid())),
        "{}",
        out.stderr
    );
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

#[test]
fn a_disk_written_by_a_process_a_cut_cannot_hold_fails_the_cycle_unless_the_vm_opts_in() {
    let mut s = Sites::new(233, "[]", "[]");
    // The source VMs started otherwise than their boot command (absolute disk paths).
    s.start_source_as(false);
    let db_pid = s.source[0].pid;
    let out = s.lifeboat(&["replicate", "db-1"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "is open for writing by process {db_pid} (`{HELPER} demo-vm --disk"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unsafe_live_read = true"),
        "{}",
        out.stderr
    );
    let out = s.lifeboat(&["--output", "json", "points", "list", "db-1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("\"points\": []"), "{}", out.stdout);

    // With the opt-in, the point is taken, and marked.
    every_vm_gets(&s, "unsafe_live_read = true");
    let out = s.lifeboat(&["replicate", "db-1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("note: unsafe-live-read:"),
        "{}",
        out.stderr
    );
    let out = s.lifeboat(&["--output", "json", "points", "list", "db-1"]);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let notes = &list["points"][0]["notes"];
    assert!(
        notes[0].as_str().unwrap().starts_with("unsafe-live-read: ")
            && notes[0]
                .as_str()
                .unwrap()
                .contains(&format!("process {db_pid}")),
        "{list}"
    );
    let out = s.lifeboat(&["points", "list", "db-1"]);
    assert!(
        out.stdout.contains("note: unsafe-live-read"),
        "{}",
        out.stdout
    );

    // A VM running as its boot command says is held for its cut: no note.
    s.stop_source();
    s.start_source();
    let out = s.lifeboat(&["replicate", "db-1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("unsafe-live-read"), "{}", out.stderr);
    let out = s.lifeboat(&["--output", "json", "points", "list", "db-1"]);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(list["points"][0].get("notes").is_none(), "{list}");
    assert_eq!(list["points"][1]["notes"].as_array().map(Vec::len), Some(1));
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The point each consistency group booted from in run `run`: group → (seq, kind).
fn points_chosen(s: &Sites, run: &str) -> std::collections::HashMap<String, (u64, String)> {
    s.events(run)
        .into_iter()
        .filter_map(|e| match e {
            Event::PointChosen {
                group,
                seq,
                point_kind,
                ..
            } => Some((group, (seq, point_kind))),
            _ => None,
        })
        .collect()
}

/// The last record db-1's copy in run `run` recovered from its disk.
fn recovered(s: &Sites, run: &str) -> u64 {
    let at = s.target_addr(run, "db-1");
    let state = get(&at, "/state").expect("db-1's copy answers");
    state["recovered"]["last"]["seq"].as_u64().unwrap()
}

#[test]
fn failovers_boot_the_point_asked_for_and_latest_processed_skips_one_that_is_not_complete() {
    let mut s = Sites::new(234, "[]", "[]");
    // Quiesce hooks on both VMs, so a point can be app-consistent.
    every_vm_gets(&s, r#"quiesce = { freeze = ["true"], thaw = ["true"] }"#);
    s.start_source();
    // Points 1 (crash), 2 (app), 3 (crash) of each group, the VMs writing all along.
    let packs = s.path().join("west");
    for (i, kind) in ["--crash", "--app", "--crash"].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(300));
        let before = files_under(&packs);
        let out = s.lifeboat(&["replicate", kind]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        if i == 2 {
            // Point 3's own packs go missing at the target (a bucket replicated in part, a
            // pack deleted by hand): its manifest still lists it.
            let new: Vec<_> = files_under(&packs)
                .into_iter()
                .filter(|p| !before.contains(p) && p.to_string_lossy().contains("/packs/"))
                .collect();
            assert!(!new.is_empty());
            for p in new {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
    s.stop_source();

    // The app-consistent point.
    let out = s.lifeboat(&[
        "failover",
        "p",
        "--unplanned",
        "--point",
        "latest-app-consistent",
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let chosen = points_chosen(&s, "p-1");
    assert_eq!(chosen["db-1"], (2, "app".to_string()), "{chosen:?}");
    assert_eq!(chosen["app-1"], (2, "app".to_string()), "{chosen:?}");
    let at_2 = recovered(&s, "p-1");
    // Change of recovery point: the uncommitted failover undone, then one to point 1.
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
    let out = s.lifeboat(&["failover", "p", "--unplanned", "--point", "1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let chosen = points_chosen(&s, "p-2");
    assert_eq!(chosen["db-1"], (1, "crash".to_string()), "{chosen:?}");
    let at_1 = recovered(&s, "p-2");
    assert!(at_1 < at_2, "point 1 holds record {at_1}, point 2 {at_2}");
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);

    // `latest` is point 3, which cannot be restored; `latest-processed` is the newest point
    // whose data is all at the target: 2.
    let out = s.lifeboat(&["failover", "p", "--unplanned", "--point", "latest"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(points_chosen(&s, "p-3")["db-1"].0, 3);
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
    let out = s.lifeboat(&[
        "failover",
        "p",
        "--unplanned",
        "--point",
        "latest-processed",
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let chosen = points_chosen(&s, "p-4");
    assert_eq!(chosen["db-1"].0, 2, "{chosen:?}");
    assert_eq!(chosen["app-1"].0, 2, "{chosen:?}");
    assert_eq!(recovered(&s, "p-4"), at_2);
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

#[test]
fn cleanup_of_a_planned_failover_starts_the_source_vms_it_stopped_again() {
    let mut s = Sites::new(235, "[]", "[]");
    s.start_source();
    s.replicate();
    let out = s.lifeboat(&["failover", "p", "--planned"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    s.source.clear();
    // (db-1's copy kept its address; app-1's home address is free.)
    assert!(get(&s.source_addr("app-1"), "/health").is_none());
    let out = s.lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("source VMs the failover had stopped are running again: db-1, app-1"),
        "{}",
        out.stdout
    );
    // Started as their boot commands say: healthy at home, and recognised (held for a cut).
    for e in s.events("p-1") {
        if let Event::SourceRestarted { vm, pid, started } = e {
            s.source.push(lifeboat_compute::Handle {
                vm,
                pid,
                started,
                key: String::new(),
                domain: None,
            });
        }
    }
    assert_eq!(s.source.len(), 2);
    for vm in ["db-1", "app-1"] {
        let addr = s.source_addr(vm);
        wait_for(
            || get(&addr, "/health").is_some(),
            "the source answers again",
        );
    }
    let out = s.lifeboat(&["replicate"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("held db-1 still for the cut"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_daemon_names_a_writer_it_cannot_hold_in_status_and_on_cycle_failed() {
    let mut s = crate::daemon::fast_sites(236);
    s.start_source_as(false);
    let db_pid = s.source[0].pid;
    let d = crate::daemon::Daemon::start(&s, None, 9236);
    let events = crate::api::Events::start(&s, "events", Some(0));
    let wanted = format!("is open for writing by process {db_pid}");
    let failed = events.wait_for("cycle.failed naming the writer", |n| {
        n["kind"] == "cycle.failed" && n["message"].as_str().is_some_and(|m| m.contains(&wanted))
    });
    assert_eq!(failed["group"], "db-1", "{failed}");
    let mut last_error = String::new();
    wait_for(
        || {
            let (_, doc) = d.status(&s);
            last_error = doc["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|g| g["name"] == "db-1")
                .and_then(|g| g["last_error"].as_str())
                .unwrap_or_default()
                .to_string();
            last_error.contains(&wanted)
        },
        "status naming the writer",
    );
    assert!(last_error.contains("unsafe_live_read"), "{last_error}");
}
