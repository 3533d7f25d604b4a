//! Reading a parsed TOML tree into typed values while collecting every problem.
//!
//! serde stops at the first error; a plan author wants all of them. So the typed model is read by
//! hand through [`Decoder`] and [`TableReader`]: each read records a diagnostic on failure and
//! returns `None`, and the caller carries on with the rest of the file.

use std::net::IpAddr;

use toml::de::{DeTable, DeValue};

use crate::diagnostic::{Diagnostic, Rule, suggestion};
use crate::source::SourceId;
use crate::span::{Span, Spanned};
use crate::types::{Cidr, Duration, NameMap};

pub(crate) type Value<'i> = toml::Spanned<DeValue<'i>>;

/// The largest document we read: far above any real plan, small enough to bound memory and time.
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;

pub(crate) struct Decoder<'s> {
    pub source: SourceId,
    pub text: &'s str,
    pub diagnostics: Vec<Diagnostic>,
}

/// Parse TOML text into a spanned table, reporting every syntax error the parser recovers from.
fn parse_document<'i>(
    source: SourceId,
    text: &'i str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<toml::Spanned<DeTable<'i>>> {
    if text.len() > MAX_FILE_BYTES {
        diagnostics.push(Diagnostic::file_error(
            Rule::Syntax,
            source,
            format!(
                "file is {} bytes, larger than the {MAX_FILE_BYTES}-byte limit",
                text.len()
            ),
        ));
        return None;
    }
    let (table, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Some(table);
    }
    for error in errors {
        let range = error.span().unwrap_or(0..0);
        let message = error.message().trim().to_string();
        let (first, rest) = match message.split_once('\n') {
            Some((first, rest)) => (first.to_string(), Some(rest.trim().to_string())),
            None => (message, None),
        };
        let mut d = Diagnostic::error(
            Rule::Syntax,
            Span::new(source, range),
            format!("invalid TOML: {first}"),
            "here",
        );
        if let Some(rest) = rest.filter(|r| !r.is_empty()) {
            d = d.with_help(rest);
        }
        diagnostics.push(d);
    }
    None
}

/// Parse `text` and read its root table with `decode`: the entry point of both file formats.
pub(crate) fn parse_with<T>(
    source: SourceId,
    text: &str,
    decode: impl FnOnce(&mut Decoder<'_>, &Value<'_>) -> Option<T>,
) -> (Option<T>, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let Some(root) = parse_document(source, text, &mut diagnostics) else {
        return (None, diagnostics);
    };
    let mut d = Decoder::new(source, text);
    let root = toml::Spanned::new(root.span(), DeValue::Table(root.into_inner()));
    let value = decode(&mut d, &root);
    diagnostics.append(&mut d.diagnostics);
    (value, diagnostics)
}

/// Read the required `version` of a file and check it is the one this Lifeboat reads.
pub(crate) fn read_version(
    d: &mut Decoder<'_>,
    t: &mut TableReader<'_, '_>,
    kind: &str,
    supported: u32,
) -> Option<Spanned<u32>> {
    let version = t
        .required(d, "version")
        .and_then(|v| d.u32(v, "version", 0, u32::MAX))?;
    if version.value != supported {
        d.push(
            Diagnostic::error(
                Rule::UnsupportedVersion,
                version.span,
                format!("unsupported {kind} version {}", version.value),
                "unsupported version",
            )
            .with_help(format!("this Lifeboat reads {kind} version {supported}")),
        );
    }
    Some(version)
}

pub(crate) fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'s> Decoder<'s> {
    pub fn new(source: SourceId, text: &'s str) -> Self {
        Self {
            source,
            text,
            diagnostics: Vec::new(),
        }
    }

    pub fn span(&self, value: &Value<'_>) -> Span {
        Span::new(self.source, value.span())
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    pub fn error(
        &mut self,
        rule: Rule,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
    ) {
        self.diagnostics
            .push(Diagnostic::error(rule, span, message, label));
    }

    fn wrong_type(&mut self, value: &Value<'_>, what: &str, expected: &str) {
        let span = self.span(value);
        let found = type_name(value.get_ref());
        self.push(Diagnostic::error(
            Rule::InvalidType,
            span,
            format!("`{what}` must be {expected}, found {found}"),
            format!("expected {expected}"),
        ));
    }

    pub fn table<'v, 'i>(
        &mut self,
        value: &'v Value<'i>,
        what: &str,
    ) -> Option<TableReader<'v, 'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(TableReader {
                table,
                span: self.span(value),
                what: what.to_string(),
                known: Vec::new(),
            }),
            _ => {
                self.wrong_type(value, what, "a table");
                None
            }
        }
    }

    pub fn array<'v, 'i>(&mut self, value: &'v Value<'i>, what: &str) -> Option<&'v [Value<'i>]> {
        match value.get_ref() {
            DeValue::Array(items) => Some(&items[..]),
            _ => {
                self.wrong_type(value, what, "an array");
                None
            }
        }
    }

    pub fn string(&mut self, value: &Value<'_>, what: &str) -> Option<Spanned<String>> {
        match value.get_ref() {
            DeValue::String(s) => Some(Spanned::new(s.to_string(), self.span(value))),
            _ => {
                self.wrong_type(value, what, "a string");
                None
            }
        }
    }

    pub fn boolean(&mut self, value: &Value<'_>, what: &str) -> Option<Spanned<bool>> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some(Spanned::new(*b, self.span(value))),
            _ => {
                self.wrong_type(value, what, "true or false");
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn integer(
        &mut self,
        value: &Value<'_>,
        what: &str,
        min: i64,
        max: i64,
    ) -> Option<Spanned<i64>> {
        let DeValue::Integer(i) = value.get_ref() else {
            self.wrong_type(value, what, "an integer");
            return None;
        };
        let span = self.span(value);
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (min..=max).contains(&n) => Some(Spanned::new(n, span)),
            _ => {
                self.error(
                    Rule::InvalidValue,
                    span,
                    format!("`{what}` must be between {min} and {max}"),
                    "out of range",
                );
                None
            }
        }
    }

    pub fn u32(
        &mut self,
        value: &Value<'_>,
        what: &str,
        min: u32,
        max: u32,
    ) -> Option<Spanned<u32>> {
        self.integer(value, what, min.into(), max.into())
            .map(|n| n.map(|n| n as u32))
    }

    /// A name a user gives a site, VM, network, group…: letters, digits, `-`, `_`, `.`; starts with
    /// a letter or digit; at most 63 characters. Names end up in object-store keys and commands.
    pub fn check_name(&mut self, name: &Spanned<String>, what: &str) -> bool {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            self.push(
                Diagnostic::error(
                    Rule::InvalidValue,
                    name.span,
                    format!("invalid {what} name `{}`", name.value),
                    "not a valid name",
                )
                .with_help("names are 1–63 ASCII letters, digits, `-`, `_` or `.`, starting with a letter or digit"),
            );
        }
        valid
    }

    pub fn name(&mut self, value: &Value<'_>, what: &str) -> Option<Spanned<String>> {
        let name = self.string(value, what)?;
        self.check_name(&name, what).then_some(name)
    }

    pub fn duration(&mut self, value: &Value<'_>, what: &str) -> Option<Spanned<Duration>> {
        let s = self.string(value, what)?;
        match humantime::parse_duration(s.trim()) {
            Ok(d) if !d.is_zero() => Some(Spanned::new(Duration(d), s.span)),
            Ok(_) => {
                self.error(
                    Rule::InvalidDuration,
                    s.span,
                    format!("`{what}` must be longer than zero"),
                    "zero duration",
                );
                None
            }
            Err(e) => {
                let reason = match e {
                    humantime::DurationError::UnknownUnit { unit, .. } => {
                        format!("unknown unit `{unit}`")
                    }
                    humantime::DurationError::NumberOverflow => "too long".to_string(),
                    humantime::DurationError::Empty => "it is empty".to_string(),
                    humantime::DurationError::NumberExpected(_) => "expected a number".to_string(),
                    humantime::DurationError::InvalidCharacter(_) => {
                        "unexpected character".to_string()
                    }
                };
                self.push(
                    Diagnostic::error(
                        Rule::InvalidDuration,
                        s.span,
                        format!("invalid duration `{}` for `{what}`: {reason}", s.value),
                        "not a duration",
                    )
                    .with_help("write a number and a unit: `90s`, `5m`, `1h 30m`, `7days`"),
                );
                None
            }
        }
    }

    pub fn ip(&mut self, value: &Value<'_>, what: &str) -> Option<Spanned<IpAddr>> {
        let s = self.string(value, what)?;
        match s.parse::<IpAddr>() {
            Ok(ip) => Some(Spanned::new(ip, s.span)),
            Err(_) => {
                let mut d = Diagnostic::error(
                    Rule::InvalidIp,
                    s.span,
                    format!("invalid IP address `{}` for `{what}`", s.value),
                    "not an IP address",
                );
                if s.contains('/') {
                    d = d.with_help(
                        "an address takes no prefix length: write `10.1.2.10`, not `10.1.2.10/24`",
                    );
                }
                self.push(d);
                None
            }
        }
    }

    pub fn cidr(&mut self, value: &Value<'_>, what: &str) -> Option<Spanned<Cidr>> {
        let s = self.string(value, what)?;
        match s.parse::<ipnet::IpNet>() {
            Ok(net) if net.trunc() == net => Some(Spanned::new(Cidr(net), s.span)),
            Ok(net) => {
                self.push(
                    Diagnostic::error(
                        Rule::InvalidCidr,
                        s.span,
                        format!("subnet `{}` has host bits set", s.value),
                        "host bits set",
                    )
                    .with_help(format!("did you mean `{}`?", net.trunc())),
                );
                None
            }
            Err(_) => {
                self.push(
                    Diagnostic::error(
                        Rule::InvalidCidr,
                        s.span,
                        format!("invalid CIDR block `{}` for `{what}`", s.value),
                        "not a CIDR block",
                    )
                    .with_help("write an address and a prefix length, e.g. `10.1.2.0/24`"),
                );
                None
            }
        }
    }

    /// A list whose items are each read by `item`; items that fail are dropped (already reported,
    /// and `complete` is set to false).
    pub fn list<'v, 'i, T>(
        &mut self,
        value: &'v Value<'i>,
        what: &str,
        mut item: impl FnMut(&mut Self, &'v Value<'i>, String) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = self.array(value, what)?;
        Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| item(self, v, format!("{what}[{i}]")))
                .collect(),
        )
    }

    pub fn string_list(&mut self, value: &Value<'_>, what: &str) -> Option<Vec<Spanned<String>>> {
        self.list(value, what, |d, v, what| d.string(v, &what))
    }

    /// A table of user-named entries (`[vms.db-1]`, `subnets = { app = … }`). Every key is checked
    /// as a name; `declared` receives every well-formed name, even when its entry is invalid, so
    /// later reference checks do not report a second error for it.
    pub fn name_map<'v, 'i, T>(
        &mut self,
        value: &'v Value<'i>,
        what: &str,
        declared: &mut Vec<String>,
        mut entry: impl FnMut(&mut Self, &'v Value<'i>, &str) -> Option<T>,
    ) -> Option<NameMap<T>> {
        let DeValue::Table(table) = value.get_ref() else {
            self.wrong_type(value, what, "a table");
            return None;
        };
        let mut map = NameMap::default();
        for (key, value) in table.iter() {
            let name = Spanned::new(
                key.get_ref().to_string(),
                Span::new(self.source, key.span()),
            );
            if !self.check_name(&name, what) {
                continue;
            }
            declared.push(name.value.clone());
            let entry_what = format!("{what}.{}", name.value);
            if let Some(v) = entry(self, value, &entry_what) {
                map.insert(name, v);
            }
        }
        Some(map)
    }
}

/// A table being read: remembers which keys were asked for, so the rest can be reported as unknown.
pub(crate) struct TableReader<'v, 'i> {
    table: &'v DeTable<'i>,
    pub span: Span,
    pub what: String,
    known: Vec<&'static str>,
}

impl<'v, 'i> TableReader<'v, 'i> {
    /// The path of a key for messages: `group[1].pre[0].uses`.
    pub fn path(&self, key: &str) -> String {
        if self.what.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.what)
        }
    }

    pub fn optional(&mut self, key: &'static str) -> Option<&'v Value<'i>> {
        self.known.push(key);
        self.table.get(key)
    }

    pub fn required(&mut self, d: &mut Decoder<'_>, key: &'static str) -> Option<&'v Value<'i>> {
        let value = self.optional(key);
        if value.is_none() {
            let where_ = if self.what.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{}`", self.what)
            };
            let span = self.header_span(d);
            d.push(
                Diagnostic::error(
                    Rule::MissingKey,
                    span,
                    format!("missing required key `{key}` {where_}"),
                    format!("`{key}` is required here"),
                )
                .with_help(format!("add `{key} = …`")),
            );
        }
        value
    }

    /// Where to point for a missing key: the table's first line rather than all of it.
    fn header_span(&self, d: &Decoder<'_>) -> Span {
        let text = if self.what.is_empty() {
            d.text // the whole document: point at its first line
        } else {
            d.text.get(self.span.range()).unwrap_or("")
        };
        let len = text.find('\n').unwrap_or(text.len());
        let len = text[..len].trim_end_matches('\r').len();
        Span::new(self.span.source, self.span.start..self.span.start + len)
    }

    /// Report every key not asked for, with the nearest known key as a suggestion. Returns
    /// whether the table was clean (no unknown key).
    pub fn finish(self, d: &mut Decoder<'_>) -> bool {
        let mut clean = true;
        for (key, _) in self.table.iter() {
            let name = key.get_ref();
            if self.known.iter().any(|k| k == name) {
                continue;
            }
            clean = false;
            let span = Span::new(d.source, key.span());
            let where_ = if self.what.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{}`", self.what)
            };
            let mut diagnostic = Diagnostic::error(
                Rule::UnknownKey,
                span,
                format!("unknown key `{name}` {where_}"),
                "unknown key",
            );
            if let Some(help) = suggestion(name, &self.known) {
                diagnostic = diagnostic.with_help(help);
            }
            d.push(diagnostic);
        }
        clean
    }
}
