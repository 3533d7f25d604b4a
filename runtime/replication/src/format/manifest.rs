//! Recovery-point manifests: the last object a commit writes, with put-if-absent. A manifest that
//! exists is complete: everything it names was written and synced before it.
//!
//! ```text
//! manifest := canonical JSON body "\n" "mac " hex(keyed BLAKE3 of the body) "\n"
//! name     := points/<group>/<u64::MAX - seq, zero-padded to 20 digits>   (newest lists first)
//! ```

use serde::{Deserialize, Serialize};

use super::{FORMAT_VERSION, Id, Keys, hex};

/// How consistent a point is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointKind {
    /// The disks as they were at one instant: what a power cut leaves.
    Crash,
    /// Taken while every VM's quiesce hook held its application consistent.
    App,
}

impl PointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::App => "app",
        }
    }
}

/// One disk in a point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPoint {
    pub name: String,
    /// The image it was captured from (as the inventory names it).
    pub source: String,
    pub size: u64,
    pub chunk_size: u32,
    /// Root of the chunk-map tree (hex id; all zeros for an empty or all-zero disk).
    pub root: String,
    /// Bytes of chunks that differed from the parent point.
    pub changed_bytes: u64,
}

impl DiskPoint {
    pub fn root_id(&self) -> Option<Id> {
        Id::parse_hex(&self.root)
    }

    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk_size.max(1) as u64)
    }
}

/// One VM in a point: its inventory definition as it was when the point was taken, so the
/// target site can boot it without the source's inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPoint {
    pub name: String,
    pub definition: serde_json::Value,
    pub disks: Vec<DiskPoint>,
}

/// A recovery point of one consistency group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u16,
    pub group: String,
    pub seq: u64,
    pub parent: Option<u64>,
    pub kind: PointKind,
    /// The cut, by the source's clock: RFC 3339 and Unix milliseconds.
    pub captured_at: String,
    pub captured_unix_ms: u64,
    pub committed_at: String,
    pub committed_unix_ms: u64,
    /// The writer's epoch: a writer that sees a higher one is fenced.
    pub epoch: u64,
    /// Who wrote it (host and process), for messages.
    pub writer: String,
    pub vms: Vec<VmPoint>,
    /// What a user must know of this point, such as `unsafe-live-read: …` (a disk read while a
    /// process Lifeboat could not hold still wrote it). Absent from points without notes, so
    /// their bytes are what earlier versions wrote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Manifest {
    pub fn new_format() -> u16 {
        FORMAT_VERSION
    }

    pub fn encode(&self, keys: &Keys) -> Vec<u8> {
        // serde_json writes struct fields in declaration order and `Value` maps sorted: the
        // body is canonical for a given manifest.
        let mut b = serde_json::to_vec(self).unwrap_or_default();
        let mac = keys.mac(&b);
        b.push(b'\n');
        b.extend_from_slice(b"mac ");
        b.extend_from_slice(hex(&mac).as_bytes());
        b.push(b'\n');
        b
    }

    pub fn decode(keys: &Keys, b: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(b).map_err(|_| "manifest is not UTF-8".to_string())?;
        let text = text
            .strip_suffix('\n')
            .ok_or("manifest does not end with its MAC line")?;
        let (body, mac) = text
            .rsplit_once("\nmac ")
            .ok_or("manifest has no MAC line")?;
        if hex(&keys.mac(body.as_bytes())) != mac {
            return Err("manifest MAC does not match its contents".into());
        }
        let m: Manifest =
            serde_json::from_str(body).map_err(|e| format!("manifest does not parse: {e}"))?;
        if m.format != FORMAT_VERSION {
            return Err(format!("manifest format {} is not supported", m.format));
        }
        Ok(m)
    }
}

/// The object name of point `seq` of `group`.
pub fn object_name(group: &str, seq: u64) -> String {
    format!("points/{group}/{:020}", u64::MAX - seq)
}

/// The sequence number in a manifest's object name.
pub fn seq_of(name: &str) -> Option<u64> {
    let last = name.rsplit('/').next()?;
    if last.len() != 20 {
        return None;
    }
    Some(u64::MAX - last.parse::<u64>().ok()?)
}
