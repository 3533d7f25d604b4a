//! Renderers of a validation: one module per output format. Each writes the whole report.

pub(crate) mod github;
mod human;
mod json;
pub(crate) mod junit;
mod sarif;

use std::io::{self, Write};

use clap::ValueEnum;
use lifeboat_loader::Validation;
use lifeboat_plan::{Diagnostic, Label, Location, Span};

/// How `plan validate` prints its findings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Compiler-style errors with source excerpts, for people.
    Human,
    /// One JSON document, for tools.
    Json,
    /// JUnit XML: one test case per file, one failure per problem.
    Junit,
    /// SARIF 2.1.0, for code-scanning dashboards.
    Sarif,
    /// GitHub Actions workflow commands (`::error file=…`), one line per problem.
    Github,
}

pub fn write(
    format: Format,
    validation: &Validation,
    color: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        Format::Human => human::write(validation, color, out),
        Format::Json => json::write(validation, out),
        Format::Junit => junit::write(validation, out),
        Format::Sarif => sarif::write(validation, out),
        Format::Github => github::write(validation, out),
    }
}

/// A span resolved to what every machine format needs.
pub(crate) struct Region<'a> {
    pub file: &'a str,
    pub start: Location,
    pub end: Location,
    pub snippet: &'a str,
}

pub(crate) fn region<'a>(validation: &'a Validation, span: Span) -> Region<'a> {
    let file = validation.sources.get(span.source);
    let mut end = file.location(span.end);
    let start = file.location(span.start);
    if end < start {
        end = start;
    }
    Region {
        file: file.name(),
        start,
        end,
        snippet: file.text().get(span.range()).unwrap_or(""),
    }
}

pub(crate) fn primary_region<'a>(validation: &'a Validation, d: &Diagnostic) -> Option<Region<'a>> {
    d.primary
        .as_ref()
        .map(|l: &Label| region(validation, l.span))
}

/// The message with its help appended, for formats that have one text field.
pub(crate) fn full_message(d: &Diagnostic) -> String {
    match &d.help {
        Some(help) => format!("{}\nhelp: {help}", d.message),
        None => d.message.clone(),
    }
}

/// Which files were read, with their role, in order.
pub(crate) fn files(validation: &Validation) -> Vec<(&str, &'static str, lifeboat_plan::SourceId)> {
    let mut files = vec![(
        validation.sources.get(validation.inventory_source).name(),
        "inventory",
        validation.inventory_source,
    )];
    for plan in &validation.plans {
        files.push((
            validation.sources.get(plan.source).name(),
            "plan",
            plan.source,
        ));
    }
    files
}
