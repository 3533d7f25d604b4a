//! The `qemu` compute driver's virtual machine: the QEMU command line a VM's `machine` settings
//! describe. The process driver runs it (a QEMU VM is a process it can find, pause for a cut and
//! stop — through the QMP socket this puts beside the first disk); this module is the one place
//! that knows how a VM becomes QEMU arguments, so the source site's VMs and a run's copies are
//! started, and recognised, by the same command line.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use lifeboat_plan::inventory::Machine;

/// The QEMU command line of VM `vm`: `disks` (paths as the VM opens them, relative to `base` or
/// absolute) as virtio block devices, one user-mode NIC per address in `ips` forwarding the
/// machine's ports from it, the console and the QMP socket beside the first disk; KVM when the
/// machine's kernel is seen to run on it here, TCG otherwise (`accelerator`).
pub fn command_line(
    vm: &str,
    machine: &Machine,
    base: &Path,
    disks: &[String],
    ips: &[String],
    args: &[String],
) -> Vec<String> {
    let file = |p: &str| base.join(p).display().to_string();
    let kernel = machine.kernel.as_ref().map(|k| file(&k.value));
    let mut argv: Vec<String> = [
        "qemu-system-x86_64",
        "-name",
        vm,
        "-accel",
        accelerator(kernel.as_deref().map(Path::new)),
        "-display",
        "none",
        "-monitor",
        "none",
    ]
    .map(String::from)
    .to_vec();
    argv.extend([
        "-m".to_string(),
        machine
            .memory_mib
            .as_ref()
            .map_or(256, |m| m.value)
            .to_string(),
        "-smp".to_string(),
        machine.cpus.as_ref().map_or(1, |c| c.value).to_string(),
    ]);
    if let Some(kernel) = kernel {
        argv.extend(["-kernel".to_string(), kernel]);
        if let Some(initrd) = &machine.initrd {
            argv.extend(["-initrd".to_string(), file(&initrd.value)]);
        }
        if let Some(append) = &machine.append {
            argv.extend(["-append".to_string(), append.value.clone()]);
        }
    }
    for disk in disks {
        let format = if disk.ends_with(".qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        argv.extend([
            "-drive".to_string(),
            format!("file={disk},if=virtio,format={format}"),
        ]);
    }
    for (i, ip) in ips.iter().enumerate() {
        let mut netdev = format!("user,id=n{i}");
        for port in &machine.ports {
            netdev.push_str(&format!(",hostfwd=tcp:{ip}:{p}-:{p}", p = port.value));
        }
        argv.extend([
            "-netdev".to_string(),
            netdev,
            "-device".to_string(),
            format!("virtio-net-pci,netdev=n{i}"),
        ]);
    }
    if let Some(first) = disks.first() {
        argv.extend([
            "-serial".to_string(),
            format!("file:{first}.console"),
            "-qmp".to_string(),
            format!("unix:{first}.qmp,server=on,wait=off"),
        ]);
    }
    argv.extend(args.iter().cloned());
    argv
}

/// A drill copy's command line: its user-mode NICs get `restrict=on`, so the guest reaches
/// nothing outside QEMU (its forwarded ports still reach it, from the namespace it runs in).
pub fn restrict_networking(argv: &mut [String]) {
    for a in argv.iter_mut() {
        if a.starts_with("user,id=n") && !a.contains(",restrict=") {
            a.push_str(",restrict=on");
        }
    }
}

/// How long a probe waits for the kernel's banner under KVM (TCG prints it in half a second
/// here; a KVM that cannot run the kernel never does).
const PROBE: Duration = Duration::from_secs(3);

/// `kvm` when the machine's `kernel` is seen to run under KVM on this host, `tcg` otherwise: a
/// host can offer a `/dev/kvm` that starts a VM and runs its real-mode setup, then never runs
/// the kernel, so the probe boots the kernel under KVM and waits for its banner. A VM booted by firmware (no kernel) gets TCG: a
/// guest hung on KVM is worse than a slow one. `LIFEBOAT_QEMU_ACCEL=kvm|tcg` decides instead.
/// The answer is kept for the host's boot (in the temporary folder), so a VM's command line,
/// by which Lifeboat recognises it, stays the same from one command to the next.
pub fn accelerator(kernel: Option<&Path>) -> &'static str {
    match std::env::var("LIFEBOAT_QEMU_ACCEL").as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "tcg",
        _ => {}
    }
    let Some(kernel) = kernel else {
        return "tcg";
    };
    if !kvm_device_usable() {
        return "tcg";
    }
    static SEEN: OnceLock<Mutex<HashMap<PathBuf, &'static str>>> = OnceLock::new();
    let seen = SEEN.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(a) = seen.lock().ok().and_then(|m| m.get(kernel).copied()) {
        return a;
    }
    let record = probe_record(kernel);
    let kept = record
        .as_ref()
        .and_then(|r| std::fs::read_to_string(r).ok())
        .and_then(|s| match s.trim() {
            "kvm" => Some("kvm"),
            "tcg" => Some("tcg"),
            _ => None,
        });
    let answer = kept.unwrap_or_else(|| {
        let a = if kernel_runs_on_kvm(kernel) {
            "kvm"
        } else {
            "tcg"
        };
        if let Some(r) = &record {
            if let Some(dir) = r.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(r, a);
        }
        tracing::info!(kernel = %kernel.display(), accelerator = a, "QEMU accelerator probed");
        a
    });
    if let Ok(mut m) = seen.lock() {
        m.insert(kernel.to_path_buf(), answer);
    }
    answer
}

fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Where the probe's answer for `kernel` is kept: one file per host boot, kernel and QEMU.
fn probe_record(kernel: &Path) -> Option<PathBuf> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let meta = std::fs::metadata(kernel).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let key = format!(
        "{}|{}|{}|{modified}",
        boot.trim(),
        kernel.display(),
        meta.len()
    );
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&key, &mut h);
    let uid = rustix::process::getuid().as_raw();
    Some(
        std::env::temp_dir()
            .join(format!("lifeboat-{uid}-accel"))
            .join(format!("{:016x}", std::hash::Hasher::finish(&h))),
    )
}

/// Boots `kernel` under KVM with its console on a pipe and waits, at most `PROBE`, for its
/// banner (`Linux version`); QEMU is killed either way.
fn kernel_runs_on_kvm(kernel: &Path) -> bool {
    let child = std::process::Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-m", "128", "-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let Some(mut out) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return false;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The real-mode setup prints first and runs even where the kernel then hangs; the
        // decompressed kernel's banner says it runs in long mode.
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let ran = loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break false,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(13).any(|w| w == b"Linux version") {
                        break true;
                    }
                }
            }
        };
        let _ = tx.send(ran);
    });
    let started = Instant::now();
    let ran = rx.recv_timeout(PROBE).unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    tracing::debug!(ran, seconds = started.elapsed().as_secs_f64(), "KVM probe");
    ran
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_machine_without_a_kernel_runs_under_tcg() {
        if std::env::var_os("LIFEBOAT_QEMU_ACCEL").is_none() {
            assert_eq!(accelerator(None), "tcg");
        }
    }

    #[test]
    fn a_kernel_that_never_prints_is_not_trusted_to_kvm() {
        // Not a kernel at all: QEMU refuses it, whatever this host's KVM can do.
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("vmlinuz");
        std::fs::write(&junk, b"not a kernel").unwrap();
        assert!(!kernel_runs_on_kvm(&junk));
    }
}
