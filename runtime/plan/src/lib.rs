//! Lifeboat's plan and inventory language: text in, a typed model and every diagnostic out.
//!
//! This crate does no I/O. The loader reads files and digests plugins; the CLI renders
//! diagnostics. Validation never stops at the first problem.

pub mod address;
mod check;
mod decode;
pub mod diagnostic;
pub mod inventory;
pub mod placeholder;
pub mod plan;
pub mod schema;
pub mod source;
pub mod span;
pub mod types;

pub use check::{check_inventory, check_plan, target_subnet};
pub use decode::MAX_FILE_BYTES;
pub use diagnostic::{Diagnostic, Label, Rule, Severity};
pub use inventory::{Inventory, parse_inventory};
pub use plan::{Plan, parse_plan};
pub use source::{Location, SourceFile, SourceId, Sources};
pub use span::{Span, Spanned};

#[cfg(test)]
mod tests;
