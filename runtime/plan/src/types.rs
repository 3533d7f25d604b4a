//! Small value types shared by the inventory and the plan.

use std::borrow::Cow;

use indexmap::IndexMap;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Serialize;

use crate::span::{Span, Spanned};

/// A length of time, written as `90s`, `5m`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A length of time: a number and a unit, e.g. `90s`, `5m`, `1h 30m`, `7days`.",
            "pattern": "^\\s*[0-9]+\\s*[a-zA-Zµ]+(\\s*[0-9]+\\s*[a-zA-Zµ]+)*\\s*$"
        })
    }
}

/// A rate in bytes per second, written as `50 MiB/s`, `100 Mbit/s`, `1 GiB/s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(pub u64);

impl Rate {
    /// Units a rate is written in, and bytes per second for one of each.
    pub const UNITS: &[(&str, f64)] = &[
        ("B/s", 1.0),
        ("KB/s", 1e3),
        ("MB/s", 1e6),
        ("GB/s", 1e9),
        ("KiB/s", 1024.0),
        ("MiB/s", 1048576.0),
        ("GiB/s", 1073741824.0),
        ("kbit/s", 125.0),
        ("Mbit/s", 125e3),
        ("Gbit/s", 125e6),
    ];

    /// `50 MiB/s` → bytes per second; the reason when it is not a rate.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = (t[..split].trim(), t[split..].trim());
        let n: f64 = number
            .parse()
            .map_err(|_| "expected a number and a unit, e.g. `50 MiB/s`".to_string())?;
        let per = Self::UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, b)| *b)
            .ok_or_else(|| {
                let units: Vec<&str> = Self::UNITS.iter().map(|(u, _)| *u).collect();
                format!("unknown unit `{unit}` (one of {})", units.join(", "))
            })?;
        let bytes = n * per;
        if !(bytes >= 1.0 && bytes.is_finite()) {
            return Err("a rate must be at least 1 B/s".into());
        }
        Ok(Self(bytes as u64))
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format!("{} B/s", self.0))
    }
}

impl JsonSchema for Rate {
    fn schema_name() -> Cow<'static, str> {
        "Rate".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "Bytes per second: a number and a unit, e.g. `50 MiB/s`, `100 Mbit/s`, `1 GiB/s`.",
            "pattern": "^\\s*[0-9.]+\\s*(B|KB|MB|GB|KiB|MiB|GiB|kbit|Mbit|Gbit)/s\\s*$"
        })
    }
}

/// A subnet in CIDR form, host bits clear: `10.1.2.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr(pub ipnet::IpNet);

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A subnet in CIDR form with host bits clear, e.g. `10.1.2.0/24`.",
            "pattern": "^[0-9a-fA-F:.]+/[0-9]{1,3}$"
        })
    }
}

/// Entries a user names, in the order written: `[vms.db-1]`, `subnets = { app = "…" }`.
#[derive(Clone, Debug)]
pub struct NameMap<T> {
    entries: IndexMap<String, (Span, T)>,
}

impl<T> Default for NameMap<T> {
    fn default() -> Self {
        Self {
            entries: IndexMap::new(),
        }
    }
}

impl<T> NameMap<T> {
    pub(crate) fn insert(&mut self, name: Spanned<String>, value: T) {
        self.entries.insert(name.value, (name.span, value));
    }

    pub fn get(&self, name: &str) -> Option<&T> {
        self.entries.get(name).map(|(_, v)| v)
    }

    /// The entry, to change in a copy (the runtime's view of where a VM runs now).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut T> {
        self.entries.get_mut(name).map(|(_, v)| v)
    }

    /// The span of the name where the entry was declared.
    pub fn name_span(&self, name: &str) -> Option<Span> {
        self.entries.get(name).map(|(s, _)| *s)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries.iter().map(|(k, (_, v))| (k.as_str(), v))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<T: Serialize> Serialize for NameMap<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.entries.iter().map(|(k, (_, v))| (k, v)))
    }
}

impl<T: JsonSchema> JsonSchema for NameMap<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("NameMap_of_{}", T::schema_name()).into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let item = generator.subschema_for::<T>();
        json_schema!({
            "type": "object",
            "propertyNames": { "$ref": "#/$defs/Name" },
            "additionalProperties": item
        })
    }
}

/// The name rule, as a schema definition every `NameMap` refers to.
pub(crate) fn name_schema() -> Schema {
    json_schema!({
        "type": "string",
        "description": "1–63 ASCII letters, digits, `-`, `_` or `.`, starting with a letter or digit.",
        "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
    })
}
