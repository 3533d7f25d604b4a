//! Health probes: is a booted VM up? A TCP connect, an HTTP GET answered 2xx, or a command that
//! exits 0, tried until it passes or the timeout ends.

use std::path::Path;
use std::time::{Duration, Instant};

/// Why a VM is not healthy (yet): what the last try of its probe found.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error("tcp {addr}: {source}")]
    Tcp {
        addr: String,
        source: std::io::Error,
    },
    #[error("http {url}: {why}")]
    Http { url: String, why: String },
    #[error("http {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("empty health command")]
    EmptyCommand,
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{program}` exited with {status}")]
    Exited {
        program: String,
        status: std::process::ExitStatus,
    },
    #[error("the probe did not answer")]
    NoAnswer,
    /// The timeout ended; the last try's reason.
    #[error("not healthy after {timeout:?}: {last}")]
    TimedOut {
        timeout: Duration,
        last: Box<Unhealthy>,
    },
    /// The probe could not be run where the VM is (its network namespace).
    #[error(transparent)]
    Isolation(#[from] lifeboat_compute::netns::NetnsError),
}

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
) -> Result<Duration, Unhealthy> {
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let attempt =
            tokio::time::timeout(left.min(Duration::from_secs(5)), check(probe, dir)).await;
        let why = match attempt {
            Ok(Ok(())) => return Ok(start.elapsed()),
            Ok(Err(why)) => why,
            Err(_) => Unhealthy::NoAnswer,
        };
        if start.elapsed() >= timeout {
            return Err(Unhealthy::TimedOut {
                timeout,
                last: Box::new(why),
            });
        }
        tokio::time::sleep(Duration::from_millis(100).min(timeout.saturating_sub(start.elapsed())))
            .await;
    }
}

/// One try of `probe`.
pub async fn check(probe: &Probe, dir: &Path) -> Result<(), Unhealthy> {
    match probe {
        Probe::Tcp(addr) => tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|source| Unhealthy::Tcp {
                addr: addr.clone(),
                source,
            }),
        Probe::Http(url) => http_ok(url).await,
        Probe::Command(argv) => {
            let (program, args) = argv.split_first().ok_or(Unhealthy::EmptyCommand)?;
            let status = tokio::process::Command::new(program)
                .args(args)
                .current_dir(dir)
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|source| Unhealthy::Spawn {
                    program: program.clone(),
                    source,
                })?;
            if status.success() {
                Ok(())
            } else {
                Err(Unhealthy::Exited {
                    program: program.clone(),
                    status,
                })
            }
        }
    }
}

/// A plain-HTTP GET that answers 2xx (the process driver's VMs listen on loopback addresses).
async fn http_ok(url: &str) -> Result<(), Unhealthy> {
    let response = lifeboat_plugin_host::http::get(url)
        .await
        .map_err(|e| Unhealthy::Http {
            url: url.to_string(),
            why: e.to_string(),
        })?;
    if (200..300).contains(&response.status) {
        Ok(())
    } else {
        Err(Unhealthy::Status {
            url: url.to_string(),
            status: response.status,
        })
    }
}
