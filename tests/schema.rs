//! The JSON Schemas checked into `schemas/` are the ones `lifeboat plan schema` prints, and they
//! agree with the validator on the examples.

use std::fs;

use lifeboat_cli::exit_codes;

use crate::support::{bless, lifeboat, root};

fn check_drift(args: &[&str], file: &str) {
    let out = lifeboat(args);
    assert_eq!(out.code, exit_codes::OK, "{}", out.stderr);
    let path = root().join(file);
    if bless() {
        fs::write(&path, &out.stdout).expect("write schema");
        return;
    }
    let committed = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == out.stdout,
        "{file} is out of date: run `cargo run -p lifeboat -- {} > {file}` (or LIFEBOAT_BLESS=1 cargo test)",
        args.join(" ")
    );
}

#[test]
fn plan_schema_has_not_drifted() {
    check_drift(&["plan", "schema"], "schemas/plan.schema.json");
}

#[test]
fn openapi_document_has_not_drifted() {
    check_drift(&["openapi"], "docs/openapi.json");
}

#[test]
fn inventory_schema_has_not_drifted() {
    check_drift(
        &["plan", "schema", "--inventory"],
        "schemas/inventory.schema.json",
    );
}

fn toml_as_json(path: &std::path::Path) -> serde_json::Value {
    let text = fs::read_to_string(path).expect("readable");
    let value: toml::Value = toml::from_str(&text).expect("valid TOML");
    serde_json::to_value(value).expect("TOML converts to JSON")
}

fn validator(file: &str) -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(root().join(file)).expect("schema"))
            .expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

#[test]
fn examples_conform_to_the_schemas() {
    let plans = validator("schemas/plan.schema.json");
    for entry in fs::read_dir(root().join("plans")).expect("plans/") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|e| e == "toml") {
            let doc = toml_as_json(&p);
            let errors: Vec<String> = plans.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", p.display());
        }
    }
    let inventory = validator("schemas/inventory.schema.json");
    let doc = toml_as_json(&root().join("lifeboat.toml"));
    let errors: Vec<String> = inventory.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "lifeboat.toml: {errors:?}");
}

#[test]
fn the_schema_rejects_unknown_keys_like_the_validator() {
    let plans = validator("schemas/plan.schema.json");
    for case in [
        "unknown-key-top",
        "unknown-key-step",
        "unknown-key-group",
        "unknown-key-allow",
    ] {
        let doc = toml_as_json(&root().join(format!("plans/invalid/{case}.toml")));
        assert!(!plans.is_valid(&doc), "the schema accepts {case}");
    }
    let inventory = validator("schemas/inventory.schema.json");
    let doc = toml_as_json(&root().join("plans/invalid/inventory/unknown-key-vm.toml"));
    assert!(
        !inventory.is_valid(&doc),
        "the schema accepts unknown-key-vm"
    );
}
