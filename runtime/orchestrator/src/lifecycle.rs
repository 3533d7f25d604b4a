//! There and back: where each consistency group runs now (its placement, kept in the sites'
//! stores), the inventory as the runtime sees it once placements are applied, `reprotect`
//! (the committed copies become protected VMs replicating to the other site, differentially),
//! failback's plan (the plan reversed), and `disable`/`enable`.
//!
//! The inventory file is never rewritten: a group that failed over and was committed runs from
//! its run's disks at its addresses there, and every command sees it so through the resolved
//! configuration (`lifeboat_loader::Resolved`), which applies the placements once. A
//! failback is then a planned failover of the reversed plan over that view: the same checks,
//! hand-over, restore, boot and commit as the forward direction.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::journal::Reprotected;
use lifeboat_plan::plan::{NetworkMapping, NicOverride, Operation};
use lifeboat_plan::{Plan, Spanned};
use lifeboat_replication::GroupSpec;
use lifeboat_replication::placement::{self, NicPlace, Placement, VmPlace};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::journal::{Event, RunKind, RunStatus};
use crate::network::Assignment;
use crate::runs::{Environment, not_driven, running_vms, status_of};
use crate::services::Observer;
use crate::source::{groups_of, plan_vms};

/// The placement of `group` now: the recorded one, or where the inventory puts it.
pub fn placement_of(env: &Environment, group: &GroupSpec) -> Placement {
    env.config
        .placements
        .get(&group.name)
        .cloned()
        .unwrap_or_else(|| {
            let home = env.config.home.sites.get(&group.source_site);
            Placement::home(
                &group.name,
                &group.source_site,
                home.and_then(|s| s.replicate_to.as_ref())
                    .map(|t| t.value.as_str()),
            )
        })
}

/// Where the plan's groups must run for operation `op` of `plan` to make sense: at the plan's
/// source, replicating to its target (for a failback, of the reversed plan: at the forward
/// target, protected back), so the target's points are what runs now. Every group that is not gives one line of the refusal.
pub fn check_direction(env: &Environment, plan: &Plan, op: Operation) -> Result<()> {
    let mut wrong = Vec::new();
    for group in groups_of(env, &plan_vms(plan)) {
        let p = placement_of(env, group);
        let name = &plan.name.value;
        if p.site != plan.source.value {
            wrong.push(match op {
                Operation::Failback => format!(
                    "group `{}` runs at `{}`, not `{}`: failback brings home what runs at the other site",
                    group.name, p.site, plan.source.value
                ),
                _ => format!(
                    "group `{}` runs at `{}` now{}: `lifeboat reprotect {name}` then `lifeboat failback {name}` bring it back",
                    group.name,
                    p.site,
                    p.run
                        .as_ref()
                        .map_or(String::new(), |r| format!(" (run {r} was committed)"))
                ),
            });
        } else if p.replicate_to.as_deref() != Some(plan.target.value.as_str()) {
            // The target's newest point is older than what runs now: booting it would lose data.
            wrong.push(if op == Operation::Failback {
                format!(
                    "group `{}` is not replicated back to `{}` yet: `lifeboat reprotect {name}` first (failback loses nothing only from a protected copy)",
                    group.name, plan.target.value
                )
            } else {
                format!(
                    "group `{}` runs at `{}` unprotected{}: `lifeboat reprotect {name}` first, so `{}` holds what it runs now",
                    group.name,
                    p.site,
                    p.run
                        .as_ref()
                        .map_or(String::new(), |r| format!(" since run {r} was committed")),
                    plan.target.value
                )
            });
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(Error::Lifecycle(wrong.join("; ")))
    }
}

/// The plan a run runs: a failback (or a drill of one, `reverse`) the plan reversed (see
/// [`reversed`]).
pub fn plan_for(env: &Environment, plan: &Plan, reverse: bool) -> Plan {
    if reverse {
        reversed(env, plan)
    } else {
        plan.clone()
    }
}

/// The plan in the reverse direction: source and target swapped, each network mapping turned
/// round (or the plan's own `failback_map`), every NIC that returns to its home network asking
/// for its home address (as it was before the failover), and `failback_test` as the test
/// network of drills of the failback.
pub fn reversed(env: &Environment, plan: &Plan) -> Plan {
    let mut p = plan.clone();
    std::mem::swap(&mut p.source, &mut p.target);
    if let Some(net) = &mut p.network {
        net.map = if net.failback_map.is_empty() {
            net.map
                .iter()
                .map(|m| NetworkMapping {
                    from: m.to.clone(),
                    to: m.from.clone(),
                })
                .collect()
        } else {
            net.failback_map.clone()
        };
        net.test = net.failback_test.clone();
        let span = plan.name.span;
        let mut overrides = Vec::new();
        for vm_name in plan_vms(plan) {
            let (Some(home), Some(now)) = (
                env.config.home.vms.get(vm_name),
                env.config.inventory.vms.get(vm_name),
            ) else {
                continue;
            };
            for (i, (h, n)) in home.nics.iter().zip(&now.nics).enumerate() {
                let back = net.map.iter().find(|m| {
                    m.from.value.site == now.site.value && m.from.value.network == n.network.value
                });
                let (Some(ip), Some(back)) = (&h.ip, back) else {
                    continue;
                };
                if back.to.value.site == home.site.value && back.to.value.network == h.network.value
                {
                    overrides.push(NicOverride {
                        vm: Spanned::new(vm_name.to_string(), span),
                        nic: Some(Spanned::new(i as u32, span)),
                        subnet: Some(h.subnet.clone()),
                        ip: Some(ip.clone()),
                        test_ip: None,
                    });
                }
            }
        }
        net.overrides = overrides;
    }
    p
}

/// Records where the groups a committed run booted run now: at `site`, from the run's disks
/// and addresses, not protected until a reprotect.
pub async fn record_commit(
    env: &Environment,
    run: &str,
    site: &str,
    groups: &[String],
    events: &[(i64, i64, Event)],
) -> Result<Vec<Placement>> {
    let mut vms: BTreeMap<String, VmPlace> = BTreeMap::new();
    for (_, _, e) in events {
        match e {
            Event::Restored { vm, disks, .. } => {
                let place = vms.entry(vm.clone()).or_default();
                for path in disks {
                    let name = Path::new(path)
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    place.disks.insert(name, absolute(path));
                }
            }
            Event::Assigned { assignments } => {
                for a in assignments {
                    let place = vms.entry(a.vm.clone()).or_default();
                    place.nics.push(nic_place(a));
                }
            }
            Event::VmStarted {
                vm,
                domain: Some(d),
                ..
            } => {
                vms.entry(vm.clone()).or_default().domain = Some(d.name.clone());
            }
            _ => {}
        }
    }
    let stores = lifeboat_loader::resolved::site_stores(&env.config.home, &env.config.base);
    let required = env.site_store(site)?;
    let mut out = Vec::new();
    for group in groups {
        let Some(spec) = env.config.groups.iter().find(|g| g.name == *group) else {
            continue;
        };
        let before = placement_of(env, spec);
        let next = Placement {
            site: site.to_string(),
            replicate_to: None,
            run: Some(run.to_string()),
            vms: spec
                .vms
                .iter()
                .filter_map(|v| Some((v.name.clone(), vms.get(&v.name)?.clone())))
                .collect(),
            reason: "commit".into(),
            ..before
        };
        let (p, missed) = placement::record(&stores, &required, next)
            .await
            .map_err(|e| Error::replication(format!("where group `{group}` runs"), e))?;
        for m in missed {
            tracing::warn!(
                group,
                store = m,
                "placement recorded without this store (it did not answer)"
            );
        }
        out.push(p);
    }
    Ok(out)
}

fn absolute(path: &str) -> String {
    std::path::absolute(path).map_or_else(|_| path.to_string(), |p| p.display().to_string())
}

fn nic_place(a: &Assignment) -> NicPlace {
    NicPlace {
        network: a
            .network
            .rsplit_once('/')
            .map_or(a.network.clone(), |(_, n)| n.to_string()),
        subnet: a.subnet.clone(),
        ip: a.ip.to_string(),
    }
}

/// What `reprotect` did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReprotectReport {
    pub run: String,
    pub groups: Vec<Reprotected>,
    /// Groups that were already protected in the direction asked.
    pub already: Vec<String>,
}

/// The other site of `plan` from `site`.
fn other_site<'a>(plan: &'a Plan, site: &str) -> &'a str {
    if site == plan.source.value {
        &plan.target.value
    } else {
        &plan.source.value
    }
}

/// Reprotects the groups of `plan` that a commit left running unprotected: each becomes
/// protected where it runs, replicating to the plan's other site. The receiving site first
/// stores what it already holds of the group (the disks it last ran from there), locally; the
/// first cycle then ships only what diverged. Journaled as a run (`resume`: the id of one a
/// killed process left), each group's steps done once.
pub async fn reprotect(
    env: &Environment,
    plan: &Plan,
    plan_path: &Path,
    resume: Option<&str>,
    observe: Observer,
) -> Result<ReprotectReport> {
    let name = &plan.name.value;
    let mut journal = env.journal()?;
    let run = match resume {
        Some(run) => {
            let status = status_of(&journal, run)?;
            if status.operation != RunKind::Reprotect || !status.status.is_resumable() {
                return Err(Error::InvalidState {
                    run: run.to_string(),
                    status: status.status,
                    why: "it is not an unfinished reprotect".into(),
                });
            }
            not_driven(&status)?;
            run.to_string()
        }
        None => {
            if let Some(open) = env.open_run(name)? {
                return Err(Error::OpenRun {
                    plan: name.clone(),
                    run: open.id.clone(),
                    operation: open.operation,
                    status: open.status,
                    next: if open.operation == RunKind::Reprotect {
                        format!("`lifeboat retry {}` finishes it", open.id)
                    } else {
                        format!("`lifeboat commit {name}` (or cleanup) first")
                    },
                });
            }
            let groups = groups_of(env, &plan_vms(plan));
            let mut wrong = Vec::new();
            let mut todo = 0;
            for g in &groups {
                let p = placement_of(env, g);
                if p.run.is_none() {
                    wrong.push(format!(
                        "group `{}` has not failed over (it runs at `{}` from the inventory's disks): there is nothing to reprotect",
                        g.name, p.site
                    ));
                } else if p.replicate_to.is_none() {
                    todo += 1;
                }
            }
            if !wrong.is_empty() {
                return Err(Error::Lifecycle(wrong.join("; ")));
            }
            if todo == 0 {
                return Err(Error::Lifecycle(format!(
                    "every group of plan `{name}` is protected already"
                )));
            }
            check_receiving_idle(env, plan).await?;
            let id = journal.new_run_id(name)?;
            journal.begin(&id, name, RunKind::Reprotect)?;
            journal.append(
                &id,
                &Event::Prepared {
                    plan_path: plan_path.display().to_string(),
                    point: None,
                    reverse: false,
                    instant: false,
                },
            )?;
            id
        }
    };
    let pid = std::process::id();
    journal.append(
        &run,
        &Event::Driving {
            pid,
            started: lifeboat_compute::driver::process_start_time(pid),
            daemon: env.daemon,
        },
    )?;
    let result = reprotect_groups(env, plan, &run, observe.clone()).await;
    let status = match &result {
        Ok(_) => RunStatus::Succeeded,
        Err(_) => RunStatus::Failed,
    };
    let finished = Event::RunFinished { status };
    journal.append(&run, &finished)?;
    observe(&run, &finished);
    result
}

/// The VMs the receiving side would run from the disks it seeds from must be down: a copy
/// still running there writes to them, and a second copy of a VM would be up.
async fn check_receiving_idle(env: &Environment, plan: &Plan) -> Result<()> {
    let journal = env.journal()?;
    let vms: HashSet<&str> = plan_vms(plan).into_iter().collect();
    for h in running_vms(&journal)? {
        if vms.contains(h.vm.as_str()) && env.driver.running(&h).await {
            let here = env
                .config
                .inventory
                .vms
                .get(&h.vm)
                .map(|v| v.site.value.clone())
                .unwrap_or_default();
            // The copy a run booted where the group runs now is the one being protected.
            let current = env.config.groups.iter().any(|g| {
                g.vms.iter().any(|v| v.name == h.vm)
                    && env
                        .config
                        .placements
                        .get(&g.name)
                        .and_then(|p| p.run.as_deref())
                        == run_of_pid(&journal, &h).as_deref()
            });
            if !current {
                return Err(Error::Lifecycle(format!(
                    "VM `{}` still runs from an older copy (pid {}, not the one at `{here}`): stop it first (`lifeboat cleanup` of its run), so its disks stay as they were",
                    h.vm, h.pid
                )));
            }
        }
    }
    let home_vms: Vec<&str> = plan_vms(plan);
    let located = lifeboat_compute::site::locate_source_vms(
        &env.config.home,
        &env.config.base,
        env.driver.as_ref(),
        &home_vms,
    )
    .await;
    if let Some(h) = located.first() {
        return Err(Error::Lifecycle(format!(
            "VM `{}` runs at its home site from the inventory's disks (pid {}): shut it down first; the copy that failed over is the one protected now",
            h.vm, h.pid
        )));
    }
    Ok(())
}

/// The run that started the VM process `h`.
fn run_of_pid(
    journal: &crate::journal::Journal,
    h: &lifeboat_compute::driver::Handle,
) -> Option<String> {
    for (id, ..) in journal.runs().ok()? {
        let running = journal.replay(&id).ok()??.running;
        if running.iter().any(|r| r.pid == h.pid && r.vm == h.vm) {
            return Some(id);
        }
    }
    None
}

async fn reprotect_groups(
    env: &Environment,
    plan: &Plan,
    run: &str,
    observe: Observer,
) -> Result<ReprotectReport> {
    let mut journal = env.journal()?;
    let replayed = journal.replay(run)?.unwrap_or_default();
    let mut report = ReprotectReport {
        run: run.to_string(),
        ..ReprotectReport::default()
    };
    let stores = lifeboat_loader::resolved::site_stores(&env.config.home, &env.config.base);
    for group in groups_of(env, &plan_vms(plan)) {
        let p = placement_of(env, group);
        let done = replayed.reprotected.get(&group.name).cloned();
        let placed = replayed.placed.contains(&group.name);
        if placed || (done.is_none() && p.replicate_to.is_some()) {
            if done.is_none() {
                report.already.push(group.name.clone());
            } else if let Some(r) = done {
                report.groups.push(r);
            }
            continue;
        }
        let to = other_site(plan, &p.site).to_string();
        let r = match done {
            Some(r) => r,
            None => {
                let r = turn_round(env, group, &p, &to).await?;
                let e = Event::Reprotected {
                    group: group.name.clone(),
                    report: r.clone(),
                };
                journal.append(run, &e)?;
                observe(run, &e);
                r
            }
        };
        let required = env.site_store(&p.site)?;
        let next = Placement {
            replicate_to: Some(to.clone()),
            reason: "reprotect".into(),
            ..p
        };
        let (recorded, missed) = placement::record(&stores, &required, next)
            .await
            .map_err(|e| Error::replication(format!("where group `{}` runs", group.name), e))?;
        for m in missed {
            tracing::warn!(group = %group.name, store = m, "placement recorded without this store");
        }
        let e = Event::Placed {
            group: group.name.clone(),
            generation: recorded.generation,
            site: recorded.site.clone(),
            replicate_to: recorded.replicate_to.clone(),
        };
        journal.append(run, &e)?;
        observe(run, &e);
        report.groups.push(r);
    }
    Ok(report)
}

/// One group's reprotect: the receiving site seeds its repository from what it holds, the
/// running site becomes the writer with a new epoch, and the first cycle ships the rest.
async fn turn_round(
    env: &Environment,
    group: &GroupSpec,
    p: &Placement,
    to: &str,
) -> Result<Reprotected> {
    let receiving = env.site_store(to)?;
    let sending = env.site_store(&p.site)?;
    let images = old_disks(env, group, to).await?;
    let seed = lifeboat_replication::seed::seed(&receiving, &images)
        .await
        .map_err(|e| Error::replication(format!("seed of group `{}` at `{to}`", group.name), e))?;
    let full_seed = seed.read.is_empty();
    lifeboat_replication::fencing::take_writer(&sending, &receiving, &group.name)
        .await
        .map_err(|e| Error::replication(format!("group `{}`", group.name), e))?;
    let mut spec = group.clone();
    spec.source_site = p.site.clone();
    spec.target_site = to.to_string();
    spec.protected = true;
    let holder = lifeboat_replication::lease::Holder::new("reprotect");
    let cycle = lifeboat_compute::site::cycle_once(
        &env.config.inventory,
        &env.config.base,
        env.driver.clone(),
        &spec,
        lifeboat_replication::AppMode::Never,
        None,
        &holder,
    )
    .await
    .map_err(|e| {
        Error::replication(
            format!(
                "first cycle of group `{}` from `{}` to `{to}`",
                group.name, p.site
            ),
            e,
        )
    })?;
    Ok(Reprotected {
        group: group.name.clone(),
        site: p.site.clone(),
        replicate_to: to.to_string(),
        seed,
        full_seed,
        point: cycle.seq,
        disk_bytes: cycle.disk_bytes,
        new_bytes: cycle.new_bytes,
        shipped_bytes: cycle.shipped_bytes,
    })
}

/// The disks the group's VMs last ran from at `site`, with their chunk sizes: the inventory's
/// when `site` is their home and no run's copy ran there since; else the disks of the newest
/// placement there.
async fn old_disks(
    env: &Environment,
    group: &GroupSpec,
    site: &str,
) -> Result<Vec<(PathBuf, u32)>> {
    let stores = lifeboat_loader::resolved::site_stores(&env.config.home, &env.config.base);
    let there = placement::history(&stores, &group.name)
        .await
        .map_err(|e| Error::replication(format!("where group `{}` ran", group.name), e))?
        .into_iter()
        .rev()
        .find(|p| p.site == site);
    let mut out = Vec::new();
    for vm in &group.vms {
        let home = env.config.home.vms.get(&vm.name);
        // A libvirt VM's disks are its home domain's (read from libvirt, never written in the
        // inventory): its files, when the domain is on this machine.
        if let Some(h) = home.filter(|h| h.site.value == site && vm.disks.is_empty())
            && !there.as_ref().is_some_and(|p| p.moved())
            && let Some(s) = env.config.home.sites.get(site)
            && s.compute.value == lifeboat_plan::inventory::ComputeDriver::Libvirt
        {
            let uris: Vec<String> = s.hosts.iter().map(|u| u.value.clone()).collect();
            let domain = h
                .domain
                .as_ref()
                .map_or(vm.name.as_str(), |d| d.value.as_str());
            // The seed only spares the first cycle's shipping: a host that does not answer
            // costs a full first cycle, not the reprotect.
            let files = lifeboat_compute::libvirt::local_disk_files(&uris, domain)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(domain, error = %e, "the home domain's disks are not read for the seed; the first cycle ships everything");
                    Vec::new()
                });
            out.extend(
                files
                    .into_iter()
                    .map(|f| (f, lifeboat_replication::groups::DEFAULT_CHUNK_SIZE)),
            );
            continue;
        }
        for disk in &vm.disks {
            let path = match &there {
                Some(p) if p.moved() => p
                    .vms
                    .get(&vm.name)
                    .and_then(|v| v.disks.get(&disk.name))
                    .map(PathBuf::from),
                _ => home
                    .filter(|h| h.site.value == site)
                    .and_then(|h| h.disks.get(&disk.name))
                    .map(|d| env.config.base.join(&d.value)),
            };
            if let Some(path) = path {
                out.push((path, disk.chunk_size));
            }
        }
    }
    Ok(out)
}

/// Takes VM `vm` out of protection (or, `enable`, puts it back): recorded with its group's
/// placement, so every daemon and command sees it. Returns the placement and whether it
/// changed (`false`: the VM was so already, nothing recorded).
pub async fn set_enabled(env: &Environment, vm: &str, enabled: bool) -> Result<(Placement, bool)> {
    let group = group_of_vm(env, vm)?;
    let mut p = placement_of(env, group);
    let changed = if enabled {
        p.disabled.remove(vm)
    } else {
        p.disabled.insert(vm.to_string())
    };
    if !changed {
        return Ok((p, false));
    }
    p.reason = if enabled { "enable" } else { "disable" }.into();
    let stores = lifeboat_loader::resolved::site_stores(&env.config.home, &env.config.base);
    let required = env.site_store(&p.site)?;
    let (p, _) = placement::record(&stores, &required, p)
        .await
        .map_err(|e| Error::replication(format!("where group `{}` runs", group.name), e))?;
    Ok((p, true))
}

/// The consistency group of `vm`, disabled or not (a group's spec leaves its disabled VMs out of
/// the captures; its placement lists them).
fn group_of_vm<'a>(env: &'a Environment, vm: &str) -> Result<&'a GroupSpec> {
    env.config
        .groups
        .iter()
        .find(|g| {
            g.vms.iter().any(|v| v.name == vm)
                || env
                    .config
                    .placements
                    .get(&g.name)
                    .is_some_and(|p| p.disabled.contains(vm))
        })
        .ok_or_else(|| Error::Lifecycle(format!("no VM `{vm}` in the inventory")))
}

/// Deletes every point of the group of `vm` from the repository it replicates to, once none of
/// its VMs is protected: `disable --purge`. Returns the group and how many points went.
pub async fn purge(env: &Environment, vm: &str) -> Result<(String, usize)> {
    let group = group_of_vm(env, vm)?;
    let p = placement_of(env, group);
    // Every member, the disabled ones included (the inventory's list).
    let members: Vec<String> = env
        .config
        .home
        .consistency_groups
        .get(&group.name)
        .map_or_else(
            || vec![vm.to_string()],
            |cg| cg.vms.iter().map(|v| v.value.clone()).collect(),
        );
    if let Some(other) = members.iter().find(|m| !p.disabled.contains(*m)) {
        return Err(Error::Lifecycle(format!(
            "VM `{vm}` shares consistency group `{}` with `{other}`, which is still protected: its points hold both; disable every VM of the group to purge them",
            group.name
        )));
    }
    let target = env.site_store(&group.target_site)?;
    let n = lifeboat_replication::points::purge(&target, &group.name)
        .await
        .map_err(|e| Error::replication(format!("purge of group `{}`", group.name), e))?;
    Ok((group.name.clone(), n))
}

/// Applies the stores' placements, read again, to an environment's configuration.
pub async fn place(env: &mut Environment) -> Result<()> {
    let placements = env
        .config
        .read_placements()
        .await
        .map_err(|e| Error::replication("cannot read where groups run", e))?;
    env.config = Arc::new(
        env.config
            .with_placements(placements)
            .map_err(Error::Resolve)?,
    );
    Ok(())
}
