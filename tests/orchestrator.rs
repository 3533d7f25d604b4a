//! The run journal under kill -9: every append that returned survives, nothing is torn.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use lifeboat_orchestrator::journal::Journal;

#[test]
fn kill_9_never_loses_or_tears_a_journal_append() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let mut acknowledged = 0i64;
    for round in 0..6u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lifeboat-test-helper"))
            .arg("journal-writer")
            .arg(&db)
            .arg("r1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.parse::<i64>().ok())
                .last()
        });
        std::thread::sleep(Duration::from_millis(50 + 37 * round));
        child.kill().unwrap(); // SIGKILL, wherever it is
        child.wait().unwrap();
        let last = reader.join().unwrap();
        let journal = Journal::open(&db).unwrap();
        let events = journal.events("r1").unwrap();
        let seqs: Vec<i64> = events.iter().map(|(seq, _, _)| *seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "round {round}: gaps in the journal"
        );
        if let Some(last) = last {
            assert!(
                seqs.len() as i64 >= last,
                "round {round}: append {last} was acknowledged and is gone"
            );
            acknowledged = last;
        }
        // A run is recorded together with its first event, or not at all.
        assert_eq!(
            journal.replay("r1").unwrap().is_some(),
            !seqs.is_empty(),
            "round {round}"
        );
    }
    assert!(acknowledged > 6, "the writer hardly wrote: {acknowledged}");
}

fn run_plan(
    db: &std::path::Path,
    effects: &std::path::Path,
    die_after: Option<i64>,
) -> std::process::ExitStatus {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeboat-test-helper"));
    cmd.arg("run-plan")
        .arg(db)
        .arg("r1")
        .arg(effects)
        .stderr(Stdio::null());
    if let Some(n) = die_after {
        cmd.arg(n.to_string());
    }
    cmd.status().unwrap()
}

/// Kill the orchestrator right after each journal point of a short plan, then resume: the run
/// completes, and no step's effect is applied twice.
#[test]
fn a_run_killed_at_any_journal_point_resumes_without_repeating_a_step() {
    let dir = tempfile::tempdir().unwrap();
    // A whole run first, to learn how many journal points there are and the expected effects.
    let (db, effects) = (dir.path().join("full.db"), dir.path().join("full.effects"));
    assert!(run_plan(&db, &effects, None).success());
    let points = Journal::open(&db).unwrap().events("r1").unwrap().len() as i64;
    let expected = std::fs::read_to_string(&effects).unwrap();
    // 3 groups × (boot, post); post of g2 fails once and is retried under a new key.
    assert_eq!(expected.lines().count(), 6, "{expected}");
    assert!(expected.contains("r1/g2/post/0/2") && !expected.contains("r1/g2/post/0/1"));
    for n in 1..points {
        let (db, effects) = (
            dir.path().join(format!("{n}.db")),
            dir.path().join(format!("{n}.effects")),
        );
        let died = run_plan(&db, &effects, Some(n));
        assert!(!died.success(), "journal point {n}: the run did not die");
        assert!(
            run_plan(&db, &effects, None).success(),
            "journal point {n}: resume failed"
        );
        let replay = Journal::open(&db).unwrap().replay("r1").unwrap().unwrap();
        assert_eq!(
            replay.status,
            lifeboat_orchestrator::journal::RunStatus::Succeeded,
            "journal point {n}"
        );
        let got = std::fs::read_to_string(&effects).unwrap_or_default();
        let mut got_lines: Vec<&str> = got.lines().collect();
        let mut want: Vec<&str> = expected.lines().collect();
        got_lines.sort_unstable();
        want.sort_unstable();
        assert_eq!(
            got_lines, want,
            "journal point {n}: effects differ (a step ran twice or not at all)"
        );
        // Each attempt was called once: the run died at journal points, never inside a step, so
        // nothing finished may run again and an interrupted attempt resumes under its own key.
        let calls = std::fs::read_to_string(effects.with_extension("calls")).unwrap();
        let mut calls: Vec<&str> = calls.lines().collect();
        calls.sort_unstable();
        let mut want_calls = want.clone();
        want_calls.push("r1/g2/post/0/1");
        want_calls.sort_unstable();
        assert_eq!(
            calls, want_calls,
            "journal point {n}: a step was called twice"
        );
    }
}
