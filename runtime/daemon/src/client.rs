//! Asking a running daemon over its Unix socket: what `lifeboat status` does before it falls
//! back to reading the repositories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::status::Status;

/// The daemon's socket in a state folder.
pub fn socket_path(state: &Path) -> PathBuf {
    state.join("daemon.sock")
}

/// How long a local daemon may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` from the daemon listening on `socket`: `None` when no daemon listens there, the
/// status code and body when one answered, an error when one is there but failed to answer.
pub async fn get(socket: &Path, path: &str) -> Option<Result<(u16, Bytes), String>> {
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return None;
        }
        Err(e) => {
            return Some(Err(format!(
                "cannot reach the daemon at {}: {e}",
                socket.display()
            )));
        }
    };
    let ask = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, "lifeboat")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let code = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((code, body))
    };
    Some(match tokio::time::timeout(TIMEOUT, ask).await {
        Ok(r) => r.map_err(|e| format!("the daemon at {} did not answer: {e}", socket.display())),
        Err(_) => Err(format!(
            "the daemon at {} did not answer within {TIMEOUT:?}",
            socket.display()
        )),
    })
}

/// The status from the daemon on `socket`, if one runs there.
pub async fn status(socket: &Path) -> Option<Result<Status, String>> {
    Some(get(socket, "/v1/status").await?.and_then(|(code, body)| {
        if code != 200 {
            return Err(format!(
                "the daemon answered {code}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|e| format!("the daemon's status is not readable: {e}"))
    }))
}
