//! `{…}` placeholders in boot commands, health checks, step configs and grants.

use crate::span::{Span, Spanned};

/// One `{name}` found in a string, with the span of its text when it can be located exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Placeholder {
    pub name: String,
    pub span: Span,
}

/// Every `{…}` in `value`. `{{` and `}}` are literal braces. `source_text` is the file the value
/// came from, so each placeholder can point at its own characters rather than the whole string.
pub fn placeholders(value: &Spanned<String>, source_text: &str) -> Vec<Placeholder> {
    let raw = source_text.get(value.span.range()).unwrap_or("");
    let mut found = Vec::new();
    let mut rest = value.value.as_str();
    let mut search_from = 0;
    while let Some(open) = rest.find('{') {
        if rest[open + 1..].starts_with('{') {
            rest = &rest[open + 2..];
            continue;
        }
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let token = &rest[open..open + close + 1];
        let name = token[1..token.len() - 1].trim().to_string();
        let span = match raw.get(search_from..).and_then(|r| r.find(token)) {
            Some(at) => {
                let start = value.span.start + search_from + at;
                search_from += at + token.len();
                Span::new(value.span.source, start..start + token.len())
            }
            None => value.span,
        };
        found.push(Placeholder { name, span });
        rest = &rest[open + close + 1..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Sources;

    #[test]
    fn finds_each_placeholder_with_its_own_span() {
        let mut sources = Sources::new();
        let text = r#"x = "{nic0.ip}:{{lit}}:{disk.os}""#;
        let id = sources.add("t", text);
        let value = Spanned::new(
            "{nic0.ip}:{{lit}}:{disk.os}".to_string(),
            Span::new(id, 4..text.len()),
        );
        let found = placeholders(&value, text);
        let names: Vec<_> = found.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["nic0.ip", "disk.os"]);
        assert_eq!(&text[found[0].span.range()], "{nic0.ip}");
        assert_eq!(&text[found[1].span.range()], "{disk.os}");
    }
}
