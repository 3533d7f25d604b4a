//! What Lifeboat reads from a domain's XML: its disks, NICs, memory and CPUs. The inventory
//! names a domain; everything else comes from here, so it is never written twice.

use std::path::PathBuf;

/// A domain as its XML describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainSpec {
    pub name: String,
    pub memory_kib: u64,
    pub vcpus: u32,
    pub disks: Vec<DomainDisk>,
    pub nics: Vec<DomainNic>,
}

/// A disk (`<disk device='disk'>`) with a file or block device behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainDisk {
    /// The guest's name for it (`vda`): the disk's name in Lifeboat's points, and the name
    /// libvirt gives its backup export.
    pub target: String,
    pub source: PathBuf,
    /// `qcow2`, `raw`, …: only qcow2 keeps checkpoints (persistent dirty bitmaps).
    pub format: String,
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainNic {
    pub mac: Option<String>,
    /// The libvirt network it is attached to (`<interface type='network'>`).
    pub network: Option<String>,
    /// The host bridge it is attached to (`<interface type='bridge'>`).
    pub bridge: Option<String>,
}

impl DomainNic {
    /// Where it is attached, as a person reads it: `network default`, `bridge br0`.
    pub fn attachment(&self) -> String {
        match (&self.network, &self.bridge) {
            (Some(n), _) => format!("network {n}"),
            (None, Some(b)) => format!("bridge {b}"),
            (None, None) => "unattached".into(),
        }
    }
}

/// A domain's XML that does not read as one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct XmlError(String);

impl XmlError {
    pub(crate) fn new(why: String) -> Self {
        Self(why)
    }
}

/// Reads `xml` (from `virDomainGetXMLDesc`).
pub fn parse(xml: &str) -> Result<DomainSpec, XmlError> {
    read(xml).map_err(XmlError)
}

fn read(xml: &str) -> Result<DomainSpec, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("domain XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(format!(
            "domain XML: the root is <{}>, not <domain>",
            root.tag_name().name()
        ));
    }
    let name = text(child(root, "name"))
        .ok_or("domain XML: no <name>")?
        .to_string();
    let memory = child(root, "memory").ok_or("domain XML: no <memory>")?;
    let amount: u64 = text(Some(memory))
        .and_then(|t| t.parse().ok())
        .ok_or("domain XML: <memory> is not a number")?;
    let memory_kib = match memory.attribute("unit").unwrap_or("KiB") {
        "b" | "bytes" => amount / 1024,
        "k" | "KiB" => amount,
        "M" | "MiB" => amount * 1024,
        "G" | "GiB" => amount * 1024 * 1024,
        "KB" => amount * 1000 / 1024,
        "MB" => amount * 1_000_000 / 1024,
        "GB" => amount * 1_000_000_000 / 1024,
        other => return Err(format!("domain XML: memory unit `{other}`")),
    };
    let vcpus = text(child(root, "vcpu"))
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let devices = child(root, "devices");
    let mut disks = Vec::new();
    let mut nics = Vec::new();
    for d in devices
        .iter()
        .flat_map(|d| d.children())
        .filter(|c| c.is_element())
    {
        match d.tag_name().name() {
            "disk" if d.attribute("device").unwrap_or("disk") == "disk" => {
                let source = child(d, "source")
                    .and_then(|s| s.attribute("file").or_else(|| s.attribute("dev")));
                let target = child(d, "target").and_then(|t| t.attribute("dev"));
                let (Some(source), Some(target)) = (source, target) else {
                    continue;
                };
                let format = child(d, "driver")
                    .and_then(|t| t.attribute("type"))
                    .unwrap_or("raw");
                disks.push(DomainDisk {
                    target: target.to_string(),
                    source: PathBuf::from(source),
                    format: format.to_string(),
                });
            }
            "interface" => {
                let source = child(d, "source");
                nics.push(DomainNic {
                    mac: child(d, "mac")
                        .and_then(|m| m.attribute("address"))
                        .map(String::from),
                    network: source
                        .and_then(|s| s.attribute("network"))
                        .map(String::from),
                    bridge: source.and_then(|s| s.attribute("bridge")).map(String::from),
                });
            }
            _ => {}
        }
    }
    Ok(DomainSpec {
        name,
        memory_kib,
        vcpus,
        disks,
        nics,
    })
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == tag)
}

fn text<'a>(n: Option<roxmltree::Node<'a, '_>>) -> Option<&'a str> {
    n.and_then(|n| n.text()).map(str::trim)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn disks_nics_memory_and_cpus_come_from_the_xml() {
        let xml = r#"<domain type='qemu' id='3'><name>erp-db</name>
          <memory unit='MiB'>512</memory><vcpu placement='static'>2</vcpu>
          <devices>
            <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
              <source file='/var/lib/libvirt/images/erp-db.qcow2'/><target dev='vda' bus='virtio'/></disk>
            <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda'/></disk>
            <disk type='block' device='disk'><driver name='qemu' type='raw'/>
              <source dev='/dev/vg/erp-logs'/><target dev='vdb' bus='virtio'/></disk>
            <interface type='network'><mac address='52:54:00:12:34:56'/><source network='prod'/></interface>
            <interface type='bridge'><mac address='52:54:00:12:34:57'/><source bridge='br0'/></interface>
          </devices></domain>"#;
        let d = read(xml).unwrap();
        assert_eq!(d.name, "erp-db");
        assert_eq!((d.memory_kib, d.vcpus), (512 * 1024, 2));
        assert_eq!(
            d.disks,
            vec![
                DomainDisk {
                    target: "vda".into(),
                    source: "/var/lib/libvirt/images/erp-db.qcow2".into(),
                    format: "qcow2".into()
                },
                DomainDisk {
                    target: "vdb".into(),
                    source: "/dev/vg/erp-logs".into(),
                    format: "raw".into()
                },
            ]
        );
        assert_eq!(d.nics.len(), 2);
        assert_eq!(d.nics[0].attachment(), "network prod");
        assert_eq!(d.nics[1].attachment(), "bridge br0");
        assert_eq!(d.nics[1].mac.as_deref(), Some("52:54:00:12:34:57"));
    }

    #[test]
    fn what_is_not_a_domain_is_refused_with_the_reason() {
        assert!(read("<network/>").unwrap_err().contains("not <domain>"));
        assert!(read("<domain>").unwrap_err().contains("domain XML"));
        assert!(
            read("<domain><name>x</name><memory unit='parsec'>1</memory></domain>")
                .unwrap_err()
                .contains("parsec")
        );
    }
}
