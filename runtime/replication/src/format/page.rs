//! Chunk-map pages: the nodes of a disk's copy-on-write tree. A leaf lists the ids of up to 512
//! consecutive chunks; an inner page lists up to 512 child pages. A page is a blob like a chunk
//! (content-addressed, in a metadata pack), so a new point stores only the pages on changed
//! paths: every unchanged page has the same id and is already in the repository.
//!
//! ```text
//! page := "LBPG" version:u16 level:u8 0:u8 count:u32 id[32]*count      (level 0 = leaf)
//! ```
//! A page whose ids are all `Id::ZERO` is itself `Id::ZERO` and is never stored.

use super::{FORMAT_VERSION, Id, u16_at, u32_at};

pub const MAGIC: &[u8; 4] = b"LBPG";
pub const FANOUT: usize = 512;
const HEADER_LEN: usize = 12;

pub fn encode(level: u8, ids: &[Id]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + ids.len() * 32);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.push(level);
    b.push(0);
    b.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        b.extend_from_slice(&id.0);
    }
    b
}

/// Decodes a page and checks it is at `level` with `count` ids.
pub fn decode(b: &[u8], level: u8, count: usize) -> Result<Vec<Id>, String> {
    if b.len() < HEADER_LEN || &b[..4] != MAGIC {
        return Err("not a chunk-map page (bad magic)".into());
    }
    if u16_at(b, 4) != FORMAT_VERSION {
        return Err("page format version is not supported".into());
    }
    if b[6] != level {
        return Err(format!("page is at level {}, expected {level}", b[6]));
    }
    let n = u32_at(b, 8) as usize;
    if n != count || b.len() != HEADER_LEN + n * 32 {
        return Err(format!("page holds {n} ids, expected {count}"));
    }
    Ok(b[HEADER_LEN..].chunks_exact(32).map(Id::read).collect())
}

/// The tree's shape for `chunks` chunks: the number of ids at each level, leaves first, ending
/// with the root's level (a single page). Empty for a zero-length disk.
pub fn levels(chunks: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut n = chunks;
    if n == 0 {
        return out;
    }
    loop {
        out.push(n);
        if n <= FANOUT as u64 {
            return out;
        }
        n = n.div_ceil(FANOUT as u64);
    }
}
