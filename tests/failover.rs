//! Failover orchestration end to end: real `lifeboat` commands, real VM processes (the demo
//! workload), real recovery points, the real built-in steps in the sandbox. Each test has its own
//! sites in a temporary folder and its own loopback ranges, so they run in parallel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_compute::PauseVms;
use lifeboat_compute::driver::{Compute, Handle, Launch, ProcessDriver, process_paused};
use lifeboat_orchestrator::journal::{Event, Journal};

use crate::support::Outcome;

pub(crate) const HELPER: &str = env!("CARGO_BIN_EXE_lifeboat-test-helper");

/// Two sites with two VMs (db-1 in group `database`, app-1 in group `app`), addresses in
/// 127.`k`.0.0/16 so tests do not meet.
pub(crate) struct Sites {
    dir: tempfile::TempDir,
    k: u8,
    /// `west`'s store (its repository): a folder unless a test puts it on a server.
    west: String,
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) driver: Arc<ProcessDriver>,
    pub(crate) source: Vec<Handle>,
}

impl Drop for Sites {
    fn drop(&mut self) {
        for h in &self.source {
            let _ = self
                .rt
                .block_on(self.driver.stop(h, Duration::from_secs(1)));
        }
        // Every VM a run started and did not stop, and every source VM a cleanup started again.
        if let Ok(j) = Journal::open(&self.journal()) {
            for h in lifeboat_orchestrator::runs::running_vms(&j).unwrap_or_default() {
                let _ = self
                    .rt
                    .block_on(self.driver.stop(&h, Duration::from_secs(1)));
            }
            for (id, ..) in j.runs().unwrap_or_default() {
                for (_, _, e) in j.events(&id).unwrap_or_default() {
                    // A drill left open: its namespace goes with the test.
                    if let Event::Isolated { netns } = &e {
                        let _ = self
                            .rt
                            .block_on(lifeboat_compute::netns::Netns::named(netns).delete());
                    }
                    if let Event::SourceRestarted { vm, pid, started } = e {
                        let h = Handle {
                            vm,
                            pid,
                            started,
                            key: String::new(),
                            domain: None,
                        };
                        let _ = self
                            .rt
                            .block_on(self.driver.stop(&h, Duration::from_secs(1)));
                    }
                }
            }
        }
    }
}

impl Sites {
    /// `post` is the `post` list of group `app`, `pre` its `pre` list (TOML arrays).
    pub(crate) fn new(k: u8, app_pre: &str, app_post: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vm = |name: &str, subnet: &str, ip: &str, port: u16| {
            format!(
                r#"
[vms.{name}]
site = "east"
policy = "default"
disks.data = "vms/{name}.img"
nics = [{{ network = "prod", subnet = "{subnet}", ip = "{ip}" }}]
boot = {{ command = ["{HELPER}", "demo-vm", "--disk", "{{disk.data}}", "--listen", "{{nic0.ip}}:{port}"] }}
health = {{ http = "http://{{nic0.ip}}:{port}/health", timeout = "30s" }}
"#
            )
        };
        let inventory = format!(
            r#"version = 1
[sites.east]
store = "east"
compute = "process"
replicate_to = "west"
networks.prod.subnets = {{ app = "127.{k}.1.0/24", db = "127.{k}.2.0/24" }}
[sites.west]
store = "west"
compute = "process"
networks.prod-dr.subnets = {{ app = "127.{k}.11.0/24", db = "127.{k}.2.0/24" }}
networks.drill.subnets = {{ app = "127.{k}.91.0/24", db = "127.{k}.92.0/24" }}
[policies.default]
crash_interval = "10s"
retention = "1h"
rpo_threshold = "1m"
{}{}"#,
            vm("db-1", "db", &format!("127.{k}.2.10"), 5432),
            vm("app-1", "app", &format!("127.{k}.1.11"), 8080),
        );
        let plan = format!(
            r#"version = 1
name = "p"
source = "east"
target = "west"
recovery_point = "latest"
[network]
map = [{{ from = "east/prod", to = "west/prod-dr" }}]
test = "west/drill"
[[group]]
name = "database"
vms = ["db-1"]
post = [{{ uses = "builtin:tcp-check", with = {{ address = "{{vm.db-1.ip}}:5432" }}, allow = {{ tcp = ["{{vm.db-1.ip}}:5432"] }} }}]
[[group]]
name = "app"
vms = ["app-1"]
pre = {app_pre}
post = {app_post}
"#
        );
        std::fs::write(dir.path().join("lifeboat.toml"), inventory).unwrap();
        std::fs::create_dir_all(dir.path().join("plans")).unwrap();
        std::fs::write(dir.path().join("plans/p.toml"), plan).unwrap();
        std::fs::create_dir_all(dir.path().join("vms")).unwrap();
        for name in ["db-1", "app-1"] {
            let f = std::fs::File::create(dir.path().join(format!("vms/{name}.img"))).unwrap();
            f.set_len(4 << 20).unwrap();
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Self {
            dir,
            k,
            west: "west".into(),
            rt,
            driver: ProcessDriver::new(),
            source: Vec::new(),
        }
    }

    /// Keeps `west`'s repository in `store` (a server's URL) instead of its folder.
    pub(crate) fn with_west_store(mut self, store: String) -> Self {
        let inv = std::fs::read_to_string(self.path().join("lifeboat.toml")).unwrap();
        let inv = inv.replacen("store = \"west\"", &format!("store = \"{store}\""), 1);
        std::fs::write(self.path().join("lifeboat.toml"), inv).unwrap();
        self.west = store;
        self
    }

    pub(crate) fn k(&self) -> u8 {
        self.k
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn config(&self) -> String {
        self.path().join("lifeboat.toml").display().to_string()
    }

    pub(crate) fn journal(&self) -> PathBuf {
        self.path().join(".lifeboat/state/runs.db")
    }

    pub(crate) fn source_addr(&self, vm: &str) -> String {
        match vm {
            "db-1" => format!("127.{}.2.10:5432", self.k),
            _ => format!("127.{}.1.11:8080", self.k),
        }
    }

    /// `lifeboat --config … ARGS`, in this process.
    pub(crate) fn lifeboat(&self, args: &[&str]) -> Outcome {
        let config = self.config();
        let mut full = vec!["--config", config.as_str()];
        full.extend_from_slice(args);
        crate::support::lifeboat(&full)
    }

    /// Starts the source VMs, as their boot command says, and waits until they answer.
    pub(crate) fn start_source(&mut self) {
        self.start_source_as(true);
    }

    /// Starts the source VMs; `as_booted`: exactly as the inventory's boot command says (so
    /// Lifeboat recognises them), else with absolute disk paths (so it cannot).
    pub(crate) fn start_source_as(&mut self, as_booted: bool) {
        for vm in ["db-1", "app-1"] {
            let launch = Launch {
                vm: vm.into(),
                argv: vec![
                    HELPER.into(),
                    "demo-vm".into(),
                    "--disk".into(),
                    if as_booted {
                        format!("vms/{vm}.img")
                    } else {
                        self.path()
                            .join(format!("vms/{vm}.img"))
                            .display()
                            .to_string()
                    },
                    "--listen".into(),
                    self.source_addr(vm),
                ],
                dir: self.path().to_path_buf(),
                log: self.path().join(format!("{vm}.log")),
                key: String::new(),
                netns: None,
                domain: None,
            };
            let h = self.rt.block_on(self.driver.start(&launch)).unwrap();
            self.source.push(h);
        }
        for vm in ["db-1", "app-1"] {
            let addr = self.source_addr(vm);
            wait_for(|| get(&addr, "/health").is_some(), "source VM healthy");
        }
    }

    /// Stops the source VMs the test started (the disaster, or a site shut down by hand).
    pub(crate) fn stop_source(&mut self) {
        for h in std::mem::take(&mut self.source) {
            self.rt
                .block_on(self.driver.stop(&h, Duration::from_secs(5)))
                .unwrap();
        }
    }

    /// One cycle of every group, the source VMs paused for the cut.
    pub(crate) fn replicate(&self) {
        let v = lifeboat_loader::validate(&self.path().join("lifeboat.toml"), &[]);
        let inv = v.inventory.unwrap();
        let groups = lifeboat_replication::groups(&inv, self.path()).unwrap();
        let east = lifeboat_replication::Store::open_cache("east", self.path()).unwrap();
        let west = lifeboat_replication::Store::open(&self.west, self.path()).unwrap();
        for g in &groups {
            let cut = PauseVms::new(
                self.driver.clone(),
                self.source
                    .iter()
                    .filter(|h| g.vms.iter().any(|v| v.name == h.vm))
                    .cloned()
                    .collect(),
                Duration::from_secs(10),
            );
            let opts = lifeboat_replication::CycleOptions {
                cut: Some(Arc::new(cut)),
                ..Default::default()
            };
            self.rt
                .block_on(lifeboat_replication::replicate(g, &east, &west, &opts))
                .unwrap();
        }
    }

    pub(crate) fn events(&self, run: &str) -> Vec<Event> {
        Journal::open(&self.journal())
            .unwrap()
            .events(run)
            .unwrap()
            .into_iter()
            .map(|(_, _, e)| e)
            .collect()
    }

    pub(crate) fn record(&self, run: &str) -> serde_json::Value {
        let out = self.lifeboat(&["--output", "json", "runs", "show", run]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// Where run `run` put `vm`: `ip:port`.
    pub(crate) fn target_addr(&self, run: &str, vm: &str) -> String {
        let rec = self.record(run);
        let v = rec["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vm)
            .unwrap()
            .clone();
        let ip = v["addresses"][0]["ip"].as_str().unwrap().to_string();
        let port = if vm == "db-1" { 5432 } else { 8080 };
        format!("{ip}:{port}")
    }
}

impl Sites {
    /// The network namespace drill `run` runs its copies in, if it made one.
    pub(crate) fn netns(&self, run: &str) -> Option<String> {
        self.events(run).into_iter().find_map(|e| match e {
            Event::Isolated { netns } => Some(netns),
            _ => None,
        })
    }

    /// `GET path` from `addr` where run `run`'s copies are: inside its network namespace (a
    /// drill's), else from the host.
    pub(crate) fn get_at(&self, run: &str, addr: &str, path: &str) -> Option<serde_json::Value> {
        match self.netns(run) {
            Some(ns) => get_in(&ns, addr, path),
            None => get(addr, path),
        }
    }
}

/// `GET path` from `addr` inside network namespace `ns` (as [`get`] does from the host).
pub(crate) fn get_in(ns: &str, addr: &str, path: &str) -> Option<serde_json::Value> {
    let ns = lifeboat_compute::netns::Netns::named(ns);
    let (addr, path) = (addr.to_string(), path.to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(ns.within(move || async move { get_async(&addr, &path).await }))
        .ok()?
}

pub(crate) fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `lifeboat failover p --test` in a process of its own (so a test can kill it), its stderr
/// piped.
fn spawn_drill(s: &Sites) -> std::process::Child {
    Command::new(HELPER)
        .args(["cli", "--config", &s.config(), "failover", "p", "--test"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until run `run`'s journal holds an event `pred` accepts.
fn wait_for_event(journal: &Path, run: &str, what: &str, pred: impl Fn(&Event) -> bool) {
    wait_for(
        || {
            Journal::open(journal).is_ok_and(|j| {
                j.events(run)
                    .is_ok_and(|ev| ev.iter().any(|(_, _, e)| pred(e)))
            })
        },
        what,
    );
}

/// `GET path` from `addr` through the runtime's one HTTP client; the body as JSON (`null` if it
/// is not JSON), or none when nothing answers within 2 s.
pub(crate) fn get(addr: &str, path: &str) -> Option<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(get_async(addr, path))
}

async fn get_async(addr: &str, path: &str) -> Option<serde_json::Value> {
    let url = format!("http://{addr}{path}");
    let response = lifeboat_plugin_host::http::get_within(&url, Duration::from_secs(2))
        .await
        .ok()?;
    Some(response.json().unwrap_or(serde_json::Value::Null))
}

fn position(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
    events
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("no such event in {events:#?}"))
}

/// Step `id` of a run record.
fn step_record(rec: &serde_json::Value, id: &str) -> serde_json::Value {
    rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {rec}"))
        .clone()
}

/// db-1 and app-1 were each started exactly once in the run.
fn assert_each_vm_started_once(events: &[Event], what: &str) {
    assert_eq!(
        started_vms(events),
        HashMap::from([("db-1".to_string(), 1), ("app-1".to_string(), 1)]),
        "{what}: {events:#?}"
    );
}

fn started_vms(events: &[Event]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for e in events {
        if let Event::VmStarted { vm, .. } = e {
            *n.entry(vm.clone()).or_insert(0) += 1;
        }
    }
    n
}

#[test]
fn a_drill_boots_groups_in_order_honours_on_filters_and_cleans_up() {
    // The app tier's approval runs on real failovers only; its wait runs in drills only.
    let mut s = Sites::new(
        101,
        r#"[{ uses = "builtin:approval", with = { message = "go?" }, on = ["planned", "unplanned"] }]"#,
        r#"[{ uses = "builtin:wait", with = { duration = "10ms" }, on = ["test"] }]"#,
    );
    s.start_source();
    // `lifeboat replicate` recognises the running source VMs by their boot command and holds
    // them still for the cut.
    let out = s.lifeboat(&["replicate"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for vm in ["db-1", "app-1"] {
        assert!(
            out.stderr
                .contains(&format!("note: held {vm} still for the cut")),
            "{}",
            out.stderr
        );
    }
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let events = s.events("p-1");
    // Group app starts only after group database is healthy, and db-1 answered before that.
    let db_healthy = position(
        &events,
        |e| matches!(e, Event::GroupHealthy { group } if group == "database"),
    );
    let app_first = position(
        &events,
        |e| matches!(e, Event::StepStarted { step, .. } if step.starts_with("app/")),
    );
    let app_vm = position(
        &events,
        |e| matches!(e, Event::VmStarted { vm, .. } if vm == "app-1"),
    );
    assert!(db_healthy < app_first && app_first < app_vm, "{events:#?}");
    // `on` filters: no approval in a drill, the drill-only wait ran.
    let steps: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepFinished { step, .. } => Some(step.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        ["database/boot", "database/post/0", "app/boot", "app/post/0"]
    );
    // The drill VMs run in the drill network, from consistent disks, behind the source.
    let drill = s.target_addr("p-1", "db-1");
    assert!(drill.starts_with(&format!("127.{}.92.", s.k)), "{drill}");
    let state = s
        .get_at("p-1", &drill, "/state")
        .expect("the drill VM answers");
    let recovered = state["recovered"]["last"]["seq"].as_u64().unwrap();
    let source = get(&s.source_addr("db-1"), "/state").unwrap()["last_record"]
        .as_u64()
        .unwrap();
    assert!(
        recovered > 0 && recovered < source,
        "{recovered} vs {source}"
    );
    // A second drill of the same plan is refused while this one is open.
    let again = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(again.code, 4);
    assert!(again.stderr.contains("open run: p-1"), "{}", again.stderr);

    let out = s.lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        get(&drill, "/health").is_none(),
        "the drill VM still answers"
    );
    assert!(!s.path().join(".lifeboat/state/runs/p-1/disks").exists());
    let pins = s.lifeboat(&["--output", "json", "points", "list", "db-1"]);
    let pins: serde_json::Value = serde_json::from_str(&pins.stdout).unwrap();
    assert!(
        pins["points"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["pinned"].as_array().unwrap().is_empty()),
        "{pins}"
    );
    // What people read: every step with its log, the VMs, the timeline.
    let show = s.lifeboat(&["runs", "show", "p-1"]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    for line in [
        "run p-1: test of plan p — cleaned-up",
        "database/boot (boot database) — undone",
        "| info: db-1: started from point db-1/1",
        "| info: db-1: healthy",
        "group database: healthy",
        "app-1: stopped",
    ] {
        assert!(
            show.stdout.contains(line),
            "no `{line}` in:\n{}",
            show.stdout
        );
    }
    let rec = s.record("p-1");
    assert_eq!(rec["status"], "cleaned-up");
    assert!(
        rec["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|st| st["status"] == "undone"),
        "{rec}"
    );
}

#[test]
fn a_failed_post_step_stops_the_run_and_retry_finishes_it_without_rebooting() {
    // The app tier's check needs a service the test starts only after the first failure.
    let k = 102;
    let s = Sites::new(
        k,
        "[]",
        &format!(
            r#"[{{ name = "lb", uses = "builtin:tcp-check", with = {{ address = "127.{k}.200.1:7777", timeout_ms = 300 }}, allow = {{ tcp = ["127.{k}.200.1:7777"] }} }}]"#
        ),
    );
    let mut s = s;
    s.start_source();
    s.replicate();
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("stopped at step `app/post/0`")
            && out.stderr.contains("lifeboat retry p-1"),
        "{}",
        out.stderr
    );
    let rec = s.record("p-1");
    assert_eq!(rec["status"], "failed");
    let failed = step_record(&rec, "app/post/0");
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("7777"),
        "{failed}"
    );

    let _listener = std::net::TcpListener::bind(format!("127.{k}.200.1:7777")).unwrap();
    let out = s.lifeboat(&["retry", "p-1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let events = s.events("p-1");
    assert_each_vm_started_once(&events, "a VM was booted twice");
    let boots = events
        .iter()
        .filter(|e| matches!(e, Event::StepStarted { step, .. } if step.ends_with("/boot")))
        .count();
    assert_eq!(boots, 2, "a finished boot step ran again");
    assert_eq!(s.record("p-1")["status"], "succeeded");
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

/// Sites whose app tier ends with a check of a service that is not there (so a failover stops
/// at `app/post/0`), the source VMs running and replicated once.
fn replicated_with_a_failing_check(k: u8) -> Sites {
    let mut s = Sites::new(
        k,
        "[]",
        &format!(
            r#"[{{ uses = "builtin:tcp-check", with = {{ address = "127.{k}.200.1:7777", timeout_ms = 200 }}, allow = {{ tcp = ["127.{k}.200.1:7777"] }} }}]"#
        ),
    );
    s.start_source();
    s.replicate();
    s
}

#[test]
fn a_skipped_step_lets_the_run_finish() {
    let s = replicated_with_a_failing_check(103);
    assert_eq!(s.lifeboat(&["failover", "p", "--test"]).code, 4);
    let out = s.lifeboat(&["skip", "p-1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let rec = s.record("p-1");
    assert_eq!(rec["status"], "succeeded");
    let step = step_record(&rec, "app/post/0");
    assert_eq!(step["status"], "skipped");
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

#[test]
fn a_planned_failover_stops_the_source_and_loses_no_record() {
    let mut s = Sites::new(
        104,
        r#"[{ uses = "builtin:approval", with = { message = "go?", timeout = "1m" }, on = ["planned"] }]"#,
        "[]",
    );
    // Source VMs Lifeboat cannot recognise (not started as their boot command says) that still
    // answer: refused, their last writes would be lost.
    s.start_source_as(false);
    s.replicate();
    let out = s.lifeboat(&["failover", "p", "--planned"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("still running"), "{}", out.stderr);
    for h in std::mem::take(&mut s.source) {
        s.rt.block_on(s.driver.stop(&h, Duration::from_secs(5)))
            .unwrap();
    }
    // Source VMs running as booted: the planned failover stops them itself, replicates once
    // more and fails over; an operator approves from another process.
    s.start_source();
    s.replicate();
    let pids: Vec<Handle> = s.source.clone();
    let config = s.config();
    let journal = s.journal();
    let approver = std::thread::spawn(move || {
        wait_for_event(&journal, "p-1", "the approval request", |e| {
            matches!(e, Event::ApprovalRequested { .. })
        });
        Command::new(HELPER)
            .args([
                "cli", "--config", &config, "approve", "p-1", "--by", "tester",
            ])
            .stdout(Stdio::piped())
            .output()
            .unwrap()
    });
    let out = s.lifeboat(&["failover", "p", "--planned"]);
    let approved = approver.join().unwrap();
    assert!(approved.status.success(), "{approved:?}");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for vm in ["db-1", "app-1"] {
        assert!(
            out.stderr.contains(&format!("{vm}: source VM stopped")),
            "{}",
            out.stderr
        );
    }
    let mut last = HashMap::new();
    for h in &pids {
        assert!(
            !s.rt.block_on(s.driver.running(h)),
            "source {} still runs",
            h.vm
        );
        let f = std::fs::File::open(s.path().join(format!("vms/{}.img", h.vm))).unwrap();
        let check = lifeboat_demo_vm::disk::check(&f).unwrap();
        last.insert(h.vm.clone(), check.last.unwrap().seq);
    }
    assert!(
        s.events("p-1")
            .iter()
            .any(|e| matches!(e, Event::Approved { by } if by == "tester"))
    );
    // Zero data loss: every VM recovered exactly the source's last record.
    for vm in ["db-1", "app-1"] {
        let at = s.target_addr("p-1", vm);
        let state = get(&at, "/state").expect("the failed-over VM answers");
        assert_eq!(
            state["recovered"]["last"]["seq"].as_u64(),
            last.get(vm).copied(),
            "{vm} at {at}"
        );
    }
    // db-1 keeps its address (west's db subnet holds it); app-1 gets one in west's app subnet.
    assert_eq!(
        s.target_addr("p-1", "db-1"),
        format!("127.{}.2.10:5432", s.k)
    );
    assert!(
        s.target_addr("p-1", "app-1")
            .starts_with(&format!("127.{}.11.", s.k))
    );
    let out = s.lifeboat(&["commit", "p"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(s.record("p-1")["status"], "committed");
    // The group runs at west now, unprotected: `replicate` says so instead of cycling.
    let out = s.lifeboat(&["replicate", "db-1"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("not replicated"), "{}", out.stderr);
    // The old source, replicating as it did before (its old epoch), is fenced.
    let v = lifeboat_loader::validate(&s.path().join("lifeboat.toml"), &[]);
    let inv = v.inventory.unwrap();
    let group = lifeboat_replication::groups(&inv, s.path())
        .unwrap()
        .remove(1);
    assert_eq!(group.name, "db-1");
    let east = lifeboat_replication::Store::open_cache("east", s.path()).unwrap();
    let west = lifeboat_replication::Store::open("west", s.path()).unwrap();
    let err =
        s.rt.block_on(lifeboat_replication::replicate(
            &group,
            &east,
            &west,
            &Default::default(),
        ))
        .unwrap_err();
    assert_eq!(err.kind(), lifeboat_replication::ErrorKind::Fenced, "{err}");
}

/// A drill and a planned failover with the repository on a real server: the runs read points
/// from it alone, and nothing the source wrote is lost.
fn drill_and_planned_failover_on(store: String, k: u8) {
    let mut s = Sites::new(k, "[]", "[]").with_west_store(store);
    s.start_source();
    let out = s.lifeboat(&["replicate"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for vm in ["db-1", "app-1"] {
        let at = s.target_addr("p-1", vm);
        assert!(
            s.get_at("p-1", &at, "/state").is_some(),
            "the drill's {vm} answers at {at}"
        );
    }
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
    let pids = s.source.clone();
    let out = s.lifeboat(&["failover", "p", "--planned"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for h in &pids {
        let f = std::fs::File::open(s.path().join(format!("vms/{}.img", h.vm))).unwrap();
        let written = lifeboat_demo_vm::disk::check(&f).unwrap().last.unwrap().seq;
        let at = s.target_addr("p-2", &h.vm);
        let state = get(&at, "/state").expect("the failed-over VM answers");
        assert_eq!(
            state["recovered"]["last"]["seq"].as_u64(),
            Some(written),
            "{} at {at}",
            h.vm
        );
    }
}

#[test]
fn on_s3_a_drill_and_a_planned_failover_lose_no_record() {
    drill_and_planned_failover_on(crate::servers::s3(&format!("failover-{}", now_ns())), 140);
}

#[test]
fn on_azure_a_drill_and_a_planned_failover_lose_no_record() {
    drill_and_planned_failover_on(
        crate::servers::azure(&format!("failover-{}", now_ns())),
        141,
    );
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn an_orchestrator_killed_mid_run_resumes_without_booting_a_vm_twice() {
    let mut s = Sites::new(105, "[]", "[]");
    s.start_source();
    s.replicate();
    // Kill -9 the failover as soon as db-1's process is up (inside the boot step).
    let mut child = spawn_drill(&s);
    let journal = s.journal();
    wait_for_event(&journal, "p-1", "db-1 started", |e| {
        matches!(e, Event::VmStarted { .. })
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(s.record("p-1")["status"], "running");
    let out = s.lifeboat(&["retry", "p-1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let events = s.events("p-1");
    assert_each_vm_started_once(&events, "after the retry");
    let restored = events
        .iter()
        .filter(|e| matches!(e, Event::Restored { vm, .. } if vm == "db-1"))
        .count();
    assert_eq!(restored, 1, "db-1 was restored twice");
    assert!(
        s.get_at("p-1", &s.target_addr("p-1", "db-1"), "/health")
            .is_some()
    );
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

#[test]
fn the_demo_passes_every_check() {
    let out = Command::new(HELPER).args(["cli", "demo"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" checks passed, 0 failed"), "{stdout}");
    assert!(stdout.contains("achieved RPO: db-1 "), "{stdout}");
    // Something already at one of the demo's fixed addresses (an earlier demo's VM left
    // running): the demo says so and stops, rather than check the stranger's data. (After the
    // demo above, so the two never share the address.)
    let squatter = std::net::TcpListener::bind("127.41.2.10:15432").unwrap();
    let out = Command::new(HELPER).args(["cli", "demo"]).output().unwrap();
    drop(squatter);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("127.41.2.10:15432, the address of the demo's db-1, is already in use"),
        "{stderr}"
    );
}

/// Starts a drill of `s` in another process and waits until its long wait step runs.
fn drill_until_waiting(s: &Sites, run: &str) -> std::process::Child {
    let child = spawn_drill(s);
    let journal = s.journal();
    wait_for_event(
        &journal,
        run,
        "the wait step started",
        |e| matches!(e, Event::StepStarted { step, .. } if step == "app/post/0"),
    );
    child
}

#[test]
fn a_run_is_cancelled_by_ctrl_c_or_by_lifeboat_cancel_and_cleanup_undoes_it() {
    let mut s = Sites::new(
        106,
        "[]",
        r#"[{ uses = "builtin:wait", with = { duration = "10m" }, timeout = "15m" }]"#,
    );
    s.start_source();
    s.replicate();

    // From another process: `lifeboat cancel` ends the run; the running command stops at once.
    let child = drill_until_waiting(&s, "p-1");
    // Nobody else may clean up or resume a run a live process drives.
    for args in [&["cleanup", "p"][..], &["retry", "p-1"][..]] {
        let out = s.lifeboat(args);
        assert_eq!(out.code, 4, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("is in progress in process"),
            "{}",
            out.stderr
        );
    }
    let asked = Instant::now();
    let out = s.lifeboat(&["cancel", "p-1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let done = child.wait_with_output().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(done.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        stderr.contains("cancelled at step `app/post/0`"),
        "{stderr}"
    );
    assert_eq!(s.record("p-1")["status"], "cancelled");
    // A cancelled run is not resumed; cleanup undoes it.
    assert_eq!(s.lifeboat(&["retry", "p-1"]).code, 4);
    let out = s.lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // Ctrl-C in the command's own terminal does the same.
    let child = drill_until_waiting(&s, "p-2");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let done = child.wait_with_output().unwrap();
    assert_eq!(
        done.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let rec = s.record("p-2");
    assert_eq!(rec["status"], "cancelled");
    let step = step_record(&rec, "app/post/0");
    assert!(
        step["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("Ctrl-C"),
        "{step}"
    );
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

#[test]
fn an_unplanned_failover_refuses_a_live_source_and_a_vm_that_dies_fails_the_boot_in_its_own_words()
{
    let mut s = Sites::new(107, "[]", "[]");
    s.start_source();
    s.replicate();
    // The source still answers: an unplanned failover would run two copies of each VM.
    let out = s.lifeboat(&["failover", "p", "--unplanned"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("still answers") && out.stderr.contains("--planned"),
        "{}",
        out.stderr
    );
    assert!(s.lifeboat(&["runs", "list"]).stdout.contains("no runs yet"));

    // The source is gone, but app-1 cannot boot at the target.
    for h in std::mem::take(&mut s.source) {
        s.rt.block_on(s.driver.stop(&h, Duration::from_secs(5)))
            .unwrap();
    }
    let inv = std::fs::read_to_string(s.path().join("lifeboat.toml")).unwrap();
    let inv: String = inv
        .lines()
        .map(|l| {
            if l.contains("{nic0.ip}:8080\"]") {
                r#"boot = { command = ["sh", "-c", "echo the disk is not bootable >&2; exit 3"] }"#
                    .to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(s.path().join("lifeboat.toml"), inv).unwrap();
    let out = s.lifeboat(&["failover", "p", "--unplanned"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("stopped at step `app/boot`")
            && out.stderr.contains("VM `app-1` exited")
            && out.stderr.contains("the disk is not bootable"),
        "{}",
        out.stderr
    );
    assert_eq!(s.record("p-1")["status"], "failed");
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

/// Kills `lifeboat failover` with SIGKILL as soon as its run has `n` journal events.
fn kill_after_event(s: &Sites, run: &str, n: usize) -> bool {
    let mut child = spawn_drill(s);
    let journal = s.journal();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = Journal::open(&journal)
            .ok()
            .and_then(|j| j.events(run).ok())
            .map_or(0, |e| e.len());
        if seen >= n {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        if let Some(status) = child.try_wait().unwrap() {
            // The run ended before reaching event n.
            assert!(status.success(), "the failover failed on its own");
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "the run stalled before event {n}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kill -9 of the orchestrator at each journal point of a short real run, then `retry`: the
/// run completes, every step finished once, and no VM was restored or booted twice.
#[test]
fn killed_at_each_journal_point_a_real_run_resumes_and_does_nothing_twice() {
    let mut s = Sites::new(108, "[]", "[]");
    s.start_source();
    s.replicate();
    // A whole run first, to count its journal points.
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let points = s.events("p-1").len();
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
    let mut killed = 0;
    for n in 2..points {
        let run = format!("p-{}", n);
        if !kill_after_event(&s, &run, n) {
            continue;
        }
        killed += 1;
        let out = s.lifeboat(&["retry", &run]);
        assert_eq!(
            out.code, 0,
            "killed at event {n}: {}\n{}",
            out.stdout, out.stderr
        );
        let events = s.events(&run);
        assert_each_vm_started_once(
            &events,
            &format!("killed at event {n}: a VM was booted twice"),
        );
        for vm in ["db-1", "app-1"] {
            let restores = events
                .iter()
                .filter(|e| matches!(e, Event::Restored { vm: v, .. } if v == vm))
                .count();
            assert_eq!(
                restores, 1,
                "killed at event {n}: {vm} restored {restores} times"
            );
        }
        let mut finished: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::StepFinished { step, .. } => Some(step.as_str()),
                _ => None,
            })
            .collect();
        finished.sort_unstable();
        assert_eq!(
            finished,
            ["app/boot", "database/boot", "database/post/0"],
            "killed at event {n}"
        );
        let addrs = [s.target_addr(&run, "db-1"), s.target_addr(&run, "app-1")];
        assert!(s.get_at(&run, &addrs[1], "/health").is_some());
        let netns = s.netns(&run).expect("the drill's network namespace");
        let out = s.lifeboat(&["cleanup", "p"]);
        assert_eq!(out.code, 0, "killed at event {n}: {}", out.stderr);
        // Nothing is left running: no VM the killed process started behind the journal's back,
        // and no namespace.
        assert!(
            !Path::new("/run/netns").join(&netns).exists(),
            "killed at event {n}: namespace {netns} is left"
        );
        for addr in &addrs {
            assert!(
                get(addr, "/health").is_none(),
                "killed at event {n}: {addr} still answers"
            );
        }
    }
    assert!(
        killed >= points / 2,
        "only {killed} of {points} kills landed"
    );
}

#[test]
fn a_qemu_target_refuses_vms_it_cannot_start_before_any_run() {
    let s = Sites::new(110, "[]", "[]");
    let inv = std::fs::read_to_string(s.path().join("lifeboat.toml")).unwrap();
    let inv = inv.replacen(
        "store = \"west\"\ncompute = \"process\"",
        "store = \"west\"\ncompute = \"qemu\"",
        1,
    );
    // Neither `machine` (QEMU) nor `boot` (a process): nothing the target could start.
    let inv: String = inv
        .lines()
        .filter(|l| !l.starts_with("boot = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(s.path().join("lifeboat.toml"), inv).unwrap();
    // `plan validate` knows it (it passed such plans that failover then refused)...
    let out = s.lifeboat(&["plan", "validate"]);
    assert_eq!(out.code, 3, "{}", out.stdout);
    assert!(
        out.stdout.contains("error[unsupported-compute]")
            && out
                .stdout
                .contains("site `west` uses the `qemu` compute driver"),
        "{}",
        out.stdout
    );
    // ...and a failover is refused by the same check.
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("site `west` uses the `qemu` compute driver"),
        "{}",
        out.stderr
    );
    assert!(!s.journal().exists(), "a run was recorded");
}

#[test]
fn a_failover_without_points_or_with_an_unknown_one_is_refused_before_it_starts() {
    let mut s = Sites::new(111, "[]", "[]");
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("run `lifeboat replicate` first"),
        "{}",
        out.stderr
    );
    s.start_source();
    s.replicate();
    let out = s.lifeboat(&["failover", "p", "--test", "--point", "db-1/99"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot fail over") && out.stderr.contains("99"),
        "{}",
        out.stderr
    );
    let out = s.lifeboat(&[
        "failover",
        "p",
        "--test",
        "--point",
        "latest-app-consistent",
    ]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("no app-consistent point"),
        "{}",
        out.stderr
    );
    let runs = s.lifeboat(&["runs", "list"]);
    assert!(runs.stdout.contains("no runs yet"), "{}", runs.stdout);
}

/// Rewrites app-1's `boot` and `health` lines in the fixture's inventory.
pub(crate) fn replace_app_vm(s: &Sites, boot: &str, health: &str) {
    let path = s.path().join("lifeboat.toml");
    let inv = std::fs::read_to_string(&path).unwrap();
    let inv: Vec<String> = inv
        .lines()
        .map(|l| {
            if l.starts_with("boot =") && l.contains(":8080\"]") {
                boot.to_string()
            } else if l.starts_with("health =") && l.contains(":8080/") {
                health.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, inv.join("\n")).unwrap();
}

#[test]
fn an_approval_given_while_the_orchestrator_was_down_stands_when_it_resumes() {
    let mut s = Sites::new(
        112,
        r#"[{ uses = "builtin:approval", with = { message = "go?", timeout = "1m" }, on = ["test"] }]"#,
        "[]",
    );
    s.start_source();
    s.replicate();
    let mut child = spawn_drill(&s);
    let journal = s.journal();
    wait_for_event(&journal, "p-1", "the approval request", |e| {
        matches!(e, Event::ApprovalRequested { .. })
    });
    // The orchestrator dies while it waits; the operator approves all the same.
    child.kill().unwrap();
    child.wait().unwrap();
    let out = s.lifeboat(&["approve", "p-1", "--by", "ops"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = s.lifeboat(&["retry", "p-1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let events = s.events("p-1");
    let asked = events
        .iter()
        .filter(|e| matches!(e, Event::ApprovalRequested { .. }))
        .count();
    assert_eq!(asked, 1, "the resumed run asked again: {events:#?}");
    let log = step_record(&s.record("p-1"), "app/pre/0");
    assert!(log.to_string().contains("approved by ops"), "{log}");
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

#[test]
fn a_vm_is_given_up_on_at_its_own_health_timeout() {
    let mut s = Sites::new(113, "[]", "[]");
    s.start_source();
    s.replicate();
    // app-1 runs but never answers; its inventory gives it 1 s to be healthy.
    replace_app_vm(
        &s,
        r#"boot = { command = ["sleep", "600"] }"#,
        r#"health = { tcp = "{nic0.ip}:9", timeout = "1s" }"#,
    );
    let started = Instant::now();
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("stopped at step `app/boot`")
            && out.stderr.contains("not healthy after 1000 ms: app-1"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

#[test]
fn what_a_step_writes_to_the_run_kv_is_journaled_before_the_step_counts_as_finished() {
    let wasm = crate::support::python_kv_note();
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&wasm)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let mut s = Sites::new(
        114,
        "[]",
        &format!(
            r#"[{{ uses = "kv-note.wasm", sha256 = "{sha}", with = {{ key = "note.db", value = "failed over by {{run.id}}" }}, allow = {{ kv = ["note.*"] }} }}]"#
        ),
    );
    std::fs::write(s.path().join("plans/kv-note.wasm"), &wasm).unwrap();
    s.start_source();
    s.replicate();
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let events = s.events("p-1");
    let kv = events
        .iter()
        .position(|e| matches!(e, Event::Kv { entries } if entries.get("note.db").map(String::as_str) == Some("failed over by p-1")))
        .unwrap_or_else(|| panic!("no kv event: {events:#?}"));
    let finished = position(
        &events,
        |e| matches!(e, Event::StepFinished { step, .. } if step == "app/post/0"),
    );
    assert!(kv < finished, "{events:#?}");
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

#[test]
fn the_run_commands_say_what_is_wrong_with_bad_input() {
    let s = Sites::new(115, "[]", "[]");
    for (args, code, says) in [
        (&["failover", "nosuch", "--test"][..], 3, "no plan file"),
        (&["runs", "show", "nope"][..], 4, "no run `nope`"),
        (&["approve", "nope"][..], 4, "no run `nope`"),
        (&["retry", "nope"][..], 4, "no run `nope`"),
        (&["skip", "nope"][..], 4, "no run `nope`"),
        (&["cancel", "nope"][..], 4, "no run `nope`"),
        (&["cleanup", "p"][..], 4, "has no open run to clean up"),
        (&["commit", "p"][..], 4, "has no failover to commit"),
        (&["failover", "p"][..], 2, "--test"),
        (
            &["failover", "p", "--test", "--force"][..],
            2,
            "--unplanned",
        ),
        // Carried by the binary for `lifeboat demo`: a bad argument is an error, not an exit.
        (&["demo-vm", "--bogus"][..], 2, ""),
    ] {
        let out = s.lifeboat(args);
        assert_eq!(out.code, code, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
}

/// Regression: a planned failover stopped the source VMs before the checks that refuse it. With
/// a drill still open it is refused, and every source VM still runs and answers.
#[test]
fn a_planned_failover_refused_by_an_open_run_leaves_the_source_running() {
    let mut s = Sites::new(116, "[]", "[]");
    s.start_source();
    s.replicate();
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let out = s.lifeboat(&["failover", "p", "--planned"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("open run: p-1"), "{}", out.stderr);
    assert!(!out.stderr.contains("source VM stopped"), "{}", out.stderr);
    for h in &s.source {
        assert!(s.rt.block_on(s.driver.running(h)), "{} was stopped", h.vm);
        assert!(!process_paused(h.pid), "{} was left paused", h.vm);
        let addr = s.source_addr(&h.vm);
        assert!(get(&addr, "/health").is_some(), "{} does not answer", h.vm);
    }
    // Nothing was recorded for the refused failover.
    let runs = s.lifeboat(&["--output", "json", "runs", "list"]);
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

/// Regression: VMs paused for a cut stayed paused when `lifeboat replicate` was killed during
/// the scan. The guardian resumes them as soon as the command's process is gone.
#[test]
fn a_replicate_killed_mid_scan_leaves_no_vm_paused() {
    let mut s = Sites::new(117, "[]", "[]");
    s.start_source();
    // A disk large enough (and not sparse) that the scan takes a while.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(s.path().join("vms/db-1.img"))
            .unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let block: Vec<u8> = (0..(1 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        // Past the demo workload's ring (which lives at the start of the disk).
        for i in 0..384u64 {
            f.write_all_at(&block, (8 << 20) + i * (1 << 20)).unwrap();
        }
    }
    let db = s.source.iter().find(|h| h.vm == "db-1").unwrap().clone();
    for round in 0..3 {
        let mut child = Command::new(HELPER)
            .args(["cli", "--config", &s.config(), "replicate", "db-1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the cut to pause the VM, then kill the command outright.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !process_paused(db.pid) {
            assert!(
                Instant::now() < deadline,
                "round {round}: the VM was never paused"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: replicate ended first"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let killed = Instant::now();
        while process_paused(db.pid) {
            assert!(
                killed.elapsed() < Duration::from_secs(1),
                "round {round}: the VM is still paused a second after replicate died"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(get(&s.source_addr("db-1"), "/health").is_some());
    }
}

/// Regression: `commit` of a failover that stopped at a failed step said "finish it first" and
/// exited 6 (fenced), the code being chosen by searching the message.
#[test]
fn commit_of_an_unfinished_failover_is_refused_with_the_failure_code() {
    let mut s = replicated_with_a_failing_check(118);
    for h in std::mem::take(&mut s.source) {
        s.rt.block_on(s.driver.stop(&h, Duration::from_secs(5)))
            .unwrap();
    }
    let out = s.lifeboat(&["failover", "p", "--unplanned"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    let out = s.lifeboat(&["commit", "p"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("run p-1 is failed: finish it first"),
        "{}",
        out.stderr
    );
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

/// Regression: `cleanup` signalled the bare pid the journal held: a pid recycled by an
/// unrelated process got SIGTERM. Now the process must still be the VM (start time and key).
#[test]
fn cleanup_never_signals_a_process_that_reuses_a_vms_pid() {
    let s = Sites::new(119, "[]", "[]");
    s.replicate();
    // An unrelated process, and a run whose journal says a VM had its pid (as if the VM had
    // died and the pid been given to this process).
    let mut stranger = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = stranger.id();
    let started = lifeboat_compute::driver::process_start_time(pid).unwrap();
    {
        let mut j = Journal::open(&s.journal()).unwrap();
        j.begin("p-1", "p", lifeboat_orchestrator::journal::RunKind::Test)
            .unwrap();
        for e in [
            Event::Prepared {
                plan_path: s.path().join("plans/p.toml").display().to_string(),
                point: None,
                reverse: false,
                instant: false,
            },
            // The driver was a process of that pid too: not this one, so the run is not driven.
            Event::Driving {
                pid,
                started: Some(started + 1),
                daemon: false,
            },
            Event::VmStarting {
                vm: "db-1".into(),
                key: "p-1/database/boot/1/start/db-1".into(),
                domain: None,
            },
            Event::VmStarted {
                vm: "db-1".into(),
                key: "p-1/database/boot/1/start/db-1".into(),
                pid,
                started: Some(started + 1),
                argv: vec!["demo-vm".into()],
                log: "db-1.log".into(),
                domain: None,
            },
            Event::RunFinished {
                status: lifeboat_orchestrator::journal::RunStatus::Failed,
            },
        ] {
            j.append("p-1", &e).unwrap();
        }
    }
    let out = s.lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "cleanup killed an unrelated process that reused the VM's pid"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

/// Regression: the boot step made up its own keys (no attempt number) and the host took any key
/// a plugin sent. Effects are now keyed by the host: run, step, attempt, action, VM.
#[test]
fn effects_are_keyed_by_the_host_per_attempt() {
    let mut s = Sites::new(120, "[]", "[]");
    s.start_source();
    s.replicate();
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let events = s.events("p-1");
    let mut keys = Vec::new();
    for e in &events {
        match e {
            Event::Restored { vm, key, .. } => keys.push((vm.clone(), "restore", key.clone())),
            Event::VmStarted { vm, key, .. } => keys.push((vm.clone(), "start", key.clone())),
            _ => {}
        }
    }
    assert_eq!(keys.len(), 4, "{events:#?}");
    for (vm, action, key) in keys {
        let group = if vm == "db-1" { "database" } else { "app" };
        assert_eq!(key, format!("p-1/{group}/boot/1/{action}/{vm}"));
    }
    // Cleanup counts the VMs the boot step's undo stopped.
    let out = s.lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("3 step(s) undone, 2 VM(s) stopped"),
        "{}",
        out.stdout
    );
}

/// Regression: `restore --out` beside the inventory wrote an old point over the VM's live
/// source disk. An existing file needs --force; a disk the inventory names, or one a process
/// holds open, is never written over.
#[test]
fn restore_never_writes_over_a_protected_or_open_disk() {
    let mut s = Sites::new(121, "[]", "[]");
    s.start_source();
    s.replicate();
    let before = std::fs::read(s.path().join("vms/db-1.img")).unwrap().len();
    let live = s.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    std::os::unix::fs::symlink(s.path().join("vms/db-1.img"), live.join("data.img")).unwrap();
    let live_dir = live.display().to_string();
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["restore", "db-1", "--point", "1", "--out", &live_dir];
        args.extend_from_slice(extra);
        let out = s.lifeboat(&args);
        assert_eq!(out.code, 4, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("is the disk `db-1/data` of the inventory"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(
        std::fs::read(s.path().join("vms/db-1.img")).unwrap().len(),
        before
    );
    // A file some process holds open (a running VM's disk, not in the inventory): refused.
    let held = s.path().join("held");
    std::fs::create_dir_all(&held).unwrap();
    std::fs::write(held.join("data.img"), b"in use").unwrap();
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg("exec 3<>data.img; exec sleep 30")
        .current_dir(&held)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let held_dir = held.display().to_string();
    let out = s.lifeboat(&["restore", "db-1", "--out", &held_dir, "--force"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("is open in process"), "{}", out.stderr);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(std::fs::read(held.join("data.img")).unwrap(), b"in use");
    // Any other existing file: only with --force.
    let out = s.lifeboat(&["restore", "db-1", "--out", &held_dir]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("exists: pass --force"),
        "{}",
        out.stderr
    );
    let out = s.lifeboat(&["restore", "db-1", "--out", &held_dir, "--force"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::metadata(held.join("data.img")).unwrap().len(),
        4 << 20
    );
}

/// A run whose process died after recording it but before its addresses (kill -9 between two
/// journal appends): `retry` assigns them by the same rules and finishes it.
#[test]
fn a_run_killed_before_its_addresses_were_journaled_is_finished_by_retry() {
    let mut s = Sites::new(184, "[]", "[]");
    s.start_source();
    s.replicate();
    {
        let mut j = Journal::open(&s.journal()).unwrap();
        j.begin("p-1", "p", lifeboat_orchestrator::journal::RunKind::Test)
            .unwrap();
        j.append(
            "p-1",
            &Event::Prepared {
                plan_path: s.path().join("plans/p.toml").display().to_string(),
                point: None,
                reverse: false,
                instant: false,
            },
        )
        .unwrap();
    }
    let out = s.lifeboat(&["retry", "p-1"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let db = s.target_addr("p-1", "db-1");
    assert!(db.starts_with(&format!("127.{}.92.", s.k())), "{db}");
    assert!(
        s.get_at("p-1", &db, "/health").is_some(),
        "db-1's drill copy answers at {db}"
    );
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

/// `plan simulate`: before any run, the steps, addresses and points the drill that follows
/// uses; after one, an RTO predicted from what it measured, close to the next drill's; and a
/// plan whose `rto_objective` the prediction exceeds exits 9.
#[test]
fn simulate_predicts_the_drill_that_follows_it() {
    let mut s = Sites::new(142, "[]", "[]");
    s.start_source();
    s.replicate();
    let simulate = |s: &Sites| -> serde_json::Value {
        let out = s.lifeboat(&["--output", "json", "plan", "simulate", "p"]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    };
    let before = simulate(&s);
    assert!(
        before["basis"].as_str().unwrap().contains("no earlier run"),
        "{before}"
    );
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rec = s.record("p-1");
    let ids = |v: &serde_json::Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&before, "steps"), ids(&rec, "steps"));
    for vm in rec["vms"].as_array().unwrap() {
        let name = vm["name"].as_str().unwrap();
        let sim = before["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["vm"] == name)
            .unwrap();
        assert_eq!(sim["addresses"], vm["addresses"], "{name}");
        let point = format!("{}/{}", vm["group"].as_str().unwrap(), vm["point"]);
        assert!(
            sim["point"].as_str().unwrap().starts_with(&point),
            "{name}: {} vs {point}",
            sim["point"]
        );
    }
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);

    // Measured now: the prediction rests on drill p-1 and is close to the next drill's RTO.
    let after = simulate(&s);
    assert!(
        after["basis"].as_str().unwrap().contains("run p-1"),
        "{after}"
    );
    let predicted = after["rto_seconds"].as_f64().unwrap();
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let real = s.record("p-2")["duration_seconds"].as_f64().unwrap();
    assert!(
        (predicted - real).abs() <= 0.2 * real + 0.3,
        "predicted {predicted:.2} s, the drill took {real:.2} s"
    );
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
    // A profile exported from the run predicts the same, where the journal is not.
    let out = s.lifeboat(&["runs", "profile", "p-1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let profile = s.path().join("profile.json");
    std::fs::write(&profile, &out.stdout).unwrap();
    let out = s.lifeboat(&[
        "--output",
        "json",
        "plan",
        "simulate",
        "p",
        "--profile",
        profile.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let from_file: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(from_file["steps"], after["steps"]);
    // An objective the prediction exceeds: exit 9, said.
    let plan = std::fs::read_to_string(s.path().join("plans/p.toml")).unwrap();
    std::fs::write(
        s.path().join("plans/p.toml"),
        plan.replacen(
            "recovery_point = \"latest\"",
            "recovery_point = \"latest\"\nrto_objective = \"1ms\"",
            1,
        ),
    )
    .unwrap();
    let out = s.lifeboat(&["plan", "simulate", "p"]);
    assert_eq!(out.code, 9, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("EXCEEDED"), "{}", out.stdout);
}

/// `plan simulate` of a plan of three groups whose VMs take different times to boot: before any
/// run it follows the order and addresses the drill then uses, each group starting after the
/// one before it is healthy; after a drill, the predicted RTO is within a fifth of the next
/// drill's, and the critical path names each group's slowest VM.
#[test]
fn simulate_predicts_a_three_group_drill_within_a_fifth() {
    let s = Sites::new(143, "[]", "[]");
    let k = s.k();
    // Each VM boots after a delay of its own; a third group, `web`, waits for the app.
    let inv = std::fs::read_to_string(s.path().join("lifeboat.toml")).unwrap();
    let delayed = |inv: String, port: u16, delay: &str| {
        inv.replace(
            &format!(
                r#"boot = {{ command = ["{HELPER}", "demo-vm", "--disk", "{{disk.data}}", "--listen", "{{nic0.ip}}:{port}"] }}"#
            ),
            &format!(
                r#"boot = {{ command = ["sh", "-c", "sleep {delay} && exec {HELPER} demo-vm --disk {{disk.data}} --listen {{nic0.ip}}:{port}"] }}"#
            ),
        )
    };
    let mut inv = delayed(delayed(inv, 5432, "2.5"), 8080, "0.5");
    inv.push_str(&format!(
        r#"
[vms.web-1]
site = "east"
policy = "default"
disks.data = "vms/web-1.img"
nics = [{{ network = "prod", subnet = "app", ip = "127.{k}.1.12" }}]
boot = {{ command = ["sh", "-c", "sleep 1.5 && exec {HELPER} demo-vm --disk {{disk.data}} --listen {{nic0.ip}}:8081"] }}
health = {{ http = "http://{{nic0.ip}}:8081/health", timeout = "30s" }}
"#
    ));
    std::fs::write(s.path().join("lifeboat.toml"), inv).unwrap();
    std::fs::File::create(s.path().join("vms/web-1.img"))
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let plan = std::fs::read_to_string(s.path().join("plans/p.toml")).unwrap();
    std::fs::write(
        s.path().join("plans/p.toml"),
        format!(
            "{plan}[[group]]\nname = \"web\"\nvms = [\"web-1\"]\npost = [{{ uses = \"builtin:http-check\", with = {{ url = \"http://{{vm.web-1.ip}}:8081/health\" }}, allow = {{ http = [\"http://{{vm.web-1.ip}}:8081/health\"] }} }}]\n"
        ),
    )
    .unwrap();
    s.replicate();
    let simulate = |s: &Sites| -> serde_json::Value {
        let out = s.lifeboat(&["--output", "json", "plan", "simulate", "p"]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    };
    let before = simulate(&s);
    // The order: each group's boot starts when the group before it is done.
    let starts: Vec<(String, f64)> = before["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["id"].as_str().unwrap().to_string(),
                x["start_seconds"].as_f64().unwrap(),
            )
        })
        .collect();
    let ids: Vec<&str> = starts.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "database/boot",
            "database/post/0",
            "app/boot",
            "web/boot",
            "web/post/0"
        ]
    );
    assert!(starts.windows(2).all(|w| w[0].1 < w[1].1), "{starts:?}");
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rec = s.record("p-1");
    let recorded: Vec<String> = rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, recorded);
    for vm in rec["vms"].as_array().unwrap() {
        let name = vm["name"].as_str().unwrap();
        let sim = before["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["vm"] == name)
            .unwrap();
        assert_eq!(sim["addresses"], vm["addresses"], "{name}");
    }
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);

    let after = simulate(&s);
    let predicted = after["rto_seconds"].as_f64().unwrap();
    let path: Vec<String> = after["critical_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["why"].as_str().unwrap().to_string())
        .collect();
    assert!(
        path[0].contains("`db-1`") && path[2].contains("`web-1`"),
        "{path:?}"
    );
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let real = s.record("p-2")["duration_seconds"].as_f64().unwrap();
    assert!(
        (predicted - real).abs() <= 0.2 * real,
        "predicted {predicted:.2} s, the drill took {real:.2} s"
    );
    assert!(real > 4.5, "the boots alone take 4.5 s: {real:.2} s");
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
}

/// A plan change that breaks recovery fails `simulate` with a diagnostic at the step: the
/// app's check of its database placed in a group before the database's, and a step whose
/// probe its `allow` does not grant. Nothing was started.
#[test]
fn simulate_refuses_a_plan_that_would_not_recover() {
    let db_check = r#"[{ uses = "builtin:tcp-check", with = { address = "{vm.db-1.ip}:5432" }, allow = { tcp = ["{vm.db-1.ip}:5432"] } }]"#;
    let s = Sites::new(144, db_check, "[]");
    s.replicate();
    // The app group (whose pre step checks the database) first.
    let plan = std::fs::read_to_string(s.path().join("plans/p.toml")).unwrap();
    let (head, groups) = plan.split_once("[[group]]").unwrap();
    let (database, app) = groups.split_once("[[group]]").unwrap();
    std::fs::write(
        s.path().join("plans/p.toml"),
        format!("{head}[[group]]{app}[[group]]{database}"),
    )
    .unwrap();
    let out = s.lifeboat(&["plan", "simulate", "p"]);
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("boots-later"), "{}", out.stdout);
    assert!(
        out.stdout.contains("which group `database` boots later"),
        "{}",
        out.stdout
    );
    // The diagnostic points at the step's line in the plan.
    let line = std::fs::read_to_string(s.path().join("plans/p.toml"))
        .unwrap()
        .lines()
        .position(|l| l.starts_with("pre = [{ uses = \"builtin:tcp-check\""))
        .unwrap()
        + 1;
    let out = s.lifeboat(&["plan", "simulate", "p", "--format", "github"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stdout.lines().any(|l| l.starts_with("::error ")
            && l.contains(&format!("p.toml,line={line},"))
            && l.contains("boots-later")),
        "line {line}: {}",
        out.stdout
    );
    let out = s.lifeboat(&["plan", "simulate", "p", "--format", "junit"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stdout.contains(r#"<failure type="boots-later""#)
            && out
                .stdout
                .contains(r#"<skipped message="an earlier step fails"/>"#),
        "{}",
        out.stdout
    );
    assert!(!s.lifeboat(&["runs", "list"]).stdout.contains("p-1"));

    // Put back in order, but the check's grant names another port: denied in the dry run.
    std::fs::write(
        s.path().join("plans/p.toml"),
        plan.replace(
            r#"pre = [{ uses = "builtin:tcp-check", with = { address = "{vm.db-1.ip}:5432" }, allow = { tcp = ["{vm.db-1.ip}:5432"] } }]"#,
            r#"pre = [{ uses = "builtin:tcp-check", with = { address = "{vm.db-1.ip}:5432" }, allow = { tcp = ["{vm.db-1.ip}:5433"] } }]"#,
        ),
    )
    .unwrap();
    let out = s.lifeboat(&["plan", "simulate", "p"]);
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("step-fails-in-dry-run") && out.stdout.contains("not in its `allow`"),
        "{}",
        out.stdout
    );
    // As written at first, it recovers.
    std::fs::write(s.path().join("plans/p.toml"), &plan).unwrap();
    let out = s.lifeboat(&["plan", "simulate", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // db-1's drill address fixed by an override, and held by a drill still open: the next
    // run's addresses cannot be assigned.
    let k = s.k();
    let (head, groups) = plan.split_once("[[group]]").unwrap();
    std::fs::write(
        s.path().join("plans/p.toml"),
        format!(
            "{head}[[network.override]]\nvm = \"db-1\"\ntest_ip = \"127.{k}.92.7\"\n[[group]]{groups}"
        ),
    )
    .unwrap();
    let out = s.lifeboat(&["failover", "p", "--test"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = s.lifeboat(&["plan", "simulate", "p"]);
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("address-clash")
            && out
                .stdout
                .contains(&format!("127.{k}.92.7 is already in use")),
        "{}",
        out.stdout
    );
    assert_eq!(s.lifeboat(&["cleanup", "p"]).code, 0);
    let out = s.lifeboat(&["plan", "simulate", "p"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

/// Each example plan (`plans/erp.toml`, `plans/web.toml` with the example inventory, moved to
/// addresses of this test's own): simulated, then drilled right after, the simulation names the
/// same steps in the same order, gives every VM the same addresses and chooses the same points
/// as the drill's record.
#[test]
fn each_example_plan_simulates_as_its_drill_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::support::root();
    let moved = |text: &str| {
        text.replace("127.10.", "127.145.")
            .replace("127.20.", "127.146.")
            .replace("127.90.", "127.147.")
            .replace(
                r#"command = ["demo-vm","#,
                &format!(r#"command = ["{HELPER}", "demo-vm","#),
            )
    };
    let inventory = moved(&std::fs::read_to_string(root.join("lifeboat.toml")).unwrap());
    std::fs::write(dir.path().join("lifeboat.toml"), &inventory).unwrap();
    std::fs::create_dir_all(dir.path().join("plans")).unwrap();
    for plan in ["erp", "web"] {
        let text = std::fs::read_to_string(root.join(format!("plans/{plan}.toml"))).unwrap();
        std::fs::write(dir.path().join(format!("plans/{plan}.toml")), moved(&text)).unwrap();
    }
    for disk in ["db-1/os", "db-1/data", "app-1/os", "app-2/os", "web-1/os"] {
        let path = dir.path().join(format!("vms/{disk}.img"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::File::create(&path)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
    }
    let config = dir.path().join("lifeboat.toml").display().to_string();
    let lifeboat = |args: &[&str]| {
        let mut full = vec!["--config", config.as_str()];
        full.extend_from_slice(args);
        crate::support::lifeboat(&full)
    };
    let out = lifeboat(&["replicate"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect()
    };
    for (plan, run) in [("erp", "erp-1"), ("web", "web-1")] {
        let out = lifeboat(&["--output", "json", "plan", "simulate", plan]);
        assert_eq!(out.code, 0, "{plan}: {}\n{}", out.stdout, out.stderr);
        let sim: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let out = lifeboat(&["failover", plan, "--test"]);
        assert_eq!(out.code, 0, "{plan}: {}", out.stderr);
        let out = lifeboat(&["--output", "json", "runs", "show", run]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let rec: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(ids(&sim), ids(&rec), "{plan}: the steps and their order");
        let vms = rec["vms"].as_array().unwrap();
        assert_eq!(vms.len(), sim["vms"].as_array().unwrap().len(), "{plan}");
        for vm in vms {
            let name = vm["name"].as_str().unwrap();
            let simulated = sim["vms"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["vm"] == name)
                .unwrap_or_else(|| panic!("{plan}: {name} is not in the simulation"));
            assert_eq!(simulated["addresses"], vm["addresses"], "{plan}: {name}");
            let point = format!("{}/{} ", vm["group"].as_str().unwrap(), vm["point"]);
            assert!(
                simulated["point"].as_str().unwrap().starts_with(&point),
                "{plan}: {name}: {} vs {point}",
                simulated["point"]
            );
        }
        assert_eq!(lifeboat(&["cleanup", plan]).code, 0);
    }
}
