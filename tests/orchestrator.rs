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
