//! The run commands: `failover`, `cleanup`, `commit`, `approve`, `retry`, `skip`, `cancel`,
//! `runs list` and `runs show`. Each loads the inventory and the plan, builds the orchestrator's
//! environment, and prints what the run does as it goes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_compute::Driver;
use lifeboat_loader::ResolvedPlan;
use lifeboat_orchestrator::error::Error;
use lifeboat_orchestrator::journal::Event;
use lifeboat_orchestrator::lifecycle::ReprotectReport;
use lifeboat_orchestrator::operations::{
    self, CleanupReport, Committed, FailoverRequest, RunResult,
};
use lifeboat_orchestrator::record::{self, RunRecord};
use lifeboat_orchestrator::run::{Control, Controls, Outcome};
use lifeboat_orchestrator::runs::Environment;
use lifeboat_orchestrator::services::Observer;

use crate::exit_codes;

/// Where runs are kept unless `--state` says: `.lifeboat/state` beside the inventory.
pub fn default_state_dir(base: &Path) -> PathBuf {
    base.join(".lifeboat").join("state")
}

/// `path` from the root: the paths a run journals (restored disks, VM logs) are the ones its
/// VMs are started with and the ones later commands find them by, whatever their folder.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A plan argument: a file, or the name of one in `plans/` beside the inventory.
pub fn plan_path(config: &Path, plan: &str) -> PathBuf {
    let p = PathBuf::from(plan);
    if p.exists() || plan.ends_with(".toml") {
        return p;
    }
    lifeboat_loader::base_dir(config)
        .join("plans")
        .join(format!("{plan}.toml"))
}

/// The inventory, a plan (when asked for) and the environment, or the exit code after printing
/// why not.
pub struct Loaded {
    /// The configuration is `env.config`.
    pub env: Environment,
    pub plan: Option<ResolvedPlan>,
    /// What it was loaded from, to load again.
    pub config: PathBuf,
    pub state: Option<PathBuf>,
}

pub fn load(
    config: &Path,
    state: Option<&Path>,
    plan: Option<&Path>,
    json: bool,
    io: &mut crate::Io<'_>,
) -> Result<Loaded, u8> {
    let crate::load::Loaded {
        config: resolved,
        plan,
    } = crate::load::load(config, plan, json, io)?;
    let engine = match lifeboat_loader::engine() {
        Ok(e) => e,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {e}");
            return Err(exit_codes::INTERNAL);
        }
    };
    if let lifeboat_plugin_host::Allocation::OnDemand { reason } = engine.allocation() {
        let _ = writeln!(
            io.stderr,
            "warning: the plugin sandbox allocates instances on demand (slower; every limit still holds): the pool could not be reserved: {reason}"
        );
    }
    Ok(Loaded {
        env: Environment {
            state_dir: absolute(
                &state.map_or_else(|| default_state_dir(&resolved.base), Path::to_path_buf),
            ),
            config: resolved,
            engine,
            driver: Driver::new(),
            daemon: false,
            lifeboat: io.program.clone(),
        },
        plan,
        config: config.to_path_buf(),
        state: state.map(Path::to_path_buf),
    })
}

pub use lifeboat_orchestrator::record::describe;

/// Runs `work` while printing the run's progress lines to stderr. The first Ctrl-C cancels the
/// run (the step that runs stops, the run ends `cancelled`); a second one exits at once, leaving
/// the run for `lifeboat retry`.
fn with_progress<T>(
    io: &mut crate::Io<'_>,
    quiet: bool,
    work: impl AsyncFnOnce(Observer, Controls) -> Result<T, Error>,
) -> Result<T, Error> {
    let rt = crate::runtime().map_err(|e| Error::Failed(e.to_string()))?;
    let (control, controls) = tokio::sync::mpsc::unbounded_channel();
    let signals = rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = control.send(Control::Cancel("interrupted (Ctrl-C)".into()));
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(exit_codes::INTERRUPTED.into());
            }
        }
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let observe: Observer = Arc::new(move |run: &str, e: &Event| {
        if let Some(line) = describe(run, e) {
            let _ = tx.send(line);
        }
    });
    let result = rt.block_on(async {
        let fut = work(observe, Some(controls));
        tokio::pin!(fut);
        loop {
            tokio::select! {
                r = &mut fut => {
                    while let Ok(line) = rx.try_recv() {
                        if !quiet { let _ = writeln!(io.stderr, "  {line}"); }
                    }
                    break r;
                }
                Some(line) = rx.recv() => {
                    if !quiet { let _ = writeln!(io.stderr, "  {line}"); }
                }
            }
        }
    });
    signals.abort();
    result
}

fn group_of(env: &Environment) -> impl Fn(&str) -> Option<String> + '_ {
    move |vm| {
        env.config
            .groups
            .iter()
            .find(|g| g.vms.iter().any(|v| v.name == vm))
            .map(|g| g.name.clone())
    }
}

fn finish(
    env: &Environment,
    result: Result<RunResult, Error>,
    json: bool,
    io: &mut crate::Io<'_>,
) -> u8 {
    let r = match result {
        Ok(r) => r,
        Err(e) => return run_failed(io, &e),
    };
    if !json {
        for h in &r.source_stopped {
            let _ = writeln!(io.stderr, "  {}: source VM stopped (pid {})", h.vm, h.pid);
        }
    }
    let record = env
        .journal()
        .map_err(Error::from)
        .and_then(|j| record::record(&j, &r.id, &group_of(env)))
        .map_err(|e| e.to_string());
    report_run(&r.id, record, &r.outcome, json, io)
}

/// Prints how run `id` ended (its record, then why it stopped) and returns the exit code: the
/// same whether the run went on here or in the daemon.
pub(crate) fn report_run(
    id: &str,
    record: Result<RunRecord, String>,
    outcome: &Outcome,
    json: bool,
    io: &mut crate::Io<'_>,
) -> u8 {
    match &record {
        Ok(rec) if json => crate::print_json(io, rec),
        Ok(rec) => summary(rec, io),
        Err(e) => {
            let _ = writeln!(io.stderr, "warning: cannot read run {id} back: {e}");
        }
    }
    let plan = record.map(|r| r.plan).unwrap_or_default();
    match outcome {
        Outcome::Succeeded => exit_codes::OK,
        Outcome::Cancelled { step, reason } => {
            let _ = writeln!(
                io.stderr,
                "error: run {id} cancelled at step `{step}`: {reason}\n  `lifeboat cleanup {plan}` undoes what it did",
            );
            exit_codes::FAILED
        }
        Outcome::Failed { step, error } => {
            let _ = writeln!(
                io.stderr,
                "error: run {id} stopped at step `{step}`: {error}\n  fix the cause, then `lifeboat retry {id}` (or `lifeboat skip {id}`, or `lifeboat cleanup {plan}`)",
            );
            exit_codes::FAILED
        }
    }
}

/// Prints `e` and returns its exit code.
pub(crate) fn run_failed(io: &mut crate::Io<'_>, e: &Error) -> u8 {
    let _ = writeln!(io.stderr, "error: {e}");
    e.exit_code()
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{s:.1}s"))
}

fn summary(r: &RunRecord, io: &mut crate::Io<'_>) {
    let _ = writeln!(
        io.stdout,
        "run {}: {} of plan {} — {} (RTO {})",
        r.id,
        r.operation,
        r.plan,
        r.status,
        secs(r.rto_seconds)
    );
    for v in &r.vms {
        let _ = writeln!(
            io.stdout,
            "  {}: point {} (RPO {}), {}",
            v.name,
            v.point.map_or_else(
                || "-".into(),
                |p| format!("{}/{p}", v.group.clone().unwrap_or_default())
            ),
            secs(v.rpo_seconds),
            v.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        for h in &v.hydration {
            let _ = match h.hydrated_after_seconds {
                Some(s) => writeln!(
                    io.stdout,
                    "    {}/{}: booted from the repository, hydrated {s:.1}s after it started",
                    v.name, h.disk
                ),
                None => writeln!(
                    io.stdout,
                    "    {}/{}: booted from the repository, hydrating",
                    v.name, h.disk
                ),
            };
        }
    }
}

/// `lifeboat failover PLAN --test|--planned|--unplanned [--point P]`.
pub fn failover(loaded: &Loaded, req: FailoverRequest, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let Some(ResolvedPlan { plan, path }) = &loaded.plan else {
        return exit_codes::INVALID;
    };
    let env = &loaded.env;
    // Every check first (open runs, points, addresses, the source site); then a planned
    // failover stops the source and replicates once more; then the run.
    let result = with_progress(io, json, async |observe, controls| {
        operations::failover(env, plan, path, req, observe, controls).await
    });
    let hydrate = match &result {
        Ok(r) if r.outcome == Outcome::Succeeded => Some(r.id.clone()),
        _ => None,
    };
    let code = finish(env, result, json, io);
    match hydrate {
        Some(run) if code == exit_codes::OK => watch_hydration(env, &run, json, io),
        _ => code,
    }
}

/// After an instant run: tends its disks until they are hydrated, one line per disk as it gets
/// there (and the progress every few seconds). Ctrl-C leaves the VMs and servers running.
fn watch_hydration(env: &Environment, run: &str, json: bool, io: &mut crate::Io<'_>) -> u8 {
    use lifeboat_orchestrator::hydration;
    match hydration::is_instant(env, run) {
        Ok(true) => {}
        Ok(false) => return exit_codes::OK,
        Err(e) => return run_failed(io, &e),
    }
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => return crate::internal(io, &e),
    };
    let stderr = std::sync::Mutex::new(&mut *io.stderr);
    let shown = std::sync::Mutex::new((std::collections::HashSet::<String>::new(), None));
    let progress = |seen: &[hydration::DiskHydration]| {
        if json {
            return;
        }
        let mut shown = shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut err = stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for d in seen {
            let name = format!("{}/{}", d.vm, d.disk);
            if let Some(s) = d.seconds
                && shown.0.insert(name.clone())
            {
                let _ = writeln!(
                    err,
                    "  {name}: hydrated ({} MiB) {s:.1}s after its VM started",
                    d.total >> 20
                );
            }
        }
        let due = shown
            .1
            .is_none_or(|t: std::time::Instant| t.elapsed() >= std::time::Duration::from_secs(5));
        if due {
            shown.1 = Some(std::time::Instant::now());
            if let Some(open) = hydration::unhydrated(seen) {
                let _ = writeln!(err, "  hydrating: {open}");
            }
        }
    };
    let watched = rt.block_on(async {
        tokio::select! {
            r = hydration::until_hydrated(env, run, &progress) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    match watched {
        None => {
            let _ = writeln!(
                io.stderr,
                "  hydration goes on in QEMU; `lifeboat commit` waits for it (a dead export server is started again there)"
            );
            exit_codes::OK
        }
        Some(Ok(seen)) => match hydration::unhydrated(&seen) {
            None => exit_codes::OK,
            Some(open) => {
                let _ = writeln!(io.stderr, "warning: not hydrated: {open}");
                exit_codes::OK
            }
        },
        Some(Err(e)) => run_failed(io, &e),
    }
}

/// `lifeboat retry RUN`: resume a run whose process died, or retry the step it failed on.
pub fn retry(
    config: &Path,
    state: Option<&Path>,
    run: &str,
    skip: bool,
    json: bool,
    io: &mut crate::Io<'_>,
) -> u8 {
    // The run's journal says which plan it runs.
    let probe = match load(config, state, None, json, io) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let status = match probe.env.status(run) {
        Ok(s) => s,
        Err(e) => return run_failed(io, &e),
    };
    let loaded = match load(config, state, Some(Path::new(&status.plan_path)), json, io) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(ResolvedPlan { plan, .. }) = &loaded.plan else {
        return exit_codes::INVALID;
    };
    if skip {
        match operations::skip(&loaded.env, run) {
            Ok(step) => {
                let _ = writeln!(io.stderr, "skipped step `{step}` of run {run}");
            }
            Err(e) => return run_failed(io, &e),
        }
    }
    let env = &loaded.env;
    let result = with_progress(io, json, async |observe, controls| {
        operations::resume(env, run, plan, observe, controls).await
    });
    finish(env, result, json, io)
}

/// `lifeboat cleanup PLAN`.
pub fn cleanup(loaded: &Loaded, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let Some(ResolvedPlan { plan, .. }) = &loaded.plan else {
        return exit_codes::INVALID;
    };
    let env = &loaded.env;
    let result = with_progress(io, json, async |observe, _controls| {
        operations::cleanup(env, plan, observe).await
    });
    match result {
        Ok(r) => print_cleanup(&r, json, io),
        Err(e) => run_failed(io, &e),
    }
}

/// Prints what `cleanup` did and returns the exit code.
pub(crate) fn print_cleanup(r: &CleanupReport, json: bool, io: &mut crate::Io<'_>) -> u8 {
    if json {
        crate::print_json(io, r);
    } else {
        let _ = writeln!(
            io.stdout,
            "run {} cleaned up: {} step(s) undone, {} VM(s) stopped, disks deleted, points {} unpinned",
            r.run,
            r.undone.len(),
            r.vms_stopped.len(),
            if r.unpinned.is_empty() {
                "-".to_string()
            } else {
                r.unpinned.join(", ")
            }
        );
        if !r.source_restarted.is_empty() {
            let _ = writeln!(
                io.stdout,
                "source VMs the failover had stopped are running again: {}",
                r.source_restarted.join(", ")
            );
        }
        if let Some(ns) = &r.network_namespace {
            let _ = writeln!(io.stdout, "network namespace {ns} removed");
        }
    }
    for left in &r.source_left_stopped {
        let _ = writeln!(io.stderr, "warning: source VM not started again: {left}");
    }
    if r.undone.iter().any(|u| u.error.is_some()) {
        let _ = writeln!(
            io.stderr,
            "error: some undo steps failed (see `lifeboat runs show {}`)",
            r.run
        );
        return exit_codes::FAILED;
    }
    exit_codes::OK
}

/// `lifeboat commit PLAN`.
pub fn commit(loaded: &Loaded, wait: bool, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let Some(ResolvedPlan { plan, .. }) = &loaded.plan else {
        return exit_codes::INVALID;
    };
    let env = &loaded.env;
    let result = match crate::runtime() {
        Ok(rt) => rt.block_on(operations::commit(env, plan, wait)),
        Err(e) => return crate::internal(io, &e),
    };
    match result {
        Ok(groups) => print_committed(&groups, json, io),
        Err(e) => run_failed(io, &e),
    }
}

/// Prints what `commit` did.
pub(crate) fn print_committed(groups: &[Committed], json: bool, io: &mut crate::Io<'_>) -> u8 {
    if json {
        crate::print_json(io, &groups);
    } else {
        for c in groups {
            let _ = writeln!(
                io.stdout,
                "group {}: taken over at site {} (point {}, writer epoch {}); the old source is fenced; not protected until `lifeboat reprotect`",
                c.group, c.site, c.point, c.epoch
            );
        }
    }
    exit_codes::OK
}

/// `lifeboat reprotect PLAN`: the committed groups replicate back to the plan's other site.
pub fn reprotect(loaded: &Loaded, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let Some(ResolvedPlan { plan, path }) = &loaded.plan else {
        return exit_codes::INVALID;
    };
    let env = &loaded.env;
    let result = with_progress(io, json, async |observe, _controls| {
        lifeboat_orchestrator::lifecycle::reprotect(env, plan, path, None, observe).await
    });
    match result {
        Ok(r) => print_reprotected(&r, json, io),
        Err(e) => run_failed(io, &e),
    }
}

/// Prints what `reprotect` did.
pub(crate) fn print_reprotected(r: &ReprotectReport, json: bool, io: &mut crate::Io<'_>) -> u8 {
    if json {
        crate::print_json(io, r);
        return exit_codes::OK;
    }
    for g in &r.groups {
        let _ = writeln!(
            io.stdout,
            "group {}: protected at {}, replicating to {} (run {}): {}; first point {} shipped {} of {}",
            g.group,
            g.site,
            g.replicate_to,
            r.run,
            if g.full_seed {
                format!("{} held none of its disks, a full seed", g.replicate_to)
            } else {
                format!(
                    "{} hashed {} it already held",
                    g.replicate_to,
                    crate::replication::mib(g.seed.disk_bytes)
                )
            },
            g.point,
            crate::replication::mib(g.shipped_bytes),
            crate::replication::mib(g.disk_bytes),
        );
    }
    for g in &r.already {
        let _ = writeln!(io.stdout, "group {g}: protected already");
    }
    exit_codes::OK
}

/// `lifeboat disable VM [--purge]` and `lifeboat enable VM`.
pub fn set_enabled(
    loaded: &Loaded,
    vm: &str,
    enabled: bool,
    purge: bool,
    json: bool,
    io: &mut crate::Io<'_>,
) -> u8 {
    use lifeboat_orchestrator::lifecycle;
    let env = &loaded.env;
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => return crate::internal(io, &e),
    };
    let placed = match rt.block_on(lifecycle::set_enabled(env, vm, enabled)) {
        // Purging the points of a VM disabled earlier is what --purge is for.
        Ok((p, changed)) if changed || purge => p,
        Ok(_) => {
            let _ = writeln!(
                io.stderr,
                "error: VM `{vm}` is {} already",
                if enabled { "protected" } else { "disabled" }
            );
            return exit_codes::FAILED;
        }
        Err(e) => return run_failed(io, &e),
    };
    let mut purged = None;
    if purge {
        // The purge acts on the groups as they are now: the VM just disabled.
        let mut after = match load(&loaded.config, loaded.state.as_deref(), None, json, io) {
            Ok(l) => l,
            Err(code) => return code,
        };
        if let Err(e) = rt.block_on(lifecycle::place(&mut after.env)) {
            return run_failed(io, &e);
        }
        match rt.block_on(lifecycle::purge(&after.env, vm)) {
            Ok(p) => purged = Some(p),
            Err(e) => return run_failed(io, &e),
        }
    }
    if json {
        crate::print_json(
            io,
            &serde_json::json!({
                "vm": vm,
                "group": placed.group,
                "protected": enabled,
                "disabled": placed.disabled,
                "purged_points": purged.as_ref().map(|p| p.1),
            }),
        );
    } else if enabled {
        let _ = writeln!(
            io.stdout,
            "VM {vm} (group {}): protected again from its next cycle",
            placed.group
        );
    } else {
        let _ = writeln!(
            io.stdout,
            "VM {vm} (group {}): no longer protected; {}",
            placed.group,
            match &purged {
                Some((g, n)) => format!("{n} point(s) of group {g} deleted (GC frees their data)"),
                None => "its points stay until retention removes them".into(),
            }
        );
    }
    exit_codes::OK
}

/// `lifeboat approve RUN`.
pub fn approve(loaded: &Loaded, run: &str, by: &str, io: &mut crate::Io<'_>) -> u8 {
    match operations::approve(&loaded.env, run, by) {
        Ok(message) => {
            let _ = writeln!(io.stdout, "run {run}: approved \"{message}\" as {by}");
            exit_codes::OK
        }
        Err(e) => run_failed(io, &e),
    }
}

/// `lifeboat cancel RUN`.
pub fn cancel(loaded: &Loaded, run: &str, io: &mut crate::Io<'_>) -> u8 {
    match operations::cancel(&loaded.env, run) {
        Ok(()) => {
            let _ = writeln!(
                io.stdout,
                "run {run} cancelled; `lifeboat cleanup` undoes what it did"
            );
            exit_codes::OK
        }
        Err(e) => run_failed(io, &e),
    }
}

/// `lifeboat drill exec RUN -- COMMAND…`: runs a command inside a drill's network namespace,
/// where its copies answer at their test addresses (and production does not). Its output goes
/// where this command's goes; the exit code is the command's.
pub fn drill_exec(loaded: &Loaded, run: &str, command: &[String], io: &mut crate::Io<'_>) -> u8 {
    let ns = match operations::run_netns(&loaded.env, run) {
        Ok(Some(ns)) if ns.exists() => ns,
        Ok(_) => {
            let _ = writeln!(
                io.stderr,
                "error: run {run} has no network namespace: only a drill isolated in one (`network.test_isolation = \"namespace\"`, the default) has, from its first VM's start until its cleanup"
            );
            return exit_codes::FAILED;
        }
        Err(e) => return run_failed(io, &e),
    };
    let argv = ns.wrap(command);
    let output = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::inherit())
        .output();
    match output {
        Ok(out) => {
            let _ = io.stdout.write_all(&out.stdout);
            let _ = io.stderr.write_all(&out.stderr);
            // A command killed by a signal has no code: 128 + the signal, as shells say.
            use std::os::unix::process::ExitStatusExt;
            out.status
                .code()
                .or_else(|| out.status.signal().map(|s| 128 + s))
                .map_or(exit_codes::FAILED, |c| c.clamp(0, 255) as u8)
        }
        Err(e) => {
            let _ = writeln!(io.stderr, "error: cannot run `ip netns exec`: {e}");
            exit_codes::FAILED
        }
    }
}

/// One line of `lifeboat runs list --output json`.
#[derive(Debug, serde::Serialize)]
struct RunLine<'a> {
    id: &'a str,
    plan: &'a str,
    operation: &'a str,
    status: &'a str,
    started_unix_ms: i64,
    rto_seconds: Option<f64>,
}

/// `lifeboat runs list`.
pub fn runs_list(loaded: &Loaded, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let env = &loaded.env;
    let records: Result<Vec<RunRecord>, Error> = env.journal().map_err(Error::from).and_then(|j| {
        j.runs()?
            .iter()
            .map(|(id, ..)| record::record(&j, id, &group_of(env)))
            .collect()
    });
    let records = match records {
        Ok(r) => r,
        Err(e) => return run_failed(io, &e),
    };
    if json {
        let lines: Vec<RunLine<'_>> = records
            .iter()
            .map(|r| RunLine {
                id: &r.id,
                plan: &r.plan,
                operation: r.operation.as_str(),
                status: &r.status,
                started_unix_ms: r.started_unix_ms,
                rto_seconds: r.rto_seconds,
            })
            .collect();
        crate::print_json(io, &lines);
        return exit_codes::OK;
    }
    if records.is_empty() {
        let _ = writeln!(
            io.stdout,
            "no runs yet: `lifeboat failover PLAN --test` starts a drill"
        );
        return exit_codes::OK;
    }
    let _ = writeln!(
        io.stdout,
        "{:<16} {:<10} {:<10} {:<11} {:<24} RTO",
        "RUN", "PLAN", "OPERATION", "STATUS", "STARTED"
    );
    for r in &records {
        let started = lifeboat_replication::clock::rfc3339(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(r.started_unix_ms.max(0) as u64),
        );
        let _ = writeln!(
            io.stdout,
            "{:<16} {:<10} {:<10} {:<11} {:<24} {}",
            r.id,
            r.plan,
            r.operation,
            r.status,
            started,
            secs(r.rto_seconds)
        );
    }
    exit_codes::OK
}

/// `lifeboat runs show RUN`.
pub fn runs_show(loaded: &Loaded, run: &str, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let env = &loaded.env;
    let rec = env.status(run).and_then(|_| {
        env.journal()
            .map_err(Error::from)
            .and_then(|j| record::record(&j, run, &group_of(env)))
    });
    let r = match rec {
        Ok(r) => r.with_placements(env.config.placements.values()),
        Err(e) => return run_failed(io, &e),
    };
    if json {
        crate::print_json(io, &r);
        return exit_codes::OK;
    }
    summary(&r, io);
    for h in &r.running_here {
        let _ = writeln!(
            io.stdout,
            "  group {} runs at {} from this run's disks, {}",
            h.group,
            h.site,
            match &h.replicate_to {
                Some(to) => format!("replicating to {to}"),
                None => format!("NOT PROTECTED (`lifeboat reprotect {}`)", r.plan),
            }
        );
    }
    let _ = writeln!(io.stdout, "groups:");
    for g in &r.groups {
        let _ = writeln!(
            io.stdout,
            "  {:<16} healthy at {}",
            g.name,
            secs(g.healthy_at_seconds)
        );
    }
    let _ = writeln!(io.stdout, "steps:");
    for s in &r.steps {
        match &s.name {
            Some(name) => {
                let _ = writeln!(io.stdout, "  {} ({name}) — {}", s.id, s.status);
            }
            None => {
                let _ = writeln!(io.stdout, "  {} — {}", s.id, s.status);
            }
        }
        for a in &s.attempts {
            let _ = writeln!(
                io.stdout,
                "    attempt {}: {} → {}{}",
                a.attempt,
                secs(Some(a.started_at_seconds)),
                secs(a.ended_at_seconds),
                a.error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            for line in &a.log {
                let _ = writeln!(io.stdout, "      | {line}");
            }
        }
        if let Some(e) = &s.undo_error {
            let _ = writeln!(io.stdout, "    undo failed: {e}");
        }
    }
    let _ = writeln!(io.stdout, "vms:");
    for v in &r.vms {
        let _ = writeln!(
            io.stdout,
            "  {:<10} pid {}, started at {}, stopped at {}, log {}",
            v.name,
            v.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            secs(v.started_at_seconds),
            secs(v.stopped_at_seconds),
            v.log.clone().unwrap_or_else(|| "-".into())
        );
    }
    let _ = writeln!(io.stdout, "timeline:");
    for (t, e) in &r.timeline {
        if let Some(line) = describe(&r.id, e) {
            let _ = writeln!(io.stdout, "  {:>8}  {line}", secs(Some(*t)));
        }
    }
    exit_codes::OK
}

/// `runs profile RUN`: what the run measured, as JSON (what `plan simulate --profile` reads).
pub fn runs_profile(loaded: &Loaded, run: &str, io: &mut crate::Io<'_>) -> u8 {
    match lifeboat_orchestrator::simulate::profile_of(&loaded.env, run) {
        Ok(p) => {
            crate::print_json(io, &p);
            exit_codes::OK
        }
        Err(e) => run_failed(io, &e),
    }
}
