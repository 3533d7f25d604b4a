//! Index files: immutable lists of where each blob lives, one file per commit (and one per GC
//! consolidation), loaded together when a repository opens.
//!
//! ```text
//! index  := "LBINDX01" version:u16 0:u16 packs:u32 entries:u32 pack[32]* entry* blake3(all before)[32]
//! entry  := id[32] pack:u32 offset:u64 stored_len:u32 raw_len:u32 codec:u8 kind:u8   (54 bytes)
//! name   := index/<hex of the trailing BLAKE3>
//! ```

use super::pack::Entry;
use super::{BlobKind, Codec, FORMAT_VERSION, Id, hex, u16_at, u32_at, u64_at, unhex};

pub const MAGIC: &[u8; 8] = b"LBINDX01";
const HEADER_LEN: usize = 20;
const ENTRY_LEN: usize = 54;

/// One pack's entries, as an index file records them.
#[derive(Clone, Debug)]
pub struct PackEntries {
    pub pack: String,
    pub entries: Vec<Entry>,
}

/// Encodes an index file; returns its name (without `index/`) and bytes.
pub fn encode(packs: &[PackEntries]) -> (String, Vec<u8>) {
    let total: usize = packs.iter().map(|p| p.entries.len()).sum();
    let mut b = Vec::with_capacity(HEADER_LEN + packs.len() * 32 + total * ENTRY_LEN + 32);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    b.extend_from_slice(&(total as u32).to_le_bytes());
    for p in packs {
        let raw = unhex(&p.pack).unwrap_or_default();
        let mut name = [0u8; 32];
        let n = raw.len().min(32);
        name[..n].copy_from_slice(&raw[..n]);
        b.extend_from_slice(&name);
    }
    for (i, p) in packs.iter().enumerate() {
        for e in &p.entries {
            b.extend_from_slice(&e.id.0);
            b.extend_from_slice(&(i as u32).to_le_bytes());
            b.extend_from_slice(&e.offset.to_le_bytes());
            b.extend_from_slice(&e.stored_len.to_le_bytes());
            b.extend_from_slice(&e.raw_len.to_le_bytes());
            b.push(e.codec as u8);
            b.push(e.kind as u8);
        }
    }
    let checksum = blake3::hash(&b);
    b.extend_from_slice(checksum.as_bytes());
    (hex(checksum.as_bytes()), b)
}

/// Decodes an index file and checks it hashes to `name`.
pub fn decode(name: &str, b: &[u8]) -> Result<Vec<PackEntries>, String> {
    if b.len() < HEADER_LEN + 32 || &b[..8] != MAGIC {
        return Err("not an index file (bad magic)".into());
    }
    let body = &b[..b.len() - 32];
    if hex(blake3::hash(body).as_bytes()) != name
        || &b[b.len() - 32..] != blake3::hash(body).as_bytes()
    {
        return Err("index bytes do not hash to the index's name".into());
    }
    let version = u16_at(b, 8);
    if version != FORMAT_VERSION {
        return Err(format!("index format version {version} is not supported"));
    }
    let packs = u32_at(b, 12) as usize;
    let entries = u32_at(b, 16) as usize;
    let expected = HEADER_LEN as u64 + packs as u64 * 32 + entries as u64 * ENTRY_LEN as u64;
    if expected != body.len() as u64 {
        return Err("index file has the wrong length".into());
    }
    let mut out: Vec<PackEntries> = (0..packs)
        .map(|i| PackEntries {
            pack: hex(&b[HEADER_LEN + i * 32..HEADER_LEN + (i + 1) * 32]),
            entries: Vec::new(),
        })
        .collect();
    let start = HEADER_LEN + packs * 32;
    for e in body[start..].chunks_exact(ENTRY_LEN) {
        let pack = u32_at(e, 32) as usize;
        let entry = Entry {
            id: Id::read(e),
            offset: u64_at(e, 36),
            stored_len: u32_at(e, 44),
            raw_len: u32_at(e, 48),
            codec: Codec::from_u8(e[52]).ok_or("unknown codec in index")?,
            kind: BlobKind::from_u8(e[53]).ok_or("unknown blob kind in index")?,
        };
        out.get_mut(pack)
            .ok_or("index entry names a pack the index does not list")?
            .entries
            .push(entry);
    }
    Ok(out)
}
