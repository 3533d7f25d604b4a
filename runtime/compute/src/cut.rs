//! A group's cut at its source site: its process VMs paused (`PauseVms`: under a guardian,
//! never longer than `max_pause`), its QEMU VMs fleeced (`fleece`: one QMP transaction per VM,
//! prepared while the guest runs). When the group has more than one VM, its QEMU VMs also stop
//! (QMP `stop`) for exactly as long as the transactions take, so every disk of every VM is cut
//! at one instant (the process VMs are paused already).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_replication::{Cut, CutAt, Error, FrozenDisk, Result};

use crate::driver::{Compute, Handle};
use crate::fleece::{self, Fleeced, QemuVm};
use crate::pause::PauseVms;

pub struct GroupCut {
    paused: Option<PauseVms>,
    qemu: Vec<QemuVm>,
    stop_qemu: bool,
    fleeced: tokio::sync::Mutex<Vec<Fleeced>>,
    held_at: tokio::sync::Mutex<Option<Instant>>,
    /// The longest any guest of this cut was kept from running (or from writing, during a
    /// transaction).
    paused_for: tokio::sync::Mutex<Option<Duration>>,
}

impl std::fmt::Debug for GroupCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCut")
            .field("paused", &self.paused)
            .field("qemu", &self.qemu)
            .field("stop_qemu", &self.stop_qemu)
            .finish_non_exhaustive()
    }
}

impl GroupCut {
    /// `held`: the group's running VMs; `disks_of` names each VM's disks (as the group does).
    pub fn new(
        driver: Arc<dyn Compute>,
        held: Vec<Handle>,
        disks_of: impl Fn(&str) -> Vec<PathBuf>,
        max_pause: Duration,
    ) -> Self {
        let all = held.len();
        let mut processes = Vec::new();
        let mut qemu = Vec::new();
        for h in held {
            match crate::driver::qmp_socket(h.pid) {
                Some((qmp, cwd)) => qemu.push(QemuVm {
                    disks: disks_of(&h.vm),
                    vm: h.vm,
                    qmp,
                    cwd,
                }),
                None => processes.push(h),
            }
        }
        Self {
            paused: (!processes.is_empty()).then(|| PauseVms::new(driver, processes, max_pause)),
            stop_qemu: all > 1 && !qemu.is_empty(),
            qemu,
            fleeced: tokio::sync::Mutex::new(Vec::new()),
            held_at: tokio::sync::Mutex::new(None),
            paused_for: tokio::sync::Mutex::new(None),
        }
    }

    async fn longest(&self, d: Duration) {
        let mut p = self.paused_for.lock().await;
        *p = Some(p.map_or(d, |q| q.max(d)));
    }

    /// What the cut does, for the cycle's notes: "held db-1 still for the cut (paused)", "cut
    /// web-1 while running (QEMU copy-before-write)".
    pub fn describe(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(p) = &self.paused {
            let names: Vec<&str> = p.vms().iter().map(|h| h.vm.as_str()).collect();
            notes.push(format!(
                "held {} still for the cut (paused)",
                names.join(", ")
            ));
        }
        if !self.qemu.is_empty() {
            let names: Vec<&str> = self.qemu.iter().map(|v| v.vm.as_str()).collect();
            notes.push(if self.stop_qemu {
                format!(
                    "cut {} at one instant (QEMU copy-before-write; stopped only for the transactions)",
                    names.join(", ")
                )
            } else {
                format!(
                    "cut {} while running (QEMU copy-before-write)",
                    names.join(", ")
                )
            });
        }
        notes
    }
}

#[async_trait::async_trait]
impl Cut for GroupCut {
    async fn hold(&self) -> Result<()> {
        *self.held_at.lock().await = Some(Instant::now());
        match &self.paused {
            Some(p) => p.hold().await,
            None => Ok(()),
        }
    }

    async fn release(&self) -> Result<()> {
        let released = match &self.paused {
            Some(p) => p.release().await,
            None => Ok(()),
        };
        if self.paused.is_some()
            && let Some(at) = self.held_at.lock().await.take()
        {
            self.longest(at.elapsed()).await;
        }
        released
    }

    async fn freeze(&self, at: CutAt) -> Result<Vec<FrozenDisk>> {
        let mut fleeced = self.fleeced.lock().await;
        // Everything but the transactions happens while the guests run.
        for vm in &self.qemu {
            match fleece::prepare(vm, at).await {
                Ok(f) => fleeced.push(f),
                Err(e) => {
                    thaw_all(&mut fleeced, false).await;
                    return Err(e);
                }
            }
        }
        let window = Instant::now();
        let mut failure = None;
        if self.stop_qemu {
            for f in fleeced.iter_mut() {
                if let Err(e) = f.stop().await {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            for f in fleeced.iter_mut() {
                if let Err(e) = f.cut().await {
                    failure = Some(e);
                    break;
                }
            }
        }
        for f in fleeced.iter_mut() {
            if let Err(e) = f.cont().await {
                failure.get_or_insert(e);
            }
        }
        self.longest(window.elapsed()).await;
        if let Some(e) = failure {
            thaw_all(&mut fleeced, false).await;
            return Err(e);
        }
        let mut views = Vec::new();
        for f in fleeced.iter_mut() {
            match f.views().await {
                Ok(v) => views.extend(v),
                Err(e) => {
                    drop(views);
                    thaw_all(&mut fleeced, false).await;
                    return Err(e);
                }
            }
        }
        Ok(views)
    }

    async fn unfreeze(&self, committed: bool) -> Result<()> {
        let mut errors = Vec::new();
        for mut f in self.fleeced.lock().await.drain(..) {
            if let Err(e) = fleece::thaw(&mut f, committed).await {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::failed(errors.join("; ")))
        }
    }

    fn paused(&self) -> Option<Duration> {
        self.paused_for.try_lock().ok().and_then(|p| *p)
    }
}

async fn thaw_all(fleeced: &mut Vec<Fleeced>, committed: bool) {
    for mut f in fleeced.drain(..) {
        if let Err(e) = fleece::thaw(&mut f, committed).await {
            tracing::warn!(vm = %f.vm(), error = %e, "a fleece was not torn down");
        }
    }
}
