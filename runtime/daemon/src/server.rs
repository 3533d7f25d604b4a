//! The daemon's listeners: the API (`api`) on a Unix socket in the state folder (mode 0600:
//! only the daemon's user may ask, no token), and on a TCP address when `--listen` names one,
//! every route there behind the bearer token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::api::Api;
use crate::messages::Error;

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
    api: Api,
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
    let api = api.stopping_with(stopped.clone());
    let local = api.clone().local();
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
        tracing::info!(%addr, "serving the API on TCP (bearer token required)");
        let remote = api.remote();
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
