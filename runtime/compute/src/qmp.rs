//! QEMU's machine protocol (QMP) over a VM's Unix socket: the handshake, one command at a time,
//! every step bounded. The driver uses it to shut a QEMU VM down the way a power button does
//! (`system_powerdown`: the guest flushes and powers off) before it falls back to signals.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long one QMP exchange may take.
const EXCHANGE: Duration = Duration::from_secs(5);

/// A connected QMP session (capabilities negotiated).
pub struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp").finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connects to the socket at `path` and leaves the greeting's negotiation mode.
    pub async fn connect(path: &Path) -> Result<Self, String> {
        let stream = tokio::time::timeout(EXCHANGE, UnixStream::connect(path))
            .await
            .map_err(|_| format!("QMP socket {} did not answer", path.display()))?
            .map_err(|e| format!("cannot connect to QMP socket {}: {e}", path.display()))?;
        let (read, writer) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(read),
            writer,
        };
        let greeting = qmp.message().await?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value (events that arrive first are skipped).
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, String> {
        let mut request = json!({ "execute": command });
        if let Some(a) = arguments {
            request["arguments"] = a;
        }
        let mut line = request.to_string();
        line.push('\n');
        tokio::time::timeout(EXCHANGE, self.writer.write_all(line.as_bytes()))
            .await
            .map_err(|_| format!("QMP `{command}` could not be sent in time"))?
            .map_err(|e| format!("QMP `{command}`: {e}"))?;
        loop {
            let answer = self.message().await?;
            if let Some(r) = answer.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = answer.get("error") {
                return Err(format!(
                    "QMP `{command}` failed: {}",
                    e.get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no description")
                ));
            }
            // An asynchronous event (`POWERDOWN`, `STOP`, …): not the answer.
        }
    }

    async fn message(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = tokio::time::timeout(EXCHANGE, self.reader.read_line(&mut line))
            .await
            .map_err(|_| "QMP did not answer in time".to_string())?
            .map_err(|e| format!("QMP: {e}"))?;
        if n == 0 {
            return Err("QMP closed the connection".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP sent something that is not JSON: {e}"))
    }
}

/// The QMP socket of a QEMU process started with `-qmp unix:PATH,…` (relative paths from its
/// working folder `cwd`), read from its command line.
pub fn socket_of(argv: &[String], cwd: &Path) -> Option<PathBuf> {
    let at = argv.iter().position(|a| a == "-qmp" || a == "--qmp")?;
    let spec = argv.get(at + 1)?.strip_prefix("unix:")?;
    let path = spec.split(',').next().filter(|p| !p.is_empty())?;
    Some(cwd.join(path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_socket_is_read_from_the_command_line() {
        let argv: Vec<String> = [
            "qemu-system-x86_64",
            "-m",
            "256",
            "-qmp",
            "unix:vm.sock,server=on,wait=off",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            socket_of(&argv, Path::new("/srv/vms")),
            Some(PathBuf::from("/srv/vms/vm.sock"))
        );
        assert_eq!(socket_of(&argv[..3], Path::new("/")), None);
        let tcp: Vec<String> = ["qemu", "-qmp", "tcp:127.0.0.1:4444"]
            .map(String::from)
            .to_vec();
        assert_eq!(socket_of(&tcp, Path::new("/")), None);
    }
}
