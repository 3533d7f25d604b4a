//! One replication cycle of a group: cut → capture into the source site's cache → ship to the
//! target repository → commit the point. The commit order is what makes a crash harmless:
//! packs, then the index file, then the manifest with put-if-absent. A manifest that exists is
//! complete; anything a killed cycle left behind is unreferenced and GC removes it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::capture::{self, PackSink, SealedPack};
use crate::clock::{rfc3339, unix_ms};
use crate::error::{Error, Result};
use crate::fencing::writer_epoch;
use crate::format::manifest::{DiskPoint, PointKind, VmPoint};
use crate::format::pack::{self, Entry, PackClass};
use crate::format::{BlobKind, Codec, Id, compress};
use crate::groups::{GroupSpec, QuiesceSpec, VmSpec};
use crate::repo::{self, Repository};
use crate::session::{Staged, commit, drop_session, resume, session_id};
use crate::store::Store;

/// Whether to try for an app-consistent point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AppMode {
    /// When every VM has a quiesce hook and the group's app interval has passed.
    #[default]
    Auto,
    /// Now; an error if a VM has no quiesce hook.
    Force,
    /// Never: a crash-consistent point.
    Never,
}

/// Holds a group's writers still for the cut (the process driver pauses its VMs; tests pause
/// their writer). Without one, a scan of a live image is consistent only where the file system
/// gives a reflink copy. The cycle holds the writers only until every disk has a frozen view,
/// or, without reflinks, until the scan is done, and never longer than `max_pause`.
#[async_trait::async_trait]
pub trait Cut: Send + Sync {
    async fn hold(&self) -> Result<()>;
    /// Lets the writers go. An error means a writer may still be held: people must see it.
    async fn release(&self) -> Result<()>;
    /// Called while held: freezes the disks the cut can freeze itself (a hypervisor's
    /// copy-before-write view, as QEMU's fleece), each with the extents written since the
    /// parent's cut when the hypervisor can prove them. Disks it leaves out are cut by the cycle.
    async fn freeze(&self, _at: CutAt) -> Result<Vec<FrozenDisk>> {
        Ok(Vec::new())
    }
    /// After the scan of what `freeze` gave (its readers are closed): ends those views.
    /// `committed`: the point of this cut was committed, so what led to it can go.
    async fn unfreeze(&self, _committed: bool) -> Result<()> {
        Ok(())
    }
    /// The longest the last cut kept a writer from running, when the cut measures it itself
    /// (otherwise the cycle reports how long it held the writers).
    fn paused(&self) -> Option<Duration> {
        None
    }
}

/// When a cut is taken, and when its parent's was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutAt {
    /// The point's `captured_unix_ms`.
    pub unix_ms: u64,
    /// The parent point's `captured_unix_ms`: what was written since is what changed. `None`
    /// when there is no parent or a full scan is asked for.
    pub since_unix_ms: Option<u64>,
}

/// A disk frozen by its cut (QEMU's copy-before-write fleece, read over NBD).
pub struct FrozenDisk {
    /// The disk's image as the group names it (`DiskSpec::path`).
    pub path: std::path::PathBuf,
    pub reader: Box<dyn capture::DiskReader>,
    /// Byte extents written since `CutAt::since_unix_ms`, proven by the hypervisor (a dirty
    /// bitmap that recorded every write since); `None`: read it all.
    pub dirty: Option<Vec<(u64, u64)>>,
    /// Why the disk is read in full when there is a parent (said in the cycle's notes).
    pub full_scan: Option<String>,
}

impl std::fmt::Debug for FrozenDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenDisk")
            .field("path", &self.path)
            .field("reader", &self.reader.describe())
            .field("dirty", &self.dirty.as_ref().map(Vec::len))
            .field("full_scan", &self.full_scan)
            .finish()
    }
}

/// Progress of a cycle, for a progress bar.
pub trait Progress: Send + Sync {
    fn begin(&self, group: &str, total_bytes: u64);
    fn advance(&self, bytes: u64);
    fn end(&self);
}

/// How a cycle runs.
#[derive(Clone, Default)]
pub struct CycleOptions {
    pub app: AppMode,
    pub cut: Option<Arc<dyn Cut>>,
    /// The longest the cut may hold the writers (the policy's `max_pause`); past it the cycle
    /// lets them go and fails instead of committing a point that is no longer consistent.
    /// `None`: as long as the scan takes.
    pub max_pause: Option<Duration>,
    pub progress: Option<Arc<dyn Progress>>,
    /// Read every disk in full even where a cut could say what changed.
    pub full_scan: bool,
    /// What the point itself must carry (in its manifest's `notes`), such as `unsafe-live-read`.
    pub point_notes: Vec<String>,
}

impl std::fmt::Debug for CycleOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CycleOptions")
            .field("app", &self.app)
            .field("max_pause", &self.max_pause)
            .field("full_scan", &self.full_scan)
            .finish_non_exhaustive()
    }
}

/// What a cycle did.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct CycleReport {
    pub group: String,
    pub seq: u64,
    pub kind: PointKind,
    pub captured_at: String,
    pub captured_unix_ms: u64,
    /// Bytes of the disks (logical size).
    pub disk_bytes: u64,
    /// Bytes of chunks that changed since the parent.
    pub changed_bytes: u64,
    /// Bytes of chunks not stored before (uncompressed), and what they took compressed.
    pub new_bytes: u64,
    /// Bytes of packs written to the target repository (data and metadata).
    pub shipped_bytes: u64,
    /// Bytes read from the disks (holes, and chunks a dirty bitmap proved unchanged, are not).
    #[serde(default)]
    pub read_bytes: u64,
    /// The longest a writer was kept from running (or from writing) for the cut, when a cut
    /// held any.
    #[serde(default)]
    pub paused_seconds: Option<f64>,
    pub seconds: f64,
    /// A staged point of an earlier, interrupted cycle committed first.
    pub resumed: Option<u64>,
    /// Things the user should know (a freeze that failed, a resumed session).
    pub notes: Vec<String>,
}

/// Runs one cycle for `group`: source site store `source` (its cache), target site `target`.
#[tracing::instrument(name = "cycle", skip_all, fields(group = %group.name))]
pub async fn replicate(
    group: &GroupSpec,
    source: &Store,
    target: &Store,
    opts: &CycleOptions,
) -> Result<CycleReport> {
    let started = Instant::now();
    let mut repo = Repository::open_or_create(target).await?;
    let cache = source.scoped(&format!("cache/{}", group.name));
    let mut latest = repo.latest(&group.name).await?;
    let epoch = writer_epoch(&cache, latest.as_ref()).await?;
    let mut notes = Vec::new();
    let newest = repo.newest_seq(&group.name).await?;
    if newest != latest.as_ref().map(|m| m.seq) {
        notes.push(format!(
            "point {} of group `{}` is damaged (see `lifeboat verify`); this point builds on point {}",
            newest.unwrap_or(0),
            group.name,
            latest.as_ref().map_or_else(|| "none".to_string(), |m| m.seq.to_string())
        ));
    }

    // A session an interrupted cycle staged completely is committed first: its data was cut
    // earlier, and dropping it would lose that point.
    let resumed = resume(
        &mut repo,
        &cache,
        &group.name,
        latest.as_ref(),
        epoch,
        &mut notes,
    )
    .await?;
    if resumed.is_some() {
        latest = repo.latest(&group.name).await?;
    }

    let condemned = repo.condemned().await?;
    let mut parents: HashMap<(String, String), Vec<Id>> = HashMap::new();
    if let Some(parent) = &latest {
        for vm in &parent.vms {
            for disk in &vm.disks {
                let root = disk.root_id().ok_or_else(|| {
                    Error::damaged(format!("point {}", parent.seq), "bad root id")
                })?;
                let map = repo.chunk_map(root, disk.chunks()).await?;
                parents.insert((vm.name.clone(), disk.name.clone()), map);
            }
        }
    }

    // The cut.
    let app_wanted = match opts.app {
        AppMode::Never => false,
        AppMode::Force => {
            if let Some(vm) = group.vms.iter().find(|v| v.quiesce.is_none()) {
                return Err(Error::failed(format!(
                    "VM `{}` has no quiesce hook: an app-consistent point needs one for every VM of group `{}`",
                    vm.name, group.name
                )));
            }
            true
        }
        AppMode::Auto => {
            group.vms.iter().all(|v| v.quiesce.is_some())
                && match (
                    group.app_interval,
                    latest_app_age(&repo, &group.name).await?,
                ) {
                    (Some(interval), Some(age)) => age >= interval,
                    (Some(_), None) => true,
                    (None, _) => false,
                }
        }
    };
    let mut frozen: Vec<&VmSpec> = Vec::new();
    let mut kind = PointKind::Crash;
    if app_wanted {
        kind = PointKind::App;
        for vm in &group.vms {
            let Some(q) = &vm.quiesce else { continue };
            match run_hook(&q.freeze, q.timeout, group).await {
                Ok(()) => frozen.push(vm),
                Err(e) => {
                    notes.push(format!(
                        "freeze of `{}` failed ({e}); this point is crash-consistent",
                        vm.name
                    ));
                    kind = PointKind::Crash;
                    break;
                }
            }
        }
        if kind == PointKind::Crash {
            thaw(&frozen, group, &mut notes).await;
            frozen.clear();
        }
    }
    if let Some(cut) = &opts.cut
        && let Err(e) = cut.hold().await
    {
        thaw(&frozen, group, &mut notes).await;
        return Err(e.context(format!("cannot hold the writers of group `{}`", group.name)));
    }
    let captured = SystemTime::now();
    // The pause's bound counts from here, where the writers stopped.
    let held_since = tokio::time::Instant::now();
    let held = Held {
        cut: opts.cut.clone(),
        frozen: frozen.iter().map(|v| (*v).clone()).collect(),
    };
    let at = CutAt {
        unix_ms: unix_ms(captured),
        since_unix_ms: latest
            .as_ref()
            .filter(|_| !opts.full_scan)
            .map(|m| m.captured_unix_ms),
    };
    let fleeced = match &opts.cut {
        Some(cut) => cut.freeze(at).await,
        None => Ok(Vec::new()),
    };
    let fleeced = match fleeced {
        Ok(f) => f,
        Err(e) => {
            return Err(match held.release(group, &mut notes).await {
                Ok(()) => e.context(format!("cannot freeze the disks of group `{}`", group.name)),
                Err(r) => r.context(format!("{e}; then, letting the writers go")),
            });
        }
    };
    let any_fleeced = !fleeced.is_empty();
    let mut committed = false;
    let result = capture_and_commit(
        Capture {
            group,
            opts,
            repo: &mut repo,
            cache: &cache,
            latest: latest.as_ref(),
            parents,
            condemned,
            epoch,
            kind,
            captured,
            held_since,
            started,
            resumed,
            // One bucket for the whole source site (its store), whatever the group.
            throttle: group
                .bandwidth
                .map(|rate| crate::throttle::Throttle::of(source.identity(), rate)),
        },
        held,
        fleeced,
        &mut notes,
        &mut committed,
    )
    .await;
    if any_fleeced
        && let Some(cut) = &opts.cut
        && let Err(e) = cut.unfreeze(committed).await
    {
        // The point stands either way; what the cut left behind is cleaned at its next freeze.
        tracing::warn!(group = %group.name, error = %e, "the cut's views were not all ended");
        notes.push(format!("the cut's views were not all ended: {e}"));
    }
    let mut report = result?;
    report.notes = notes;
    Ok(report)
}

/// What a cycle knows once its writers are held.
struct Capture<'a> {
    group: &'a GroupSpec,
    opts: &'a CycleOptions,
    repo: &'a mut Repository,
    cache: &'a Store,
    latest: Option<&'a crate::format::manifest::Manifest>,
    parents: HashMap<(String, String), Vec<Id>>,
    condemned: HashSet<String>,
    epoch: u64,
    kind: PointKind,
    captured: SystemTime,
    held_since: tokio::time::Instant,
    started: Instant,
    resumed: Option<u64>,
    throttle: Option<Arc<crate::throttle::Throttle>>,
}

/// The cut's views, the scan into the cache, the shipping and the commit. `committed` is set
/// as soon as the point is.
async fn capture_and_commit(
    c: Capture<'_>,
    held: Held,
    fleeced: Vec<FrozenDisk>,
    notes: &mut Vec<String>,
    committed: &mut bool,
) -> Result<CycleReport> {
    let Capture {
        group,
        opts,
        repo,
        cache,
        latest,
        parents,
        condemned,
        epoch,
        kind,
        captured,
        held_since,
        started,
        resumed,
        throttle,
    } = c;
    for f in &fleeced {
        if let Some(why) = &f.full_scan
            && latest.is_some()
            && !opts.full_scan
        {
            notes.push(format!("full scan of {}: {why}", f.path.display()));
        }
    }
    let mut held_for = None;
    let views = match take_views(group, fleeced).await {
        Ok(v) => v,
        Err(e) => {
            return Err(match held.release(group, notes).await {
                Ok(()) => e,
                // Both matter: the writers may still be held, and why the cycle stopped.
                Err(r) => r.context(format!("{e}; then, letting the writers go")),
            });
        }
    };
    let mut held = Some(held);
    // A writer that could not be let go is reported after the point is committed (the point
    // itself is sound).
    let mut release_error = None;
    if views.iter().all(|(_, _, v)| v.frozen())
        && let Some(h) = held.take()
    {
        held_for = Some(held_since.elapsed());
        if let Err(e) = h.release(group, notes).await {
            release_error = Some(e);
        }
    }

    // Capture into the cache, shipping each pack to the repository as it closes.
    let session = session_id(captured);
    let (tx, rx) = mpsc::channel::<SealedPack>(2);
    let uploader = tokio::spawn(upload(
        rx,
        cache.clone(),
        repo.store().clone(),
        session.clone(),
        throttle,
    ));
    let keys = repo.keys().clone();
    let index = repo.index_arc();
    let total: u64 = views.iter().map(|(_, _, v)| v.reader().size()).sum();
    if let Some(p) = &opts.progress {
        p.begin(&group.name, total);
    }
    let progress = opts.progress.clone();
    let mut scan = tokio::task::spawn_blocking(move || -> Result<_> {
        let known = |id: &Id| {
            index
                .blobs
                .get(id)
                .is_some_and(|loc| !condemned.contains(index.pack_name(loc)))
        };
        let advance = |n: u64| {
            if let Some(p) = &progress {
                p.advance(n);
            }
        };
        let mut seen = HashSet::new();
        let mut results = Vec::new();
        let mut meta = PackSink::new(PackClass::Meta, tx.clone());
        // The views (and their NBD connections) end with this task.
        for (vm, disk, view) in views {
            let parent = parents
                .get(&(vm.clone(), disk.name.clone()))
                .filter(|p| !p.is_empty());
            let class = if parent.is_some() {
                PackClass::Delta
            } else {
                PackClass::Seed
            };
            let mut sink = PackSink::new(class, tx.clone());
            let scanned = capture::scan(
                view.reader(),
                view.dirty(),
                disk.chunk_size,
                &keys,
                parent.map(Vec::as_slice),
                &known,
                &mut seen,
                &mut sink,
                &advance,
            )
            .map_err(|e| e.context(format!("capture of `{vm}/{}`", disk.name)))?;
            sink.flush()?;
            let (root, pages) = repo::build_tree(&keys, &scanned.map);
            let mut reused = scanned.reused.clone();
            for (id, bytes) in pages {
                if known(&id) {
                    reused.insert(id);
                } else if seen.insert(id) {
                    match compress(&bytes) {
                        Some(z) => meta.add(id, BlobKind::Page, bytes.len(), Codec::Zstd, &z)?,
                        None => meta.add(id, BlobKind::Page, bytes.len(), Codec::Raw, &bytes)?,
                    }
                }
            }
            results.push((vm, disk.name, root, scanned, reused));
        }
        meta.flush()?;
        Ok(results)
    });
    // While the writers are held the scan races the pause's bound; past it the writers go, the
    // uploader stops (so the scan stops at its next batch) and nothing is committed.
    let bound = opts.max_pause.filter(|_| held.is_some());
    let mut abandoned = false;
    let scanned = match bound {
        Some(max) => tokio::select! {
            r = &mut scan => r,
            () = tokio::time::sleep_until(held_since + max) => {
                abandoned = true;
                if let Some(h) = held.take() {
                    held_for = Some(held_since.elapsed());
                    h.release(group, notes).await?;
                }
                uploader.abort();
                (&mut scan).await
            }
        },
        None => (&mut scan).await,
    }
    .map_err(|e| Error::failed(format!("capture stopped: {e}")));
    if let Some(h) = held.take() {
        held_for = Some(held_since.elapsed());
        if let Err(e) = h.release(group, notes).await {
            release_error = Some(e);
        }
    }
    if let Some(p) = &opts.progress {
        p.end();
    }
    if abandoned {
        return Err(Error::failed(format!(
            "the cut of group `{}` held its writers past the policy's max_pause ({}): they were let go and no point was taken (raise max_pause, or use a file system with reflink copies)",
            group.name,
            humantime_secs(bound.unwrap_or_default())
        )));
    }
    let scanned = scanned??;
    let uploaded = uploader
        .await
        .map_err(|e| Error::failed(format!("upload stopped: {e}")))?;
    let (shipped, ship_error) = uploaded?;

    let mut vms = Vec::new();
    let mut disk_bytes = 0;
    let mut changed = 0;
    let mut new_bytes = 0;
    let mut read_bytes = 0;
    let mut reused: HashSet<Id> = HashSet::new();
    for spec in &group.vms {
        let mut disks = Vec::new();
        for disk in &spec.disks {
            let Some((_, _, root, s, r)) = scanned
                .iter()
                .find(|(vm, d, ..)| *vm == spec.name && *d == disk.name)
            else {
                continue;
            };
            disk_bytes += s.size;
            changed += s.changed_bytes;
            new_bytes += s.new_bytes;
            read_bytes += s.read_bytes;
            reused.extend(r.iter().copied());
            disks.push(DiskPoint {
                name: disk.name.clone(),
                source: disk.source.clone(),
                size: s.size,
                chunk_size: disk.chunk_size,
                root: root.hex(),
                changed_bytes: s.changed_bytes,
            });
        }
        vms.push(VmPoint {
            name: spec.name.clone(),
            definition: spec.definition.clone(),
            disks,
        });
    }
    let staged = Staged {
        parent: latest.map(|m| m.seq),
        seq: Some(repo.newest_seq(&group.name).await?.map_or(1, |n| n + 1)),
        epoch,
        kind,
        captured_unix_ms: unix_ms(captured),
        vms,
        packs: shipped.iter().map(|(n, _, _)| n.clone()).collect(),
        notes: opts.point_notes.clone(),
    };
    let record = serde_json::to_vec(&staged)
        .map_err(|e| Error::failed(format!("cannot encode the staged session: {e}")))?;
    cache
        .put_new(&format!("sessions/{session}/staged"), Bytes::from(record))
        .await?;
    if let Some(e) = ship_error {
        return Err(e.context(format!(
            "point of group `{}` is staged in the cache of site `{}` but could not be shipped; the next cycle ships it",
            group.name, group.source_site
        )));
    }
    let packs: Vec<(String, Vec<Entry>)> = shipped
        .iter()
        .map(|(n, e, _)| (n.clone(), e.clone()))
        .collect();
    let shipped_bytes = shipped.iter().map(|(_, _, len)| *len).sum();
    let seq = commit(repo, &group.name, &staged, packs, &reused, started).await?;
    *committed = true;
    tracing::info!(
        seq,
        kind = kind.as_str(),
        changed_bytes = changed,
        read_bytes,
        shipped_bytes,
        seconds = started.elapsed().as_secs_f64(),
        "point committed"
    );
    drop_session(cache, &session).await;
    if let Some(e) = release_error {
        return Err(e.context(format!(
            "point {seq} of group `{}` was committed, but its writers may still be held",
            group.name
        )));
    }
    Ok(CycleReport {
        group: group.name.clone(),
        seq,
        kind,
        captured_at: rfc3339(captured),
        captured_unix_ms: unix_ms(captured),
        disk_bytes,
        changed_bytes: changed,
        new_bytes,
        shipped_bytes,
        read_bytes,
        paused_seconds: opts
            .cut
            .as_ref()
            .and_then(|c| c.paused())
            .or(held_for)
            .map(|d| d.as_secs_f64()),
        seconds: started.elapsed().as_secs_f64(),
        resumed,
        notes: Vec::new(),
    })
}

/// What holds the writers: released once, after the cut is safe.
struct Held {
    cut: Option<Arc<dyn Cut>>,
    frozen: Vec<VmSpec>,
}

impl Held {
    async fn release(self, group: &GroupSpec, notes: &mut Vec<String>) -> Result<()> {
        let released = match &self.cut {
            Some(cut) => cut.release().await,
            None => Ok(()),
        };
        let frozen: Vec<&VmSpec> = self.frozen.iter().collect();
        thaw(&frozen, group, notes).await;
        released
    }
}

fn humantime_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

async fn thaw(frozen: &[&VmSpec], group: &GroupSpec, notes: &mut Vec<String>) {
    for vm in frozen.iter().rev() {
        if let Some(QuiesceSpec { thaw, timeout, .. }) = &vm.quiesce
            && let Err(e) = run_hook(thaw, *timeout, group).await
        {
            notes.push(format!("thaw of `{}` failed: {e}", vm.name));
        }
    }
}

async fn run_hook(argv: &[String], timeout: Duration, group: &GroupSpec) -> Result<()> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::failed("empty hook command"));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(&group.base)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| Error::failed(format!("`{program}` did not finish within {timeout:?}")))?
        .map_err(|e| Error::io(format!("cannot run `{program}`"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "`{program}` exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A disk as the scan reads it: frozen by the cut, or cut by the cycle.
enum DiskView {
    Fleeced(FrozenDisk),
    Image(capture::View, capture::FileReader),
}

impl DiskView {
    fn frozen(&self) -> bool {
        match self {
            DiskView::Fleeced(_) => true,
            DiskView::Image(v, _) => v.frozen,
        }
    }

    fn reader(&self) -> &dyn capture::DiskReader {
        match self {
            DiskView::Fleeced(f) => f.reader.as_ref(),
            DiskView::Image(_, r) => r,
        }
    }

    fn dirty(&self) -> Option<&[(u64, u64)]> {
        match self {
            DiskView::Fleeced(f) => f.dirty.as_deref(),
            DiskView::Image(..) => None,
        }
    }
}

/// Every disk's view: those the cut froze, and a snapshot (or the image itself) of the others.
async fn take_views(
    group: &GroupSpec,
    mut fleeced: Vec<FrozenDisk>,
) -> Result<Vec<(String, crate::groups::DiskSpec, DiskView)>> {
    let mut out = Vec::new();
    for vm in &group.vms {
        for disk in &vm.disks {
            if let Some(at) = fleeced.iter().position(|f| f.path == disk.path) {
                let f = fleeced.swap_remove(at);
                out.push((vm.name.clone(), disk.clone(), DiskView::Fleeced(f)));
                continue;
            }
            let path = disk.path.clone();
            let view = tokio::task::spawn_blocking(move || -> Result<DiskView> {
                let view = capture::raw_view(&path)?;
                let reader = capture::FileReader::open(&view.path)?;
                Ok(DiskView::Image(view, reader))
            })
            .await
            .map_err(|e| Error::failed(format!("snapshot stopped: {e}")))?
            .map_err(|e| e.context(format!("cut of `{}/{}`", vm.name, disk.name)))?;
            out.push((vm.name.clone(), disk.clone(), view));
        }
    }
    if let Some(stray) = fleeced.first() {
        return Err(Error::failed(format!(
            "the cut froze {}, which is no disk of group `{}`",
            stray.path.display(),
            group.name
        )));
    }
    Ok(out)
}

/// Receives closed packs: stages each in the cache, then ships it to the repository. A failed
/// ship is remembered (the data stays staged); a failed stage stops the cycle.
async fn upload(
    mut rx: mpsc::Receiver<SealedPack>,
    cache: Store,
    repo: Store,
    session: String,
    throttle: Option<Arc<crate::throttle::Throttle>>,
) -> Result<(Vec<(String, Vec<Entry>, u64)>, Option<Error>)> {
    // Several packs in flight: a local store spends most of a put waiting for fsync.
    const IN_FLIGHT: usize = 4;
    let mut done = Vec::new();
    let mut ship_error = None;
    let mut running = tokio::task::JoinSet::new();
    let mut open = true;
    while open || !running.is_empty() {
        tokio::select! {
            p = rx.recv(), if open && running.len() < IN_FLIGHT => match p {
                Some(p) => {
                    let (cache, repo, session) = (cache.clone(), repo.clone(), session.clone());
                    let throttle = throttle.clone();
                    running.spawn(async move {
                        let bytes = Bytes::from(p.bytes);
                        let len = bytes.len() as u64;
                        // Stage and ship at once: the staged copy is what a later cycle ships
                        // if this one dies before it commits.
                        let staged_name = format!("sessions/{session}/packs/{}", p.name);
                        let object = pack::object_name(&p.name);
                        let ship = async {
                            // The site's bandwidth: the wait is for shipping, not staging.
                            if let Some(t) = &throttle {
                                t.take(len).await;
                            }
                            repo.put_new(&object, bytes.clone()).await
                        };
                        let (staged, shipped) =
                            tokio::join!(cache.put_new(&staged_name, bytes.clone()), ship);
                        (p.name, p.entries, len, staged, shipped)
                    });
                }
                None => open = false,
            },
            Some(joined) = running.join_next() => {
                let (name, entries, len, staged, shipped) =
                    joined.map_err(|e| Error::failed(format!("upload stopped: {e}")))?;
                staged.map_err(|e| e.context("staging in the cache"))?;
                if let Err(e) = shipped {
                    ship_error.get_or_insert(e);
                }
                done.push((name, entries, len));
            }
        }
    }
    Ok((done, ship_error))
}

async fn latest_app_age(repo: &Repository, group: &str) -> Result<Option<Duration>> {
    for seq in repo.point_seqs(group).await? {
        // A damaged manifest costs only its own point (see `Repository::latest`).
        let m = match repo.point(group, seq).await {
            Ok(m) => m,
            Err(e) if e.kind() == crate::error::ErrorKind::Damaged => continue,
            Err(e) => return Err(e),
        };
        if m.kind == PointKind::App {
            let now = unix_ms(SystemTime::now());
            return Ok(Some(Duration::from_millis(
                now.saturating_sub(m.captured_unix_ms),
            )));
        }
    }
    Ok(None)
}
