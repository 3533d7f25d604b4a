//! Packs: ~16 MiB objects of concatenated blobs and a trailer listing them, so the index can be
//! rebuilt from packs alone.
//!
//! ```text
//! pack    := blob* entry* footer
//! entry   := id[32] offset:u64 stored_len:u32 raw_len:u32 codec:u8 kind:u8          (50 bytes)
//! footer  := count:u32 version:u16 class:u8 0:u8 blake3(entries)[32] "LBPACK01"     (48 bytes)
//! name    := packs/<hex[0..2]>/<hex of unkeyed BLAKE3 of entry* footer>
//! ```
//!
//! The name hashes the trailer, not every byte: the trailer lists each blob's id (a keyed hash
//! of its plaintext), so the name still names the content, and every blob's bytes are checked
//! against its id whenever they are read. Hashing 16 MiB per pack again would cost a tenth of
//! the seed's CPU for no extra detection.
//! ```text
//! ```

use super::{BlobKind, Codec, FORMAT_VERSION, Id, hex, u16_at, u32_at, u64_at};

pub const MAGIC: &[u8; 8] = b"LBPACK01";
pub const ENTRY_LEN: usize = 50;
pub const FOOTER_LEN: usize = 48;
/// A pack is closed once its blobs pass this size.
pub const TARGET_SIZE: usize = 16 << 20;

/// Which stream a pack belongs to: seeds, deltas and metadata are kept apart so GC and repack
/// of short-lived deltas do not rewrite long-lived seed data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackClass {
    Seed = 0,
    Delta = 1,
    Meta = 2,
}

impl PackClass {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Seed),
            1 => Some(Self::Delta),
            2 => Some(Self::Meta),
            _ => None,
        }
    }
}

/// One blob's place in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: Id,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
    pub kind: BlobKind,
}

/// Accumulates blobs into one pack.
#[derive(Debug)]
pub struct PackBuilder {
    class: PackClass,
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

impl PackBuilder {
    pub fn new(class: PackClass) -> Self {
        Self {
            class,
            // Grown as blobs come: most packs of an incremental cycle are small.
            bytes: Vec::new(),
            entries: Vec::new(),
        }
    }

    pub fn add(&mut self, id: Id, kind: BlobKind, codec: Codec, raw_len: u32, stored: &[u8]) {
        self.entries.push(Entry {
            id,
            offset: self.bytes.len() as u64,
            stored_len: stored.len() as u32,
            raw_len,
            codec,
            kind,
        });
        self.bytes.extend_from_slice(stored);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.bytes.len() >= TARGET_SIZE
    }

    /// Closes the pack: its bytes, its name (the hex BLAKE3 of the bytes) and its entries.
    pub fn finish(mut self) -> (String, Vec<u8>, Vec<Entry>) {
        let start = self.bytes.len();
        for e in &self.entries {
            self.bytes.extend_from_slice(&e.id.0);
            self.bytes.extend_from_slice(&e.offset.to_le_bytes());
            self.bytes.extend_from_slice(&e.stored_len.to_le_bytes());
            self.bytes.extend_from_slice(&e.raw_len.to_le_bytes());
            self.bytes.push(e.codec as u8);
            self.bytes.push(e.kind as u8);
        }
        let checksum = blake3::hash(&self.bytes[start..]);
        self.bytes
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        self.bytes.push(self.class as u8);
        self.bytes.push(0);
        self.bytes.extend_from_slice(checksum.as_bytes());
        self.bytes.extend_from_slice(MAGIC);
        let name = hex(blake3::hash(&self.bytes[start..]).as_bytes());
        (name, self.bytes, self.entries)
    }
}

/// The object name of a pack.
pub fn object_name(pack: &str) -> String {
    format!("packs/{}/{pack}", &pack[..2.min(pack.len())])
}

/// A parsed footer: how many entries, which class, and the trailer's checksum.
#[derive(Clone, Copy, Debug)]
pub struct Footer {
    pub count: u32,
    pub class: PackClass,
    checksum: [u8; 32],
}

impl Footer {
    /// Bytes the trailer (entries + footer) takes at the end of the pack.
    pub fn trailer_len(&self) -> u64 {
        self.count as u64 * ENTRY_LEN as u64 + FOOTER_LEN as u64
    }
}

pub fn parse_footer(b: &[u8]) -> Result<Footer, String> {
    if b.len() != FOOTER_LEN || &b[40..48] != MAGIC {
        return Err("no pack footer (bad magic)".into());
    }
    let version = u16_at(b, 4);
    if version != FORMAT_VERSION {
        return Err(format!("pack format version {version} is not supported"));
    }
    let class = PackClass::from_u8(b[6]).ok_or("unknown pack class")?;
    let mut checksum = [0; 32];
    checksum.copy_from_slice(&b[8..40]);
    Ok(Footer {
        count: u32_at(b, 0),
        class,
        checksum,
    })
}

/// Parses the entry list (the bytes just before the footer) and checks it against the footer.
/// `data_len` is where the blobs end; every entry must lie inside it.
pub fn parse_entries(footer: &Footer, b: &[u8], data_len: u64) -> Result<Vec<Entry>, String> {
    if b.len() != footer.count as usize * ENTRY_LEN {
        return Err("pack trailer has the wrong length".into());
    }
    if blake3::hash(b).as_bytes() != &footer.checksum {
        return Err("pack trailer checksum does not match".into());
    }
    b.chunks_exact(ENTRY_LEN)
        .map(|e| {
            let entry = Entry {
                id: Id::read(e),
                offset: u64_at(e, 32),
                stored_len: u32_at(e, 40),
                raw_len: u32_at(e, 44),
                codec: Codec::from_u8(e[48]).ok_or("unknown codec in pack trailer")?,
                kind: BlobKind::from_u8(e[49]).ok_or("unknown blob kind in pack trailer")?,
            };
            if entry.offset + entry.stored_len as u64 > data_len {
                return Err(format!("blob {:?} lies outside the pack", entry.id));
            }
            Ok(entry)
        })
        .collect()
}

/// Whether a pack's trailer (entries and footer) hashes to its name.
pub fn trailer_names(name: &str, trailer: &[u8]) -> bool {
    hex(blake3::hash(trailer).as_bytes()) == name
}

/// Parses a whole pack: its trailer, and that the trailer hashes to the pack's name. (Blobs
/// are checked against their ids when read.)
pub fn parse(name: &str, bytes: &[u8]) -> Result<(Footer, Vec<Entry>), String> {
    if bytes.len() < FOOTER_LEN {
        return Err("shorter than a pack footer".into());
    }
    let footer = parse_footer(&bytes[bytes.len() - FOOTER_LEN..])?;
    let trailer_len = footer.trailer_len();
    if trailer_len > bytes.len() as u64 {
        return Err("pack trailer is longer than the pack".into());
    }
    let data_len = bytes.len() as u64 - trailer_len;
    if !trailer_names(name, &bytes[data_len as usize..]) {
        return Err("pack trailer does not hash to the pack's name".into());
    }
    let entries = parse_entries(
        &footer,
        &bytes[data_len as usize..bytes.len() - FOOTER_LEN],
        data_len,
    )?;
    Ok((footer, entries))
}
