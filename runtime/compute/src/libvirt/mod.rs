//! VMs that libvirt runs, on any host of a site: the domains there (`discover`), what each is
//! made of (`domain`), and the calls a cut, a failover and a drill make (`Host`). libvirt is
//! reached through its own remote protocol (`rpc`), not its C library.

pub mod backup;
pub mod copy;
pub mod domain;
pub mod driver;
pub mod online;
pub mod rpc;

use rpc::{Connection, DomainRef, NetworkRef, Proc, RpcError, Xdr};

pub use domain::{DomainDisk, DomainNic, DomainSpec};

/// libvirt's domain states (`virDomainState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainState {
    Running,
    Paused,
    ShutOff,
    /// Blocked, shutting down, crashed, suspended by the guest…
    Other(i32),
}

impl DomainState {
    fn from_code(code: i32) -> Self {
        match code {
            1 => Self::Running,
            3 => Self::Paused,
            5 => Self::ShutOff,
            other => Self::Other(other),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::ShutOff => "shut off",
            Self::Other(_) => "other",
        }
    }
}

/// `VIR_DOMAIN_XML_INACTIVE`: the persistent definition, not the running one.
pub const XML_INACTIVE: u32 = 2;
/// `VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA`: a domain with checkpoints can be undefined.
pub const UNDEFINE_CHECKPOINTS_METADATA: u32 = 1 << 5;
/// `VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY`: forget a checkpoint whose bitmap is gone.
pub const CHECKPOINT_DELETE_METADATA_ONLY: u32 = 1 << 1;

/// One hypervisor host: a connection to its libvirt daemon.
#[derive(Debug)]
pub struct Host {
    pub uri: String,
    conn: Connection,
}

impl Host {
    pub fn open(uri: &str) -> Result<Self, RpcError> {
        Ok(Self {
            uri: uri.to_string(),
            conn: Connection::open(uri)?,
        })
    }

    pub fn hostname(&self) -> Result<String, RpcError> {
        self.conn
            .call(Proc::ConnectGetHostname, Xdr::default())?
            .string()
    }

    /// The host's memory and CPUs: (KiB, CPUs).
    pub fn node_info(&self) -> Result<(u64, u32), RpcError> {
        let mut r = self.conn.call(Proc::NodeGetInfo, Xdr::default())?;
        // `char model[32]`: XDR encodes each char as a four-byte integer.
        for _ in 0..32 {
            r.u32()?;
        }
        let memory = r.u64()?;
        let cpus = r.i32()?;
        Ok((memory, cpus.max(0) as u32))
    }

    /// Free memory on the host, in bytes.
    pub fn free_memory(&self) -> Result<u64, RpcError> {
        self.conn
            .call(Proc::NodeGetFreeMemory, Xdr::default())?
            .u64()
    }

    /// Every domain defined or running here.
    pub fn domains(&self) -> Result<Vec<DomainRef>, RpcError> {
        let mut args = Xdr::default();
        args.i32(1).u32(0);
        let mut r = self.conn.call(Proc::ConnectListAllDomains, args)?;
        r.array(|r| r.domain())
    }

    pub fn lookup(&self, name: &str) -> Result<DomainRef, RpcError> {
        let mut args = Xdr::default();
        args.string(name);
        self.conn.call(Proc::DomainLookupByName, args)?.domain()
    }

    /// The domain's XML (`flags`: `XML_INACTIVE` for its persistent definition).
    pub fn xml(&self, d: &DomainRef, flags: u32) -> Result<String, RpcError> {
        let mut args = Xdr::default();
        args.domain(d).u32(flags);
        self.conn.call(Proc::DomainGetXmlDesc, args)?.string()
    }

    pub fn state(&self, d: &DomainRef) -> Result<DomainState, RpcError> {
        let mut args = Xdr::default();
        args.domain(d).u32(0);
        let mut r = self.conn.call(Proc::DomainGetState, args)?;
        Ok(DomainState::from_code(r.i32()?))
    }

    /// The domain's state and why it is in it (`virDomainGetState`'s reason code).
    pub fn state_reason(&self, d: &DomainRef) -> Result<(DomainState, i32), RpcError> {
        let mut args = Xdr::default();
        args.domain(d).u32(0);
        let mut r = self.conn.call(Proc::DomainGetState, args)?;
        Ok((DomainState::from_code(r.i32()?), r.i32()?))
    }

    /// The block job on disk `disk` (its target or its image's path): bytes done and to do.
    pub fn block_job(&self, d: &DomainRef, disk: &str) -> Result<Option<(u64, u64)>, RpcError> {
        let mut args = Xdr::default();
        // VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
        args.domain(d).string(disk).u32(1);
        let mut r = self.conn.call(Proc::DomainGetBlockJobInfo, args)?;
        let found = r.i32()?;
        let _kind = r.i32()?;
        let _bandwidth = r.u64()?;
        let (cur, end) = (r.u64()?, r.u64()?);
        Ok((found == 1).then_some((cur, end)))
    }

    /// Starts copying everything disk `disk`'s backing chain holds into its top image, at most
    /// `bytes_per_sec` (0: no limit); libvirt drops the chain when the copy ends.
    pub fn block_pull(
        &self,
        d: &DomainRef,
        disk: &str,
        bytes_per_sec: u64,
    ) -> Result<(), RpcError> {
        let mut args = Xdr::default();
        // VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES
        args.domain(d).string(disk).u64(bytes_per_sec).u32(1 << 6);
        self.conn.call(Proc::DomainBlockPull, args).map(|_| ())
    }

    fn on_domain(&self, proc: Proc, d: &DomainRef) -> Result<(), RpcError> {
        let mut args = Xdr::default();
        args.domain(d);
        self.conn.call(proc, args).map(|_| ())
    }

    pub fn suspend(&self, d: &DomainRef) -> Result<(), RpcError> {
        self.on_domain(Proc::DomainSuspend, d)
    }

    pub fn resume(&self, d: &DomainRef) -> Result<(), RpcError> {
        self.on_domain(Proc::DomainResume, d)
    }

    /// Asks the guest to power off (ACPI).
    pub fn shutdown(&self, d: &DomainRef) -> Result<(), RpcError> {
        self.on_domain(Proc::DomainShutdown, d)
    }

    /// Pulls the plug.
    pub fn destroy(&self, d: &DomainRef) -> Result<(), RpcError> {
        self.on_domain(Proc::DomainDestroy, d)
    }

    /// Ends the domain's job (a pull backup has no end of its own).
    pub fn abort_job(&self, d: &DomainRef) -> Result<(), RpcError> {
        self.on_domain(Proc::DomainAbortJob, d)
    }

    pub fn define(&self, xml: &str) -> Result<DomainRef, RpcError> {
        let mut args = Xdr::default();
        args.string(xml);
        self.conn.call(Proc::DomainDefineXml, args)?.domain()
    }

    pub fn start(&self, d: &DomainRef) -> Result<DomainRef, RpcError> {
        let mut args = Xdr::default();
        args.domain(d).u32(0);
        self.conn.call(Proc::DomainCreateWithFlags, args)?.domain()
    }

    pub fn undefine(&self, d: &DomainRef, flags: u32) -> Result<(), RpcError> {
        let mut args = Xdr::default();
        args.domain(d).u32(flags);
        self.conn.call(Proc::DomainUndefineFlags, args).map(|_| ())
    }

    /// The names of the domain's checkpoints.
    pub fn checkpoints(&self, d: &DomainRef) -> Result<Vec<String>, RpcError> {
        let mut args = Xdr::default();
        args.domain(d).i32(1).u32(0);
        let mut r = self.conn.call(Proc::DomainListAllCheckpoints, args)?;
        r.array(|r| {
            let name = r.string()?;
            r.domain()?;
            Ok(name)
        })
    }

    pub fn delete_checkpoint(&self, d: &DomainRef, name: &str, flags: u32) -> Result<(), RpcError> {
        let mut args = Xdr::default();
        args.string(name).domain(d).u32(flags);
        self.conn
            .call(Proc::DomainCheckpointDelete, args)
            .map(|_| ())
    }

    /// Begins a backup job (`backup_xml`), creating checkpoint `checkpoint_xml` at the same
    /// instant when one is given.
    pub fn backup_begin(
        &self,
        d: &DomainRef,
        backup_xml: &str,
        checkpoint_xml: Option<&str>,
    ) -> Result<(), RpcError> {
        let mut args = Xdr::default();
        args.domain(d)
            .string(backup_xml)
            .opt_string(checkpoint_xml)
            .u32(0);
        self.conn.call(Proc::DomainBackupBegin, args).map(|_| ())
    }

    pub fn networks(&self) -> Result<Vec<NetworkRef>, RpcError> {
        let mut args = Xdr::default();
        args.i32(1).u32(0);
        let mut r = self.conn.call(Proc::ConnectListAllNetworks, args)?;
        r.array(|r| r.network())
    }

    pub fn network(&self, name: &str) -> Result<NetworkRef, RpcError> {
        let mut args = Xdr::default();
        args.string(name);
        self.conn.call(Proc::NetworkLookupByName, args)?.network()
    }

    /// Defines and starts a network from its XML.
    pub fn define_network(&self, xml: &str) -> Result<NetworkRef, RpcError> {
        let mut args = Xdr::default();
        args.string(xml);
        let net = self.conn.call(Proc::NetworkDefineXml, args)?.network()?;
        let mut args = Xdr::default();
        args.network(&net);
        self.conn.call(Proc::NetworkCreate, args)?;
        Ok(net)
    }

    /// A network's XML.
    pub fn network_xml(&self, net: &NetworkRef) -> Result<String, RpcError> {
        let mut args = Xdr::default();
        args.network(net).u32(0);
        self.conn.call(Proc::NetworkGetXmlDesc, args)?.string()
    }

    /// Adds a DHCP reservation (`mac` gets `ip`) to a running network, now and in its
    /// definition.
    pub fn reserve(&self, net: &NetworkRef, mac: &str, ip: &str) -> Result<(), RpcError> {
        // VIR_NETWORK_UPDATE_COMMAND_ADD_LAST
        self.update_dhcp_host(net, 3, mac, ip)
    }

    /// Drops a DHCP reservation `reserve` made.
    pub fn unreserve(&self, net: &NetworkRef, mac: &str, ip: &str) -> Result<(), RpcError> {
        // VIR_NETWORK_UPDATE_COMMAND_DELETE
        self.update_dhcp_host(net, 2, mac, ip)
    }

    /// `virNetworkUpdate` of the first `<ip>`'s DHCP hosts (VIR_NETWORK_SECTION_IP_DHCP_HOST),
    /// live and in the definition (VIR_NETWORK_UPDATE_AFFECT_LIVE | _CONFIG).
    fn update_dhcp_host(
        &self,
        net: &NetworkRef,
        command: u32,
        mac: &str,
        ip: &str,
    ) -> Result<(), RpcError> {
        let mut args = Xdr::default();
        args.network(net)
            .u32(command)
            .u32(4)
            .i32(-1)
            .string(&format!(
                "<host mac='{}' ip='{}'/>",
                copy::escape(mac),
                copy::escape(ip)
            ))
            .u32(3);
        self.conn.call(Proc::NetworkUpdate, args).map(|_| ())
    }

    /// Stops and undefines a network.
    pub fn remove_network(&self, net: &NetworkRef) -> Result<(), RpcError> {
        let mut args = Xdr::default();
        args.network(net);
        let _ = self.conn.call(Proc::NetworkDestroy, args);
        let mut args = Xdr::default();
        args.network(net);
        self.conn.call(Proc::NetworkUndefine, args).map(|_| ())
    }
}

/// The site's hosts, connected (a host that cannot be reached is an error naming it).
pub async fn connect_all(
    uris: &[String],
) -> lifeboat_replication::Result<Vec<std::sync::Arc<Host>>> {
    let uris = uris.to_vec();
    tokio::task::spawn_blocking(move || {
        uris.iter()
            .map(|u| {
                Host::open(u).map(std::sync::Arc::new).map_err(|e| {
                    lifeboat_replication::Error::failed(format!("libvirt host `{u}`: {e}"))
                })
            })
            .collect()
    })
    .await
    .map_err(|e| lifeboat_replication::Error::failed(format!("a libvirt call stopped: {e}")))?
}

/// A VM's domain as found on one of the hosts.
#[derive(Clone, Debug)]
pub struct Found {
    pub host: std::sync::Arc<Host>,
    pub dom: DomainRef,
    pub spec: DomainSpec,
    pub state: DomainState,
    /// The persistent definition, kept in each point so a target can rebuild the domain.
    pub xml: String,
}

/// Finds domain `name` on the first of `hosts` that has it.
pub fn find(hosts: &[std::sync::Arc<Host>], name: &str) -> Result<Option<Found>, RpcError> {
    for host in hosts {
        let dom = match host.lookup(name) {
            Ok(d) => d,
            Err(e) if e.is_no_domain() => continue,
            Err(e) => return Err(e),
        };
        let live = host.xml(&dom, 0)?;
        let spec = domain::parse(&live).map_err(|e| RpcError::Protocol(e.to_string()))?;
        let state = host.state(&dom)?;
        let xml = host.xml(&dom, XML_INACTIVE)?;
        return Ok(Some(Found {
            host: host.clone(),
            dom,
            spec,
            state,
            xml,
        }));
    }
    Ok(None)
}

/// `group` with its libvirt VMs' disks read from their domains (named as the guest names
/// them, `vda`…), each VM's definition carrying its domain's XML and host; and the cut of the
/// domains that run (a domain shut off is read from its files: nothing writes them).
pub async fn resolve_group(
    inventory: &lifeboat_plan::Inventory,
    group: &lifeboat_replication::GroupSpec,
    dir: &std::path::Path,
) -> lifeboat_replication::Result<(lifeboat_replication::GroupSpec, Option<backup::LibvirtCut>)> {
    use lifeboat_replication::Error;
    let uris: Vec<String> = inventory
        .sites
        .get(&group.source_site)
        .map(|s| s.hosts.iter().map(|h| h.value.clone()).collect())
        .unwrap_or_default();
    let hosts = connect_all(&uris).await?;
    let mut resolved = group.clone();
    let mut running = Vec::new();
    for vm in &mut resolved.vms {
        let domain = inventory
            .vms
            .get(&vm.name)
            .and_then(|v| v.domain.as_ref())
            .map_or_else(|| vm.name.clone(), |d| d.value.clone());
        let (h, name) = (hosts.clone(), domain.clone());
        let found = tokio::task::spawn_blocking(move || find(&h, &name))
            .await
            .map_err(|e| Error::failed(format!("a libvirt call stopped: {e}")))?
            .map_err(|e| Error::failed(format!("VM `{}` (domain `{domain}`): {e}", vm.name)))?
            .ok_or_else(|| {
                Error::failed(format!(
                    "VM `{}`: no host of site `{}` has domain `{domain}` ({})",
                    vm.name,
                    group.source_site,
                    uris.join(", ")
                ))
            })?;
        // A cut reads the disks where they are: the backup's NBD export (a socket of that host)
        // or, shut off, the files.
        if rpc::is_remote(&found.host.uri) {
            return Err(Error::failed(format!(
                "VM `{}`: domain `{domain}` runs on {}, another host: its disks are read where it runs; run a Lifeboat daemon there (`hosts = [\"qemu:///system\"]`)",
                vm.name, found.host.uri
            )));
        }
        if found.spec.disks.is_empty() {
            return Err(Error::failed(format!(
                "VM `{}`: domain `{domain}` has no disk backed by a file or a block device",
                vm.name
            )));
        }
        vm.disks = found
            .spec
            .disks
            .iter()
            .map(|d| lifeboat_replication::groups::DiskSpec {
                name: d.target.clone(),
                source: d.source.display().to_string(),
                path: d.source.clone(),
                chunk_size: lifeboat_replication::groups::DEFAULT_CHUNK_SIZE,
            })
            .collect();
        if let Some(def) = vm.definition.as_object_mut() {
            def.insert(
                "libvirt".into(),
                serde_json::json!({ "host": found.host.uri, "domain": domain, "xml": found.xml }),
            );
        }
        if matches!(found.state, DomainState::Running | DomainState::Paused) {
            running.push(backup::LibvirtVm {
                vm: vm.name.clone(),
                host: found.host.uri.clone(),
                domain,
                disks: found.spec.disks.clone(),
            });
        }
    }
    let cut = (!running.is_empty())
        .then(|| backup::LibvirtCut::new(running, hosts, dir.to_path_buf(), group.max_pause));
    Ok((resolved, cut))
}

/// The disk files of domain `name` as one of `uris` defines it, when that host is this machine
/// (their files are readable here); none when no host has it, or it is on another machine.
pub async fn local_disk_files(
    uris: &[String],
    name: &str,
) -> lifeboat_replication::Result<Vec<std::path::PathBuf>> {
    let local: Vec<String> = uris
        .iter()
        .filter(|u| !rpc::is_remote(u))
        .cloned()
        .collect();
    let hosts = connect_all(&local).await?;
    let name = name.to_string();
    let found = tokio::task::spawn_blocking(move || find(&hosts, &name))
        .await
        .map_err(|e| lifeboat_replication::Error::failed(format!("a libvirt call stopped: {e}")))?
        .map_err(|e| lifeboat_replication::Error::failed(format!("libvirt: {e}")))?;
    Ok(found
        .map(|f| f.spec.disks.into_iter().map(|d| d.source).collect())
        .unwrap_or_default())
}

/// A domain found on a host of a site.
#[derive(Clone, Debug)]
pub struct Discovered {
    pub host: String,
    pub spec: DomainSpec,
    pub state: DomainState,
}

/// Every domain on `hosts`, in host order, then by name.
pub async fn discover(uris: &[String]) -> lifeboat_replication::Result<Vec<Discovered>> {
    let hosts = connect_all(uris).await?;
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for host in &hosts {
            let fail = |e: RpcError| {
                lifeboat_replication::Error::failed(format!("libvirt host `{}`: {e}", host.uri))
            };
            let mut doms = host.domains().map_err(fail)?;
            doms.sort_by(|a, b| a.name.cmp(&b.name));
            for d in doms {
                // A domain undefined since the list was taken is not there to discover.
                let (xml, state) = match host.xml(&d, 0).and_then(|x| Ok((x, host.state(&d)?))) {
                    Ok(found) => found,
                    Err(e) if e.is_no_domain() => continue,
                    Err(e) => return Err(fail(e)),
                };
                let spec = domain::parse(&xml).map_err(|e| {
                    lifeboat_replication::Error::failed(format!("domain `{}`: {e}", d.name))
                })?;
                out.push(Discovered {
                    host: host.uri.clone(),
                    spec,
                    state,
                });
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| lifeboat_replication::Error::failed(format!("a libvirt call stopped: {e}")))?
}
