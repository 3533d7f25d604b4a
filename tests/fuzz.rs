//! Bad input never panics: random bytes, truncated and mutated plans all end in diagnostics.

use std::fs;

use lifeboat_plan::{Sources, check_inventory, check_plan, parse_inventory, parse_plan};
use proptest::prelude::*;

use crate::support::{lifeboat, root};

/// Parse and check `text` as a plan against the example inventory; every diagnostic must point
/// inside a file that exists, on character boundaries.
fn exercise(text: &str) -> usize {
    let inventory_text = fs::read_to_string(root().join("lifeboat.toml")).expect("inventory");
    let mut sources = Sources::new();
    let inv_id = sources.add("lifeboat.toml", inventory_text.clone());
    let plan_id = sources.add("plan.toml", text.to_string());
    let (inventory, _) = parse_inventory(inv_id, &inventory_text);
    let inventory = inventory.expect("example inventory parses");
    let (plan, mut diagnostics) = parse_plan(plan_id, text);
    if let Some(plan) = &plan {
        diagnostics.extend(check_plan(&inventory, plan, &sources));
    }
    diagnostics.extend(check_inventory(&inventory, &sources));
    for d in &diagnostics {
        for label in d.primary.iter().chain(&d.secondary) {
            let file = sources.get(label.span.source).text();
            assert!(label.span.end <= file.len(), "span past the end: {d:?}");
            assert!(
                file.is_char_boundary(label.span.start) && file.is_char_boundary(label.span.end),
                "{d:?}"
            );
        }
    }
    diagnostics.len()
}

#[test]
fn every_truncation_of_an_example_plan_is_handled() {
    let text = fs::read_to_string(root().join("plans/erp.toml")).expect("example");
    let full = exercise(&text);
    assert_eq!(full, 0, "the full example is valid");
    let mut reported = 0;
    for end in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
        if exercise(&text[..end]) > 0 {
            reported += 1;
        }
    }
    // Most prefixes cut a plan short of its required keys or mid-token.
    assert!(
        reported > text.len() / 2,
        "only {reported} of {} truncations reported",
        text.len()
    );
}

#[test]
fn truncated_files_render_in_every_format() {
    let text = fs::read_to_string(root().join("plans/erp.toml")).expect("example");
    let dir = std::env::temp_dir().join(format!("lifeboat-trunc-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let plan = dir.join("plan.toml");
    let config = root().join("lifeboat.toml").display().to_string();
    let plan_arg = plan.display().to_string();
    for end in (0..text.len())
        .step_by(37)
        .filter(|i| text.is_char_boundary(*i))
    {
        fs::write(&plan, &text[..end]).expect("write");
        for format in ["human", "json", "junit", "sarif", "github"] {
            let out = lifeboat(&[
                "--config", &config, "plan", "validate", &plan_arg, "--format", format,
            ]);
            assert!(
                out.code == 0 || out.code == 3,
                "{format} at {end}: exit {} {}",
                out.code,
                out.stderr
            );
        }
    }
    let bytes: Vec<u8> = vec![0xff, 0xfe, b'v', 0x00, 0x80];
    fs::write(&plan, bytes).expect("write");
    let out = lifeboat(&["--config", &config, "plan", "validate", &plan_arg]);
    assert_eq!(out.code, 3);
    assert!(out.stdout.contains("not UTF-8"), "{}", out.stdout);
    let _ = fs::remove_dir_all(&dir);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_text_never_panics(text in "\\PC{0,400}") {
        exercise(&text);
        let mut sources = Sources::new();
        let id = sources.add("x", text.clone());
        let _ = parse_inventory(id, &text);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        exercise(&text);
    }

    #[test]
    fn mutated_examples_never_panic(at in 0usize..2000, insert in "[\\[\\]{}=\",.\\n a-z0-9#'\\\\]{1,6}") {
        let text = fs::read_to_string(root().join("plans/erp.toml")).expect("example");
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) { at -= 1; }
        let mutated = format!("{}{}{}", &text[..at], insert, &text[at..]);
        exercise(&mutated);
    }

    #[test]
    fn deeply_nested_input_is_refused_not_overflowed(depth in 1usize..5000) {
        let text = format!("version = 1\nx = {}{}", "[".repeat(depth), "]".repeat(depth));
        exercise(&text);
    }
}
