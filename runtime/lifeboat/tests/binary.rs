//! The `lifeboat` binary itself, as a shell runs it: through real pipes. (`cargo test` builds
//! the binary for these tests, with the workspace's features; CI runs the demo with it.)

#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const LIFEBOAT: &str = env!("CARGO_BIN_EXE_lifeboat");

/// Regression: `lifeboat plan schema | head` printed `error: Broken pipe` and exited 1. A reader
/// that stops early is not an error: the command exits quietly, as ripgrep does.
#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let mut child = Command::new(LIFEBOAT)
        .args(["plan", "schema"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let (status, stderr) = finish(child, "`lifeboat plan schema` with its reader gone");
    assert!(first.starts_with(b"{"), "{first:?}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn shell_completions_and_a_man_page() {
    let run = |args: &[&str]| {
        let out = Command::new(LIFEBOAT).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("complete -F") && bash.contains("failover"),
        "{bash}"
    );
    let zsh = run(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef lifeboat"), "{zsh}");
    let man = run(&["man"]);
    assert!(
        man.contains(".TH lifeboat") && man.contains("failover"),
        "{man}"
    );
    // The exit codes in --help come from the one table in exit_codes.rs.
    let help = run(&["--help"])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains("Exit codes: 0 ok") && help.contains("6 fenced by another writer"),
        "{help}"
    );
}

/// Regression: with stderr locked by the main thread for the whole run, a log line written from
/// any other thread waited forever. `-vv replicate` logs from the runtime's workers and must end.
#[test]
fn log_lines_from_worker_threads_reach_stderr() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lifeboat.toml"),
        r#"version = 1
[sites.east]
store = "east"
compute = "process"
replicate_to = "west"
[sites.west]
store = "west"
compute = "process"
[policies.p]
crash_interval = "10s"
retention = "1h"
rpo_threshold = "1m"
[vms.a]
site = "east"
policy = "p"
disks.os = "a.img"
"#,
    )
    .unwrap();
    std::fs::File::create(dir.path().join("a.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let child = Command::new(LIFEBOAT)
        .args(["-vv", "replicate"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stderr) = finish(child, "`lifeboat -vv replicate`");
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("point committed"), "{stderr}");
}

/// Waits (at most a minute) for `child` to exit, reading its stderr meanwhile so a chatty
/// child never blocks on a full pipe; a child that does not exit is killed and the test fails.
fn finish(mut child: Child, what: &str) -> (ExitStatus, String) {
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).unwrap();
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{what} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}
