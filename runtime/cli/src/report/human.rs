//! Compiler-style diagnostics with source excerpts.

use std::io::{self, Write};
use std::ops::Range;

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label as CsLabel};
use codespan_reporting::files::{Error as FilesError, Files};
use codespan_reporting::term::{self, Config};
use lifeboat_loader::Validation;
use lifeboat_plan::{Severity, SourceId, Sources};

/// `Sources` as codespan's file database.
struct SourceFiles<'a>(&'a Sources);

impl<'a> Files<'a> for SourceFiles<'a> {
    type FileId = SourceId;
    type Name = &'a str;
    type Source = &'a str;

    fn name(&'a self, id: SourceId) -> Result<&'a str, FilesError> {
        Ok(self.0.get(id).name())
    }

    fn source(&'a self, id: SourceId) -> Result<&'a str, FilesError> {
        Ok(self.0.get(id).text())
    }

    fn line_index(&'a self, id: SourceId, byte_index: usize) -> Result<usize, FilesError> {
        Ok(self.0.get(id).location(byte_index).line - 1)
    }

    fn line_range(&'a self, id: SourceId, line_index: usize) -> Result<Range<usize>, FilesError> {
        let file = self.0.get(id);
        let starts = file.line_starts();
        let start = *starts.get(line_index).ok_or(FilesError::LineTooLarge {
            given: line_index,
            max: starts.len() - 1,
        })?;
        let end = starts
            .get(line_index + 1)
            .copied()
            .unwrap_or(file.text().len());
        Ok(start..end)
    }
}

pub fn write(validation: &Validation, color: bool, out: &mut dyn Write) -> io::Result<()> {
    let files = SourceFiles(&validation.sources);
    let config = Config::default();
    for d in &validation.diagnostics {
        let mut cs = match d.severity {
            Severity::Error => CsDiagnostic::error(),
            Severity::Warning => CsDiagnostic::warning(),
        }
        .with_code(d.rule.name())
        .with_message(&d.message);
        let mut labels = Vec::new();
        if let Some(primary) = &d.primary {
            labels.push(
                CsLabel::primary(primary.span.source, primary.span.range())
                    .with_message(&primary.message),
            );
        }
        for s in &d.secondary {
            labels.push(CsLabel::secondary(s.span.source, s.span.range()).with_message(&s.message));
        }
        cs = cs.with_labels(labels);
        let mut notes = Vec::new();
        let file = validation.sources.get(d.source).name();
        if d.primary.is_none() && !d.message.contains(&format!("`{file}`")) {
            notes.push(format!("in {file}"));
        }
        if let Some(help) = &d.help {
            notes.push(format!("help: {help}"));
        }
        cs = cs.with_notes(notes);
        let rendered = if color {
            let mut buffer = term::termcolor::Buffer::ansi();
            term::emit_to_write_style(&mut buffer, &config, &files, &cs)
                .map_err(io::Error::other)?;
            buffer.into_inner()
        } else {
            term::emit_into_string(&config, &files, &cs)
                .map_err(io::Error::other)?
                .into_bytes()
        };
        out.write_all(&rendered)?;
    }
    write_summary(validation, out)
}

fn write_summary(validation: &Validation, out: &mut dyn Write) -> io::Result<()> {
    let errors = validation.error_count();
    let warnings = validation.diagnostics.len() - errors;
    let plans = validation.plans.len();
    let plans_text = match plans {
        1 => "1 plan".to_string(),
        n => format!("{n} plans"),
    };
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("1 {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    if errors == 0 {
        let warned = if warnings > 0 {
            format!(" ({})", plural(warnings, "warning"))
        } else {
            String::new()
        };
        writeln!(out, "ok: inventory and {plans_text} valid{warned}")
    } else {
        let bad_files: std::collections::BTreeSet<_> = validation
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| d.source)
            .collect();
        writeln!(
            out,
            "invalid: {} in {} of {}",
            plural(errors, "error"),
            bad_files.len(),
            plural(plans + 1, "file")
        )
    }
}
