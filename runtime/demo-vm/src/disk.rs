//! The demo VM's disk: a ring of fixed 4 KiB slots, record `n` in slot `n % slots`. Each record
//! carries its sequence number, the instant it was written and a checksum, and is synced before
//! the next is written, so any crash-consistent image of the disk holds every record up to some
//! `n` that still fits in the ring and nothing after it. That makes data loss measurable: the
//! last intact record of a restored image against the last one the source wrote.
//!
//! ```text
//! slot := "LBREC001" seq:u64 unix_ms:u64 payload[4040] blake3(magic..payload)[16]
//! ```

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use serde::Serialize;

pub const SLOT: usize = 4096;
const MAGIC: &[u8; 8] = b"LBREC001";
const SUM: usize = 16;

/// One record as found on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    pub seq: u64,
    pub unix_ms: u64,
}

/// What a scan of the disk found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Check {
    /// The newest intact record, if any.
    pub last: Option<Record>,
    /// Records that should be in the ring (the `slots` before `last`) but are missing or torn.
    pub missing: Vec<u64>,
    /// Slots holding a record whose checksum fails (a torn or damaged write).
    pub torn_slots: Vec<u64>,
    pub slots: u64,
}

impl Check {
    /// Consistent: every record the ring should hold up to the newest is there. One torn slot
    /// after the newest record is what a crash mid-write leaves, and is allowed.
    pub fn consistent(&self) -> bool {
        self.missing.is_empty()
    }
}

pub fn encode(seq: u64, unix_ms: u64) -> [u8; SLOT] {
    let mut b = [0u8; SLOT];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&unix_ms.to_le_bytes());
    // A payload that changes with every record, so each write is real data.
    let fill = blake3::hash(&seq.to_le_bytes());
    for (i, chunk) in b[24..SLOT - SUM].chunks_mut(32).enumerate() {
        let n = chunk.len();
        chunk.copy_from_slice(&fill.as_bytes()[..n]);
        chunk[0] ^= i as u8;
    }
    let sum = blake3::hash(&b[..SLOT - SUM]);
    b[SLOT - SUM..].copy_from_slice(&sum.as_bytes()[..SUM]);
    b
}

/// A slot's record: `Ok(None)` for an empty slot, `Err(())` for a torn one.
fn decode(b: &[u8]) -> Result<Option<Record>, ()> {
    if b.iter().all(|x| *x == 0) {
        return Ok(None);
    }
    if &b[..8] != MAGIC || blake3::hash(&b[..SLOT - SUM]).as_bytes()[..SUM] != b[SLOT - SUM..] {
        return Err(());
    }
    let u64_at = |at: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(v)
    };
    Ok(Some(Record {
        seq: u64_at(8),
        unix_ms: u64_at(16),
    }))
}

/// The size of a disk: an image file's length, or a block device's (`/dev/vda` in a real
/// guest), whose metadata says 0.
pub fn size(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len > 0 {
        return Ok(len);
    }
    let mut f = file;
    io::Seek::seek(&mut f, io::SeekFrom::End(0))
}

/// Scans every slot of the disk.
pub fn check(file: &File) -> io::Result<Check> {
    let slots = size(file)? / SLOT as u64;
    let mut found = vec![None; slots as usize];
    let mut torn = Vec::new();
    let mut buf = vec![0u8; SLOT * 256];
    let mut slot = 0u64;
    while slot < slots {
        let n = (slots - slot).min(256) as usize;
        file.read_exact_at(&mut buf[..n * SLOT], slot * SLOT as u64)?;
        for (j, b) in buf[..n * SLOT].chunks(SLOT).enumerate() {
            match decode(b) {
                Ok(r) => found[slot as usize + j] = r,
                Err(()) => torn.push(slot + j as u64),
            }
        }
        slot += n as u64;
    }
    let last = found.iter().flatten().max_by_key(|r| r.seq).copied();
    let mut missing = Vec::new();
    if let Some(last) = last {
        // The slot after the newest may hold a torn write of the next record, which took the
        // oldest one with it: check the ring minus that slot.
        let first = last.seq.saturating_sub(slots.saturating_sub(2)).max(1);
        for seq in first..=last.seq {
            let at = (seq % slots) as usize;
            if found[at].map(|r| r.seq) != Some(seq) {
                missing.push(seq);
            }
        }
    }
    Ok(Check {
        last,
        missing,
        torn_slots: torn,
        slots,
    })
}

/// Writes record `seq` and syncs it.
pub fn write(file: &File, slots: u64, seq: u64, unix_ms: u64) -> io::Result<()> {
    file.write_all_at(&encode(seq, unix_ms), (seq % slots) * SLOT as u64)?;
    file.sync_data()
}
