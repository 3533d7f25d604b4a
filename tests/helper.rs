//! A helper process for the integration tests:
//!
//! - `lifeboat-test-helper cli ARGS…` runs the `lifeboat` command (so a test can kill -9 it);
//! - `lifeboat-test-helper demo-vm ARGS…` is the demo workload (`demo-vm`);
//! - `lifeboat-test-helper pair-writer A B` writes numbered records to disk A and then to disk B,
//!   forever, syncing each before the next: B never holds a record A does not. Stop it to cut.
//! - `lifeboat-test-helper journal-writer DB RUN` appends step events to a run journal forever,
//!   printing each sequence number once its append returned (so a test can kill it -9).
//! - `lifeboat-test-helper run-plan DB RUN EFFECTS [DIE_AFTER]` executes a small plan through the
//!   orchestrator's executor, dying abruptly right after journal event DIE_AFTER.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;

// glibc's malloc keeps memory per thread arena: a daemon running cycles on many threads held
// several times its live memory. jemalloc returns it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("cli") => {
            let mut stdout = std::io::stdout().lock();
            // Unlocked: log lines come from every thread.
            let mut stderr = std::io::stderr();
            let mut io = lifeboat_cli::Io {
                stdout: &mut stdout,
                stderr: &mut stderr,
                stderr_is_terminal: std::io::stderr().is_terminal(),
                stdout_is_color_terminal: false,
                server: &lifeboat_daemon::Daemon,
                program: vec![args[0].clone().into(), "cli".into()],
            };
            let code = lifeboat_cli::run(
                std::iter::once("lifeboat".to_string()).chain(args[2..].iter().cloned()),
                &mut io,
            );
            let _ = stdout.flush();
            ExitCode::from(code)
        }
        // The demo workload, so inventories in tests can boot VMs with this binary.
        Some("demo-vm") => ExitCode::from(lifeboat_demo_vm::run_from(args[1..].iter().cloned())),
        Some("pair-writer") if args.len() == 4 => pair_writer(&args[2], &args[3]),
        Some("journal-writer") if args.len() == 4 => journal_writer(&args[2], &args[3]),
        Some("run-plan") if args.len() >= 5 => run_plan(
            &args[2],
            &args[3],
            &args[4],
            args.get(5).and_then(|a| a.parse().ok()),
        ),
        _ => {
            eprintln!(
                "usage: lifeboat-test-helper cli ARGS… | pair-writer A B | journal-writer DB RUN | run-plan DB RUN EFFECTS [DIE_AFTER]"
            );
            ExitCode::from(2)
        }
    }
}

/// Record `i` goes to 4 KiB slot `i % slots` of each disk: its number, little-endian, repeated.
fn pair_writer(a: &str, b: &str) -> ExitCode {
    let open = |p: &str| OpenOptions::new().write(true).open(p);
    let (Ok(a), Ok(b)) = (open(a), open(b)) else {
        eprintln!("cannot open the disks");
        return ExitCode::from(1);
    };
    let slots = a.metadata().map(|m| m.len() / 4096).unwrap_or(1).max(1);
    let mut i: u64 = 1;
    loop {
        let record: Vec<u8> = i.to_le_bytes().repeat(512);
        let at = (i % slots) * 4096;
        if a.write_all_at(&record, at)
            .and_then(|()| a.sync_data())
            .is_err()
            || b.write_all_at(&record, at)
                .and_then(|()| b.sync_data())
                .is_err()
        {
            return ExitCode::from(1);
        }
        i += 1;
    }
}

fn journal_writer(db: &str, run: &str) -> ExitCode {
    use lifeboat_orchestrator::journal::{Event, Journal};
    let mut journal = match Journal::open(std::path::Path::new(db)) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if journal.replay(run).ok().flatten().is_none()
        && journal
            .begin(run, "p", lifeboat_orchestrator::journal::RunKind::Test)
            .is_err()
    {
        return ExitCode::from(1);
    }
    let mut out = std::io::stdout().lock();
    for attempt in 1u32.. {
        let event = Event::StepStarted {
            step: format!("g/post/{attempt}"),
            attempt,
            name: None,
        };
        match journal.append(run, &event) {
            Ok(seq) => {
                let _ = writeln!(out, "{seq}");
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

/// `run-plan DB RUN EFFECTS [DIE_AFTER]`: executes a small fixed plan (3 groups of 2 steps; one
/// step fails its first attempt and has a retry) with a runner whose only effect is appending its
/// idempotency key to EFFECTS once. With DIE_AFTER, aborts right after journal event DIE_AFTER.
fn run_plan(db: &str, run: &str, effects: &str, die_after: Option<i64>) -> ExitCode {
    use lifeboat_orchestrator::compile::{GroupRun, Phase, RunPlan, StepRun};
    use lifeboat_orchestrator::journal::Journal;
    use lifeboat_orchestrator::run::{Outcome, StepError, StepRunner, execute};

    struct Effects(std::path::PathBuf);
    #[async_trait::async_trait]
    impl StepRunner for Effects {
        async fn run(
            &self,
            step: &StepRun,
            _attempt: u32,
            key: &str,
        ) -> Result<serde_json::Value, StepError> {
            // Every call, deduplicated or not, so a test sees a step run twice.
            let mut calls = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.0.with_extension("calls"))
                .map_err(|e| StepError::Failed(e.to_string()))?;
            writeln!(calls, "{key}").map_err(|e| StepError::Failed(e.to_string()))?;
            calls
                .sync_all()
                .map_err(|e| StepError::Failed(e.to_string()))?;
            if step.id == "g2/post/0" && key.ends_with("/1") {
                return Err(StepError::Failed("first attempt fails".into()));
            }
            // An idempotent host call: applied once per key.
            let done = std::fs::read_to_string(&self.0).unwrap_or_default();
            if !done.lines().any(|l| l == key) {
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.0)
                    .map_err(|e| StepError::Failed(e.to_string()))?;
                writeln!(f, "{key}").map_err(|e| StepError::Failed(e.to_string()))?;
                f.sync_all().map_err(|e| StepError::Failed(e.to_string()))?;
            }
            Ok(serde_json::json!({ "key": key }))
        }
    }
    let step = |id: String, phase: Phase, retries: u32| StepRun {
        name: id.clone(),
        group: id.split('/').next().unwrap_or_default().to_string(),
        id,
        phase,
        uses: lifeboat_plan::plan::PluginRef::Builtin("wait".into()),
        config: serde_json::json!({}),
        timeout: std::time::Duration::from_secs(5),
        retries,
        sha256: None,
        allow: Default::default(),
    };
    let plan = RunPlan {
        plan: "p".into(),
        operation: lifeboat_plan::plan::Operation::Test,
        groups: (1..=3)
            .map(|g| GroupRun {
                name: format!("g{g}"),
                vms: vec![],
                steps: vec![
                    step(format!("g{g}/boot"), Phase::Boot, 0),
                    step(format!("g{g}/post/0"), Phase::Post, 1),
                ],
            })
            .collect(),
    };
    let Ok(mut journal) = Journal::open(std::path::Path::new(db)) else {
        return ExitCode::from(1);
    };
    let observe = |_: &lifeboat_orchestrator::journal::Event, seq: i64| {
        if Some(seq) == die_after {
            std::process::abort(); // as abrupt as kill -9: no cleanup, nothing flushed
        }
    };
    let runner = Effects(effects.into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match rt.map(|rt| rt.block_on(execute(&mut journal, run, &plan, &runner, &observe, None))) {
        Ok(Ok(Outcome::Succeeded)) => ExitCode::SUCCESS,
        Ok(Ok(Outcome::Cancelled { step, reason })) => {
            eprintln!("cancelled at {step}: {reason}");
            ExitCode::from(1)
        }
        Ok(Ok(Outcome::Failed { step, error })) => {
            eprintln!("step {step} failed: {error}");
            ExitCode::from(3)
        }
        Ok(Err(e)) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
