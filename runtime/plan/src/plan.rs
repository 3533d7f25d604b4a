//! `plans/*.toml`: a recovery plan — ordered boot groups, their steps, the network mapping.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::Serialize;
use toml::de::DeValue;

use crate::decode::{Decoder, TableReader, Value, parse_with, read_version};
use crate::diagnostic::{Diagnostic, Rule, backticked, suggestion};
use crate::source::SourceId;
use crate::span::Spanned;
use crate::types::Duration;

/// The plan format version this Lifeboat reads.
pub const PLAN_VERSION: u32 = 1;

/// A recovery plan.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Lifeboat recovery plan")]
pub struct Plan {
    /// Format version; must be 1.
    pub version: Spanned<u32>,
    /// The plan's name, used in run records and target-side names.
    pub name: Spanned<String>,
    /// What the plan recovers, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Spanned<String>>,
    /// The site the VMs run at now.
    pub source: Spanned<String>,
    /// The site they fail over to.
    pub target: Spanned<String>,
    /// The default recovery point for a failover: `latest-processed` if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<Spanned<PointChoice>>,
    /// How long a recovery may take: `lifeboat plan simulate` fails (exit 9) when its predicted
    /// RTO is longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_objective: Option<Spanned<Duration>>,
    /// Boot VMs at a `qemu` target straight from the repository, their disks hydrating behind
    /// them, instead of restoring every disk first (default: on at `qemu` targets; process VMs
    /// always restore first). `lifeboat failover --instant/--no-instant` decides for one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instant: Option<Spanned<bool>>,
    /// How source networks map to target networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<PlanNetwork>,
    /// Boot groups, in the order they run.
    #[serde(rename = "group")]
    #[schemars(length(min = 1))]
    pub groups: Vec<Group>,
}

/// Which recovery point a failover uses by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PointChoice {
    /// The newest intact point; the lowest RPO.
    Latest,
    /// The newest point whose every page and chunk is present at the target (a restore of it
    /// cannot stop on a missing object); the lowest RTO.
    LatestProcessed,
    /// The newest app-consistent point.
    LatestAppConsistent,
}

impl PointChoice {
    pub const NAMES: &'static [&'static str] =
        &["latest", "latest-processed", "latest-app-consistent"];
}

/// How a drill's copies are kept from production.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TestIsolation {
    /// A network namespace of the run's own.
    #[default]
    Namespace,
    /// The host's network: drill copies can reach production addresses.
    None,
}

impl PlanNetwork {
    /// How this plan's drills are isolated.
    pub fn isolation(&self) -> TestIsolation {
        self.test_isolation
            .as_ref()
            .map(|t| t.value)
            .unwrap_or_default()
    }
}

/// The network section of a plan.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanNetwork {
    /// Source network → target network, as `site/network`.
    #[serde(default)]
    pub map: Vec<NetworkMapping>,
    /// The isolated target network test failovers use, as `site/network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Spanned<NetworkRef>>,
    /// Per-NIC choices that win over the mapping rules.
    #[serde(default, rename = "override")]
    pub overrides: Vec<NicOverride>,
    /// Target network → source network for a failback, as `site/network`; default: each `map`
    /// entry turned round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failback_map: Vec<NetworkMapping>,
    /// The isolated network at the source site that drills of the failback (`lifeboat failback
    /// PLAN --test`) use, as `site/network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback_test: Option<Spanned<NetworkRef>>,
    /// How a drill's copies are kept from production: `namespace` (the default: a network
    /// namespace of the run, where only the test network's addresses exist) or `none` (the
    /// host's network; for hosts that cannot make namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_isolation: Option<Spanned<TestIsolation>>,
    /// False when part of this section had errors: checks that depend on the whole mapping
    /// (unmapped networks) are skipped rather than reported a second time.
    #[serde(skip)]
    #[schemars(skip)]
    pub complete: bool,
}

/// `site/network`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetworkRef {
    pub site: String,
    pub network: String,
}

impl std::fmt::Display for NetworkRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.site, self.network)
    }
}

impl Serialize for NetworkRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for NetworkRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NetworkRef".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A network of a site: `site/network`.",
            "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}/[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
        })
    }
}

/// One entry of `network.map`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkMapping {
    /// A network of the source site.
    pub from: Spanned<NetworkRef>,
    /// A network of the target site.
    pub to: Spanned<NetworkRef>,
}

/// A choice for one NIC of one VM that wins over the mapping rules.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NicOverride {
    /// The VM.
    pub vm: Spanned<String>,
    /// The NIC's index in the VM's `nics` (default 0).
    #[serde(default)]
    pub nic: Option<Spanned<u32>>,
    /// The target subnet (by name, in the mapped network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Spanned<String>>,
    /// The address after failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Spanned<IpAddr>>,
    /// The address in the test network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_ip: Option<Spanned<IpAddr>>,
}

/// A boot group: its VMs start together after the previous group is healthy.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The group's name, unique in the plan.
    pub name: Spanned<String>,
    /// The VMs booted by this group.
    #[schemars(length(min = 1))]
    pub vms: Vec<Spanned<String>>,
    /// Steps run before the VMs boot.
    #[serde(default)]
    pub pre: Vec<Step>,
    /// Steps run after every VM of the group is healthy.
    #[serde(default)]
    pub post: Vec<Step>,
    /// How many VMs of the group boot at once (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<Spanned<u32>>,
}

/// Operations a plan runs; `on` filters steps by them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// A drill: clones in the test network, replication carries on.
    Test,
    /// A failover with the source up: no data loss.
    Planned,
    /// A failover with the source gone: from a recovery point.
    Unplanned,
    /// Back to the original site after a reprotect.
    Failback,
    /// Undoing a test failover.
    Cleanup,
}

impl Operation {
    pub const NAMES: &'static [&'static str] =
        &["test", "planned", "unplanned", "failback", "cleanup"];

    /// The name plans and the command line use: `test`, `planned`, …
    pub fn name(self) -> &'static str {
        match self {
            Operation::Test => "test",
            Operation::Planned => "planned",
            Operation::Unplanned => "unplanned",
            Operation::Failback => "failback",
            Operation::Cleanup => "cleanup",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "test" => Operation::Test,
            "planned" => Operation::Planned,
            "unplanned" => Operation::Unplanned,
            "failback" => Operation::Failback,
            "cleanup" => Operation::Cleanup,
            _ => return None,
        })
    }
}

/// The steps Lifeboat ships inside its binary.
pub const BUILTIN_STEPS: &[&str] = &[
    "boot-group",
    "tcp-check",
    "http-check",
    "approval",
    "wait",
    "webhook",
];

/// What a step runs: a built-in step or a component file. Shown (and serialized) as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PluginRef {
    /// `builtin:NAME`.
    Builtin(String),
    /// A `.wasm` component, relative to the plan file.
    Path(String),
}

impl PluginRef {
    /// As written in the plan: `builtin:NAME` or the path.
    pub fn text(&self) -> String {
        match self {
            PluginRef::Builtin(name) => format!("builtin:{name}"),
            PluginRef::Path(path) => path.clone(),
        }
    }
}

impl std::fmt::Display for PluginRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginRef::Builtin(name) => write!(f, "builtin:{name}"),
            PluginRef::Path(path) => f.write_str(path),
        }
    }
}

impl PluginRef {
    /// Whether this is `builtin:NAME`.
    pub fn is_builtin(&self, name: &str) -> bool {
        matches!(self, PluginRef::Builtin(n) if n == name)
    }
}

impl Spanned<PluginRef> {
    /// As written in the plan.
    pub fn value_text(&self) -> String {
        self.value.text()
    }
}

impl Serialize for PluginRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PluginRef::Builtin(name) => s.collect_str(&format_args!("builtin:{name}")),
            PluginRef::Path(path) => s.serialize_str(path),
        }
    }
}

impl JsonSchema for PluginRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PluginRef".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`builtin:NAME` for a step Lifeboat ships, or the path of a `.wasm` component relative to the plan file (pin it with `sha256`).",
            "minLength": 1
        })
    }
}

/// One step of a group.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A name for run records; defaults to the plugin's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Spanned<String>>,
    /// The plugin.
    pub uses: Spanned<PluginRef>,
    /// The SHA-256 of the component file, in hex; required for a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: Option<Spanned<String>>,
    /// The step's configuration, passed to the plugin.
    #[serde(default, rename = "with", skip_serializing_if = "Option::is_none")]
    pub config: Option<Spanned<serde_json::Map<String, serde_json::Value>>>,
    /// The operations the step runs in (all if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<Spanned<Operation>>>,
    /// How long one attempt may take (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<Duration>>,
    /// How many times a failed attempt is retried (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Spanned<u32>>,
    /// What the step may touch; everything else is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Allow>,
    /// Every string inside `with`, with its span, for placeholder checks.
    #[serde(skip)]
    #[schemars(skip)]
    pub config_strings: Vec<Spanned<String>>,
    /// `with` was written but is not a table (reported already): the plugin is not asked to
    /// validate a config the author did not write.
    #[serde(skip)]
    #[schemars(skip)]
    pub config_invalid: bool,
}

/// The grants of a step.
#[derive(Clone, Debug, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    /// VMs the step may act on (start, stop, restore).
    #[serde(default)]
    pub vms: Vec<Spanned<String>>,
    /// `host:port` addresses the step may probe over TCP.
    #[serde(default)]
    pub tcp: Vec<Spanned<String>>,
    /// URL prefixes the step may probe over HTTP.
    #[serde(default)]
    pub http: Vec<Spanned<String>>,
    /// Run-scoped kv keys the step may write (every step may read).
    #[serde(default)]
    pub kv: Vec<Spanned<String>>,
}

/// Parse and type a plan. Returns the plan when it is well-formed enough to check references
/// against an inventory, and every problem found.
pub fn parse_plan(source: SourceId, text: &str) -> (Option<Plan>, Vec<Diagnostic>) {
    parse_with(source, text, decode_plan)
}

fn decode_plan(d: &mut Decoder<'_>, root: &Value<'_>) -> Option<Plan> {
    let mut t = d.table(root, "")?;
    let version = read_version(d, &mut t, "plan", PLAN_VERSION);
    // A missing or malformed name, source or target is reported here and read as empty, so the
    // reference checks still run on the rest of the plan (they skip empty names).
    let blank = Spanned::new(String::new(), t.span);
    let name = t.required(d, "name").and_then(|v| d.name(v, "plan"));
    let description = t
        .optional("description")
        .map(|v| d.string(v, "description"));
    let source = t.required(d, "source").and_then(|v| d.string(v, "source"));
    let target = t.required(d, "target").and_then(|v| d.string(v, "target"));
    let recovery_point = t.optional("recovery_point").map(|v| {
        let s = d.string(v, "recovery_point")?;
        let choice = match s.as_str() {
            "latest" => PointChoice::Latest,
            "latest-processed" => PointChoice::LatestProcessed,
            "latest-app-consistent" => PointChoice::LatestAppConsistent,
            other => {
                let mut diag = Diagnostic::error(
                    Rule::InvalidValue,
                    s.span,
                    format!("unknown recovery point choice `{other}`"),
                    "not a point choice",
                );
                if let Some(help) = suggestion(other, PointChoice::NAMES) {
                    diag = diag.with_help(help);
                }
                d.push(diag.with_help(
                    "a plan names a kind of point; pick a specific point with `lifeboat failover --point ID`",
                ));
                return None;
            }
        };
        Some(Spanned::new(choice, s.span))
    });
    let rto_objective = t
        .optional("rto_objective")
        .map(|v| d.duration(v, "rto_objective"));
    let instant = t.optional("instant").map(|v| d.boolean(v, "instant"));
    let network = t.optional("network").map(|v| decode_network(d, v));
    let groups = t.required(d, "group").and_then(|v| {
        let groups = d.list(v, "group", |d, v, what| decode_group(d, v, &what))?;
        if matches!(v.get_ref(), DeValue::Array(items) if items.is_empty()) {
            let span = d.span(v);
            d.push(
                Diagnostic::error(
                    Rule::EmptyGroup,
                    span,
                    "the plan has no groups",
                    "nothing to recover",
                )
                .with_help("add a `[[group]]` with `name` and `vms`"),
            );
        }
        Some(groups)
    });
    t.finish(d);
    Some(Plan {
        version: version.unwrap_or(Spanned::new(PLAN_VERSION, blank.span)),
        name: name.unwrap_or_else(|| blank.clone()),
        description: description.unwrap_or(None),
        source: source.unwrap_or_else(|| blank.clone()),
        target: target.unwrap_or_else(|| blank.clone()),
        recovery_point: recovery_point.unwrap_or(None),
        rto_objective: rto_objective.unwrap_or(None),
        instant: instant.unwrap_or(None),
        network: network.unwrap_or(None),
        groups: groups.unwrap_or_default(),
    })
}

fn network_ref(d: &mut Decoder<'_>, v: &Value<'_>, what: &str) -> Option<Spanned<NetworkRef>> {
    let s = d.string(v, what)?;
    match s.split_once('/') {
        Some((site, network))
            if !site.is_empty() && !network.is_empty() && !network.contains('/') =>
        {
            Some(Spanned::new(
                NetworkRef {
                    site: site.to_string(),
                    network: network.to_string(),
                },
                s.span,
            ))
        }
        _ => {
            d.push(
                Diagnostic::error(
                    Rule::InvalidValue,
                    s.span,
                    format!(
                        "`{what}` must name a network as `site/network`, found `{}`",
                        s.value
                    ),
                    "expected `site/network`",
                )
                .with_help("e.g. `east/prod`"),
            );
            None
        }
    }
}

/// A list of `{ from, to }` network mappings (`network.map`, `network.failback_map`).
fn decode_mappings(d: &mut Decoder<'_>, v: &Value<'_>, what: &str) -> Option<Vec<NetworkMapping>> {
    d.list(v, what, |d, v, what| {
        let mut t = d.table(v, &what)?;
        let from = t
            .required(d, "from")
            .and_then(|v| network_ref(d, v, &t.path("from")));
        let to = t
            .required(d, "to")
            .and_then(|v| network_ref(d, v, &t.path("to")));
        t.finish(d);
        Some(NetworkMapping {
            from: from?,
            to: to?,
        })
    })
}

fn decode_network(d: &mut Decoder<'_>, v: &Value<'_>) -> Option<PlanNetwork> {
    let mut t = d.table(v, "network")?;
    let map = match t.optional("map") {
        Some(v) => decode_mappings(d, v, "network.map"),
        None => Some(Vec::new()),
    };
    let failback_map = match t.optional("failback_map") {
        Some(v) => decode_mappings(d, v, "network.failback_map"),
        None => Some(Vec::new()),
    };
    let failback_test = t
        .optional("failback_test")
        .map(|v| network_ref(d, v, "network.failback_test"));
    let map_items = t.optional("map").map(|v| match v.get_ref() {
        DeValue::Array(items) => items.len(),
        _ => usize::MAX,
    });
    let test = t
        .optional("test")
        .map(|v| network_ref(d, v, "network.test"));
    let test_isolation = t.optional("test_isolation").map(|v| {
        let s = d.string(v, "network.test_isolation")?;
        let value = match s.value.as_str() {
            "namespace" => TestIsolation::Namespace,
            "none" => TestIsolation::None,
            other => {
                d.error(
                    Rule::InvalidValue,
                    s.span,
                    format!("unknown `network.test_isolation` `{other}`: `namespace` or `none`"),
                    "unknown isolation",
                );
                return None;
            }
        };
        Some(Spanned::new(value, s.span))
    });
    let overrides = match t.optional("override") {
        Some(v) => d.list(v, "network.override", |d, v, what| {
            let mut t = d.table(v, &what)?;
            let vm = t.required(d, "vm").and_then(|v| d.string(v, &t.path("vm")));
            let nic = t.optional("nic").map(|v| d.u32(v, &t.path("nic"), 0, 63));
            let subnet = t.optional("subnet").map(|v| d.string(v, &t.path("subnet")));
            let ip = t.optional("ip").map(|v| d.ip(v, &t.path("ip")));
            let test_ip = t.optional("test_ip").map(|v| d.ip(v, &t.path("test_ip")));
            t.finish(d);
            Some(NicOverride {
                vm: vm?,
                nic: nic.unwrap_or(None),
                subnet: subnet.unwrap_or(None),
                ip: ip.unwrap_or(None),
                test_ip: test_ip.unwrap_or(None),
            })
        }),
        None => Some(Vec::new()),
    };
    let clean = t.finish(d);
    let map = map.unwrap_or_default();
    let complete = clean && map_items.is_none_or(|n| n == map.len());
    Some(PlanNetwork {
        map,
        test: test.unwrap_or(None),
        overrides: overrides.unwrap_or_default(),
        failback_map: failback_map.unwrap_or_default(),
        failback_test: failback_test.unwrap_or(None),
        test_isolation: test_isolation.unwrap_or(None),
        complete,
    })
}

fn decode_group(d: &mut Decoder<'_>, v: &Value<'_>, what: &str) -> Option<Group> {
    let mut t = d.table(v, what)?;
    let name = t.required(d, "name").and_then(|v| d.name(v, "group"));
    let shown = match &name {
        Some(n) => format!("group `{}`", n.value),
        None => what.to_string(),
    };
    let vms = t
        .required(d, "vms")
        .and_then(|v| d.string_list(v, &t.path("vms")));
    if let (Some(vms), Some(v)) = (&vms, t.optional("vms"))
        && vms.is_empty()
    {
        let span = d.span(v);
        d.push(
            Diagnostic::error(
                Rule::EmptyGroup,
                span,
                format!("{shown} has no VMs"),
                "empty group",
            )
            .with_help("list the VMs this group boots, or remove the group"),
        );
    }
    let pre = match t.optional("pre") {
        Some(v) => d.list(v, &t.path("pre"), |d, v, what| decode_step(d, v, &what)),
        None => Some(Vec::new()),
    };
    let post = match t.optional("post") {
        Some(v) => d.list(v, &t.path("post"), |d, v, what| decode_step(d, v, &what)),
        None => Some(Vec::new()),
    };
    let parallelism = t
        .optional("parallelism")
        .map(|v| d.u32(v, &t.path("parallelism"), 1, 1024));
    t.finish(d);
    Some(Group {
        name: name?,
        vms: vms?,
        pre: pre.unwrap_or_default(),
        post: post.unwrap_or_default(),
        parallelism: parallelism.unwrap_or(None),
    })
}

fn decode_step(d: &mut Decoder<'_>, v: &Value<'_>, what: &str) -> Option<Step> {
    let mut t = d.table(v, what)?;
    let step = decode_step_keys(d, &mut t);
    t.finish(d);
    step
}

/// The keys of a step in table `t` (an alert hook is a step with `events` besides them).
pub(crate) fn decode_step_keys(d: &mut Decoder<'_>, t: &mut TableReader<'_, '_>) -> Option<Step> {
    let name = t.optional("name").map(|v| d.name(v, "step"));
    let uses = t.required(d, "uses").and_then(|v| {
        let s = d.string(v, &t.path("uses"))?;
        plugin_ref(d, s)
    });
    let sha256 = t.optional("sha256").map(|v| {
        let s = d.string(v, &t.path("sha256"))?;
        if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            Some(s)
        } else {
            d.push(
                Diagnostic::error(
                    Rule::InvalidValue,
                    s.span,
                    "`sha256` must be 64 hexadecimal digits",
                    format!("{} characters", s.chars().count()),
                )
                .with_help("compute it with `sha256sum plugin.wasm`"),
            );
            None
        }
    });
    let mut config_strings = Vec::new();
    let config = t.optional("with").map(|v| {
        let DeValue::Table(_) = v.get_ref() else {
            d.table(v, &t.path("with"));
            return None;
        };
        match to_json(d, v, &mut config_strings) {
            serde_json::Value::Object(map) => Some(Spanned::new(map, d.span(v))),
            _ => None,
        }
    });
    let on = t.optional("on").map(|v| {
        d.list(v, &t.path("on"), |d, v, what| {
            let s = d.string(v, &what)?;
            match Operation::parse(&s) {
                Some(op) => Some(Spanned::new(op, s.span)),
                None => {
                    let mut diag = Diagnostic::error(
                        Rule::UnknownOperation,
                        s.span,
                        format!("unknown operation `{}` in `on`", s.value),
                        "not an operation",
                    );
                    if let Some(help) = suggestion(&s, Operation::NAMES) {
                        diag = diag.with_help(help);
                    }
                    d.push(diag);
                    None
                }
            }
        })
    });
    let timeout = t
        .optional("timeout")
        .map(|v| d.duration(v, &t.path("timeout")));
    let retries = t
        .optional("retries")
        .map(|v| d.u32(v, &t.path("retries"), 0, 100));
    let allow = t
        .optional("allow")
        .map(|v| decode_allow(d, v, &t.path("allow")));
    let sha256_absent = sha256.is_none();
    let config_invalid = matches!(config, Some(None));
    let step = Step {
        name: name.unwrap_or(None),
        uses: uses?,
        sha256: sha256.unwrap_or(None),
        config: config.unwrap_or(None),
        on: on.unwrap_or(None),
        timeout: timeout.unwrap_or(None),
        retries: retries.unwrap_or(None),
        allow: allow.unwrap_or(None),
        config_strings,
        config_invalid,
    };
    if let PluginRef::Path(path) = &step.uses.value
        && sha256_absent
    {
        d.push(
            Diagnostic::error(
                Rule::UnpinnedPlugin,
                step.uses.span,
                format!("plugin `{path}` is not pinned"),
                "no `sha256` for this file",
            )
            .with_help(format!(
                "add `sha256 = \"…\"` (the output of `sha256sum {path}`)"
            )),
        );
    }
    Some(step)
}

fn plugin_ref(d: &mut Decoder<'_>, s: Spanned<String>) -> Option<Spanned<PluginRef>> {
    if let Some(name) = s.strip_prefix("builtin:") {
        if BUILTIN_STEPS.contains(&name) {
            let name = name.to_string();
            return Some(s.map(|_| PluginRef::Builtin(name)));
        }
        let mut diag = Diagnostic::error(
            Rule::UnknownBuiltin,
            s.span,
            format!("unknown built-in step `{}`", s.value),
            "not a built-in step",
        );
        if let Some(best) = crate::diagnostic::closest(name, BUILTIN_STEPS.iter().copied()) {
            diag = diag.with_help(format!("did you mean `builtin:{best}`?"));
        } else {
            let names = BUILTIN_STEPS.iter().map(|b| format!("builtin:{b}"));
            diag = diag.with_help(format!("built-in steps: {}", backticked(names)));
        }
        d.push(diag);
        return None;
    }
    if s.trim().is_empty() {
        d.error(
            Rule::InvalidValue,
            s.span,
            "`uses` is empty",
            "names no plugin",
        );
        return None;
    }
    if s.contains("://") {
        d.push(
            Diagnostic::error(
                Rule::InvalidValue,
                s.span,
                format!("`uses` must be `builtin:NAME` or a file path, found `{}`", s.value),
                "not a path",
            )
            .with_help("plugins are never fetched at run time: vendor the .wasm next to the plan and pin its sha256"),
        );
        return None;
    }
    let path = s.value.clone();
    Some(s.map(|_| PluginRef::Path(path)))
}

fn decode_allow(d: &mut Decoder<'_>, v: &Value<'_>, what: &str) -> Option<Allow> {
    let mut t: TableReader<'_, '_> = d.table(v, what)?;
    let list = |d: &mut Decoder<'_>, t: &mut TableReader<'_, '_>, key: &'static str| match t
        .optional(key)
    {
        Some(v) => d.string_list(v, &t.path(key)).unwrap_or_default(),
        None => Vec::new(),
    };
    let allow = Allow {
        vms: list(d, &mut t, "vms"),
        tcp: list(d, &mut t, "tcp"),
        http: list(d, &mut t, "http"),
        kv: list(d, &mut t, "kv"),
    };
    t.finish(d);
    Some(allow)
}

/// Convert a TOML value to JSON (a step's `with`), collecting every string with its span.
fn to_json(
    d: &mut Decoder<'_>,
    v: &Value<'_>,
    strings: &mut Vec<Spanned<String>>,
) -> serde_json::Value {
    use serde_json::Value as J;
    match v.get_ref() {
        DeValue::String(s) => {
            strings.push(Spanned::new(s.to_string(), d.span(v)));
            J::String(s.to_string())
        }
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => J::from(n),
            Err(_) => {
                let span = d.span(v);
                d.error(
                    Rule::InvalidValue,
                    span,
                    "integer does not fit in 64 bits",
                    "too large",
                );
                J::Null
            }
        },
        DeValue::Float(f) => f
            .as_str()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(J::Number)
            .unwrap_or_else(|| {
                let span = d.span(v);
                d.error(
                    Rule::InvalidValue,
                    span,
                    "non-finite floats (`inf`, `nan`) cannot be passed to a step",
                    "not finite",
                );
                J::Null
            }),
        DeValue::Boolean(b) => J::Bool(*b),
        DeValue::Datetime(dt) => J::String(dt.to_string()),
        DeValue::Array(items) => J::Array(items.iter().map(|i| to_json(d, i, strings)).collect()),
        DeValue::Table(table) => J::Object(
            table
                .iter()
                .map(|(k, v)| (k.get_ref().to_string(), to_json(d, v, strings)))
                .collect(),
        ),
    }
}
