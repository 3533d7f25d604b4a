//! Every invalid plan and inventory in `plans/invalid/` against its expected diagnostics.
//!
//! Each case `NAME.toml` starts with `# expect: RULE` and sits next to `NAME.err`, the exact human
//! output. Plans are checked against `plans/invalid/lifeboat.toml`; files under `inventory/` are
//! checked as the inventory. `LIFEBOAT_BLESS=1 cargo test` rewrites the `.err` files.

use std::fs;
use std::path::{Path, PathBuf};

use lifeboat_cli::exit_codes;

use crate::support::{bless, lifeboat, path, root};

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(dir)
        .expect("case folder exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && !p.ends_with("lifeboat.toml"))
        .collect();
    cases.sort();
    cases
}

fn expected_rule(case: &Path) -> String {
    let text = fs::read_to_string(case).expect("case readable");
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} must start with `# expect: RULE`", case.display()))
        .trim()
        .to_string()
}

fn check_cases(dir: &str, args_for: impl Fn(&str) -> Vec<String>) -> usize {
    let dir = root().join(dir);
    let mut failures = Vec::new();
    let cases = cases(&dir);
    for case in &cases {
        let case_path = case.display().to_string();
        let args = args_for(&case_path);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let human = lifeboat(&args);
        let name = case
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if human.code != exit_codes::INVALID {
            failures.push(format!(
                "{name}: exit code {} (want {})\n{}",
                human.code,
                exit_codes::INVALID,
                human.stdout
            ));
            continue;
        }
        // The rule the case exists for is reported, at a position inside the case file.
        let mut json_args = args.clone();
        json_args.extend(["--format", "json"]);
        let json: serde_json::Value =
            serde_json::from_str(&lifeboat(&json_args).stdout).expect("json output");
        let rule = expected_rule(case);
        let relative = case
            .strip_prefix(root())
            .expect("under root")
            .display()
            .to_string();
        let hit = json["diagnostics"]
            .as_array()
            .expect("diagnostics")
            .iter()
            .any(|d| d["rule"] == rule.as_str() && d["file"] == relative.as_str());
        if !hit {
            failures.push(format!(
                "{name}: no `{rule}` diagnostic in {relative}\n{}",
                human.stdout
            ));
        }
        let golden = case.with_extension("err");
        if bless() {
            fs::write(&golden, &human.stdout).expect("write golden");
            continue;
        }
        match fs::read_to_string(&golden) {
            Ok(want) if want == human.stdout => {}
            Ok(want) => failures.push(format!(
                "{name}: output differs from {}\n--- want\n{want}\n--- got\n{}",
                golden.display(),
                human.stdout
            )),
            Err(_) => failures.push(format!(
                "{name}: no golden file {} (run with LIFEBOAT_BLESS=1)",
                golden.display()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    cases.len()
}

#[test]
fn invalid_plans_report_their_diagnostics() {
    let inventory = path("plans/invalid/lifeboat.toml");
    let n = check_cases("plans/invalid", |case| {
        vec![
            "--config".into(),
            inventory.clone(),
            "plan".into(),
            "validate".into(),
            case.into(),
        ]
    });
    assert!(n >= 40, "only {n} invalid plan cases");
}

#[test]
fn invalid_inventories_report_their_diagnostics() {
    let n = check_cases("plans/invalid/inventory", |case| {
        vec![
            "--config".into(),
            case.into(),
            "plan".into(),
            "validate".into(),
        ]
    });
    assert!(n >= 20, "only {n} invalid inventory cases");
}

#[test]
fn golden_files_have_cases() {
    // A stale `.err` whose case was deleted would hide nothing, but it misleads readers.
    for dir in ["plans/invalid", "plans/invalid/inventory"] {
        for entry in fs::read_dir(root().join(dir)).expect("folder") {
            let p = entry.expect("entry").path();
            if p.extension().is_some_and(|e| e == "err") {
                assert!(
                    p.with_extension("toml").exists(),
                    "{} has no case",
                    p.display()
                );
            }
        }
    }
}
