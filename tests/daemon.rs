//! `lifeboat daemon` as a user runs it: real daemon processes on real sites, real VM processes
//! writing throughout, `lifeboat status` and the metrics endpoint read from outside.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lifeboat_compute::driver::{Compute, process_paused};
use serde_json::Value;

use crate::failover::{HELPER, Sites, wait_for};

/// Sites whose policy takes a point every second, with a 5 s RPO threshold.
pub(crate) fn fast_sites(k: u8) -> Sites {
    let s = Sites::new(k, "[]", "[]");
    edit(&s, "lifeboat.toml", |inv| {
        inv.replacen("crash_interval = \"10s\"", "crash_interval = \"1s\"", 1)
            .replacen("rpo_threshold = \"1m\"", "rpo_threshold = \"5s\"", 1)
    });
    s
}

/// Rewrites a file of the sites the way editors save: a new file renamed over the old one.
pub(crate) fn edit(s: &Sites, file: &str, change: impl FnOnce(String) -> String) {
    let path = s.path().join(file);
    let text = change(std::fs::read_to_string(&path).unwrap());
    let tmp = s.path().join(format!("{file}.swp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

/// The bearer token the tests' daemons require on TCP.
pub(crate) const TOKEN: &str = "test-token-5f3a9c1e7b2d4068";

/// A `lifeboat daemon` process.
pub(crate) struct Daemon {
    child: Option<Child>,
    /// Its `--state` (None: the default beside the inventory).
    state: Option<PathBuf>,
    listen: String,
    log: PathBuf,
}

impl Daemon {
    pub(crate) fn start(s: &Sites, state: Option<&Path>, port: u16) -> Self {
        Self::start_with(s, state, port, &[])
    }

    /// Starts a daemon with `env` added to its environment.
    pub(crate) fn start_with(
        s: &Sites,
        state: Option<&Path>,
        port: u16,
        env: &[(&str, String)],
    ) -> Self {
        let listen = format!("127.{}.0.1:{port}", s.k());
        Self::spawn(&s.config(), s.path(), state, listen, env)
    }

    /// Starts a daemon on the inventory `config`, its log and token file in `dir`, its API on
    /// `listen` too.
    pub(crate) fn spawn(
        config: &str,
        dir: &Path,
        state: Option<&Path>,
        listen: String,
        env: &[(&str, String)],
    ) -> Self {
        let port = listen.rsplit(':').next().unwrap_or("0").to_string();
        let log = dir.join(format!("daemon-{port}.log"));
        let token_file = dir.join("api-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let mut args = vec![
            "cli".to_string(),
            "--config".into(),
            config.to_string(),
            "--log-format".into(),
            "json".into(),
        ];
        if let Some(st) = state {
            args.extend(["--state".into(), st.display().to_string()]);
        }
        args.extend(
            [
                "daemon",
                "--grace",
                "10s",
                "--lease-ttl",
                "3s",
                "--listen",
                &listen,
                "--token-file",
                &token_file.display().to_string(),
            ]
            .map(String::from),
        );
        let child = Command::new(HELPER)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            // A file, not a pipe: a daemon must never block on a reader that stopped reading.
            // Appended to: a daemon started again on the same sites keeps the log of the last.
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let d = Self {
            child: Some(child),
            state: state.map(Path::to_path_buf),
            listen,
            log,
        };
        wait_for(
            || d.http("/readyz").is_some_and(|(code, _)| code == 200),
            "the daemon ready",
        );
        d
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn args(&self, rest: &[&str]) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(st) = &self.state {
            a.extend(["--state".to_string(), st.display().to_string()]);
        }
        a.extend(rest.iter().map(|r| r.to_string()));
        a
    }

    /// `lifeboat status --output json` with this daemon's state: (exit code, document).
    pub(crate) fn status(&self, s: &Sites) -> (u8, Value) {
        let args = self.args(&["--output", "json", "status"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s.lifeboat(&args);
        let doc = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status is not JSON ({e}): {}{}", out.stdout, out.stderr));
        (out.code, doc)
    }

    /// `GET path` on the daemon's TCP listener, with the token: (status, body).
    pub(crate) fn http(&self, path: &str) -> Option<(u16, String)> {
        crate::api::call(&self.listen, "GET", path, Some(TOKEN), None)
    }

    /// `method path` on the daemon's TCP listener with the token and a JSON body: (status,
    /// the answer as JSON).
    pub(crate) fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (code, text) = crate::api::call(&self.listen, method, path, Some(TOKEN), body)
            .unwrap_or_else(|| panic!("no answer to {method} {path}"));
        let doc = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (code, doc)
    }

    pub(crate) fn listen(&self) -> &str {
        &self.listen
    }

    /// The value of one metric sample, e.g. `lifeboat_cycles_total{group="db-1",result="committed"}`.
    pub(crate) fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.http("/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// SIGTERM, then waits: its exit status, its log.
    pub(crate) fn term(mut self, within: Duration) -> (ExitStatus, String) {
        self.signal(rustix::process::Signal::TERM);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        (
            status,
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }

    pub(crate) fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn last_id(status: &Value, group: &str) -> u64 {
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == group)
        .and_then(|g| g["last_point"]["id"].as_u64())
        .unwrap_or(0)
}

fn group_states(status: &Value) -> Vec<String> {
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["state"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Restores `point` of `vm` and checks the demo workload's records are consistent.
pub(crate) fn restores_consistent(s: &Sites, vm: &str, point: &str) {
    let out_dir = s.path().join(format!("restored-{vm}-{point}"));
    let out = s.lifeboat(&[
        "restore",
        vm,
        "--point",
        point,
        "--out",
        &out_dir.display().to_string(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let f = std::fs::File::open(out_dir.join("data.img")).unwrap();
    let check = lifeboat_demo_vm::disk::check(&f).unwrap();
    assert!(
        check.last.is_some(),
        "point {point} of {vm} holds no record"
    );
    assert!(
        check.missing.is_empty() && check.torn_slots.is_empty(),
        "point {point} of {vm} is not consistent: {check:?}"
    );
}

/// How long a daemon's cut may hold a VM paused in these tests before it counts as left paused.
pub(crate) const CUT_GRACE: Duration = Duration::from_secs(5);

/// No VM is left paused and every one runs. A daemon still running may be cutting at this
/// instant (a cut pauses its group for at most `max_pause`), so there a VM counts as left paused
/// only when it is still stopped `grace` on; with no daemon running, `grace` is zero.
pub(crate) fn assert_no_vm_paused(s: &Sites, grace: Duration) {
    for h in &s.source {
        let deadline = Instant::now() + grace;
        while process_paused(h.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!process_paused(h.pid), "{} left paused", h.vm);
        assert!(s.rt.block_on(s.driver.running(h)), "{} stopped", h.vm);
    }
}

/// The daemon alone keeps every VM's RPO under its threshold for a minute while the VMs write;
/// `status` and `/metrics` say so; every point restores consistent; SIGTERM ends it with exit
/// 0, no VM paused, and `status` then computes from the repositories.
#[test]
fn the_daemon_alone_keeps_every_rpo_under_its_threshold_for_a_minute() {
    let mut s = fast_sites(123);
    s.start_source();
    let d = Daemon::start(&s, None, 9187);
    wait_for(
        || {
            let (_, st) = d.status(&s);
            last_id(&st, "db-1") >= 1 && last_id(&st, "app-1") >= 1
        },
        "a first point of each group",
    );
    let until = Instant::now() + Duration::from_secs(60);
    let mut worst: f64 = 0.0;
    let mut samples = 0;
    while Instant::now() < until {
        let (code, st) = d.status(&s);
        assert_eq!(st["source"], "daemon");
        assert_eq!(code, 0, "an RPO over its threshold: {st:#}");
        for v in st["vms"].as_array().unwrap() {
            assert_eq!(v["rpo"]["ok"], true, "{v:#}");
            worst = worst.max(v["rpo"]["seconds"].as_f64().unwrap());
        }
        for g in st["groups"].as_array().unwrap() {
            assert!(g["last_error"].is_null(), "{g:#}");
            assert!(g["next_cycle_at"].is_string(), "{g:#}");
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert!(samples >= 30, "only {samples} samples in a minute");
    assert!(worst <= 5.0, "worst RPO {worst}s");

    // The metrics agree, and count the cycles of a minute at 1 s.
    let committed = d
        .metric("lifeboat_cycles_total{group=\"db-1\",result=\"committed\"}")
        .unwrap();
    assert!(committed >= 30.0, "{committed} cycles in a minute");
    let rpo = d
        .metric("lifeboat_vm_rpo_seconds{vm=\"app-1\",group=\"app-1\"}")
        .unwrap();
    assert!(rpo <= 5.0, "{rpo}");
    assert_eq!(
        d.metric("lifeboat_vm_rpo_threshold_seconds{vm=\"app-1\",group=\"app-1\"}"),
        Some(5.0)
    );
    assert_eq!(d.http("/healthz").map(|(c, _)| c), Some(200));

    // Points from the start, the middle and the end restore to consistent records.
    let out = s.lifeboat(&["--output", "json", "points", "list", "db-1"]);
    let ids: Vec<u64> = serde_json::from_str::<Value>(&out.stdout).unwrap()["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert!(ids.len() >= 30, "{ids:?}");
    for id in [ids[0], ids[ids.len() / 2], ids[ids.len() - 1]] {
        restores_consistent(&s, "db-1", &id.to_string());
    }

    let (status, log) = d.term(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("\"protecting\""), "{log}");
    assert_no_vm_paused(&s, Duration::ZERO);
    assert!(
        !s.path().join(".lifeboat/state/daemon.sock").exists(),
        "the socket outlived the daemon"
    );
    let out = s.lifeboat(&["--output", "json", "status"]);
    let st: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(st["source"], "repositories");
}

/// An invalid edit keeps the running config (every diagnostic in `status` and a metric); a
/// valid one is live within seconds; a VM added to the inventory is protected at once and one
/// removed is no longer scheduled; SIGHUP reloads too.
#[test]
fn a_bad_edit_keeps_the_running_config_and_a_good_one_is_live_within_seconds() {
    let mut s = fast_sites(124);
    s.start_source();
    let d = Daemon::start(&s, None, 9187);
    let reload = |st: &Value| st["daemon"]["config"]["last_reload"].clone();

    // A plan naming a VM that does not exist.
    let good_plan = std::fs::read_to_string(s.path().join("plans/p.toml")).unwrap();
    edit(&s, "plans/p.toml", |p| {
        format!("{p}\n[[group]]\nname = \"ghosts\"\nvms = [\"ghost-1\"]\n")
    });
    let mut st = Value::Null;
    wait_for(
        || {
            st = d.status(&s).1;
            reload(&st)["applied"] == false
        },
        "the bad edit rejected",
    );
    let diagnostics = reload(&st)["diagnostics"].to_string();
    assert!(
        diagnostics.contains("p.toml") && diagnostics.contains("ghost-1"),
        "{diagnostics}"
    );
    assert_eq!(st["daemon"]["config"]["generation"], 1);
    assert_eq!(d.metric("lifeboat_config_last_reload_success"), Some(0.0));
    let human = s.lifeboat(&["status"]);
    assert!(
        human.stdout.contains("LAST RELOAD REJECTED"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("ghost-1"), "{}", human.stdout);
    // The old config keeps protecting.
    let before = last_id(&st, "db-1");
    wait_for(
        || last_id(&d.status(&s).1, "db-1") > before + 1,
        "points after the rejected edit",
    );

    // Fixed: applied within seconds.
    let fixed_at = Instant::now();
    edit(&s, "plans/p.toml", |_| good_plan.clone());
    wait_for(
        || d.status(&s).1["daemon"]["config"]["generation"] == 2,
        "the fixed plan applied",
    );
    let applied_in = fixed_at.elapsed();
    assert!(applied_in < Duration::from_secs(5), "{applied_in:?}");
    assert_eq!(d.metric("lifeboat_config_last_reload_success"), Some(1.0));

    // A new VM in the inventory is protected at once.
    std::fs::File::create(s.path().join("vms/web-1.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    edit(&s, "lifeboat.toml", |inv| {
        format!(
            "{inv}\n[vms.web-1]\nsite = \"east\"\npolicy = \"default\"\ndisks.data = \"vms/web-1.img\"\n"
        )
    });
    wait_for(
        || last_id(&d.status(&s).1, "web-1") >= 1,
        "the new VM's first point",
    );

    // SIGHUP reloads the same files: a new generation.
    let generation = d.status(&s).1["daemon"]["config"]["generation"]
        .as_u64()
        .unwrap();
    d.signal(rustix::process::Signal::HUP);
    wait_for(
        || {
            let st = d.status(&s).1;
            st["daemon"]["config"]["generation"] == generation + 1
                && reload(&st)["trigger"] == "SIGHUP"
        },
        "the SIGHUP reload",
    );

    // Removed from the inventory: no longer scheduled nor listed.
    edit(&s, "lifeboat.toml", |inv| {
        inv.split("\n[vms.web-1]").next().unwrap().to_string()
    });
    wait_for(
        || {
            let st = d.status(&s).1;
            !st["vms"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == "web-1")
        },
        "web-1 no longer protected",
    );
    let out = s.lifeboat(&["--output", "json", "points", "list", "db-1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (status, log) = d.term(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("config rejected"), "{log}");
    assert_no_vm_paused(&s, Duration::ZERO);
}

/// kill -9 of the daemon in the middle of cycles, again and again: no VM stays paused, the next
/// start takes over at once (its lease was the dead daemon's), no point is incomplete, and
/// every group's newest point restores consistent.
#[test]
fn a_daemon_killed_mid_cycle_restarts_cleanly_every_time() {
    let mut s = fast_sites(125);
    // A larger disk, so a cycle takes long enough to be killed in.
    let bulk = s.path().join("vms/db-1-bulk.img");
    let mut data = vec![0u8; 96 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&bulk, &data).unwrap();
    drop(data);
    edit(&s, "lifeboat.toml", |inv| {
        inv.replacen(
            "disks.data = \"vms/db-1.img\"",
            "disks = { data = \"vms/db-1.img\", bulk = \"vms/db-1-bulk.img\" }",
            1,
        )
    });
    s.start_source();
    let mut mid_cycle = 0;
    for round in 0..4u64 {
        let d = Daemon::start(&s, None, 9187);
        // Kill while a cycle runs (when one is seen in time).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = false;
        while Instant::now() < deadline {
            if group_states(&d.status(&s).1).iter().any(|g| g == "cycling") {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(round * 40));
        mid_cycle += usize::from(seen);
        d.kill9();
        // The pause's guardian lets the VMs go at once.
        std::thread::sleep(Duration::from_millis(1500));
        assert_no_vm_paused(&s, Duration::ZERO);
    }
    assert!(mid_cycle >= 2, "only {mid_cycle} kills landed in a cycle");

    // The next start resumes at once and takes points again.
    let d = Daemon::start(&s, None, 9187);
    let start = d.status(&s).1;
    let (db, app) = (last_id(&start, "db-1"), last_id(&start, "app-1"));
    wait_for(
        || {
            let st = d.status(&s).1;
            last_id(&st, "db-1") > db + 1 && last_id(&st, "app-1") > app + 1
        },
        "points after the restarts",
    );
    let (status, log) = d.term(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {log}");
    let out = s.lifeboat(&["verify"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for vm in ["db-1", "app-1"] {
        let out = s.lifeboat(&["--output", "json", "points", "list", vm]);
        let doc: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(doc["damaged"], serde_json::json!([]), "{doc:#}");
        restores_consistent(&s, vm, "latest");
    }
    assert_no_vm_paused(&s, Duration::ZERO);
}

/// Two daemons on one repository: the second stands by while the first holds the groups'
/// leases, and takes over when it stops; `lifeboat replicate` and a planned failover are
/// refused (exit 8, the daemon named) while a daemon protects the groups, the source left
/// running.
#[test]
fn two_daemons_on_one_repository_never_interleave_and_the_cli_goes_through_the_writer() {
    let mut s = fast_sites(126);
    s.start_source();
    let a = Daemon::start(&s, None, 9187);
    wait_for(
        || {
            let st = a.status(&s).1;
            last_id(&st, "db-1") >= 1 && last_id(&st, "app-1") >= 1
        },
        "the first daemon's points",
    );
    let b_state = s.path().join("b-state");
    let b = Daemon::start(&s, Some(&b_state), 9188);
    let holder = format!("daemon (pid {} on", a.pid());
    wait_for(
        || {
            let st = b.status(&s).1;
            st["groups"].as_array().unwrap().iter().all(|g| {
                g["state"] == "standby" && g["writer"].as_str().is_some_and(|w| w.contains(&holder))
            })
        },
        "the second daemon standing by",
    );
    // For a while: the second never cycles, the first keeps going.
    let before = last_id(&a.status(&s).1, "db-1");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        b.metric("lifeboat_cycles_total{group=\"db-1\",result=\"committed\"}"),
        Some(0.0)
    );
    assert_eq!(
        b.metric("lifeboat_group_standby{group=\"db-1\"}"),
        Some(1.0)
    );
    assert!(last_id(&a.status(&s).1, "db-1") > before);

    // `replicate` goes through the daemon of its state folder: the writing one takes a point
    // now; the standby one refuses with 8 and names the writer.
    let before = last_id(&a.status(&s).1, "db-1");
    let out = s.lifeboat(&["replicate", "db-1"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let taken: u64 = out
        .stdout
        .strip_prefix("db-1: point ")
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(taken > before, "{}", out.stdout);
    let b_state_arg = b_state.display().to_string();
    let out = s.lifeboat(&["--state", &b_state_arg, "replicate", "db-1"]);
    assert_eq!(out.code, 8, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&holder), "{}", out.stderr);
    assert!(
        out.stderr.contains("one writer per group"),
        "{}",
        out.stderr
    );
    // So does a planned failover asked of the standby daemon (the CLI goes through the daemon
    // of its state folder): the other holds the leases; nothing is stopped, and the standby
    // stands by again.
    let out = s.lifeboat(&["--state", &b_state_arg, "failover", "p", "--planned"]);
    assert_eq!(out.code, 8, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&holder), "{}", out.stderr);
    assert_no_vm_paused(&s, CUT_GRACE);
    wait_for(
        || {
            let st = b.status(&s).1;
            st["groups"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["state"] == "standby")
        },
        "the standby daemon standing by again",
    );
    for vm in ["db-1", "app-1"] {
        assert!(
            crate::failover::get(&s.source_addr(vm), "/health").is_some(),
            "{vm} was stopped by a refused failover"
        );
    }

    // The first stops: the second takes over, numbering on from the first's points.
    let last_of_a = last_id(&a.status(&s).1, "db-1");
    let (status, log) = a.term(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {log}");
    wait_for(
        || last_id(&b.status(&s).1, "db-1") > last_of_a + 1,
        "the second daemon's points",
    );
    let st = b.status(&s).1;
    for g in st["groups"].as_array().unwrap() {
        assert!(g["last_error"].is_null(), "{g:#}");
    }
    assert!(
        b.metric("lifeboat_cycles_total{group=\"db-1\",result=\"committed\"}")
            .unwrap()
            >= 1.0
    );
    let (status, log) = b.term(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {log}");
    // No daemon: the CLI writes again.
    let out = s.lifeboat(&["replicate", "db-1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// Bad input to `lifeboat daemon` is refused before anything runs, with the reason: a lease TTL
/// that would spin, files that do not validate (every diagnostic, exit 3, no socket), and a
/// second daemon on a state folder one already serves (exit 4).
#[test]
fn bad_input_to_the_daemon_is_refused_before_anything_runs() {
    let s = fast_sites(127);
    let out = s.lifeboat(&["daemon", "--lease-ttl", "0s"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("must be at least 3s"), "{}", out.stderr);
    let out = s.lifeboat(&["daemon", "--gc-every", "1s"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    // The API on TCP needs a token.
    let out = s.lifeboat(&["daemon", "--listen", "127.0.0.1:1"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("needs a bearer token"),
        "{}",
        out.stderr
    );

    let good = std::fs::read_to_string(s.path().join("plans/p.toml")).unwrap();
    edit(&s, "plans/p.toml", |p| {
        format!("{p}\n[[group]]\nname = \"ghosts\"\nvms = [\"ghost-1\"]\n")
    });
    let out = s.lifeboat(&["daemon"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("ghost-1"), "{}", out.stderr);
    assert!(!s.path().join(".lifeboat/state/daemon.sock").exists());
    edit(&s, "plans/p.toml", |_| good);

    let d = Daemon::start(&s, None, 9187);
    let out = s.lifeboat(&["daemon"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("a daemon already runs"),
        "{}",
        out.stderr
    );
    // The first is untouched by the refused second.
    assert_eq!(d.http("/readyz").map(|(c, _)| c), Some(200));
    let (status, log) = d.term(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {log}");
}
