//! The run commands when a daemon runs on the state folder: `failover`, `retry`, `skip`,
//! `cleanup`, `commit`, `approve` and `cancel` ask it through its API (so its live view, its
//! leases and the CLI agree), follow the run on its event stream with the same progress lines,
//! and print and exit as they do without a daemon. `lifeboat events` follows the stream.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_api::client;
use lifeboat_api::error::ErrorBody;
use lifeboat_api::requests::{Approval, Retried, Started};
use lifeboat_api::{Notice, NoticeKind};
use lifeboat_orchestrator::journal::Event;
use lifeboat_orchestrator::operations::{CleanupReport, Committed};
use lifeboat_orchestrator::record::{RunRecord, describe};
use lifeboat_orchestrator::run::Outcome;
use tokio::sync::mpsc;

use crate::exit_codes;
use crate::orchestration::{print_cleanup, print_committed, report_run};

/// `text` as one path segment or query value: everything but unreserved characters
/// percent-encoded, so a name with a space or a `/` reaches the daemon as itself.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Actions may take as long as a planned failover's last cycle.
const ACTION_TIMEOUT: Duration = Duration::from_secs(3600);

/// A running daemon's socket.
#[derive(Debug)]
pub struct Daemon {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Daemon {
    /// The daemon running on `state`, if one answers there.
    pub fn at(state: &Path) -> Option<Self> {
        let rt = crate::runtime().ok()?;
        let socket = client::socket_path(state);
        rt.block_on(client::running(&socket))
            .then_some(Self { socket, rt })
    }

    /// `method path` with `body`: the answer's JSON, or the exit code after printing why not.
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        io: &mut crate::Io<'_>,
    ) -> Result<T, u8> {
        let body = body.map(|b| b.to_string().into_bytes());
        let answer = self.rt.block_on(client::request(
            &self.socket,
            method,
            path,
            body,
            ACTION_TIMEOUT,
        ));
        let (code, bytes) = match answer {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                let _ = writeln!(io.stderr, "error: {e}");
                return Err(exit_codes::INTERNAL);
            }
            None => {
                let _ = writeln!(
                    io.stderr,
                    "error: the daemon at {} stopped answering",
                    self.socket.display()
                );
                return Err(exit_codes::INTERNAL);
            }
        };
        if (200..300).contains(&code) {
            return serde_json::from_slice(&bytes).map_err(|e| {
                let _ = writeln!(io.stderr, "error: the daemon's answer is not readable: {e}");
                exit_codes::INTERNAL
            });
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => {
                let _ = writeln!(io.stderr, "error: {}", e.error.message);
                for d in &e.error.details {
                    let _ = writeln!(io.stderr, "  {d}");
                }
                e.error.exit_code
            }
            Err(_) => {
                let _ = writeln!(
                    io.stderr,
                    "error: the daemon answered {code}: {}",
                    String::from_utf8_lossy(&bytes)
                );
                exit_codes::INTERNAL
            }
        })
    }

    /// Follows the event stream from now on (subscribed when this returns).
    fn follow(
        &self,
        query: &str,
        io: &mut crate::Io<'_>,
    ) -> Result<mpsc::UnboundedReceiver<Notice>, u8> {
        match self
            .rt
            .block_on(client::follow(&self.socket, &format!("/v1/events{query}")))
        {
            Some(Ok(rx)) => Ok(rx),
            Some(Err(e)) => {
                let _ = writeln!(io.stderr, "error: {e}");
                Err(exit_codes::INTERNAL)
            }
            None => {
                let _ = writeln!(io.stderr, "error: the daemon stopped answering");
                Err(exit_codes::INTERNAL)
            }
        }
    }

    /// Prints run `id`'s progress until it ends, then its record; the exit code. The first
    /// Ctrl-C cancels the run in the daemon; a second one exits at once.
    fn watch_run(
        &self,
        id: &str,
        mut feed: mpsc::UnboundedReceiver<Notice>,
        json: bool,
        io: &mut crate::Io<'_>,
    ) -> u8 {
        let socket = self.socket.clone();
        let run = id.to_string();
        let ended = self.rt.block_on(async {
            let mut interrupted = false;
            loop {
                tokio::select! {
                    n = feed.recv() => {
                        let n = n?;
                        if n.run.as_deref() != Some(run.as_str()) {
                            continue;
                        }
                        if n.kind == NoticeKind::RunFinished {
                            return Some(n);
                        }
                        // The run's own events, as they come, in the words the CLI uses alone.
                        let line = serde_json::from_value::<Event>(n.data.clone())
                            .ok()
                            .and_then(|e| describe(&run, &e));
                        if let Some(line) = line
                            && !json
                        {
                            let _ = writeln!(io.stderr, "  {line}");
                        }
                    }
                    _ = tokio::signal::ctrl_c() => {
                        if interrupted {
                            std::process::exit(exit_codes::INTERRUPTED.into());
                        }
                        interrupted = true;
                        let _ = client::request(
                            &socket,
                            "POST",
                            &format!("/v1/runs/{}/cancel", encode(&run)),
                            None,
                            Duration::from_secs(10),
                        )
                        .await;
                    }
                }
            }
        });
        let Some(end) = ended else {
            let _ = writeln!(
                io.stderr,
                "error: the daemon stopped while run {id} went on; a restarted daemon takes it up again (`lifeboat runs show {id}`)"
            );
            return exit_codes::FAILED;
        };
        let field = |k: &str| {
            end.data
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let outcome = match field("status").as_str() {
            "succeeded" => Outcome::Succeeded,
            "cancelled" => Outcome::Cancelled {
                step: field("step"),
                reason: field("error"),
            },
            _ if end.data.get("exit_code").is_some() => {
                let _ = writeln!(io.stderr, "error: {}", field("error"));
                return end
                    .data
                    .get("exit_code")
                    .and_then(serde_json::Value::as_u64)
                    .map_or(exit_codes::FAILED, |c| c as u8);
            }
            _ => Outcome::Failed {
                step: field("step"),
                error: field("error"),
            },
        };
        let record: Result<RunRecord, String> = self
            .call("GET", &format!("/v1/runs/{}", encode(id)), None, io)
            .map_err(|code| format!("the daemon answered with exit code {code}"));
        report_run(id, record, &outcome, json, io)
    }
}

/// The plan name the daemon knows a plan argument by: a name, or a file in its plans folder.
fn plan_name(config: &Path, plan: &str, io: &mut crate::Io<'_>) -> Result<String, u8> {
    let path = Path::new(plan);
    if !plan.ends_with(".toml") && !path.exists() {
        return Ok(plan.to_string());
    }
    let plans = lifeboat_loader::base_dir(config).join("plans");
    let same_folder = match (
        path.parent().map(std::fs::canonicalize),
        plans.canonicalize(),
    ) {
        (Some(Ok(a)), Ok(b)) => a == b,
        _ => false,
    };
    match path.file_stem() {
        Some(stem) if same_folder => Ok(stem.to_string_lossy().into_owned()),
        _ => {
            let _ = writeln!(
                io.stderr,
                "error: a daemon runs on this state folder and runs plans of {} only; {plan} is not there (copy it there, or stop the daemon)",
                plans.display()
            );
            Err(exit_codes::INVALID)
        }
    }
}

/// `lifeboat failover` through the daemon.
pub fn failover(
    d: &Daemon,
    config: &Path,
    plan: &str,
    req: lifeboat_orchestrator::operations::FailoverRequest,
    json: bool,
    io: &mut crate::Io<'_>,
) -> u8 {
    let lifeboat_orchestrator::operations::FailoverRequest {
        op,
        point,
        force,
        reverse,
        instant,
    } = req;
    let name = match plan_name(config, plan, io) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let feed = match d.follow("", io) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let started: Started = match d.call(
        "POST",
        &format!("/v1/plans/{}/failover", encode(&name)),
        Some(serde_json::json!({
            "operation": op.name(), "point": point, "force": force, "reverse": reverse,
            "instant": instant
        })),
        io,
    ) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !json {
        let _ = writeln!(io.stderr, "  run {} started in the daemon", started.run);
        for vm in &started.source_stopped {
            let _ = writeln!(io.stderr, "  {vm}: source VM stopped");
        }
    }
    d.watch_run(&started.run, feed, json, io)
}

/// `lifeboat retry` / `lifeboat skip` through the daemon.
pub fn retry(d: &Daemon, run: &str, skip: bool, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let feed = match d.follow("", io) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let retried: Retried = match d.call(
        "POST",
        &format!("/v1/runs/{}/retry", encode(run)),
        Some(serde_json::json!({ "skip": skip })),
        io,
    ) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if let Some(step) = &retried.skipped {
        let _ = writeln!(io.stderr, "skipped step `{step}` of run {run}");
    }
    d.watch_run(run, feed, json, io)
}

/// `lifeboat cleanup` through the daemon.
pub fn cleanup(d: &Daemon, config: &Path, plan: &str, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let name = match plan_name(config, plan, io) {
        Ok(n) => n,
        Err(code) => return code,
    };
    match d.call::<CleanupReport>(
        "POST",
        &format!("/v1/plans/{}/cleanup", encode(&name)),
        None,
        io,
    ) {
        Ok(r) => print_cleanup(&r, json, io),
        Err(code) => code,
    }
}

/// `lifeboat commit` through the daemon.
pub fn commit(d: &Daemon, config: &Path, plan: &str, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let name = match plan_name(config, plan, io) {
        Ok(n) => n,
        Err(code) => return code,
    };
    match d.call::<Vec<Committed>>(
        "POST",
        &format!("/v1/plans/{}/commit", encode(&name)),
        None,
        io,
    ) {
        Ok(groups) => print_committed(&groups, json, io),
        Err(code) => code,
    }
}

/// `lifeboat approve` through the daemon.
pub fn approve(d: &Daemon, run: &str, by: &str, io: &mut crate::Io<'_>) -> u8 {
    match d.call::<Approval>(
        "POST",
        &format!("/v1/runs/{}/approve", encode(run)),
        Some(serde_json::json!({ "by": by })),
        io,
    ) {
        Ok(a) => {
            let _ = writeln!(
                io.stdout,
                "run {run}: approved \"{}\" as {}",
                a.message, a.by
            );
            exit_codes::OK
        }
        Err(code) => code,
    }
}

/// `lifeboat cancel` through the daemon.
pub fn cancel(d: &Daemon, run: &str, io: &mut crate::Io<'_>) -> u8 {
    match d.call::<Retried>(
        "POST",
        &format!("/v1/runs/{}/cancel", encode(run)),
        None,
        io,
    ) {
        Ok(_) => {
            let _ = writeln!(
                io.stdout,
                "run {run} cancelled; `lifeboat cleanup` undoes what it did"
            );
            exit_codes::OK
        }
        Err(code) => code,
    }
}

/// `lifeboat replicate` through the daemon: a cycle of each group now, by the daemon's own task
/// (its lease, its schedule counted from there), answered when it committed. `--app`/`--crash`
/// are refused: the daemon chooses the kind on its schedule.
pub fn replicate(
    d: &Daemon,
    ctx: &crate::replication::Context,
    vms: &[String],
    app: lifeboat_replication::AppMode,
    io: &mut crate::Io<'_>,
) -> u8 {
    if app != lifeboat_replication::AppMode::Auto {
        let _ = writeln!(
            io.stderr,
            "error: a daemon protects these groups and takes their points (app-consistent when `app_interval` is due); `--app` and `--crash` need it stopped"
        );
        return exit_codes::BUSY;
    }
    let groups = match crate::replication::chosen_groups(ctx, vms) {
        Ok(g) => g,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {e}");
            return lifeboat_orchestrator::error::replication_exit_code(&e);
        }
    };
    let mut reports = Vec::new();
    let mut code = exit_codes::OK;
    for group in groups {
        let answer: Result<lifeboat_api::requests::Replicated, u8> = d.call(
            "POST",
            &format!("/v1/groups/{}/replicate?wait=true", encode(&group.name)),
            None,
            io,
        );
        let report = answer.and_then(|r| {
            r.cycle
                .and_then(|n| n.data.get("report").cloned())
                .and_then(|v| serde_json::from_value::<lifeboat_replication::CycleReport>(v).ok())
                .ok_or_else(|| {
                    let _ = writeln!(
                        io.stderr,
                        "error: group `{}`: the daemon's answer has no cycle report",
                        group.name
                    );
                    exit_codes::INTERNAL
                })
        });
        match report {
            Ok(r) => {
                if !ctx.json {
                    crate::replication::print_cycle(&r, io);
                }
                reports.push(r);
            }
            Err(c) => code = code.max(c),
        }
    }
    if ctx.json {
        crate::print_json(io, &reports);
    }
    code
}

/// `lifeboat events`: the daemon's events as they happen, one line each (a JSON object each with
/// `--output json`), after the kept ones newer than `after`, until the daemon stops or Ctrl-C.
pub fn events(
    state: &Path,
    after: Option<u64>,
    run: Option<&str>,
    group: Option<&str>,
    json: bool,
    io: &mut crate::Io<'_>,
) -> u8 {
    let Some(d) = Daemon::at(state) else {
        let _ = writeln!(
            io.stderr,
            "error: no daemon runs on {} (`lifeboat daemon` starts one)",
            state.display()
        );
        return exit_codes::FAILED;
    };
    let mut query = Vec::new();
    if let Some(a) = after {
        query.push(format!("after={a}"));
    }
    if let Some(r) = run {
        query.push(format!("run={}", encode(r)));
    }
    if let Some(g) = group {
        query.push(format!("group={}", encode(g)));
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let mut feed = match d.follow(&query, io) {
        Ok(f) => f,
        Err(code) => return code,
    };
    loop {
        let next = d.rt.block_on(async {
            tokio::select! {
                n = feed.recv() => n,
                _ = tokio::signal::ctrl_c() => None,
            }
        });
        let Some(n) = next else {
            return exit_codes::OK;
        };
        let written = if json {
            serde_json::to_writer(&mut *io.stdout, &n)
                .map_err(std::io::Error::other)
                .and_then(|()| writeln!(io.stdout))
        } else {
            writeln!(io.stdout, "{}  {:<18} {}", n.at, n.kind, n.message)
        };
        if written.and_then(|()| io.stdout.flush()).is_err() {
            // The reader went away (`| head`).
            return exit_codes::OK;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_reach_the_daemon_as_themselves() {
        assert_eq!(super::encode("erp-1"), "erp-1");
        assert_eq!(super::encode("a b/c?d&e"), "a%20b%2Fc%3Fd%26e");
        assert_eq!(super::encode("née"), "n%C3%A9e");
    }
}
