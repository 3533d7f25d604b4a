//! Housekeeping of each repository the daemon writes to, on a slower cadence than cycles:
//! its size (every minute), GC (`--gc-every`, default hourly; its grace period keeps data a
//! concurrent cycle may still reuse) and a quick verify (`--verify-every`, default every six
//! hours; every object listed and parsed, problems logged and counted). One pass at a time.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use lifeboat_plan::Inventory;
use lifeboat_replication::gc::GcOptions;
use lifeboat_replication::{GroupSpec, Store};

use lifeboat_api::status::Maintenance;

/// What one pass does.
#[derive(Debug)]
pub(crate) struct Job {
    pub inventory: Arc<Inventory>,
    pub base: PathBuf,
    pub groups: Vec<GroupSpec>,
    pub gc: bool,
    pub verify: bool,
}

/// What one pass found, per target site.
#[derive(Debug)]
pub(crate) struct Done {
    pub sites: Vec<Maintenance>,
}

pub(crate) async fn run(job: Job) -> Done {
    let targets: BTreeSet<&str> = job.groups.iter().map(|g| g.target_site.as_str()).collect();
    let mut sites = Vec::new();
    for site in targets {
        let mut m = Maintenance {
            site: site.to_string(),
            repository_bytes: None,
            last_gc_at: None,
            last_verify_at: None,
            verify_problems: 0,
            last_error: None,
        };
        if let Err(e) = pass(&job, site, &mut m).await {
            tracing::warn!(site, error = %e, "maintenance stopped");
            m.last_error = Some(e.to_string());
        }
        sites.push(m);
    }
    Done { sites }
}

async fn pass(job: &Job, site: &str, m: &mut Maintenance) -> lifeboat_replication::Result<()> {
    let Some(def) = job.inventory.sites.get(site) else {
        return Ok(());
    };
    let store = Store::open(&def.store.value, &job.base)?;
    let objects = store.list(lifeboat_replication::repo::PREFIX).await?;
    if objects.is_empty() {
        // Nothing replicated there yet.
        return Ok(());
    }
    m.repository_bytes = Some(objects.iter().map(|o| o.size).sum());
    let now = || humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    if job.gc {
        let groups: Vec<GroupSpec> = job
            .groups
            .iter()
            .filter(|g| g.target_site == site)
            .cloned()
            .collect();
        let r = lifeboat_replication::gc::gc(&store, &groups, &GcOptions::default()).await?;
        tracing::info!(
            site,
            expired = r.expired.len(),
            condemned = r.packs_condemned,
            deleted = r.packs_deleted,
            bytes_deleted = r.bytes_deleted,
            "gc done"
        );
        m.last_gc_at = Some(now());
    }
    if job.verify {
        let r = lifeboat_replication::verify::verify(&store, false).await?;
        for p in &r.problems {
            tracing::error!(site, object = %p.object, "verify: {}", p.what);
        }
        tracing::info!(
            site,
            points = r.points,
            problems = r.problems.len(),
            "verify done"
        );
        m.verify_problems = r.problems.len();
        m.last_verify_at = Some(now());
    }
    Ok(())
}
