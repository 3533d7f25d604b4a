//! The host side of every import: checks the step's grant, bounds the call, does the work.
//!
//! A call outside the grant does not return an error the plugin could swallow: it ends the step
//! (a trap carrying [`Denied`]), so the run records exactly what was attempted.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::grants::Grants;
use crate::outcome::LogLine;
use crate::services::{HostServices, RunKv};
use crate::wit::Error;
use crate::wit::lifeboat::plan::{
    approval, clock, compute, http, inventory, kv, log, network, probe, recovery, types,
};

/// A message this long is cut; a step's log holds at most this many bytes in all.
const MAX_LOG_MESSAGE: usize = 4 << 10;
const MAX_LOG_BYTES: usize = 1 << 20;
const MAX_KV_VALUE: usize = 64 << 10;

/// Raised (as a trap) when a step calls outside its grant.
#[derive(Debug)]
pub(crate) struct Denied(pub String);

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Denied {}

/// Enforces the step's memory cap and remembers when it was hit.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub limit: usize,
    pub hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Everything one step execution owns. Dropped with its `Store`.
pub(crate) struct StepState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub memory: MemoryCap,
    pub grants: Arc<Grants>,
    pub services: Arc<dyn HostServices>,
    pub kv: RunKv,
    /// What every effect of this execution is keyed under (see `StepRequest::effect_key`).
    pub effect_key: String,
    pub group: String,
    /// `step `db-port` of group `database``, for denials.
    pub label: String,
    pub host_call_timeout: Duration,
    pub log: Vec<LogLine>,
    pub log_bytes: usize,
    pub log_dropped: usize,
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StepState {
    fn deny(&self, capability: &str, what: &str) -> wasmtime::Error {
        let origin = if self.grants.origin.is_empty() {
            String::new()
        } else {
            format!(" (grants at {})", self.grants.origin)
        };
        wasmtime::Error::new(Denied(format!(
            "{} may not {capability} {what}: not in its `allow`{origin}",
            self.label
        )))
    }

    /// The key of an effect: derived by the host from this execution's key, the action and the
    /// VM. The plugin's own key is not used, so a step cannot reuse another step's effects.
    fn effect_key(&self, action: &str, vm: &str) -> String {
        format!("{}/{action}/{vm}", self.effect_key)
    }

    fn require_vm(&self, capability: &str, vm: &str) -> wasmtime::Result<()> {
        if self.grants.vm(vm) {
            Ok(())
        } else {
            Err(self.deny(capability, &format!("VM `{vm}`")))
        }
    }
}

/// Run a service call under the host-call timeout.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout(format!(
            "{what} did not answer within {} ms",
            limit.as_millis()
        ))),
    }
}

impl types::Host for StepState {}

impl log::Host for StepState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        if self.log_bytes >= MAX_LOG_BYTES {
            self.log_dropped += 1;
            return Ok(());
        }
        let mut message = message;
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" …[truncated]");
        }
        self.log_bytes += message.len();
        let level = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        self.log.push(LogLine { level, message });
        Ok(())
    }
}

impl kv::Host for StepState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.kv.get(&key))
    }

    async fn set(&mut self, key: String, value: String) -> wasmtime::Result<Result<(), Error>> {
        if !self.grants.kv(&key) {
            return Err(self.deny("write kv key", &format!("`{key}`")));
        }
        if value.len() > MAX_KV_VALUE {
            return Ok(Err(Error::Invalid(format!(
                "kv value of {} bytes exceeds the {MAX_KV_VALUE}-byte limit",
                value.len()
            ))));
        }
        self.kv.set(key, value);
        Ok(Ok(()))
    }
}

impl inventory::Host for StepState {
    async fn group_vms(&mut self) -> wasmtime::Result<Vec<inventory::Vm>> {
        let services = self.services.clone();
        let group = self.group.clone();
        Ok(
            tokio::time::timeout(self.host_call_timeout, services.group_vms(&group))
                .await
                .unwrap_or_default(),
        )
    }

    async fn get_vm(&mut self, name: String) -> wasmtime::Result<Result<inventory::Vm, Error>> {
        let services = self.services.clone();
        if !self.grants.vm(&name) {
            let group = self.group.clone();
            let in_group = services
                .group_vms(&group)
                .await
                .iter()
                .any(|v| v.name == name);
            if !in_group {
                return Err(self.deny("read", &format!("VM `{name}`")));
            }
        }
        Ok(bounded(self.host_call_timeout, "inventory", services.get_vm(&name)).await)
    }
}

impl recovery::Host for StepState {
    async fn list_points(
        &mut self,
        vm: String,
    ) -> wasmtime::Result<Result<Vec<recovery::Point>, Error>> {
        self.require_vm("list points of", &vm)?;
        let services = self.services.clone();
        Ok(bounded(
            self.host_call_timeout,
            "recovery",
            services.list_points(&vm),
        )
        .await)
    }

    async fn pick_point(
        &mut self,
        vm: String,
        choice: String,
    ) -> wasmtime::Result<Result<recovery::Point, Error>> {
        self.require_vm("pick a point of", &vm)?;
        let services = self.services.clone();
        Ok(bounded(
            self.host_call_timeout,
            "recovery",
            services.pick_point(&vm, &choice),
        )
        .await)
    }

    async fn restore(
        &mut self,
        vm: String,
        point_id: String,
        _plugin_key: String,
    ) -> wasmtime::Result<Result<Vec<String>, Error>> {
        self.require_vm("restore", &vm)?;
        let key = self.effect_key("restore", &vm);
        let services = self.services.clone();
        Ok(bounded(
            self.host_call_timeout,
            "recovery",
            services.restore(&vm, &point_id, &key),
        )
        .await)
    }
}

impl compute::Host for StepState {
    async fn start(
        &mut self,
        vm: String,
        _plugin_key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        self.require_vm("start", &vm)?;
        let key = self.effect_key("start", &vm);
        let services = self.services.clone();
        Ok(bounded(self.host_call_timeout, "compute", services.start(&vm, &key)).await)
    }

    async fn stop(
        &mut self,
        vm: String,
        _plugin_key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        self.require_vm("stop", &vm)?;
        let key = self.effect_key("stop", &vm);
        let services = self.services.clone();
        Ok(bounded(self.host_call_timeout, "compute", services.stop(&vm, &key)).await)
    }

    async fn status(&mut self, vm: String) -> wasmtime::Result<Result<compute::VmState, Error>> {
        self.require_vm("read the status of", &vm)?;
        let services = self.services.clone();
        Ok(bounded(self.host_call_timeout, "compute", services.status(&vm)).await)
    }
}

impl network::Host for StepState {
    async fn assignments(
        &mut self,
        vm: String,
    ) -> wasmtime::Result<Result<Vec<network::Assignment>, Error>> {
        self.require_vm("read the addresses of", &vm)?;
        let services = self.services.clone();
        Ok(bounded(self.host_call_timeout, "network", services.assignments(&vm)).await)
    }
}

impl probe::Host for StepState {
    async fn tcp(
        &mut self,
        address: String,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<(), Error>> {
        if !self.grants.tcp(&address) {
            return Err(self.deny("connect to", &format!("`{address}`")));
        }
        let limit = Duration::from_millis(timeout_ms.into()).min(self.host_call_timeout);
        Ok(self.services.tcp(&address, limit).await)
    }

    async fn http_get(
        &mut self,
        url: String,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<u16, Error>> {
        if !self.grants.http(&url) {
            return Err(self.deny("GET", &format!("`{url}`")));
        }
        let limit = Duration::from_millis(timeout_ms.into()).min(self.host_call_timeout);
        Ok(self.services.http_get(&url, limit).await)
    }
}

impl http::Host for StepState {
    async fn send(
        &mut self,
        request: http::Request,
    ) -> wasmtime::Result<Result<http::Response, Error>> {
        if !self.grants.http_request(&request.method, &request.url) {
            return Err(self.deny(
                &request.method.to_ascii_uppercase(),
                &format!("`{}`", request.url),
            ));
        }
        let limit = Duration::from_millis(request.timeout_ms.into()).min(self.host_call_timeout);
        let req = crate::http::Request {
            method: request.method,
            url: request.url,
            headers: request
                .headers
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect(),
            body: request.body,
        };
        Ok(self
            .services
            .http_send(&req, limit)
            .await
            .map(|a| http::Response {
                status: a.status,
                headers: a
                    .headers
                    .into_iter()
                    .map(|(name, value)| http::Header { name, value })
                    .collect(),
                body: a.body,
                truncated: a.truncated,
            }))
    }
}

impl approval::Host for StepState {
    async fn request(
        &mut self,
        message: String,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<String, Error>> {
        let services = self.services.clone();
        let limit = Duration::from_millis(timeout_ms);
        Ok(
            match tokio::time::timeout(limit, services.approve(&message)).await {
                Ok(result) => result,
                Err(_) => Err(Error::Timeout(format!(
                    "no approval within {} s",
                    limit.as_secs()
                ))),
            },
        )
    }
}

impl clock::Host for StepState {
    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(self.services.now_ms())
    }

    /// Sleeping is bounded by the step's own deadline: the step's timeout cancels it.
    async fn sleep(&mut self, ms: u64) -> wasmtime::Result<Result<(), Error>> {
        Ok(self.services.sleep(ms).await)
    }
}
