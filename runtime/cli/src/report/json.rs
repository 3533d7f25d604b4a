//! One JSON document: the files read and every diagnostic with its position.

use std::io::{self, Write};

use lifeboat_loader::Validation;
use serde_json::{Value, json};

use super::{files, region};

/// Bumped when a field changes meaning or disappears; new fields may appear without a bump.
pub const JSON_FORMAT_VERSION: u32 = 1;

pub fn write(validation: &Validation, out: &mut dyn Write) -> io::Result<()> {
    let diagnostics: Vec<Value> = validation
        .diagnostics
        .iter()
        .map(|d| {
            let location = |span| {
                let r = region(validation, span);
                json!({
                    "file": r.file,
                    "line": r.start.line,
                    "column": r.start.column,
                    "end_line": r.end.line,
                    "end_column": r.end.column,
                    "snippet": r.snippet,
                })
            };
            let mut entry = json!({
                "severity": d.severity.as_str(),
                "rule": d.rule.name(),
                "message": d.message,
                "file": validation.sources.get(d.source).name(),
                "help": d.help,
            });
            if let Some(primary) = &d.primary {
                let mut loc = location(primary.span);
                loc["label"] = json!(primary.message);
                entry["location"] = loc;
            }
            entry["related"] = d
                .secondary
                .iter()
                .map(|s| {
                    let mut loc = location(s.span);
                    loc["label"] = json!(s.message);
                    loc
                })
                .collect();
            entry
        })
        .collect();
    let files: Vec<Value> = files(validation)
        .into_iter()
        .map(|(name, kind, id)| {
            let valid = !validation
                .diagnostics
                .iter()
                .any(|d| d.source == id && d.severity == lifeboat_plan::Severity::Error);
            json!({ "path": name, "kind": kind, "valid": valid })
        })
        .collect();
    let report = json!({
        "format_version": JSON_FORMAT_VERSION,
        "valid": validation.is_valid(),
        "error_count": validation.error_count(),
        "warning_count": validation.diagnostics.len() - validation.error_count(),
        "files": files,
        "diagnostics": diagnostics,
    });
    serde_json::to_writer_pretty(&mut *out, &report)?;
    writeln!(out)
}
