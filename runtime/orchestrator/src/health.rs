//! Health probes: is a booted VM up? A TCP connect, an HTTP GET answered 2xx, or a command that
//! exits 0, tried until it passes or the timeout ends.

use std::path::Path;
use std::time::{Duration, Instant};

/// One health check, placeholders already substituted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Tcp(String),
    Http(String),
    Command(Vec<String>),
}

impl Probe {
    /// The TCP address the probe connects to (`None` for a command, or a URL without an IP
    /// literal): where the kernel can tell who answers.
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Probe::Tcp(a) => a.parse().ok(),
            Probe::Http(url) => {
                let rest = url.strip_prefix("http://")?;
                let authority = rest.split('/').next()?;
                authority
                    .parse()
                    .ok()
                    .or_else(|| Some(std::net::SocketAddr::new(authority.parse().ok()?, 80)))
            }
            Probe::Command(_) => None,
        }
    }

    /// The probe as people read it: `tcp 127.0.0.1:5432`, `http http://…`, the command.
    pub fn describe(&self) -> String {
        match self {
            Probe::Tcp(a) => format!("tcp {a}"),
            Probe::Http(u) => format!("http {u}"),
            Probe::Command(c) => c.join(" "),
        }
    }
}

/// Tries `probe` every 100 ms until it passes (returns how long that took) or `timeout` ends
/// (returns the last failure).
pub async fn wait_healthy(
    probe: &Probe,
    timeout: Duration,
    dir: &Path,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let attempt =
            tokio::time::timeout(left.min(Duration::from_secs(5)), check(probe, dir)).await;
        let why = match attempt {
            Ok(Ok(())) => return Ok(start.elapsed()),
            Ok(Err(why)) => why,
            Err(_) => "the probe did not answer".to_string(),
        };
        if start.elapsed() >= timeout {
            return Err(format!("not healthy after {timeout:?}: {why}"));
        }
        tokio::time::sleep(Duration::from_millis(100).min(timeout.saturating_sub(start.elapsed())))
            .await;
    }
}

/// One try of `probe`.
pub async fn check(probe: &Probe, dir: &Path) -> Result<(), String> {
    match probe {
        Probe::Tcp(addr) => tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("tcp {addr}: {e}")),
        Probe::Http(url) => http_ok(url).await,
        Probe::Command(argv) => {
            let (program, args) = argv.split_first().ok_or("empty health command")?;
            let status = tokio::process::Command::new(program)
                .args(args)
                .current_dir(dir)
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("cannot run `{program}`: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("`{program}` exited with {status}"))
            }
        }
    }
}

/// A plain-HTTP GET that answers 2xx (the process driver's VMs listen on loopback addresses).
async fn http_ok(url: &str) -> Result<(), String> {
    let response = lifeboat_plugin_host::http::get(url)
        .await
        .map_err(|e| format!("http {url}: {e}"))?;
    if (200..300).contains(&response.status) {
        Ok(())
    } else {
        Err(format!("http {url}: status {}", response.status))
    }
}
