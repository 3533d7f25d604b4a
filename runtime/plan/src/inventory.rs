//! `lifeboat.toml`: the sites, protected VMs, replication policies and consistency groups.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::Serialize;

use crate::decode::{Decoder, Value, parse_with, read_version};
use crate::diagnostic::{Diagnostic, Rule, suggestion};
use crate::source::SourceId;
use crate::span::Spanned;
use crate::types::{Cidr, Duration, NameMap};

/// The inventory format version this Lifeboat reads.
pub const INVENTORY_VERSION: u32 = 1;

/// The inventory (`lifeboat.toml`): what is protected, where, and how often.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Lifeboat inventory (lifeboat.toml)")]
pub struct Inventory {
    /// Format version; must be 1.
    pub version: Spanned<u32>,
    /// Sites by name: where VMs run and where their recovery points are kept.
    #[serde(default)]
    pub sites: NameMap<Site>,
    /// Replication policies by name.
    #[serde(default)]
    pub policies: NameMap<Policy>,
    /// Protected VMs by name.
    #[serde(default)]
    pub vms: NameMap<Vm>,
    /// Consistency groups by name: one recovery-point cut across all disks of their VMs.
    #[serde(default)]
    pub consistency_groups: NameMap<ConsistencyGroup>,
    /// Alert hooks by name: sandboxed steps the daemon runs when one of their events happens.
    #[serde(default)]
    pub alerts: NameMap<Alert>,
    /// Names declared in the file whose entries were invalid: references to them are not reported
    /// a second time.
    #[serde(skip)]
    #[schemars(skip)]
    pub declared: Declared,
}

/// Names declared in a file, valid or not.
#[derive(Clone, Debug, Default)]
pub struct Declared {
    pub sites: Vec<String>,
    pub policies: Vec<String>,
    pub vms: Vec<String>,
    pub consistency_groups: Vec<String>,
    pub alerts: Vec<String>,
}

/// A site: a store for its repository (or cache), a compute driver and its networks.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Where the site keeps its data: a path (relative to lifeboat.toml), `file:///…`,
    /// `memory://`, `az://container/prefix`, `s3://bucket/prefix`.
    pub store: Spanned<String>,
    /// How VMs are started here.
    pub compute: Spanned<ComputeDriver>,
    /// The libvirt daemons of a `libvirt` site, one per hypervisor host
    /// (`qemu:///system`, `qemu+unix:///system?socket=PATH`, `qemu+ssh://[USER@]HOST[:PORT]/system`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Spanned<String>>,
    /// How a failover names the copy of one of this `libvirt` site's domains at the site it
    /// replicates to: `{domain}` (the source domain's name) and `{vm}` (the VM's) filled in.
    /// Default `{domain}-dr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_name: Option<Spanned<String>>,
    /// The site whose repository receives this site's VMs' recovery points. A site without it
    /// protects nothing (it is a target, or not replicated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate_to: Option<Spanned<String>>,
    /// The most this site ships to its target per second, all its groups together (a WAN link
    /// shared with production). None: as fast as the link goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Spanned<crate::types::Rate>>,
    /// Networks by name.
    #[serde(default)]
    pub networks: NameMap<Network>,
    /// Network names declared, valid or not.
    #[serde(skip)]
    #[schemars(skip)]
    pub declared_networks: Vec<String>,
}

/// The compute driver a site uses to run VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDriver {
    /// A VM is a local process started from its `boot` command.
    Process,
    /// A VM is a QEMU virtual machine.
    Qemu,
    /// A VM is a libvirt domain on one of the site's `hosts`; its disks, NICs, memory and
    /// CPUs are read from libvirt.
    Libvirt,
}

impl ComputeDriver {
    pub const NAMES: &'static [&'static str] = &["process", "qemu", "libvirt"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Qemu => "qemu",
            Self::Libvirt => "libvirt",
        }
    }
}

/// A network: named subnets.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Subnets by name, each a CIDR block.
    pub subnets: NameMap<Spanned<Cidr>>,
    /// Subnet names declared, valid or not.
    #[serde(skip)]
    #[schemars(skip)]
    pub declared_subnets: Vec<String>,
}

/// A replication policy.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How often a crash-consistent recovery point is taken.
    pub crash_interval: Spanned<Duration>,
    /// How often an app-consistent point is taken (needs a quiesce step); none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_interval: Option<Spanned<Duration>>,
    /// How long points are kept (the latest point and pinned points are always kept).
    pub retention: Spanned<Duration>,
    /// Alert when the newest point is older than this.
    pub rpo_threshold: Spanned<Duration>,
    /// The longest a replication cut may hold the VMs paused (default 10s). Past it the VMs
    /// are resumed and the cycle fails rather than take an inconsistent point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pause: Option<Spanned<Duration>>,
}

/// A protected VM.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The site the VM runs at now.
    pub site: Spanned<String>,
    /// The replication policy.
    pub policy: Spanned<String>,
    /// Disk images by name (paths relative to lifeboat.toml). Not at a `libvirt` site: there
    /// the domain's disks are read from libvirt.
    #[serde(default)]
    pub disks: NameMap<Spanned<String>>,
    /// The libvirt domain of a VM at a `libvirt` site (default: the VM's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Spanned<String>>,
    /// Whether the file has a `disks` key (an empty one is reported where it is written).
    #[serde(skip)]
    #[schemars(skip)]
    pub disks_written: bool,
    /// Network interfaces, in order (`nic0`, `nic1`, …).
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// How the compute driver starts the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    /// The virtual machine the `qemu` driver runs (needed at a `qemu` site).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// How to tell the VM is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Commands that make the VM's disks application-consistent for a moment (`freeze`) and
    /// release it (`thaw`). When `freeze` succeeds the point is app-consistent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce: Option<Quiesce>,
    /// Take points while a process Lifeboat cannot hold still writes the VM's disks (a VM
    /// started some other way than its boot command). Such points may be torn — crash-unsafe —
    /// and are marked `unsafe-live-read`. Without it, such a cycle fails naming the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsafe_live_read: Option<Spanned<bool>>,
}

/// The quiesce hook of a VM: two commands, run in the directory of lifeboat.toml.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quiesce {
    /// Flushes and holds the application's writes; exit 0 means the disks are consistent.
    pub freeze: Vec<Spanned<String>>,
    /// Releases what `freeze` held. Always run after a freeze was attempted.
    pub thaw: Vec<Spanned<String>>,
    /// How long `freeze` may take before the point falls back to crash-consistent (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<Duration>>,
}

/// A network interface.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// A network of the VM's site.
    pub network: Spanned<String>,
    /// A subnet of that network.
    pub subnet: Spanned<String>,
    /// Static address inside the subnet; the next free address is assigned if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Spanned<IpAddr>>,
}

/// The boot command of a VM for the `process` driver. Placeholders: `{vm.name}`, `{disk.NAME}`,
/// `{nicN.ip}`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Program and arguments.
    #[schemars(length(min = 1))]
    pub command: Vec<Spanned<String>>,
}

/// A VM as the `qemu` driver runs it: its disks as virtio block devices (in name order), each NIC
/// as user-mode networking forwarding `ports` from the NIC's address, the serial console and a
/// QMP socket beside its first disk.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Memory in MiB (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<Spanned<u32>>,
    /// Virtual CPUs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Spanned<u32>>,
    /// A kernel to boot directly (relative to lifeboat.toml); without one, the firmware boots
    /// the first disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Spanned<String>>,
    /// The initramfs of `kernel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<Spanned<String>>,
    /// The kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<Spanned<String>>,
    /// The guest's TCP ports, forwarded from each NIC's address.
    #[serde(default)]
    pub ports: Vec<Spanned<u32>>,
    /// More QEMU arguments, as they are.
    #[serde(default)]
    pub args: Vec<Spanned<String>>,
}

/// A health check: exactly one of `tcp`, `http`, `command`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// `host:port` that accepts a TCP connection when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Spanned<String>>,
    /// URL that answers 2xx when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Spanned<String>>,
    /// Program and arguments that exit 0 when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<Spanned<String>>>,
    /// How long to wait for health before the boot fails (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<Duration>>,
}

/// VMs whose disks are cut together.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyGroup {
    /// Member VMs; all at one site.
    pub vms: Vec<Spanned<String>>,
}

/// The events an alert hook can fire on (the daemon's event kinds people are told about).
pub const ALERT_EVENTS: &[&str] = &[
    "rpo.breached",
    "rpo.recovered",
    "cycle.failing",
    "cycle.recovered",
    "cycle.failed",
    "cycle.committed",
    "run.started",
    "run.finished",
    "run.failed",
    "step.failed",
    "approval.waiting",
    "run.cleaned-up",
    "run.committed",
    "protection.paused",
    "protection.resumed",
    "config.reloaded",
    "config.rejected",
];

/// An alert hook: a sandboxed step (a built-in such as `builtin:webhook`, or a pinned
/// component) that the daemon runs once for each event of `events`, with the event in its
/// `with` as `event`, retried per `retries`, never holding replication up.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[schemars(transform = alert_schema)]
pub struct Alert {
    /// The event kinds that fire it, e.g. `["rpo.breached", "rpo.recovered"]`.
    #[schemars(length(min = 1))]
    pub events: Vec<Spanned<String>>,
    /// The step, as a plan's: `uses`, `sha256`, `with`, `timeout`, `retries`, `allow` (no `on`).
    #[serde(flatten)]
    pub step: crate::plan::Step,
}

/// An alert's schema is a step's without `on` (and `name`: the hook's key names it), closed to
/// other keys as the decoder is.
fn alert_schema(schema: &mut schemars::Schema) {
    if let Some(props) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        props.remove("on");
        props.remove("name");
    }
    schema.insert("additionalProperties".into(), false.into());
}

fn decode_alert(d: &mut Decoder<'_>, v: &Value<'_>, what: &str) -> Option<Alert> {
    let mut t = d.table(v, what)?;
    if let Some(on) = t.optional("on") {
        d.push(
            Diagnostic::error(
                Rule::InvalidValue,
                d.span(on),
                format!("`{what}.on` is for plan steps: an alert fires on `events`"),
                "not an alert key",
            )
            .with_help(format!(
                "write `events = [...]`, from: {}",
                ALERT_EVENTS.join(", ")
            )),
        );
    }
    let events = t
        .required(d, "events")
        .and_then(|v| d.string_list(v, &format!("{what}.events")));
    if let Some(name) = t.optional("name") {
        d.push(Diagnostic::error(
            Rule::InvalidValue,
            d.span(name),
            format!("`{what}.name`: an alert is named by its key"),
            "not an alert key",
        ));
    }
    let step = crate::plan::decode_step_keys(d, &mut t);
    t.finish(d);
    let mut events = events?;
    events.retain(|e| {
        if ALERT_EVENTS.contains(&e.value.as_str()) {
            return true;
        }
        let mut diag = Diagnostic::error(
            Rule::InvalidValue,
            e.span,
            format!("unknown event `{}` in `{what}.events`", e.value),
            "not an event an alert can fire on",
        );
        diag = diag.with_help(
            suggestion(&e.value, ALERT_EVENTS)
                .unwrap_or_else(|| format!("one of: {}", ALERT_EVENTS.join(", "))),
        );
        d.push(diag);
        false
    });
    if events.is_empty() {
        return None;
    }
    Some(Alert {
        events,
        step: step?,
    })
}

/// Parse and type an inventory. Returns the inventory when the file is well-formed enough to
/// check references against, and every problem found.
pub fn parse_inventory(source: SourceId, text: &str) -> (Option<Inventory>, Vec<Diagnostic>) {
    parse_with(source, text, decode_inventory)
}

fn decode_inventory(d: &mut Decoder<'_>, root: &Value<'_>) -> Option<Inventory> {
    let mut t = d.table(root, "")?;
    let version = read_version(d, &mut t, "inventory", INVENTORY_VERSION);
    let t_span = t.span;
    let mut declared = Declared::default();
    let sites = match t.optional("sites") {
        Some(v) => d.name_map(v, "sites", &mut declared.sites, decode_site),
        None => Some(NameMap::default()),
    };
    let policies = match t.optional("policies") {
        Some(v) => d.name_map(v, "policies", &mut declared.policies, decode_policy),
        None => Some(NameMap::default()),
    };
    let vms = match t.optional("vms") {
        Some(v) => d.name_map(v, "vms", &mut declared.vms, decode_vm),
        None => Some(NameMap::default()),
    };
    let consistency_groups = match t.optional("consistency_groups") {
        Some(v) => d.name_map(
            v,
            "consistency_groups",
            &mut declared.consistency_groups,
            |d, v, what| {
                let mut t = d.table(v, what)?;
                let vms = t
                    .required(d, "vms")
                    .and_then(|v| d.string_list(v, &format!("{what}.vms")));
                t.finish(d);
                Some(ConsistencyGroup { vms: vms? })
            },
        ),
        None => Some(NameMap::default()),
    };
    let alerts = match t.optional("alerts") {
        Some(v) => d.name_map(v, "alerts", &mut declared.alerts, decode_alert),
        None => Some(NameMap::default()),
    };
    t.finish(d);
    Some(Inventory {
        // Missing: reported above; read as current so the rest is still checked.
        version: version.unwrap_or(Spanned::new(INVENTORY_VERSION, t_span)),
        sites: sites.unwrap_or_default(),
        policies: policies.unwrap_or_default(),
        vms: vms.unwrap_or_default(),
        consistency_groups: consistency_groups.unwrap_or_default(),
        alerts: alerts.unwrap_or_default(),
        declared,
    })
}

/// The name a failover gives the copy of domain `domain` (VM `vm`) by template `rule`
/// (`{domain}`, `{vm}`); the default rule is `{domain}-dr`.
pub fn copy_name(rule: Option<&str>, vm: &str, domain: &str) -> String {
    rule.unwrap_or("{domain}-dr")
        .replace("{domain}", domain)
        .replace("{vm}", vm)
}

/// `target_name` is for `libvirt` sites, names each copy apart (it has `{domain}` or `{vm}`) and
/// knows no other placeholder.
fn check_target_name(d: &mut Decoder<'_>, n: &Spanned<String>, compute: Option<ComputeDriver>) {
    if compute.is_some_and(|c| c != ComputeDriver::Libvirt) {
        d.error(
            Rule::InvalidValue,
            n.span,
            "`target_name` names the copies of libvirt domains; this site is not a `libvirt` site"
                .to_string(),
            "not a libvirt site",
        );
        return;
    }
    let mut rest = n.value.as_str();
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        if name != "domain" && name != "vm" {
            d.error(
                Rule::InvalidValue,
                n.span,
                format!(
                    "`target_name` has `{{{name}}}`: only `{{domain}}` and `{{vm}}` are filled in"
                ),
                "unknown placeholder",
            );
            return;
        }
        rest = &rest[open + close + 1..];
    }
    if !n.value.contains("{domain}") && !n.value.contains("{vm}") {
        d.push(
            Diagnostic::error(
                Rule::InvalidValue,
                n.span,
                format!(
                    "`target_name = \"{}\"` would give every copy the same name",
                    n.value
                ),
                "no placeholder",
            )
            .with_help("use `{domain}` or `{vm}`, e.g. `target_name = \"{domain}-dr\"`"),
        );
    }
}

/// Store locations Lifeboat can open.
pub const STORE_SCHEMES: &[&str] = &["file", "memory", "az", "azure", "abfs", "s3"];

fn decode_site(d: &mut Decoder<'_>, v: &Value<'_>, what: &str) -> Option<Site> {
    let mut t = d.table(v, what)?;
    let store = t
        .required(d, "store")
        .and_then(|v| d.string(v, &t.path("store")));
    if let Some(store) = &store {
        check_store(d, store);
    }
    let compute = t.required(d, "compute").and_then(|v| {
        let s = d.string(v, &t.path("compute"))?;
        match s.as_str() {
            "process" => Some(Spanned::new(ComputeDriver::Process, s.span)),
            "qemu" => Some(Spanned::new(ComputeDriver::Qemu, s.span)),
            "libvirt" => Some(Spanned::new(ComputeDriver::Libvirt, s.span)),
            other => {
                let mut diag = Diagnostic::error(
                    Rule::InvalidValue,
                    s.span,
                    format!("unknown compute driver `{other}`"),
                    "unknown driver",
                );
                if let Some(help) = suggestion(other, ComputeDriver::NAMES) {
                    diag = diag.with_help(help);
                }
                d.push(diag);
                None
            }
        }
    });
    let hosts = t
        .optional("hosts")
        .map(|v| d.string_list(v, &t.path("hosts")));
    let hosts = hosts.unwrap_or(None).unwrap_or_default();
    match &compute {
        Some(c) if c.value == ComputeDriver::Libvirt && hosts.is_empty() => d.push(
            Diagnostic::error(
                Rule::MissingKey,
                c.span,
                format!("a `libvirt` site needs `hosts` (in `{what}`)"),
                "no hosts",
            )
            .with_help(
                "add `hosts = [\"qemu:///system\"]`: the libvirt daemon of each hypervisor host",
            ),
        ),
        Some(c) if c.value != ComputeDriver::Libvirt && !hosts.is_empty() => d.error(
            Rule::InvalidValue,
            hosts[0].span,
            format!(
                "`hosts` is for `libvirt` sites; this site uses the `{}` driver",
                c.value.as_str()
            ),
            "not a libvirt site",
        ),
        _ => {}
    }
    for h in &hosts {
        if !h.value.starts_with("qemu") || !h.value.contains("://") {
            d.push(
                Diagnostic::error(
                    Rule::InvalidValue,
                    h.span,
                    format!("`{}` is not a libvirt URI of QEMU domains", h.value),
                    "not a qemu:// URI",
                )
                .with_help(
                    "write `qemu:///system`, `qemu+unix:///system?socket=/path/libvirt-sock` or `qemu+ssh://root@hv2/system`",
                ),
            );
        }
    }
    let target_name = t
        .optional("target_name")
        .and_then(|v| d.string(v, &t.path("target_name")));
    if let Some(n) = &target_name {
        check_target_name(d, n, compute.as_ref().map(|c| c.value));
    }
    let replicate_to = t
        .optional("replicate_to")
        .map(|v| d.string(v, &t.path("replicate_to")));
    let bandwidth = t.optional("bandwidth").map(|v| {
        let what = t.path("bandwidth");
        let s = d.string(v, &what)?;
        match crate::types::Rate::parse(&s.value) {
            Ok(r) => Some(Spanned::new(r, s.span)),
            Err(why) => {
                d.error(
                    Rule::InvalidValue,
                    s.span,
                    format!("invalid rate `{}` for `{what}`: {why}", s.value),
                    "not a rate",
                );
                None
            }
        }
    });
    let mut declared_networks = Vec::new();
    let networks = match t.optional("networks") {
        Some(v) => d.name_map(
            v,
            &t.path("networks"),
            &mut declared_networks,
            |d, v, what| {
                let mut t = d.table(v, what)?;
                let mut declared_subnets = Vec::new();
                let subnets = t.required(d, "subnets").and_then(|v| {
                    d.name_map(
                        v,
                        &t.path("subnets"),
                        &mut declared_subnets,
                        |d, v, what| d.cidr(v, what),
                    )
                });
                t.finish(d);
                Some(Network {
                    subnets: subnets?,
                    declared_subnets,
                })
            },
        ),
        None => Some(NameMap::default()),
    };
    t.finish(d);
    Some(Site {
        store: store?,
        compute: compute?,
        hosts,
        target_name,
        replicate_to: replicate_to.unwrap_or(None),
        bandwidth: bandwidth.unwrap_or(None),
        networks: networks?,
        declared_networks,
    })
}

fn check_store(d: &mut Decoder<'_>, store: &Spanned<String>) {
    let s = store.trim();
    if s.is_empty() {
        d.error(Rule::InvalidStore, store.span, "`store` is empty", "empty");
        return;
    }
    // A bare path, or `scheme://…` with a scheme we can open.
    let Some((scheme, rest)) = s.split_once("://") else {
        return;
    };
    if !STORE_SCHEMES.contains(&scheme) {
        let mut diag = Diagnostic::error(
            Rule::InvalidStore,
            store.span,
            format!("unsupported store scheme `{scheme}://`"),
            "unsupported scheme",
        );
        if let Some(help) = suggestion(scheme, STORE_SCHEMES) {
            diag = diag.with_help(help);
        }
        d.push(diag);
    } else if scheme == "file" && !rest.starts_with('/') {
        d.push(
            Diagnostic::error(
                Rule::InvalidStore,
                store.span,
                "a `file://` store needs an absolute path",
                "not absolute",
            )
            .with_help(
                "write `file:///var/lib/lifeboat/east`, or a plain path relative to lifeboat.toml",
            ),
        );
    } else if matches!(scheme, "az" | "azure" | "abfs" | "s3") && rest.is_empty() {
        d.error(
            Rule::InvalidStore,
            store.span,
            format!("a `{scheme}://` store needs a container or bucket name"),
            "no container",
        );
    }
}

fn decode_policy(d: &mut Decoder<'_>, v: &Value<'_>, what: &str) -> Option<Policy> {
    let mut t = d.table(v, what)?;
    let crash_interval = t
        .required(d, "crash_interval")
        .and_then(|v| d.duration(v, &t.path("crash_interval")));
    let app_interval = t
        .optional("app_interval")
        .map(|v| d.duration(v, &t.path("app_interval")));
    let retention = t
        .required(d, "retention")
        .and_then(|v| d.duration(v, &t.path("retention")));
    let rpo_threshold = t
        .required(d, "rpo_threshold")
        .and_then(|v| d.duration(v, &t.path("rpo_threshold")));
    let max_pause = t
        .optional("max_pause")
        .map(|v| d.duration(v, &t.path("max_pause")));
    t.finish(d);
    let policy = Policy {
        crash_interval: crash_interval?,
        app_interval: app_interval.unwrap_or(None),
        retention: retention?,
        rpo_threshold: rpo_threshold?,
        max_pause: max_pause.unwrap_or(None),
    };
    if policy.rpo_threshold.value < policy.crash_interval.value {
        d.push(
            Diagnostic::error(
                Rule::PolicyInterval,
                policy.rpo_threshold.span,
                format!(
                    "`rpo_threshold` ({}) is shorter than `crash_interval` ({}): the RPO alert would fire between every two points",
                    humantime::format_duration(policy.rpo_threshold.0),
                    humantime::format_duration(policy.crash_interval.0),
                ),
                "shorter than the interval",
            )
            .with_note(policy.crash_interval.span, "points are taken this often"),
        );
    }
    if policy.retention.value < policy.crash_interval.value {
        d.push(
            Diagnostic::error(
                Rule::PolicyInterval,
                policy.retention.span,
                "`retention` is shorter than `crash_interval`: only the latest point would ever be kept",
                "shorter than the interval",
            )
            .with_note(policy.crash_interval.span, "points are taken this often"),
        );
    }
    Some(policy)
}

fn decode_vm(d: &mut Decoder<'_>, v: &Value<'_>, what: &str) -> Option<Vm> {
    let mut t = d.table(v, what)?;
    let site = t
        .required(d, "site")
        .and_then(|v| d.string(v, &t.path("site")));
    let policy = t
        .required(d, "policy")
        .and_then(|v| d.string(v, &t.path("policy")));
    let domain = t.optional("domain").map(|v| d.string(v, &t.path("domain")));
    let disks_written = t.optional("disks").is_some();
    // Required everywhere but at a `libvirt` site: the check that knows the site says so.
    let disks = t.optional("disks").map(|v| {
        d.name_map(v, &t.path("disks"), &mut Vec::new(), |d, v, what| {
            let path = d.string(v, what)?;
            if path.trim().is_empty() {
                d.error(
                    Rule::InvalidValue,
                    path.span,
                    format!("`{what}` is empty"),
                    "empty path",
                );
                return None;
            }
            Some(path)
        })
    });
    let disks = disks.unwrap_or(Some(NameMap::default()));
    if let Some(disks) = &disks
        && disks.is_empty()
        && let Some(v) = t.optional("disks")
    {
        let span = d.span(v);
        d.error(
            Rule::InvalidValue,
            span,
            format!("`{}` is empty", t.path("disks")),
            "a VM needs at least one disk",
        );
    }
    let nics = match t.optional("nics") {
        Some(v) => d.list(v, &t.path("nics"), |d, v, what| {
            let mut t = d.table(v, &what)?;
            let network = t
                .required(d, "network")
                .and_then(|v| d.string(v, &t.path("network")));
            let subnet = t
                .required(d, "subnet")
                .and_then(|v| d.string(v, &t.path("subnet")));
            let ip = t.optional("ip").map(|v| d.ip(v, &t.path("ip")));
            t.finish(d);
            Some(Nic {
                network: network?,
                subnet: subnet?,
                ip: ip.unwrap_or(None),
            })
        }),
        None => Some(Vec::new()),
    };
    let boot = t.optional("boot").map(|v| {
        let mut t = d.table(v, &t.path("boot"))?;
        let command = t
            .required(d, "command")
            .and_then(|v| command(d, v, &t.path("command")));
        t.finish(d);
        Some(Boot { command: command? })
    });
    let machine = t.optional("machine").map(|v| {
        let mut t = d.table(v, &t.path("machine"))?;
        let memory_mib = t
            .optional("memory_mib")
            .map(|v| d.u32(v, &t.path("memory_mib"), 16, 1 << 20));
        let cpus = t
            .optional("cpus")
            .map(|v| d.u32(v, &t.path("cpus"), 1, 256));
        let kernel = t.optional("kernel").map(|v| d.string(v, &t.path("kernel")));
        let initrd = t.optional("initrd").map(|v| d.string(v, &t.path("initrd")));
        let append = t.optional("append").map(|v| d.string(v, &t.path("append")));
        let ports = t
            .optional("ports")
            .map(|v| d.list(v, &t.path("ports"), |d, v, what| d.u32(v, &what, 1, 65535)));
        let args = t
            .optional("args")
            .map(|v| d.string_list(v, &t.path("args")));
        t.finish(d);
        Some(Machine {
            memory_mib: memory_mib.unwrap_or(None),
            cpus: cpus.unwrap_or(None),
            kernel: kernel.unwrap_or(None),
            initrd: initrd.unwrap_or(None),
            append: append.unwrap_or(None),
            ports: ports.unwrap_or(None).unwrap_or_default(),
            args: args.unwrap_or(None).unwrap_or_default(),
        })
    });
    let health = t
        .optional("health")
        .map(|v| decode_health(d, v, &t.path("health")));
    let quiesce = t.optional("quiesce").map(|v| {
        let mut t = d.table(v, &t.path("quiesce"))?;
        let freeze = t
            .required(d, "freeze")
            .and_then(|v| command(d, v, &t.path("freeze")));
        let thaw = t
            .required(d, "thaw")
            .and_then(|v| command(d, v, &t.path("thaw")));
        let timeout = t
            .optional("timeout")
            .map(|v| d.duration(v, &t.path("timeout")));
        t.finish(d);
        Some(Quiesce {
            freeze: freeze?,
            thaw: thaw?,
            timeout: timeout.unwrap_or(None),
        })
    });
    let unsafe_live_read = t
        .optional("unsafe_live_read")
        .map(|v| d.boolean(v, &t.path("unsafe_live_read")));
    t.finish(d);
    Some(Vm {
        site: site?,
        policy: policy?,
        disks: disks?,
        domain: domain.unwrap_or(None),
        disks_written,
        nics: nics?,
        boot: boot.unwrap_or(None),
        machine: machine.unwrap_or(None),
        health: health.unwrap_or(None),
        quiesce: quiesce.unwrap_or(None),
        unsafe_live_read: unsafe_live_read.unwrap_or(None),
    })
}

fn command(d: &mut Decoder<'_>, v: &Value<'_>, what: &str) -> Option<Vec<Spanned<String>>> {
    let args = d.string_list(v, what)?;
    if args.is_empty() {
        let span = d.span(v);
        d.error(
            Rule::InvalidValue,
            span,
            format!("`{what}` is empty"),
            "needs a program to run",
        );
        return None;
    }
    Some(args)
}

fn decode_health(d: &mut Decoder<'_>, v: &Value<'_>, what: &str) -> Option<Health> {
    let mut t = d.table(v, what)?;
    let tcp = t.optional("tcp").map(|v| d.string(v, &t.path("tcp")));
    let http = t.optional("http").map(|v| d.string(v, &t.path("http")));
    let command = t
        .optional("command")
        .map(|v| command(d, v, &t.path("command")));
    let timeout = t
        .optional("timeout")
        .map(|v| d.duration(v, &t.path("timeout")));
    let given = [tcp.is_some(), http.is_some(), command.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given != 1 {
        d.push(
            Diagnostic::error(
                Rule::InvalidValue,
                t.span,
                format!("`{what}` needs exactly one of `tcp`, `http`, `command`, found {given}"),
                "one check per VM",
            )
            .with_help("e.g. `health = { tcp = \"{nic0.ip}:5432\" }`"),
        );
    }
    t.finish(d);
    if given != 1 {
        return None;
    }
    Some(Health {
        tcp: tcp.unwrap_or(None),
        http: http.unwrap_or(None),
        command: command.unwrap_or(None),
        timeout: timeout.unwrap_or(None),
    })
}
