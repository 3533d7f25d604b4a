//! SARIF 2.1.0, the format code-scanning dashboards ingest.

use std::io::{self, Write};

use lifeboat_loader::Validation;
use lifeboat_plan::{Rule, Severity, Span};
use serde_json::{Value, json};

use super::region;

/// A relative path as a SARIF URI reference: percent-encode what a URI cannot hold.
fn uri(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            b'\\' => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn location(validation: &Validation, span: Span, message: Option<&str>) -> Value {
    let r = region(validation, span);
    let mut loc = json!({
        "physicalLocation": {
            "artifactLocation": { "uri": uri(r.file) },
            "region": {
                "startLine": r.start.line,
                "startColumn": r.start.column,
                "endLine": r.end.line,
                "endColumn": r.end.column,
                "snippet": { "text": r.snippet },
            }
        }
    });
    if let Some(message) = message {
        loc["message"] = json!({ "text": message });
    }
    loc
}

pub fn write(validation: &Validation, out: &mut dyn Write) -> io::Result<()> {
    let rules: Vec<Value> = Rule::ALL
        .iter()
        .map(|r| {
            json!({
                "id": r.name(),
                "shortDescription": { "text": r.summary() },
                "help": { "text": format!("See docs/reference/diagnostics.md, section `{}`.", r.name()) },
            })
        })
        .collect();
    let results: Vec<Value> = validation
        .diagnostics
        .iter()
        .map(|d| {
            let mut text = d.message.clone();
            if let Some(help) = &d.help {
                text.push_str(&format!(" (help: {help})"));
            }
            let locations = match &d.primary {
                Some(p) => vec![location(validation, p.span, Some(&p.message))],
                None => vec![json!({
                    "physicalLocation": {
                        "artifactLocation": { "uri": uri(validation.sources.get(d.source).name()) }
                    }
                })],
            };
            json!({
                "ruleId": d.rule.name(),
                "ruleIndex": Rule::ALL.iter().position(|r| *r == d.rule),
                "level": match d.severity { Severity::Error => "error", Severity::Warning => "warning" },
                "message": { "text": text },
                "locations": locations,
                "relatedLocations": d.secondary.iter().enumerate().map(|(i, s)| {
                    let mut loc = location(validation, s.span, Some(&s.message));
                    loc["id"] = json!(i);
                    loc
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let artifacts: Vec<Value> = super::files(validation)
        .into_iter()
        .map(|(name, _, _)| json!({ "location": { "uri": uri(name) } }))
        .collect();
    let report = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "lifeboat",
                    "semanticVersion": env!("CARGO_PKG_VERSION"),
                    "rules": rules,
                }
            },
            "columnKind": "unicodeCodePoints",
            "artifacts": artifacts,
            "results": results,
        }]
    });
    serde_json::to_writer_pretty(&mut *out, &report)?;
    writeln!(out)
}
