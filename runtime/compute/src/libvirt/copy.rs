//! A run's copy of a domain: the source's XML (kept in the point) made into a new domain at the
//! target — its own name and no UUID, its disks on the restored images (or a drill's overlays),
//! its NICs on the mapped networks, its console into the run's log — and the isolated network a
//! drill's copies boot on. Everything else in the XML (machine type, CPU model, devices) stays as
//! the source defined it: the copy is the same VM.
//!
//! The XML is edited in place, element by element (roxmltree gives each element's place in the
//! text), so what Lifeboat does not know about is carried over untouched.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::PathBuf;

use super::domain::XmlError;

/// What a copy of a domain is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopySpec {
    pub name: String,
    /// The guest's name for each disk (`vda`) → the image the copy runs on.
    pub disks: HashMap<String, PathBuf>,
    /// Each NIC of the source, in its order: where the copy's goes.
    pub nics: Vec<CopyNic>,
    /// Where the copy's serial console writes.
    pub console: PathBuf,
    /// The run's start key, written into the domain's description so a run that died after
    /// defining the copy recognises it as its own.
    pub key: String,
    /// Pause the guest on a disk error instead of handing the error to it (an instant boot's
    /// disks fail reads while their export server is away; the run resumes the guest when it
    /// is back).
    pub hold_on_errors: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyNic {
    /// The libvirt network it joins.
    pub network: String,
    /// Its MAC: the source's on a failover (what the guest's configuration may name), a new one
    /// in a drill (the source may still run on a network the copy's traffic could reach).
    pub mac: String,
}

/// The description that marks a copy as started under `key`.
pub fn key_mark(key: &str) -> String {
    format!("{COPY_MARK}{key}")
}

const COPY_MARK: &str = "lifeboat copy, start key ";

/// Whether domain XML `xml` is a copy some run of Lifeboat defined.
pub fn is_copy(xml: &str) -> bool {
    xml.contains(COPY_MARK)
}

/// The copy of the domain `source_xml` describes, as `spec` says.
pub fn copy_xml(source_xml: &str, spec: &CopySpec) -> Result<String, XmlError> {
    edit(source_xml, spec).map_err(XmlError::new)
}

fn edit(source_xml: &str, spec: &CopySpec) -> Result<String, String> {
    let doc = roxmltree::Document::parse(source_xml).map_err(|e| format!("domain XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err("domain XML: the root is not <domain>".into());
    }
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let name = children(root, "name")
        .next()
        .ok_or("domain XML: no <name>")?;
    edits.push((
        name.range(),
        format!(
            "<name>{}</name><description>{}</description>",
            escape(&spec.name),
            escape(&key_mark(&spec.key))
        ),
    ));
    for drop in ["uuid", "description"] {
        for n in children(root, drop) {
            edits.push((n.range(), String::new()));
        }
    }
    // A UEFI VM's variable store is the source's file: libvirt makes the copy its own.
    if let Some(os) = children(root, "os").next() {
        for n in children(os, "nvram") {
            edits.push((n.range(), String::new()));
        }
    }
    let devices = children(root, "devices")
        .next()
        .ok_or("domain XML: no <devices>")?;
    let mut nics = spec.nics.iter();
    let mut disks_seen = Vec::new();
    for d in devices.children().filter(|c| c.is_element()) {
        match d.tag_name().name() {
            "disk" if d.attribute("device").unwrap_or("disk") == "disk" => {
                let target = children(d, "target").next();
                let dev = target.and_then(|t| t.attribute("dev")).unwrap_or_default();
                let Some(image) = spec.disks.get(dev) else {
                    return Err(format!(
                        "disk `{dev}` of the domain is not in the point (the point has {})",
                        list(spec.disks.keys())
                    ));
                };
                disks_seen.push(dev.to_string());
                let bus = target
                    .and_then(|t| t.attribute("bus"))
                    .map(|b| format!(" bus='{}'", escape(b)))
                    .unwrap_or_default();
                let format = if image.extension().is_some_and(|e| e == "qcow2") {
                    "qcow2"
                } else {
                    "raw"
                };
                let hold = if spec.hold_on_errors {
                    " error_policy='stop' rerror_policy='stop'"
                } else {
                    ""
                };
                edits.push((
                    d.range(),
                    format!(
                        "<disk type='file' device='disk'><driver name='qemu' type='{format}'{hold}/><source file='{}'/><target dev='{}'{bus}/></disk>",
                        escape(&image.display().to_string()),
                        escape(dev)
                    ),
                ));
            }
            "interface" => {
                let nic = nics
                    .next()
                    .ok_or("the domain has more NICs than were mapped")?;
                let model = children(d, "model")
                    .next()
                    .and_then(|m| m.attribute("type"))
                    .map(|m| format!("<model type='{}'/>", escape(m)))
                    .unwrap_or_default();
                edits.push((
                    d.range(),
                    format!(
                        "<interface type='network'><mac address='{}'/><source network='{}'/>{model}</interface>",
                        escape(&nic.mac),
                        escape(&nic.network)
                    ),
                ));
            }
            // The console goes to the run's log, not to a file of the source's.
            "serial" if d.attribute("type") == Some("file") => {
                let port = children(d, "target")
                    .next()
                    .and_then(|t| t.attribute("port"))
                    .unwrap_or("0");
                edits.push((
                    d.range(),
                    format!(
                        "<serial type='file'><source path='{}'/><target port='{}'/></serial>",
                        escape(&spec.console.display().to_string()),
                        escape(port)
                    ),
                ));
            }
            "console" if d.attribute("type") == Some("file") => {
                edits.push((d.range(), String::new()));
            }
            _ => {}
        }
    }
    if nics.next().is_some() {
        return Err("more NICs were mapped than the domain has".into());
    }
    if let Some(missing) = spec.disks.keys().find(|k| !disks_seen.contains(k)) {
        return Err(format!(
            "the point's disk `{missing}` is not a disk of the domain"
        ));
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = source_xml.to_string();
    for (range, text) in edits {
        out.replace_range(range, &text);
    }
    Ok(out)
}

/// An isolated network for a drill: a bridge of its own with no `<forward>` (libvirt lets
/// nothing through to other networks), the host at `gateway` on it (so probes reach the
/// copies), and a DHCP reservation for each copy's NIC, so it gets the address the run assigned.
pub fn isolated_network_xml(
    name: &str,
    bridge: &str,
    subnet: Option<(Ipv4Addr, u8, Ipv4Addr)>,
    hosts: &[(String, Ipv4Addr)],
) -> String {
    let mut xml = format!(
        "<network><name>{}</name><bridge name='{}' stp='off' delay='0'/>",
        escape(name),
        escape(bridge)
    );
    if let Some((_, prefix, gateway)) = subnet {
        xml.push_str(&format!("<ip address='{gateway}' prefix='{prefix}'><dhcp>"));
        for (mac, ip) in hosts {
            xml.push_str(&format!("<host mac='{}' ip='{ip}'/>", escape(mac)));
        }
        xml.push_str("</dhcp></ip>");
    }
    xml.push_str("</network>");
    xml
}

/// The host's address on a drill network of `net/prefix`: its first usable address (a drill
/// hands out test addresses from the top of the subnet down).
pub fn gateway(net: Ipv4Addr, prefix: u8) -> Option<Ipv4Addr> {
    if prefix >= 31 {
        return None;
    }
    Some(Ipv4Addr::from(u32::from(net) + 1))
}

/// A MAC a drill's copy gets, the same every time for one run, VM and NIC (a resumed run
/// defines the same copy): locally administered, in QEMU's `52:54:00` range.
pub fn drill_mac(run: &str, vm: &str, nic: usize) -> String {
    let h = fnv(&format!("{run}\0{vm}\0{nic}"));
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (h >> 16) as u8,
        (h >> 8) as u8,
        h as u8
    )
}

/// A drill network's name and bridge for run `run` (a bridge name has at most 15 bytes).
pub fn drill_network_name(run: &str, index: usize) -> (String, String) {
    let h = fnv(run) as u32;
    (
        format!("lifeboat-{}-{index}", safe(run)),
        format!("lb{h:08x}{index}"),
    )
}

fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// FNV-1a: stable across builds (unlike std's hasher), which is what names and MACs need.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn children<'a, 'i: 'a>(
    n: roxmltree::Node<'a, 'i>,
    tag: &'a str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
    n.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == tag)
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let mut v: Vec<&str> = names.map(String::as_str).collect();
    v.sort_unstable();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// XML's five special characters, escaped for text and attributes alike.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SOURCE: &str = r#"<domain type='qemu'>
  <name>erp-db</name>
  <uuid>0f8c7a1e-3b7d-4f8e-9a55-1f2e3d4c5b6a</uuid>
  <description>the ERP database</description>
  <memory unit='KiB'>262144</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>/k/vmlinuz</kernel></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/erp-db.qcow2'/><backingStore/>
      <target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda' bus='sata'/></disk>
    <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br0'/><model type='virtio'/></interface>
    <serial type='file'><source path='/var/log/erp-db.log'/><target port='0'/></serial>
    <console type='file'><source path='/var/log/erp-db.log'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>"#;

    fn spec() -> CopySpec {
        CopySpec {
            name: "erp-db-dr".into(),
            disks: HashMap::from([("vda".into(), PathBuf::from("/runs/r1/disks/erp-db/vda.img"))]),
            nics: vec![CopyNic {
                network: "prod-dr".into(),
                mac: "52:54:00:12:34:56".into(),
            }],
            console: "/runs/r1/logs/erp-db.log".into(),
            key: "r1/start/erp-db".into(),
            hold_on_errors: false,
        }
    }

    #[test]
    fn a_copy_is_the_same_vm_on_its_own_name_disks_networks_and_console() {
        let xml = copy_xml(SOURCE, &spec()).unwrap();
        let d = super::super::domain::parse(&xml).unwrap();
        assert_eq!(d.name, "erp-db-dr");
        assert_eq!((d.memory_kib, d.vcpus), (262_144, 1));
        assert_eq!(d.disks.len(), 1);
        assert_eq!(
            d.disks[0].source,
            PathBuf::from("/runs/r1/disks/erp-db/vda.img")
        );
        assert_eq!(d.disks[0].format, "raw");
        assert_eq!(d.nics[0].network.as_deref(), Some("prod-dr"));
        assert_eq!(d.nics[0].mac.as_deref(), Some("52:54:00:12:34:56"));
        assert!(!xml.contains("<uuid>"), "{xml}");
        assert!(!xml.contains("backingStore"), "{xml}");
        assert!(!xml.contains("the ERP database"), "{xml}");
        assert!(xml.contains(&key_mark("r1/start/erp-db")), "{xml}");
        assert!(xml.contains("/runs/r1/logs/erp-db.log"), "{xml}");
        assert!(!xml.contains("/var/log/erp-db.log"), "{xml}");
        // What Lifeboat does not know about is the source's, untouched.
        assert!(xml.contains("<source file='/iso/x.iso'/>"), "{xml}");
        assert!(xml.contains("<memballoon model='none'/>"), "{xml}");
        assert!(xml.contains("<model type='virtio'/>"), "{xml}");
    }

    #[test]
    fn a_drill_overlay_is_qcow2_and_a_disk_or_nic_that_does_not_match_is_refused() {
        let mut s = spec();
        s.disks
            .insert("vda".into(), "/runs/r1/disks/erp-db/vda.drill.qcow2".into());
        let xml = copy_xml(SOURCE, &s).unwrap();
        assert!(xml.contains("type='qcow2'"), "{xml}");
        assert!(!xml.contains("rerror_policy"), "{xml}");
        // An instant boot's disk pauses the guest on a read the export server could not serve.
        s.hold_on_errors = true;
        let xml = copy_xml(SOURCE, &s).unwrap();
        assert!(
            xml.contains("type='qcow2' error_policy='stop' rerror_policy='stop'"),
            "{xml}"
        );

        let mut s = spec();
        s.disks = HashMap::from([("vdb".into(), PathBuf::from("/x/vdb.img"))]);
        let e = copy_xml(SOURCE, &s).unwrap_err().to_string();
        assert!(e.contains("disk `vda`") && e.contains("vdb"), "{e}");

        let mut s = spec();
        s.nics.clear();
        let e = copy_xml(SOURCE, &s).unwrap_err().to_string();
        assert!(e.contains("more NICs"), "{e}");
    }

    #[test]
    fn a_drill_network_has_no_forward_and_reserves_each_copys_address() {
        let net = Ipv4Addr::new(192, 0, 2, 0);
        let gw = gateway(net, 24).unwrap();
        assert_eq!(gw, Ipv4Addr::new(192, 0, 2, 1));
        let xml = isolated_network_xml(
            "lifeboat-r1-0",
            "lb0000000a0",
            Some((net, 24, gw)),
            &[("52:54:00:aa:bb:cc".into(), Ipv4Addr::new(192, 0, 2, 10))],
        );
        assert!(!xml.contains("forward"), "{xml}");
        assert!(
            xml.contains("<host mac='52:54:00:aa:bb:cc' ip='192.0.2.10'/>"),
            "{xml}"
        );
        assert!(xml.contains("address='192.0.2.1' prefix='24'"), "{xml}");
        let (name, bridge) = drill_network_name("erp/2026-12-07T10:00", 0);
        assert!(
            bridge.len() <= 15 && name.starts_with("lifeboat-erp-"),
            "{name} {bridge}"
        );
        assert_eq!(drill_mac("r", "vm", 0), drill_mac("r", "vm", 0));
        assert_ne!(drill_mac("r", "vm", 0), drill_mac("r", "vm", 1));
    }
}
