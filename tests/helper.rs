//! A helper process for the integration tests:
//!
//! - `lifeboat-test-helper cli ARGS…` runs the `lifeboat` command (so a test can kill -9 it);
//! - `lifeboat-test-helper pair-writer A B` writes numbered records to disk A and then to disk B,
//!   forever, syncing each before the next: B never holds a record A does not. Stop it to cut.
//! - `lifeboat-test-helper journal-writer DB RUN` appends step events to a run journal forever,
//!   printing each sequence number once its append returned (so a test can kill it -9).

use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("cli") => {
            let mut stdout = std::io::stdout().lock();
            let mut stderr = std::io::stderr().lock();
            let mut io = lifeboat::Io {
                stdout: &mut stdout,
                stderr: &mut stderr,
                stderr_is_terminal: std::io::stderr().is_terminal(),
                stdout_is_color_terminal: false,
            };
            let code = lifeboat::run(
                std::iter::once("lifeboat".to_string()).chain(args[2..].iter().cloned()),
                &mut io,
            );
            let _ = stdout.flush();
            ExitCode::from(code)
        }
        Some("pair-writer") if args.len() == 4 => pair_writer(&args[2], &args[3]),
        Some("journal-writer") if args.len() == 4 => journal_writer(&args[2], &args[3]),
        _ => {
            eprintln!(
                "usage: lifeboat-test-helper cli ARGS… | pair-writer A B | journal-writer DB RUN"
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
    if journal.replay(run).ok().flatten().is_none() && journal.begin(run, "p", "test").is_err() {
        return ExitCode::from(1);
    }
    let mut out = std::io::stdout().lock();
    for attempt in 1u32.. {
        let event = Event::StepStarted {
            step: format!("g/post/{attempt}"),
            attempt,
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
