//! The driver commands use: every VM Lifeboat starts, stops or finds goes through it, and it
//! hands each to the side that knows it — a libvirt domain to `libvirt::driver`, anything else
//! (a process, a QEMU machine) to the `ProcessDriver`.

use std::sync::Arc;
use std::time::Duration;

use crate::driver::{Compute, ComputeError, DomainLaunch, Handle, Launch, ProcessDriver};

/// The driver a command uses: VMs that are libvirt domains are libvirt's, every other VM is a
/// process of this machine (`ProcessDriver`, QEMU included).
#[derive(Debug, Default)]
pub struct Driver {
    process: ProcessDriver,
    libvirt: crate::libvirt::driver::LibvirtDriver,
}

impl Driver {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

#[async_trait::async_trait]
impl Compute for Driver {
    async fn start(&self, launch: &Launch) -> Result<Handle, ComputeError> {
        match &launch.domain {
            Some(d) => self.libvirt.start(launch, d).await,
            None => self.process.start(launch).await,
        }
    }

    async fn stop(&self, vm: &Handle, grace: Duration) -> Result<(), ComputeError> {
        match &vm.domain {
            Some(d) => self.libvirt.stop(vm, d, grace).await,
            None => self.process.stop(vm, grace).await,
        }
    }

    async fn pause(&self, vm: &Handle) -> Result<(), ComputeError> {
        match &vm.domain {
            Some(d) => self.libvirt.pause(vm, d).await,
            None => self.process.pause(vm).await,
        }
    }

    async fn resume(&self, vm: &Handle) -> Result<(), ComputeError> {
        match &vm.domain {
            Some(d) => self.libvirt.resume(vm, d).await,
            None => self.process.resume(vm).await,
        }
    }

    async fn running(&self, vm: &Handle) -> bool {
        match &vm.domain {
            Some(d) => self.libvirt.running(vm, d).await,
            None => self.process.running(vm).await,
        }
    }

    async fn find(&self, vm: &str, key: &str) -> Option<Handle> {
        // A libvirt copy is found by its start itself (its description carries the key).
        self.process.find(vm, key).await
    }

    async fn locate(&self, launches: &[Launch]) -> Vec<Handle> {
        let (domains, processes): (Vec<&Launch>, Vec<&Launch>) =
            launches.iter().partition(|l| l.domain.is_some());
        let domains: Vec<(&Launch, &DomainLaunch)> = domains
            .into_iter()
            .filter_map(|l| Some((l, l.domain.as_ref()?)))
            .collect();
        let processes: Vec<Launch> = processes.into_iter().cloned().collect();
        let mut found = self.libvirt.locate(&domains).await;
        if !processes.is_empty() {
            found.extend(self.process.locate(&processes).await);
        }
        found
    }
}
