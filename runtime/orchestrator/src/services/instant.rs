//! Instant boot at a `qemu` or `libvirt` target: a VM boots from its point as the repository
//! holds it, on qcow2 images backed by a `lifeboat export` server, and its disks hydrate
//! behind it. A domain's copy boots on the images themselves (they are the run's own, and
//! qcow2, which libvirt's checkpoints need), so libvirt's pull fills the very disk it runs.
//!
//! The export server is a process of its own (started and found again by the compute driver,
//! under the start's key): a CLI run that exits, or a daemon that restarts, leaves it serving,
//! and whoever drives the run's hydration next (`crate::hydration`) restarts it if it died.

use std::path::{Path, PathBuf};

use lifeboat_compute::driver::Launch;
use lifeboat_compute::hydrate;
use lifeboat_plugin_host::wit::Error;
use lifeboat_replication::points;

use super::{RunServices, other};
use crate::journal::Event;

/// Whether a `libvirt` site's domains can boot from an export server of this machine: every
/// host of the site is this machine's libvirt (the export listens on a unix socket here).
pub(crate) fn serves_libvirt_locally(site: &lifeboat_plan::inventory::Site) -> bool {
    !site.hosts.is_empty()
        && site
            .hosts
            .iter()
            .all(|h| !lifeboat_compute::libvirt::rpc::is_remote(&h.value))
}

impl RunServices {
    /// Whether `vm` boots instantly in this run: an instant run, and a `qemu` target with a VM
    /// of `machine` settings (a process VM's boot command opens its files itself: it needs
    /// them whole) or a `libvirt` target whose hosts are this machine (the export server's
    /// socket is here).
    pub(super) fn boots_instantly(&self, vm: &str) -> bool {
        use lifeboat_plan::inventory::ComputeDriver;
        let Some(site) = self.inventory.sites.get(&self.target_site) else {
            return false;
        };
        self.instant
            && match site.compute.value {
                ComputeDriver::Qemu => self.vm(vm).is_ok_and(|v| v.machine.is_some()),
                ComputeDriver::Libvirt => serves_libvirt_locally(site),
                _ => false,
            }
    }

    /// The "restore" of an instant boot: the export server for `vm`'s point, and one qcow2
    /// image per disk backed by it. Journaled as `exporting` and then `restored` (the images),
    /// so the start boots them and a resumed run finds them.
    pub(super) async fn export_and_overlay(
        &self,
        vm: &str,
        point: &str,
        key: &str,
    ) -> Result<Vec<String>, Error> {
        let group = self.group_of(vm)?.name.clone();
        let repo = self.repository(0).await?;
        let mut m = points::select(&repo, &group, point)
            .await
            .map_err(|e| Error::NotFound(e.to_string()))?;
        if !m.vms.iter().any(|v| v.name == vm) {
            // Committed after the repository's index was read.
            let repo = self.repository(m.committed_unix_ms).await?;
            m = points::select(&repo, &group, point)
                .await
                .map_err(|e| Error::NotFound(e.to_string()))?;
        }
        let point_vm = m
            .vms
            .iter()
            .find(|v| v.name == vm)
            .ok_or_else(|| Error::NotFound(format!("point {} has no VM `{vm}`", m.seq)))?;
        let dir = self.run_dir.join("disks").join(vm);
        std::fs::create_dir_all(&dir)
            .map_err(|e| other(format!("cannot create {}: {e}", dir.display())))?;
        let socket = dir.join("export.sock");
        let export_key = format!("{key}/export");
        let log = self.run_dir.join("logs").join(format!("{vm}.export.log"));
        std::fs::create_dir_all(&self.traces)
            .map_err(|e| other(format!("cannot create {}: {e}", self.traces.display())))?;
        let trace = self.traces.join(format!("{vm}.json"));
        let argv = self.export_argv(vm, &group, m.seq, &socket, &trace);
        let launch = Launch {
            vm: vm.to_string(),
            argv: argv.clone(),
            dir: self.base.clone(),
            log: log.clone(),
            key: export_key.clone(),
            netns: None,
            domain: None,
        };
        // A resumed run adopts the server it started before it died.
        let handle = match crate::hydration::find_server(self.driver.as_ref(), &launch).await {
            Some(h) => h,
            None => self.driver.start(&launch).await.map_err(other)?,
        };
        let disks: Vec<String> = point_vm.disks.iter().map(|d| d.name.clone()).collect();
        let mut images = Vec::new();
        let mut maps = None;
        for d in &point_vm.disks {
            let image = dir.join(format!("{}.qcow2", d.name));
            if !image.exists() {
                // The point's zero stretches are zero in the image from the start; made under
                // another name, so an image that exists is complete.
                if maps.is_none() {
                    let repo = self.repository(m.committed_unix_ms).await?;
                    maps = Some(
                        lifeboat_replication::export::DiskExport::of_point(repo, &m, vm)
                            .await
                            .map_err(other)?,
                    );
                }
                let zero = maps
                    .iter()
                    .flatten()
                    .find(|e| e.name == d.name)
                    .map(|e| e.zero_runs())
                    .unwrap_or_default();
                let partial = dir.join(format!("{}.qcow2.partial", d.name));
                hydrate::create_image(&partial, d.size, &socket, &d.name)
                    .await
                    .map_err(other)?;
                hydrate::mark_zero(&partial, &zero).await.map_err(other)?;
                std::fs::rename(&partial, &image)
                    .map_err(|e| other(format!("cannot name {}: {e}", image.display())))?;
            }
            images.push(image.display().to_string());
        }
        self.record(Event::Exporting {
            vm: vm.to_string(),
            key: export_key,
            pid: handle.pid,
            started: handle.started,
            argv,
            log: log.display().to_string(),
            socket: socket.display().to_string(),
            disks,
            images: images.clone(),
            speed: self.hydration_speed(),
        })?;
        crate::hydration::wait_listening(&socket, &log, self.driver.as_ref(), &handle)
            .await
            .map_err(other)?;
        self.record(Event::Restored {
            vm: vm.to_string(),
            key: key.to_string(),
            disks: images.clone(),
        })?;
        tracing::info!(point = m.seq, disks = images.len(), socket = %socket.display(), "serving the point for an instant boot");
        Ok(images)
    }

    /// `lifeboat --config … export VM --point SEQ --site TARGET --socket PATH --boot-trace
    /// FILE`: the trace is the VM's, whichever point and site it boots from (a boot reads the
    /// same blocks of its disks wherever it runs).
    fn export_argv(
        &self,
        vm: &str,
        group: &str,
        seq: u64,
        socket: &Path,
        trace: &Path,
    ) -> Vec<String> {
        let mut argv: Vec<String> = self
            .lifeboat
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        argv.extend([
            "--config".to_string(),
            self.config_file.display().to_string(),
            "export".to_string(),
            vm.to_string(),
            "--point".to_string(),
            format!("{group}/{seq}"),
            "--site".to_string(),
            self.target_site.clone(),
            "--socket".to_string(),
            socket.display().to_string(),
            "--boot-trace".to_string(),
            trace.display().to_string(),
        ]);
        argv
    }

    /// The most one disk's hydration may read per second: the target site's `bandwidth`
    /// shared by every disk the run boots instantly (0: no limit).
    fn hydration_speed(&self) -> u64 {
        let Some(rate) = self
            .inventory
            .sites
            .get(&self.target_site)
            .and_then(|s| s.bandwidth.as_ref())
        else {
            return 0;
        };
        let disks: usize = self
            .plan_groups
            .values()
            .flatten()
            .filter(|vm| self.boots_instantly(vm))
            .filter_map(|vm| self.vm(vm).ok())
            .map(|v| v.disks.len())
            .sum();
        (rate.value.0 / disks.clamp(1, crate::hydration::AT_ONCE) as u64).max(1)
    }

    /// Hands `vm`'s instant disks to the run's hydration supervisor, which begins copying
    /// once the VM's group is healthy (until then its boot has the export server to itself).
    pub(super) fn begin_hydration(&self, vm: &str) {
        if matches!(self.instant_images(vm), Ok(Some(_))) {
            self.tend_meanwhile();
        }
    }

    /// Starts tending the run's instant disks in the background, once.
    fn tend_meanwhile(&self) {
        let Ok(mut tending) = self.tending.lock() else {
            return;
        };
        if tending.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let tender = self.tender.clone();
        let run = self.run.clone();
        *tending = Some(tokio::spawn(async move {
            if let Err(e) = crate::hydration::until_hydrated_with(&tender, &run, |_| {}).await {
                tracing::warn!(run, error = %e, "hydration not tended");
            }
        }));
    }

    /// `vm`'s instant images and where its disk jobs are driven, from the journal.
    #[allow(clippy::type_complexity)]
    fn instant_images(
        &self,
        vm: &str,
    ) -> Result<Option<(Vec<PathBuf>, hydrate::Monitor, u64)>, Error> {
        self.with_events(|events| {
            let (images, speed) = events.iter().rev().find_map(|(_, e)| match e {
                Event::Exporting {
                    vm: v,
                    images,
                    speed,
                    ..
                } if v == vm => Some((images.clone(), *speed)),
                _ => None,
            })?;
            let monitor = events.iter().rev().find_map(|(_, e)| match e {
                Event::VmStarted {
                    vm: v,
                    argv,
                    domain,
                    ..
                } if v == vm => hydrate::Monitor::of(argv, domain.as_ref(), &self.base),
                _ => None,
            })?;
            Some((
                images.into_iter().map(PathBuf::from).collect(),
                monitor,
                speed,
            ))
        })
    }
}
