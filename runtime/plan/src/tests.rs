use proptest::prelude::*;

use crate::plan::{Operation, PluginRef};
use crate::{Rule, Sources, check_plan, parse_inventory, parse_plan, target_subnet};

const INVENTORY: &str = r#"
version = 1
[sites.east]
store = "/srv/east"
compute = "process"
replicate_to = "west"
networks.prod.subnets = { app = "10.1.1.0/24" }
[sites.west]
store = "/srv/west"
compute = "process"
networks.dr.subnets = { app = "10.2.1.0/24" }
[policies.p]
crash_interval = "1m"
retention = "1h"
rpo_threshold = "5m"
[vms.a]
site = "east"
policy = "p"
disks.os = "a.img"
nics = [{ network = "prod", subnet = "app", ip = "10.1.1.5" }]
"#;

fn plan_rules(plan_text: &str) -> Vec<Rule> {
    let mut sources = Sources::new();
    let inv_id = sources.add("lifeboat.toml", INVENTORY);
    let plan_id = sources.add("plan.toml", plan_text);
    let (inv, inv_diags) = parse_inventory(inv_id, INVENTORY);
    assert!(inv_diags.is_empty(), "{inv_diags:?}");
    let (plan, mut diags) = parse_plan(plan_id, plan_text);
    if let (Some(inv), Some(plan)) = (&inv, &plan) {
        diags.extend(check_plan(inv, plan, &sources));
    }
    diags.iter().map(|d| d.rule).collect()
}

const PLAN: &str = r#"
version = 1
name = "p"
source = "east"
target = "west"
network.map = [{ from = "east/prod", to = "west/dr" }]
[[group]]
name = "g"
vms = ["a"]
post = [{ uses = "builtin:wait", on = ["test", "cleanup"], timeout = "90s", with = { n = 1, list = [true] } }]
"#;

#[test]
fn a_valid_plan_types_every_field() {
    assert_eq!(plan_rules(PLAN), []);
    let mut sources = Sources::new();
    let id = sources.add("plan.toml", PLAN);
    let (plan, _) = parse_plan(id, PLAN);
    let plan = plan.expect("parses");
    let step = &plan.groups[0].post[0];
    assert_eq!(step.uses.value, PluginRef::Builtin("wait".into()));
    let on: Vec<Operation> = step.on.iter().flatten().map(|o| o.value).collect();
    assert_eq!(on, [Operation::Test, Operation::Cleanup]);
    assert_eq!(step.timeout.as_ref().map(|t| t.0.as_secs()), Some(90));
    assert_eq!(
        step.config.as_ref().map(|c| c["n"].clone()),
        Some(serde_json::json!(1))
    );
    assert_eq!(&PLAN[step.uses.span.range()], "\"builtin:wait\"");
}

#[test]
fn the_source_address_is_kept_only_when_the_target_subnet_holds_it() {
    // 10.1.1.5 is not in west's 10.2.1.0/24, so an override to 10.2.1.5 for a second NIC holder
    // cannot collide; a retained address would. Here: a single VM, no collision.
    assert_eq!(plan_rules(PLAN), []);
    let overridden = format!("{PLAN}\n[[network.override]]\nvm = \"a\"\nip = \"10.9.9.9\"\n");
    assert_eq!(plan_rules(&overridden), [Rule::IpOutsideSubnet]);
}

#[test]
fn all_problems_are_reported_in_one_pass() {
    let text = PLAN
        .replace("name = \"g\"", "name = \"g\"\ncolour = 1")
        .replace("\"test\"", "\"tset\"")
        .replace("90s", "90 lightyears");
    let rules = plan_rules(&text);
    assert!(rules.contains(&Rule::UnknownKey), "{rules:?}");
    assert!(rules.contains(&Rule::UnknownOperation), "{rules:?}");
    assert!(rules.contains(&Rule::InvalidDuration), "{rules:?}");
}

#[test]
fn locations_count_characters_not_bytes() {
    let mut sources = Sources::new();
    let id = sources.add("f", "a = \"é\"\nb = 1\n");
    let file = sources.get(id);
    assert_eq!(file.location(0).line, 1);
    // byte 7 is the closing quote, after the two-byte é: column 7, not 8.
    assert_eq!(file.location(7).column, 7);
    assert_eq!(file.location(9).line, 2);
    assert_eq!(file.location(10_000).line, 3);
    assert_eq!(file.line_text(2), "b = 1");
}

#[test]
fn suggestions_come_from_the_keys_of_that_table() {
    let text = PLAN.replace("vms = [\"a\"]", "vmz = [\"a\"]");
    let mut sources = Sources::new();
    let id = sources.add("plan.toml", text.clone());
    let (_, diags) = parse_plan(id, &text);
    let unknown = diags
        .iter()
        .find(|d| d.rule == Rule::UnknownKey)
        .expect("unknown key reported");
    assert_eq!(unknown.help.as_deref(), Some("did you mean `vms`?"));
    assert!(
        diags
            .iter()
            .any(|d| d.rule == Rule::MissingKey && d.message.contains("`vms`"))
    );
}

proptest! {
    /// The ASR rule: the subnet with the source subnet's name, else the first by name.
    #[test]
    fn target_subnet_follows_the_mapping_rule(
        names in proptest::collection::btree_set("[a-z]{1,4}", 1..6),
        wanted in "[a-z]{1,4}",
    ) {
        let subnets: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} = \"10.{i}.0.0/16\""))
            .collect();
        let text = INVENTORY.replace(
            "networks.dr.subnets = { app = \"10.2.1.0/24\" }",
            &format!("networks.dr.subnets = {{ {} }}", subnets.join(", ")),
        );
        let mut sources = Sources::new();
        let id = sources.add("i", text.clone());
        let (inv, _) = parse_inventory(id, &text);
        let inv = inv.expect("parses");
        let network = inv.sites.get("west").and_then(|s| s.networks.get("dr")).expect("dr");
        let (chosen, _) = target_subnet(network, &wanted).expect("a subnet");
        let expected = if names.contains(&wanted) { wanted.clone() } else { names.iter().next().cloned().unwrap_or_default() };
        prop_assert_eq!(chosen, expected.as_str());
    }
}

/// A `max_pause` of nothing would abandon every cut: refused like every zero duration.
#[test]
fn a_zero_max_pause_is_refused() {
    let inventory = INVENTORY.replace(
        "rpo_threshold = \"5m\"",
        "rpo_threshold = \"5m\"\nmax_pause = \"0s\"",
    );
    assert!(inventory.contains("max_pause"), "{inventory}");
    let mut sources = Sources::new();
    let id = sources.add("lifeboat.toml", &inventory);
    let (_, diags) = parse_inventory(id, &inventory);
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].rule, Rule::InvalidDuration, "{diags:?}");
    assert!(diags[0].message.contains("max_pause"), "{diags:?}");
}

/// An alert hook is a step with `events`: a valid one is typed; an unknown event (with a
/// suggestion), a plan step's `on`, and an unknown key are each reported.
#[test]
fn alert_hooks_are_typed_and_their_mistakes_reported() {
    let good = format!(
        "{INVENTORY}\n[alerts.oncall]\nevents = [\"rpo.breached\", \"rpo.recovered\"]\nuses = \"builtin:webhook\"\nwith = {{ url = \"https://hooks.example.com/x\" }}\nallow = {{ http = [\"POST https://hooks.example.com/\"] }}\nretries = 3\n"
    );
    let mut sources = Sources::new();
    let id = sources.add("lifeboat.toml", &good);
    let (inv, diags) = parse_inventory(id, &good);
    assert!(diags.is_empty(), "{diags:?}");
    let inv = inv.expect("typed");
    let alert = inv.alerts.get("oncall").expect("the hook");
    assert_eq!(alert.events.len(), 2);
    assert_eq!(alert.step.retries.as_ref().map(|r| r.value), Some(3));

    let bad = format!(
        "{INVENTORY}\n[alerts.oncall]\nevents = [\"rpo.breach\"]\non = [\"test\"]\nuses = \"builtin:webhook\"\ncolour = \"red\"\n"
    );
    let id = sources.add("bad.toml", &bad);
    let (_, diags) = parse_inventory(id, &bad);
    let messages: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(diags.len(), 3, "{messages:?}");
    assert!(
        diags
            .iter()
            .any(|d| d.message.contains("unknown event `rpo.breach`")
                && d.help
                    .as_deref()
                    .is_some_and(|h| h.contains("rpo.breached"))),
        "{diags:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("fires on `events`")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("colour")),
        "{messages:?}"
    );
}

#[test]
fn rates_read_in_bytes_and_bits_and_refuse_the_rest() {
    use crate::types::Rate;
    assert_eq!(Rate::parse("50 MiB/s"), Ok(Rate(50 << 20)));
    assert_eq!(Rate::parse("50MiB/s"), Ok(Rate(50 << 20)));
    assert_eq!(Rate::parse("100 Mbit/s"), Ok(Rate(12_500_000)));
    assert_eq!(Rate::parse("1.5 GiB/s"), Ok(Rate(3 << 29)));
    for bad in ["4 MiB", "fast", "0 B/s", "-1 MiB/s", "", "1e3 MB/s"] {
        assert!(Rate::parse(bad).is_err(), "{bad}");
    }
    let why = Rate::parse("4 MiB").err().unwrap_or_default();
    assert!(why.contains("unknown unit `MiB`"), "{why}");
}
