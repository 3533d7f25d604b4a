//! Lifeboat's replication engine: it copies protected disks from a source site to a target
//! site's repository and keeps recovery points there.
//!
//! The data path is `capture` (scan an image) → the source site's cache (staging) → the target
//! `repo` (packs, index, chunk-map trees, manifests), driven one cycle at a time by `cycle`.
//! `restore`, `verify` and `gc` work on the repository alone: a committed point never needs the
//! source site or the cache. `format` is the byte layout of every object, without I/O; `store`
//! is the one door to `object_store`.

pub mod capture;
pub mod clock;
pub mod cycle;
pub mod error;
pub mod export;
pub mod fencing;
pub mod format;
pub mod gc;
pub mod groups;
pub mod lease;
pub mod nbd;
pub mod placement;
pub mod points;
pub mod probe;
pub mod repo;
pub mod restore;
pub mod seal;
pub mod seed;
mod session;
pub mod store;
pub mod throttle;
pub mod verify;

#[cfg(test)]
mod tests;

pub use cycle::{AppMode, Cut, CutAt, CycleOptions, CycleReport, FrozenDisk, Progress, replicate};
pub use error::{Error, ErrorKind, Result};
pub use format::manifest::{Manifest, PointKind};
pub use groups::{GroupSpec, groups};
pub use repo::Repository;
pub use store::Store;
