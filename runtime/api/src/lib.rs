//! Lifeboat's contract with whatever drives it: the exit codes (and their table), the daemon
//! API's requests, answers and errors, the event stream's notices, the status document, and a
//! client for a daemon's Unix socket. Scripts, the CLI and other tools depend on this crate and
//! not on the daemon's server (axum, file watching) or the engines (wasmtime, object stores),
//! as nextest's `nextest-metadata` stands beside its runner.

pub mod client;
pub mod error;
pub mod exit_codes;
pub mod notice;
pub mod requests;
pub mod server;
pub mod status;

pub use notice::{Notice, NoticeKind};
pub use status::Status;
