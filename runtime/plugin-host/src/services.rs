//! What the host does on a plugin's behalf. The orchestrator implements [`HostServices`] over
//! the real compute drivers, repository and approvals; the plugin host only checks grants and
//! bounds each call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wit::Error;
use crate::wit::lifeboat::plan::{
    compute::VmState, inventory::Vm, network::Assignment, recovery::Point,
};

/// The authority behind the host interfaces. Each method is called only after the step's grant
/// was checked, and under the host-call timeout. A method a context cannot serve (validation
/// has no compute driver) answers `Error::Other` saying so.
///
/// The world a step reaches — probes, HTTP requests, the clock — comes through here too: a real
/// run's services reach the network and sleep; a simulation's answer from its model and move a
/// clock of their own, so the same step runs unchanged against either.
#[async_trait::async_trait]
pub trait HostServices: Send + Sync {
    /// Whether nothing these services do reaches a real VM, store or network: a dry run
    /// (`context.dry-run`) is only ever run against such services.
    fn simulated(&self) -> bool {
        false
    }
    /// The VMs of a group of the running plan.
    async fn group_vms(&self, _group: &str) -> Vec<Vm> {
        Vec::new()
    }
    async fn get_vm(&self, name: &str) -> Result<Vm, Error> {
        Err(unavailable("inventory", name))
    }
    async fn list_points(&self, vm: &str) -> Result<Vec<Point>, Error> {
        Err(unavailable("recovery", vm))
    }
    async fn pick_point(&self, vm: &str, _choice: &str) -> Result<Point, Error> {
        Err(unavailable("recovery", vm))
    }
    async fn restore(&self, vm: &str, _point: &str, _key: &str) -> Result<Vec<String>, Error> {
        Err(unavailable("recovery", vm))
    }
    async fn start(&self, vm: &str, _key: &str) -> Result<(), Error> {
        Err(unavailable("compute", vm))
    }
    async fn stop(&self, vm: &str, _key: &str) -> Result<(), Error> {
        Err(unavailable("compute", vm))
    }
    async fn status(&self, vm: &str) -> Result<VmState, Error> {
        Err(unavailable("compute", vm))
    }
    async fn assignments(&self, vm: &str) -> Result<Vec<Assignment>, Error> {
        Err(unavailable("network", vm))
    }
    /// Wait for a person to approve; returns who did.
    async fn approve(&self, _message: &str) -> Result<String, Error> {
        Err(Error::Other(
            "approvals are not available in this context".into(),
        ))
    }
    /// `probe.tcp`: whether `address` accepts a connection within `limit`.
    async fn tcp(&self, address: &str, limit: Duration) -> Result<(), Error> {
        match tokio::time::timeout(limit, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Other(format!("cannot connect to {address}: {e}"))),
            Err(_) => Err(Error::Timeout(format!(
                "{address} did not accept within {} ms",
                limit.as_millis()
            ))),
        }
    }
    /// `probe.http-get`: the status code of `GET url`, within `limit`.
    async fn http_get(&self, url: &str, limit: Duration) -> Result<u16, Error> {
        match crate::http::get_within(url, limit).await {
            Ok(response) => Ok(response.status),
            Err(e @ crate::http::HttpError::Unsupported(_)) => Err(Error::Invalid(e.to_string())),
            Err(e @ crate::http::HttpError::Timeout(..)) => Err(Error::Timeout(e.to_string())),
            Err(e) => Err(Error::Other(e.to_string())),
        }
    }
    /// `http.send`: sends `request`, within `limit`.
    async fn http_send(
        &self,
        request: &crate::http::Request,
        limit: Duration,
    ) -> Result<crate::http::Answer, Error> {
        send_within(request, limit, true).await
    }
    /// `clock.now-ms`: milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
    /// `clock.sleep`.
    async fn sleep(&self, ms: u64) -> Result<(), Error> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
}

/// `http.send` of `request` within `limit`, as a step sees it: through the process's pooled
/// client, or (`pooled: false`) a client of its own, as a request made inside a network
/// namespace needs.
pub async fn send_within(
    request: &crate::http::Request,
    limit: Duration,
    pooled: bool,
) -> Result<crate::http::Answer, Error> {
    let sent = if pooled {
        tokio::time::timeout(limit, crate::http::send(request)).await
    } else {
        tokio::time::timeout(limit, crate::http::send_unpooled(request)).await
    };
    match sent {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(crate::http::SendError::Invalid(e))) => Err(Error::Invalid(e)),
        Ok(Err(crate::http::SendError::Failed(e))) => Err(Error::Other(e)),
        Err(_) => Err(Error::Timeout(format!(
            "{} did not answer within {} ms",
            request.url,
            limit.as_millis()
        ))),
    }
}

fn unavailable(what: &str, vm: &str) -> Error {
    Error::Other(format!(
        "{what} is not available in this context (asked about `{vm}`)"
    ))
}

/// Services for contexts with no sites, such as `plan validate` and alert hooks: every site
/// call says so; probes, HTTP and the clock are the real ones.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoServices;

impl HostServices for NoServices {}

/// The run-scoped key-value store steps share.
#[derive(Debug, Default, Clone)]
pub struct RunKv(Arc<Mutex<HashMap<String, String>>>);

impl RunKv {
    pub fn get(&self, key: &str) -> Option<String> {
        self.0.lock().ok()?.get(key).cloned()
    }

    /// A store holding `entries` (a run's kv, as journaled, when the run resumes).
    pub fn with_entries(entries: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(Arc::new(Mutex::new(entries.into_iter().collect())))
    }

    /// Every key and value, in key order.
    pub fn entries(&self) -> std::collections::BTreeMap<String, String> {
        self.0
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    pub fn set(&self, key: String, value: String) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(key, value);
        }
    }
}
