//! The order a boot read its disks in. An export server records it (the chunks its clients
//! first read, in that order, until told the boot is over) and a later server of the same VM
//! follows it: it fetches those chunks in that order, in parallel, a window ahead of where the
//! guest has got to in it. A boot reads much the same blocks in much the same order each time,
//! and mostly not one after another, so reading ahead of the reader alone misses most of it.
//!
//! The file is a hint, never data: a chunk it names is fetched and checked like any other, a
//! trace of another disk layout is ignored, and one that does not parse is reported and ignored.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The most chunks one disk's trace keeps (4 GiB of 64 KiB chunks): past that a boot is a copy.
pub const MOST_CHUNKS: usize = 1 << 16;

/// What a boot read, per disk (by name).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BootTrace {
    pub disks: BTreeMap<String, DiskTrace>,
}

/// One disk's reads: chunk indices in the order first read, kept as runs of consecutive chunks
/// (`[first, count]`), which is what most of a boot's reads are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskTrace {
    /// The chunk size the indices count in: a trace of another chunking is not followed.
    pub chunk_size: u64,
    pub runs: Vec<[u64; 2]>,
}

impl DiskTrace {
    /// A trace of `order` (chunk indices, first read first).
    pub fn of(chunk_size: u64, order: &[u64]) -> Self {
        let mut runs: Vec<[u64; 2]> = Vec::new();
        for &i in order {
            match runs.last_mut() {
                Some([first, count]) if *first + *count == i => *count += 1,
                _ => runs.push([i, 1]),
            }
        }
        Self { chunk_size, runs }
    }

    /// The chunk indices, in order, each once and below `chunks`, at most [`MOST_CHUNKS`]; a
    /// trace that names the same chunks over and over is read no further than a few times that.
    pub fn order(&self, chunks: u64) -> Vec<u64> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut looked = 0usize;
        for &[first, count] in &self.runs {
            for i in first..first.saturating_add(count).min(chunks) {
                looked += 1;
                if out.len() == MOST_CHUNKS || looked > 4 * MOST_CHUNKS {
                    return out;
                }
                if seen.insert(i) {
                    out.push(i);
                }
            }
        }
        out
    }
}

impl BootTrace {
    /// The trace at `path`; `None` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| Error::failed(format!("{} is not a boot trace: {e}", path.display())))
    }

    /// Writes the trace to `path` whole or not at all (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec(self)
            .map_err(|e| Error::failed(format!("a boot trace does not serialise: {e}")))?;
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text)
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    }

    /// How many chunks the trace names, over every disk.
    pub fn chunks(&self) -> u64 {
        self.disks
            .values()
            .flat_map(|d| &d.runs)
            .map(|[_, count]| count)
            .sum()
    }
}

/// The chunks one server's clients read first, in order, while it records.
#[derive(Debug, Default)]
pub(super) struct Recorder {
    seen: std::collections::HashSet<u64>,
    order: Vec<u64>,
}

impl Recorder {
    pub(super) fn read(&mut self, i: u64) {
        if self.order.len() < MOST_CHUNKS && self.seen.insert(i) {
            self.order.push(i);
        }
    }

    pub(super) fn order(&self) -> &[u64] {
        &self.order
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_trace_keeps_the_order_in_runs_and_reads_back_each_chunk_once() {
        let t = DiskTrace::of(65536, &[7, 8, 9, 2, 3, 100, 8]);
        assert_eq!(t.runs, vec![[7, 3], [2, 2], [100, 1], [8, 1]]);
        assert_eq!(t.order(1000), vec![7, 8, 9, 2, 3, 100]);
        assert_eq!(
            t.order(50),
            vec![7, 8, 9, 2, 3],
            "past the disk's end is dropped"
        );
    }

    #[test]
    fn a_hostile_trace_is_bounded() {
        let t = DiskTrace {
            chunk_size: 65536,
            runs: vec![[0, u64::MAX], [u64::MAX, u64::MAX]],
        };
        assert_eq!(t.order(u64::MAX).len(), MOST_CHUNKS);
        // The same chunks named again and again: bounded, not a hang.
        let again = DiskTrace {
            chunk_size: 65536,
            runs: vec![[0, 1000]; 1 << 20],
        };
        assert_eq!(again.order(1000).len(), 1000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, b"{\"disks\": 3}").unwrap();
        let err = BootTrace::load(&path).unwrap_err().to_string();
        assert!(err.contains("is not a boot trace"), "{err}");
        assert_eq!(
            BootTrace::load(&dir.path().join("none.json")).unwrap(),
            None
        );
    }
}
