//! A site's store, through `object_store`: the only way the engine touches a repository or a
//! cache. The engine needs five things of it — put-if-absent, get (whole or a range), list,
//! delete — and never renames or compares-and-swaps, so the same code runs on a local folder,
//! in memory, on Azure Blob Storage and on S3.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};
use crate::seal;

/// An object's name and size, from a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

/// Whether a put-if-absent wrote the object or found one already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Created,
    Exists,
}

/// A store opened from a site's `store` setting.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    location: String,
    /// What this store is, unambiguously in this process (a local folder's absolute path, a
    /// memory store's own number): `location` is as the inventory wrote it, relative to a base.
    identity: String,
    /// The key every object is sealed with (`seal`), when the store has one.
    key: Option<Arc<seal::Key>>,
    /// The names `scoped` views put before an object's: a sealed object is bound to its full name.
    scope: String,
    /// Sealed objects read by range: their sealed size and header, read once (objects never change).
    sealed: Arc<Mutex<HashMap<String, (u64, Bytes)>>>,
}

/// Tells in-memory stores apart.
static MEMORY_STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn memory_identity() -> String {
    let n = MEMORY_STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("memory://#{n}")
}

impl Store {
    /// Opens a store from a site's `store` value: a path (relative to `base`), `file:///…`,
    /// `memory://`, `az://container/prefix` (also `azure://`, `abfs://`) or `s3://bucket/prefix`.
    /// Cloud credentials come from the environment (`AZURE_STORAGE_*`, `AWS_*`), as each SDK
    /// documents; options of one site's store (its endpoint, region…) from the URL's query,
    /// `s3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1`, each an
    /// `object_store` configuration key. A local folder is created if missing and written with fsync on.
    pub fn open(location: &str, base: &Path) -> Result<Self> {
        Self::open_with(location, base, true)
    }

    /// Opens a store only to read it: a local folder that does not exist is `None` (a site that
    /// is gone, or never written), rather than created as `open` does.
    pub fn open_if_present(location: &str, base: &Path) -> Result<Option<Self>> {
        // The folder is what comes before the options (`west?key_file=…`).
        let trimmed = location.trim();
        let trimmed = trimmed.split_once('?').map_or(trimmed, |(l, _)| l);
        let folder = match trimmed.split_once("://") {
            None => Some(base.join(trimmed)),
            Some(("file", path)) => Some(PathBuf::from(path)),
            Some(_) => None,
        };
        if folder.is_some_and(|f| !f.exists()) {
            return Ok(None);
        }
        Self::open(location, base).map(Some)
    }

    /// Opens a store for a source site's cache: a local folder is written without fsync. The
    /// cache is never the truth: every blob of a staged pack is checked against its id before it is
    /// shipped, so a cache torn by a power loss costs the staged point, never a wrong byte.
    pub fn open_cache(location: &str, base: &Path) -> Result<Self> {
        Self::open_with(location, base, false)
    }

    fn open_with(location: &str, base: &Path, fsync: bool) -> Result<Self> {
        // Options of a cloud store ride in the URL's query (`?endpoint=…&region=…`); they are
        // never part of the store's name in messages, where a key would leak.
        let (location, query) = match location.trim().split_once('?') {
            Some((l, q)) => (l, Some(q)),
            None => (location.trim(), None),
        };
        let mut options: Vec<(&str, &str)> = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .collect();
        // The key is Lifeboat's option, for every kind of store; the rest are object_store's.
        let key = match options
            .iter()
            .find(|(k, _)| *k == "key_file" || *k == "key_env")
        {
            Some(&(kind, value)) => Some(Arc::new(load_key(location, kind, value, base)?)),
            None => None,
        };
        options.retain(|(k, _)| *k != "key_file" && *k != "key_env");
        let cloud = matches!(
            location.split_once("://").map(|(scheme, _)| scheme),
            Some("s3" | "az" | "azure" | "abfs")
        );
        if !options.is_empty() && !cloud {
            return Err(Error::failed(format!(
                "`{location}` takes no options: only `s3://` and `az://` stores do"
            )));
        }
        let folder = |p: &Path| {
            let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            format!("file://{}", abs.display())
        };
        // The same bucket behind two endpoints is two stores.
        let mut identity = match options.iter().find(|(k, _)| k.contains("endpoint")) {
            Some((_, endpoint)) => format!("{location} at {endpoint}"),
            None => location.to_string(),
        };
        let inner: Arc<dyn ObjectStore> = match location.split_once("://") {
            None => {
                let store = local(&base.join(location), fsync)?;
                identity = folder(&base.join(location));
                store
            }
            Some(("file", path)) => {
                let store = local(Path::new(path), fsync)?;
                identity = folder(Path::new(path));
                store
            }
            Some(("memory", _)) => {
                identity = memory_identity();
                Arc::new(InMemory::new())
            }
            Some((scheme @ ("az" | "azure" | "abfs" | "s3"), rest)) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let url = format!("{scheme}://{bucket}");
                let bad_option = |k: &str, e: object_store::Error| {
                    Error::failed(format!("`{location}`: option `{k}`: {e}"))
                };
                let store: Arc<dyn ObjectStore> = if scheme == "s3" {
                    let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(&url);
                    for (k, v) in &options {
                        b = b.with_config(k.parse().map_err(|e| bad_option(k, e))?, *v);
                    }
                    Arc::new(
                        b.build()
                            .map_err(|e| Error::failed(format!("cannot open `{location}`: {e}")))?,
                    )
                } else {
                    let mut b =
                        object_store::azure::MicrosoftAzureBuilder::from_env().with_url(&url);
                    for (k, v) in &options {
                        b = b.with_config(k.parse().map_err(|e| bad_option(k, e))?, *v);
                    }
                    Arc::new(
                        b.build()
                            .map_err(|e| Error::failed(format!("cannot open `{location}`: {e}")))?,
                    )
                };
                let prefix = prefix.trim_matches('/');
                if prefix.is_empty() {
                    store
                } else {
                    Arc::new(PrefixStore::new(store, prefix))
                }
            }
            Some((scheme, _)) => {
                return Err(Error::failed(format!(
                    "unsupported store scheme `{scheme}://` in `{location}`"
                )));
            }
        };
        Ok(Self {
            inner,
            location: location.to_string(),
            identity,
            key,
            scope: String::new(),
            sealed: Arc::default(),
        })
    }

    /// A store over any `object_store` implementation (tests wrap a real store to inject faults;
    /// an embedder can bring its own), named `location` in messages.
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, location: &str) -> Self {
        Self {
            inner,
            location: location.to_string(),
            identity: memory_identity(),
            key: None,
            scope: String::new(),
            sealed: Arc::default(),
        }
    }

    /// A fresh in-memory store (tests, and `memory://`).
    pub fn memory() -> Self {
        Self {
            inner: Arc::new(InMemory::new()),
            location: "memory://".into(),
            identity: memory_identity(),
            key: None,
            scope: String::new(),
            sealed: Arc::default(),
        }
    }

    /// The same store seen under a prefix (`repo/`, `cache/`).
    pub fn scoped(&self, prefix: &str) -> Self {
        Self {
            inner: Arc::new(PrefixStore::new(self.inner.clone(), prefix)),
            location: format!("{}/{prefix}", self.location.trim_end_matches('/')),
            identity: format!("{}/{prefix}", self.identity.trim_end_matches('/')),
            key: self.key.clone(),
            scope: format!("{}{}/", self.scope, prefix.trim_matches('/')),
            sealed: Arc::default(),
        }
    }

    /// What this store is, unambiguously within this process.
    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    /// Where this store is, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes `name` only if no object has that name. Never overwrites.
    pub async fn put_new(&self, name: &str, bytes: Bytes) -> Result<Put> {
        let plain = bytes.clone();
        let stored = match &self.key {
            // Off the async threads: a pack's encryption is milliseconds of one core, which
            // would hold up every task queued behind it (the reads and hashing of the cycle
            // that produced it among them).
            Some(key) => {
                let (key, full, what) = (key.clone(), self.full_name(name), name.to_string());
                tokio::task::spawn_blocking(move || {
                    let mut out = sealed_buffers::take();
                    seal::seal_into(&key, &full, &bytes, &mut out)
                        .map(|()| Bytes::from(out))
                        .map_err(|e| Error::failed(format!("cannot seal `{what}`: {e}")))
                })
                .await
                .map_err(|e| Error::failed(format!("sealing `{name}` stopped: {e}")))??
            }
            None => bytes,
        };
        let put = self.put_stored(name, &plain, stored.clone()).await;
        if self.key.is_some() {
            sealed_buffers::keep(stored);
        }
        put
    }

    /// `put_new` of `stored`, the bytes as the store keeps them (`plain`, as they were given).
    async fn put_stored(&self, name: &str, plain: &Bytes, stored: Bytes) -> Result<Put> {
        let path = ObjectPath::from(name);
        let mut attempt = 0;
        loop {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            let payload = PutPayload::from_bytes(stored.clone());
            match self.inner.put_opts(&path, payload, opts).await {
                Ok(_) => return Ok(Put::Created),
                // Azure answers 409, S3 412: either way the name was taken — perhaps by this
                // very put, whose answer was lost: then the object holds these bytes.
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => {
                    if attempt > 0
                        && self.get_opt(name).await.ok().flatten().as_ref() == Some(plain)
                    {
                        return Ok(Put::Created);
                    }
                    return Ok(Put::Exists);
                }
                Err(e) if transient(&e) && attempt + 1 < ATTEMPTS => {
                    tracing::debug!(object = name, error = %e, attempt, "write retried");
                    backoff(attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.error("write", name, e)),
            }
        }
    }

    /// Reads a whole object; `None` when it does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<Bytes>> {
        let path = ObjectPath::from(name);
        let read = retrying(|| async {
            match self.inner.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await;
        match read {
            Ok(Some(stored)) => self.unseal(name, stored).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(self.error("read", name, e)),
        }
    }

    /// An object as stored, opened with the store's key (or checked to need none).
    fn unseal(&self, name: &str, stored: Bytes) -> Result<Bytes> {
        match (&self.key, seal::is_sealed(&stored)) {
            (Some(key), true) => seal::open(key, &self.full_name(name), &stored)
                .map(Bytes::from)
                .map_err(|e| self.damaged(name, &e)),
            (Some(_), false) => Err(self.damaged(
                name,
                "it is not encrypted, but this store has a key: it was not written through it",
            )),
            (None, true) => Err(Error::failed(format!(
                "`{name}` in store `{}` is encrypted: give the store its key (`?key_file=PATH` or `?key_env=VAR` on its URL)",
                self.location
            ))),
            (None, false) => Ok(stored),
        }
    }

    /// Reads a whole object that must exist: a missing one is damage.
    pub async fn get(&self, name: &str) -> Result<Bytes> {
        self.get_opt(name)
            .await?
            .ok_or_else(|| Error::damaged(name, "missing"))
    }

    /// Reads `range` of an object that must exist.
    pub async fn get_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        if let Some(key) = &self.key {
            return self.get_sealed_range(key, name, range).await;
        }
        let path = ObjectPath::from(name);
        match retrying(|| self.inner.get_range(&path, range.clone())).await {
            Ok(b) => Ok(b),
            Err(object_store::Error::NotFound { .. }) => Err(Error::damaged(name, "missing")),
            Err(e) => Err(self.error("read", name, e)),
        }
    }

    /// Reads `range` of a sealed object: its header and size once, then only the segments the
    /// range lies in.
    async fn get_sealed_range(
        &self,
        key: &seal::Key,
        name: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes> {
        let path = ObjectPath::from(name);
        let known = self.sealed.lock().ok().and_then(|m| m.get(name).cloned());
        let (size, header) = match known {
            Some(k) => k,
            None => {
                let opts = object_store::GetOptions {
                    range: Some((0..seal::HEADER).into()),
                    ..Default::default()
                };
                let read = retrying(|| async {
                    let r = self.inner.get_opts(&path, opts.clone()).await?;
                    let size = r.meta.size;
                    Ok((size, r.bytes().await?))
                })
                .await;
                let (size, header) = match read {
                    Ok(r) => r,
                    Err(object_store::Error::NotFound { .. }) => {
                        return Err(Error::damaged(name, "missing"));
                    }
                    Err(e) => return Err(self.error("read", name, e)),
                };
                if !seal::is_sealed_header(&header) {
                    return Err(self.damaged(
                        name,
                        "it is not encrypted, but this store has a key: it was not written through it",
                    ));
                }
                if let Ok(mut m) = self.sealed.lock() {
                    m.insert(name.to_string(), (size, header.clone()));
                }
                (size, header)
            }
        };
        let (sealed_range, _) = seal::sealed_range(&range, size);
        let body = match retrying(|| self.inner.get_range(&path, sealed_range.clone())).await {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::damaged(name, "missing"));
            }
            Err(e) => return Err(self.error("read", name, e)),
        };
        seal::open_range(key, &self.full_name(name), &header, size, &range, &body)
            .map(Bytes::from)
            .map_err(|e| self.damaged(name, &e))
    }

    /// Whether each read is a request over the network (S3, Azure), not a local file's read:
    /// what fetching ahead in parallel pays off against.
    pub fn is_remote(&self) -> bool {
        ["s3://", "az://", "azure://", "abfs://"]
            .iter()
            .any(|s| self.location.starts_with(s))
    }

    /// Whether the store seals what it holds (it has a key).
    pub fn sealed(&self) -> bool {
        self.key.is_some()
    }

    fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.scope)
    }

    fn damaged(&self, name: &str, why: &str) -> Error {
        Error::damaged(
            self.full_name(name),
            format!("{why} (store `{}`)", self.location),
        )
    }

    /// The size of an object, `None` when it does not exist.
    pub async fn size(&self, name: &str) -> Result<Option<u64>> {
        let path = ObjectPath::from(name);
        match retrying(|| self.inner.head(&path)).await {
            Ok(m) if self.key.is_some() => Ok(Some(seal::plain_len(m.size).unwrap_or(m.size))),
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("inspect", name, e)),
        }
    }

    /// Every object under `prefix`, sorted by name.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let prefix = ObjectPath::from(prefix);
        let listed: Vec<object_store::ObjectMeta> =
            retrying(|| self.inner.list(Some(&prefix)).try_collect())
                .await
                .map_err(|e| self.error("list", prefix.as_ref(), e))?;
        let mut out: Vec<Listed> = listed
            .into_iter()
            .map(|m| Listed {
                name: m.location.to_string(),
                // What the object holds, as a store without a key would say.
                size: match &self.key {
                    Some(_) => seal::plain_len(m.size).unwrap_or(m.size),
                    None => m.size,
                },
                modified: m.last_modified.into(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes an object; deleting one that is already gone is not an error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let path = ObjectPath::from(name);
        match retrying(|| self.inner.delete(&path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", name, e)),
        }
    }

    fn error(&self, op: &str, name: &str, e: object_store::Error) -> Error {
        Error::failed(format!(
            "cannot {op} `{name}` in store `{}`: {e}",
            self.location
        ))
    }
}

fn local(path: &Path, fsync: bool) -> Result<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(path)
        .map_err(|e| Error::io(format!("cannot create store folder {}", path.display()), e))?;
    let path: PathBuf = path
        .canonicalize()
        .map_err(|e| Error::io(format!("cannot open store folder {}", path.display()), e))?;
    let fs = LocalFileSystem::new_with_prefix(&path)
        .map_err(|e| Error::failed(format!("cannot open store folder {}: {e}", path.display())))?
        .with_fsync(fsync)
        .with_automatic_cleanup(true);
    Ok(Arc::new(fs))
}

/// A store's key, from `key_file=PATH` (relative to `base`) or `key_env=VAR` on its URL.
fn load_key(location: &str, kind: &str, value: &str, base: &Path) -> Result<seal::Key> {
    let text = if kind == "key_file" {
        let path = base.join(value);
        std::fs::read_to_string(&path).map_err(|e| {
            Error::io(
                format!("the key of store `{location}` ({})", path.display()),
                e,
            )
        })?
    } else {
        std::env::var(value).map_err(|_| {
            Error::failed(format!(
                "the key of store `{location}`: environment variable `{value}` is not set"
            ))
        })?
    };
    seal::Key::from_hex(&text)
        .map_err(|e| Error::failed(format!("the key of store `{location}`: {e}")))
}

/// Tries of one request before it fails the operation.
const ATTEMPTS: u32 = 5;

/// Whether a store's error may pass if the request is made again (a timeout, a connection reset,
/// a 5xx after object_store's own retries): not a missing object, a taken name or a refusal.
fn transient(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

/// Waits before try `attempt + 1`: 50 ms doubling, with jitter, under 2 s.
async fn backoff(attempt: u32) {
    let base = 50u64 << attempt.min(5);
    let mut j = [0u8; 2];
    let jitter =
        getrandom::fill(&mut j).map_or(0, |()| u64::from(u16::from_le_bytes(j)) % (base / 2 + 1));
    tokio::time::sleep(std::time::Duration::from_millis((base + jitter).min(2000))).await;
}

/// Runs `request` until it succeeds, fails for good, or has been tried `ATTEMPTS` times.
async fn retrying<T, F, Fut>(request: F) -> std::result::Result<T, object_store::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = std::result::Result<T, object_store::Error>>,
{
    let mut attempt = 0;
    loop {
        match request().await {
            Err(e) if transient(&e) && attempt + 1 < ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "store request retried");
                backoff(attempt).await;
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Buffers sealed objects were written into, kept for the next ones (`seal::seal_into`): a pack
/// sealed into a buffer already in memory costs its encryption, not a fresh 16 MiB of page
/// faults. As many are kept as a cycle has uploads in flight (4), large ones only: a process
/// that has sealed packs holds about 64 MiB for it.
mod sealed_buffers {
    use std::sync::Mutex;

    use bytes::Bytes;

    static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    const MOST: usize = 4;
    const SMALLEST: usize = 1 << 20;

    pub(super) fn take() -> Vec<u8> {
        KEPT.lock()
            .ok()
            .and_then(|mut kept| kept.pop())
            .unwrap_or_default()
    }

    /// Keeps `stored`'s buffer if nothing else holds it any more.
    pub(super) fn keep(stored: Bytes) {
        let Ok(unique) = stored.try_into_mut() else {
            return;
        };
        let buffer: Vec<u8> = unique.into();
        if buffer.capacity() < SMALLEST {
            return;
        }
        if let Ok(mut kept) = KEPT.lock()
            && kept.len() < MOST
        {
            kept.push(buffer);
        }
    }
}
