//! Encryption at rest: a store with a key seals every object it writes and opens every object it
//! reads (`Store` calls this; nothing above it sees ciphertext). Each object has its own key,
//! derived from the store's key and a random 128-bit prefix (keyed BLAKE3), and is cut into
//! 64 KiB segments, each sealed with AES-256-GCM under that key with the segment's number as
//! the nonce and the object's full name, the segment's number and whether it is the last as
//! associated data: a changed byte, a segment moved or dropped, an object renamed or cut short,
//! or the wrong key — each is refused. Segments let a range of a pack be read without the rest.
//!
//! ```text
//! object  := "LBENC" 1:u8 0:u16 prefix[16] segment*
//! segment := ciphertext(plain[≤ 65536]) tag[16]     (every segment full but the last)
//! ```

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// Plaintext bytes per segment.
pub const SEGMENT: u64 = 64 << 10;
const TAG: u64 = 16;
const MAGIC: &[u8; 8] = b"LBENC\x01\x00\x00";
/// Magic and nonce prefix.
pub const HEADER: u64 = 8 + 16;

/// A store's key: 32 bytes the user holds (a file or an environment variable, as 64 hex
/// digits); never written to any store.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

impl Key {
    /// From 64 hex digits (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "a key is 64 hex digits (32 bytes; `openssl rand -hex 32` makes one), not {} characters",
                text.len()
            ));
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Self(bytes))
    }

    /// The key of the object whose nonce prefix is `prefix`.
    fn object(&self, prefix: &[u8]) -> Result<LessSafeKey, String> {
        let mut input = Vec::with_capacity(40);
        input.extend_from_slice(b"lifeboat-object-key/2\0");
        input.extend_from_slice(prefix);
        let derived = blake3::keyed_hash(&self.0, &input);
        UnboundKey::new(&AES_256_GCM, derived.as_bytes())
            .map(LessSafeKey::new)
            .map_err(|_| "cannot make an object key".to_string())
    }
}

/// Whether `bytes` begin as a sealed object.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.len() as u64 >= HEADER + TAG && &bytes[..8] == MAGIC
}

/// Whether `header` is a sealed object's header.
pub fn is_sealed_header(header: &[u8]) -> bool {
    header.len() as u64 == HEADER && &header[..8] == MAGIC
}

/// The sealed size of a `plain`-byte object.
pub fn sealed_len(plain: u64) -> u64 {
    HEADER + plain + TAG * segments(plain)
}

/// The plaintext size of a `sealed`-byte object (`None`: no sealed object has that size).
pub fn plain_len(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(HEADER)?;
    let n = body.div_ceil(SEGMENT + TAG).max(1);
    let plain = body.checked_sub(TAG * n)?;
    (segments(plain) == n).then_some(plain)
}

fn segments(plain: u64) -> u64 {
    plain.div_ceil(SEGMENT).max(1)
}

fn nonce(index: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(name: &str, index: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(name.len() + 24);
    a.extend_from_slice(b"lifeboat-object/2\0");
    a.extend_from_slice(name.as_bytes());
    a.push(0);
    a.extend_from_slice(&index.to_le_bytes());
    a.push(u8::from(last));
    a
}

/// Seals object `name`'s `plain` bytes.
pub fn seal(key: &Key, name: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    seal_into(key, name, plain, &mut out)?;
    Ok(out)
}

/// [`seal`], into `out` (cleared first). A buffer kept from an earlier object is written over
/// rather than a fresh one faulted in page by page: for a 32 MiB pack that was most of what
/// sealing cost (AES-GCM itself runs at several GiB/s a core).
pub fn seal_into(key: &Key, name: &str, plain: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut prefix = [0u8; 16];
    getrandom::fill(&mut prefix).map_err(|e| format!("no randomness for a nonce: {e}"))?;
    let n = segments(plain.len() as u64);
    out.clear();
    out.reserve(sealed_len(plain.len() as u64) as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&prefix);
    let cipher = key.object(&prefix)?;
    for i in 0..n {
        let start = (i * SEGMENT) as usize;
        let end = (start + SEGMENT as usize).min(plain.len());
        // In place, in the output: one copy of the data, no buffer per segment.
        let at = out.len();
        out.extend_from_slice(&plain[start..end]);
        let tag = cipher
            .seal_in_place_separate_tag(
                nonce(i),
                Aad::from(aad(name, i, i + 1 == n)),
                &mut out[at..],
            )
            .map_err(|_| "encryption failed".to_string())?;
        out.extend_from_slice(tag.as_ref());
    }
    Ok(())
}

/// Opens a whole sealed object `name`.
pub fn open(key: &Key, name: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
    let plain = plain_len(sealed.len() as u64)
        .filter(|_| is_sealed(sealed))
        .ok_or_else(|| "not a sealed object (or cut short)".to_string())?;
    let cipher = key.object(&sealed[8..HEADER as usize])?;
    let n = segments(plain);
    let mut out = Vec::with_capacity(plain as usize);
    let mut at = HEADER as usize;
    for i in 0..n {
        let segment_plain = if i + 1 == n {
            plain - i * SEGMENT
        } else {
            SEGMENT
        };
        let len = (segment_plain + TAG) as usize;
        out.extend(open_segment(
            &cipher,
            name,
            i,
            i + 1 == n,
            &sealed[at..at + len],
        )?);
        at += len;
    }
    Ok(out)
}

/// The sealed byte range holding plaintext `range` of an object of `sealed_len` bytes, and the
/// number of its first segment.
pub fn sealed_range(range: &std::ops::Range<u64>, sealed_len: u64) -> (std::ops::Range<u64>, u64) {
    let first = range.start / SEGMENT;
    let last = range.end.saturating_sub(1).max(range.start) / SEGMENT;
    let start = HEADER + first * (SEGMENT + TAG);
    let end = (HEADER + (last + 1) * (SEGMENT + TAG)).min(sealed_len);
    (start..end, first)
}

/// Opens plaintext `range` from `body`, the bytes of `sealed_range` (of an object of
/// `sealed_len` bytes whose header is `header`).
pub fn open_range(
    key: &Key,
    name: &str,
    header: &[u8],
    sealed_len: u64,
    range: &std::ops::Range<u64>,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    if header.len() as u64 != HEADER || &header[..8] != MAGIC {
        return Err("not a sealed object".into());
    }
    let plain = plain_len(sealed_len).ok_or("a sealed object of an impossible size")?;
    if range.end > plain || range.start > range.end {
        return Err(format!(
            "range {range:?} is outside the object ({plain} bytes)"
        ));
    }
    let n = segments(plain);
    let (_, first) = sealed_range(range, sealed_len);
    let cipher = key.object(&header[8..])?;
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut i = first;
    while at < body.len() {
        let len = ((SEGMENT + TAG) as usize).min(body.len() - at);
        out.extend(open_segment(
            &cipher,
            name,
            i,
            i + 1 == n,
            &body[at..at + len],
        )?);
        at += len;
        i += 1;
    }
    let skip = (range.start - first * SEGMENT) as usize;
    let want = (range.end - range.start) as usize;
    out.get(skip..skip + want)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "a sealed range shorter than asked".to_string())
}

fn open_segment(
    cipher: &LessSafeKey,
    name: &str,
    index: u64,
    last: bool,
    sealed: &[u8],
) -> Result<Vec<u8>, String> {
    let refused = || {
        "it does not open with the store's key (a wrong key, or the object was altered)".to_string()
    };
    if sealed.len() < TAG as usize {
        return Err(refused());
    }
    let mut buf = sealed.to_vec();
    let len = cipher
        .open_in_place(nonce(index), Aad::from(aad(name, index, last)), &mut buf)
        .map_err(|_| refused())?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key(b: u8) -> Key {
        Key::from_hex(&format!("{b:02x}").repeat(32)).unwrap()
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn objects_of_every_size_open_to_their_bytes() {
        for n in [0, 1, 100, 65_535, 65_536, 65_537, 200_000, 3 * 65_536] {
            let plain = data(n);
            let sealed = seal(&key(1), "repo/x", &plain).unwrap();
            assert_eq!(sealed.len() as u64, sealed_len(n as u64));
            assert_eq!(plain_len(sealed.len() as u64), Some(n as u64));
            assert_eq!(
                open(&key(1), "repo/x", &sealed).unwrap(),
                plain,
                "{n} bytes"
            );
        }
    }

    #[test]
    fn a_changed_byte_a_wrong_key_a_rename_or_a_cut_is_refused() {
        let plain = data(150_000);
        let sealed = seal(&key(1), "repo/x", &plain).unwrap();
        for at in [0, 9, 30, 65_000, 65_560, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(open(&key(1), "repo/x", &bad).is_err(), "flip at {at}");
        }
        assert!(open(&key(2), "repo/x", &sealed).is_err());
        assert!(open(&key(1), "repo/y", &sealed).is_err());
        // Cut at a segment boundary: the new last segment was not sealed as the last.
        let cut = &sealed[..(HEADER + 2 * (SEGMENT + TAG)) as usize];
        assert!(open(&key(1), "repo/x", cut).is_err());
        assert!(Key::from_hex("abc").is_err());
    }

    #[test]
    fn any_range_opens_from_its_segments_alone() {
        let plain = data(300_000);
        let sealed = seal(&key(3), "repo/p", &plain).unwrap();
        let total = sealed.len() as u64;
        for r in [
            0..1,
            0..65_536,
            65_530..65_600,
            131_072..196_608,
            299_000..300_000,
            5..299_999,
        ] {
            let (sr, _) = sealed_range(&r, total);
            let body = &sealed[sr.start as usize..sr.end as usize];
            let got = open_range(
                &key(3),
                "repo/p",
                &sealed[..HEADER as usize],
                total,
                &r,
                body,
            )
            .unwrap();
            assert_eq!(got, plain[r.start as usize..r.end as usize], "{r:?}");
        }
        let (sr, _) = sealed_range(&(0..10), total);
        let mut body = sealed[sr.start as usize..sr.end as usize].to_vec();
        body[3] ^= 1;
        assert!(
            open_range(
                &key(3),
                "repo/p",
                &sealed[..HEADER as usize],
                total,
                &(0..10),
                &body
            )
            .is_err()
        );
    }
}
