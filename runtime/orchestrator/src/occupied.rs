//! Addresses as the world has them, not as the journal remembers them. Before a run boots a VM,
//! each address it assigns is probed: a TCP connect to every port the VM is known to serve (its
//! health target, `{nicN.ip}:PORT` in its boot command, a QEMU machine's forwarded `ports`). A
//! next-free address something answers at is passed over for the next; a kept or overridden one
//! is a refusal, before anything changes. Where the kernel can tell (`/proc`), the answer names
//! the process that holds the socket.
//!
//! A drill isolated in a network namespace of its own needs none of this at assignment time —
//! its addresses exist nowhere else — but its VMs are still checked at boot, inside it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lifeboat_compute::netns::Netns;
use lifeboat_compute::procfs::{self, Process};
use lifeboat_plan::inventory::Vm;
use lifeboat_plan::{Inventory, Plan};

use crate::error::{Error, Result};
use crate::network::{Assignment, Purpose, Why, assign};

/// How long a probe waits for a connection: loopback and a LAN answer (or refuse) at once; an
/// address nothing routes to counts as free.
const CONNECT_LIMIT: Duration = Duration::from_millis(300);

/// Something answering at an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occupant {
    pub port: u16,
    /// The processes holding the listening socket, when `/proc` tells (the host's namespace).
    pub holders: Vec<Process>,
}

impl std::fmt::Display for Occupant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "something answers on :{}", self.port)?;
        if let Some(p) = self.holders.first() {
            write!(f, " ({p})")?;
        }
        Ok(())
    }
}

/// The TCP ports VM `vm` is known to serve on NIC `nic`: every `{nicN.ip}:PORT` in its health
/// target and boot command (an `http://{nicN.ip}/…` health URL: 80), and its machine's
/// forwarded ports.
pub fn known_ports(vm: &Vm, nic: usize) -> Vec<u16> {
    let marker = format!("{{nic{nic}.ip}}");
    let mut texts: Vec<&str> = Vec::new();
    if let Some(h) = &vm.health {
        texts.extend(h.tcp.iter().map(|t| t.value.as_str()));
        texts.extend(h.http.iter().map(|t| t.value.as_str()));
    }
    if let Some(b) = &vm.boot {
        texts.extend(b.command.iter().map(|a| a.value.as_str()));
    }
    let mut ports: Vec<u16> = Vec::new();
    for text in texts {
        let mut rest = text;
        while let Some(at) = rest.find(&marker) {
            let before = &rest[..at];
            let after = &rest[at + marker.len()..];
            let digits: String = after
                .strip_prefix(':')
                .map(|a| a.chars().take_while(char::is_ascii_digit).collect())
                .unwrap_or_default();
            let port = match digits.parse::<u16>() {
                Ok(p) => Some(p),
                Err(_) if before.ends_with("http://") => Some(80),
                Err(_) if before.ends_with("https://") => Some(443),
                Err(_) => None,
            };
            ports.extend(port.filter(|p| *p != 0));
            rest = after;
        }
    }
    if let Some(m) = &vm.machine {
        ports.extend(m.ports.iter().filter_map(|p| u16::try_from(p.value).ok()));
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The first of `ports` at `ip` that accepts a connection — from the host's network, or from
/// inside `netns` — and who holds it.
pub async fn occupant(ip: IpAddr, ports: &[u16], netns: Option<&Netns>) -> Option<Occupant> {
    let ports = ports.to_vec();
    match netns {
        None => first_answering(ip, ports).await.map(|port| Occupant {
            port,
            holders: holders(SocketAddr::new(ip, port)),
        }),
        // Inside a namespace the listener's holder would be looked up there; the VM's own
        // check (`procfs::answerer`, from its pid) does that at boot.
        Some(ns) => ns
            .within(move || first_answering(ip, ports))
            .await
            .ok()
            .flatten()
            .map(|port| Occupant {
                port,
                holders: Vec::new(),
            }),
    }
}

async fn first_answering(ip: IpAddr, ports: Vec<u16>) -> Option<u16> {
    for port in ports {
        let connect = tokio::net::TcpStream::connect(SocketAddr::new(ip, port));
        if let Ok(Ok(_)) = tokio::time::timeout(CONNECT_LIMIT, connect).await {
            return Some(port);
        }
    }
    None
}

/// The processes holding the listener at `addr` in this process's network namespace.
fn holders(addr: SocketAddr) -> Vec<Process> {
    let inodes = procfs::listeners(None, addr);
    procfs::socket_holders(&inodes)
        .into_iter()
        .filter(|p| *p != std::process::id())
        .map(Process::of)
        .collect()
}

/// What a planned failover frees before it boots: the source VMs it stops (their processes and
/// those they started) and their source addresses.
#[derive(Clone, Debug, Default)]
pub struct Freed {
    pub pids: HashSet<u32>,
    pub ips: HashSet<IpAddr>,
}

impl Freed {
    /// Whether `occupant` at `ip` is one of the VMs the failover stops first: its holder is
    /// theirs, or (no holder seen: another host) the address is one of theirs.
    fn covers(&self, occupant: &Occupant, ip: IpAddr) -> bool {
        if occupant.holders.is_empty() {
            return self.ips.contains(&ip);
        }
        occupant.holders.iter().all(|p| self.pids.contains(&p.pid))
    }
}

/// Every NIC's address by the ASR rules (`network::assign`), checked against the world: a
/// next-free address that something answers at is passed over for the next free one; a kept
/// or overridden one is refused (`Error::AddressInUse`). `freed` does not count as in use.
pub async fn assign_checked(
    inventory: &Inventory,
    plan: &Plan,
    vms: &[&str],
    purpose: Purpose,
    in_use: &HashSet<(String, IpAddr)>,
    freed: &Freed,
) -> Result<Vec<Assignment>> {
    let mut taken = in_use.clone();
    let mut seen: HashMap<(IpAddr, Vec<u16>), Option<Occupant>> = HashMap::new();
    loop {
        let assigned = assign(inventory, plan, vms, purpose, &taken).map_err(Error::Failed)?;
        // Each NIC's address with the ports to try there (none known: nothing to probe).
        let checks: Vec<(&Assignment, (IpAddr, Vec<u16>))> = assigned
            .iter()
            .filter_map(|a| {
                let ports = known_ports(inventory.vms.get(&a.vm)?, a.nic);
                (!ports.is_empty()).then_some((a, (a.ip, ports)))
            })
            .collect();
        probe_all(checks.iter().map(|(_, key)| key), &mut seen).await;
        let mut passed_over = false;
        for (a, key) in &checks {
            let Some(found) = seen
                .get(key)
                .cloned()
                .flatten()
                .filter(|o| !freed.covers(o, a.ip))
            else {
                continue;
            };
            match a.why {
                Why::NextFree => {
                    tracing::info!(vm = %a.vm, nic = a.nic, ip = %a.ip, occupant = %found, "address in use: the next free one is taken");
                    taken.insert((a.network.clone(), a.ip));
                    passed_over = true;
                }
                Why::Kept | Why::Override => {
                    return Err(Error::AddressInUse {
                        vm: a.vm.clone(),
                        nic: a.nic,
                        ip: a.ip,
                        why: a.why,
                        occupant: found.to_string(),
                    });
                }
            }
        }
        // Each pass takes at least one more address, so a full subnet ends it with an error.
        if !passed_over {
            return Ok(assigned);
        }
    }
}

/// Probes every address of `probes` not in `seen` yet, all at once (an address nothing routes
/// to costs its [`CONNECT_LIMIT`] once, not once per NIC), and records what answered.
async fn probe_all<'a>(
    probes: impl Iterator<Item = &'a (IpAddr, Vec<u16>)>,
    seen: &mut HashMap<(IpAddr, Vec<u16>), Option<Occupant>>,
) {
    let mut set = tokio::task::JoinSet::new();
    for key in probes {
        if seen.contains_key(key) {
            continue;
        }
        seen.insert(key.clone(), None);
        let key = key.clone();
        set.spawn(async move {
            let found = occupant(key.0, &key.1, None).await;
            (key, found)
        });
    }
    while let Some(done) = set.join_next().await {
        if let Ok((key, found)) = done {
            seen.insert(key, found);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn inventory(vm: &str) -> Inventory {
        let text = format!(
            "version = 1\n[sites.a]\nstore = \"a\"\ncompute = \"process\"\nnetworks.n.subnets = {{ s = \"10.0.0.0/24\" }}\n[policies.p]\ncrash_interval = \"1m\"\nretention = \"1h\"\nrpo_threshold = \"5m\"\n[vms.x]\nsite = \"a\"\npolicy = \"p\"\ndisks.os = \"x.img\"\nnics = [{{ network = \"n\", subnet = \"s\" }}, {{ network = \"n\", subnet = \"s\" }}]\n{vm}\n"
        );
        let mut sources = lifeboat_plan::Sources::new();
        let id = sources.add("lifeboat.toml", &text);
        let (inv, diags) = lifeboat_plan::parse_inventory(id, &text);
        assert!(diags.is_empty(), "{diags:?}");
        inv.unwrap()
    }

    #[test]
    fn ports_come_from_the_health_target_the_boot_command_and_the_machine() {
        let inv = inventory(
            r#"boot = { command = ["srv", "--listen", "{nic0.ip}:5432", "--admin={nic1.ip}:9000", "--peer", "{nic1.ip}"] }
health = { http = "http://{nic0.ip}/health" }"#,
        );
        let vm = inv.vms.get("x").unwrap();
        assert_eq!(known_ports(vm, 0), [80, 5432]);
        assert_eq!(known_ports(vm, 1), [9000]);
        assert!(known_ports(vm, 2).is_empty());
    }

    #[tokio::test]
    async fn an_answering_port_is_found_with_its_holder() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Held by this very process, which `holders` leaves out (it is never a VM).
        let found = occupant(addr.ip(), &[addr.port()], None).await.unwrap();
        assert_eq!(found.port, addr.port());
        assert!(
            found
                .to_string()
                .starts_with(&format!("something answers on :{}", addr.port()))
        );
        drop(listener);
        assert_eq!(occupant(addr.ip(), &[addr.port()], None).await, None);
    }
}
