//! GitHub Actions workflow commands: `::error file=…,line=…::message`, one line per problem, so
//! a workflow step shows each one on the pull request's diff.

use std::io::{self, Write};

use lifeboat_loader::Validation;
use lifeboat_plan::Severity;

use super::{full_message, primary_region};

/// Escape a command's message (`%`, CR, LF).
pub(crate) fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escape a property value: as data, plus `:` and `,`.
pub(crate) fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

pub fn write(validation: &Validation, out: &mut dyn Write) -> io::Result<()> {
    for d in &validation.diagnostics {
        let command = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut properties = Vec::new();
        match primary_region(validation, d) {
            Some(r) => {
                properties.push(format!("file={}", escape_property(r.file)));
                properties.push(format!("line={}", r.start.line));
                properties.push(format!("col={}", r.start.column));
                properties.push(format!("endLine={}", r.end.line));
                properties.push(format!("endColumn={}", r.end.column));
            }
            None => properties.push(format!(
                "file={}",
                escape_property(validation.sources.get(d.source).name())
            )),
        }
        properties.push(format!(
            "title={}",
            escape_property(&format!("lifeboat {}", d.rule.name()))
        ));
        writeln!(
            out,
            "::{command} {}::{}",
            properties.join(","),
            escape_data(&full_message(d))
        )?;
    }
    let errors = validation.error_count();
    if errors == 0 {
        writeln!(
            out,
            "lifeboat: inventory and {} plan(s) valid",
            validation.plans.len()
        )
    } else {
        writeln!(out, "lifeboat: {errors} error(s)")
    }
}
