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
