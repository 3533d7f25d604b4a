//! VMs that are libvirt domains, driven as the `Compute` trait asks: a run's copy is defined
//! from its XML on the host of the site with the most free memory that fits it and started; a
//! source domain is found on its site's hosts; stopping asks the guest to power off (ACPI) and
//! pulls the plug past the grace; a copy a run defined is undefined when it stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::rpc::{DomainRef, RpcError};
use super::{DomainState, Host, UNDEFINE_CHECKPOINTS_METADATA};
use crate::driver::{ComputeError, Domain, DomainLaunch, Handle, Launch};

/// `VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | _SNAPSHOTS_METADATA | _NVRAM`, with checkpoints: a copy
/// leaves nothing of itself behind.
const UNDEFINE_ALL: u32 = 1 | 2 | 4 | UNDEFINE_CHECKPOINTS_METADATA;
/// The same for a home domain a failback's copy replaces, its UEFI variables kept
/// (`VIR_DOMAIN_UNDEFINE_KEEP_NVRAM`).
const UNDEFINE_REPLACED: u32 = 1 | 2 | 8 | UNDEFINE_CHECKPOINTS_METADATA;

/// The libvirt side of the compute driver: one connection per host, opened when first needed.
#[derive(Debug, Default)]
pub struct LibvirtDriver {
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

/// Which of `hosts` (URI, free memory in bytes, CPUs) a VM of `memory_kib` and `vcpus` goes
/// to: the one with the most free memory that fits it, or why none does (each host's free
/// memory and CPUs named).
pub fn place(
    hosts: &[(String, u64, u32)],
    vm: &str,
    memory_kib: u64,
    vcpus: u32,
) -> Result<usize, String> {
    hosts
        .iter()
        .enumerate()
        .filter(|(_, (_, free, cpus))| *free >= memory_kib * 1024 && *cpus >= vcpus)
        .max_by_key(|(_, (_, free, _))| *free)
        .map(|(i, _)| i)
        .ok_or_else(|| {
            let seen: Vec<String> = hosts
                .iter()
                .map(|(uri, free, cpus)| format!("{uri}: {} MiB free, {cpus} CPUs", free / (1 << 20)))
                .collect();
            format!(
                "VM `{vm}` needs {} MiB of memory and {vcpus} CPU(s); no host of the site has them ({})",
                memory_kib / 1024,
                seen.join("; ")
            )
        })
}

/// Each of `hosts`' free memory (bytes) and CPUs, for `place`.
pub fn capacity(hosts: &[Arc<Host>]) -> Result<Vec<(String, u64, u32)>, RpcError> {
    hosts
        .iter()
        .map(|h| Ok((h.uri.clone(), h.free_memory()?, h.node_info()?.1)))
        .collect()
}

impl LibvirtDriver {
    /// The connection to `uri`, opened once (off the async threads: the protocol is blocking).
    async fn host(&self, vm: &str, uri: &str) -> Result<Arc<Host>, ComputeError> {
        if let Some(h) = self.hosts.lock().ok().and_then(|m| m.get(uri).cloned()) {
            return Ok(h);
        }
        let u = uri.to_string();
        let host = blocking(vm, move || Host::open(&u).map(Arc::new)).await?;
        if let Ok(mut m) = self.hosts.lock() {
            m.insert(uri.to_string(), host.clone());
        }
        Ok(host)
    }

    /// A connection that failed is dropped, so the next call opens a new one (the daemon may
    /// have restarted).
    fn forget(&self, uri: &str) {
        if let Ok(mut m) = self.hosts.lock() {
            m.remove(uri);
        }
    }

    pub async fn start(&self, launch: &Launch, d: &DomainLaunch) -> Result<Handle, ComputeError> {
        let vm = launch.vm.as_str();
        let Some(xml) = d.xml.clone() else {
            return self.start_source(launch, d).await;
        };
        let spec = super::domain::parse(&xml).map_err(|e| fail(vm, e))?;
        let mut hosts = Vec::new();
        for uri in &d.hosts {
            hosts.push(self.host(vm, uri).await?);
        }
        // A copy this start defined before its runtime died is adopted; any other domain of
        // that name is not Lifeboat's to take over.
        let (name, key) = (d.name.clone(), launch.key.clone());
        let found = {
            let hosts = hosts.clone();
            blocking(vm, move || {
                for h in &hosts {
                    match h.lookup(&name) {
                        Ok(dom) => {
                            let xml = h.xml(&dom, super::XML_INACTIVE)?;
                            return Ok(Some((h.clone(), dom, xml)));
                        }
                        Err(e) if e.is_no_domain() => continue,
                        Err(e) => return Err(e),
                    }
                }
                Ok(None)
            })
            .await?
        };
        let (host, dom) = match found {
            Some((host, dom, existing)) => {
                if existing.contains(&super::copy::key_mark(&key)) {
                    (host, dom)
                } else {
                    let (h, d2) = (host.clone(), dom.clone());
                    let state = blocking(vm, move || h.state(&d2)).await?;
                    // An older run's copy, or the VM's home domain a failback returns to, may
                    // make way once it is shut off; nothing else.
                    let replaceable = d.replaces || super::copy::is_copy(&existing);
                    if !replaceable || state != DomainState::ShutOff {
                        return Err(fail(
                            vm,
                            format!(
                                "a domain named `{}` is already defined on {} ({}) and is not this run's copy: rename or remove it",
                                d.name,
                                host.uri,
                                state.as_str()
                            ),
                        ));
                    }
                    // Its disk files stay where they are.
                    tracing::info!(vm, domain = %d.name, host = %host.uri, "replacing a shut-off domain of that name");
                    let h = host.clone();
                    blocking(vm, move || h.undefine(&dom, UNDEFINE_REPLACED)).await?;
                    self.define_placed(vm, &hosts, &spec, xml).await?
                }
            }
            None => self.define_placed(vm, &hosts, &spec, xml).await?,
        };
        let h = host.clone();
        let d2 = dom.clone();
        let state = blocking(vm, move || h.state(&d2)).await?;
        if !matches!(state, DomainState::Running | DomainState::Paused) {
            let h = host.clone();
            let d2 = dom.clone();
            blocking(vm, move || h.start(&d2)).await?;
        }
        Ok(handle(vm, &launch.key, &host.uri, &d.name, true))
    }

    /// Defines `xml` on the host with the most free memory that fits it.
    async fn define_placed(
        &self,
        vm: &str,
        hosts: &[Arc<Host>],
        spec: &super::DomainSpec,
        xml: String,
    ) -> Result<(Arc<Host>, DomainRef), ComputeError> {
        let (memory, vcpus) = (spec.memory_kib, spec.vcpus);
        let candidates = {
            let hosts = hosts.to_vec();
            blocking(vm, move || capacity(&hosts)).await?
        };
        let at =
            place(&candidates, vm, memory, vcpus).map_err(|why| ComputeError::Capacity { why })?;
        let host = hosts[at].clone();
        let h = host.clone();
        let dom = blocking(vm, move || h.define(&xml)).await?;
        Ok((host, dom))
    }

    /// Starts a source domain again where it is defined (a cleanup undoing a planned
    /// failover's hand-over).
    async fn start_source(
        &self,
        launch: &Launch,
        d: &DomainLaunch,
    ) -> Result<Handle, ComputeError> {
        let vm = launch.vm.as_str();
        for uri in &d.hosts {
            let host = self.host(vm, uri).await?;
            let Some(dom) = self.lookup(vm, &host, &d.name).await? else {
                continue;
            };
            if !self.running_on(vm, &host, &dom).await {
                blocking(vm, move || host.start(&dom)).await?;
            }
            return Ok(handle(vm, &launch.key, uri, &d.name, false));
        }
        Err(fail(
            vm,
            format!("no host ({}) has domain `{}`", d.hosts.join(", "), d.name),
        ))
    }

    pub async fn stop(&self, vm: &Handle, d: &Domain, grace: Duration) -> Result<(), ComputeError> {
        let host = self.host(&vm.vm, &d.host).await?;
        let Some(dom) = self.lookup(&vm.vm, &host, &d.name).await? else {
            return Ok(());
        };
        // A copy is the run's only while it carries the run's start key: a domain someone
        // defined under that name since (or never the run's) is left alone.
        if d.owned && !vm.key.is_empty() {
            let (h, d2) = (host.clone(), dom.clone());
            let xml = blocking(&vm.vm, move || h.xml(&d2, super::XML_INACTIVE)).await?;
            if !xml.contains(&super::copy::key_mark(&vm.key)) {
                tracing::warn!(vm = %vm.vm, domain = %d.name, host = %d.host, "a domain of the copy's name is not this run's; left alone");
                return Ok(());
            }
        }
        let deadline = Instant::now() + grace;
        let mut asked = false;
        loop {
            let (h, d2) = (host.clone(), dom.clone());
            let state = blocking(&vm.vm, move || h.state(&d2)).await?;
            if matches!(state, DomainState::ShutOff) {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(vm = %vm.vm, domain = %d.name, "the guest did not power off in time; destroying the domain");
                let (h, d2) = (host.clone(), dom.clone());
                match blocking(&vm.vm, move || h.destroy(&d2)).await {
                    Ok(()) => break,
                    // It went off meanwhile.
                    Err(_) if !self.running_on(&vm.vm, &host, &dom).await => break,
                    Err(e) => return Err(e),
                }
            }
            if !asked {
                // A paused guest cannot act on the power button.
                if matches!(state, DomainState::Paused) {
                    let (h, d2) = (host.clone(), dom.clone());
                    let _ = blocking(&vm.vm, move || h.resume(&d2)).await;
                }
                let (h, d2) = (host.clone(), dom.clone());
                if let Err(e) = blocking(&vm.vm, move || h.shutdown(&d2)).await {
                    tracing::warn!(vm = %vm.vm, error = %e, "ACPI shutdown not sent");
                }
                asked = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if d.owned {
            let (h, d2) = (host.clone(), dom.clone());
            match blocking(&vm.vm, move || h.undefine(&d2, UNDEFINE_ALL)).await {
                Ok(()) => {}
                Err(e) if self.lookup(&vm.vm, &host, &d.name).await?.is_none() => {
                    tracing::debug!(error = %e, "undefined meanwhile");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub async fn pause(&self, vm: &Handle, d: &Domain) -> Result<(), ComputeError> {
        let host = self.host(&vm.vm, &d.host).await?;
        let dom = self
            .lookup(&vm.vm, &host, &d.name)
            .await?
            .ok_or_else(|| fail(&vm.vm, format!("domain `{}` is gone", d.name)))?;
        blocking(&vm.vm, move || host.suspend(&dom)).await
    }

    pub async fn resume(&self, vm: &Handle, d: &Domain) -> Result<(), ComputeError> {
        let host = self.host(&vm.vm, &d.host).await?;
        let dom = self
            .lookup(&vm.vm, &host, &d.name)
            .await?
            .ok_or_else(|| fail(&vm.vm, format!("domain `{}` is gone", d.name)))?;
        blocking(&vm.vm, move || host.resume(&dom)).await
    }

    /// Whether the domain runs (paused counts: it has not stopped). A host that does not answer
    /// is not taken as the domain having stopped: the run waits on its probe instead.
    pub async fn running(&self, vm: &Handle, d: &Domain) -> bool {
        let Ok(host) = self.host(&vm.vm, &d.host).await else {
            return true;
        };
        match self.lookup(&vm.vm, &host, &d.name).await {
            Ok(Some(dom)) => self.running_on(&vm.vm, &host, &dom).await,
            Ok(None) => false,
            Err(_) => {
                self.forget(&d.host);
                true
            }
        }
    }

    async fn running_on(&self, vm: &str, host: &Arc<Host>, dom: &DomainRef) -> bool {
        let (h, d) = (host.clone(), dom.clone());
        match blocking(vm, move || h.state(&d)).await {
            // 6: crashed.
            Ok(s) => !matches!(s, DomainState::ShutOff | DomainState::Other(6)),
            Err(_) => true,
        }
    }

    async fn lookup(
        &self,
        vm: &str,
        host: &Arc<Host>,
        name: &str,
    ) -> Result<Option<DomainRef>, ComputeError> {
        let (h, n) = (host.clone(), name.to_string());
        let found = tokio::task::spawn_blocking(move || h.lookup(&n))
            .await
            .map_err(|e| fail(vm, e))?;
        match found {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.is_no_domain() => Ok(None),
            Err(e) => {
                self.forget(&host.uri);
                Err(fail(vm, e))
            }
        }
    }

    /// The running source domains `launches` name, on their sites' hosts (a host that does not
    /// answer hides its domains: a planned failover then says the VM still answers).
    pub async fn locate(&self, launches: &[(&Launch, &DomainLaunch)]) -> Vec<Handle> {
        let mut found = Vec::new();
        for (launch, d) in launches {
            for uri in &d.hosts {
                let Ok(host) = self.host(&launch.vm, uri).await else {
                    continue;
                };
                if let Ok(Some(dom)) = self.lookup(&launch.vm, &host, &d.name).await
                    && self.running_on(&launch.vm, &host, &dom).await
                {
                    found.push(handle(&launch.vm, "", uri, &d.name, false));
                    break;
                }
            }
        }
        found
    }
}

/// A handle on domain `name` of host `uri`, with its QEMU's pid where the host is this machine.
fn handle(vm: &str, key: &str, uri: &str, name: &str, owned: bool) -> Handle {
    let pid = local_pid(uri, name).unwrap_or(0);
    Handle {
        vm: vm.to_string(),
        pid,
        started: (pid != 0)
            .then(|| crate::driver::process_start_time(pid))
            .flatten(),
        key: key.to_string(),
        domain: Some(Domain {
            host: uri.to_string(),
            name: name.to_string(),
            owned,
        }),
    }
}

/// The pid of the QEMU running domain `name` for the libvirt daemon at `uri`, from the pid file
/// beside the daemon's socket, when that daemon runs on this machine.
fn local_pid(uri: &str, name: &str) -> Option<u32> {
    let (super::rpc::Endpoint::Local(socket), _) = super::rpc::endpoint(uri).ok()? else {
        return None;
    };
    let file = socket.parent()?.join("qemu").join(format!("{name}.pid"));
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn fail(vm: &str, why: impl std::fmt::Display) -> ComputeError {
    ComputeError::Libvirt {
        vm: vm.to_string(),
        why: why.to_string(),
    }
}

/// Runs a libvirt call off the async threads.
async fn blocking<T: Send + 'static>(
    vm: &str,
    f: impl FnOnce() -> Result<T, RpcError> + Send + 'static,
) -> Result<T, ComputeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| fail(vm, e))?
        .map_err(|e| fail(vm, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_copy_goes_to_the_host_with_the_most_free_memory_that_fits_it() {
        let gib = 1u64 << 30;
        let hosts = vec![
            ("qemu:///a".to_string(), 4 * gib, 8),
            ("qemu:///b".to_string(), 16 * gib, 2),
            ("qemu:///c".to_string(), 8 * gib, 8),
        ];
        assert_eq!(place(&hosts, "vm", 1024 * 1024, 1).unwrap(), 1);
        // Four CPUs: b has the memory but not the CPUs.
        assert_eq!(place(&hosts, "vm", 1024 * 1024, 4).unwrap(), 2);
        let e = place(&hosts, "big", 32 * 1024 * 1024, 1).unwrap_err();
        assert!(e.contains("`big` needs 32768 MiB"), "{e}");
        assert!(e.contains("qemu:///b: 16384 MiB free, 2 CPUs"), "{e}");
    }
}
