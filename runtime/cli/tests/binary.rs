//! The `lifeboat` binary itself, as a shell runs it: through real pipes. (`cargo test` builds
//! the binary for these tests, with the workspace's features; CI runs the demo with it.)

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::process::{Command, Stdio};

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
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
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
