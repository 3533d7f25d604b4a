//! Filling an instant-boot disk behind its running QEMU VM.
//!
//! An instant disk is a qcow2 image whose backing file is a point's disk served over NBD
//! (`lifeboat export`); the backing is named in the image's header as a `json:` filename that
//! sets `reconnect-delay`, so QEMU waits for a server that went away instead of failing the
//! guest's reads. Hydration is QEMU's `block-stream` job into that image (the VM's own disk, or
//! the image under a drill's overlay): it copies what the image does not hold yet and then drops
//! the backing. The job runs with `on-error=stop`, so a store or server gone for longer than the
//! delay pauses it; `resume` goes on once the server is back.
//!
//! A libvirt domain is driven through libvirt instead (`Monitor::Domain`), which rebuilds the
//! chain itself and drops `reconnect-delay` on the way: QEMU then fails a read made while the
//! server is away, and retries the connection on the next one. So a domain's instant disks
//! pause the guest on errors (`rerror_policy='stop'`, set by the copy's XML) rather than
//! handing them to it, the pull (`virDomainBlockPull`, libvirt's job, so libvirt knows the
//! chain changed) ends in an error and is started again, and the guest is resumed once the
//! server is back.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::driver::Domain;
use crate::libvirt::rpc::{DomainRef, RpcError};
use crate::libvirt::{DomainState, Host};
use crate::qmp::Qmp;

/// How long QEMU holds a guest's reads and the job's while the export server is away (it
/// reconnects on its own within that time); past it the reads fail. The run's driver restarts a
/// dead server within a second or two.
pub const RECONNECT_DELAY_SECS: u64 = 300;

/// The `json:` backing filename of an instant disk: disk `export` of the NBD server on `socket`,
/// read as raw, with `RECONNECT_DELAY_SECS`.
pub fn nbd_backing(socket: &Path, export: &str) -> String {
    let spec = json!({
        "driver": "raw",
        "file": {
            "driver": "nbd",
            "server": { "type": "unix", "path": socket.display().to_string() },
            "export": export,
            "reconnect-delay": RECONNECT_DELAY_SECS,
        },
    });
    format!("json:{spec}")
}

/// Makes `image`, a qcow2 image of `size` bytes backed by disk `export` of the NBD server on
/// `socket` (`qemu-img create -u`: the server need not be up yet).
pub async fn create_image(
    image: &Path,
    size: u64,
    socket: &Path,
    export: &str,
) -> Result<(), String> {
    let size = size.to_string();
    let backing = nbd_backing(socket, export);
    qemu_img(
        &[
            "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", &backing,
        ],
        image,
        &[&size],
    )
    .await
    .map(drop)
}

/// Runs `qemu-img ARGS IMAGE MORE`; its output, or what it said went wrong.
async fn qemu_img(args: &[&str], image: &Path, more: &[&str]) -> Result<Vec<u8>, String> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .arg(image)
        .args(more)
        .output()
        .await
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img {} {}: {}",
            args.first().copied().unwrap_or_default(),
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// Marks `runs` (offset, length) of `image` as zero in its own metadata (no data written, its
/// backing not opened): reads of them never reach the backing, and hydration skips them.
pub async fn mark_zero(image: &Path, runs: &[(u64, u64)]) -> Result<(), String> {
    if runs.is_empty() {
        return Ok(());
    }
    let unbacked = json!({
        "driver": "qcow2",
        "file": { "driver": "file", "filename": image.display().to_string() },
        "backing": null,
    });
    let mut script = String::new();
    // One request is at most 1 GiB here (qemu-io refuses requests of 2 GiB and more).
    const MOST: u64 = 1 << 30;
    for &(at, len) in runs {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MOST);
            script.push_str(&format!("write -z {} {n}\n", at + done));
            done += n;
        }
    }
    script.push_str("quit\n");
    let mut child = tokio::process::Command::new("qemu-io")
        .arg(format!("json:{unbacked}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run qemu-io: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("qemu-io: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("qemu-io: {e}"))?;
    // qemu-io says what went wrong on stdout, and exits 0 after a failed command.
    let said = String::from_utf8_lossy(&out.stdout);
    let failed = said
        .lines()
        .map(|l| l.trim_start_matches("qemu-io> "))
        .find(|l| !l.is_empty() && !l.starts_with("wrote ") && !l.contains(" ops; "));
    if !out.status.success() || !out.stderr.is_empty() || failed.is_some() {
        return Err(format!(
            "marking the zero stretches of {}: {}{}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            failed.unwrap_or_default()
        ));
    }
    Ok(())
}

/// Where one instant disk stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hydration {
    /// No backing left: the image holds the whole disk.
    Hydrated,
    /// Copying: `done` of `total` bytes looked at (QEMU's job offset).
    Streaming { done: u64, total: u64, paused: bool },
    /// Backed, and no job copies it (not started yet, or the job ended in an error).
    Idle,
    /// The running VM does not have this image open.
    Absent,
}

/// The job that hydrates disk number `index` of a VM.
pub fn job_id(index: usize) -> String {
    format!("hydrate{index}")
}

/// Where a running VM's disk jobs are driven.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Monitor {
    /// A `qemu` VM's own QMP socket.
    Qmp(PathBuf),
    /// A libvirt domain: libvirt runs its jobs.
    Domain(Domain),
}

/// `virDomainPausedReason`'s `VIR_DOMAIN_PAUSED_IOERROR`.
const PAUSED_IOERROR: i32 = 5;
/// `VIR_DOMAIN_PAUSED_UNKNOWN`: what libvirt says of a guest that paused on an I/O error again
/// right after it was resumed from one (seen here: the stop came before the error's event).
const PAUSED_UNKNOWN: i32 = 0;

impl Monitor {
    /// The monitor of a VM started as `domain`, or with the QEMU command line `argv` (relative
    /// paths from `base`).
    pub fn of(argv: &[String], domain: Option<&Domain>, base: &Path) -> Option<Self> {
        match domain {
            Some(d) => Some(Self::Domain(d.clone())),
            None => crate::qmp::socket_of(argv, base).map(Self::Qmp),
        }
    }

    /// How each of `images` (the VM's instant disks, in order) stands.
    pub async fn look(&self, images: &[PathBuf]) -> Result<Vec<Hydration>, String> {
        match self {
            Self::Qmp(qmp) => look(qmp, images).await,
            Self::Domain(d) => {
                let images = images.to_vec();
                on_domain(d, move |host, dom| {
                    let xml = host.xml(dom, 0)?;
                    let mut out = Vec::new();
                    for image in &images {
                        let path = image.display().to_string();
                        out.push(match domain_chain(&xml, image) {
                            None => Hydration::Absent,
                            Some(backed) => match host.block_job(dom, &path)? {
                                Some((done, total)) => Hydration::Streaming {
                                    done,
                                    total,
                                    paused: false,
                                },
                                None if backed => Hydration::Idle,
                                None => Hydration::Hydrated,
                            },
                        });
                    }
                    Ok(out)
                })
                .await
            }
        }
    }

    /// Starts hydrating image number `index` of `images` (limited to `speed` bytes/s, 0: none).
    pub async fn stream(&self, images: &[PathBuf], index: usize, speed: u64) -> Result<(), String> {
        match self {
            Self::Qmp(qmp) => stream(qmp, images, index, speed).await,
            Self::Domain(d) => {
                let image = images
                    .get(index)
                    .ok_or_else(|| format!("no instant disk number {index}"))?
                    .display()
                    .to_string();
                on_domain(d, move |host, dom| host.block_pull(dom, &image, speed)).await
            }
        }
    }

    /// Resumes a hydration job paused on an error. libvirt's pull does not pause: it ends, and
    /// `stream` starts it again.
    pub async fn resume(&self, index: usize) -> Result<(), String> {
        match self {
            Self::Qmp(qmp) => resume(qmp, index).await,
            Self::Domain(_) => Ok(()),
        }
    }

    /// Lets a guest held on a read error go on (the server is back); whether it was held. A
    /// `qemu` VM's reads wait for the server instead (`RECONNECT_DELAY_SECS`).
    pub async fn release_guest(&self) -> Result<bool, String> {
        match self {
            Self::Qmp(_) => Ok(false),
            Self::Domain(d) => {
                on_domain(d, |host, dom| {
                    let (state, reason) = host.state_reason(dom)?;
                    if state == DomainState::Paused
                        && (reason == PAUSED_IOERROR || reason == PAUSED_UNKNOWN)
                    {
                        host.resume(dom)?;
                        return Ok(true);
                    }
                    Ok(false)
                })
                .await
            }
        }
    }
}

/// Calls `f` with domain `d` on its host, off the async threads (libvirt's protocol blocks).
async fn on_domain<T: Send + 'static>(
    d: &Domain,
    f: impl FnOnce(&Host, &DomainRef) -> Result<T, RpcError> + Send + 'static,
) -> Result<T, String> {
    let (uri, name) = (d.host.clone(), d.name.clone());
    tokio::task::spawn_blocking(move || {
        let host = Host::open(&uri)?;
        let dom = host.lookup(&name)?;
        f(&host, &dom)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("domain `{}`: {e}", d.name))
}

/// Whether the domain (its live XML) has `image` as a disk, and if so whether that disk still
/// has a backing chain.
fn domain_chain(xml: &str, image: &Path) -> Option<bool> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let disk = doc.descendants().find(|n| {
        n.has_tag_name("disk")
            && n.children().any(|c| {
                c.has_tag_name("source")
                    && c.attribute("file")
                        .is_some_and(|f| same_file(Path::new(f), image))
            })
    })?;
    Some(
        disk.children()
            .any(|c| c.has_tag_name("backingStore") && c.children().any(|s| s.is_element())),
    )
}

/// How each of `images` (the VM's instant disks, in order) stands, from the VM's QMP socket.
pub async fn look(qmp: &Path, images: &[PathBuf]) -> Result<Vec<Hydration>, String> {
    let mut q = Qmp::connect(qmp).await?;
    let nodes = q
        .execute("query-named-block-nodes", Some(json!({ "flat": true })))
        .await?;
    let jobs = q.execute("query-block-jobs", None).await?;
    Ok(images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let id = job_id(i);
            let job = jobs
                .as_array()
                .into_iter()
                .flatten()
                .find(|j| j.get("device").and_then(Value::as_str) == Some(id.as_str()));
            if let Some(j) = job {
                let n = |k: &str| j.get(k).and_then(Value::as_u64).unwrap_or(0);
                let paused = j.get("paused").and_then(Value::as_bool) == Some(true)
                    || j.get("status").and_then(Value::as_str) == Some("paused");
                return Hydration::Streaming {
                    done: n("offset"),
                    total: n("len"),
                    paused,
                };
            }
            match node_of(&nodes, image) {
                None => Hydration::Absent,
                Some(node) if backed(node) => Hydration::Idle,
                Some(_) => Hydration::Hydrated,
            }
        })
        .collect())
}

/// Starts hydrating image number `index` of `images` (limited to `speed` bytes/s, 0: none).
pub async fn stream(
    qmp: &Path,
    images: &[PathBuf],
    index: usize,
    speed: u64,
) -> Result<(), String> {
    let image = images
        .get(index)
        .ok_or_else(|| format!("no instant disk number {index}"))?;
    let mut q = Qmp::connect(qmp).await?;
    let nodes = q
        .execute("query-named-block-nodes", Some(json!({ "flat": true })))
        .await?;
    let node = node_of(&nodes, image)
        .and_then(|n| n.get("node-name").and_then(Value::as_str))
        .ok_or_else(|| format!("the VM does not have {} open", image.display()))?
        .to_string();
    let mut args = json!({
        "job-id": job_id(index),
        "device": node,
        "on-error": "stop",
    });
    if speed > 0 {
        args["speed"] = json!(speed);
    }
    q.execute("block-stream", Some(args)).await.map(|_| ())
}

/// Resumes a hydration job paused on an error (the server or store was away too long).
pub async fn resume(qmp: &Path, index: usize) -> Result<(), String> {
    let mut q = Qmp::connect(qmp).await?;
    q.execute("block-job-resume", Some(json!({ "device": job_id(index) })))
        .await
        .map(|_| ())
}

/// The qcow2 node of `image` among QEMU's block nodes.
fn node_of<'a>(nodes: &'a Value, image: &Path) -> Option<&'a Value> {
    nodes.as_array()?.iter().find(|n| {
        n.get("drv").and_then(Value::as_str) == Some("qcow2")
            && n.get("file")
                .and_then(Value::as_str)
                .is_some_and(|f| same_file(Path::new(f), image))
    })
}

fn backed(node: &Value) -> bool {
    node.get("backing_file").is_some()
        || node
            .get("image")
            .and_then(|i| i.get("backing-filename"))
            .is_some()
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
}

/// Hydrates `image` while no VM has it open: copies into it everything its backing holds that
/// it lacks, and drops the backing (`qemu-img rebase -b ''`, reading through the export server;
/// the stretches the image already holds, zero marks included, are not read).
pub async fn hydrate_offline(image: &Path) -> Result<(), String> {
    qemu_img(&["rebase", "-q", "-f", "qcow2", "-b", ""], image, &[])
        .await
        .map(drop)
}

/// The size of the disk `image` holds (`qemu-img info -U`: readable while a VM has it open).
pub async fn virtual_size(image: &Path) -> Result<u64, String> {
    let out = qemu_img(&["info", "-U", "--output", "json"], image, &[]).await?;
    let info: Value = serde_json::from_slice(&out)
        .map_err(|e| format!("qemu-img info {}: {e}", image.display()))?;
    info.get("virtual-size")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("qemu-img info {}: no virtual size", image.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_domain_disk_is_backed_while_libvirt_lists_a_chain_under_it() {
        let xml = |chain: &str| {
            format!(
                "<domain><devices><disk type='file'><source file='/r/vda.qcow2'/>{chain}<target dev='vda'/></disk></devices></domain>"
            )
        };
        let image = Path::new("/r/vda.qcow2");
        let nbd = "<backingStore type='network'><format type='raw'/><source protocol='nbd' name='vda'/></backingStore>";
        assert_eq!(domain_chain(&xml(nbd), image), Some(true));
        assert_eq!(domain_chain(&xml("<backingStore/>"), image), Some(false));
        assert_eq!(domain_chain(&xml(""), image), Some(false));
        assert_eq!(domain_chain(&xml(nbd), Path::new("/r/vdb.qcow2")), None);
    }

    #[test]
    fn the_backing_names_the_export_and_waits_for_a_server_that_went_away() {
        let b = nbd_backing(Path::new("/run/x/vm.nbd"), "data");
        let spec: Value = serde_json::from_str(b.strip_prefix("json:").unwrap()).unwrap();
        assert_eq!(spec["driver"], "raw");
        assert_eq!(spec["file"]["driver"], "nbd");
        assert_eq!(spec["file"]["server"]["path"], "/run/x/vm.nbd");
        assert_eq!(spec["file"]["export"], "data");
        assert_eq!(spec["file"]["reconnect-delay"], RECONNECT_DELAY_SECS);
    }
}
