//! Capture: read a disk (an image file, or a hypervisor's frozen view of it), split it into
//! fixed chunks, hash them, and hand on only the chunks that differ from the parent point and
//! are not already stored; with the extents written since the parent's cut, read only those.
//! Blocking code; the cycle runs it on a blocking thread and receives closed packs over a channel.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::pack::{Entry, PackBuilder, PackClass};
use crate::format::{BlobKind, Codec, Id, Keys, compress};

/// Chunks read and hashed together: enough to keep both cores busy, small enough for the cache.
const BATCH_BYTES: usize = 4 << 20;

/// A closed pack on its way to the cache and the repository.
#[derive(Debug)]
pub struct SealedPack {
    pub name: String,
    pub bytes: Vec<u8>,
    pub entries: Vec<Entry>,
}

/// Where closed packs go (the cycle's uploader). Returns an error if the uploader stopped.
pub type PackSender = tokio::sync::mpsc::Sender<SealedPack>;

/// Called with bytes scanned, for progress bars.
pub type ProgressFn<'a> = &'a (dyn Fn(u64) + Sync);

/// What a scan found.
#[derive(Debug)]
pub struct Scanned {
    pub size: u64,
    /// One id per chunk, in offset order.
    pub map: Vec<Id>,
    /// Bytes of chunks that differ from the parent (zero chunks included).
    pub changed_bytes: u64,
    /// Bytes of chunks that had to be stored (not in the repository already), before compression.
    pub new_bytes: u64,
    /// Bytes those chunks took once compressed.
    pub stored_bytes: u64,
    /// Bytes read from the disk (holes and chunks kept from the parent are not read).
    pub read_bytes: u64,
    /// Ids the map reuses from the repository that are not in the parent's map at the same place.
    pub reused: HashSet<Id>,
}

/// Blobs accumulated into packs and sent when full.
pub struct PackSink {
    builder: PackBuilder,
    class: PackClass,
    sender: PackSender,
}

impl std::fmt::Debug for PackSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackSink")
            .field("class", &self.class)
            .finish()
    }
}

impl PackSink {
    pub fn new(class: PackClass, sender: PackSender) -> Self {
        Self {
            builder: PackBuilder::new(class),
            class,
            sender,
        }
    }

    pub fn add(
        &mut self,
        id: Id,
        kind: BlobKind,
        plain_len: usize,
        codec: Codec,
        stored: &[u8],
    ) -> Result<()> {
        self.builder.add(id, kind, codec, plain_len as u32, stored);
        if self.builder.is_full() {
            self.flush()?;
        }
        Ok(())
    }

    /// Whether the uploader stopped (the cycle abandoned the capture): the scan stops too.
    pub fn abandoned(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends the pack being built, if it holds anything.
    pub fn flush(&mut self) -> Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let builder = std::mem::replace(&mut self.builder, PackBuilder::new(self.class));
        let (name, bytes, entries) = builder.finish();
        self.sender
            .blocking_send(SealedPack {
                name,
                bytes,
                entries,
            })
            .map_err(|_| Error::failed("the pack uploader stopped"))
    }
}

/// What a scan reads: an image file, or a frozen view a hypervisor serves over NBD.
pub trait DiskReader: Send + Sync {
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Where data may be (the rest reads as zeros): the whole disk unless the reader knows.
    fn data_regions(&self) -> Vec<(u64, u64)> {
        vec![(0, self.size())]
    }
    /// For errors: what is read.
    fn describe(&self) -> String;
}

/// A raw image file.
#[derive(Debug)]
pub struct FileReader {
    file: File,
    path: PathBuf,
    size: u64,
}

impl FileReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .map_err(|e| Error::io(format!("cannot open disk image {}", path.display()), e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io(format!("cannot stat disk image {}", path.display()), e))?
            .len();
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
        })
    }
}

impl DiskReader for FileReader {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn data_regions(&self) -> Vec<(u64, u64)> {
        data_regions(&self.file, self.size)
    }
    fn describe(&self) -> String {
        format!("disk image {}", self.path.display())
    }
}

impl DiskReader for crate::nbd::NbdExport {
    fn size(&self) -> u64 {
        crate::nbd::NbdExport::size(self)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        crate::nbd::NbdExport::read_at(self, buf, offset)
    }
    fn describe(&self) -> String {
        format!("NBD export at {}", self.socket().display())
    }
}

/// Scans one disk. `parent` is the parent point's map of the same disk (same chunk size),
/// `dirty` the byte extents written since the parent's cut when the hypervisor proved them
/// (only those chunks are read; the others keep the parent's ids), `known` says whether a blob
/// is already stored, `seen` holds ids stored earlier in this cycle.
#[allow(clippy::too_many_arguments)]
pub fn scan(
    reader: &dyn DiskReader,
    dirty: Option<&[(u64, u64)]>,
    chunk_size: u32,
    keys: &Keys,
    parent: Option<&[Id]>,
    known: &(dyn Fn(&Id) -> bool + Sync),
    seen: &mut HashSet<Id>,
    sink: &mut PackSink,
    progress: ProgressFn<'_>,
) -> Result<Scanned> {
    let size = reader.size();
    let cs = chunk_size as u64;
    let chunks = size.div_ceil(cs);
    // Dirty extents say what changed since the parent: without a parent of this very shape
    // there is nothing to keep, so everything is read.
    let dirty = dirty.filter(|_| parent.is_some_and(|p| p.len() as u64 == chunks));
    let spans = spans(chunks, cs, dirty);
    let data = reader.data_regions();
    let per_batch = (BATCH_BYTES as u64 / cs).max(1);
    let out = Scanned {
        size,
        map: Vec::with_capacity(chunks as usize),
        changed_bytes: 0,
        new_bytes: 0,
        stored_bytes: 0,
        read_bytes: 0,
        reused: HashSet::new(),
    };
    // A reader thread fills batches ahead while this one hashes and compresses: reading from the
    // page cache is a copy that would otherwise leave a core idle.
    let (batches, incoming) = std::sync::mpsc::sync_channel::<Result<Batch>>(2);
    let (recycle, spare) = std::sync::mpsc::channel::<Vec<u8>>();
    let (spans, data) = (&spans, &data);
    std::thread::scope(|scope| -> Result<Scanned> {
        // The reader owns the sending side: when it is done, the scan sees the end; when the
        // scan stops early, it drops the receiver and the reader's next send fails.
        scope.spawn(move || {
            read_batches(reader, size, cs, per_batch, spans, data, &batches, &spare)
        });
        scan_batches(
            incoming, &recycle, chunk_size, keys, parent, known, seen, sink, progress, out,
        )
    })
}

/// The disk's chunks in order as runs to read (`true`) or to keep from the parent (`false`).
fn spans(chunks: u64, cs: u64, dirty: Option<&[(u64, u64)]>) -> Vec<(u64, u64, bool)> {
    let Some(dirty) = dirty else {
        return vec![(0, chunks, true)];
    };
    let mut runs: Vec<(u64, u64)> = dirty
        .iter()
        .filter(|(_, len)| *len > 0)
        .map(|&(off, len)| (off / cs, (off + len).div_ceil(cs).min(chunks)))
        .filter(|(a, b)| a < b)
        .collect();
    runs.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0u64;
    for (start, end) in runs {
        let start = start.max(at);
        if end <= start {
            continue;
        }
        if start > at {
            out.push((at, start - at, false));
        }
        match out.last_mut() {
            Some((first, n, true)) if *first + *n == start => *n += end - start,
            _ => out.push((start, end - start, true)),
        }
        at = end;
    }
    if at < chunks {
        out.push((at, chunks - at, false));
    }
    out
}

/// One batch read ahead: chunks `first..first + n`, `len` bytes (no bytes when all are holes,
/// or when they are kept from the parent: `keep`).
struct Batch {
    first: u64,
    n: u64,
    len: usize,
    keep: bool,
    bytes: Option<Vec<u8>>,
}

#[allow(clippy::too_many_arguments)]
fn read_batches(
    reader: &dyn DiskReader,
    size: u64,
    cs: u64,
    per_batch: u64,
    spans: &[(u64, u64, bool)],
    data: &[(u64, u64)],
    batches: &std::sync::mpsc::SyncSender<Result<Batch>>,
    spare: &std::sync::mpsc::Receiver<Vec<u8>>,
) {
    for &(span_first, span_n, read) in spans {
        let span_end = span_first + span_n;
        if !read {
            let len = ((span_end * cs).min(size) - span_first * cs) as usize;
            let kept = Batch {
                first: span_first,
                n: span_n,
                len,
                keep: true,
                bytes: None,
            };
            if batches.send(Ok(kept)).is_err() {
                return;
            }
            continue;
        }
        let mut first = span_first;
        while first < span_end {
            let n = per_batch.min(span_end - first);
            let start = first * cs;
            let end = (start + n * cs).min(size);
            let len = (end - start) as usize;
            // Holes the reader reported are zeros: skip reading batches wholly inside one.
            let region = data.partition_point(|r| r.1 <= start);
            let any_data = region < data.len() && data[region].0 < end;
            let bytes = if any_data {
                let mut buf = spare.try_recv().unwrap_or_default();
                buf.resize(len, 0);
                if let Err(e) = reader.read_at(&mut buf, start) {
                    let _ = batches.send(Err(Error::io(
                        format!("cannot read {} at {start}", reader.describe()),
                        e,
                    )));
                    return;
                }
                Some(buf)
            } else {
                None
            };
            let batch = Batch {
                first,
                n,
                len,
                keep: false,
                bytes,
            };
            if batches.send(Ok(batch)).is_err() {
                return;
            }
            first += n;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn scan_batches(
    incoming: std::sync::mpsc::Receiver<Result<Batch>>,
    recycle: &std::sync::mpsc::Sender<Vec<u8>>,
    chunk_size: u32,
    keys: &Keys,
    parent: Option<&[Id]>,
    known: &(dyn Fn(&Id) -> bool + Sync),
    seen: &mut HashSet<Id>,
    sink: &mut PackSink,
    progress: ProgressFn<'_>,
    mut out: Scanned,
) -> Result<Scanned> {
    while let Ok(batch) = incoming.recv() {
        // The cycle abandons a capture (a cut held past its bound) by stopping the uploader.
        if sink.abandoned() {
            return Err(Error::failed("capture abandoned"));
        }
        let Batch {
            first,
            n,
            len,
            keep,
            bytes,
        } = batch?;
        if keep {
            // Not written since the parent's cut: the parent's chunks, unread.
            let from = first as usize..(first + n) as usize;
            let kept = parent
                .and_then(|p| p.get(from))
                .ok_or_else(|| Error::failed("a kept span lies outside the parent's map"))?;
            out.map.extend_from_slice(kept);
            progress(len as u64);
            continue;
        }
        let any_data = bytes.is_some();
        if any_data {
            out.read_bytes += len as u64;
        }
        let batch: &[u8] = bytes.as_deref().unwrap_or(&[]);
        let ids: Vec<Id> = if any_data {
            batch
                .par_chunks(chunk_size as usize)
                .map(|c| if is_zero(c) { Id::ZERO } else { keys.id(c) })
                .collect()
        } else {
            vec![Id::ZERO; n as usize]
        };
        let mut to_store = Vec::new();
        for (j, id) in ids.iter().enumerate() {
            let index = (first + j as u64) as usize;
            let chunk_len = (len - j * chunk_size as usize).min(chunk_size as usize);
            // Without a parent, the disk is compared with an empty one: zeros are no change.
            let same = match parent {
                Some(p) => p.get(index) == Some(id),
                None => id.is_zero(),
            };
            out.map.push(*id);
            if same {
                continue;
            }
            out.changed_bytes += chunk_len as u64;
            if id.is_zero() || seen.contains(id) {
                continue;
            }
            if known(id) {
                out.reused.insert(*id);
                continue;
            }
            seen.insert(*id);
            to_store.push(j);
        }
        let compressed: Vec<(usize, Option<Vec<u8>>)> = to_store
            .par_iter()
            .map(|&j| {
                let c = &batch[j * chunk_size as usize..len.min((j + 1) * chunk_size as usize)];
                (j, compress(c))
            })
            .collect();
        for (j, z) in compressed {
            let c = &batch[j * chunk_size as usize..len.min((j + 1) * chunk_size as usize)];
            let (codec, stored) = match &z {
                Some(z) => (Codec::Zstd, z.as_slice()),
                None => (Codec::Raw, c),
            };
            out.new_bytes += c.len() as u64;
            out.stored_bytes += stored.len() as u64;
            sink.add(ids[j], BlobKind::Chunk, c.len(), codec, stored)?;
        }
        progress(len as u64);
        if let Some(b) = bytes {
            let _ = recycle.send(b);
        }
    }
    Ok(out)
}

fn is_zero(c: &[u8]) -> bool {
    c.chunks(512)
        .all(|b| b.iter().fold(0u8, |acc, x| acc | x) == 0)
}

/// The file's data regions as the OS reports them (SEEK_DATA / SEEK_HOLE), or the whole file
/// when the file system cannot tell.
pub(crate) fn data_regions(file: &File, size: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return vec![(0, size)],
        };
        let end = match seek(file, SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(_) => return vec![(0, size)],
        };
        if end <= start {
            return vec![(0, size)];
        }
        out.push((start, end));
        pos = end;
    }
    out
}

/// A point-in-time view of an image for one scan: a reflink copy where the file system makes
/// one, a raw conversion for qcow2, or the image itself.
#[derive(Debug)]
pub struct View {
    pub path: PathBuf,
    /// True when `path` is a copy frozen at the cut, so writers may resume before the scan.
    pub frozen: bool,
    _temps: Vec<tempfile::TempPath>,
}

/// Takes the cut of one image: a reflink copy if the file system has them.
pub fn snapshot(image: &Path) -> Result<View> {
    let dir = image.parent().unwrap_or(Path::new("."));
    let temp = tempfile::Builder::new()
        .prefix(".lifeboat-snap-")
        .tempfile_in(dir)
        .map_err(|e| {
            Error::io(
                format!("cannot create a snapshot next to {}", image.display()),
                e,
            )
        })?
        .into_temp_path();
    let reflinked = Command::new("cp")
        .arg("--reflink=always")
        .arg("--sparse=always")
        .arg(image)
        .arg(&temp)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if reflinked {
        Ok(View {
            path: temp.to_path_buf(),
            frozen: true,
            _temps: vec![temp],
        })
    } else {
        Ok(View {
            path: image.to_path_buf(),
            frozen: false,
            _temps: Vec::new(),
        })
    }
}

/// The cut of `image` as the guest's raw disk: `snapshot`, and a qcow2 image converted to the
/// raw disk it holds.
pub fn raw_view(image: &Path) -> Result<View> {
    let view = snapshot(image)?;
    if is_qcow2(&view.path)? {
        qcow2_to_raw(view)
    } else {
        Ok(view)
    }
}

/// Whether an image is qcow2 (by its magic).
pub fn is_qcow2(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = File::open(path)
        .map_err(|e| Error::io(format!("cannot open disk image {}", path.display()), e))?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"QFI\xfb"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(
            format!("cannot read disk image {}", path.display()),
            e,
        )),
    }
}

/// Converts a qcow2 view to a sparse raw file with `qemu-img convert`, for scanning.
pub fn qcow2_to_raw(view: View) -> Result<View> {
    let dir = view.path.parent().unwrap_or(Path::new("."));
    let temp = tempfile::Builder::new()
        .prefix(".lifeboat-raw-")
        .tempfile_in(dir)
        .map_err(|e| {
            Error::io(
                format!("cannot create a raw copy next to {}", view.path.display()),
                e,
            )
        })?
        .into_temp_path();
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "raw", "-S", "4k"])
        .arg(&view.path)
        .arg(&temp)
        .output()
        .map_err(|e| Error::io("cannot run qemu-img (install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(Error::failed(format!(
            "qemu-img convert {} failed: {}",
            view.path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut temps = view._temps;
    temps.push(temp);
    Ok(View {
        path: temps.last().map(|t| t.to_path_buf()).unwrap_or_default(),
        // The conversion ran under the cut, so the raw copy is frozen at it.
        frozen: true,
        _temps: temps,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn scan_file(path: &Path, parent: Option<&[Id]>, dirty: Option<&[(u64, u64)]>) -> Scanned {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<SealedPack>(4);
        let drain = std::thread::spawn(move || while rx.blocking_recv().is_some() {});
        let mut sink = PackSink::new(PackClass::Delta, tx);
        let reader = FileReader::open(path).unwrap();
        let keys = Keys::new([3; 32]);
        let scanned = scan(
            &reader,
            dirty,
            64 << 10,
            &keys,
            parent,
            &|_| false,
            &mut HashSet::new(),
            &mut sink,
            &|_| {},
        )
        .unwrap();
        sink.flush().unwrap();
        drop(sink);
        drain.join().unwrap();
        scanned
    }

    #[test]
    fn reading_only_the_dirty_extents_gives_the_full_scans_map() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let first = scan_file(&path, None, None);
        // Writes the way a guest makes them: unaligned, one across a chunk boundary.
        let writes = [(100_000u64, 300u64), (3 * 65_536 - 10, 20), (7 << 20, 4096)];
        for &(off, len) in &writes {
            for b in &mut data[off as usize..(off + len) as usize] {
                *b = b.wrapping_add(1);
            }
        }
        std::fs::write(&path, &data).unwrap();
        let full = scan_file(&path, Some(&first.map), None);
        let incremental = scan_file(&path, Some(&first.map), Some(&writes));
        assert_eq!(incremental.map, full.map);
        assert_eq!(incremental.changed_bytes, full.changed_bytes);
        assert_eq!(full.changed_bytes, 4 * 65_536);
        assert_eq!(full.read_bytes, 8 << 20);
        assert_eq!(incremental.read_bytes, 4 * 65_536);
        // Without a parent of the same shape the extents cannot be trusted: all is read.
        let unparented = scan_file(&path, None, Some(&writes));
        assert_eq!(unparented.read_bytes, 8 << 20);
    }

    #[test]
    fn spans_cover_every_chunk_once() {
        let dirty = [
            (0u64, 1u64),
            (10 * 64, 64 * 3),
            (11 * 64, 64),
            (40 * 64, 64),
        ];
        assert_eq!(
            spans(42, 64, Some(&dirty)),
            vec![
                (0, 1, true),
                (1, 9, false),
                (10, 3, true),
                (13, 27, false),
                (40, 1, true),
                (41, 1, false)
            ]
        );
        assert_eq!(spans(5, 64, None), vec![(0, 5, true)]);
        assert_eq!(spans(5, 64, Some(&[])), vec![(0, 5, false)]);
    }
}
