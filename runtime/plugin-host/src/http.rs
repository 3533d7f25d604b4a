//! The runtime's HTTP clients. `get`: the one plain-HTTP GET (the `probe` interface's
//! `http-get`, the orchestrator's health probes and the demo's checks): plain `http://` only
//! (probes reach addresses inside a site's networks); the request says `connection: close` and
//! the response is read to its end, at most [`MAX_RESPONSE`] bytes. `send`: the `http`
//! interface's requests, any method, HTTPS verified against the system's roots (rustls with the
//! platform verifier: `SSL_CERT_FILE` names other roots), redirects not followed, the body read
//! up to [`MAX_RESPONSE`].

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

/// A request of the `http` interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// An answer to [`send`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was longer than [`MAX_RESPONSE`].
    pub truncated: bool,
}

/// Why [`send`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

fn new_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("lifeboat/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("the HTTP client could not start: {e}"))
}

/// One client per process: its connection pool and the system's roots, loaded once.
fn client() -> Result<&'static reqwest::Client, SendError> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    CLIENT
        .get_or_init(new_client)
        .as_ref()
        .map_err(|e| SendError::Failed(e.clone()))
}

/// Sends `req` (the caller has checked its grant and bounds its time).
pub async fn send(req: &Request) -> Result<Answer, SendError> {
    send_via(client()?, req).await
}

/// Sends `req` through a client of its own, which shares no connection with any other request:
/// what a request made inside a network namespace needs (a pooled connection would lead out of
/// it).
pub async fn send_unpooled(req: &Request) -> Result<Answer, SendError> {
    let client = new_client().map_err(SendError::Failed)?;
    send_via(&client, req).await
}

async fn send_via(client: &reqwest::Client, req: &Request) -> Result<Answer, SendError> {
    let method = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| SendError::Invalid(format!("`{}` is not an HTTP method", req.method)))?;
    let url = reqwest::Url::parse(&req.url)
        .map_err(|e| SendError::Invalid(format!("`{}` is not a URL: {e}", req.url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SendError::Invalid(format!(
            "only http:// and https:// URLs can be requested, got `{}`",
            req.url
        )));
    }
    let mut builder = client.request(method, url);
    for (name, value) in &req.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let mut response = builder
        .body(req.body.clone())
        .send()
        .await
        .map_err(|e| SendError::Failed(format!("{}: {}", req.url, error_chain(&e))))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| SendError::Failed(format!("{}: {}", req.url, error_chain(&e))))?
    {
        let room = MAX_RESPONSE - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        headers,
        body,
        truncated,
    })
}

/// An error with its causes: reqwest's own message is only "error sending request".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
