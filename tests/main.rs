//! Lifeboat's integration tests, one binary with a module per area.

// A failing test panics; that is how it reports.
#![allow(clippy::panic, clippy::unwrap_used)]

mod api;
mod daemon;
mod docs;
mod examples;
mod failover;
mod formats;
mod fuzz;
mod golden;
mod instant;
mod layers;
mod libvirt;
mod lifecycle;
mod orchestrator;
mod plugins;
mod qemu;
mod replication;
mod schema;
mod servers;
mod support;
mod wit;
mod world;
