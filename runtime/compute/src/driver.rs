//! Compute drivers: how a site starts, pauses and stops its VMs. The orchestrator sees only the
//! `Compute` trait, so a `qemu` driver (real VMs) can follow the `process` one without touching
//! it. A VM of the process driver is a process started from the VM's `boot` command, with its
//! restored disks and assigned addresses substituted; it runs in its own process group so it
//! outlives a restart of the runtime, and its output goes to a log file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use rustix::process::Signal;
use rustix::process::{Pid, kill_process};

use crate::procfs::processes;

/// Why a driver could not do what was asked, with the VM it was asked of.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("VM `{vm}` has an empty boot command")]
    EmptyCommand { vm: String },
    #[error("cannot start VM `{vm}` (`{program}`): {source}")]
    Start {
        vm: String,
        program: String,
        source: std::io::Error,
    },
    #[error("cannot create the log {}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VM `{vm}` has no valid pid ({pid})")]
    BadPid { vm: String, pid: u32 },
    /// The pid is no longer the VM's process (it exited; the pid may be another's now).
    #[error("VM `{vm}` (pid {pid}) is gone: the pid is not its process any more")]
    Gone { vm: String, pid: u32 },
    #[error("cannot signal VM `{vm}` (pid {pid}): {source}")]
    Signal {
        vm: String,
        pid: u32,
        source: std::io::Error,
    },
    #[error("VM `{vm}` (pid {pid}) did not exit after SIGKILL")]
    Unkillable { vm: String, pid: u32 },
    #[error("VM `{vm}`: libvirt: {why}")]
    Libvirt { vm: String, why: String },
    /// No host of the site has room for the VM.
    #[error("{why}")]
    Capacity { why: String },
    /// A drill's network namespace could not be made, entered or removed.
    #[error(transparent)]
    Isolation(#[from] crate::netns::NetnsError),
}

/// What the driver needs to start one VM.
#[derive(Clone, Debug)]
pub struct Launch {
    pub vm: String,
    /// The boot command, placeholders already substituted.
    pub argv: Vec<String>,
    /// Working directory (relative paths in `argv` start here).
    pub dir: PathBuf,
    /// Where the VM's stdout and stderr go.
    pub log: PathBuf,
    /// The idempotency key of the start, which the driver marks the VM with so that a runtime
    /// that died between starting a VM and journaling it can find the VM again.
    pub key: String,
    /// The network namespace the VM runs in (a drill's); `None`: the host's network.
    pub netns: Option<String>,
    /// A libvirt domain instead of a process: `argv` is then empty.
    pub domain: Option<DomainLaunch>,
}

/// A VM that is a libvirt domain, as a launch describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainLaunch {
    /// The site's hosts (libvirt URIs): the domain is on one of them, or is placed on one.
    pub hosts: Vec<String>,
    /// The domain's name.
    pub name: String,
    /// The copy to define, when the launch starts one (`None`: a source domain, only located).
    pub xml: Option<String>,
    /// A shut-off domain of that name may be replaced by the copy (a failback brings a VM home
    /// under its own domain's name; the old definition's disk files are left as they are).
    pub replaces: bool,
}

/// A libvirt domain a handle stands for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Domain {
    /// The host's libvirt URI.
    pub host: String,
    pub name: String,
    /// Defined by a run: undefined when it stops. A source domain is only shut down.
    pub owned: bool,
}

/// The environment variable a process-driver VM carries its start's key in.
pub const KEY_VAR: &str = "LIFEBOAT_VM_KEY";

/// A started VM: its process, and what tells that process from a later one that reuses its
/// pid (its start time, and the key it was started under). No signal is sent to a pid whose
/// process does not match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    pub vm: String,
    pub pid: u32,
    /// When the process started, in clock ticks since boot (`/proc/PID/stat`, field 22).
    pub started: Option<u64>,
    /// The start's idempotency key, carried in the VM's environment (`LIFEBOAT_VM_KEY`); empty
    /// for a VM Lifeboat did not start.
    pub key: String,
    /// The libvirt domain, when the VM is one (`pid` is then its QEMU's, where the host is this
    /// machine, else 0).
    pub domain: Option<Domain>,
}

impl Handle {
    /// The process `pid` as it runs now, known by its start time from here on.
    pub fn of_process(vm: &str, pid: u32) -> Self {
        Self {
            vm: vm.to_string(),
            pid,
            started: process_start_time(pid),
            key: String::new(),
            domain: None,
        }
    }

    /// Whether the process at the pid is still this VM's: the same start time and key.
    /// A handle that knows neither cannot be told from a stranger, and never matches.
    pub fn is_current(&self) -> bool {
        if self.started.is_none() && self.key.is_empty() {
            return false;
        }
        if self
            .started
            .is_some_and(|t| process_start_time(self.pid) != Some(t))
        {
            return false;
        }
        self.key.is_empty() || process_has_key(self.pid, &self.key)
    }
}

#[async_trait::async_trait]
pub trait Compute: Send + Sync {
    async fn start(&self, launch: &Launch) -> Result<Handle, ComputeError>;
    /// Asks the VM to stop, and forces it after `grace`.
    async fn stop(&self, vm: &Handle, grace: Duration) -> Result<(), ComputeError>;
    /// Freezes the VM (its disks stop changing) until `resume`.
    async fn pause(&self, vm: &Handle) -> Result<(), ComputeError>;
    async fn resume(&self, vm: &Handle) -> Result<(), ComputeError>;
    async fn running(&self, vm: &Handle) -> bool;
    /// The running VM started under `key`, if there is one (a start whose runtime died before it
    /// could journal the VM).
    async fn find(&self, vm: &str, key: &str) -> Option<Handle>;
    /// The running VMs `launches` describe, started by anyone (the source site's VMs, which no
    /// run started): what a planned failover stops and a replication cut holds still.
    async fn locate(&self, launches: &[Launch]) -> Vec<Handle>;
}

/// Signals a process Lifeboat started, after checking that the pid is still its (a recycled
/// pid belongs to someone else: the process is gone, and nothing is signalled).
pub fn signal(vm: &Handle, signal: Signal) -> Result<(), ComputeError> {
    let pid = Pid::from_raw(vm.pid as i32).ok_or_else(|| ComputeError::BadPid {
        vm: vm.vm.clone(),
        pid: vm.pid,
    })?;
    if !vm.is_current() {
        return Err(ComputeError::Gone {
            vm: vm.vm.clone(),
            pid: vm.pid,
        });
    }
    kill_process(pid, signal).map_err(|source| ComputeError::Signal {
        vm: vm.vm.clone(),
        pid: vm.pid,
        source: source.into(),
    })
}

/// The embedded driver: VMs are local processes.
#[derive(Debug, Default)]
pub struct ProcessDriver {
    // Children this process started, so exits are reaped; VMs of an earlier runtime are
    // reached by pid alone.
    children: Mutex<HashMap<u32, Child>>,
}

impl ProcessDriver {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether the process has exited (reaping it if it is ours).
    fn exited(&self, vm: &Handle) -> bool {
        if let Ok(mut children) = self.children.lock()
            && let Some(child) = children.get_mut(&vm.pid)
        {
            return !matches!(child.try_wait(), Ok(None));
        }
        let Some(pid) = Pid::from_raw(vm.pid as i32) else {
            return true;
        };
        // A child of this process whose `Child` another driver instance dropped: reap it here,
        // or it lingers as a zombie that signals still reach.
        if let Ok(Some(_)) =
            rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG)
        {
            return true;
        }
        // Gone, someone else's zombie (its parent has not reaped it yet), or a stranger that
        // reuses the pid.
        !process_alive(vm.pid) || !vm.is_current()
    }
}

#[async_trait::async_trait]
impl Compute for ProcessDriver {
    async fn start(&self, launch: &Launch) -> Result<Handle, ComputeError> {
        if launch.argv.is_empty() {
            return Err(ComputeError::EmptyCommand {
                vm: launch.vm.clone(),
            });
        }
        let argv = match &launch.netns {
            Some(ns) => crate::netns::Netns::named(ns).wrap(&launch.argv),
            None => launch.argv.clone(),
        };
        let Some((program, args)) = argv.split_first() else {
            return Err(ComputeError::EmptyCommand {
                vm: launch.vm.clone(),
            });
        };
        let log_error = |source| ComputeError::Log {
            path: launch.log.clone(),
            source,
        };
        if let Some(parent) = launch.log.parent() {
            std::fs::create_dir_all(parent).map_err(log_error)?;
        }
        let log = std::fs::File::create(&launch.log).map_err(log_error)?;
        let err = log.try_clone().map_err(log_error)?;
        use std::os::unix::process::CommandExt;
        let child = Command::new(program)
            .args(args)
            .env(KEY_VAR, &launch.key)
            .current_dir(&launch.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|source| ComputeError::Start {
                vm: launch.vm.clone(),
                program: program.clone(),
                source,
            })?;
        let pid = child.id();
        if let Ok(mut children) = self.children.lock() {
            children.insert(pid, child);
        }
        Ok(Handle {
            vm: launch.vm.clone(),
            pid,
            started: process_start_time(pid),
            key: launch.key.clone(),
            domain: None,
        })
    }

    async fn stop(&self, vm: &Handle, grace: Duration) -> Result<(), ComputeError> {
        if self.exited(vm) {
            return Ok(());
        }
        // A paused VM cannot act on SIGTERM: let it run to stop. (If this fails, SIGTERM
        // below fails the same way and says why.)
        let _ = signal(vm, Signal::CONT);
        // A QEMU VM with a QMP socket is shut down as a power button would: the guest flushes
        // its writes and powers off. SIGTERM makes QEMU quit at once, losing what the guest
        // had not written yet.
        let deadline = Instant::now() + grace;
        if vm.is_current()
            && let Some((socket, _)) = qmp_socket(vm.pid)
        {
            if self.power_down(vm, &socket, deadline).await {
                return Ok(());
            }
            tracing::warn!(vm = %vm.vm, pid = vm.pid, "the guest did not power down in time; telling QEMU to quit");
            // `quit` still closes the disks properly (persistent dirty bitmaps are saved);
            // signals are the last resort.
            if self.quit(vm, &socket).await {
                return Ok(());
            }
        }
        signal(vm, Signal::TERM)?;
        let deadline = deadline.max(Instant::now() + Duration::from_secs(2));
        while Instant::now() < deadline {
            if self.exited(vm) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        signal(vm, Signal::KILL)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.exited(vm) {
            if Instant::now() >= deadline {
                return Err(ComputeError::Unkillable {
                    vm: vm.vm.clone(),
                    pid: vm.pid,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn pause(&self, vm: &Handle) -> Result<(), ComputeError> {
        signal(vm, Signal::STOP)?;
        // SIGSTOP is delivered asynchronously: a VM running on another CPU can write on for a
        // moment after `kill` returns. The cut's instant is when it has stopped.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !process_paused(vm.pid) && !self.exited(vm) {
            if Instant::now() >= deadline {
                tracing::warn!(vm = %vm.vm, pid = vm.pid, "SIGSTOP sent, but the process is not seen stopped");
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        Ok(())
    }

    async fn resume(&self, vm: &Handle) -> Result<(), ComputeError> {
        signal(vm, Signal::CONT)
    }

    async fn running(&self, vm: &Handle) -> bool {
        !self.exited(vm)
    }

    async fn find(&self, vm: &str, key: &str) -> Option<Handle> {
        // A walk over /proc: off the async threads.
        let (vm, key) = (vm.to_string(), key.to_string());
        tokio::task::spawn_blocking(move || find_by_key(&vm, &key))
            .await
            .ok()
            .flatten()
    }

    async fn locate(&self, launches: &[Launch]) -> Vec<Handle> {
        // A walk over /proc: off the async threads.
        let launches = launches.to_vec();
        tokio::task::spawn_blocking(move || locate_launches(&launches))
            .await
            .unwrap_or_default()
    }
}

impl ProcessDriver {
    /// Tells QEMU to quit over QMP and waits a few seconds for it to exit.
    async fn quit(&self, vm: &Handle, socket: &Path) -> bool {
        let asked = async {
            let mut qmp = crate::qmp::Qmp::connect(socket).await?;
            qmp.execute("quit", None).await
        }
        .await;
        if let Err(e) = asked
            && !self.exited(vm)
        {
            tracing::warn!(vm = %vm.vm, error = %e, "QMP quit not sent");
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited(vm) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Asks a QEMU VM to power down over QMP and waits until `deadline` for it to exit.
    async fn power_down(&self, vm: &Handle, socket: &Path, deadline: Instant) -> bool {
        let asked = async {
            let mut qmp = crate::qmp::Qmp::connect(socket).await?;
            qmp.execute("system_powerdown", None).await
        }
        .await;
        if let Err(e) = asked {
            tracing::warn!(vm = %vm.vm, error = %e, "QMP power-down not sent");
            return false;
        }
        while Instant::now() < deadline {
            if self.exited(vm) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// The QMP socket of process `pid`, when it is a QEMU started with `-qmp unix:…`, and its
/// working folder.
pub(crate) fn qmp_socket(pid: u32) -> Option<(PathBuf, PathBuf)> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let cmdline = std::fs::read(proc_dir.join("cmdline")).ok()?;
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let program = Path::new(argv.first()?).file_name()?.to_string_lossy();
    if !program.starts_with("qemu-system") {
        return None;
    }
    let cwd = std::fs::read_link(proc_dir.join("cwd")).ok()?;
    Some((crate::qmp::socket_of(&argv, &cwd)?, cwd))
}

/// The live process started under `key` (found by the variable in its environment).
fn find_by_key(vm: &str, key: &str) -> Option<Handle> {
    if key.is_empty() {
        return None;
    }
    let wanted = format!("{KEY_VAR}={key}");
    for (pid, proc_dir) in processes() {
        let Ok(environ) = std::fs::read(proc_dir.join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == wanted.as_bytes())
            && process_alive(pid)
        {
            return Some(Handle {
                vm: vm.to_string(),
                pid,
                started: process_start_time(pid),
                key: key.to_string(),
                domain: None,
            });
        }
    }
    None
}

/// The running processes `launches` describe: same program name, arguments and folder.
fn locate_launches(launches: &[Launch]) -> Vec<Handle> {
    // One walk over the processes for all of them: a process matches a launch with the same
    // program (by name: it may have been started by a full path), the same arguments, run
    // from the same folder (relative disk paths mean the same files).
    let wanted: Vec<(&Launch, &std::ffi::OsStr, PathBuf)> = launches
        .iter()
        .filter_map(|l| {
            let name = Path::new(l.argv.first()?).file_name()?;
            Some((l, name, std::fs::canonicalize(&l.dir).ok()?))
        })
        .collect();
    let own = std::process::id();
    let mut found = Vec::new();
    for (pid, proc_dir) in processes() {
        if found.len() == wanted.len() {
            break;
        }
        if pid == own {
            continue;
        }
        let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some((program, args)) = argv.split_first() else {
            continue;
        };
        let program = Path::new(program).file_name();
        let Some((launch, _, dir)) = wanted
            .iter()
            .find(|(l, name, _)| program == Some(*name) && l.argv.get(1..) == Some(args))
        else {
            continue;
        };
        if std::fs::read_link(proc_dir.join("cwd")).ok().as_ref() == Some(dir)
            && process_alive(pid)
            && !found.iter().any(|h: &Handle| h.vm == launch.vm)
        {
            found.push(Handle::of_process(&launch.vm, pid));
        }
    }
    found
}

/// When process `pid` started, in clock ticks since boot; `None` if there is no such process.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces and parentheses) start at field 3;
    // the start time is field 22.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` carries `LIFEBOAT_VM_KEY=key` in its environment.
fn process_has_key(pid: u32, key: &str) -> bool {
    let wanted = format!("{KEY_VAR}={key}");
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ
            .split(|b| *b == 0)
            .any(|var| var == wanted.as_bytes())
    })
}

/// Whether process `pid` is stopped by a signal (paused for a cut, or by someone else).
pub fn process_paused(pid: u32) -> bool {
    process_state(pid) == Some('T')
}

/// The state letter of process `pid` (`R`, `S`, `T`, `Z`…), from `/proc/PID/stat`.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    let Some(p) = Pid::from_raw(pid as i32) else {
        return false;
    };
    if rustix::process::test_kill_process(p).is_err() {
        return false;
    }
    process_state(pid) != Some('Z')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A VM started by an earlier runtime (here: a process whose parent is gone) is running to
    /// this one, and is stopped by it.
    #[tokio::test]
    async fn a_vm_of_an_earlier_runtime_is_seen_running_and_stopped() {
        let out = Command::new("sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let driver = ProcessDriver::new();
        let vm = Handle::of_process("orphan", pid);
        assert!(driver.running(&vm).await, "a live orphan is not running");
        driver.stop(&vm, Duration::from_secs(2)).await.unwrap();
        assert!(!driver.running(&vm).await);
    }
}
