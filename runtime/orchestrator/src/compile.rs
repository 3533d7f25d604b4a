//! Compiling a validated plan into the steps of one run: groups in order; in each group its pre
//! steps, its boot step (`builtin:boot-group` for the group's VMs), its post steps; only the
//! steps whose `on` names the operation (a step without `on` runs in every operation). Each step
//! gets an id that stays the same across restarts, so the journal can tell what already ran.

use std::time::Duration;

use lifeboat_plan::Plan;
use lifeboat_plan::plan::{Operation, PluginRef, PointChoice, Step};
use serde::Serialize;

/// Where a step sits in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pre,
    Boot,
    Post,
}

/// One step of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepRun {
    /// `GROUP/pre/N`, `GROUP/boot`, `GROUP/post/N` (N: the index in the plan, before `on`
    /// filtering, so ids do not shift when a step is filtered out).
    pub id: String,
    /// The plan group it belongs to.
    pub group: String,
    pub phase: Phase,
    pub name: String,
    pub uses: PluginRef,
    pub config: serde_json::Value,
    pub timeout: Duration,
    pub retries: u32,
    /// The pin of a file plugin.
    pub sha256: Option<String>,
    /// What the step may touch, placeholders not yet filled.
    pub allow: StepAllow,
}

/// A step's `allow`, as written in the plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StepAllow {
    pub vms: Vec<String>,
    pub tcp: Vec<String>,
    pub http: Vec<String>,
    pub kv: Vec<String>,
}

fn texts(list: &[lifeboat_plan::span::Spanned<String>]) -> Vec<String> {
    list.iter().map(|s| s.value.clone()).collect()
}

/// One boot group of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupRun {
    pub name: String,
    pub vms: Vec<String>,
    pub steps: Vec<StepRun>,
}

/// The whole run: what executes, in order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunPlan {
    pub plan: String,
    pub operation: Operation,
    pub groups: Vec<GroupRun>,
}

/// Default time one attempt of a step may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time the boot step of a group may take (restores and health waits included).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(1800);

/// The plan's `recovery_point`, as a point choice (default `latest-processed`).
pub fn point_choice(plan: &Plan) -> &'static str {
    plan.recovery_point
        .as_ref()
        .map_or("latest-processed", |p| match p.value {
            PointChoice::Latest => "latest",
            PointChoice::LatestProcessed => "latest-processed",
            PointChoice::LatestAppConsistent => "latest-app-consistent",
        })
}

pub fn compile(plan: &Plan, operation: Operation) -> RunPlan {
    let point = point_choice(plan);
    let groups =
        plan.groups
            .iter()
            .map(|g| {
                let vms: Vec<String> = g.vms.iter().map(|v| v.value.clone()).collect();
                let mut steps = Vec::new();
                let add = |phase: Phase, list: &[Step], steps: &mut Vec<StepRun>| {
                    for (i, s) in list.iter().enumerate() {
                        if s.on
                            .as_ref()
                            .is_some_and(|on| !on.iter().any(|o| o.value == operation))
                        {
                            continue;
                        }
                        let tag = if phase == Phase::Pre { "pre" } else { "post" };
                        steps.push(StepRun {
                            id: format!("{}/{tag}/{i}", g.name.value),
                            group: g.name.value.clone(),
                            phase,
                            name: s
                                .name
                                .as_ref()
                                .map_or_else(|| s.uses.value_text(), |n| n.value.clone()),
                            uses: s.uses.value.clone(),
                            config: s
                                .config
                                .as_ref()
                                .map_or(serde_json::Value::Object(Default::default()), |c| {
                                    serde_json::Value::Object(c.value.clone())
                                }),
                            timeout: s.timeout.as_ref().map_or(STEP_TIMEOUT, |t| t.value.0),
                            retries: s.retries.as_ref().map_or(0, |r| r.value),
                            sha256: s.sha256.as_ref().map(|h| h.value.clone()),
                            allow: s.allow.as_ref().map_or_else(StepAllow::default, |a| {
                                StepAllow {
                                    vms: texts(&a.vms),
                                    tcp: texts(&a.tcp),
                                    http: texts(&a.http),
                                    kv: texts(&a.kv),
                                }
                            }),
                        });
                    }
                };
                add(Phase::Pre, &g.pre, &mut steps);
                steps.push(StepRun {
                    id: format!("{}/boot", g.name.value),
                    group: g.name.value.clone(),
                    phase: Phase::Boot,
                    name: format!("boot {}", g.name.value),
                    uses: PluginRef::Builtin("boot-group".into()),
                    config: serde_json::json!({
                        "point": point,
                        "parallelism": g.parallelism.as_ref().map_or(8, |p| p.value),
                    }),
                    timeout: BOOT_TIMEOUT,
                    retries: 0,
                    sha256: None,
                    // The boot step acts on its group's VMs and nothing else.
                    allow: StepAllow {
                        vms: vms.clone(),
                        ..StepAllow::default()
                    },
                });
                add(Phase::Post, &g.post, &mut steps);
                GroupRun {
                    name: g.name.value.clone(),
                    vms,
                    steps,
                }
            })
            .collect();
    RunPlan {
        plan: plan.name.value.clone(),
        operation,
        groups,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn erp() -> Plan {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let v =
            lifeboat_loader::validate(&root.join("lifeboat.toml"), &[root.join("plans/erp.toml")]);
        assert!(v.is_valid(), "{:?}", v.diagnostics);
        v.plans.into_iter().next().unwrap().plan.unwrap()
    }

    fn ids(run: &RunPlan) -> Vec<String> {
        run.groups
            .iter()
            .flat_map(|g| g.steps.iter().map(|s| s.id.clone()))
            .collect()
    }

    #[test]
    fn groups_run_in_order_with_pre_boot_post_and_on_filters() {
        let plan = erp();
        // The approval gate runs on planned and unplanned failovers, not in drills.
        let test = compile(&plan, Operation::Test);
        let planned = compile(&plan, Operation::Planned);
        assert_eq!(
            test.groups
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>(),
            ["database", "app"]
        );
        assert!(!ids(&test).contains(&"database/pre/0".to_string()));
        assert_eq!(
            ids(&planned)[..3],
            ["database/pre/0", "database/boot", "database/post/0"]
        );
        let boot = &planned.groups[0].steps[1];
        assert!(boot.uses.is_builtin("boot-group"));
        assert_eq!(boot.allow.vms, ["db-1"]);
        assert_eq!(boot.config["point"], "latest-processed");
        let post = &planned.groups[0].steps[2];
        assert_eq!(post.name, "db-port");
        assert_eq!((post.timeout, post.retries), (Duration::from_secs(120), 3));
        // The wait runs only in drills. Ids do not depend on the operation: a step keeps its id
        // when others are filtered out.
        assert_eq!(
            ids(&test),
            [
                "database/boot",
                "database/post/0",
                "app/boot",
                "app/post/0",
                "app/post/1"
            ]
        );
        assert_eq!(
            ids(&planned),
            [
                "database/pre/0",
                "database/boot",
                "database/post/0",
                "app/boot",
                "app/post/0"
            ]
        );
    }
}
