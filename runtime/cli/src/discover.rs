//! `lifeboat discover SITE`: the domains on a `libvirt` site's hosts, with their disks and NICs
//! and which VM protects each; `--write --vm DOMAIN…` appends inventory stanzas for chosen
//! ones (then validates the inventory, and puts the file back as it was if it does not pass).

use std::path::Path;

use lifeboat_compute::libvirt::Discovered;
use lifeboat_plan::inventory::ComputeDriver;

use crate::exit_codes;

/// What `discover` is asked for.
pub struct Discover<'a> {
    pub site: &'a str,
    pub write: bool,
    pub vms: &'a [String],
    pub policy: Option<&'a str>,
}

pub fn run(config: &Path, ask: &Discover<'_>, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let loaded = match crate::load::load(config, None, json, io) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let resolved = &loaded.config;
    let inv = &resolved.inventory;
    let Some(site) = inv.sites.get(ask.site) else {
        let _ = writeln!(io.stderr, "error: no site `{}` in the inventory", ask.site);
        return exit_codes::USAGE;
    };
    if site.compute.value != ComputeDriver::Libvirt {
        let _ = writeln!(
            io.stderr,
            "error: site `{}` uses the `{}` compute driver; discover lists the domains of `libvirt` sites",
            ask.site,
            site.compute.value.as_str()
        );
        return exit_codes::USAGE;
    }
    let uris: Vec<String> = site.hosts.iter().map(|h| h.value.clone()).collect();
    let found = match tokio::runtime::Runtime::new()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(lifeboat_compute::libvirt::discover(&uris))
                .map_err(|e| e.to_string())
        }) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {e}");
            return exit_codes::FAILED;
        }
    };
    // Which VM of this site protects each domain (its `domain`, or its name).
    let protector = |domain: &str| -> Option<String> {
        inv.vms
            .iter()
            .filter(|(_, vm)| vm.site.value == ask.site)
            .find(|(name, vm)| {
                vm.domain
                    .as_ref()
                    .map_or(*name == domain, |d| d.value == domain)
            })
            .map(|(name, _)| name.to_string())
    };
    if ask.write {
        return write(config, ask, &found, &protector, inv, json, io);
    }
    if json {
        let doc: Vec<serde_json::Value> = found
            .iter()
            .map(|d| {
                serde_json::json!({
                    "host": d.host,
                    "domain": d.spec.name,
                    "state": d.state.as_str(),
                    "protected_by": protector(&d.spec.name),
                    "memory_mib": d.spec.memory_kib / 1024,
                    "cpus": d.spec.vcpus,
                    "disks": d.spec.disks.iter().map(|k| serde_json::json!({
                        "target": k.target, "source": k.source, "format": k.format,
                    })).collect::<Vec<_>>(),
                    "nics": d.spec.nics.iter().map(|n| serde_json::json!({
                        "mac": n.mac, "network": n.network, "bridge": n.bridge,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let _ = writeln!(
            io.stdout,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "site": ask.site, "domains": doc }))
                .unwrap_or_default()
        );
        return exit_codes::OK;
    }
    if found.is_empty() {
        let _ = writeln!(
            io.stdout,
            "site {}: no domains on {}",
            ask.site,
            uris.join(", ")
        );
    }
    for d in &found {
        let by = protector(&d.spec.name).map_or_else(
            || "not protected".to_string(),
            |vm| format!("protected as VM `{vm}`"),
        );
        let _ = writeln!(
            io.stdout,
            "{} on {} ({}, {} MiB, {} CPU): {by}",
            d.spec.name,
            d.host,
            d.state.as_str(),
            d.spec.memory_kib / 1024,
            d.spec.vcpus
        );
        for k in &d.spec.disks {
            let _ = writeln!(
                io.stdout,
                "  disk {}: {} ({})",
                k.target,
                k.source.display(),
                k.format
            );
        }
        for (i, n) in d.spec.nics.iter().enumerate() {
            let _ = writeln!(
                io.stdout,
                "  nic{i}: {} {}",
                n.mac.as_deref().unwrap_or("(no MAC)"),
                n.attachment()
            );
        }
    }
    exit_codes::OK
}

/// The VM name a domain gets: its name where that is a valid VM name, else with every other
/// character made `-` (a leading one dropped), cut to 63 characters.
pub fn vm_name(domain: &str) -> String {
    let mapped: String = domain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    trimmed.chars().take(63).collect()
}

fn write(
    config: &Path,
    ask: &Discover<'_>,
    found: &[Discovered],
    protector: &dyn Fn(&str) -> Option<String>,
    inv: &lifeboat_plan::Inventory,
    json: bool,
    io: &mut crate::Io<'_>,
) -> u8 {
    if ask.vms.is_empty() {
        let _ = writeln!(
            io.stderr,
            "error: --write needs the domains to protect (--vm DOMAIN…)"
        );
        return exit_codes::USAGE;
    }
    let policy = match ask.policy {
        Some(p) if inv.policies.get(p).is_some() => p.to_string(),
        Some(p) => {
            let _ = writeln!(io.stderr, "error: no policy `{p}` in the inventory");
            return exit_codes::USAGE;
        }
        None => {
            let names: Vec<&str> = inv.policies.names().collect();
            match names.as_slice() {
                [one] => one.to_string(),
                _ => {
                    let _ = writeln!(
                        io.stderr,
                        "error: the inventory has {} policies ({}): say which with --policy",
                        names.len(),
                        names.join(", ")
                    );
                    return exit_codes::USAGE;
                }
            }
        }
    };
    let mut stanzas = String::new();
    let mut written = Vec::new();
    for domain in ask.vms {
        if !found.iter().any(|d| &d.spec.name == domain) {
            let _ = writeln!(
                io.stderr,
                "error: no domain `{domain}` on the hosts of site `{}`",
                ask.site
            );
            return exit_codes::USAGE;
        }
        if let Some(vm) = protector(domain) {
            let _ = writeln!(
                io.stderr,
                "error: domain `{domain}` is already protected as VM `{vm}`"
            );
            return exit_codes::USAGE;
        }
        let name = vm_name(domain);
        if name.is_empty() || inv.vms.get(&name).is_some() {
            let _ = writeln!(
                io.stderr,
                "error: domain `{domain}` would be VM `{name}`, which the inventory already has (or is not a name): add it by hand with `domain = \"{domain}\"`"
            );
            return exit_codes::USAGE;
        }
        stanzas.push_str(&format!(
            "\n[vms.{name}]\nsite = \"{}\"\npolicy = \"{policy}\"\ndomain = \"{}\"\n",
            ask.site,
            domain.replace('\\', "\\\\").replace('"', "\\\"")
        ));
        written.push(name);
    }
    let before = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: cannot read {}: {e}", config.display());
            return exit_codes::FAILED;
        }
    };
    let mut after = before.clone();
    if !after.ends_with('\n') {
        after.push('\n');
    }
    after.push_str(&stanzas);
    if let Err(e) = std::fs::write(config, &after) {
        let _ = writeln!(io.stderr, "error: cannot write {}: {e}", config.display());
        return exit_codes::FAILED;
    }
    let validation = lifeboat_loader::validate(config, &[]);
    if !validation.is_valid() {
        let _ = std::fs::write(config, &before);
        let _ = writeln!(
            io.stderr,
            "error: the inventory with the new VMs does not validate; {} is as it was",
            config.display()
        );
        return exit_codes::INVALID;
    }
    if json {
        let _ = writeln!(io.stdout, "{}", serde_json::json!({ "written": written }));
    } else {
        for name in &written {
            let _ = writeln!(io.stdout, "wrote [vms.{name}] to {}", config.display());
        }
    }
    exit_codes::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_name_becomes_a_valid_vm_name() {
        assert_eq!(vm_name("erp-db"), "erp-db");
        assert_eq!(vm_name("erp db/01"), "erp-db-01");
        assert_eq!(vm_name("_x"), "x");
        assert_eq!(vm_name(&"a".repeat(80)).len(), 63);
    }
}
