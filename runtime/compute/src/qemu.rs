//! The `qemu` compute driver's virtual machine: the QEMU command line a VM's `machine` settings
//! describe. The process driver runs it (a QEMU VM is a process it can find, pause for a cut and
//! stop — through the QMP socket this puts beside the first disk); this module is the one place
//! that knows how a VM becomes QEMU arguments, so the source site's VMs and a run's copies are
//! started, and recognised, by the same command line.

use std::path::Path;

use lifeboat_plan::inventory::Machine;

/// The QEMU command line of VM `vm`: `disks` (paths as the VM opens them, relative to `base` or
/// absolute) as virtio block devices, one user-mode NIC per address in `ips` forwarding the
/// machine's ports from it, the console and the QMP socket beside the first disk. TCG: the
/// hosts Lifeboat is tested on have a KVM that does not run guests; `args` can ask for more.
pub fn command_line(
    vm: &str,
    machine: &Machine,
    base: &Path,
    disks: &[String],
    ips: &[String],
    args: &[String],
) -> Vec<String> {
    let mut argv: Vec<String> = [
        "qemu-system-x86_64",
        "-name",
        vm,
        "-accel",
        "tcg",
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
    let file = |p: &str| base.join(p).display().to_string();
    if let Some(kernel) = &machine.kernel {
        argv.extend(["-kernel".to_string(), file(&kernel.value)]);
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
