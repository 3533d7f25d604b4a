//! Asking a running daemon over its Unix socket: what `lifeboat status` and the run commands do
//! before they work on their own, and how `lifeboat events` follows the event stream.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::notice::Notice;
use crate::status::Status;

/// Why a daemon that is there did not give a usable answer. (No daemon at all is `None`, not
/// an error: the commands then work on their own.)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the daemon at {}: {source}", socket.display())]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon at {} did not answer: {source}", socket.display())]
    NoAnswer {
        socket: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the daemon at {} did not answer within {timeout:?}", socket.display())]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("the daemon answered {code}: {body}")]
    Refused { code: u16, body: String },
    #[error("the daemon's {what} is not readable: {source}")]
    Unreadable {
        what: &'static str,
        source: serde_json::Error,
    },
}

fn no_answer(socket: &Path, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::NoAnswer {
        socket: socket.to_path_buf(),
        source: e.into(),
    }
}

/// The daemon's socket in a state folder.
pub fn socket_path(state: &Path) -> PathBuf {
    state.join("daemon.sock")
}

/// How long a local daemon may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the daemon on `socket`: `None` when none listens there.
async fn connect(socket: &Path) -> Option<Result<tokio::net::UnixStream, Error>> {
    match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => Some(Ok(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            None
        }
        Err(source) => Some(Err(Error::Unreachable {
            socket: socket.to_path_buf(),
            source,
        })),
    }
}

/// Whether a daemon listens on `socket`.
pub async fn running(socket: &Path) -> bool {
    matches!(connect(socket).await, Some(Ok(_)))
}

/// Sends `method path` (with a JSON `body`) and waits for the head of the answer.
async fn send(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Option<Result<hyper::Response<hyper::body::Incoming>, Error>> {
    let stream = match connect(socket).await? {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    let ask = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| no_answer(socket, e))?;
        tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "lifeboat");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| no_answer(socket, e))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| no_answer(socket, e))
    };
    Some(ask.await)
}

/// `GET path` from the daemon listening on `socket`: `None` when no daemon listens there, the
/// status code and body when one answered, an error when one is there but failed to answer.
pub async fn get(socket: &Path, path: &str) -> Option<Result<(u16, Bytes), Error>> {
    request(socket, "GET", path, None, TIMEOUT).await
}

/// `method path` with a JSON `body`, answered within `timeout` (actions can take as long as a
/// planned failover's last cycle).
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Option<Result<(u16, Bytes), Error>> {
    let answered = async {
        let response = send(socket, method, path, body).await?;
        Some(match response {
            Ok(r) => {
                let code = r.status().as_u16();
                r.into_body()
                    .collect()
                    .await
                    .map(|b| (code, b.to_bytes()))
                    .map_err(|e| no_answer(socket, e))
            }
            Err(e) => Err(e),
        })
    };
    match tokio::time::timeout(timeout, answered).await {
        Ok(r) => r,
        Err(_) => Some(Err(Error::Timeout {
            socket: socket.to_path_buf(),
            timeout,
        })),
    }
}

/// Follows the event stream at `path` (`/v1/events?...`): each notice as it comes; the channel
/// closes when the daemon stops or the connection drops. Once this returns, the daemon has
/// subscribed: nothing published after it is missed.
pub async fn follow(
    socket: &Path,
    path: &str,
) -> Option<Result<mpsc::UnboundedReceiver<Notice>, Error>> {
    let response = match send(socket, "GET", path, None).await? {
        Ok(r) => r,
        Err(e) => return Some(Err(e)),
    };
    if response.status() != 200 {
        let code = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Some(Err(Error::Refused {
            code,
            body: String::from_utf8_lossy(&body).into_owned(),
        }));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut body = response.into_body();
    tokio::spawn(async move {
        let mut pending = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                if let Some(n) = parse_event(&block)
                    && tx.send(n).is_err()
                {
                    return;
                }
            }
        }
    });
    Some(Ok(rx))
}

/// The notice in one server-sent event block (keep-alive comments have none).
fn parse_event(block: &str) -> Option<Notice> {
    let data: Vec<&str> = block
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return None;
    }
    serde_json::from_str(&data.join("\n")).ok()
}

/// The status from the daemon on `socket`, if one runs there.
pub async fn status(socket: &Path) -> Option<Result<Status, Error>> {
    Some(get(socket, "/v1/status").await?.and_then(|(code, body)| {
        if code != 200 {
            return Err(Error::Refused {
                code,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|source| Error::Unreadable {
            what: "status",
            source,
        })
    }))
}
