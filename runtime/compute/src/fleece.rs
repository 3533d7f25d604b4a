//! The cut of a running QEMU VM without stopping it: in one QMP `transaction` per VM, every
//! disk gets a copy-before-write fleece (a qcow2 overlay beside the disk that keeps each block
//! the guest overwrites as it was at the cut) and a new dirty bitmap that records every write
//! after the cut. The fleeces are exported read-only over NBD for the scan; the previous cut's
//! bitmap, exported with them, says which extents changed since the parent point, so a cycle
//! reads only those. A bitmap is trusted only when it is named after the parent point's cut,
//! still recording and consistent (QEMU marks a persistent one inconsistent after an unclean
//! stop; a non-persistent one dies with the process): otherwise the disk is read in full.

use std::path::{Path, PathBuf};

use lifeboat_replication::{CutAt, Error, FrozenDisk, Result};
use serde_json::{Value, json};

use crate::qmp::Qmp;

/// Bitmaps, nodes, jobs and exports this module creates carry this prefix, so a later cut can
/// clean what a killed one left behind.
const PREFIX: &str = "lifeboat-";

/// A QEMU VM of a group: its QMP socket and the group's disks it runs from.
#[derive(Clone, Debug)]
pub struct QemuVm {
    pub vm: String,
    pub qmp: PathBuf,
    /// QEMU's working folder (it resolves relative image paths from there).
    pub cwd: PathBuf,
    pub disks: Vec<PathBuf>,
}

/// One VM's cut, from its preparation to its teardown.
pub struct Fleeced {
    vm: QemuVm,
    disks: Vec<FleecedDisk>,
    nbd: PathBuf,
    /// The cut's transaction, ready before the VM is stopped so the stop lasts only it.
    actions: Vec<Value>,
    /// Why each disk is read in full, when it is.
    reasons: Vec<Option<String>>,
    /// Open from the preparation until the views are exported (the QMP socket takes one
    /// client at a time, so it is not held during the scan).
    qmp: Option<Qmp>,
    stopped: bool,
}

impl std::fmt::Debug for Fleeced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleeced")
            .field("vm", &self.vm)
            .field("disks", &self.disks)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct FleecedDisk {
    node: String,
    index: usize,
    file: PathBuf,
    /// The bitmap recording since this cut.
    new_bitmap: String,
    /// The parent cut's bitmap, when it was proven (disabled by the transaction).
    since_bitmap: Option<String>,
}

/// Everything of `vm`'s cut that can happen before it: what a killed cut left is cleaned, the
/// parent's bitmaps proven, the fleece overlays created and attached.
pub async fn prepare(vm: &QemuVm, at: CutAt) -> Result<Fleeced> {
    let mut qmp = connect(vm).await?;
    clean_stale(&mut qmp, vm).await;
    let blocks = qmp
        .execute("query-block", None)
        .await
        .map_err(|e| failed(vm, e))?;
    let since_name = at.since_unix_ms.map(|t| format!("{PREFIX}{t}"));
    let new_name = format!("{PREFIX}{}", at.unix_ms);
    let mut f = Fleeced {
        vm: vm.clone(),
        disks: Vec::new(),
        nbd: nbd_socket(vm),
        actions: Vec::new(),
        reasons: Vec::new(),
        qmp: None,
        stopped: false,
    };
    for (index, path) in vm.disks.iter().enumerate() {
        let Some(block) = find_block(&blocks, path, &vm.cwd) else {
            let _ = thaw_with(&mut qmp, &f, false).await;
            return Err(failed(
                vm,
                format!("disk {} is not attached to the VM", path.display()),
            ));
        };
        let inserted = &block["inserted"];
        let node = inserted["node-name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let size = inserted["image"]["virtual-size"].as_u64().unwrap_or(0);
        let persistent = inserted["drv"].as_str() == Some("qcow2");
        let bitmaps = inserted["dirty-bitmaps"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let (since_bitmap, why) = prove(&bitmaps, since_name.as_deref());
        // Bitmaps of cuts that are not the parent's record nothing anyone will read.
        for b in &bitmaps {
            let name = b["name"].as_str().unwrap_or_default();
            if name.starts_with(PREFIX) && Some(name) != since_bitmap.as_deref() {
                let _ = qmp
                    .execute(
                        "block-dirty-bitmap-remove",
                        Some(json!({ "node": node, "name": name })),
                    )
                    .await;
            }
        }
        let file = fleece_file(path);
        let fleece_node = format!("{PREFIX}fleece-{index}");
        let attached = async {
            create_fleece_image(&file, size).await?;
            qmp.execute(
                "blockdev-add",
                Some(json!({
                    "driver": "qcow2",
                    "node-name": fleece_node,
                    "file": { "driver": "file", "filename": file.display().to_string() },
                    "backing": node,
                })),
            )
            .await
            .map_err(|e| failed(vm, e))
        }
        .await;
        if let Err(e) = attached {
            let _ = thaw_with(&mut qmp, &f, false).await;
            let _ = std::fs::remove_file(&file);
            return Err(e);
        }
        f.actions.push(json!({ "type": "block-dirty-bitmap-add",
            "data": { "node": node, "name": new_name, "persistent": persistent } }));
        if let Some(b) = &since_bitmap {
            f.actions.push(
                json!({ "type": "block-dirty-bitmap-disable", "data": { "node": node, "name": b } }),
            );
        }
        f.actions.push(json!({ "type": "blockdev-backup", "data": {
            "device": node, "target": fleece_node, "sync": "none",
            "job-id": format!("{PREFIX}cbw-{index}") } }));
        f.reasons.push(why);
        f.disks.push(FleecedDisk {
            node,
            index,
            file,
            new_bitmap: new_name.clone(),
            since_bitmap,
        });
    }
    f.qmp = Some(qmp);
    Ok(f)
}

impl Fleeced {
    pub fn vm(&self) -> &str {
        &self.vm.vm
    }

    /// Stops the VM (QMP `stop`) if it runs, so several VMs are cut at one instant. A marker beside the
    /// QMP socket says a cut stopped it, until `cont`: if this process dies in between, the
    /// next preparation resumes the VM.
    pub async fn stop(&mut self) -> Result<()> {
        let vm = self.vm.clone();
        let status = self
            .session()
            .await?
            .execute("query-status", None)
            .await
            .map_err(|e| failed(&vm, e))?;
        if status["running"].as_bool() != Some(true) {
            // Paused by someone else: it is still already, and it is not ours to resume.
            return Ok(());
        }
        let marker = stopped_marker(&self.vm);
        std::fs::write(&marker, b"")
            .map_err(|e| Error::io(format!("cannot write {}", marker.display()), e))?;
        let qmp = self.session().await?;
        if let Err(e) = qmp.execute("stop", None).await {
            let _ = std::fs::remove_file(&marker);
            return Err(failed(&vm, e));
        }
        self.stopped = true;
        Ok(())
    }

    /// Resumes a VM `stop` stopped (on a new session if the first was lost).
    pub async fn cont(&mut self) -> Result<()> {
        if !self.stopped {
            return Ok(());
        }
        let first = match self.session().await {
            Ok(qmp) => qmp.execute("cont", None).await.map(|_| ()),
            Err(e) => Err(e.to_string()),
        };
        if first.is_err() {
            self.qmp = None;
            let vm = self.vm.clone();
            let qmp = self.session().await?;
            qmp.execute("cont", None)
                .await
                .map_err(|e| failed(&vm, e))?;
        }
        self.stopped = false;
        let _ = std::fs::remove_file(stopped_marker(&self.vm));
        Ok(())
    }

    /// The cut: one transaction across the VM's disks.
    pub async fn cut(&mut self) -> Result<()> {
        let actions = json!({ "actions": self.actions });
        let vm = self.vm.clone();
        let qmp = self.session().await?;
        qmp.execute("transaction", Some(actions))
            .await
            .map(|_| ())
            .map_err(|e| failed(&vm, e))
    }

    /// Exports the fleeces over NBD and opens a reader on each, with its dirty extents where
    /// the parent's bitmap was proven. The QMP session ends here.
    pub async fn views(&mut self) -> Result<Vec<FrozenDisk>> {
        let mut qmp = match self.qmp.take() {
            Some(q) => q,
            None => connect(&self.vm).await?,
        };
        export(&mut qmp, self).await?;
        drop(qmp);
        open_views(self).await
    }

    async fn session(&mut self) -> Result<&mut Qmp> {
        if self.qmp.is_none() {
            self.qmp = Some(connect(&self.vm).await?);
        }
        self.qmp
            .as_mut()
            .ok_or_else(|| failed(&self.vm, "no QMP session"))
    }
}

/// Ends one VM's views (their readers must be closed). `committed`: the point of this cut was
/// committed, so the parent's bitmap goes; otherwise it takes the new bitmap's writes back and
/// records on, so the next cut can still read only what changed since the parent.
pub async fn thaw(f: &mut Fleeced, committed: bool) -> Result<()> {
    let _ = f.cont().await;
    let mut qmp = match f.qmp.take() {
        Some(q) => q,
        None => connect(&f.vm).await?,
    };
    thaw_with(&mut qmp, f, committed).await
}

async fn thaw_with(qmp: &mut Qmp, f: &Fleeced, committed: bool) -> Result<()> {
    let mut errors = Vec::new();
    for d in &f.disks {
        end_export(qmp, &format!("{PREFIX}export-{}", d.index), false).await;
        end_job(qmp, &format!("{PREFIX}cbw-{}", d.index)).await;
        if let Err(e) = qmp
            .execute(
                "blockdev-del",
                Some(json!({ "node-name": format!("{PREFIX}fleece-{}", d.index) })),
            )
            .await
        {
            errors.push(e);
        }
        let _ = std::fs::remove_file(&d.file);
        let bitmaps = match (&d.since_bitmap, committed) {
            (Some(old), true) => vec![json!({ "type": "block-dirty-bitmap-remove",
                "data": { "node": d.node, "name": old } })],
            (Some(old), false) => vec![
                json!({ "type": "block-dirty-bitmap-enable", "data": { "node": d.node, "name": old } }),
                json!({ "type": "block-dirty-bitmap-merge",
                    "data": { "node": d.node, "target": old, "bitmaps": [d.new_bitmap] } }),
                json!({ "type": "block-dirty-bitmap-remove", "data": { "node": d.node, "name": d.new_bitmap } }),
            ],
            (None, true) => Vec::new(),
            (None, false) => vec![json!({ "type": "block-dirty-bitmap-remove",
                "data": { "node": d.node, "name": d.new_bitmap } })],
        };
        if !bitmaps.is_empty()
            && let Err(e) = qmp
                .execute("transaction", Some(json!({ "actions": bitmaps })))
                .await
        {
            errors.push(e);
        }
    }
    let _ = qmp.execute("nbd-server-stop", None).await;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(failed(&f.vm, errors.join("; ")))
    }
}

/// Whether the parent cut's bitmap can say what changed: it must exist, record, and be
/// consistent. The reason when it cannot.
fn prove(bitmaps: &[Value], since: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(since) = since else {
        return (None, None);
    };
    let Some(b) = bitmaps.iter().find(|b| b["name"].as_str() == Some(since)) else {
        return (
            None,
            Some("QEMU has no dirty bitmap from the parent point's cut (the VM was restarted, restored, or the disk is new)".into()),
        );
    };
    if b["inconsistent"].as_bool() == Some(true) {
        return (
            None,
            Some("the dirty bitmap is inconsistent (QEMU stopped uncleanly)".into()),
        );
    }
    if b["recording"].as_bool() != Some(true) || b["busy"].as_bool() == Some(true) {
        return (
            None,
            Some("the dirty bitmap stopped recording (a cut was interrupted)".into()),
        );
    }
    (Some(since.to_string()), None)
}

async fn export(qmp: &mut Qmp, f: &Fleeced) -> Result<()> {
    let _ = std::fs::remove_file(&f.nbd);
    qmp.execute(
        "nbd-server-start",
        Some(
            json!({ "addr": { "type": "unix", "data": { "path": f.nbd.display().to_string() } } }),
        ),
    )
    .await
    .map_err(|e| failed(&f.vm, e))?;
    for d in &f.disks {
        let mut args = json!({
            "type": "nbd",
            "id": format!("{PREFIX}export-{}", d.index),
            "node-name": format!("{PREFIX}fleece-{}", d.index),
            "name": format!("{PREFIX}{}", d.index),
            "writable": false,
        });
        if let Some(b) = &d.since_bitmap {
            args["bitmaps"] = json!([b]);
        }
        qmp.execute("block-export-add", Some(args))
            .await
            .map_err(|e| failed(&f.vm, e))?;
    }
    Ok(())
}

/// Connects a reader to each export and, where the parent's bitmap was proven, reads its
/// dirty extents.
async fn open_views(f: &Fleeced) -> Result<Vec<FrozenDisk>> {
    let mut out = Vec::new();
    for (d, why) in f.disks.iter().zip(f.reasons.iter().cloned()) {
        let name = format!("{PREFIX}{}", d.index);
        let (dirty, why) = match &d.since_bitmap {
            Some(b) => match dirty_extents(&f.nbd, &name, b).await {
                Ok(e) => (Some(e), None),
                Err(e) => (
                    None,
                    Some(format!("its dirty bitmap could not be read: {e}")),
                ),
            },
            None => (None, why),
        };
        let (socket, export) = (f.nbd.clone(), name.clone());
        let reader = tokio::task::spawn_blocking(move || {
            lifeboat_replication::nbd::NbdExport::connect(&socket, &export)
        })
        .await
        .map_err(|e| Error::failed(format!("NBD connect stopped: {e}")))?
        .map_err(|e| failed(&f.vm, format!("cannot read the fleece of its disk: {e}")))?;
        out.push(FrozenDisk {
            path: f.vm.disks[d.index].clone(),
            reader: Box::new(reader),
            dirty,
            full_scan: why,
        });
    }
    Ok(out)
}

/// The extents bitmap `bitmap` marks dirty in export `name`, by the NBD client's block status.
async fn dirty_extents(nbd: &Path, name: &str, bitmap: &str) -> Result<Vec<(u64, u64)>> {
    let (socket, name, context) = (
        nbd.to_path_buf(),
        name.to_string(),
        format!("qemu:dirty-bitmap:{bitmap}"),
    );
    tokio::task::spawn_blocking(move || {
        lifeboat_replication::nbd::block_status(&socket, &name, &context)
    })
    .await
    .map_err(|e| Error::failed(format!("NBD block status stopped: {e}")))?
    .map_err(|e| Error::failed(e.to_string()))
}

/// The `query-block` entry whose image is `path` (QEMU reports the path it was given).
fn find_block<'a>(blocks: &'a Value, path: &Path, cwd: &Path) -> Option<&'a Value> {
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    blocks.as_array()?.iter().find(|b| {
        b["inserted"]["file"].as_str().is_some_and(|f| {
            let p = cwd.join(f);
            std::fs::canonicalize(&p).unwrap_or(p) == want
        })
    })
}

/// What a killed cut may have left: exports, jobs, fleece nodes and files, the NBD server.
async fn clean_stale(qmp: &mut Qmp, vm: &QemuVm) {
    let named = |v: &Value, key: &str| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x[key].as_str())
            .filter(|n| n.starts_with(PREFIX))
            .map(String::from)
            .collect()
    };
    if let Ok(exports) = qmp.execute("query-block-exports", None).await {
        for id in named(&exports, "id") {
            end_export(qmp, &id, true).await;
        }
    }
    if let Ok(jobs) = qmp.execute("query-block-jobs", None).await {
        for job in named(&jobs, "device") {
            end_job(qmp, &job).await;
        }
    }
    if let Ok(nodes) = qmp.execute("query-named-block-nodes", None).await {
        for node in named(&nodes, "node-name") {
            let _ = qmp
                .execute("blockdev-del", Some(json!({ "node-name": node })))
                .await;
        }
    }
    let _ = qmp.execute("nbd-server-stop", None).await;
    let marker = stopped_marker(vm);
    if marker.exists() {
        tracing::warn!(vm = %vm.vm, "resuming a VM an interrupted cut left stopped");
        if qmp.execute("cont", None).await.is_ok() {
            let _ = std::fs::remove_file(marker);
        }
    }
    for disk in &vm.disks {
        let _ = std::fs::remove_file(fleece_file(disk));
    }
}

/// Deletes export `id` (`hard`: even with clients connected) and waits until it is gone.
async fn end_export(qmp: &mut Qmp, id: &str, hard: bool) {
    let mut args = json!({ "id": id });
    if hard {
        args["mode"] = json!("hard");
    }
    if qmp.execute("block-export-del", Some(args)).await.is_ok() {
        wait_gone(qmp, "query-block-exports", "id", id).await;
    }
}

/// Cancels block job `job` and waits until it is gone.
async fn end_job(qmp: &mut Qmp, job: &str) {
    let args = json!({ "device": job, "force": true });
    if qmp.execute("block-job-cancel", Some(args)).await.is_ok() {
        wait_gone(qmp, "query-block-jobs", "device", job).await;
    }
}

/// Polls `query` until no entry has `key` = `value` (exports and jobs end asynchronously).
async fn wait_gone(qmp: &mut Qmp, query: &str, key: &str, value: &str) {
    for _ in 0..200 {
        match qmp.execute(query, None).await {
            Ok(v)
                if v.as_array()
                    .is_some_and(|a| a.iter().any(|x| x[key].as_str() == Some(value))) => {}
            _ => return,
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn create_fleece_image(file: &Path, size: u64) -> Result<()> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(file)
        .arg(size.to_string())
        .output()
        .await
        .map_err(|e| Error::io("cannot run qemu-img (install qemu-utils)", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "cannot create the fleece {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The fleece overlay of a disk: beside it, on the same file system.
fn fleece_file(disk: &Path) -> PathBuf {
    let mut name = disk.file_name().unwrap_or_default().to_os_string();
    name.push(".fleece.qcow2");
    disk.with_file_name(name)
}

/// The marker of a VM a cut stopped: present from before `stop` until after `cont`.
fn stopped_marker(vm: &QemuVm) -> PathBuf {
    let mut name = vm.qmp.file_name().unwrap_or_default().to_os_string();
    name.push(".stopped-by-lifeboat");
    vm.qmp.with_file_name(name)
}

/// The VM's NBD server socket: beside its QMP socket.
fn nbd_socket(vm: &QemuVm) -> PathBuf {
    let mut name = vm.qmp.file_name().unwrap_or_default().to_os_string();
    name.push(".nbd");
    vm.qmp.with_file_name(name)
}

async fn connect(vm: &QemuVm) -> Result<Qmp> {
    Qmp::connect(&vm.qmp).await.map_err(|e| failed(vm, e))
}

fn failed(vm: &QemuVm, e: impl std::fmt::Display) -> Error {
    Error::failed(format!("QEMU VM `{}`: {e}", vm.vm))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_the_parent_cuts_recording_consistent_bitmap_is_trusted() {
        let b = |name: &str, recording: bool, inconsistent: bool| json!({ "name": name, "recording": recording, "inconsistent": inconsistent, "busy": false });
        let good = [b("lifeboat-1", false, false), b("lifeboat-2", true, false)];
        assert_eq!(
            prove(&good, Some("lifeboat-2")).0.as_deref(),
            Some("lifeboat-2")
        );
        assert_eq!(prove(&good, None), (None, None));
        let (none, why) = prove(&good, Some("lifeboat-3"));
        assert!(none.is_none() && why.unwrap().contains("no dirty bitmap"));
        let (none, why) = prove(&good, Some("lifeboat-1"));
        assert!(none.is_none() && why.unwrap().contains("stopped recording"));
        let unclean = [b("lifeboat-2", true, true)];
        let (none, why) = prove(&unclean, Some("lifeboat-2"));
        assert!(none.is_none() && why.unwrap().contains("uncleanly"));
    }
}
