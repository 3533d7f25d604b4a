//! Network namespaces: where a drill's copies run, so they cannot reach (or write to) anything
//! of production. A namespace is made with iproute2 (`ip netns add`, so `ip netns exec NAME …`
//! reaches it too) and holds only its loopback: in it the test network's addresses (on `lo`,
//! like every 127/8 address) exist and answer, the copies reach each other, and a production
//! address is a connection refused. Lifeboat's own probes and a step's network calls enter it
//! through [`Netns::within`]: a thread that joins the namespace makes the sockets, which then
//! work anywhere.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a network namespace could not be made, entered or removed.
#[derive(Debug, thiserror::Error)]
#[error("network isolation: {0}")]
pub struct NetnsError(pub String);

/// A named network namespace (`/run/netns/NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

/// Where iproute2 keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";

impl Netns {
    /// The namespace of run `run` of the state folder `state`: unique on this machine (the
    /// folder's device and inode tell two state folders apart, whose runs have the same ids).
    pub fn name_for(state: &Path, run: &str) -> String {
        let tag = std::fs::metadata(state)
            .map(|m| format!("{:x}{:x}", m.dev(), m.ino()))
            .unwrap_or_else(|_| "0".into());
        let run: String = run
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("lifeboat-{tag}-{run}")
    }

    /// The namespace called `name`, whether or not it exists.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Whether this process can make network namespaces (root, and iproute2 installed): asked
    /// before a drill is recorded, so one that cannot be isolated is refused, not half-run.
    pub async fn available() -> Result<(), NetnsError> {
        if !rustix::process::geteuid().is_root() {
            return Err(NetnsError(
                "a drill runs in a network namespace of its own, which needs root (or CAP_SYS_ADMIN); run as root, or set `network.test_isolation = \"none\"` in the plan to drill in the host's network".into(),
            ));
        }
        ip(&["-V"]).await
    }

    /// Makes the namespace (with its loopback up), or finds the one a killed run made.
    pub async fn create(name: &str) -> Result<Self, NetnsError> {
        let ns = Self::named(name);
        if !ns.exists() {
            ip(&["netns", "add", name]).await?;
        }
        ip(&["-n", name, "link", "set", "lo", "up"]).await?;
        Ok(ns)
    }

    /// Removes the namespace (nothing may run in it any more: the caller stopped its VMs).
    /// Removing one that is not there is not an error.
    pub async fn delete(&self) -> Result<(), NetnsError> {
        if !self.exists() {
            return Ok(());
        }
        ip(&["netns", "delete", &self.name]).await
    }

    /// `argv` run inside the namespace (iproute2 joins it, then runs the program in the same
    /// process: the pid a driver records is the program's).
    pub fn wrap(&self, argv: &[String]) -> Vec<String> {
        let mut out = vec![
            "ip".to_string(),
            "netns".to_string(),
            "exec".to_string(),
            self.name.clone(),
        ];
        out.extend(argv.iter().cloned());
        out
    }

    /// Runs `work` on a thread inside the namespace (its own single-threaded runtime), so every
    /// socket it makes belongs there; the sockets' traffic stays in the namespace wherever they
    /// are used afterwards.
    pub async fn within<F, Fut, T>(&self, work: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = self.path();
        let name = self.name.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("netns {name}"))
            .spawn(move || {
                let entered = std::fs::File::open(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))
                    .and_then(|f| {
                        rustix::thread::move_into_link_name_space(
                            std::os::fd::AsFd::as_fd(&f),
                            Some(rustix::thread::LinkNameSpaceType::Network),
                        )
                        .map_err(|e| format!("cannot enter network namespace `{name}`: {e}"))
                    })
                    .and_then(|()| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|e| format!("cannot start a runtime: {e}"))
                    });
                let result = entered.map(|rt| rt.block_on(work()));
                let _ = tx.send(result);
            })
            .map_err(|e| NetnsError(format!("cannot start a thread: {e}")))?;
        rx.await
            .map_err(|_| NetnsError("the namespace's thread died".into()))?
            .map_err(NetnsError)
    }
}

async fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| NetnsError(format!("cannot run `ip` (install iproute2): {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let hint = if said.contains("Operation not permitted") || said.contains("Permission denied") {
        " (network namespaces need root or CAP_SYS_ADMIN; a plan can set `network.test_isolation = \"none\"` to drill in the host's network)"
    } else {
        ""
    };
    Err(NetnsError(format!(
        "`ip {}` failed: {said}{hint}",
        args.join(" ")
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_tell_state_folders_apart() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let na = Netns::name_for(a.path(), "erp-1");
        assert!(
            na.starts_with("lifeboat-") && na.ends_with("-erp-1"),
            "{na}"
        );
        assert_ne!(na, Netns::name_for(b.path(), "erp-1"));
        assert!(Netns::name_for(a.path(), "a/b c").ends_with("-a_b_c"));
    }
}
