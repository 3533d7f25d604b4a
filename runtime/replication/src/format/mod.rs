//! The repository's byte layouts, pure: encode and decode, no I/O. `docs/reference/repository-format.md`
//! describes the same layouts for people; keep the two in step.

pub mod index;
pub mod manifest;
pub mod pack;
pub mod page;

use std::fmt;

/// The version every object of this format carries.
pub const FORMAT_VERSION: u16 = 1;

/// A 32-byte content id: keyed BLAKE3 of a chunk's or page's plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The sentinel for an all-zero chunk (or a page whose entries are all zero): never stored.
    pub const ZERO: Id = Id([0; 32]);

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    pub fn parse_hex(s: &str) -> Option<Self> {
        let bytes = unhex(s)?;
        Some(Id(bytes.try_into().ok()?))
    }

    pub(crate) fn read(bytes: &[u8]) -> Self {
        let mut id = [0; 32];
        id.copy_from_slice(&bytes[..32]);
        Id(id)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.hex()[..12])
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// The repository's keys: ids are keyed so they are specific to one repository, and manifests
/// carry a MAC so a changed byte is caught even where no hash names the object.
#[derive(Clone)]
pub struct Keys {
    chunk: [u8; 32],
    mac: [u8; 32],
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn new(chunk: [u8; 32]) -> Self {
        let mac = blake3::derive_key("lifeboat repository 2026 manifest mac", &chunk);
        Self { chunk, mac }
    }

    /// The id of a chunk or page plaintext. All-zero chunks are `Id::ZERO` and never hashed.
    pub fn id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.chunk, plaintext).as_bytes())
    }

    pub fn mac(&self, bytes: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.mac, bytes).as_bytes()
    }

    pub fn chunk_key(&self) -> &[u8; 32] {
        &self.chunk
    }
}

/// What a blob in a pack holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobKind {
    Chunk = 0,
    Page = 1,
}

impl BlobKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Chunk),
            1 => Some(Self::Page),
            _ => None,
        }
    }
}

/// How a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

impl Codec {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Raw),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// Compresses a plaintext with zstd level 1; `None` when it should be stored raw (it saves
/// under 5 %).
pub fn compress(plain: &[u8]) -> Option<Vec<u8>> {
    // Random-looking data (encrypted or already compressed) is common on disks and costs zstd
    // as much as text: try a 4 KiB sample first and keep the chunk raw if it does not shrink.
    const SAMPLE: usize = 4096;
    thread_local! {
        // One context per thread: creating one per chunk costs more than compressing 64 KiB.
        static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    ZSTD.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = zstd::bulk::Compressor::new(1).ok();
        }
        let z = cell.as_mut()?;
        if plain.len() > 4 * SAMPLE
            && z.compress(&plain[..SAMPLE])
                .is_ok_and(|c| c.len() * 100 >= SAMPLE * 97)
        {
            return None;
        }
        z.compress(plain)
            .ok()
            .filter(|c| c.len() * 100 < plain.len() * 95)
    })
}

/// Decodes a stored blob and checks it hashes to `id`. Anything else is damage.
pub fn decode_blob(
    keys: &Keys,
    id: Id,
    codec: Codec,
    raw_len: u32,
    stored: &[u8],
) -> Result<Vec<u8>, String> {
    let plain = match codec {
        Codec::Raw => stored.to_vec(),
        Codec::Zstd => zstd::bulk::decompress(stored, raw_len as usize)
            .map_err(|e| format!("blob {id:?} does not decompress: {e}"))?,
    };
    if plain.len() != raw_len as usize {
        return Err(format!(
            "blob {id:?} is {} bytes, the index says {raw_len}",
            plain.len()
        ));
    }
    if keys.id(&plain) != id {
        return Err(format!("blob {id:?} does not hash to its id"));
    }
    Ok(plain)
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Little-endian readers over a slice the caller has length-checked.
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}
