//! `plan validate --online`: what the inventory says of `libvirt` sites, checked against the
//! hosts — every host answers, every VM's domain is on one of them with its disks there, and
//! every NIC's network exists on the domain's host. Findings are diagnostics on the text the
//! user wrote, like offline validation's.

use std::sync::Arc;

use lifeboat_plan::inventory::ComputeDriver;
use lifeboat_plan::{Diagnostic, Inventory, Rule};

use super::{Host, RpcError};

/// The findings, empty when the world agrees with the inventory. Blocking: run it off an
/// async runtime's threads.
pub fn check(inventory: &Inventory) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (site_name, site) in inventory.sites.iter() {
        if site.compute.value != ComputeDriver::Libvirt {
            continue;
        }
        let mut hosts = Vec::new();
        for uri in &site.hosts {
            match Host::open(&uri.value) {
                Ok(h) => hosts.push(Arc::new(h)),
                Err(e) => out.push(Diagnostic::error(
                    Rule::HostUnreachable,
                    uri.span,
                    format!("libvirt host `{}` of site `{site_name}`: {e}", uri.value),
                    "does not answer",
                )),
            }
        }
        if hosts.is_empty() {
            continue;
        }
        for (vm_name, vm) in inventory
            .vms
            .iter()
            .filter(|(_, v)| v.site.value == site_name)
        {
            let (domain, span) = match &vm.domain {
                Some(d) => (d.value.clone(), d.span),
                None => (vm_name.to_string(), vm.site.span),
            };
            let found = match super::find(&hosts, &domain) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    out.push(Diagnostic::error(
                        Rule::NotFoundOnline,
                        span,
                        format!(
                            "VM `{vm_name}`: no host of site `{site_name}` has domain `{domain}`"
                        ),
                        "no such domain",
                    ));
                    continue;
                }
                Err(e) => {
                    out.push(lookup_failed(vm_name, &domain, span, &e));
                    continue;
                }
            };
            if found.spec.disks.is_empty() {
                out.push(Diagnostic::error(
                    Rule::NotFoundOnline,
                    span,
                    format!("VM `{vm_name}`: domain `{domain}` has no disk backed by a file or a block device"),
                    "no disks",
                ));
            }
            for d in &found.spec.disks {
                // The hosts are this machine's (remote transports are refused), so its files
                // are here.
                if !d.source.exists() {
                    out.push(Diagnostic::error(
                        Rule::NotFoundOnline,
                        span,
                        format!(
                            "VM `{vm_name}`: disk {} of domain `{domain}` is {}, which does not exist",
                            d.target,
                            d.source.display()
                        ),
                        "a disk is missing",
                    ));
                }
            }
            let networks: Vec<String> = match found.host.networks() {
                Ok(n) => n.into_iter().map(|n| n.name).collect(),
                Err(e) => {
                    out.push(lookup_failed(vm_name, &domain, span, &e));
                    continue;
                }
            };
            for (i, nic) in found.spec.nics.iter().enumerate() {
                if let Some(net) = &nic.network
                    && !networks.contains(net)
                {
                    out.push(Diagnostic::error(
                        Rule::NotFoundOnline,
                        span,
                        format!(
                            "VM `{vm_name}`: nic{i} of domain `{domain}` is attached to network `{net}`, which host `{}` does not have",
                            found.host.uri
                        ),
                        "a network is missing",
                    ));
                }
            }
        }
    }
    out
}

fn lookup_failed(vm: &str, domain: &str, span: lifeboat_plan::Span, e: &RpcError) -> Diagnostic {
    Diagnostic::error(
        Rule::HostUnreachable,
        span,
        format!("VM `{vm}`: cannot look up domain `{domain}`: {e}"),
        "libvirt failed",
    )
}
