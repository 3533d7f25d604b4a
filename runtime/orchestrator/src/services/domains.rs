//! A run's VMs at a `libvirt` target: each a copy of its source domain, defined from the XML
//! its point keeps (the repository alone describes the VM), on qcow2 overlays over the restored
//! images (or an instant boot's own images), with its NICs on the mapped libvirt networks and its addresses reserved
//! there. A drill's copies boot on isolated networks the run defines, with new MACs; a
//! failover's keep their MACs. A failover's copy is named by its source site's `target_name`
//! (`{domain}-dr` by default), a drill's `{domain}-drill`; at the VM's home site (a failback) it
//! takes its own domain's name back, replacing the shut-off definition.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use lifeboat_compute::driver::{DomainLaunch, Launch};
use lifeboat_compute::libvirt::copy::{self, CopyNic, CopySpec};
use lifeboat_compute::libvirt::{DomainSpec, Host};
use lifeboat_plan::inventory::ComputeDriver;
use lifeboat_plugin_host::wit::Error;

use super::{RunServices, drill_overlay, other, overlay};
use crate::journal::Event;

/// The source domain a point keeps for a VM: its name and its XML.
pub fn domain_of_point(definition: &serde_json::Value) -> Option<(String, String)> {
    let l = definition.get("libvirt")?;
    Some((
        l.get("domain")?.as_str()?.to_string(),
        l.get("xml")?.as_str()?.to_string(),
    ))
}

impl RunServices {
    pub(crate) fn libvirt_target(&self) -> bool {
        self.inventory
            .sites
            .get(&self.target_site)
            .is_some_and(|s| s.compute.value == ComputeDriver::Libvirt)
    }

    fn target_hosts(&self) -> Vec<String> {
        self.inventory
            .sites
            .get(&self.target_site)
            .map(|s| s.hosts.iter().map(|h| h.value.clone()).collect())
            .unwrap_or_default()
    }

    /// Starts VM `vm`'s copy (see the module's comment). A start its runtime died in is
    /// finished: the copy it defined is adopted by its key.
    pub(super) async fn start_domain(&self, vm: &str, key: &str) -> Result<(), Error> {
        let group = self.group_of(vm)?;
        let source_site = group.source_site.clone();
        let point = self
            .choose(&group.name.clone(), &self.default_point)
            .await?;
        let (domain, source_xml) = point
            .vms
            .iter()
            .find(|v| v.name == vm)
            .and_then(|v| domain_of_point(&v.definition))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "VM `{vm}`: point {}/{} keeps no libvirt domain to define a copy from (was it taken at a libvirt site?)",
                    point.group, point.seq
                ))
            })?;
        let spec = lifeboat_compute::libvirt::domain::parse(&source_xml)
            .map_err(|e| other(format!("VM `{vm}`: the point's domain XML: {e}")))?;
        // A drill's copy writes into overlays (the restored images stay the point); so does a
        // failover's, for another reason: libvirt keeps checkpoints only in qcow2 images, and
        // the copy, once reprotected, is cut incrementally through them like any domain.
        // An instant boot's images are the run's own qcow2 images: the copy runs on them.
        let instant = self.boots_instantly(vm);
        let mut disks: HashMap<String, PathBuf> = HashMap::new();
        for (name, path) in self.disk_paths(vm)? {
            let restored = std::path::Path::new(&path);
            let image = if instant {
                path.clone()
            } else if self.drill {
                drill_overlay(restored).await?
            } else {
                overlay(restored, "run").await?
            };
            disks.insert(name, PathBuf::from(image));
        }
        let nics = self.copy_nics(vm, &source_site, &spec).await?;
        // Home again (a failback), the VM takes its own domain's name back.
        let home = self
            .home_domains
            .get(vm)
            .filter(|(site, _)| *site == self.target_site && !self.drill);
        let rule = self
            .inventory
            .sites
            .get(&source_site)
            .and_then(|s| s.target_name.as_ref())
            .map(|r| r.value.as_str());
        let (name, replaces) = match home {
            Some((_, home)) => (home.clone(), true),
            None if self.drill => (format!("{domain}-drill"), false),
            None => (
                lifeboat_plan::inventory::copy_name(rule, vm, &domain),
                false,
            ),
        };
        let log = self.run_dir.join("logs").join(format!("{vm}.log"));
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| other(format!("cannot create {}: {e}", dir.display())))?;
        }
        let xml = copy::copy_xml(
            &source_xml,
            &CopySpec {
                name: name.clone(),
                disks,
                nics,
                console: log.clone(),
                key: key.to_string(),
                hold_on_errors: instant,
            },
        )
        .map_err(|e| other(format!("VM `{vm}`: {e}")))?;
        // A drill's addresses are on its own network, which nothing else reaches.
        if !self.drill {
            self.check_addresses_free(vm, None).await?;
        }
        self.record(Event::VmStarting {
            vm: vm.to_string(),
            key: key.to_string(),
            domain: Some(name.clone()),
        })?;
        let launch = Launch {
            vm: vm.to_string(),
            argv: Vec::new(),
            dir: self.base.clone(),
            log: log.clone(),
            key: key.to_string(),
            netns: None,
            domain: Some(DomainLaunch {
                hosts: self.target_hosts(),
                name,
                xml: Some(xml),
                replaces,
            }),
        };
        let handle = self.driver.start(&launch).await.map_err(other)?;
        self.record(Event::VmStarted {
            vm: vm.to_string(),
            key: key.to_string(),
            pid: handle.pid,
            started: handle.started,
            argv: Vec::new(),
            log: log.display().to_string(),
            domain: handle.domain.clone(),
        })?;
        tracing::info!(domain = ?handle.domain, "started");
        if instant {
            self.begin_hydration(vm);
        }
        Ok(())
    }

    /// Where each NIC of the source domain goes, with its MAC: in a drill, the run's isolated
    /// network of the NIC's test subnet and a new MAC; else the network the plan maps the
    /// source's to, the same MAC, and the run's address reserved for it there.
    async fn copy_nics(
        &self,
        vm: &str,
        source_site: &str,
        spec: &DomainSpec,
    ) -> Result<Vec<CopyNic>, Error> {
        let drill_networks = if self.drill {
            self.ensure_drill_networks().await?
        } else {
            BTreeMap::new()
        };
        let addresses = self.addresses(vm);
        let mut out = Vec::new();
        for (i, nic) in spec.nics.iter().enumerate() {
            let address = addresses.iter().find(|a| a.nic == i);
            if self.drill {
                let cidr = address.map(|a| a.cidr.to_string());
                let network = drill_networks
                    .get(&cidr)
                    .or_else(|| drill_networks.values().next())
                    .cloned()
                    .ok_or_else(|| other("the drill has no network"))?;
                out.push(CopyNic {
                    network,
                    mac: copy::drill_mac(&self.run, vm, i),
                });
                continue;
            }
            let source = nic.network.as_ref().or(nic.bridge.as_ref());
            let mapped = source
                .and_then(|n| self.network_map.get(&format!("{source_site}/{n}")))
                .cloned()
                .or_else(|| {
                    address.map(|a| {
                        a.network
                            .rsplit_once('/')
                            .map_or(a.network.clone(), |(_, n)| n.to_string())
                    })
                })
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "VM `{vm}`: NIC {i} is on {} at site `{source_site}`, which the plan's [network] map does not map to a network of site `{}`",
                        nic.attachment(),
                        self.target_site
                    ))
                })?;
            let mac = nic
                .mac
                .clone()
                .unwrap_or_else(|| copy::drill_mac(&self.run, vm, i));
            if let Some(a) = address {
                self.reserve(&mapped, &mac, a.ip).await?;
            }
            out.push(CopyNic {
                network: mapped,
                mac,
            });
        }
        Ok(out)
    }

    /// Reserves `ip` for `mac` in libvirt network `network` on every host of the target that
    /// has it (the copy may be placed on any of them), journaled first.
    async fn reserve(&self, network: &str, mac: &str, ip: IpAddr) -> Result<(), Error> {
        for host in self.connect_target().await? {
            let (h, n) = (host.clone(), network.to_string());
            let net = tokio::task::spawn_blocking(move || h.network(&n))
                .await
                .map_err(other)?;
            let net = match net {
                Ok(net) => net,
                Err(e) if e.is_no_network() => continue,
                Err(e) => return Err(other(format!("libvirt host `{}`: {e}", host.uri))),
            };
            self.record(Event::AddressReserved {
                host: host.uri.clone(),
                network: network.to_string(),
                mac: mac.to_string(),
                ip: ip.to_string(),
            })?;
            let (mac, ip) = (mac.to_string(), ip.to_string());
            tokio::task::spawn_blocking(move || {
                // Made again on a resumed start: the old one goes first.
                let _ = host.unreserve(&net, &mac, &ip);
                host.reserve(&net, &mac, &ip).map_err(|e| {
                    format!("libvirt host `{}`: reserving {ip} for {mac}: {e}", host.uri)
                })
            })
            .await
            .map_err(other)?
            .map_err(other)?;
        }
        Ok(())
    }

    async fn connect_target(&self) -> Result<Vec<Arc<Host>>, Error> {
        lifeboat_compute::libvirt::connect_all(&self.target_hosts())
            .await
            .map_err(other)
    }

    /// A libvirt drill's isolated networks, one per test subnet its copies have addresses in
    /// (or one with no addresses), on every host of the target: defined once per run, each
    /// journaled before it is made so cleanup finds it whatever happens next. Keyed by the
    /// subnet (`None`: the network without addresses).
    async fn ensure_drill_networks(&self) -> Result<BTreeMap<Option<String>, String>, Error> {
        let mut cidrs: BTreeMap<Option<String>, Vec<(String, Ipv4Addr)>> = BTreeMap::new();
        for a in &self.assignments {
            if let IpAddr::V4(ip) = a.ip {
                cidrs
                    .entry(Some(a.cidr.to_string()))
                    .or_default()
                    .push((copy::drill_mac(&self.run, &a.vm, a.nic), ip));
            }
        }
        if cidrs.is_empty() {
            cidrs.insert(None, Vec::new());
        }
        let mut names = BTreeMap::new();
        let mut wanted = Vec::new();
        for (i, (cidr, hosts)) in cidrs.iter().enumerate() {
            let (name, bridge) = copy::drill_network_name(&self.run, i);
            let subnet = match cidr {
                Some(c) => {
                    let net: ipnet::Ipv4Net = c.parse().map_err(other)?;
                    let gateway =
                        copy::gateway(net.network(), net.prefix_len()).ok_or_else(|| {
                            other(format!("test subnet {c} is too small for a drill network"))
                        })?;
                    Some((net.network(), net.prefix_len(), gateway))
                }
                None => None,
            };
            wanted.push((
                name.clone(),
                copy::isolated_network_xml(&name, &bridge, subnet, hosts),
            ));
            names.insert(cidr.clone(), name);
        }
        let mut ready = self.drill_networks_ready.lock().await;
        if *ready {
            return Ok(names);
        }
        for host in self.connect_target().await? {
            for (name, xml) in &wanted {
                let recorded = self.with_events(|events| {
                    events.iter().any(|(_, e)| {
                        matches!(e, Event::NetworkDefined { host: h, network } if *h == host.uri && network == name)
                    })
                })?;
                if !recorded {
                    self.record(Event::NetworkDefined {
                        host: host.uri.clone(),
                        network: name.clone(),
                    })?;
                }
                let (h, name, xml) = (host.clone(), name.clone(), xml.clone());
                tokio::task::spawn_blocking(move || match h.network(&name) {
                    Ok(_) => Ok(()),
                    Err(e) if e.is_no_network() => h.define_network(&xml).map(|_| ()),
                    Err(e) => Err(e),
                })
                .await
                .map_err(other)?
                .map_err(|e| other(format!("libvirt host `{}`: drill network: {e}", host.uri)))?;
            }
        }
        *ready = true;
        Ok(names)
    }
}

/// Cleanup's part at a libvirt target: the drill networks a run defined are removed and the
/// reservations it made dropped (after its copies are gone). Returns what was released, as
/// `network on host`.
pub(crate) async fn release_networks(events: &[Event]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut hosts: HashMap<String, Arc<Host>> = HashMap::new();
    for e in events {
        let (uri, network) = match e {
            Event::NetworkDefined { host, network }
            | Event::AddressReserved { host, network, .. } => (host.clone(), network.clone()),
            _ => continue,
        };
        if !hosts.contains_key(&uri) {
            let connected = lifeboat_compute::libvirt::connect_all(std::slice::from_ref(&uri))
                .await
                .map_err(|e| e.to_string())?;
            if let Some(h) = connected.into_iter().next() {
                hosts.insert(uri.clone(), h);
            }
        }
        let Some(host) = hosts.get(&uri).cloned() else {
            continue;
        };
        let what = e.clone();
        let n = network.clone();
        let done = tokio::task::spawn_blocking(move || {
            let net = match host.network(&n) {
                Ok(net) => net,
                Err(e) if e.is_no_network() => return Ok(()),
                Err(e) => return Err(e),
            };
            match what {
                Event::AddressReserved { mac, ip, .. } => {
                    // Gone already (a cleanup before this one did it, or someone by hand): a
                    // reservation left over holds an address, it breaks nothing.
                    if let Err(e) = host.unreserve(&net, &mac, &ip) {
                        tracing::warn!(network = %n, %mac, %ip, error = %e, "a DHCP reservation was not dropped");
                    }
                    Ok(())
                }
                _ => host.remove_network(&net),
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        done.map_err(|e| format!("libvirt network `{network}` on {uri}: {e}"))?;
        let entry = format!("{network} on {uri}");
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    Ok(out)
}
