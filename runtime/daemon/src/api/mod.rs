//! The daemon's HTTP API: status, plans, runs and the actions on them, replicate-now, the event
//! stream, metrics and health, and the OpenAPI document derived from the handlers
//! (`docs/openapi.json`, drift-tested). The same routes answer on the Unix socket (mode 0600:
//! only the daemon's user reaches it, no token) and, when configured, on TCP, where every route
//! needs the bearer token.

mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use utoipa::OpenApi;

use crate::events::Bus;
use crate::host::Host;
use crate::messages::Snapshot;

/// What every handler reads.
#[derive(Clone, Debug)]
pub(crate) struct Api {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub bus: Arc<Bus>,
    pub host: Arc<Host>,
    /// SHA-256 of the TCP token: compared in constant time, and equal in length whatever the
    /// token's.
    token: Option<[u8; 32]>,
    /// True once the daemon stops: event streams end.
    pub stopping: watch::Receiver<bool>,
}

impl Api {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        bus: Arc<Bus>,
        host: Arc<Host>,
        token: Option<String>,
    ) -> Self {
        Self {
            snapshots,
            bus,
            host,
            token: token.map(|t| digest(&t)),
            stopping: watch::channel(false).1,
        }
    }

    pub fn stopping_with(mut self, stopping: watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    fn token_matches(&self, given: &str) -> bool {
        self.token
            .is_some_and(|t| bool::from(digest(given).ct_eq(&t)))
    }

    /// Every route, as the Unix socket serves them.
    pub fn local(self) -> Router {
        routes::all().with_state(self)
    }

    /// Every route behind the bearer token, as TCP serves them.
    pub fn remote(self) -> Router {
        routes::all()
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                require_token,
            ))
            .with_state(self)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

async fn require_token(State(api): State<Api>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110); the token is not.
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if given.is_some_and(|t| api.token_matches(t)) {
        next.run(req).await
    } else {
        crate::api_error::ApiError::unauthorized().into_response()
    }
}

/// The OpenAPI document of the API (`GET /v1/openapi.json`; checked in as docs/openapi.json).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::Doc::openapi()
}
