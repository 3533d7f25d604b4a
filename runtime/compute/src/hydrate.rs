//! Filling an instant-boot disk behind its running QEMU VM.
//!
//! An instant disk is a qcow2 image whose backing file is a point's disk served over NBD
//! (`lifeboat export`); the backing is named in the image's header as a `json:` filename that
//! sets `reconnect-delay`, so QEMU waits for a server that went away instead of failing the
//! guest's reads. Hydration is QEMU's `block-stream` job into that image (the VM's own disk, or
//! the image under a drill's overlay): it copies what the image does not hold yet and then drops
//! the backing. The job runs with `on-error=stop`, so a store or server gone for longer than the
//! delay pauses it; `resume` goes on once the server is back.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

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
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b"])
        .arg(nbd_backing(socket, export))
        .arg(image)
        .arg(size.to_string())
        .output()
        .await
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img create {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
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

/// The size of the disk `image` holds (`qemu-img info -U`: readable while a VM has it open).
pub async fn virtual_size(image: &Path) -> Result<u64, String> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output", "json"])
        .arg(image)
        .output()
        .await
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img info {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let info: Value = serde_json::from_slice(&out.stdout)
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
