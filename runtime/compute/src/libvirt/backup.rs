//! A group's cut through libvirt: each domain's disks read from a pull backup (libvirt's NBD
//! export of the disks as they were when the backup began), incremental from the parent
//! point's checkpoint when libvirt still has it and the disk keeps bitmaps (qcow2), in full
//! otherwise, with the reason in the cycle's notes. The backup creates the next checkpoint at
//! the same instant. A group of several domains is suspended, every backup begun, and resumed:
//! one instant for all of them, the pause measured and bounded by `max_pause`.
//!
//! Checkpoints are named `lifeboat-<point's capture ms>`. After a committed point, the older
//! ones go; after a failed one, the new one goes (libvirt merges its bitmap into its parent's,
//! so the parent still covers every write since). A job a killed cycle left is aborted first.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_replication::{Cut, CutAt, Error, FrozenDisk, Result};

use super::rpc::DomainRef;
use super::{DomainDisk, Host};

const PREFIX: &str = "lifeboat-";

/// A domain of the group: where it runs and the disks the group names.
#[derive(Clone, Debug)]
pub struct LibvirtVm {
    pub vm: String,
    pub host: String,
    pub domain: String,
    pub disks: Vec<DomainDisk>,
}

/// One domain's backup while the cut lasts.
struct Job {
    vm: LibvirtVm,
    host: Arc<Host>,
    dom: DomainRef,
    socket: PathBuf,
    /// The checkpoint this backup creates (none when no disk keeps bitmaps).
    checkpoint: Option<String>,
    /// Per disk, the reason it is read in full (`None`: incremental).
    full: Vec<Option<String>>,
}

pub struct LibvirtCut {
    vms: Vec<LibvirtVm>,
    hosts: Vec<Arc<Host>>,
    /// Where the NBD sockets and scratch files of the backups live (on the hypervisor host).
    dir: PathBuf,
    max_pause: Duration,
    jobs: tokio::sync::Mutex<Vec<Job>>,
    paused_for: std::sync::Mutex<Option<Duration>>,
}

impl std::fmt::Debug for LibvirtCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtCut")
            .field("vms", &self.vms)
            .finish_non_exhaustive()
    }
}

impl LibvirtCut {
    /// `hosts`: the open connections `vms` name by URI.
    pub fn new(
        vms: Vec<LibvirtVm>,
        hosts: Vec<Arc<Host>>,
        dir: PathBuf,
        max_pause: Duration,
    ) -> Self {
        Self {
            vms,
            hosts,
            dir,
            max_pause,
            jobs: tokio::sync::Mutex::new(Vec::new()),
            paused_for: std::sync::Mutex::new(None),
        }
    }

    /// What the cut does, for the cycle's notes.
    pub fn describe(&self) -> Vec<String> {
        let names: Vec<&str> = self.vms.iter().map(|v| v.vm.as_str()).collect();
        vec![if self.vms.len() > 1 {
            format!(
                "cut {} at one instant through libvirt (suspended only while the backups began)",
                names.join(", ")
            )
        } else {
            format!(
                "cut {} while running (libvirt pull backup)",
                names.join(", ")
            )
        }]
    }

    fn host(&self, uri: &str) -> Result<Arc<Host>> {
        self.hosts
            .iter()
            .find(|h| h.uri == uri)
            .cloned()
            .ok_or_else(|| Error::failed(format!("no connection to libvirt host `{uri}`")))
    }
}

fn failed(vm: &LibvirtVm, e: impl std::fmt::Display) -> Error {
    Error::failed(format!(
        "libvirt domain `{}` of VM `{}`: {e}",
        vm.domain, vm.vm
    ))
}

/// The blocking libvirt calls, off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::failed(format!("a libvirt call stopped: {e}")))
}

/// Everything of one domain's backup that can happen before the instant: a stale job aborted,
/// the parent's checkpoint looked for, the XML of the backup and of its checkpoint written.
fn prepare(
    vm: &LibvirtVm,
    host: Arc<Host>,
    dir: &Path,
    at: CutAt,
) -> Result<(Job, String, Option<String>)> {
    let dom = host.lookup(&vm.domain).map_err(|e| failed(vm, e))?;
    // A job a killed cycle left (there is none otherwise: the call then fails, harmlessly).
    let _ = host.abort_job(&dom);
    let existing = host.checkpoints(&dom).map_err(|e| failed(vm, e))?;
    let parent = at.since_unix_ms.map(|t| format!("{PREFIX}{t}"));
    let parent_kept = parent.as_ref().filter(|p| existing.contains(p));
    let bitmaps = vm.disks.iter().any(|d| d.format == "qcow2");
    let checkpoint = bitmaps.then(|| format!("{PREFIX}{}", at.unix_ms));
    // A checkpoint of this very instant left by a killed cycle is replaced.
    if let Some(c) = &checkpoint
        && existing.contains(c)
    {
        let _ = host.delete_checkpoint(&dom, c, 0);
    }
    let full: Vec<Option<String>> = vm
        .disks
        .iter()
        .map(|d| match (&parent, parent_kept) {
            (None, _) => None,
            _ if d.format != "qcow2" => Some(format!(
                "disk {} is {}: libvirt keeps no checkpoint of it",
                d.target, d.format
            )),
            (Some(p), None) => Some(format!(
                "libvirt has no checkpoint `{p}` of the parent point (deleted, or the domain was redefined)"
            )),
            (Some(_), Some(_)) => None,
        })
        .collect();
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    // libvirt takes absolute paths only.
    let dir = &std::fs::canonicalize(dir)
        .map_err(|e| Error::io(format!("cannot resolve {}", dir.display()), e))?;
    let socket = dir.join(format!("{}.nbd", vm.domain));
    let _ = std::fs::remove_file(&socket);
    let incremental = parent_kept.is_some() && full.iter().any(Option::is_none);
    let mut backup = String::from("<domainbackup mode='pull'>");
    if let (true, Some(p)) = (incremental, parent_kept) {
        backup.push_str(&format!("<incremental>{}</incremental>", xml_text(p)));
    }
    backup.push_str(&format!(
        "<server transport='unix' socket='{}'/><disks>",
        xml_text(&socket.display().to_string())
    ));
    for (d, why) in vm.disks.iter().zip(&full) {
        let scratch = dir.join(format!("{}-{}.scratch", vm.domain, d.target));
        let _ = std::fs::remove_file(&scratch);
        let mode = if incremental && why.is_some() {
            " backupmode='full'"
        } else {
            ""
        };
        backup.push_str(&format!(
            "<disk name='{}' backup='yes' type='file'{mode}><scratch file='{}'/></disk>",
            xml_text(&d.target),
            xml_text(&scratch.display().to_string())
        ));
    }
    backup.push_str("</disks></domainbackup>");
    let checkpoint_xml = checkpoint.as_ref().map(|c| {
        let disks: String = vm
            .disks
            .iter()
            .map(|d| {
                let how = if d.format == "qcow2" { "bitmap" } else { "no" };
                format!("<disk name='{}' checkpoint='{how}'/>", xml_text(&d.target))
            })
            .collect();
        format!(
            "<domaincheckpoint><name>{}</name><disks>{disks}</disks></domaincheckpoint>",
            xml_text(c)
        )
    });
    let job = Job {
        vm: vm.clone(),
        host,
        dom,
        socket,
        checkpoint,
        full: if incremental {
            full
        } else {
            // Without the parent's checkpoint every disk is read in full, for the same reason.
            let why = full.iter().flatten().next().cloned();
            vm.disks.iter().map(|_| why.clone()).collect()
        },
    };
    Ok((job, backup, checkpoint_xml))
}

fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

/// Ends one domain's backup and keeps its checkpoints as the point's fate says.
fn finish(job: &Job, committed: bool) -> std::result::Result<(), String> {
    let aborted = job.host.abort_job(&job.dom);
    let _ = std::fs::remove_file(&job.socket);
    let mut errors = Vec::new();
    if let Err(e) = aborted {
        errors.push(format!("cannot end the backup job: {e}"));
    }
    if let Some(new) = &job.checkpoint {
        if committed {
            match job.host.checkpoints(&job.dom) {
                Ok(all) => {
                    for old in all.iter().filter(|c| c.starts_with(PREFIX) && *c != new) {
                        if let Err(e) = job.host.delete_checkpoint(&job.dom, old, 0) {
                            errors.push(format!("cannot delete checkpoint `{old}`: {e}"));
                        }
                    }
                }
                Err(e) => errors.push(format!("cannot list checkpoints: {e}")),
            }
        } else if let Err(e) = job.host.delete_checkpoint(&job.dom, new, 0) {
            errors.push(format!("cannot delete checkpoint `{new}`: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "libvirt domain `{}`: {}",
            job.vm.domain,
            errors.join("; ")
        ))
    }
}

#[async_trait::async_trait]
impl Cut for LibvirtCut {
    async fn hold(&self) -> Result<()> {
        Ok(())
    }

    async fn release(&self) -> Result<()> {
        Ok(())
    }

    async fn freeze(&self, at: CutAt) -> Result<Vec<FrozenDisk>> {
        let mut jobs = self.jobs.lock().await;
        let mut begins = Vec::new();
        for vm in &self.vms {
            let (vm, host, dir) = (vm.clone(), self.host(&vm.host)?, self.dir.clone());
            let (job, backup, checkpoint) =
                blocking(move || prepare(&vm, host, &dir, at)).await??;
            begins.push((job, backup, checkpoint));
        }
        let suspend = begins.len() > 1;
        let max_pause = self.max_pause;
        // The instant: every backup begun while the group stands still.
        let (begun, window, failure) = blocking(move || {
            let window = Instant::now();
            let mut suspended = Vec::new();
            let mut failure = None;
            if suspend {
                for (job, _, _) in &begins {
                    // Paused by someone else: it is still already, and not ours to resume.
                    if job.host.state(&job.dom).ok() != Some(super::DomainState::Running) {
                        continue;
                    }
                    match job.host.suspend(&job.dom) {
                        Ok(()) => suspended.push(job),
                        Err(e) => {
                            failure = Some(failed(&job.vm, format!("cannot suspend: {e}")));
                            break;
                        }
                    }
                }
            }
            let mut begun = Vec::new();
            if failure.is_none() {
                for (job, backup, checkpoint) in &begins {
                    if window.elapsed() > max_pause {
                        failure = Some(Error::failed(format!(
                            "the cut held the group past max_pause ({max_pause:?}); resumed, no point taken"
                        )));
                        break;
                    }
                    match job.host.backup_begin(&job.dom, backup, checkpoint.as_deref()) {
                        Ok(()) => begun.push(job.vm.domain.clone()),
                        Err(e) => {
                            failure = Some(failed(&job.vm, format!("cannot begin the backup: {e}")));
                            break;
                        }
                    }
                }
            }
            for job in suspended {
                if let Err(e) = job.host.resume(&job.dom) {
                    failure.get_or_insert(failed(&job.vm, format!("cannot resume: {e}")));
                }
            }
            let window = window.elapsed();
            let jobs: Vec<(Job, bool)> = begins
                .into_iter()
                .map(|(job, _, _)| {
                    let started = begun.contains(&job.vm.domain);
                    (job, started)
                })
                .collect();
            (jobs, window, failure)
        })
        .await?;
        // A group was suspended for the window; a lone domain ran on, its I/O held at most for
        // the backup's start (QEMU drains it for the transaction): either way, the bound.
        if let Ok(mut p) = self.paused_for.lock() {
            *p = Some(window);
        }
        if let Some(e) = failure {
            let started: Vec<Job> = begun
                .into_iter()
                .filter(|(_, s)| *s)
                .map(|(j, _)| j)
                .collect();
            let _ = blocking(move || {
                for job in &started {
                    let _ = finish(job, false);
                }
            })
            .await;
            return Err(e);
        }
        jobs.extend(begun.into_iter().map(|(j, _)| j));
        let mut views = Vec::new();
        for job in jobs.iter() {
            for (d, why) in job.vm.disks.iter().zip(&job.full) {
                let (socket, target) = (job.socket.clone(), d.target.clone());
                let reader = blocking(move || {
                    lifeboat_replication::nbd::NbdExport::connect(&socket, &target)
                })
                .await?
                .map_err(|e| {
                    failed(
                        &job.vm,
                        format!("cannot read the backup of {}: {e}", d.target),
                    )
                })?;
                let dirty = if at.since_unix_ms.is_some() && why.is_none() {
                    let (socket, target) = (job.socket.clone(), d.target.clone());
                    let context = format!("qemu:dirty-bitmap:backup-{target}");
                    Some(
                        blocking(move || {
                            lifeboat_replication::nbd::block_status(&socket, &target, &context)
                        })
                        .await?
                        .map_err(|e| {
                            failed(
                                &job.vm,
                                format!("cannot read what changed on {}: {e}", d.target),
                            )
                        })?,
                    )
                } else {
                    None
                };
                views.push(FrozenDisk {
                    path: d.source.clone(),
                    reader: Box::new(reader),
                    dirty,
                    full_scan: if at.since_unix_ms.is_some() {
                        why.clone()
                    } else {
                        None
                    },
                });
            }
        }
        Ok(views)
    }

    async fn unfreeze(&self, committed: bool) -> Result<()> {
        let jobs: Vec<Job> = self.jobs.lock().await.drain(..).collect();
        let errors = blocking(move || {
            jobs.iter()
                .filter_map(|j| finish(j, committed).err())
                .collect::<Vec<_>>()
        })
        .await?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::failed(errors.join("; ")))
        }
    }

    fn paused(&self) -> Option<Duration> {
        self.paused_for.lock().ok().and_then(|p| *p)
    }
}
