//! A point's disks served over NBD, read-only, straight from the repository (any store, sealed
//! or not): what a VM boots from before its disks are restored, and what `qemu-img`, `qemu-nbd`
//! or `nbdfuse` read a point through without restoring it.
//!
//! The fixed newstyle handshake (`NBD_OPT_GO`/`INFO`/`EXPORT_NAME`, one export per disk, named
//! as the disk), structured replies (a zero chunk is sent as a hole, so copies skip it), the
//! `base:allocation` context for block status, and simple replies for clients that want them.
//! Chunks are fetched and checked against their ids as restore does, kept in an LRU cache, and
//! the next few chunks after each read are fetched ahead of the reader; with the trace of an
//! earlier boot of the VM (`trace`), its chunks are fetched in that order, a window ahead of the
//! guest. The protocol's numbers the client (`nbd`) also speaks are its.

pub mod trace;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::{Error, Result};
use crate::format::manifest::Manifest;
use crate::format::{self, Id, pack};
use crate::nbd::{
    CMD_BLOCK_STATUS, CMD_DISC, CMD_READ, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT,
    INFO_EXPORT, NBDMAGIC, OPT_EXPORT_NAME, OPT_GO, OPT_REPLY_MAGIC, OPT_SET_META_CONTEXT,
    OPT_STRUCTURED_REPLY, REP_ACK, REP_INFO, REP_META_CONTEXT, REPLY_FLAG_DONE,
    REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_NONE, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
};
use crate::repo::Repository;

const CLIENT_NO_ZEROES: u32 = 2;

const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_LIST_META_CONTEXT: u32 = 9;

const REP_SERVER: u32 = 2;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const INFO_BLOCK_SIZE: u16 = 3;

/// Has flags, read-only, multiple connections safe (nothing is written).
const TRANSMISSION_FLAGS: u16 = 1 | 2 | (1 << 8);

const CMD_FLUSH: u16 = 3;

const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

const STATE_HOLE: u32 = 1;
const STATE_ZERO: u32 = 2;

const EIO: u32 = 5;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;

/// The most extents one block-status reply describes.
const MAX_DESCRIPTORS: usize = 64;
/// The context id `base:allocation` gets.
const ALLOCATION_CONTEXT: u32 = 1;
/// The longest read served at once (qemu's clients ask for at most 32 MiB).
const MAX_REQUEST: u32 = 32 << 20;
/// The longest option a client may send.
const MAX_OPTION: u32 = 64 << 10;

/// One disk of a point, servable.
#[derive(Debug)]
pub struct DiskExport {
    pub name: String,
    pub size: u64,
    chunk_size: u64,
    map: Vec<Id>,
    repo: Arc<Repository>,
    cache: Mutex<Cache>,
    /// Chunks being fetched: a reader and the read-ahead asking for one chunk share one fetch.
    fetching: Mutex<HashMap<u64, Fetch>>,
    /// Chunks fetched ahead of the reader, at most this many at once.
    ahead: Arc<tokio::sync::Semaphore>,
    /// The chunks read first, in order, while a boot is being recorded.
    recording: Mutex<Option<trace::Recorder>>,
    /// Where the reader is in the trace being followed: each chunk's place in it, and the
    /// farthest place read (the follower fetches up to a window past it).
    following: std::sync::OnceLock<(HashMap<u64, usize>, tokio::sync::watch::Sender<usize>)>,
}

/// What a server keeps in memory per disk, at most.
pub const CACHE_BYTES: u64 = 64 << 20;
/// Reads one connection has in flight at most.
const READS_IN_FLIGHT: usize = 16;
/// How many chunks of one read are fetched at once.
const FETCH_AT_ONCE: usize = 8;
/// How many chunks past a read are fetched ahead of the reader.
const READ_AHEAD: u64 = 4;
/// How far ahead of the guest a followed boot trace is fetched (16 MiB of 64 KiB chunks).
const FOLLOW_WINDOW: usize = 256;

/// One fetch of a chunk, awaited by everyone who asked for it meanwhile.
type Fetch = Arc<tokio::sync::OnceCell<std::result::Result<Arc<Vec<u8>>, String>>>;

#[derive(Debug, Default)]
struct Cache {
    chunks: HashMap<u64, Arc<Vec<u8>>>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl Cache {
    fn get(&mut self, i: u64) -> Option<Arc<Vec<u8>>> {
        let c = self.chunks.get(&i)?.clone();
        self.order.retain(|x| *x != i);
        self.order.push_back(i);
        Some(c)
    }

    fn put(&mut self, i: u64, c: Arc<Vec<u8>>) {
        if self.chunks.insert(i, c).is_none() {
            self.order.push_back(i);
        }
        while self.chunks.len() > self.capacity.max(1) {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.chunks.remove(&old);
        }
    }
}

impl DiskExport {
    /// The disk's all-zero stretches (zero or absent chunks, neighbours merged), as
    /// (offset, length): what an instant boot marks zero in its image before the VM starts, so
    /// neither the guest nor hydration ever asks the server for them.
    pub fn zero_runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (i, id) in self.map.iter().enumerate() {
            if !id.is_zero() {
                continue;
            }
            let at = i as u64 * self.chunk_size;
            let len = self.chunk_size.min(self.size.saturating_sub(at));
            match runs.last_mut() {
                Some((start, l)) if *start + *l == at => *l += len,
                _ => runs.push((at, len)),
            }
        }
        runs
    }

    /// Every disk of `vm` in `point`, ready to serve from `repo`.
    pub async fn of_point(
        repo: Arc<Repository>,
        point: &Manifest,
        vm: &str,
    ) -> Result<Vec<Arc<Self>>> {
        let spec = point.vms.iter().find(|v| v.name == vm).ok_or_else(|| {
            Error::failed(format!(
                "point {}/{} does not hold VM `{vm}`",
                point.group, point.seq
            ))
        })?;
        let mut out = Vec::new();
        for disk in &spec.disks {
            let root = disk.root_id().ok_or_else(|| {
                Error::damaged(
                    format!("point {}/{}", point.group, point.seq),
                    "bad root id",
                )
            })?;
            let map = repo.chunk_map(root, disk.chunks()).await?;
            let chunk_size = u64::from(disk.chunk_size.max(1));
            out.push(Arc::new(Self {
                name: disk.name.clone(),
                size: disk.size,
                chunk_size,
                map,
                repo: repo.clone(),
                cache: Mutex::new(Cache {
                    capacity: (CACHE_BYTES / chunk_size) as usize,
                    ..Cache::default()
                }),
                fetching: Mutex::new(HashMap::new()),
                ahead: Arc::new(tokio::sync::Semaphore::new(READ_AHEAD as usize)),
                recording: Mutex::new(None),
                following: std::sync::OnceLock::new(),
            }));
        }
        Ok(out)
    }

    /// Chunk `i`'s bytes (a zero chunk is `None`): from the cache, or fetched and checked.
    async fn chunk(&self, i: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let Some(id) = self.map.get(i as usize).copied() else {
            return Err(Error::failed(format!("chunk {i} is past the disk's end")));
        };
        if id.is_zero() {
            return Ok(None);
        }
        if let Some(c) = self.cache.lock().ok().and_then(|mut c| c.get(i)) {
            return Ok(Some(c));
        }
        let fetch: Fetch = match self.fetching.lock() {
            Ok(mut f) => f.entry(i).or_default().clone(),
            Err(_) => Fetch::default(),
        };
        let got = fetch
            .get_or_init(|| async { self.fetch(i, id).await.map_err(|e| e.to_string()) })
            .await
            .clone();
        if let Ok(mut f) = self.fetching.lock() {
            f.remove(&i);
        }
        got.map(Some).map_err(Error::failed)
    }

    /// Chunk `i` (id `id`) read from its pack, checked against its id, and cached.
    async fn fetch(&self, i: u64, id: Id) -> Result<Arc<Vec<u8>>> {
        let loc = *self
            .repo
            .index()
            .blobs
            .get(&id)
            .ok_or_else(|| Error::damaged(format!("chunk {id}"), "in no index"))?;
        let object = pack::object_name(self.repo.index().pack_name(&loc));
        let e = loc.entry;
        let stored = self
            .repo
            .store()
            .get_range(&object, e.offset..e.offset + u64::from(e.stored_len))
            .await?;
        let keys = self.repo.keys().clone();
        let plain = tokio::task::spawn_blocking(move || {
            format::decode_blob(&keys, id, e.codec, e.raw_len, &stored)
                .map_err(|why| Error::damaged(&object, why))
        })
        .await
        .map_err(|e| Error::failed(format!("a chunk's decode stopped: {e}")))??;
        let expect = (self.size - i * self.chunk_size).min(self.chunk_size);
        if plain.len() as u64 != expect {
            return Err(Error::failed(format!("chunk {i} has the wrong length")));
        }
        let plain = Arc::new(plain);
        if let Ok(mut c) = self.cache.lock() {
            c.put(i, plain.clone());
        }
        Ok(plain)
    }

    /// Fetches the chunks after `last` in the background, a few at a time, so a reader going
    /// forward finds them cached.
    fn read_ahead(self: &Arc<Self>, last: u64) {
        let chunks = self.map.len() as u64;
        for i in last + 1..(last + 1 + READ_AHEAD).min(chunks) {
            let cached = self.cache.lock().is_ok_and(|c| c.chunks.contains_key(&i));
            if cached || self.map[i as usize].is_zero() {
                continue;
            }
            let Ok(permit) = self.ahead.clone().try_acquire_owned() else {
                return;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.chunk(i).await;
                drop(permit);
            });
        }
    }

    /// Notes a client's read of chunks `read`, as it asks: recorded while recording, and
    /// moving the follower on when they are in the trace followed.
    fn reading(self: &Arc<Self>, read: &[u64]) {
        if let Ok(mut r) = self.recording.lock()
            && let Some(r) = r.as_mut()
        {
            for &i in read {
                if !self.map[i as usize].is_zero() {
                    r.read(i);
                }
            }
        }
        if let Some((at, reader)) = self.following.get()
            && let Some(p) = read.iter().filter_map(|i| at.get(i)).max()
        {
            reader.send_if_modified(|farthest| {
                let further = *p > *farthest;
                *farthest = (*farthest).max(*p);
                further
            });
        }
    }

    /// Records, from now on, the chunks clients read first, in order.
    pub fn record(&self) {
        if let Ok(mut r) = self.recording.lock() {
            r.get_or_insert_default();
        }
    }

    /// What was recorded, ending the recording (`None` when nothing was).
    pub fn recorded(&self) -> Option<trace::DiskTrace> {
        let r = self.recording.lock().ok()?.take()?;
        Some(trace::DiskTrace::of(self.chunk_size, r.order()))
    }

    /// Fetches the chunks `t` names, in its order, [`FETCH_AT_ONCE`] at a time and at most
    /// [`FOLLOW_WINDOW`] past the farthest of them a client has read, in the background.
    /// Returns how many it will fetch: none for a trace of another chunk size, or a second one.
    pub fn follow(self: &Arc<Self>, t: &trace::DiskTrace) -> usize {
        if t.chunk_size != self.chunk_size {
            return 0;
        }
        let order: Vec<u64> = t
            .order(self.map.len() as u64)
            .into_iter()
            .filter(|i| !self.map[*i as usize].is_zero())
            .collect();
        let at = order.iter().enumerate().map(|(p, i)| (*i, p)).collect();
        let (tx, mut reader) = tokio::sync::watch::channel(0usize);
        if self.following.set((at, tx)).is_err() {
            return 0;
        }
        let n = order.len();
        let me = self.clone();
        tokio::spawn(async move {
            let mut fetching = tokio::task::JoinSet::new();
            for (p, i) in order.into_iter().enumerate() {
                while *reader.borrow_and_update() + FOLLOW_WINDOW < p {
                    if reader.changed().await.is_err() {
                        return;
                    }
                }
                while fetching.len() >= FETCH_AT_ONCE {
                    fetching.join_next().await;
                }
                if me.cache.lock().is_ok_and(|c| c.chunks.contains_key(&i)) {
                    continue;
                }
                let me = me.clone();
                fetching.spawn(async move {
                    if let Err(e) = me.chunk(i).await {
                        tracing::debug!(disk = %me.name, chunk = i, error = %e, "a traced chunk was not fetched");
                    }
                });
            }
            while fetching.join_next().await.is_some() {}
        });
        n
    }
}

/// Has `exports` follow the disks `t` traced: how many chunks they will fetch ahead.
pub fn follow(exports: &[Arc<DiskExport>], t: &trace::BootTrace) -> usize {
    exports
        .iter()
        .filter_map(|e| t.disks.get(&e.name).map(|d| e.follow(d)))
        .sum()
}

/// What `exports`' clients read while recording, ending it; disks nothing recorded are left out.
pub fn recorded(exports: &[Arc<DiskExport>]) -> trace::BootTrace {
    trace::BootTrace {
        disks: exports
            .iter()
            .filter_map(|e| e.recorded().map(|t| (e.name.clone(), t)))
            .collect(),
    }
}

/// Serves `exports` (by name) on the Unix socket `path` until the task is dropped; one task per
/// connection, one per request.
pub async fn serve(path: &Path, exports: Vec<Arc<DiskExport>>) -> Result<()> {
    // A socket an earlier server left is replaced; any other file at that path is not ours.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(Error::failed(format!(
                "{} exists and is not a socket: choose another path",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| Error::io(format!("cannot listen on {}", path.display()), e))?;
    let exports: Arc<HashMap<String, Arc<DiskExport>>> =
        Arc::new(exports.into_iter().map(|e| (e.name.clone(), e)).collect());
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(|e| Error::io(format!("cannot accept on {}", path.display()), e))?;
        let exports = exports.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &exports).await {
                tracing::debug!(error = %e, "an NBD connection ended");
            }
        });
    }
}

type Writer = Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>;

/// One client: the handshake, then its requests.
async fn connection(
    stream: UnixStream,
    exports: &HashMap<String, Arc<DiskExport>>,
) -> std::io::Result<()> {
    let (mut r, mut w) = stream.into_split();
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&hello).await?;
    let client_flags = r.read_u32().await?;
    let mut structured = false;
    let mut allocation = false;
    let export = loop {
        if r.read_u64().await? != IHAVEOPT {
            return Err(invalid("an option without IHAVEOPT"));
        }
        let option = r.read_u32().await?;
        let len = r.read_u32().await?;
        if len > MAX_OPTION {
            return Err(invalid("an option too long"));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;
        tracing::debug!(option, len, "NBD option");
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                // No error can be sent here: an unknown export is a hang-up.
                let Some(e) = exports.get(&name) else {
                    return Ok(());
                };
                let mut reply = Vec::new();
                reply.extend_from_slice(&e.size.to_be_bytes());
                reply.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if client_flags & CLIENT_NO_ZEROES == 0 {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                w.write_all(&reply).await?;
                break e.clone();
            }
            OPT_ABORT => {
                option_reply(&mut w, option, REP_ACK, &[]).await?;
                return Ok(());
            }
            OPT_LIST => {
                for name in exports.keys() {
                    let mut d = (name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    option_reply(&mut w, option, REP_SERVER, &d).await?;
                }
                option_reply(&mut w, option, REP_ACK, &[]).await?;
            }
            OPT_STRUCTURED_REPLY => {
                structured = true;
                option_reply(&mut w, option, REP_ACK, &[]).await?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let wanted = meta_queries(&data);
                let Some(queries) = wanted.filter(|_| structured) else {
                    option_reply(&mut w, option, REP_ERR_INVALID, &[]).await?;
                    continue;
                };
                // `base:allocation` is the one context there is; listing with no query names it.
                let asks = queries.is_empty() && option == OPT_LIST_META_CONTEXT
                    || queries
                        .iter()
                        .any(|q| q == "base:allocation" || q == "base:");
                if asks {
                    let mut d = ALLOCATION_CONTEXT.to_be_bytes().to_vec();
                    d.extend_from_slice(b"base:allocation");
                    option_reply(&mut w, option, REP_META_CONTEXT, &d).await?;
                    if option == OPT_SET_META_CONTEXT {
                        allocation = true;
                    }
                }
                option_reply(&mut w, option, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                let name = export_name(&data);
                let Some(e) = name.as_ref().and_then(|n| exports.get(n)) else {
                    let why = b"no such export";
                    let code = if name.is_none() {
                        REP_ERR_INVALID
                    } else {
                        REP_ERR_UNKNOWN
                    };
                    option_reply(&mut w, option, code, why).await?;
                    continue;
                };
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&e.size.to_be_bytes());
                info.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                option_reply(&mut w, option, REP_INFO, &info).await?;
                let mut sizes = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                sizes.extend_from_slice(&1u32.to_be_bytes());
                sizes.extend_from_slice(&4096u32.to_be_bytes());
                sizes.extend_from_slice(&MAX_REQUEST.to_be_bytes());
                option_reply(&mut w, option, REP_INFO, &sizes).await?;
                option_reply(&mut w, option, REP_ACK, &[]).await?;
                if option == OPT_GO {
                    break e.clone();
                }
            }
            _ => option_reply(&mut w, option, REP_ERR_UNSUP, &[]).await?,
        }
    };
    let w: Writer = Arc::new(tokio::sync::Mutex::new(w));
    // Reads served at once on this connection: a client that pipelines more waits for them,
    // it does not make the server hold their data.
    let reads = Arc::new(tokio::sync::Semaphore::new(READS_IN_FLIGHT));
    loop {
        let mut head = [0u8; 28];
        if r.read_exact(&mut head).await.is_err() {
            return Ok(());
        }
        let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if magic != REQUEST_MAGIC {
            return Err(invalid("a request without its magic"));
        }
        let kind = u16::from_be_bytes([head[6], head[7]]);
        let handle = u64::from_be_bytes(head[8..16].try_into().unwrap_or_default());
        let offset = u64::from_be_bytes(head[16..24].try_into().unwrap_or_default());
        let length = u32::from_be_bytes(head[24..28].try_into().unwrap_or_default());
        tracing::debug!(kind, offset, length, allocation, "NBD request");
        match kind {
            CMD_DISC => return Ok(()),
            CMD_READ => {
                let Ok(permit) = reads.clone().acquire_owned().await else {
                    return Ok(());
                };
                let (e, w) = (export.clone(), w.clone());
                tokio::spawn(async move {
                    let _ = read(&e, &w, handle, offset, length, structured).await;
                    drop(permit);
                });
            }
            CMD_BLOCK_STATUS if allocation => {
                block_status(&export, &w, handle, offset, length).await?;
            }
            CMD_FLUSH => simple_reply(&w, handle, 0, &[]).await?,
            // Writes carry a payload the client sends after the header: read it away.
            1 => {
                let mut skip = (&mut r).take(u64::from(length));
                tokio::io::copy(&mut skip, &mut tokio::io::sink()).await?;
                error_reply(&w, handle, EPERM, "the export is read-only", structured).await?;
            }
            _ => error_reply(&w, handle, EINVAL, "unsupported request", structured).await?,
        }
    }
}

/// Part of a read inside one chunk: from, to (disk offsets), and the chunk's bytes (`None`: a
/// zero chunk).
type Piece = (u64, u64, Option<Arc<Vec<u8>>>);

/// Serves a read: the chunks it spans, zero chunks as holes (structured) or zeros (simple).
async fn read(
    e: &Arc<DiskExport>,
    w: &Writer,
    handle: u64,
    offset: u64,
    length: u32,
    structured: bool,
) -> std::io::Result<()> {
    let end = offset.saturating_add(u64::from(length));
    if length > MAX_REQUEST || end > e.size {
        return error_reply(w, handle, EINVAL, "a read past the end", structured).await;
    }
    // The chunks a read spans are fetched together, a few at a time (a 2 MiB read is 32 of
    // them): one after another, a read would wait on each round trip to the store.
    let spans: Vec<(u64, u64, u64)> = {
        let mut v = Vec::new();
        let mut at = offset;
        while at < end {
            let i = at / e.chunk_size;
            let upto = ((i + 1) * e.chunk_size).min(end);
            v.push((i, at, upto));
            at = upto;
        }
        v
    };
    let indices: Vec<u64> = spans.iter().map(|(i, ..)| *i).collect();
    e.reading(&indices);
    let fetched: Vec<_> = futures::stream::iter(indices)
        .map(|i| {
            let e = e.clone();
            async move { e.chunk(i).await }
        })
        .buffered(FETCH_AT_ONCE)
        .collect()
        .await;
    let mut pieces: Vec<Piece> = Vec::with_capacity(spans.len());
    for ((i, from, to), got) in spans.iter().zip(fetched) {
        match got {
            Ok(c) => pieces.push((*from, *to, c)),
            Err(err) => {
                tracing::warn!(disk = %e.name, chunk = i, error = %err, "a read failed");
                return error_reply(w, handle, EIO, &err.to_string(), structured).await;
            }
        }
    }
    if let Some((i, ..)) = spans.last() {
        e.read_ahead(*i);
    }
    let mut out = Vec::new();
    if structured {
        for (from, to, c) in &pieces {
            match c {
                Some(bytes) => {
                    let lo = (from % e.chunk_size) as usize;
                    let hi = lo + (to - from) as usize;
                    let mut payload = from.to_be_bytes().to_vec();
                    payload.extend_from_slice(&bytes[lo..hi]);
                    structured_chunk(&mut out, 0, REPLY_TYPE_OFFSET_DATA, handle, &payload);
                }
                None => {
                    let mut payload = from.to_be_bytes().to_vec();
                    payload.extend_from_slice(&((to - from) as u32).to_be_bytes());
                    structured_chunk(&mut out, 0, REPLY_TYPE_OFFSET_HOLE, handle, &payload);
                }
            }
        }
        structured_chunk(&mut out, REPLY_FLAG_DONE, REPLY_TYPE_NONE, handle, &[]);
        return w.lock().await.write_all(&out).await;
    }
    let mut data = Vec::with_capacity(length as usize);
    for (from, to, c) in &pieces {
        match c {
            Some(bytes) => {
                let lo = (from % e.chunk_size) as usize;
                data.extend_from_slice(&bytes[lo..lo + (to - from) as usize]);
            }
            None => data.resize(data.len() + (to - from) as usize, 0),
        }
    }
    simple_reply(w, handle, 0, &data).await
}

/// `base:allocation` of a range: zero chunks are holes that read as zeros, the rest data.
async fn block_status(
    e: &DiskExport,
    w: &Writer,
    handle: u64,
    offset: u64,
    length: u32,
) -> std::io::Result<()> {
    let end = offset.saturating_add(u64::from(length)).min(e.size);
    if offset >= e.size {
        return error_reply(w, handle, EINVAL, "past the end", true).await;
    }
    let mut payload = ALLOCATION_CONTEXT.to_be_bytes().to_vec();
    let mut at = offset;
    let mut run: Option<(u32, u64)> = None;
    let mut descriptors = 0;
    // The protocol lets a server describe less than was asked (the client asks again from
    // where the reply ends), and QEMU refuses a status payload over 1000 bytes.
    while at < end && descriptors < MAX_DESCRIPTORS {
        let i = at / e.chunk_size;
        let upto = ((i + 1) * e.chunk_size).min(end);
        let state = if e.map[i as usize].is_zero() {
            STATE_HOLE | STATE_ZERO
        } else {
            0
        };
        run = match run {
            Some((s, len)) if s == state && len + (upto - at) <= u64::from(u32::MAX) => {
                Some((s, len + (upto - at)))
            }
            Some((s, len)) => {
                payload.extend_from_slice(&(len as u32).to_be_bytes());
                payload.extend_from_slice(&s.to_be_bytes());
                descriptors += 1;
                Some((state, upto - at))
            }
            None => Some((state, upto - at)),
        };
        at = upto;
    }
    if let Some((s, len)) = run {
        payload.extend_from_slice(&(len as u32).to_be_bytes());
        payload.extend_from_slice(&s.to_be_bytes());
    }
    let mut out = Vec::new();
    structured_chunk(
        &mut out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        handle,
        &payload,
    );
    w.lock().await.write_all(&out).await
}

fn structured_chunk(out: &mut Vec<u8>, flags: u16, kind: u16, handle: u64, payload: &[u8]) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

async fn simple_reply(w: &Writer, handle: u64, error: u32, data: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(data);
    w.lock().await.write_all(&out).await
}

async fn error_reply(
    w: &Writer,
    handle: u64,
    error: u32,
    message: &str,
    structured: bool,
) -> std::io::Result<()> {
    if !structured {
        return simple_reply(w, handle, error, &[]).await;
    }
    let msg = &message.as_bytes()[..message.len().min(4096)];
    let mut payload = error.to_be_bytes().to_vec();
    payload.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    payload.extend_from_slice(msg);
    let mut out = Vec::new();
    structured_chunk(
        &mut out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        handle,
        &payload,
    );
    w.lock().await.write_all(&out).await
}

async fn option_reply(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    option: u32,
    kind: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    w.write_all(&out).await
}

/// The export name of an `NBD_OPT_INFO`/`GO`: a length-prefixed string, then info requests.
fn export_name(data: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4 + len)?;
    Some(String::from_utf8_lossy(name).into_owned())
}

/// The queries of a meta-context option: the export name, then a count and each query.
fn meta_queries(data: &[u8]) -> Option<Vec<String>> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let mut at = 4 + name_len;
    let count = u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?);
    at += 4;
    let mut out = Vec::new();
    for _ in 0..count {
        let len = u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        out.push(String::from_utf8_lossy(data.get(at..at + len)?).into_owned());
        at += len;
    }
    Some(out)
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_cache_keeps_the_most_recently_used_chunks() {
        let mut c = Cache {
            capacity: 2,
            ..Cache::default()
        };
        c.put(1, Arc::new(vec![1]));
        c.put(2, Arc::new(vec![2]));
        assert!(c.get(1).is_some());
        c.put(3, Arc::new(vec![3]));
        assert!(c.get(2).is_none(), "the least recently used went");
        assert!(c.get(1).is_some() && c.get(3).is_some());
    }

    #[test]
    fn option_payloads_are_read_or_refused_not_trusted() {
        let mut go = 3u32.to_be_bytes().to_vec();
        go.extend_from_slice(b"vda");
        go.extend_from_slice(&0u16.to_be_bytes());
        assert_eq!(export_name(&go).as_deref(), Some("vda"));
        assert_eq!(export_name(&[0, 0, 0, 9, b'x']), None);
        let mut meta = 3u32.to_be_bytes().to_vec();
        meta.extend_from_slice(b"vda");
        meta.extend_from_slice(&1u32.to_be_bytes());
        meta.extend_from_slice(&15u32.to_be_bytes());
        meta.extend_from_slice(b"base:allocation");
        assert_eq!(meta_queries(&meta).unwrap(), vec!["base:allocation"]);
        assert_eq!(meta_queries(&meta[..meta.len() - 1]), None);
    }
}
