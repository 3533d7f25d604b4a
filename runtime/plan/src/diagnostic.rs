//! What validation reports: a rule, a message, where it happened and how to fix it.

use serde::Serialize;

use crate::source::SourceId;
use crate::span::Span;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

macro_rules! rules {
    ($($variant:ident = $name:literal: $summary:literal,)*) => {
        /// Every check validation makes. The names are stable: CI filters, SARIF rule ids and
        /// the diagnostics reference (`docs/reference/diagnostics.md`) use them.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Rule { $($variant,)* }

        impl Rule {
            pub const ALL: &'static [Rule] = &[$(Rule::$variant,)*];

            /// The stable kebab-case name, e.g. `unknown-key`.
            pub fn name(self) -> &'static str {
                match self { $(Rule::$variant => $name,)* }
            }

            /// One line that says what the rule checks.
            pub fn summary(self) -> &'static str {
                match self { $(Rule::$variant => $summary,)* }
            }
        }
    };
}

rules! {
    Io = "io": "a file named on the command line or in a plan cannot be read",
    Syntax = "syntax": "the file is not valid TOML",
    UnsupportedVersion = "unsupported-version": "the file's `version` is not one this Lifeboat reads",
    UnknownKey = "unknown-key": "a key that the format does not define",
    MissingKey = "missing-key": "a required key is absent",
    InvalidType = "invalid-type": "a value of the wrong TOML type",
    InvalidValue = "invalid-value": "a value of the right type that is not allowed (a name, a number out of range, an enum)",
    InvalidDuration = "invalid-duration": "a duration that does not parse (use `90s`, `5m`, `1h 30m`)",
    InvalidCidr = "invalid-cidr": "a subnet that is not a valid CIDR block",
    InvalidIp = "invalid-ip": "an address that is not a valid IPv4 or IPv6 address",
    InvalidStore = "invalid-store": "a store location whose scheme Lifeboat does not support",
    UnknownSite = "unknown-site": "a reference to a site the inventory does not define",
    UnknownVm = "unknown-vm": "a reference to a VM the inventory (or the plan) does not define",
    UnknownNetwork = "unknown-network": "a reference to a network the site does not define",
    UnknownSubnet = "unknown-subnet": "a reference to a subnet the network does not define",
    UnknownPolicy = "unknown-policy": "a reference to a replication policy the inventory does not define",
    UnknownPlaceholder = "unknown-placeholder": "a `{…}` placeholder that names nothing Lifeboat can substitute",
    SameSourceTarget = "same-source-target": "a plan whose source and target are the same site",
    TargetNotReplicated = "target-not-replicated": "a plan whose target is not where its source site keeps recovery points (`replicate_to`)",
    UnsupportedCompute = "unsupported-compute": "a VM the compute driver of its site (or of a plan's target) cannot start: a `qemu` site needs the VM's `machine` (or a `boot` command, run as a process); a libvirt domain is started by no other driver, and a `libvirt` target starts only libvirt domains (from the XML their points keep)",
    VmInTwoGroups = "vm-in-two-groups": "a VM listed in more than one group of a plan",
    VmNotInSource = "vm-not-in-source": "a plan VM that is not protected at the plan's source site",
    EmptyGroup = "empty-group": "a group with no VMs",
    DuplicateName = "duplicate-name": "two groups, steps or mappings with the same name",
    UnmappedNetwork = "unmapped-network": "a VM's NIC on a network the plan maps to no target network",
    MappingSite = "mapping-site": "a network mapping that does not go from the source site to the target site",
    FailbackMap = "failback-map": "network mappings with no one way back for failback (two source networks mapped to one target network, or a `failback_map` missing a network a failover lands in)",
    DuplicateIp = "duplicate-ip": "two NICs that would hold the same address",
    IpOutsideSubnet = "ip-outside-subnet": "a static address outside the subnet it is assigned to",
    SubnetOverlap = "subnet-overlap": "two subnets of one site that overlap",
    ConsistencyGroup = "consistency-group": "a consistency group whose VMs are not all at one site, or a VM in two groups",
    UnknownOperation = "unknown-operation": "an `on` value that is not an operation (test, planned, unplanned, failback, cleanup)",
    UnknownBuiltin = "unknown-builtin": "a `builtin:` step that Lifeboat does not ship",
    UnpinnedPlugin = "unpinned-plugin": "a plugin file used without its `sha256`",
    PluginNotFound = "plugin-not-found": "a plugin path that does not exist",
    PluginHashMismatch = "plugin-sha256-mismatch": "a plugin whose bytes do not match its pinned `sha256`",
    PluginLoad = "plugin-load": "a plugin that is not a valid Lifeboat step component (not a component, forbidden imports, newer API)",
    PluginConfig = "plugin-config": "a step's `with` that its plugin's `validate` rejects",
    CapabilityNotGranted = "capability-not-granted": "a plugin that wants a capability its step's `allow` does not grant",
    PolicyInterval = "policy-interval": "replication intervals that cannot meet the policy's RPO or retention",
    StepFailsInDryRun = "step-fails-in-dry-run": "`plan simulate`: a step that fails when the run is simulated (its plugin, its grants, a point or VM it needs)",
    BootsLater = "boots-later": "`plan simulate`: a step that needs a VM which a later group boots (the group order is wrong)",
    AddressClash = "address-clash": "`plan simulate`: the run's addresses cannot be assigned, or two NICs would hold one",
    AddressInUse = "address-in-use": "`plan simulate`: something already answers at an address the run must keep (a kept source address or an override)",
    HostUnreachable = "host-unreachable": "`plan validate --online`: a libvirt host of a site that does not answer",
    NotFoundOnline = "not-found-online": "`plan validate --online`: a domain, a disk of it or a network the inventory relies on that libvirt does not have",
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// A span and what to say about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// One problem. `primary` points at the text to change; a diagnostic about a whole file (one that
/// cannot be read) has no primary label and names the file in `source`.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub rule: Rule,
    pub message: String,
    pub source: SourceId,
    pub primary: Option<Label>,
    pub secondary: Vec<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error pointing at `span`, labelled `label`.
    pub fn error(
        rule: Rule,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Error,
            rule,
            message: message.into(),
            source: span.source,
            primary: Some(Label {
                span,
                message: label.into(),
            }),
            secondary: Vec::new(),
            help: None,
        }
    }

    /// An error about a whole file.
    pub fn file_error(rule: Rule, source: SourceId, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            rule,
            message: message.into(),
            source,
            primary: None,
            secondary: Vec::new(),
            help: None,
        }
    }

    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_note(mut self, span: Span, message: impl Into<String>) -> Self {
        self.secondary.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    /// The position used to order diagnostics: file, then offset.
    pub fn sort_key(&self) -> (SourceId, usize, usize) {
        match &self.primary {
            Some(label) => (label.span.source, label.span.start, label.span.end),
            None => (self.source, 0, 0),
        }
    }
}

/// The closest of `candidates` to `input`, if it is close enough to be worth suggesting.
pub fn closest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(input, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "did you mean `x`?" or, with no close candidate, the list of valid choices.
pub fn suggestion(input: &str, candidates: &[&str]) -> Option<String> {
    if let Some(best) = closest(input, candidates.iter().copied()) {
        return Some(format!("did you mean `{best}`?"));
    }
    match candidates.len() {
        1..=12 => Some(format!("expected one of {}", backticked(candidates))),
        _ => None,
    }
}

/// "`a`, `b`, `c`".
pub fn backticked(items: impl IntoIterator<Item = impl std::fmt::Display>) -> String {
    items
        .into_iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
