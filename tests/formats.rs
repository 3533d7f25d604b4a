//! The machine-readable outputs parse with standard parsers and agree with each other.

use std::collections::HashMap;

use lifeboat_cli::exit_codes;

use crate::support::{lifeboat, path};

fn run(case: &str, format: &str) -> (u8, String) {
    let config = path("plans/invalid/lifeboat.toml");
    let plan = path(case);
    let out = lifeboat(&[
        "--config", &config, "plan", "validate", &plan, "--format", format,
    ]);
    (out.code, out.stdout)
}

/// (file, line, column, rule) of every diagnostic, from the JSON report.
fn json_positions(case: &str) -> Vec<(String, u64, u64, String)> {
    let (code, out) = run(case, "json");
    assert_eq!(code, exit_codes::INVALID);
    let report: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(report["format_version"], 1);
    assert_eq!(report["valid"], false);
    report["diagnostics"]
        .as_array()
        .expect("diagnostics array")
        .iter()
        .map(|d| {
            (
                d["location"]["file"].as_str().expect("file").to_string(),
                d["location"]["line"].as_u64().expect("line"),
                d["location"]["column"].as_u64().expect("column"),
                d["rule"].as_str().expect("rule").to_string(),
            )
        })
        .collect()
}

const CASE: &str = "plans/invalid/many-errors.toml";

#[test]
fn json_reports_every_problem_with_its_position() {
    let positions = json_positions(CASE);
    assert_eq!(positions.len(), 8, "{positions:?}");
    // `sorce = "east"` is on line 7 of the case, column 1.
    assert!(
        positions.contains(&(CASE.to_string(), 7, 1, "unknown-key".to_string())),
        "{positions:?}"
    );
    assert!(positions.iter().any(|p| p.3 == "vm-in-two-groups"));
}

#[test]
fn sarif_parses_and_matches_json() {
    let (code, out) = run(CASE, "sarif");
    assert_eq!(code, exit_codes::INVALID);
    let sarif: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(sarif["version"], "2.1.0");
    let run = &sarif["runs"][0];
    let rules: Vec<&str> = run["tool"]["driver"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    let results = run["results"].as_array().expect("results");
    let mut from_sarif: Vec<(String, u64, u64, String)> = results
        .iter()
        .map(|r| {
            let rule = r["ruleId"].as_str().expect("ruleId");
            let index = r["ruleIndex"].as_u64().expect("ruleIndex") as usize;
            assert_eq!(rules[index], rule, "ruleIndex points at the rule");
            assert_eq!(r["level"], "error");
            let loc = &r["locations"][0]["physicalLocation"];
            (
                loc["artifactLocation"]["uri"]
                    .as_str()
                    .expect("uri")
                    .to_string(),
                loc["region"]["startLine"].as_u64().expect("line"),
                loc["region"]["startColumn"].as_u64().expect("column"),
                rule.to_string(),
            )
        })
        .collect();
    let mut from_json = json_positions(CASE);
    from_sarif.sort();
    from_json.sort();
    assert_eq!(from_sarif, from_json);
}

#[test]
fn junit_parses_with_one_failure_per_error() {
    let (code, out) = run(CASE, "junit");
    assert_eq!(code, exit_codes::INVALID);
    let doc = roxmltree::Document::parse(&out).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 2, "one test case per file: inventory and plan");
    let failures: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("failure"))
        .collect();
    assert_eq!(failures.len(), json_positions(CASE).len());
    assert_eq!(root.attribute("failures"), Some("1"));
    let plan_case = cases
        .iter()
        .find(|c| c.attribute("name") == Some(CASE))
        .expect("a test case named after the plan");
    assert!(plan_case.children().any(|c| c.has_tag_name("failure")));
    let text = failures[0].text().expect("failure body");
    assert!(text.starts_with(&format!("{CASE}:")), "{text}");
}

/// A workflow command as GitHub's runner reads it: `::NAME k=v,k=v::MESSAGE`.
fn parse_workflow_command(line: &str) -> Option<(String, HashMap<String, String>, String)> {
    fn unescape(s: &str) -> String {
        s.replace("%0D", "\r")
            .replace("%0A", "\n")
            .replace("%3A", ":")
            .replace("%2C", ",")
            .replace("%25", "%")
    }
    let rest = line.strip_prefix("::")?;
    let (head, message) = rest.split_once("::")?;
    let (name, props) = head.split_once(' ').unwrap_or((head, ""));
    let props = props
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').expect("key=value");
            (k.to_string(), unescape(v))
        })
        .collect();
    Some((name.to_string(), props, unescape(message)))
}

#[test]
fn github_annotations_parse_and_point_at_each_problem() {
    let (code, out) = run(CASE, "github");
    assert_eq!(code, exit_codes::INVALID);
    let mut from_github: Vec<(String, u64, u64, String)> = out
        .lines()
        .filter_map(parse_workflow_command)
        .map(|(name, props, message)| {
            assert_eq!(name, "error");
            assert!(!message.is_empty());
            let title = &props["title"];
            (
                props["file"].clone(),
                props["line"].parse().expect("line"),
                props["col"].parse().expect("col"),
                title
                    .strip_prefix("lifeboat ")
                    .expect("title names the rule")
                    .to_string(),
            )
        })
        .collect();
    let mut from_json = json_positions(CASE);
    from_github.sort();
    from_json.sort();
    assert_eq!(from_github, from_json);
}

#[test]
fn valid_plans_give_empty_reports_in_every_format() {
    let config = path("lifeboat.toml");
    let plan = path("plans/erp.toml");
    for format in ["json", "junit", "sarif", "github"] {
        let out = lifeboat(&[
            "--config", &config, "plan", "validate", &plan, "--format", format,
        ]);
        assert_eq!(out.code, exit_codes::OK, "{format}: {}", out.stdout);
        match format {
            "json" => {
                let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
                assert_eq!(v["valid"], true);
                assert_eq!(v["diagnostics"].as_array().map(Vec::len), Some(0));
            }
            "sarif" => {
                let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
                assert_eq!(v["runs"][0]["results"].as_array().map(Vec::len), Some(0));
            }
            "junit" => {
                let doc = roxmltree::Document::parse(&out.stdout).expect("xml");
                assert_eq!(doc.root_element().attribute("failures"), Some("0"));
            }
            _ => assert!(
                out.stdout.lines().all(|l| !l.starts_with("::")),
                "{}",
                out.stdout
            ),
        }
    }
}

#[test]
fn output_json_selects_the_json_report() {
    let config = path("lifeboat.toml");
    let out = lifeboat(&["--config", &config, "--output", "json", "plan", "validate"]);
    assert_eq!(out.code, exit_codes::OK);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["valid"], true);
}
