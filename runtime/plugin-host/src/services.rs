//! What the host does on a plugin's behalf. The orchestrator implements [`HostServices`] over
//! the real compute drivers, repository and approvals; the plugin host only checks grants and
//! bounds each call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::wit::Error;
use crate::wit::lifeboat::plan::{
    compute::VmState, inventory::Vm, network::Assignment, recovery::Point,
};

/// The authority behind the host interfaces. Each method is called only after the step's grant
/// was checked, and under the host-call timeout. A method a context cannot serve (validation
/// has no compute driver) answers `Error::Other` saying so.
#[async_trait::async_trait]
pub trait HostServices: Send + Sync {
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
}

fn unavailable(what: &str, vm: &str) -> Error {
    Error::Other(format!(
        "{what} is not available in this context (asked about `{vm}`)"
    ))
}

/// Services for contexts with no sites, such as `plan validate`: every call says so.
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
