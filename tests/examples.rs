//! The example inventory and plans in the repository are valid, as the README promises.

use lifeboat_cli::exit_codes;

use crate::support::{lifeboat, path, root};

fn example_plans() -> Vec<String> {
    let mut plans: Vec<String> = std::fs::read_dir(root().join("plans"))
        .expect("plans/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.display().to_string())
        .collect();
    plans.sort();
    plans
}

#[test]
fn example_plans_validate() {
    let plans = example_plans();
    assert!(plans.len() >= 2, "expected example plans in plans/");
    let config = path("lifeboat.toml");
    let mut args = vec!["--config", config.as_str(), "plan", "validate"];
    args.extend(plans.iter().map(String::as_str));
    let out = lifeboat(&args);
    assert_eq!(out.code, exit_codes::OK, "{}", out.stdout);
    assert_eq!(
        out.stdout,
        format!("ok: inventory and {} plans valid\n", plans.len())
    );
}

#[test]
fn validate_without_plans_checks_every_plan_beside_the_inventory() {
    let config = path("lifeboat.toml");
    let out = lifeboat(&["--config", &config, "plan", "validate"]);
    assert_eq!(out.code, exit_codes::OK, "{}", out.stdout);
    assert_eq!(
        out.stdout,
        format!("ok: inventory and {} plans valid\n", example_plans().len())
    );
}

#[test]
fn a_missing_inventory_is_reported_not_assumed() {
    let out = lifeboat(&["--config", "/nonexistent/lifeboat.toml", "plan", "validate"]);
    assert_eq!(out.code, exit_codes::INVALID);
    assert!(
        out.stdout.contains(
            "error[io]: cannot read inventory `/nonexistent/lifeboat.toml`: no such file"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn a_missing_plan_file_is_reported_and_the_others_still_checked() {
    let config = path("lifeboat.toml");
    let erp = path("plans/erp.toml");
    let out = lifeboat(&[
        "--config",
        &config,
        "plan",
        "validate",
        &erp,
        "plans/nope.toml",
    ]);
    assert_eq!(out.code, exit_codes::INVALID);
    assert!(
        out.stdout
            .contains("cannot read plan `plans/nope.toml`: no such file"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("invalid: 1 error in 1 of 3 files"),
        "{}",
        out.stdout
    );
}

#[test]
fn usage_errors_have_their_own_exit_code() {
    let out = lifeboat(&["plan", "validate", "--format", "xml"]);
    assert_eq!(out.code, exit_codes::USAGE);
    assert!(out.stderr.contains("invalid value 'xml'"), "{}", out.stderr);
    let out = lifeboat(&["plan", "frobnicate"]);
    assert_eq!(out.code, exit_codes::USAGE);
    let out = lifeboat(&["--help"]);
    assert_eq!(out.code, exit_codes::OK);
    assert!(out.stdout.contains("Exit codes"), "{}", out.stdout);
}

#[test]
fn exit_codes_are_documented_in_the_cli_reference() {
    let readme = std::fs::read_to_string(root().join("docs/reference/cli.md"))
        .expect("docs/reference/cli.md");
    // Every code of the one table, by the first word of its meaning.
    for &(code, meaning) in exit_codes::TABLE {
        let meaning = meaning.split_whitespace().next().unwrap_or(meaning);
        let row = format!("| {code} |");
        let line = readme.lines().find(|l| l.starts_with(&row));
        assert!(
            line.is_some_and(|l| l.to_lowercase().contains(meaning)),
            "docs/reference/cli.md must document exit code {code} ({meaning}) as a table row"
        );
    }
}

#[test]
fn every_rule_is_documented() {
    let doc = std::fs::read_to_string(root().join("docs/reference/diagnostics.md"))
        .expect("docs/reference/diagnostics.md");
    for rule in lifeboat_plan::Rule::ALL {
        assert!(
            doc.contains(&format!("### `{}`", rule.name())),
            "docs/reference/diagnostics.md lacks `{}`",
            rule.name()
        );
    }
}
