//! JSON Schemas of the file formats, for editors and for tools that generate plans.

use schemars::generate::SchemaSettings;

use crate::inventory::Inventory;
use crate::plan::Plan;
use crate::types::name_schema;

fn generate<T: schemars::JsonSchema>() -> serde_json::Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.root_schema_for::<T>();
    // `NameMap` keys refer to this definition.
    if let Some(defs) = schema.as_object_mut().and_then(|o| {
        o.entry("$defs")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
    }) {
        defs.insert("Name".into(), name_schema().to_value());
    }
    schema.to_value()
}

/// The JSON Schema of a plan file.
pub fn plan_schema() -> serde_json::Value {
    generate::<Plan>()
}

/// The JSON Schema of the inventory file.
pub fn inventory_schema() -> serde_json::Value {
    generate::<Inventory>()
}
