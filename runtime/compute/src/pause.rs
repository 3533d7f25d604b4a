//! Holding a group's VMs still for a replication cut, safely: the pause never outlives the
//! process that took it, never outlasts its bound, and a VM that cannot be resumed is an error.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::driver::{Compute, Handle};

/// Holds a group's VMs still for a replication cut: pause them all, release them all.
///
/// A pause must never outlive the process that took it: before the first VM is paused a
/// guardian process starts, holding the read end of a pipe whose write end only this process
/// has. Released normally, the guardian is told so and exits; if this process dies (Ctrl-C,
/// SIGTERM, kill -9) the pipe closes and the guardian resumes the VMs at once; and if this
/// process hangs, the guardian resumes them when the pause's bound (plus a second) has passed.
pub struct PauseVms {
    driver: Arc<dyn Compute>,
    vms: Vec<Handle>,
    max: Duration,
    guardian: tokio::sync::Mutex<Option<Guardian>>,
}

impl PauseVms {
    /// `max`: the longest the VMs may stay paused (the policy's `max_pause`).
    pub fn new(driver: Arc<dyn Compute>, vms: Vec<Handle>, max: Duration) -> Self {
        Self {
            driver,
            vms,
            max,
            guardian: tokio::sync::Mutex::new(None),
        }
    }

    pub fn vms(&self) -> &[Handle] {
        &self.vms
    }
}

impl std::fmt::Debug for PauseVms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseVms")
            .field("vms", &self.vms)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// The process that resumes paused VMs if their pauser cannot.
struct Guardian {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
}

impl Guardian {
    /// Starts a guardian for `pids`, bounded at `max` (+1 s, so the cycle's own bound acts first).
    fn start(pids: &[u32], max: Duration) -> std::io::Result<Self> {
        // `read` ends on our "done" (released), on end of file (we died), or on its timeout
        // (we hang); only "done" leaves the VMs alone.
        let script = r#"read -r -t "$1" line; shift; [ "$line" = done ] || kill -CONT "$@" 2>/dev/null; exit 0"#;
        let bound = (max + Duration::from_secs(1)).as_secs().max(1);
        let mut child = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("lifeboat-pause-guardian")
            .arg(bound.to_string())
            .args(pids.iter().map(u32::to_string))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(false)
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    /// Tells the guardian the VMs were resumed, and waits for it to exit.
    async fn dismiss(mut self) {
        use tokio::io::AsyncWriteExt;
        if let Some(mut stdin) = self.stdin.take() {
            // If the guardian is gone (it timed out and resumed the VMs), there is no one to tell.
            let _ = stdin.write_all(b"done\n").await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

#[async_trait::async_trait]
impl lifeboat_replication::Cut for PauseVms {
    async fn hold(&self) -> lifeboat_replication::Result<()> {
        let pids: Vec<u32> = self.vms.iter().map(|h| h.pid).collect();
        let guardian = Guardian::start(&pids, self.max).map_err(|e| {
            lifeboat_replication::Error::io("cannot start the pause guardian (bash)", e)
        })?;
        *self.guardian.lock().await = Some(guardian);
        for (i, vm) in self.vms.iter().enumerate() {
            if let Err(e) = self.driver.pause(vm).await {
                // Resume what was paused; the guardian resumes what this cannot.
                let undone = resume_all(self.driver.as_ref(), &self.vms[..i]).await;
                if let Err(e) = &undone {
                    tracing::warn!(error = %e, "a failed pause could not be rolled back; the guardian resumes the VMs");
                }
                if undone.is_ok()
                    && let Some(g) = self.guardian.lock().await.take()
                {
                    g.dismiss().await;
                }
                return Err(lifeboat_replication::Error::failed(e));
            }
        }
        Ok(())
    }

    async fn release(&self) -> lifeboat_replication::Result<()> {
        let resumed = resume_all(self.driver.as_ref(), &self.vms).await;
        let guardian = self.guardian.lock().await.take();
        match (&resumed, guardian) {
            // Every VM runs again: the guardian has nothing left to do.
            (Ok(()), Some(g)) => g.dismiss().await,
            // Some did not resume: dropping the pipe makes the guardian try too.
            (Err(_), Some(g)) => drop(g),
            (_, None) => {}
        }
        resumed.map_err(lifeboat_replication::Error::failed)
    }
}

/// Resumes every VM of `vms` (a VM that has exited needs no resuming); the errors, joined.
async fn resume_all(driver: &dyn Compute, vms: &[Handle]) -> Result<(), String> {
    let mut errors = Vec::new();
    for vm in vms {
        if let Err(e) = driver.resume(vm).await
            && driver.running(vm).await
        {
            errors.push(format!("cannot resume VM `{}`: {e}", vm.vm));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
