//! The one plain-HTTP GET of the runtime: the `probe` interface's `http-get`, the orchestrator's
//! health probes and the demo's checks all use it. Plain `http://` only (probes reach addresses
//! inside a site's networks); the request says `connection: close` and the response is read to
//! its end, at most [`MAX_RESPONSE`] bytes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most of a response that is read.
pub const MAX_RESPONSE: usize = 1 << 20;

/// An answer: its status code and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a GET got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The URL is not one this client takes.
    #[error("only http:// URLs can be fetched, got `{0}`")]
    Unsupported(String),
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Io(String),
    /// Something answered, but not HTTP.
    #[error("{0} did not answer with HTTP")]
    NotHttp(String),
    /// No whole answer within the time allowed.
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, std::time::Duration),
}

/// `GET url`, given up after `limit`.
pub async fn get_within(url: &str, limit: std::time::Duration) -> Result<Response, HttpError> {
    tokio::time::timeout(limit, get(url))
        .await
        .map_err(|_| HttpError::Timeout(url.to_string(), limit))?
}

impl Response {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// `GET url`.
pub async fn get(url: &str) -> Result<Response, HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Unsupported(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let address = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|e| HttpError::Io(format!("cannot connect to {address}: {e}")))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: lifeboat\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| HttpError::Io(format!("cannot send to {address}: {e}")))?;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while text.len() < MAX_RESPONSE {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| HttpError::Io(format!("cannot read from {address}: {e}")))?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    let head_end = text.windows(4).position(|w| w == b"\r\n\r\n");
    let head = String::from_utf8_lossy(&text[..head_end.unwrap_or(text.len())]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .filter(|_| head.starts_with("HTTP/"))
        .ok_or_else(|| HttpError::NotHttp(url.to_string()))?;
    let body = head_end.map_or_else(Vec::new, |i| text[i + 4..].to_vec());
    Ok(Response { status, body })
}
