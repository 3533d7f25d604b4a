//! JUnit XML: one test case per file, one `<failure>` per error in it.

use std::io::{self, Write};

use lifeboat_loader::Validation;
use lifeboat_plan::Severity;

use super::{files, full_message, primary_region};

/// Escape text for XML content and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            // Characters XML 1.0 cannot carry at all.
            c if (c as u32) < 0x20 => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

pub fn write(validation: &Validation, out: &mut dyn Write) -> io::Result<()> {
    let files = files(validation);
    let failures = files
        .iter()
        .filter(|(_, _, id)| {
            validation
                .diagnostics
                .iter()
                .any(|d| d.source == *id && d.severity == Severity::Error)
        })
        .count();
    writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
    writeln!(
        out,
        r#"<testsuites name="lifeboat plan validate" tests="{}" failures="{failures}">"#,
        files.len()
    )?;
    writeln!(
        out,
        r#"  <testsuite name="lifeboat plan validate" tests="{}" failures="{failures}" errors="0">"#,
        files.len()
    )?;
    for (name, kind, id) in &files {
        let in_file: Vec<_> = validation
            .diagnostics
            .iter()
            .filter(|d| d.source == *id)
            .collect();
        write!(
            out,
            r#"    <testcase classname="lifeboat.{kind}" name="{}""#,
            escape(name)
        )?;
        if in_file.is_empty() {
            writeln!(out, "/>")?;
            continue;
        }
        writeln!(out, ">")?;
        for d in in_file {
            let at = primary_region(validation, d)
                .map(|r| format!("{}:{}:{}: ", r.file, r.start.line, r.start.column))
                .unwrap_or_else(|| format!("{name}: "));
            let body = format!("{at}{}", full_message(d));
            match d.severity {
                Severity::Error => writeln!(
                    out,
                    r#"      <failure type="{}" message="{}">{}</failure>"#,
                    d.rule.name(),
                    escape(&d.message),
                    escape(&body)
                )?,
                Severity::Warning => writeln!(
                    out,
                    "      <system-out>warning[{}]: {}</system-out>",
                    d.rule.name(),
                    escape(&body)
                )?,
            }
        }
        writeln!(out, "    </testcase>")?;
    }
    writeln!(out, "  </testsuite>")?;
    writeln!(out, "</testsuites>")
}
