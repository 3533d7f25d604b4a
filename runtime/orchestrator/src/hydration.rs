//! Seeing an instant run's disks through to hydrated: the QEMU jobs copy, this keeps their
//! export servers alive (restarting one that died), resumes a job paused on an error (and a
//! domain's guest held on one), starts one that never began, journals each disk's time to hydrated and stops a VM's server once its
//! disks hold everything. A CLI run does it until its disks are hydrated (Ctrl-C leaves the VMs
//! and servers running: `commit` and `status` take over), the daemon for every run it drives.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use lifeboat_compute::driver::{Compute, Handle, Launch, Signal};
use lifeboat_compute::hydrate::{self, Hydration, Monitor};

use crate::error::{Error, Result};
use crate::journal::Event;
use crate::runs::Environment;

/// Disks hydrating at once in one run (each a QEMU job reading the export server).
pub(crate) const AT_ONCE: usize = 4;
/// How long a new export server may take to open its repository and listen.
const SERVER_UP: Duration = Duration::from_secs(60);
/// How often the supervisor looks.
const EVERY: Duration = Duration::from_millis(500);
/// How long a VM's boot has the export server to itself when its group is not healthy yet:
/// hydration begins then anyway.
const BOOT_GRACE: Duration = Duration::from_secs(120);

/// What tending a run's disks needs: its journal, the compute driver, and the inventory's
/// folder (where VMs and servers start).
#[derive(Clone)]
pub struct Tender {
    journal: PathBuf,
    driver: Arc<dyn Compute>,
    base: PathBuf,
}

impl std::fmt::Debug for Tender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tender")
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl Tender {
    pub fn of(env: &Environment) -> Self {
        Self {
            journal: env.journal_path(),
            driver: env.driver.clone(),
            base: env.config.base.clone(),
        }
    }

    fn journal(&self) -> Result<crate::journal::Journal> {
        Ok(crate::journal::Journal::open(&self.journal)?)
    }
}

/// One instant disk, as the supervisor last saw it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DiskHydration {
    pub vm: String,
    pub disk: String,
    pub image: String,
    /// Bytes hydrated (QEMU's job offset) and the disk's size.
    pub done: u64,
    pub total: u64,
    pub hydrated: bool,
    /// When hydrated: seconds from the VM's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Not hydrating, and why (the VM is not running, the job is paused…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// What the journal says of one instant VM.
struct InstantVm {
    vm: String,
    server: Handle,
    launch: Launch,
    socket: PathBuf,
    disks: Vec<String>,
    images: Vec<PathBuf>,
    /// The VM, where its disk jobs are driven, and its start (journal time), while it runs.
    running: Option<(Handle, Monitor, i64)>,
    /// Disk → seconds to hydrated, bytes.
    hydrated: BTreeMap<String, (f64, u64)>,
    stopped: bool,
    /// The most each disk's job reads per second (0: no limit).
    speed: u64,
    /// Its group is healthy (or the run ended) since it started: its boot is over.
    booted: bool,
}

impl InstantVm {
    /// Whether hydration may begin: the boot is over, or has had [`BOOT_GRACE`]. Until then the
    /// guest's reads have the server to themselves, and they alone are its boot's trace.
    fn may_hydrate(&self, started_at: i64) -> bool {
        self.booted || now_ms() - started_at > BOOT_GRACE.as_millis() as i64
    }
}

fn instant_vms(t: &Tender, run: &str) -> Result<Vec<InstantVm>> {
    let events = t.journal()?.events(run)?;
    let mut out: Vec<InstantVm> = Vec::new();
    for (_, at, e) in events {
        match e {
            Event::Exporting {
                vm,
                key,
                pid,
                started,
                argv,
                log,
                socket,
                disks,
                images,
                speed,
            } => {
                let server = Handle {
                    vm: vm.clone(),
                    pid,
                    started,
                    key: key.clone(),
                    domain: None,
                };
                let launch = Launch {
                    vm: vm.clone(),
                    argv,
                    dir: t.base.clone(),
                    log: PathBuf::from(log),
                    key,
                    netns: None,
                    domain: None,
                };
                let images = images.into_iter().map(PathBuf::from).collect();
                match out.iter_mut().find(|v| v.vm == vm) {
                    Some(v) => {
                        v.server = server;
                        v.launch = launch;
                        v.stopped = false;
                        v.speed = speed;
                    }
                    None => out.push(InstantVm {
                        vm,
                        server,
                        launch,
                        socket: PathBuf::from(socket),
                        disks,
                        images,
                        running: None,
                        hydrated: BTreeMap::new(),
                        stopped: false,
                        speed,
                        booted: false,
                    }),
                }
            }
            Event::VmStarted {
                vm,
                key,
                pid,
                started,
                argv,
                domain,
                ..
            } => {
                if let Some(v) = out.iter_mut().find(|v| v.vm == vm)
                    && let Some(monitor) = Monitor::of(&argv, domain.as_ref(), &t.base)
                {
                    let h = Handle {
                        vm,
                        pid,
                        started,
                        key,
                        domain,
                    };
                    v.running = Some((h, monitor, at));
                    v.booted = false;
                }
            }
            // Groups start one after another: a VM started before this is in a healthy group.
            Event::GroupHealthy { .. } | Event::RunFinished { .. } => {
                for v in &mut out {
                    v.booted = true;
                }
            }
            Event::VmStopped { vm } => {
                if let Some(v) = out.iter_mut().find(|v| v.vm == vm) {
                    v.running = None;
                }
            }
            Event::Hydrated {
                vm,
                disk,
                seconds,
                bytes,
            } => {
                if let Some(v) = out.iter_mut().find(|v| v.vm == vm) {
                    v.hydrated.insert(disk, (seconds, bytes));
                }
            }
            Event::ExportStopped { vm } => {
                if let Some(v) = out.iter_mut().find(|v| v.vm == vm) {
                    v.stopped = true;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Whether run `run` booted anything instantly.
pub fn is_instant(env: &Environment, run: &str) -> Result<bool> {
    Ok(!instant_vms(&Tender::of(env), run)?.is_empty())
}

/// One look at run `run`'s instant disks, acting on what it sees (restart a dead server, resume
/// or start a job, journal a disk hydrated, stop a server whose disks are all hydrated).
pub async fn tend(env: &Environment, run: &str) -> Result<Vec<DiskHydration>> {
    tend_with(&Tender::of(env), run).await
}

/// [`tend`], with what it needs.
pub async fn tend_with(t: &Tender, run: &str) -> Result<Vec<DiskHydration>> {
    let vms = instant_vms(t, run)?;
    let mut journal = t.journal()?;
    let mut out = Vec::new();
    let mut streaming = 0usize;
    // Disks no job copies, on servers that are up, with the server.
    let mut idle: Vec<(Monitor, Vec<PathBuf>, usize, u64, Handle)> = Vec::new();
    // Domains with a pull running: libvirt's QEMU is given one at a time (two pulls begun
    // together as a domain started crashed QEMU 10.0.2 now and then).
    let mut pulling: Vec<Monitor> = Vec::new();
    for v in &vms {
        let all_done = v.disks.iter().all(|d| v.hydrated.contains_key(d));
        let row =
            |i: usize, done: u64, total: u64, seconds: Option<f64>, waiting: Option<String>| {
                DiskHydration {
                    vm: v.vm.clone(),
                    disk: v.disks.get(i).cloned().unwrap_or_default(),
                    image: v
                        .images
                        .get(i)
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    done,
                    total,
                    hydrated: seconds.is_some(),
                    seconds,
                    waiting,
                }
            };
        let live = match &v.running {
            Some((h, monitor, at)) if t.driver.running(h).await => Some((monitor, *at)),
            _ => None,
        };
        if all_done {
            if !v.stopped {
                stop_server(t, &mut journal, run, v).await?;
            }
            for (i, d) in v.disks.iter().enumerate() {
                let (s, b) = v.hydrated.get(d).copied().unwrap_or_default();
                out.push(row(i, b, b, Some(s), None));
            }
            continue;
        }
        let Some((monitor, started_at)) = live else {
            for (i, d) in v.disks.iter().enumerate() {
                let s = v.hydrated.get(d).map(|h| h.0);
                let why = s.is_none().then(|| "the VM is not running".to_string());
                out.push(row(i, 0, 0, s, why));
            }
            continue;
        };
        // The server first: a job cannot go on without it.
        let server_up = if t.driver.running(&v.server).await {
            true
        } else {
            restart_server(t, &mut journal, run, v).await?
        };
        // A domain's guest is held on a read the dead server failed: it goes on now.
        if server_up {
            match monitor.release_guest().await {
                Ok(true) => tracing::info!(vm = %v.vm, "the guest held on a read error goes on"),
                Ok(false) => {}
                Err(e) => tracing::warn!(vm = %v.vm, error = %e, "the held guest did not resume"),
            }
        }
        let seen = match monitor.look(&v.images).await {
            Ok(s) => s,
            Err(e) => {
                for (i, d) in v.disks.iter().enumerate() {
                    let s = v.hydrated.get(d).map(|h| h.0);
                    out.push(row(i, 0, 0, s, s.is_none().then(|| e.clone())));
                }
                continue;
            }
        };
        let mut whole = 0;
        for (i, state) in seen.into_iter().enumerate() {
            let disk = v.disks.get(i).cloned().unwrap_or_default();
            if let Some((s, b)) = v.hydrated.get(&disk) {
                whole += 1;
                out.push(row(i, *b, *b, Some(*s), None));
                continue;
            }
            match state {
                Hydration::Hydrated => {
                    let (seconds, bytes) =
                        journal_hydrated(&mut journal, run, v, &disk, &v.images[i], started_at)
                            .await?;
                    whole += 1;
                    out.push(row(i, bytes, bytes, Some(seconds), None));
                }
                Hydration::Streaming {
                    done,
                    total,
                    paused,
                } => {
                    streaming += 1;
                    if matches!(monitor, Monitor::Domain(_)) {
                        pulling.push(monitor.clone());
                    }
                    let mut waiting = None;
                    if paused {
                        if server_up {
                            if let Err(e) = monitor.resume(i).await {
                                waiting = Some(format!("paused: {e}"));
                            }
                        } else {
                            waiting = Some("paused until the export server is back".into());
                        }
                    }
                    out.push(row(i, done, total, None, waiting));
                }
                Hydration::Idle => {
                    let mut waiting = None;
                    if !v.may_hydrate(started_at) {
                        waiting =
                            Some("booting: hydration begins once its group is healthy".into());
                    } else if server_up {
                        let server = v.server.clone();
                        idle.push((monitor.clone(), v.images.clone(), i, v.speed, server));
                    }
                    out.push(row(i, 0, disk_size(&v.images[i]).await, None, waiting));
                }
                Hydration::Absent => {
                    out.push(row(
                        i,
                        0,
                        0,
                        None,
                        Some("the VM does not have this image open".into()),
                    ));
                }
            }
        }
        // Its last disk hydrated in this look: nothing reads the server any more.
        if whole == v.disks.len() && !v.stopped {
            stop_server(t, &mut journal, run, v).await?;
        }
    }
    for (monitor, images, i, speed, server) in idle {
        if streaming >= AT_ONCE {
            break;
        }
        if pulling.contains(&monitor) {
            continue;
        }
        // The boot is over: its server keeps what the guest read as the VM's boot trace (a
        // server that is not recording ignores this).
        if let Err(e) = lifeboat_compute::driver::signal(&server, Signal::USR1) {
            tracing::debug!(vm = %server.vm, error = %e, "the export server was not told the boot is over");
        }
        match monitor.stream(&images, i, speed).await {
            Ok(()) => {
                streaming += 1;
                if matches!(monitor, Monitor::Domain(_)) {
                    pulling.push(monitor);
                }
            }
            Err(e) => {
                tracing::warn!(image = %images[i].display(), error = %e, "hydration not started")
            }
        }
    }
    Ok(out)
}

/// Tends run `run`'s instant disks until every one is hydrated, or until none can go on (its VM
/// is not running); `progress` sees each look.
pub async fn until_hydrated(
    env: &Environment,
    run: &str,
    progress: impl Fn(&[DiskHydration]),
) -> Result<Vec<DiskHydration>> {
    until_hydrated_with(&Tender::of(env), run, progress).await
}

/// [`until_hydrated`], with what it needs.
pub async fn until_hydrated_with(
    t: &Tender,
    run: &str,
    progress: impl Fn(&[DiskHydration]),
) -> Result<Vec<DiskHydration>> {
    loop {
        let seen = tend_with(t, run).await?;
        progress(&seen);
        let stuck: HashSet<&str> = seen
            .iter()
            .filter(|d| !d.hydrated && d.waiting.as_deref() == Some("the VM is not running"))
            .map(|d| d.vm.as_str())
            .collect();
        if seen
            .iter()
            .all(|d| d.hydrated || stuck.contains(d.vm.as_str()))
        {
            return Ok(seen);
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Hydrates the disks of run `run`'s instant VMs that are not running (stopped, or crashed,
/// before their disks held everything; no job can copy for them): with the VM's export server
/// up (started again if it died), each image takes what it lacks from the export
/// (`hydrate_offline`); then the server stops. What `commit` does for them, so a VM that went
/// down mid-hydration does not keep its run from being committed.
pub async fn hydrate_stopped(env: &Environment, run: &str) -> Result<()> {
    let t = Tender::of(env);
    let mut journal = t.journal()?;
    for v in instant_vms(&t, run)? {
        if v.disks.iter().all(|d| v.hydrated.contains_key(d)) {
            continue;
        }
        if let Some((h, _, _)) = &v.running
            && t.driver.running(h).await
        {
            continue;
        }
        let up =
            t.driver.running(&v.server).await || restart_server(&t, &mut journal, run, &v).await?;
        if !up {
            return Err(Error::Failed(format!(
                "{}'s export server does not serve (see {}): its disks cannot hydrate",
                v.vm,
                v.launch.log.display()
            )));
        }
        let started_at = v.running.as_ref().map_or_else(now_ms, |(_, _, at)| *at);
        for (disk, image) in v.disks.iter().zip(&v.images) {
            if v.hydrated.contains_key(disk) {
                continue;
            }
            tracing::info!(vm = %v.vm, disk = %disk, "its VM is not running: hydrating the image offline");
            hydrate::hydrate_offline(image)
                .await
                .map_err(|e| Error::Failed(format!("{}/{disk}: {e}", v.vm)))?;
            journal_hydrated(&mut journal, run, &v, disk, image, started_at).await?;
        }
        stop_server(&t, &mut journal, run, &v).await?;
    }
    Ok(())
}

/// Journals `v`'s `disk` hydrated: seconds since its VM started (`started_at`, journal time)
/// and the disk's size.
async fn journal_hydrated(
    journal: &mut crate::journal::Journal,
    run: &str,
    v: &InstantVm,
    disk: &str,
    image: &Path,
    started_at: i64,
) -> Result<(f64, u64)> {
    let seconds = (now_ms() - started_at).max(0) as f64 / 1000.0;
    let bytes = disk_size(image).await;
    journal.append(
        run,
        &Event::Hydrated {
            vm: v.vm.clone(),
            disk: disk.to_string(),
            seconds,
            bytes,
        },
    )?;
    tracing::info!(vm = %v.vm, disk, seconds, "hydrated");
    Ok((seconds, bytes))
}

/// Why a run's disks are not all hydrated (for `commit` and `reprotect`), or `None`.
pub fn unhydrated(seen: &[DiskHydration]) -> Option<String> {
    let open: Vec<String> = seen
        .iter()
        .filter(|d| !d.hydrated)
        .map(|d| {
            let mut s = format!("{}/{}", d.vm, d.disk);
            if d.total > 0 {
                s.push_str(&format!(
                    " {:.0}% ({} of {} MiB)",
                    d.done as f64 * 100.0 / d.total as f64,
                    d.done >> 20,
                    d.total >> 20
                ));
            }
            if let Some(w) = &d.waiting {
                s.push_str(&format!(": {w}"));
            }
            s
        })
        .collect();
    (!open.is_empty()).then(|| open.join(", "))
}

/// Stops run `run`'s export servers (cleanup).
pub async fn stop_servers(env: &Environment, run: &str) -> Result<()> {
    let t = Tender::of(env);
    let mut journal = t.journal()?;
    for v in instant_vms(&t, run)? {
        if !v.stopped {
            stop_server(&t, &mut journal, run, &v).await?;
        }
    }
    Ok(())
}

async fn stop_server(
    env: &Tender,
    journal: &mut crate::journal::Journal,
    run: &str,
    v: &InstantVm,
) -> Result<()> {
    let mut handles = vec![v.server.clone()];
    // One the runtime started and died before journaling.
    if let Some(h) = find_server(env.driver.as_ref(), &v.launch).await
        && h.pid != v.server.pid
    {
        handles.push(h);
    }
    for h in handles {
        env.driver
            .stop(&h, Duration::from_secs(5))
            .await
            .map_err(|e| Error::Failed(format!("stopping {}'s export server: {e}", v.vm)))?;
    }
    remove_socket(&v.socket);
    journal.append(run, &Event::ExportStopped { vm: v.vm.clone() })?;
    Ok(())
}

/// Starts `v`'s export server again, as it was started; `false` if it does not listen yet.
async fn restart_server(
    env: &Tender,
    journal: &mut crate::journal::Journal,
    run: &str,
    v: &InstantVm,
) -> Result<bool> {
    if let Some(h) = find_server(env.driver.as_ref(), &v.launch).await {
        // Started by another look (or a runtime that died before journaling it).
        return Ok(env.driver.running(&h).await);
    }
    tracing::warn!(vm = %v.vm, pid = v.server.pid, "the export server is gone: starting it again");
    // What it would record now is not a boot: it serves without the trace.
    let mut launch = v.launch.clone();
    if let Some(at) = launch.argv.iter().position(|a| a == "--boot-trace") {
        launch.argv.drain(at..(at + 2).min(launch.argv.len()));
    }
    let h = env
        .driver
        .start(&launch)
        .await
        .map_err(|e| Error::Failed(format!("restarting {}'s export server: {e}", v.vm)))?;
    journal.append(
        run,
        &Event::Exporting {
            vm: v.vm.clone(),
            key: v.launch.key.clone(),
            pid: h.pid,
            started: h.started,
            argv: launch.argv.clone(),
            log: v.launch.log.display().to_string(),
            socket: v.socket.display().to_string(),
            disks: v.disks.clone(),
            images: v.images.iter().map(|p| p.display().to_string()).collect(),
            speed: v.speed,
        },
    )?;
    let up = wait_listening(&v.socket, &v.launch.log, env.driver.as_ref(), &h)
        .await
        .is_ok();
    Ok(up)
}

fn remove_socket(socket: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(socket);
    }
}

/// The disk's size, for progress (0 when qemu-img cannot say).
async fn disk_size(image: &Path) -> u64 {
    hydrate::virtual_size(image).await.unwrap_or(0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The running export server `launch` describes: the process marked with its key *and* running
/// its command line (run ids repeat across state folders, so a key alone could name another
/// inventory's server).
pub(crate) async fn find_server(driver: &dyn Compute, launch: &Launch) -> Option<Handle> {
    let h = driver.find(&launch.vm, &launch.key).await?;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", h.pid)).ok()?;
    let argv: Vec<&[u8]> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    let same = argv.len() == launch.argv.len()
        && argv
            .iter()
            .zip(&launch.argv)
            .all(|(a, b)| *a == b.as_bytes());
    same.then_some(h)
}

/// Waits until the export server accepts connections on `socket`; a server that exits first
/// is an error with the end of its log.
pub(crate) async fn wait_listening(
    socket: &Path,
    log: &Path,
    driver: &dyn Compute,
    server: &Handle,
) -> std::result::Result<(), String> {
    let deadline = tokio::time::Instant::now() + SERVER_UP;
    loop {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        if !driver.running(server).await {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "the export server exited before it served: {}",
                tail.join(" / ")
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the export server did not listen on {} within {}s",
                socket.display(),
                SERVER_UP.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
