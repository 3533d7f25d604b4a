//! Checks that need more than one value: references between the inventory and a plan, addresses,
//! and placeholders. Runs only on files that parsed; reports every problem it finds.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::diagnostic::{Diagnostic, Rule, backticked, closest, suggestion};
use crate::inventory::{Inventory, Network, Vm};
use crate::placeholder::placeholders;
use crate::plan::{NetworkMapping, NetworkRef, Plan, Step};
use crate::source::Sources;
use crate::span::{Span, Spanned};
use crate::types::Cidr;

fn did_you_mean<'a>(input: &str, names: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(input, names).map(|best| format!("did you mean `{best}`?"))
}

fn unknown(
    rule: Rule,
    what: &str,
    name: &Spanned<String>,
    known: &[&str],
    context: &str,
) -> Diagnostic {
    let mut d = Diagnostic::error(
        rule,
        name.span,
        format!("unknown {what} `{}`{context}", name.value),
        format!("no {what} named `{}`", name.value),
    );
    if let Some(help) = did_you_mean(&name.value, known.iter().copied()) {
        d = d.with_help(help);
    } else if known.is_empty() {
        d = d.with_help(format!("no {what} is defined"));
    } else if known.len() <= 12 {
        d = d.with_help(format!("defined: {}", backticked(known)));
    }
    d
}

/// Checks of the inventory on its own.
pub fn check_inventory(inv: &Inventory, sources: &Sources) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let site_names: Vec<&str> = inv.sites.names().collect();
    let policy_names: Vec<&str> = inv.policies.names().collect();

    for (site_name, site) in inv.sites.iter() {
        for (net_name, network) in site.networks.iter() {
            let subnets: Vec<(&str, &Spanned<Cidr>)> = network.subnets.iter().collect();
            for (i, (a_name, a)) in subnets.iter().enumerate() {
                for (b_name, b) in &subnets[i + 1..] {
                    if a.0.contains(&b.0.network()) || b.0.contains(&a.0.network()) {
                        out.push(
                            Diagnostic::error(
                                Rule::SubnetOverlap,
                                b.span,
                                format!(
                                    "subnets `{a_name}` ({}) and `{b_name}` ({}) of `{site_name}/{net_name}` overlap",
                                    a.0, b.0
                                ),
                                "overlaps",
                            )
                            .with_note(a.span, format!("`{a_name}` is here")),
                        );
                    }
                }
            }
        }
    }

    for (site_name, site) in inv.sites.iter() {
        let Some(target) = &site.replicate_to else {
            continue;
        };
        if target.value == site_name {
            out.push(
                Diagnostic::error(
                    Rule::InvalidValue,
                    target.span,
                    format!("site `{site_name}` cannot replicate to itself"),
                    "same site",
                )
                .with_help("recovery points must live at another site to survive this one"),
            );
        } else if !inv.sites.contains(target) && !inv.declared.sites.contains(&target.value) {
            out.push(unknown(
                Rule::UnknownSite,
                "site",
                target,
                &site_names,
                &format!(" for `replicate_to` of site `{site_name}`"),
            ));
        }
    }

    // (site, network, ip) → where it was first assigned
    let mut addresses: HashMap<(&str, &str, IpAddr), (&str, Span)> = HashMap::new();
    for (vm_name, vm) in inv.vms.iter() {
        let site = inv.sites.get(&vm.site);
        if site.is_none() && !inv.declared.sites.contains(&vm.site.value) {
            out.push(unknown(
                Rule::UnknownSite,
                "site",
                &vm.site,
                &site_names,
                &format!(" for VM `{vm_name}`"),
            ));
        }
        if !inv.policies.contains(&vm.policy) && !inv.declared.policies.contains(&vm.policy.value) {
            out.push(unknown(
                Rule::UnknownPolicy,
                "policy",
                &vm.policy,
                &policy_names,
                &format!(" for VM `{vm_name}`"),
            ));
        }
        for nic in &vm.nics {
            let Some(site) = site else { continue };
            let Some(network) = site.networks.get(&nic.network) else {
                if site.declared_networks.contains(&nic.network.value) {
                    continue;
                }
                let known: Vec<&str> = site.networks.names().collect();
                out.push(unknown(
                    Rule::UnknownNetwork,
                    "network",
                    &nic.network,
                    &known,
                    &format!(" at site `{}`", vm.site.value),
                ));
                continue;
            };
            let Some(subnet) = network.subnets.get(&nic.subnet) else {
                if network.declared_subnets.contains(&nic.subnet.value) {
                    continue;
                }
                let known: Vec<&str> = network.subnets.names().collect();
                out.push(unknown(
                    Rule::UnknownSubnet,
                    "subnet",
                    &nic.subnet,
                    &known,
                    &format!(" in `{}/{}`", vm.site.value, nic.network.value),
                ));
                continue;
            };
            let Some(ip) = &nic.ip else { continue };
            if !subnet.0.contains(&ip.value) {
                out.push(
                    Diagnostic::error(
                        Rule::IpOutsideSubnet,
                        ip.span,
                        format!(
                            "address {} is outside subnet `{}` ({})",
                            ip.value, nic.subnet.value, subnet.0
                        ),
                        format!("not in {}", subnet.0),
                    )
                    .with_note(subnet.span, "the subnet is defined here"),
                );
                continue;
            }
            if ip.value == subnet.0.network()
                || (subnet.0.prefix_len() < 31 && ip.value == subnet.0.broadcast())
            {
                out.push(Diagnostic::error(
                    Rule::IpOutsideSubnet,
                    ip.span,
                    format!(
                        "address {} is the network or broadcast address of {}",
                        ip.value, subnet.0
                    ),
                    "not a host address",
                ));
                continue;
            }
            let key = (vm.site.value.as_str(), nic.network.value.as_str(), ip.value);
            if let Some((other_vm, other_span)) = addresses.get(&key) {
                out.push(
                    Diagnostic::error(
                        Rule::DuplicateIp,
                        ip.span,
                        format!(
                            "VMs `{other_vm}` and `{vm_name}` both use {} on `{}/{}`",
                            ip.value, vm.site.value, nic.network.value
                        ),
                        "address already in use",
                    )
                    .with_note(*other_span, format!("`{other_vm}` has it here")),
                );
            } else {
                addresses.insert(key, (vm_name, ip.span));
            }
        }
        check_vm_placeholders(vm_name, vm, sources, &mut out);
        if let Some(site) = inv.sites.get(&vm.site) {
            check_vm_disks(vm_name, vm, site, &mut out);
        }
        if let Some(site) = inv.sites.get(&vm.site)
            && site.compute.value == crate::inventory::ComputeDriver::Qemu
            && vm.machine.is_none()
            && vm.boot.is_none()
        {
            out.push(
                Diagnostic::error(
                    Rule::UnsupportedCompute,
                    vm.site.span,
                    format!(
                        "VM `{vm_name}` has neither `machine` nor `boot`: site `{}` uses the `qemu` compute driver, which runs a VM from its machine settings (or a process from its boot command)",
                        vm.site.value
                    ),
                    "a `qemu` site",
                )
                .with_help(format!(
                    "add `machine = {{ kernel = \"…\", ports = […] }}` to `[vms.{vm_name}]`"
                )),
            );
        }
    }

    let vm_names: Vec<&str> = inv.vms.names().collect();
    let mut member_of: HashMap<&str, (&str, Span)> = HashMap::new();
    for (group_name, group) in inv.consistency_groups.iter() {
        let mut group_site: Option<(&str, &str)> = None;
        for member in &group.vms {
            let Some(vm) = inv.vms.get(member) else {
                if !inv.declared.vms.contains(&member.value) {
                    out.push(unknown(
                        Rule::UnknownVm,
                        "VM",
                        member,
                        &vm_names,
                        &format!(" in consistency group `{group_name}`"),
                    ));
                }
                continue;
            };
            if let Some((other, span)) = member_of.get(member.value.as_str()) {
                out.push(
                    Diagnostic::error(
                        Rule::ConsistencyGroup,
                        member.span,
                        format!(
                            "VM `{}` is in consistency groups `{other}` and `{group_name}`",
                            member.value
                        ),
                        "second group",
                    )
                    .with_note(*span, "first listed here")
                    .with_help("a VM's disks are cut with one group; list it in only one"),
                );
            } else {
                member_of.insert(&member.value, (group_name, member.span));
            }
            match group_site {
                None => group_site = Some((&vm.site.value, &member.value)),
                Some((site, first)) if site != vm.site.value => out.push(Diagnostic::error(
                    Rule::ConsistencyGroup,
                    member.span,
                    format!(
                        "consistency group `{group_name}` spans sites: `{first}` is at `{site}`, `{}` at `{}`",
                        member.value, vm.site.value
                    ),
                    "at another site",
                )),
                Some(_) => {}
            }
        }
    }
    out
}

fn check_vm_placeholders(vm_name: &str, vm: &Vm, sources: &Sources, out: &mut Vec<Diagnostic>) {
    let mut strings: Vec<&Spanned<String>> = Vec::new();
    if let Some(boot) = &vm.boot {
        strings.extend(&boot.command);
    }
    if let Some(machine) = &vm.machine {
        strings.extend(&machine.args);
    }
    if let Some(health) = &vm.health {
        strings.extend(health.tcp.iter());
        strings.extend(health.http.iter());
        strings.extend(health.command.iter().flatten());
    }
    for s in strings {
        let text = sources.get(s.span.source).text();
        for p in placeholders(s, text) {
            let ok = match p.name.split_once('.') {
                Some(("vm", "name" | "site")) => true,
                Some(("disk", disk)) => vm.disks.contains(disk),
                Some((nic, "ip")) => nic
                    .strip_prefix("nic")
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n < vm.nics.len()),
                _ => false,
            };
            if !ok {
                let mut known: Vec<String> = vec!["vm.name".into(), "vm.site".into()];
                known.extend(vm.disks.names().map(|d| format!("disk.{d}")));
                known.extend((0..vm.nics.len()).map(|i| format!("nic{i}.ip")));
                let known_refs: Vec<&str> = known.iter().map(String::as_str).collect();
                let mut d = Diagnostic::error(
                    Rule::UnknownPlaceholder,
                    p.span,
                    format!("unknown placeholder `{{{}}}` in VM `{vm_name}`", p.name),
                    "nothing to substitute",
                );
                if let Some(help) = suggestion(&p.name, &known_refs) {
                    d = d.with_help(help);
                }
                out.push(d);
            }
        }
    }
}

/// The target subnet a NIC lands in, by the ASR rule: the subnet with the same name in the mapped
/// network, else the first by name.
pub fn target_subnet<'n>(
    network: &'n Network,
    source_subnet: &str,
) -> Option<(&'n str, &'n Spanned<Cidr>)> {
    if let Some(subnet) = network.subnets.get(source_subnet) {
        let name = network.subnets.names().find(|n| *n == source_subnet)?;
        return Some((name, subnet));
    }
    network.subnets.iter().min_by(|a, b| a.0.cmp(b.0))
}

/// Checks of a plan against the inventory it runs on.
pub fn check_plan(inv: &Inventory, plan: &Plan, sources: &Sources) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let site_names: Vec<&str> = inv.sites.names().collect();
    let known_site = |name: &Spanned<String>, out: &mut Vec<Diagnostic>, role: &str| {
        if name.is_empty() {
            false // missing: reported while parsing
        } else if inv.sites.contains(name) {
            true
        } else {
            if !inv.declared.sites.contains(&name.value) {
                out.push(unknown(
                    Rule::UnknownSite,
                    "site",
                    name,
                    &site_names,
                    &format!(" as the plan's {role}"),
                ));
            }
            false
        }
    };
    let source_ok = known_site(&plan.source, &mut out, "source");
    let target_ok = known_site(&plan.target, &mut out, "target");
    if plan.source.value == plan.target.value && !plan.source.is_empty() {
        out.push(
            Diagnostic::error(
                Rule::SameSourceTarget,
                plan.target.span,
                format!("the plan fails over from `{}` to itself", plan.source.value),
                "same as the source",
            )
            .with_note(plan.source.span, "the source")
            .with_help(
                "a recovery plan moves VMs to another site: set `target` to the recovery site",
            ),
        );
    }

    // The points a failover boots are where the source site replicates to: a plan whose target
    // is elsewhere has nothing to boot there.
    if source_ok
        && target_ok
        && plan.source.value != plan.target.value
        && let Some(source) = inv.sites.get(&plan.source)
    {
        match &source.replicate_to {
            Some(to) if to.value != plan.target.value => out.push(
                Diagnostic::error(
                    Rule::TargetNotReplicated,
                    plan.target.span,
                    format!(
                        "site `{}` keeps its recovery points at `{}`, not at `{}`: a failover to `{}` has no point to boot",
                        plan.source.value, to.value, plan.target.value, plan.target.value
                    ),
                    "not where the source replicates to",
                )
                .with_note(to.span, "the source site replicates here")
                .with_help(format!("set `target = \"{}\"`, or change the site's `replicate_to`", to.value)),
            ),
            Some(_) => {}
            None => out.push(
                Diagnostic::error(
                    Rule::TargetNotReplicated,
                    plan.source.span,
                    format!(
                        "site `{}` has no `replicate_to`: its VMs have no recovery points to fail over",
                        plan.source.value
                    ),
                    "replicates nowhere",
                )
                .with_help(format!(
                    "add `replicate_to = \"{}\"` to `[sites.{}]` in the inventory",
                    plan.target.value, plan.source.value
                )),
            ),
        }
    }
    // The target's compute driver must be able to start every plan VM there: a `qemu` site
    // runs a VM from its `machine` settings, or a process from its `boot` command.
    if target_ok
        && let Some(target) = inv.sites.get(&plan.target)
        && target.compute.value == crate::inventory::ComputeDriver::Qemu
    {
        for vm_ref in plan.groups.iter().flat_map(|g| &g.vms) {
            if inv
                .vms
                .get(vm_ref)
                .is_some_and(|vm| vm.machine.is_none() && vm.boot.is_none())
            {
                out.push(
                    Diagnostic::error(
                        Rule::UnsupportedCompute,
                        vm_ref.span,
                        format!(
                            "VM `{}` has neither `machine` nor `boot`: site `{}` uses the `qemu` compute driver, which runs a VM from its machine settings (or a process from its boot command)",
                            vm_ref.value, plan.target.value
                        ),
                        "could not be started at the target",
                    )
                    .with_note(target.compute.span, "the site's compute driver")
                    .with_help(format!(
                        "add `machine = {{ kernel = \"…\", ports = […] }}` to `[vms.{}]`",
                        vm_ref.value
                    )),
                );
            }
        }
    }

    // A `libvirt` target defines each copy from the domain XML its point keeps, which only a
    // VM of a libvirt site has; and a libvirt VM carries neither `machine` nor `boot` for another
    // driver to start it: say so here rather than in the middle of a run.
    if target_ok && let Some(target) = inv.sites.get(&plan.target) {
        let libvirt_target = target.compute.value == crate::inventory::ComputeDriver::Libvirt;
        for vm_ref in plan.groups.iter().flat_map(|g| &g.vms) {
            let Some(vm) = inv.vms.get(vm_ref) else {
                continue;
            };
            let libvirt_vm = inv
                .sites
                .get(&vm.site)
                .is_some_and(|s| s.compute.value == crate::inventory::ComputeDriver::Libvirt);
            // (At a `qemu` target, the check above has said it already.)
            let unstartable = libvirt_vm
                && vm.machine.is_none()
                && vm.boot.is_none()
                && !libvirt_target
                && target.compute.value != crate::inventory::ComputeDriver::Qemu;
            let not_a_domain = libvirt_target && !libvirt_vm;
            if not_a_domain || unstartable {
                out.push(
                    Diagnostic::error(
                        Rule::UnsupportedCompute,
                        vm_ref.span,
                        if not_a_domain {
                            format!(
                                "VM `{}` is not a libvirt domain: site `{}` defines each copy from the domain XML its points keep, which only VMs of a `libvirt` site have",
                                vm_ref.value, plan.target.value
                            )
                        } else {
                            format!(
                                "VM `{}` is a libvirt domain with neither `machine` nor `boot`: site `{}` uses the `{}` driver, which cannot start it",
                                vm_ref.value,
                                plan.target.value,
                                target.compute.value.as_str()
                            )
                        },
                        "could not be started at the target",
                    )
                    .with_note(target.compute.span, "the site's compute driver"),
                );
            }
        }
    }

    // Network mapping: source network name → (target network, where the mapping is written).
    let mut mapping: HashMap<&str, (&NetworkRef, Span)> = HashMap::new();
    let mut mapping_spans: Vec<Span> = Vec::new();
    // Source networks named by some mapping, valid or not: a NIC on one is not reported as
    // unmapped when its mapping already has an error of its own.
    let mut mentioned: Vec<&str> = Vec::new();
    if let Some(network) = &plan.network {
        for m in &network.map {
            mapping_spans.push(m.from.span);
            mentioned.push(&m.from.network);
            let from_ok = check_network_ref(
                inv,
                &m.from,
                &plan.source.value,
                source_ok,
                "source",
                &mut out,
            );
            let to_ok = check_network_ref(
                inv,
                &m.to,
                &plan.target.value,
                target_ok,
                "target",
                &mut out,
            );
            if let Some((_, first)) = mapping.get(m.from.network.as_str()) {
                out.push(
                    Diagnostic::error(
                        Rule::DuplicateName,
                        m.from.span,
                        format!("network `{}` is mapped twice", m.from.value),
                        "second mapping",
                    )
                    .with_note(*first, "first mapped here"),
                );
            } else if from_ok && to_ok {
                mapping.insert(&m.from.network, (&m.to.value, m.from.span));
            }
        }
        if let Some(test) = &network.test {
            check_network_ref(inv, test, &plan.target.value, target_ok, "target", &mut out);
        }
        if let Some(test) = &network.failback_test {
            check_network_ref(inv, test, &plan.source.value, source_ok, "source", &mut out);
        }
        // The plan's own way back: from target networks to source networks, one for every
        // network a failover lands in.
        let mut back_from: Vec<&str> = Vec::new();
        for m in &network.failback_map {
            let from_ok = check_network_ref(
                inv,
                &m.from,
                &plan.target.value,
                target_ok,
                "target",
                &mut out,
            );
            check_network_ref(
                inv,
                &m.to,
                &plan.source.value,
                source_ok,
                "source",
                &mut out,
            );
            if from_ok {
                back_from.push(&m.from.value.network);
            }
        }
        if !network.failback_map.is_empty() {
            for m in &network.map {
                let lands = mapping
                    .get(m.from.network.as_str())
                    .is_some_and(|(_, span)| *span == m.from.span);
                if lands && !back_from.contains(&m.to.network.as_str()) {
                    out.push(
                        Diagnostic::error(
                            Rule::FailbackMap,
                            m.to.span,
                            format!(
                                "`network.failback_map` maps no network from `{}`: a VM failed over there would have no way back",
                                m.to.value
                            ),
                            "a failover lands here",
                        )
                        .with_help(format!(
                            "add `{{ from = \"{}\", to = \"{}/…\" }}` to `network.failback_map`",
                            m.to.value, plan.source.value
                        )),
                    );
                }
            }
        }
        // Failback turns each mapping round (without a `failback_map`): two source networks
        // mapped to one target network would leave a VM coming home with no one network to
        // return to.
        let mut back: HashMap<String, &NetworkMapping> = HashMap::new();
        for m in network
            .map
            .iter()
            .filter(|_| network.failback_map.is_empty())
        {
            if mapping
                .get(m.from.network.as_str())
                .is_none_or(|(_, span)| *span != m.from.span)
            {
                continue;
            }
            match back.get(&m.to.value.to_string()) {
                Some(first) => out.push(
                    Diagnostic::error(
                        Rule::FailbackMap,
                        m.to.span,
                        format!(
                            "`{}` and `{}` both map to `{}`: a failback could not tell which network a VM returns to",
                            first.from.value, m.from.value, m.to.value
                        ),
                        "second mapping to this network",
                    )
                    .with_note(first.to.span, "first mapped here")
                    .with_help("map each source network to a network of its own at the target"),
                ),
                None => {
                    back.insert(m.to.value.to_string(), m);
                }
            }
        }
    }

    // Groups and their VMs.
    let vm_names: Vec<&str> = inv.vms.names().collect();
    let mut group_of: HashMap<&str, (&str, Span)> = HashMap::new();
    let mut group_names: HashMap<&str, Span> = HashMap::new();
    let mut plan_vms: Vec<(&Spanned<String>, &Vm)> = Vec::new();
    for group in &plan.groups {
        if let Some(first) = group_names.get(group.name.value.as_str()) {
            out.push(
                Diagnostic::error(
                    Rule::DuplicateName,
                    group.name.span,
                    format!("two groups are named `{}`", group.name.value),
                    "second group with this name",
                )
                .with_note(*first, "first defined here"),
            );
        } else {
            group_names.insert(&group.name.value, group.name.span);
        }
        for vm_ref in &group.vms {
            let Some(vm) = inv.vms.get(vm_ref) else {
                if !inv.declared.vms.contains(&vm_ref.value) {
                    out.push(unknown(
                        Rule::UnknownVm,
                        "VM",
                        vm_ref,
                        &vm_names,
                        " in the inventory",
                    ));
                }
                continue;
            };
            if let Some((other_group, first)) = group_of.get(vm_ref.value.as_str()) {
                out.push(
                    Diagnostic::error(
                        Rule::VmInTwoGroups,
                        vm_ref.span,
                        format!(
                            "VM `{}` is in groups `{other_group}` and `{}`",
                            vm_ref.value, group.name.value
                        ),
                        "listed again",
                    )
                    .with_note(*first, "first listed here")
                    .with_help("a VM boots once per failover: keep it in one group"),
                );
                continue;
            }
            group_of.insert(&vm_ref.value, (&group.name.value, vm_ref.span));
            if vm.site.value != plan.source.value && source_ok {
                out.push(
                    Diagnostic::error(
                        Rule::VmNotInSource,
                        vm_ref.span,
                        format!(
                            "VM `{}` is protected at site `{}`, not at the plan's source `{}`",
                            vm_ref.value, vm.site.value, plan.source.value
                        ),
                        "not at the source site",
                    )
                    .with_note(vm.site.span, "the VM's site")
                    .with_note(plan.source.span, "the plan's source"),
                );
                continue;
            }
            plan_vms.push((vm_ref, vm));
        }
    }

    // A consistency group fails over whole.
    for (cg_name, cg) in inv.consistency_groups.iter() {
        let in_plan: Vec<&Spanned<String>> = cg
            .vms
            .iter()
            .filter(|m| group_of.contains_key(m.value.as_str()))
            .collect();
        if in_plan.is_empty() {
            continue;
        }
        for member in &cg.vms {
            if !group_of.contains_key(member.value.as_str()) && inv.vms.contains(member) {
                let (_, at) = group_of[in_plan[0].value.as_str()];
                out.push(
                    Diagnostic::error(
                        Rule::ConsistencyGroup,
                        at,
                        format!(
                            "consistency group `{cg_name}` is split: `{}` is in the plan but `{}` is not",
                            in_plan[0].value, member.value
                        ),
                        "group member",
                    )
                    .with_note(member.span, "this member is missing from the plan")
                    .with_help("VMs of one consistency group share one recovery point: fail them over together"),
                );
            }
        }
    }

    let mapping_complete = plan.network.as_ref().is_none_or(|n| n.complete);
    if source_ok && target_ok && plan.source.value != plan.target.value && mapping_complete {
        let mapping = Mapping {
            valid: &mapping,
            mentioned: &mentioned,
            spans: &mapping_spans,
        };
        check_addresses(inv, plan, &plan_vms, &mapping, &mut out);
    }

    // Steps.
    let plan_vm_names: Vec<&str> = plan_vms.iter().map(|(r, _)| r.value.as_str()).collect();
    for group in &plan.groups {
        let mut step_names: HashMap<&str, Span> = HashMap::new();
        for step in group.pre.iter().chain(&group.post) {
            if let Some(name) = &step.name {
                if let Some(first) = step_names.get(name.value.as_str()) {
                    out.push(
                        Diagnostic::error(
                            Rule::DuplicateName,
                            name.span,
                            format!(
                                "two steps of group `{}` are named `{}`",
                                group.name.value, name.value
                            ),
                            "second step with this name",
                        )
                        .with_note(*first, "first defined here"),
                    );
                } else {
                    step_names.insert(&name.value, name.span);
                }
            }
            check_step(inv, step, &plan_vm_names, &group_of, sources, &mut out);
        }
    }
    out
}

fn check_network_ref(
    inv: &Inventory,
    r: &Spanned<NetworkRef>,
    expected_site: &str,
    expected_site_known: bool,
    role: &str,
    out: &mut Vec<Diagnostic>,
) -> bool {
    if !expected_site_known {
        return false; // the plan's site is missing or unknown: reported already
    }
    if r.site != expected_site {
        out.push(
            Diagnostic::error(
                Rule::MappingSite,
                r.span,
                format!(
                    "`{}` is not a network of the {role} site `{expected_site}`",
                    r.value
                ),
                format!("expected `{expected_site}/…`"),
            )
            .with_help(
                "mappings go from networks of the source site to networks of the target site",
            ),
        );
        return false;
    }
    let Some(site) = inv.sites.get(&r.site) else {
        return false;
    };
    if site.networks.contains(&r.network) {
        return true;
    }
    let known: Vec<&str> = site.networks.names().collect();
    let name = Spanned::new(r.network.clone(), r.span);
    out.push(unknown(
        Rule::UnknownNetwork,
        "network",
        &name,
        &known,
        &format!(" at site `{}`", r.site),
    ));
    false
}

/// The plan's network mapping as the address checks need it.
struct Mapping<'a> {
    valid: &'a HashMap<&'a str, (&'a NetworkRef, Span)>,
    mentioned: &'a [&'a str],
    spans: &'a [Span],
}

fn check_addresses(
    inv: &Inventory,
    plan: &Plan,
    plan_vms: &[(&Spanned<String>, &Vm)],
    mapping: &Mapping<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let overrides = plan
        .network
        .as_ref()
        .map(|n| n.overrides.as_slice())
        .unwrap_or(&[]);
    let test_network = plan
        .network
        .as_ref()
        .and_then(|n| n.test.as_ref())
        .and_then(|t| {
            inv.sites
                .get(&t.site)?
                .networks
                .get(&t.network)
                .map(|n| (t, n))
        });

    // Overrides must name a plan VM and one of its NICs.
    for o in overrides {
        let Some((_, vm)) = plan_vms.iter().find(|(r, _)| r.value == o.vm.value) else {
            let names: Vec<&str> = plan_vms.iter().map(|(r, _)| r.value.as_str()).collect();
            out.push(unknown(
                Rule::UnknownVm,
                "VM",
                &o.vm,
                &names,
                " in this plan's groups",
            ));
            continue;
        };
        let index = o.nic.as_ref().map(|n| n.value as usize).unwrap_or(0);
        if index >= vm.nics.len() {
            let span = o.nic.as_ref().map(|n| n.span).unwrap_or(o.vm.span);
            out.push(Diagnostic::error(
                Rule::InvalidValue,
                span,
                format!(
                    "VM `{}` has {} NIC(s); there is no nic {index}",
                    o.vm.value,
                    vm.nics.len()
                ),
                "no such NIC",
            ));
        }
    }

    // (target network, ip) → who would hold it
    let mut taken: HashMap<(String, IpAddr), (String, Span)> = HashMap::new();
    for (vm_ref, vm) in plan_vms {
        for (index, nic) in vm.nics.iter().enumerate() {
            let over = overrides.iter().find(|o| {
                o.vm.value == vm_ref.value
                    && o.nic.as_ref().map(|n| n.value as usize).unwrap_or(0) == index
            });
            let Some((to, _)) = mapping.valid.get(nic.network.as_str()) else {
                if mapping.mentioned.contains(&nic.network.as_str()) {
                    continue;
                }
                let mut d = Diagnostic::error(
                    Rule::UnmappedNetwork,
                    vm_ref.span,
                    format!(
                        "VM `{}` has a NIC on `{}/{}`, which the plan maps to no network at `{}`",
                        vm_ref.value, vm.site.value, nic.network.value, plan.target.value
                    ),
                    format!("nic{index} would have no network after failover"),
                )
                .with_note(nic.network.span, "the NIC's network")
                .with_help(format!(
                    "add `{{ from = \"{}/{}\", to = \"{}/…\" }}` to `network.map`",
                    plan.source.value, nic.network.value, plan.target.value
                ));
                if let Some(first) = mapping.spans.first() {
                    d = d.with_note(*first, "mappings are listed here");
                }
                out.push(d);
                continue;
            };
            let Some(target_net) = inv
                .sites
                .get(&to.site)
                .and_then(|s| s.networks.get(&to.network))
            else {
                continue;
            };
            let subnet = match over.and_then(|o| o.subnet.as_ref()) {
                Some(name) => match target_net.subnets.get(name) {
                    Some(s) => Some((name.value.as_str(), s)),
                    None => {
                        let known: Vec<&str> = target_net.subnets.names().collect();
                        out.push(unknown(
                            Rule::UnknownSubnet,
                            "subnet",
                            name,
                            &known,
                            &format!(" in `{to}`"),
                        ));
                        None
                    }
                },
                None => target_subnet(target_net, &nic.subnet),
            };
            let Some((subnet_name, subnet)) = subnet else {
                continue;
            };
            let ip = match over.and_then(|o| o.ip.as_ref()) {
                Some(ip) if !subnet.0.contains(&ip.value) => {
                    out.push(
                        Diagnostic::error(
                            Rule::IpOutsideSubnet,
                            ip.span,
                            format!(
                                "override address {} is outside target subnet `{subnet_name}` ({})",
                                ip.value, subnet.0
                            ),
                            format!("not in {}", subnet.0),
                        )
                        .with_note(subnet.span, "the target subnet"),
                    );
                    None
                }
                Some(ip) => Some((ip.value, ip.span)),
                // The source address is kept when it is a usable address of the target subnet
                // (the runtime's rule: `address::usable`).
                None => nic
                    .ip
                    .as_ref()
                    .filter(|ip| crate::address::usable(&subnet.0, ip.value))
                    .map(|ip| (ip.value, vm_ref.span)),
            };
            if let Some((ip, span)) = ip {
                let key = (to.to_string(), ip);
                if let Some((other, other_span)) = taken.get(&key) {
                    out.push(
                        Diagnostic::error(
                            Rule::DuplicateIp,
                            span,
                            format!("VMs `{other}` and `{}` would both get {ip} on `{to}` after failover", vm_ref.value),
                            "address already assigned",
                        )
                        .with_note(*other_span, format!("`{other}` gets it here"))
                        .with_help("give one of them an override: `[[network.override]] vm = …, ip = …`"),
                    );
                } else {
                    taken.insert(key, (vm_ref.value.clone(), span));
                }
            }
            if let (Some((test_ref, test_net)), Some(test_ip)) =
                (test_network, over.and_then(|o| o.test_ip.as_ref()))
            {
                let wanted = over
                    .and_then(|o| o.subnet.as_ref())
                    .map(|s| s.value.as_str())
                    .unwrap_or(&nic.subnet);
                if let Some((name, test_subnet)) = target_subnet(test_net, wanted)
                    && !test_subnet.0.contains(&test_ip.value)
                {
                    out.push(
                        Diagnostic::error(
                            Rule::IpOutsideSubnet,
                            test_ip.span,
                            format!(
                                "test address {} is outside subnet `{name}` ({}) of `{}`",
                                test_ip.value, test_subnet.0, test_ref.value
                            ),
                            format!("not in {}", test_subnet.0),
                        )
                        .with_note(test_subnet.span, "the test subnet"),
                    );
                }
            }
        }
    }
}

const PLAN_PLACEHOLDERS: &[&str] = &["run.id", "plan.name", "group.name", "operation"];

fn check_step(
    inv: &Inventory,
    step: &Step,
    plan_vms: &[&str],
    group_of: &HashMap<&str, (&str, Span)>,
    sources: &Sources,
    out: &mut Vec<Diagnostic>,
) {
    if let Some(allow) = &step.allow {
        for vm in &allow.vms {
            if !group_of.contains_key(vm.value.as_str()) {
                let context = if inv.vms.contains(vm) {
                    " in this plan (it is in the inventory but in no group)"
                } else {
                    " in this plan"
                };
                out.push(unknown(Rule::UnknownVm, "VM", vm, plan_vms, context));
            }
        }
    }
    let strings = step
        .config_strings
        .iter()
        .chain(step.allow.iter().flat_map(|a| a.tcp.iter().chain(&a.http)));
    for s in strings {
        let text = sources.get(s.span.source).text();
        for p in placeholders(s, text) {
            if PLAN_PLACEHOLDERS.contains(&p.name.as_str()) {
                continue;
            }
            // vm.NAME.ip or vm.NAME.nicN.ip
            let parts: Vec<&str> = p.name.split('.').collect();
            let problem = match parts.as_slice() {
                ["vm", name, "ip"] | ["vm", name, _, "ip"] if !plan_vms.contains(name) => {
                    Some(format!(
                        "placeholder `{{{}}}` names VM `{name}`, which is not in this plan",
                        p.name
                    ))
                }
                ["vm", name, nic, "ip"] => {
                    let count = inv.vms.get(name).map(|v| v.nics.len()).unwrap_or(0);
                    match nic
                        .strip_prefix("nic")
                        .and_then(|n| n.parse::<usize>().ok())
                    {
                        Some(n) if n < count => None,
                        _ => Some(format!(
                            "placeholder `{{{}}}`: VM `{name}` has no NIC `{nic}`",
                            p.name
                        )),
                    }
                }
                ["vm", name, "ip"] if inv.vms.get(name).is_some_and(|v| v.nics.is_empty()) => Some(
                    format!("placeholder `{{{}}}`: VM `{name}` has no NIC", p.name),
                ),
                ["vm", _, "ip"] => None,
                _ => Some(format!("unknown placeholder `{{{}}}`", p.name)),
            };
            if let Some(message) = problem {
                let mut d = Diagnostic::error(
                    Rule::UnknownPlaceholder,
                    p.span,
                    message,
                    "nothing to substitute",
                );
                if parts.first() != Some(&"vm") {
                    d = d.with_help(
                        "placeholders: `{vm.NAME.ip}`, `{vm.NAME.nicN.ip}`, `{run.id}`, `{plan.name}`, `{group.name}`, `{operation}`",
                    );
                } else if let Some(name) = parts.get(1)
                    && let Some(best) = closest(name, plan_vms.iter().copied())
                    && best != *name
                {
                    d = d.with_help(format!("did you mean `{best}`?"));
                }
                out.push(d);
            }
        }
    }
}

/// A VM's disks are written in the inventory, except at a `libvirt` site, where they are the
/// domain's (read from libvirt, never written twice); `domain` is only for libvirt VMs.
fn check_vm_disks(
    vm_name: &str,
    vm: &Vm,
    site: &crate::inventory::Site,
    out: &mut Vec<Diagnostic>,
) {
    let libvirt = site.compute.value == crate::inventory::ComputeDriver::Libvirt;
    if libvirt && let Some((name, path)) = vm.disks.iter().next() {
        out.push(
            Diagnostic::error(
                Rule::InvalidValue,
                path.span,
                format!(
                    "VM `{vm_name}` is at `libvirt` site `{}`: its disks are its domain's, read from libvirt (`{name}` is not needed)",
                    vm.site.value
                ),
                "read from libvirt",
            )
            .with_help(format!("remove `disks` from `[vms.{vm_name}]`")),
        );
    }
    if !libvirt && !vm.disks_written {
        out.push(
            Diagnostic::error(
                Rule::MissingKey,
                vm.site.span,
                format!(
                    "VM `{vm_name}` has no `disks`: site `{}` uses the `{}` compute driver, which reads disks from the inventory",
                    vm.site.value,
                    site.compute.value.as_str()
                ),
                "no disks",
            )
            .with_help(format!("add `disks = {{ data = \"vms/{vm_name}.img\" }}` to `[vms.{vm_name}]`")),
        );
    }
    if !libvirt && let Some(domain) = &vm.domain {
        out.push(Diagnostic::error(
            Rule::InvalidValue,
            domain.span,
            format!(
                "`domain` names a libvirt domain; VM `{vm_name}`'s site `{}` uses the `{}` driver",
                vm.site.value,
                site.compute.value.as_str()
            ),
            "not a libvirt site",
        ));
    }
}
