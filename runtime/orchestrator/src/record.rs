//! A run as people read it, rebuilt from its journal: the timeline of every group, step and VM,
//! the points used, each step's log, the achieved RPO per VM (the run's start minus the capture
//! instant of the point the VM booted from) and the RTO (the run's start to its last group
//! healthy).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::journal::{Event, Journal};
use crate::runs::status_of;

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunRecord {
    pub id: String,
    pub plan: String,
    pub operation: crate::journal::RunKind,
    pub status: String,
    pub started_unix_ms: i64,
    /// Seconds from the start to the last event.
    pub duration_seconds: f64,
    /// Seconds from the start to the last group healthy; `None` until every group is.
    pub rto_seconds: Option<f64>,
    pub groups: Vec<GroupRecord>,
    pub steps: Vec<StepRecord>,
    pub vms: Vec<VmRecord>,
    pub points: Vec<PointRecord>,
    /// Every event, with its instant in seconds from the start: `[seconds, event]` pairs, each
    /// event as the journal records it (`kind` and its fields).
    #[schema(value_type = Vec<Vec<Object>>)]
    pub timeline: Vec<(f64, Event)>,
    /// The groups whose VMs running now are this run's (after its commit): where, and whether
    /// they are protected (see `lifecycle`). Filled by callers that read placements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running_here: Vec<RunningHere>,
}

/// A group whose VMs running now a run booted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunningHere {
    pub group: String,
    pub site: String,
    /// Where its points go; `None`: not protected (`lifeboat reprotect`).
    pub replicate_to: Option<String>,
}

impl RunRecord {
    /// Fills `running_here` from the groups' placements.
    pub fn with_placements<'a>(
        mut self,
        placements: impl IntoIterator<Item = &'a lifeboat_replication::placement::Placement>,
    ) -> Self {
        self.running_here = placements
            .into_iter()
            .filter(|p| p.run.as_deref() == Some(self.id.as_str()))
            .map(|p| RunningHere {
                group: p.group.clone(),
                site: p.site.clone(),
                replicate_to: p.replicate_to.clone(),
            })
            .collect();
        self
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupRecord {
    pub name: String,
    pub healthy_at_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepRecord {
    pub id: String,
    /// The step's name in the plan (or what it `uses`).
    pub name: Option<String>,
    /// `finished`, `failed`, `running`, `skipped`; `undone` after cleanup.
    pub status: String,
    pub attempts: Vec<Attempt>,
    pub undo_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    pub attempt: u32,
    pub started_at_seconds: f64,
    pub ended_at_seconds: Option<f64>,
    pub error: Option<String>,
    pub log: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmRecord {
    pub name: String,
    pub group: Option<String>,
    pub point: Option<u64>,
    /// The run's start minus the capture instant of the VM's point.
    pub rpo_seconds: Option<f64>,
    pub addresses: Vec<AddressRecord>,
    pub pid: Option<u32>,
    pub started_at_seconds: Option<f64>,
    pub stopped_at_seconds: Option<f64>,
    pub log: Option<String>,
    /// Booted instantly (from the repository): each disk, and when it was hydrated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hydration: Vec<HydrationRecord>,
}

/// One disk of an instantly booted VM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HydrationRecord {
    pub disk: String,
    /// Seconds from the VM's start to the disk holding all its data; `None` while it hydrates.
    pub hydrated_after_seconds: Option<f64>,
    pub bytes: Option<u64>,
}

/// Where one NIC of a VM landed in the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AddressRecord {
    pub nic: usize,
    /// `site/network` at the target.
    pub network: String,
    pub subnet: String,
    #[schema(value_type = String)]
    pub ip: std::net::IpAddr,
    /// `kept` (the source address), `override` (the plan's) or `next-free`.
    #[schema(value_type = String)]
    pub why: crate::network::Why,
}

impl From<&crate::network::Assignment> for AddressRecord {
    fn from(a: &crate::network::Assignment) -> Self {
        Self {
            nic: a.nic,
            network: a.network.clone(),
            subnet: a.subnet.clone(),
            ip: a.ip,
            why: a.why,
        }
    }
}

impl std::fmt::Display for AddressRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.why {
            crate::network::Why::Kept => "kept",
            crate::network::Why::Override => "override",
            crate::network::Why::NextFree => "next free",
        };
        write!(f, "nic{} {} {} ({why})", self.nic, self.network, self.ip)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PointRecord {
    pub group: String,
    pub seq: u64,
    pub kind: String,
    pub captured_unix_ms: u64,
}

fn step_entry<'a>(
    steps: &'a mut BTreeMap<String, StepRecord>,
    order: &mut Vec<String>,
    id: &str,
) -> &'a mut StepRecord {
    if !steps.contains_key(id) {
        order.push(id.to_string());
    }
    steps.entry(id.to_string()).or_insert_with(|| StepRecord {
        id: id.to_string(),
        ..StepRecord::default()
    })
}

/// Rebuilds run `run`. `group_of(vm)` names the consistency group a VM belongs to.
pub fn record(
    journal: &Journal,
    run: &str,
    group_of: &dyn Fn(&str) -> Option<String>,
) -> Result<RunRecord> {
    let status = status_of(journal, run)?;
    let events = journal.events(run)?;
    let start = events.first().map_or(0, |(_, at, _)| *at);
    let secs = |at: i64| (at - start) as f64 / 1000.0;
    let mut groups: Vec<GroupRecord> = Vec::new();
    let mut steps: BTreeMap<String, StepRecord> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut vms: BTreeMap<String, VmRecord> = BTreeMap::new();
    let mut points = Vec::new();
    let mut timeline = Vec::new();
    let mut plan_groups = 0usize;
    let mut boots = std::collections::HashSet::new();
    for (_, at, e) in &events {
        let t = secs(*at);
        timeline.push((t, e.clone()));
        match e {
            Event::StepStarted {
                step,
                attempt,
                name,
            } => {
                if step.ends_with("/boot") {
                    boots.insert(step.clone());
                }
                let s = step_entry(&mut steps, &mut order, step);
                if name.is_some() {
                    s.name.clone_from(name);
                }
                s.status = "running".into();
                s.attempts.push(Attempt {
                    attempt: *attempt,
                    started_at_seconds: t,
                    ..Attempt::default()
                });
            }
            Event::StepFinished { step, .. } => {
                let s = step_entry(&mut steps, &mut order, step);
                s.status = "finished".into();
                if let Some(a) = s.attempts.last_mut() {
                    a.ended_at_seconds = Some(t);
                }
            }
            Event::StepFailed { step, error, .. } => {
                let s = step_entry(&mut steps, &mut order, step);
                s.status = "failed".into();
                if let Some(a) = s.attempts.last_mut() {
                    a.ended_at_seconds = Some(t);
                    a.error = Some(error.clone());
                }
            }
            Event::StepLog { step, lines, .. } => {
                let s = step_entry(&mut steps, &mut order, step);
                if let Some(a) = s.attempts.last_mut() {
                    a.log.extend(lines.iter().cloned());
                }
            }
            Event::StepSkipped { step } => {
                step_entry(&mut steps, &mut order, step).status = "skipped".into()
            }
            Event::StepUndone { step, error } => {
                let s = step_entry(&mut steps, &mut order, step);
                s.status = "undone".into();
                s.undo_error = error.clone();
            }
            Event::GroupHealthy { group } => {
                plan_groups += 1;
                groups.push(GroupRecord {
                    name: group.clone(),
                    healthy_at_seconds: Some(t),
                });
            }
            Event::PointChosen {
                group,
                seq,
                point_kind,
                captured_unix_ms,
            } => points.push(PointRecord {
                group: group.clone(),
                seq: *seq,
                kind: point_kind.clone(),
                captured_unix_ms: *captured_unix_ms,
            }),
            Event::Assigned { assignments } => {
                for a in assignments {
                    let v = vms.entry(a.vm.clone()).or_default();
                    v.name = a.vm.clone();
                    v.addresses.push(AddressRecord::from(a));
                }
            }
            Event::VmStarted { vm, pid, log, .. } => {
                let v = vms.entry(vm.clone()).or_default();
                v.name = vm.clone();
                v.pid = Some(*pid);
                v.started_at_seconds = Some(t);
                v.stopped_at_seconds = None;
                v.log = Some(log.clone());
            }
            Event::VmStopped { vm } => {
                vms.entry(vm.clone()).or_default().stopped_at_seconds = Some(t);
            }
            Event::Exporting { vm, disks, .. } => {
                let v = vms.entry(vm.clone()).or_default();
                v.name = vm.clone();
                for d in disks {
                    if !v.hydration.iter().any(|h| h.disk == *d) {
                        v.hydration.push(HydrationRecord {
                            disk: d.clone(),
                            ..HydrationRecord::default()
                        });
                    }
                }
            }
            Event::Hydrated {
                vm,
                disk,
                seconds,
                bytes,
            } => {
                let v = vms.entry(vm.clone()).or_default();
                if let Some(h) = v.hydration.iter_mut().find(|h| h.disk == *disk) {
                    h.hydrated_after_seconds = Some(*seconds);
                    h.bytes = Some(*bytes);
                }
            }
            _ => {}
        }
    }
    for v in vms.values_mut() {
        v.group = group_of(&v.name);
        if let Some(p) = points.iter().find(|p| Some(&p.group) == v.group.as_ref()) {
            v.point = Some(p.seq);
            v.rpo_seconds = Some((start - p.captured_unix_ms as i64) as f64 / 1000.0);
        }
    }
    // Every group the run booted is healthy: the recovery is done.
    let rto_seconds = (plan_groups > 0 && plan_groups >= boots.len())
        .then(|| groups.last().and_then(|g| g.healthy_at_seconds))
        .flatten();
    Ok(RunRecord {
        id: run.to_string(),
        plan: status.plan,
        operation: status.operation,
        status: status.status.as_str().to_string(),
        started_unix_ms: start,
        duration_seconds: events.last().map_or(0.0, |(_, at, _)| secs(*at)),
        rto_seconds,
        groups,
        steps: order
            .into_iter()
            .filter_map(|id| steps.remove(&id))
            .collect(),
        vms: vms.into_values().collect(),
        points,
        timeline,
        running_here: Vec::new(),
    })
}

/// One line for people per event worth seeing while a run goes.
pub fn describe(run: &str, e: &Event) -> Option<String> {
    Some(match e {
        Event::StepStarted {
            step,
            attempt,
            name,
        } => {
            let named = name
                .as_ref()
                .map_or_else(|| step.clone(), |n| format!("{step} ({n})"));
            if *attempt > 1 {
                format!("{named}: attempt {attempt}")
            } else {
                format!("{named}: started")
            }
        }
        Event::StepFinished { step, .. } => format!("{step}: done"),
        Event::StepFailed { step, error, .. } => format!("{step}: FAILED: {error}"),
        Event::GroupHealthy { group } => format!("group {group}: healthy"),
        Event::PointChosen {
            group,
            seq,
            point_kind,
            ..
        } => format!("group {group}: point {seq} ({point_kind})"),
        Event::Restored { vm, disks, .. } => format!("{vm}: {} disk(s) restored", disks.len()),
        Event::VmStarted {
            vm,
            domain: Some(d),
            ..
        } => format!("{vm}: started (domain {} on {})", d.name, d.host),
        Event::VmStarted { vm, pid, .. } => format!("{vm}: started (pid {pid})"),
        Event::VmStopped { vm } => format!("{vm}: stopped"),
        Event::Exporting { vm, socket, .. } => {
            format!("{vm}: instant boot, its point served from the repository on {socket}")
        }
        Event::Hydrated {
            vm,
            disk,
            seconds,
            bytes,
        } => format!(
            "{vm}/{disk}: hydrated ({:.1} GiB) {seconds:.1}s after the VM started",
            *bytes as f64 / f64::from(1u32 << 30)
        ),
        Event::ExportStopped { vm } => format!("{vm}: export server stopped"),
        Event::Isolated { netns } => format!(
            "network namespace {netns}: the drill's copies run there (`lifeboat drill exec {run} -- COMMAND` reaches them)"
        ),
        Event::NamespaceRemoved { netns } => format!("network namespace {netns}: removed"),
        Event::NetworkDefined { host, network } => {
            format!("libvirt network {network} on {host}: the drill's copies boot there, isolated")
        }
        Event::AddressReserved {
            host,
            network,
            mac,
            ip,
        } => format!("libvirt network {network} on {host}: {ip} reserved for {mac}"),
        Event::NetworkReleased { host, network } => {
            format!("libvirt network {network} on {host}: released")
        }
        Event::SourceStopped { vms } => format!("source VMs stopped: {}", vms.join(", ")),
        Event::SourceRestarted { vm, pid, .. } => format!("source {vm}: started again (pid {pid})"),
        Event::ApprovalRequested { message } => {
            format!("waiting for approval: {message} — run `lifeboat approve {run}`")
        }
        Event::Approved { by } => format!("approved by {by}"),
        Event::StepUndone { step, error: None } => format!("{step}: undone"),
        Event::StepUndone {
            step,
            error: Some(e),
        } => format!("{step}: undo FAILED: {e}"),
        Event::Reprotected { group, report: r } => format!(
            "group {group}: {} → {}: {}, first point {} shipped {} B of {} B",
            r.site,
            r.replicate_to,
            if r.full_seed {
                format!("a full seed ({} holds none of its disks)", r.replicate_to)
            } else {
                format!(
                    "{} seeded {} B from its own disks",
                    r.replicate_to, r.seed.disk_bytes
                )
            },
            r.point,
            r.shipped_bytes,
            r.disk_bytes
        ),
        Event::Placed {
            group,
            site,
            replicate_to,
            ..
        } => match replicate_to {
            Some(to) => format!("group {group}: runs at {site}, protected to {to}"),
            None => format!("group {group}: runs at {site}, not protected"),
        },
        _ => return None,
    })
}
