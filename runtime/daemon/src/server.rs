//! The daemon's HTTP endpoints: on a Unix socket in the state folder (mode 0600: only the
//! daemon's user may ask), `GET /v1/status`, `/metrics`, `/healthz` and `/readyz`; on a TCP
//! address when `--listen` names one, the three without status (nothing there needs a token:
//! they say nothing a monitoring system should not see). Handlers only read the supervisor's
//! latest snapshot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::supervisor::{Error, Snapshot};

type Snapshots = watch::Receiver<Arc<Snapshot>>;

/// A supervisor that has not gone round its loop for this long is not healthy.
const STALLED: Duration = Duration::from_secs(10);

/// The running listeners.
#[derive(Debug)]
pub(crate) struct Server {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    socket: PathBuf,
}

/// Binds the socket (refusing when another daemon answers on it) and the TCP address.
pub(crate) async fn start(
    socket: &Path,
    listen: Option<SocketAddr>,
    snapshots: Snapshots,
) -> Result<Server, Error> {
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Err(Error::AlreadyRunning(
                socket.parent().unwrap_or(Path::new(".")).to_path_buf(),
            ));
        }
        // A socket left by a daemon that was killed.
        let _ = std::fs::remove_file(socket);
    }
    let bind_err = |what: String| move |source| Error::Bind { what, source };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err(dir.display().to_string()))?;
    }
    let unix =
        tokio::net::UnixListener::bind(socket).map_err(bind_err(socket.display().to_string()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_err(socket.display().to_string()))?;
    }
    let (stop, stopped) = watch::channel(false);
    let shutdown = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    let local = Router::new()
        .route("/v1/status", get(status))
        .merge(monitoring())
        .with_state(snapshots.clone());
    let rx = stopped.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(unix, local)
            .with_graceful_shutdown(shutdown(rx))
            .await
        {
            tracing::error!(error = %e, "the socket stopped serving");
        }
    }));
    if let Some(addr) = listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind_err(addr.to_string()))?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
        let remote = monitoring().with_state(snapshots);
        let rx = stopped.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, remote)
                .with_graceful_shutdown(shutdown(rx))
                .await
            {
                tracing::error!(error = %e, "the TCP listener stopped serving");
            }
        }));
    }
    tracing::info!(socket = %socket.display(), "listening");
    Ok(Server {
        stop,
        tasks,
        socket: socket.to_path_buf(),
    })
}

impl Server {
    /// Stops serving and removes the socket.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn monitoring() -> Router<Snapshots> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn status(State(s): State<Snapshots>) -> impl IntoResponse {
    let snap = s.borrow().clone();
    axum::Json(snap.status(SystemTime::now()))
}

async fn metrics(State(s): State<Snapshots>) -> impl IntoResponse {
    let snap = s.borrow().clone();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&snap, SystemTime::now()),
    )
}

async fn healthz(State(s): State<Snapshots>) -> impl IntoResponse {
    let snap = s.borrow().clone();
    if snap.heartbeat.elapsed() < STALLED {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor is stalled\n",
        )
    }
}

async fn readyz(State(s): State<Snapshots>) -> impl IntoResponse {
    let snap = s.borrow().clone();
    if snap.daemon.ready {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or stopping\n",
        )
    }
}
