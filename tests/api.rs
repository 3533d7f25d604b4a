//! The daemon's API as its users drive it: over TCP with and without the token, every route's
//! documented answer, a failover started through the API, approved through the CLI, followed on
//! the event stream and resumed by a restarted daemon; RPO breach and recovery told once each;
//! a planned failover the daemon coordinates with its own protection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::{CUT_GRACE, Daemon, assert_no_vm_paused, edit, fast_sites, last_id};
use crate::failover::{HELPER, Sites, wait_for};

/// One HTTP/1.1 request to `addr`: (status, body), `None` when nothing answers.
pub(crate) fn call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: lifeboat\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    head.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Some((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// `lifeboat events --output json` with the sites' state, writing to a file.
pub(crate) struct Events {
    child: Child,
    file: std::path::PathBuf,
}

impl Events {
    pub(crate) fn start(s: &Sites, name: &str, after: Option<u64>) -> Self {
        let file = s.path().join(format!("{name}.jsonl"));
        let mut args = vec![
            "cli".to_string(),
            "--config".into(),
            s.config(),
            "--output".into(),
            "json".into(),
            "events".into(),
        ];
        if let Some(a) = after {
            args.extend(["--after".into(), a.to_string()]);
        }
        let child = Command::new(HELPER)
            .args(&args)
            .stdout(std::fs::File::create(&file).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, file }
    }

    fn notices(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub(crate) fn wait_for(&self, what: &str, test: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait_for(
            || {
                found = self.notices().into_iter().find(&test);
                found.is_some()
            },
            what,
        );
        found.unwrap()
    }

    /// Waits until the process has ended on its own (the daemon it followed stopped).
    fn ended(mut self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "`lifeboat events` did not end with its daemon"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.notices()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(notices: &[Value], kind: &str, run: &str) -> usize {
    notices
        .iter()
        .filter(|n| n["kind"] == kind && n["run"] == run)
        .count()
}

/// Waits until run `id` has ended, through the API: its record.
fn run_ended(d: &Daemon, id: &str) -> Value {
    let mut rec = Value::Null;
    wait_for(
        || {
            let (code, r) = d.api("GET", &format!("/v1/runs/{id}"), None);
            rec = r;
            code == 200 && rec["status"] != "running"
        },
        "the run's end",
    );
    rec
}

/// Every route of the OpenAPI document refuses a request without the token (or with a wrong
/// one) with 401 and does nothing; with it, each answers as documented, errors included.
#[test]
fn every_route_needs_the_token_over_tcp_and_answers_as_documented() {
    let mut s = fast_sites(128);
    s.start_source();
    let d = Daemon::start(&s, None, 9187);
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 17, "{}", paths.len());
    for (path, ops) in paths {
        let concrete = path
            .replace("{plan}", "p")
            .replace("{run}", "p-1")
            .replace("{group}", "db-1");
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let body = Some(r#"{"operation":"test"}"#);
            for token in [None, Some("wrong-token-0000000000")] {
                let (code, text) = call(d.listen(), &method, &concrete, token, body).unwrap();
                assert_eq!(code, 401, "{method} {concrete} with {token:?}: {text}");
                let e: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(e["error"]["code"], "unauthorized", "{text}");
            }
        }
    }
    // Nothing was done: no run, no cycle asked for out of turn.
    let (code, runs) = d.api("GET", "/v1/runs", None);
    assert_eq!((code, runs.clone()), (200, Value::Array(vec![])), "{runs}");

    // Reads.
    let (code, st) = d.api("GET", "/v1/status", None);
    assert_eq!(code, 200);
    assert_eq!(st["source"], "daemon");
    assert_eq!(st["groups"].as_array().unwrap().len(), 2, "{st:#}");
    let (code, plans) = d.api("GET", "/v1/plans", None);
    assert_eq!(code, 200);
    assert_eq!(plans[0]["name"], "p", "{plans:#}");
    assert_eq!(plans[0]["valid"], true, "{plans:#}");
    let (code, served) = d.api("GET", "/v1/openapi.json", None);
    assert_eq!(
        (code, &served),
        (200, &doc),
        "the served document is the checked-in one"
    );
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(d.http(path).map(|(c, _)| c), Some(200), "{path}");
    }

    // Errors, each with its documented status and code.
    let expect =
        |method: &str, path: &str, body: Option<&str>, status: u16, code: &str, exit: u64| {
            let (got, e) = d.api(method, path, body);
            assert_eq!(got, status, "{method} {path}: {e:#}");
            assert_eq!(e["error"]["code"], code, "{method} {path}: {e:#}");
            assert_eq!(e["error"]["exit_code"], exit, "{method} {path}: {e:#}");
        };
    expect("GET", "/v1/runs/nope-1", None, 404, "not-found", 4);
    // An unknown plan: as the CLI, which exits 3 for a plan file it cannot find; a name that
    // would reach outside the plans folder is no plan either.
    expect(
        "POST",
        "/v1/plans/nope/failover",
        Some(r#"{"operation":"test"}"#),
        404,
        "not-found",
        3,
    );
    expect(
        "POST",
        "/v1/plans/..%2Flifeboat/cleanup",
        None,
        404,
        "not-found",
        3,
    );
    expect("POST", "/v1/plans/p/failover", Some("{"), 400, "usage", 2);
    expect(
        "POST",
        "/v1/plans/p/failover",
        Some(r#"{"operation":"sideways"}"#),
        400,
        "usage",
        2,
    );
    expect(
        "POST",
        "/v1/plans/p/failover",
        Some(r#"{"operation":"test","colour":"red"}"#),
        400,
        "usage",
        2,
    );
    expect("POST", "/v1/plans/p/cleanup", None, 409, "failed", 4);
    expect("POST", "/v1/plans/p/commit", None, 409, "failed", 4);
    expect("POST", "/v1/runs/p-1/approve", None, 404, "not-found", 4);
    expect(
        "POST",
        "/v1/groups/nope/replicate",
        None,
        404,
        "not-found",
        4,
    );
    // The CLI through the daemon, with names a URL must carry encoded: the daemon's answer, with
    // the CLI's exit codes.
    let out = s.lifeboat(&["approve", "no such/run"]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no such/run"), "{}", out.stderr);
    let out = s.lifeboat(&["cleanup", "no plan"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no plan `no plan`"), "{}", out.stderr);

    // Replicate now, waiting for the cycle: a new point.
    let before = last_id(&d.status(&s).1, "db-1");
    let (code, r) = d.api("POST", "/v1/groups/db-1/replicate?wait=true", None);
    assert_eq!(code, 200, "{r:#}");
    assert_eq!(r["cycle"]["kind"], "cycle.committed", "{r:#}");
    assert!(
        r["cycle"]["data"]["point"]["id"].as_u64().unwrap() > before,
        "{r:#}"
    );
    let (code, r) = d.api("POST", "/v1/groups/app-1/replicate", None);
    assert_eq!((code, r["group"].as_str()), (202, Some("app-1")), "{r:#}");

    // A drill through the API.
    let (code, started) = d.api(
        "POST",
        "/v1/plans/p/failover",
        Some(r#"{"operation":"test"}"#),
    );
    assert_eq!(code, 202, "{started:#}");
    assert_eq!(started["run"], "p-1");
    // A second failover while one is open: refused with the CLI's code.
    expect(
        "POST",
        "/v1/plans/p/failover",
        Some(r#"{"operation":"test"}"#),
        409,
        "failed",
        4,
    );
    let rec = run_ended(&d, "p-1");
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    assert_eq!(rec["vms"].as_array().unwrap().len(), 2, "{rec:#}");
    let (code, runs) = d.api("GET", "/v1/runs", None);
    assert_eq!(code, 200);
    assert_eq!(runs[0]["id"], "p-1", "{runs:#}");
    assert_eq!(runs[0]["status"], "succeeded", "{runs:#}");
    let (_, plans) = d.api("GET", "/v1/plans", None);
    assert_eq!(plans[0]["open_run"], "p-1", "{plans:#}");
    // Actions a finished drill refuses.
    expect(
        "POST",
        "/v1/runs/p-1/approve",
        Some(r#"{"by":"ci"}"#),
        409,
        "failed",
        4,
    );
    expect("POST", "/v1/runs/p-1/skip", None, 409, "failed", 4);
    // A retry of a finished drill does what `lifeboat retry` does: nothing, and says it succeeded.
    let steps_before = rec["timeline"].as_array().unwrap().len();
    let (code, r) = d.api("POST", "/v1/runs/p-1/retry", None);
    assert_eq!(code, 202, "{r:#}");
    let again = run_ended(&d, "p-1");
    assert_eq!(again["status"], "succeeded", "{again:#}");
    assert_eq!(
        again["timeline"].as_array().unwrap().len(),
        steps_before,
        "a retry of a succeeded run re-ran something"
    );
    expect("POST", "/v1/runs/p-1/cancel", None, 409, "failed", 4);
    expect("POST", "/v1/runs/p-1/retry", Some("[1,2"), 400, "usage", 2);
    // Cleanup: the drill's VMs stop.
    let (code, report) = d.api("POST", "/v1/plans/p/cleanup", None);
    assert_eq!(code, 200, "{report:#}");
    assert_eq!(report["run"], "p-1");
    assert_eq!(
        report["vms_stopped"].as_array().unwrap().len(),
        2,
        "{report:#}"
    );
    assert_no_vm_paused(&s, CUT_GRACE);
    let (status, log) = d.term(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {log}");
}

/// A failover started through the API waits for an approval; the event stream shows it; the
/// daemon is killed (-9) and started again: it takes the run up, the CLI approves it (through
/// the daemon), and the run finishes once, each VM started once.
#[test]
fn a_run_started_through_the_api_survives_a_killed_daemon_and_finishes_once() {
    let mut s = fast_sites(129);
    edit(&s, "plans/p.toml", |p| {
        p.replace(
            "pre = []",
            r#"pre = [{ uses = "builtin:approval", with = { message = "go?", timeout = "5m" }, on = ["test"] }]"#,
        )
    });
    s.start_source();
    let d = Daemon::start(&s, None, 9187);
    wait_for(
        || last_id(&d.status(&s).1, "app-1") >= 1 && last_id(&d.status(&s).1, "db-1") >= 1,
        "the first points",
    );
    let first = Events::start(&s, "events-1", None);
    // The stream is subscribed once a live event reaches it.
    first.wait_for("a live event", |n| n["kind"] == "cycle.committed");
    let (code, started) = d.api(
        "POST",
        "/v1/plans/p/failover",
        Some(r#"{"operation":"test"}"#),
    );
    assert_eq!(code, 202, "{started:#}");
    let id = started["run"].as_str().unwrap().to_string();
    let waiting = first.wait_for("the approval waiting", |n| {
        n["kind"] == "approval.waiting" && n["run"] == id.as_str()
    });
    assert!(
        waiting["message"].as_str().unwrap().contains("go?"),
        "{waiting:#}"
    );
    // The database group booted before the approval of the app group.
    let seen = first.notices();
    assert!(
        seen.iter()
            .any(|n| n["kind"] == "step.finished" && n["run"] == id.as_str()),
        "{seen:#?}"
    );
    let last_seen = seen.iter().filter_map(|n| n["id"].as_u64()).max().unwrap();

    d.kill9();
    let before_restart = first.ended();
    assert_eq!(count(&before_restart, "run.finished", &id), 0);

    let d = Daemon::start(&s, None, 9187);
    let second = Events::start(&s, "events-2", Some(0));
    second.wait_for("the run resumed", |n| {
        n["kind"] == "run.started" && n["run"] == id.as_str() && n["data"]["resumed"] == true
    });
    // New ids are above every id of the daemon that died.
    assert!(
        second
            .notices()
            .iter()
            .all(|n| n["id"].as_u64().unwrap() > last_seen)
    );
    let out = s.lifeboat(&["approve", &id, "--by", "ops"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("approved \"go?\" as ops"),
        "{}",
        out.stdout
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !second
        .notices()
        .iter()
        .any(|n| n["kind"] == "run.finished" && n["run"] == id.as_str())
    {
        if Instant::now() > deadline {
            let (_, rec) = d.api("GET", &format!("/v1/runs/{id}"), None);
            panic!(
                "the run did not finish: {:#}\n{:#?}",
                rec["timeline"],
                second.notices()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rec = run_ended(&d, &id);
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    // Once: one end on the stream, each VM started once, one approval.
    std::thread::sleep(Duration::from_millis(500));
    let after = second.notices();
    assert_eq!(count(&after, "run.finished", &id), 1, "{after:#?}");
    assert_eq!(count(&after, "approval.given", &id), 1, "{after:#?}");
    let timeline = rec["timeline"].as_array().unwrap();
    for vm in ["db-1", "app-1"] {
        let starts = timeline
            .iter()
            .filter(|e| e[1]["kind"] == "vm-started" && e[1]["vm"] == vm)
            .count();
        assert_eq!(starts, 1, "{vm} started {starts} times");
    }
    // The drill's VMs answer at their drill addresses, in the drill's network namespace.
    for vm in rec["vms"].as_array().unwrap() {
        let addr = vm["addresses"][0]["ip"].as_str().unwrap();
        let port = if vm["name"] == "db-1" { 5432 } else { 8080 };
        assert!(
            s.get_at(&id, &format!("{addr}:{port}"), "/health")
                .is_some(),
            "{vm:#}"
        );
    }
    // The CLI's cleanup goes through the daemon too.
    let out = s.lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    second.wait_for("the cleanup", |n| n["kind"] == "run.cleaned-up");
    let (status, log) = d.term(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {log}");
}

/// A group whose disk cannot be read breaches its RPO: the stream tells it (and that cycles
/// fail) once, however long it lasts; the disk back, the next cycle recovers it, told once.
#[test]
fn an_rpo_breach_and_its_recovery_are_told_once_each() {
    let mut s = fast_sites(130);
    s.start_source();
    let d = Daemon::start(&s, None, 9187);
    wait_for(|| last_id(&d.status(&s).1, "db-1") >= 1, "a first point");
    let events = Events::start(&s, "events", None);
    events.wait_for("a live event", |n| n["kind"] == "cycle.committed");
    let disk = s.path().join("vms/db-1.img");
    let away = s.path().join("vms/db-1.img.away");
    std::fs::rename(&disk, &away).unwrap();
    let breach = events.wait_for("the breach", |n| {
        n["kind"] == "rpo.breached" && n["group"] == "db-1"
    });
    assert!(
        breach["data"]["rpo_seconds"].as_f64().unwrap() > 5.0,
        "{breach:#}"
    );
    // Failing cycles in between, each told; the breach only once.
    std::thread::sleep(Duration::from_secs(4));
    std::fs::rename(&away, &disk).unwrap();
    events.wait_for("the recovery", |n| {
        n["kind"] == "rpo.recovered" && n["group"] == "db-1"
    });
    std::thread::sleep(Duration::from_secs(2));
    let all = events.notices();
    let of = |kind: &str| {
        all.iter()
            .filter(|n| n["kind"] == kind && n["group"] == "db-1")
            .count()
    };
    assert_eq!(of("rpo.breached"), 1, "{all:#?}");
    assert_eq!(of("rpo.recovered"), 1, "{all:#?}");
    // Every failure is told; the failing and the recovery once each.
    assert!(of("cycle.failed") >= 2, "{all:#?}");
    assert_eq!(of("cycle.failing"), 1, "{all:#?}");
    assert_eq!(of("cycle.recovered"), 1, "{all:#?}");
    // The other group was never in breach.
    assert!(
        !all.iter()
            .any(|n| n["kind"] == "rpo.breached" && n["group"] == "app-1"),
        "{all:#?}"
    );
    let (status, log) = d.term(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {log}");
}

/// `lifeboat failover --planned` while the daemon protects the plan's groups: the daemon stops
/// its own cycles of them, hands over (source stopped, last cycle), fails over with nothing
/// lost, and shows the groups failed over; cleanup gives them back to protection.
#[test]
fn a_planned_failover_through_the_daemon_takes_its_groups_from_protection_and_cleanup_gives_them_back()
 {
    let mut s = fast_sites(131);
    s.start_source();
    let d = Daemon::start(&s, None, 9187);
    wait_for(
        || last_id(&d.status(&s).1, "app-1") >= 1 && last_id(&d.status(&s).1, "db-1") >= 1,
        "the first points",
    );
    let out = s.lifeboat(&["failover", "p", "--planned"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("started in the daemon"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("source VM stopped"), "{}", out.stderr);
    let (_, st) = d.status(&s);
    for g in st["groups"].as_array().unwrap() {
        assert_eq!(g["state"], "failed-over", "{g:#}");
        assert!(
            g["failed_over_by"].as_str().unwrap().contains("p-1"),
            "{g:#}"
        );
    }
    let points_then = last_id(&st, "db-1");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        last_id(&d.status(&s).1, "db-1"),
        points_then,
        "the daemon went on replicating a failed-over group"
    );
    let (code, e) = d.api("POST", "/v1/groups/db-1/replicate", None);
    assert_eq!(code, 409, "{e:#}");
    let out = s.lifeboat(&["cleanup", "p"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    wait_for(
        || last_id(&d.status(&s).1, "db-1") > points_then,
        "protection back after cleanup",
    );
    let (status, log) = d.term(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {log}");
}

/// A plain HTTP receiver: every request's body, one per line; answers 200.
fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .and_then(|v| v.trim().parse().ok())
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        log.lock().unwrap().push(body.to_string());
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
    });
    (addr, seen)
}

/// A receiver that accepts and never answers.
fn hanging_receiver() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    addr
}

/// An HTTPS receiver (Python's, behind a certificate of a test CA made with openssl): its port
/// and the file it writes each request's body to; the CA's PEM file.
fn tls_receiver(dir: &std::path::Path) -> (Child, u16, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=lifeboat test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    let script = dir.join("tls_receiver.py");
    std::fs::write(
        &script,
        r#"import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(sys.argv[1], "ab") as f:
            f.write(body + b"\n")
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), H)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#,
    )
    .unwrap();
    let received = dir.join("tls-received.jsonl");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&received)
        .arg(dir.join("srv.pem"))
        .arg(dir.join("srv.key"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim().parse().expect("the receiver's port");
    (child, port, received, dir.join("ca.pem"))
}

fn bodies_of(bodies: &[String], kind: &str) -> usize {
    bodies
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .filter(|b| b["event"]["kind"] == kind && b["event"]["group"] == "db-1")
        .count()
}

/// Alert hooks declared in the inventory: a breach of db-1's RPO fires the webhook once (over
/// plain HTTP and over HTTPS against a test CA), its recovery once; a hook whose receiver hangs
/// on every committed cycle holds up neither the cycles nor the other hooks.
#[test]
fn alert_hooks_fire_once_per_transition_and_a_hanging_one_holds_nothing_up() {
    let mut s = fast_sites(132);
    let (plain, seen) = receiver();
    let hang = hanging_receiver();
    let (mut tls, tls_port, tls_received, ca) = tls_receiver(s.path());
    edit(&s, "lifeboat.toml", |inv| {
        format!(
            r#"{inv}
[alerts.oncall]
events = ["rpo.breached", "rpo.recovered"]
uses = "builtin:webhook"
with = {{ url = "http://{plain}/hooks/oncall" }}
allow = {{ http = ["POST http://{plain}/hooks/"] }}
retries = 2

[alerts.secure]
events = ["rpo.breached"]
uses = "builtin:webhook"
with = {{ url = "https://localhost:{tls_port}/hooks/secure" }}
allow = {{ http = ["POST https://localhost:{tls_port}/hooks/"] }}

[alerts.stuck]
events = ["cycle.committed", "rpo.breached"]
uses = "builtin:webhook"
with = {{ url = "http://{hang}/never", timeout_ms = 60000 }}
timeout = "2m"
allow = {{ http = ["POST http://{hang}/"] }}
"#
        )
    });
    let out = s.lifeboat(&["plan", "validate"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    s.start_source();
    let d = Daemon::start_with(
        &s,
        None,
        9187,
        &[("SSL_CERT_FILE", ca.display().to_string())],
    );
    wait_for(
        || last_id(&d.status(&s).1, "db-1") >= 2,
        "points despite the stuck hook",
    );
    let events = Events::start(&s, "events", None);
    events.wait_for("a live event", |n| n["kind"] == "cycle.committed");

    let disk = s.path().join("vms/db-1.img");
    let away = s.path().join("vms/db-1.img.away");
    std::fs::rename(&disk, &away).unwrap();
    wait_for(
        || bodies_of(&seen.lock().unwrap(), "rpo.breached") == 1,
        "the breach delivered",
    );
    wait_for(
        || {
            let tls_bodies: Vec<String> = std::fs::read_to_string(&tls_received)
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect();
            bodies_of(&tls_bodies, "rpo.breached") == 1
        },
        "the breach delivered over HTTPS",
    );
    std::thread::sleep(Duration::from_secs(3));
    std::fs::rename(&away, &disk).unwrap();
    wait_for(
        || bodies_of(&seen.lock().unwrap(), "rpo.recovered") == 1,
        "the recovery delivered",
    );
    // Cycles go on at their pace while the stuck hook's deliveries hang.
    let before = last_id(&d.status(&s).1, "app-1");
    std::thread::sleep(Duration::from_secs(4));
    let after = last_id(&d.status(&s).1, "app-1");
    assert!(after >= before + 2, "cycles held up: {before} → {after}");
    // Exactly once each, and the bus says which deliveries went out.
    let bodies = seen.lock().unwrap().clone();
    assert_eq!(bodies_of(&bodies, "rpo.breached"), 1, "{bodies:#?}");
    assert_eq!(bodies_of(&bodies, "rpo.recovered"), 1, "{bodies:#?}");
    let first: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert!(
        first["text"]
            .as_str()
            .unwrap()
            .starts_with("lifeboat: group db-1: "),
        "{first:#}"
    );
    let notices = events.notices();
    assert!(
        notices
            .iter()
            .any(|n| n["kind"] == "alert.sent" && n["data"]["alert"] == "secure"),
        "{notices:#?}"
    );
    let (status, log) = d.term(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {log}");
    let _ = tls.kill();
    let _ = tls.wait();
}
