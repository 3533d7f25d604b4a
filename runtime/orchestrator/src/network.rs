//! Network mapping, by the rules Azure Site Recovery users know:
//!
//! - a NIC lands in the network the plan maps its source network to (for a drill: the plan's
//!   test network), in the subnet with the same name as its source subnet, else the first by
//!   name, unless an override names the subnet;
//! - on failover it keeps its source address when the target subnet contains it and it is free,
//!   else it gets the lowest free address of the subnet;
//! - in the test network a taken (or absent) address falls back to the highest free address, so
//!   drill VMs stay clear of the low addresses failover uses;
//! - an override's `ip` (`test_ip` for drills) wins, and must be free.
//!
//! Pure: the addresses already in use at the target are an input.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use lifeboat_plan::Inventory;
use lifeboat_plan::address::usable;
use lifeboat_plan::plan::{NetworkRef, Plan};
use serde::{Deserialize, Serialize};

/// Failover puts VMs in the mapped networks; a drill in the test network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Failover,
    Test,
}

/// Why a NIC got its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    /// The plan's override.
    Override,
    /// The source address, kept.
    Kept,
    /// The lowest free address (failover) or the highest (test).
    NextFree,
}

/// Where one NIC of one VM lands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub vm: String,
    pub nic: usize,
    /// `site/network` at the target.
    pub network: String,
    pub subnet: String,
    pub cidr: IpNet,
    pub ip: IpAddr,
    pub why: Why,
}

/// Assigns an address to every NIC of `vms` (in that order). `in_use` holds addresses already
/// taken, as (`site/network`, address). Errors name the VM and NIC that cannot be placed.
pub fn assign(
    inv: &Inventory,
    plan: &Plan,
    vms: &[&str],
    purpose: Purpose,
    in_use: &HashSet<(String, IpAddr)>,
) -> Result<Vec<Assignment>, String> {
    let network = plan.network.as_ref();
    let overrides = network.map(|n| n.overrides.as_slice()).unwrap_or(&[]);
    let mut taken = in_use.clone();
    // First pass: where each NIC goes and the address it asks for; second: the rest, so an early
    // VM's next-free address never takes one a later VM keeps.
    let mut placed: Vec<(Assignment, Option<(IpAddr, Why)>)> = Vec::new();
    for vm_name in vms {
        let vm = inv
            .vms
            .get(vm_name)
            .ok_or_else(|| format!("no VM `{vm_name}` in the inventory"))?;
        for (index, nic) in vm.nics.iter().enumerate() {
            let over = overrides.iter().find(|o| {
                o.vm.value == *vm_name && o.nic.as_ref().map_or(0, |n| n.value as usize) == index
            });
            let to: NetworkRef = match purpose {
                Purpose::Test => network
                    .and_then(|n| n.test.as_ref())
                    .map(|t| t.value.clone())
                    .ok_or_else(|| {
                        format!(
                            "plan `{}` has no test network (`network.test`)",
                            plan.name.value
                        )
                    })?,
                Purpose::Failover => network
                    .and_then(|n| {
                        n.map.iter().find(|m| {
                            m.from.value.site == vm.site.value
                                && m.from.value.network == nic.network.value
                        })
                    })
                    .map(|m| m.to.value.clone())
                    .ok_or_else(|| {
                        format!(
                            "VM `{vm_name}` nic{index}: the plan maps no network for `{}/{}`",
                            vm.site.value, nic.network.value
                        )
                    })?,
            };
            let target_net = inv
                .sites
                .get(&to.site)
                .and_then(|s| s.networks.get(&to.network))
                .ok_or_else(|| format!("no network `{to}` in the inventory"))?;
            let (subnet, cidr) = match over.and_then(|o| o.subnet.as_ref()) {
                Some(name) => {
                    let cidr = target_net
                        .subnets
                        .get(name)
                        .ok_or_else(|| format!("no subnet `{}` in `{to}`", name.value))?;
                    (name.value.clone(), cidr.value.0)
                }
                None => {
                    let (name, cidr) = lifeboat_plan::target_subnet(target_net, &nic.subnet)
                        .ok_or_else(|| format!("network `{to}` has no subnets"))?;
                    (name.to_string(), cidr.value.0)
                }
            };
            let wanted = match purpose {
                Purpose::Failover => over.and_then(|o| o.ip.as_ref()),
                Purpose::Test => over.and_then(|o| o.test_ip.as_ref()),
            };
            let key = to.to_string();
            let ask = match wanted {
                Some(ip) => {
                    if !cidr.contains(&ip.value) {
                        return Err(format!(
                            "VM `{vm_name}` nic{index}: override address {} is outside subnet `{subnet}` ({cidr}) of `{to}`",
                            ip.value
                        ));
                    }
                    if !taken.insert((key.clone(), ip.value)) {
                        return Err(format!(
                            "VM `{vm_name}` nic{index}: override address {} is already in use in `{to}`",
                            ip.value
                        ));
                    }
                    Some((ip.value, Why::Override))
                }
                None => nic
                    .ip
                    .as_ref()
                    .map(|ip| ip.value)
                    .filter(|ip| usable(&cidr, *ip) && taken.insert((key.clone(), *ip)))
                    .map(|ip| (ip, Why::Kept)),
            };
            placed.push((
                Assignment {
                    vm: vm_name.to_string(),
                    nic: index,
                    network: key,
                    subnet,
                    cidr,
                    ip: cidr.network(),
                    why: Why::NextFree,
                },
                ask,
            ));
        }
    }
    let mut out = Vec::new();
    for (mut a, ask) in placed {
        match ask {
            Some((ip, why)) => {
                a.ip = ip;
                a.why = why;
            }
            None => {
                let mut hosts: Box<dyn Iterator<Item = IpAddr>> = match purpose {
                    Purpose::Failover => Box::new(a.cidr.hosts()),
                    Purpose::Test => Box::new(a.cidr.hosts().rev()),
                };
                a.ip = hosts
                    .find(|ip| usable(&a.cidr, *ip) && !taken.contains(&(a.network.clone(), *ip)))
                    .ok_or_else(|| {
                        format!(
                            "VM `{}` nic{}: subnet {} of `{}` is full",
                            a.vm, a.nic, a.subnet, a.network
                        )
                    })?;
                taken.insert((a.network.clone(), a.ip));
            }
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    fn load() -> (Inventory, Plan) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let v =
            lifeboat_loader::validate(&root.join("lifeboat.toml"), &[root.join("plans/erp.toml")]);
        assert!(v.is_valid(), "{:?}", v.diagnostics);
        let plan = v.plans.into_iter().next().unwrap().plan.unwrap();
        (v.inventory.unwrap(), plan)
    }

    fn ips(a: &[Assignment]) -> Vec<(String, String, Why)> {
        a.iter()
            .map(|a| (a.vm.clone(), a.ip.to_string(), a.why))
            .collect()
    }

    /// Regression: `plan validate` kept a source address whenever the target subnet contained
    /// it, the runtime only when it is a usable host address. Here `a`'s source address is the
    /// broadcast address of its target subnet and `b` takes it by override: the validator called
    /// that a duplicate, while a failover gives `b` the address and `a` the lowest free one.
    /// One rule now: the validator passes the plan, and the runtime does what it predicted.
    #[test]
    fn the_validator_and_the_runtime_keep_the_same_addresses() {
        use lifeboat_plan::{Sources, check_plan, parse_inventory, parse_plan};
        let inventory = r#"
version = 1
[sites.east]
store = "/srv/east"
compute = "process"
replicate_to = "west"
networks.prod.subnets = { app = "10.1.1.0/24" }
[sites.west]
store = "/srv/west"
compute = "process"
networks.dr.subnets = { app = "10.1.1.0/29" }
[policies.p]
crash_interval = "1m"
retention = "1h"
rpo_threshold = "5m"
[vms.a]
site = "east"
policy = "p"
disks.os = "a.img"
nics = [{ network = "prod", subnet = "app", ip = "10.1.1.7" }]
[vms.b]
site = "east"
policy = "p"
disks.os = "b.img"
nics = [{ network = "prod", subnet = "app", ip = "10.1.1.20" }]
"#;
        let plan_text = r#"
version = 1
name = "p"
source = "east"
target = "west"
network.map = [{ from = "east/prod", to = "west/dr" }]
network.override = [{ vm = "b", nic = 0, ip = "10.1.1.7" }]
[[group]]
name = "g"
vms = ["a", "b"]
"#;
        let mut sources = Sources::new();
        let inv_id = sources.add("lifeboat.toml", inventory);
        let plan_id = sources.add("plan.toml", plan_text);
        let (inv, d1) = parse_inventory(inv_id, inventory);
        let (plan, d2) = parse_plan(plan_id, plan_text);
        assert!(d1.is_empty() && d2.is_empty(), "{d1:?} {d2:?}");
        let (inv, plan) = (inv.unwrap(), plan.unwrap());
        let diags = check_plan(&inv, &plan, &sources);
        assert!(diags.is_empty(), "validator refused: {diags:?}");
        let a = assign(&inv, &plan, &["a", "b"], Purpose::Failover, &HashSet::new()).unwrap();
        assert_eq!(
            ips(&a),
            [
                ("a".into(), "10.1.1.1".into(), Why::NextFree),
                ("b".into(), "10.1.1.7".into(), Why::Override),
            ]
        );
    }

    #[test]
    fn failover_keeps_addresses_the_target_subnet_holds_and_takes_the_lowest_free_otherwise() {
        let (inv, plan) = load();
        let a = assign(
            &inv,
            &plan,
            &["db-1", "app-1", "app-2"],
            Purpose::Failover,
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(
            ips(&a),
            [
                ("db-1".into(), "127.10.2.10".into(), Why::Kept),
                ("app-1".into(), "127.20.1.1".into(), Why::NextFree),
                ("app-2".into(), "127.20.1.12".into(), Why::Override),
            ]
        );
        assert_eq!(a[0].network, "west/prod-dr");
        assert_eq!(a[1].subnet, "app");
        // A taken address is not kept; the lowest free one is used instead.
        let taken = HashSet::from([
            ("west/prod-dr".to_string(), "127.10.2.10".parse().unwrap()),
            ("west/prod-dr".to_string(), "127.20.1.1".parse().unwrap()),
        ]);
        let a = assign(&inv, &plan, &["db-1", "app-1"], Purpose::Failover, &taken).unwrap();
        assert_eq!(
            ips(&a),
            [
                ("db-1".into(), "127.10.2.1".into(), Why::NextFree),
                ("app-1".into(), "127.20.1.2".into(), Why::NextFree),
            ]
        );
    }

    #[test]
    fn drills_use_the_test_network_from_the_top_of_the_range() {
        let (inv, plan) = load();
        let a = assign(
            &inv,
            &plan,
            &["db-1", "app-1", "app-2"],
            Purpose::Test,
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(
            ips(&a),
            [
                ("db-1".into(), "127.90.2.254".into(), Why::NextFree),
                ("app-1".into(), "127.90.1.254".into(), Why::NextFree),
                ("app-2".into(), "127.90.1.12".into(), Why::Override),
            ]
        );
        assert!(a.iter().all(|a| a.network == "west/drill"));
    }

    #[test]
    fn a_later_vms_kept_address_is_not_taken_by_an_earlier_next_free_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("lifeboat.toml"),
            r#"version = 1
[sites.a]
store = "a"
compute = "process"
networks.n.subnets = { s = "10.0.0.0/23" }
[sites.b]
store = "b"
compute = "process"
networks.n.subnets = { s = "10.0.0.0/29" }
[policies.p]
crash_interval = "1m"
retention = "1h"
rpo_threshold = "5m"
[vms.first]
site = "a"
policy = "p"
disks.os = "first.img"
nics = [{ network = "n", subnet = "s", ip = "10.0.0.9" }]
[vms.second]
site = "a"
policy = "p"
disks.os = "second.img"
nics = [{ network = "n", subnet = "s", ip = "10.0.0.1" }]
"#
            .replace("10.0.0.9", "10.0.1.5"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("p.toml"),
            "version = 1\nname = \"p\"\nsource = \"a\"\ntarget = \"b\"\n[network]\nmap = [{ from = \"a/n\", to = \"b/n\" }]\n[[group]]\nname = \"g\"\nvms = [\"first\", \"second\"]\n",
        )
        .unwrap();
        let v = lifeboat_loader::validate(
            &dir.path().join("lifeboat.toml"),
            &[dir.path().join("p.toml")],
        );
        let inv = v.inventory.unwrap();
        let plan = v.plans.into_iter().next().unwrap().plan.unwrap();
        // `first`'s 10.0.1.5 is outside the target subnet: it takes the lowest free address,
        // which must not be `second`'s 10.0.0.1, kept.
        let a = assign(
            &inv,
            &plan,
            &["first", "second"],
            Purpose::Failover,
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(
            ips(&a),
            [
                ("first".into(), "10.0.0.2".into(), Why::NextFree),
                ("second".into(), "10.0.0.1".into(), Why::Kept),
            ]
        );
    }

    #[test]
    fn a_full_subnet_is_an_error_naming_the_nic() {
        let (inv, plan) = load();
        let full: HashSet<(String, IpAddr)> = (1..=254)
            .map(|i| {
                (
                    "west/drill".to_string(),
                    format!("127.90.1.{i}").parse().unwrap(),
                )
            })
            .collect();
        let e = assign(&inv, &plan, &["app-1"], Purpose::Test, &full).unwrap_err();
        assert!(e.contains("`app-1` nic0") && e.contains("full"), "{e}");
    }
}
