//! The source site as a failover sees it: whether any VM still answers its health probe, and
//! what a planned failover does there. A failover checks the source (`check`) with every other
//! refusal, before anything changes; only then does a planned failover stop it and take the
//! last point (`hand_over`, through `lifeboat_compute::site::cycle`).

use std::time::Duration;

use lifeboat_compute::driver::Handle;
use lifeboat_compute::site::{cycle, lease, locate_source_vms, source_value};
use lifeboat_plan::Plan;
use lifeboat_plan::plan::Operation;
use lifeboat_replication::lease::{DEFAULT_TTL, Holder, Lease};
use lifeboat_replication::{AppMode, GroupSpec};

use crate::error::{Error, Result};
use crate::runs::Environment;

/// Whether the source site lets a failover of `plan` go ahead, without changing anything.
/// `planned`: every source VM that answers its health probe must be one Lifeboat can stop (one
/// running as its boot command describes), else the last cycle would miss its writes.
/// `unplanned`: refuses a source that still answers (two copies of a VM would run) unless
/// `force`. A drill leaves the source alone. For a planned failover, returns the source VMs it
/// stops and the writer leases of their groups, taken last: a group a daemon protects is
/// refused here, before anything stops, not at the last cycle.
pub async fn check(env: &Environment, plan: &Plan, op: Operation, force: bool) -> Result<HandOver> {
    match op {
        // A failback is a planned failover of the reversed plan.
        Operation::Planned | Operation::Failback => {
            let located = locate_source_vms(
                &env.config.inventory,
                &env.config.base,
                env.driver.as_ref(),
                &plan_vms(plan),
            )
            .await;
            // Any answering VM but those Lifeboat will stop (not just the first that answers).
            let stoppable: Vec<&str> = located.iter().map(|h| h.vm.as_str()).collect();
            if let Some((vm, probe)) = source_answering(env, plan, &stoppable).await {
                return Err(Error::Source(format!(
                    "source VM `{vm}` is still running ({probe} answers) but not as its boot command says, so Lifeboat cannot stop it: shut it down first, so the last cycle holds its every write"
                )));
            }
            let holder = Holder::new("planned failover");
            let mut leases = Vec::new();
            for group in groups_of(env, &plan_vms(plan)) {
                let l = lease(
                    &env.config.inventory,
                    &env.config.base,
                    group,
                    &holder,
                    DEFAULT_TTL,
                )
                .await
                .map_err(|e| {
                    Error::replication(
                        format!(
                            "a planned failover takes the last point of group `{}` itself",
                            group.name
                        ),
                        e,
                    )
                })?;
                leases.push(l);
            }
            Ok(HandOver { located, leases })
        }
        Operation::Unplanned => {
            if let Some((vm, probe)) = source_answering(env, plan, &[]).await
                && !force
            {
                return Err(Error::Source(format!(
                    "source VM `{vm}` still answers ({probe}): an unplanned failover now would run two copies of it; shut it down, fail over with --planned, or pass --force if the source is cut off from its users"
                )));
            }
            Ok(HandOver::default())
        }
        _ => Ok(HandOver::default()),
    }
}

/// What a planned failover's hand-over needs, found by `check`.
#[derive(Debug, Default)]
pub struct HandOver {
    /// The source VMs it stops.
    pub located: Vec<Handle>,
    /// The writer lease of every group it takes the last point of, held until then.
    pub leases: Vec<Lease>,
}

impl HandOver {
    /// Gives the leases back (the last point is taken, or the failover was refused after
    /// `check`); a lease that will not go back expires on its own.
    pub async fn release(self) {
        for l in self.leases {
            let group = l.group().to_string();
            if let Err(e) = l.release().await {
                tracing::warn!(group, error = %e, "a lease was not released; it expires on its own");
            }
        }
    }
}

/// A planned failover's hand-over, once every check passed: stop the source VMs it located
/// (gracefully, then by force), make sure none still answers, and take the last point of
/// every group so the failover loses nothing. Returns the VMs it stopped.
pub async fn hand_over(env: &Environment, plan: &Plan, mut hand: HandOver) -> Result<Vec<Handle>> {
    for h in &hand.located {
        env.driver
            .stop(h, STOP_GRACE)
            .await
            .map_err(Error::Compute)?;
    }
    if let Some((vm, probe)) = source_answering(env, plan, &[]).await {
        return Err(Error::Source(format!(
            "source VM `{vm}` still answers ({probe}) after it was stopped: shut it down, then fail over again"
        )));
    }
    let result = last_cycle(env, plan, &hand.leases).await;
    let located = std::mem::take(&mut hand.located);
    hand.release().await;
    result.map(|()| located)
}

/// How long a source VM may take to shut down before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The first of `plan`'s VMs (but those in `except`) whose health probe still answers at its
/// source address, with the probe: a source that is up.
pub async fn source_answering(
    env: &Environment,
    plan: &Plan,
    except: &[&str],
) -> Option<(String, String)> {
    use crate::health::{Probe, check};
    for name in plan_vms(plan).into_iter().filter(|n| !except.contains(n)) {
        let Some(vm) = env.config.inventory.vms.get(name) else {
            continue;
        };
        let Some(health) = &vm.health else { continue };
        let value = |p: &str| source_value(name, vm, p);
        let probe = match (&health.tcp, &health.http) {
            (Some(t), _) => lifeboat_compute::template::fill(&t.value, &value)
                .ok()
                .map(Probe::Tcp),
            (None, Some(h)) => lifeboat_compute::template::fill(&h.value, &value)
                .ok()
                .map(Probe::Http),
            // A command probe runs here, not at the source: it says nothing about the source.
            (None, None) => None,
        };
        let Some(probe) = probe else { continue };
        let answered =
            tokio::time::timeout(Duration::from_secs(2), check(&probe, &env.config.base)).await;
        if matches!(answered, Ok(Ok(()))) {
            return Some((name.to_string(), probe.describe()));
        }
    }
    None
}

pub fn plan_vms(plan: &Plan) -> Vec<&str> {
    plan.groups
        .iter()
        .flat_map(|g| g.vms.iter().map(|v| v.value.as_str()))
        .collect()
}

/// The consistency groups that hold any of `vms`.
pub fn groups_of<'a>(env: &'a Environment, vms: &[&str]) -> Vec<&'a GroupSpec> {
    env.config
        .groups
        .iter()
        .filter(|g| g.vms.iter().any(|v| vms.contains(&v.name.as_str())))
        .collect()
}

/// A planned failover's last replication cycle of every group of `plan`'s VMs (their VMs shut
/// down), so the failover loses nothing.
async fn last_cycle(env: &Environment, plan: &Plan, leases: &[Lease]) -> Result<()> {
    for group in groups_of(env, &plan_vms(plan)) {
        let Some(lease) = leases.iter().find(|l| l.group() == group.name) else {
            return Err(Error::Failed(format!(
                "no writer lease for group `{}`",
                group.name
            )));
        };
        cycle(
            &env.config.inventory,
            &env.config.base,
            env.driver.clone(),
            group,
            AppMode::Never,
            None,
            lease,
        )
        .await
        .map_err(|e| {
            Error::replication(
                format!("last replication cycle of group `{}`", group.name),
                e,
            )
        })?;
    }
    Ok(())
}
