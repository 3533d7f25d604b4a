//! The world a simulated run's steps act on. Every host call a step makes lands here instead of
//! on a site: a restore takes the time the model gives it and restores nothing, a start makes a
//! VM that becomes healthy after its boot time, a probe is answered as those VMs would answer at
//! that moment of the run, an approval is granted at once, an HTTP request is not sent. The
//! clock is the simulation's own: sleeping moves it, so a step that waits a minute for a VM
//! costs a minute of predicted RTO and no time at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use lifeboat_plugin_host::HostServices;
use lifeboat_plugin_host::wit::Error;
use lifeboat_plugin_host::wit::lifeboat::plan::{compute::VmState, inventory, network, recovery};
use serde::Serialize;

use crate::network::Assignment;

/// The point a consistency group would boot, as the simulation knows it.
#[derive(Clone, Debug)]
pub struct SimPoint {
    pub point: recovery::Point,
    /// The restored size of each of its VMs, when the point's manifest was read.
    pub vm_bytes: HashMap<String, u64>,
}

/// What the simulated timing rests on, VM by VM.
#[derive(Clone, Debug, Default)]
pub struct Timing {
    /// Seconds a VM's restore takes.
    pub restore_seconds: HashMap<String, f64>,
    /// Seconds from a VM's start to its first healthy answer.
    pub boot_seconds: HashMap<String, f64>,
}

/// What happened to one VM in the simulated run, in simulated seconds from its start.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct VmTimeline {
    pub restored_from: Option<f64>,
    pub restored_at: Option<f64>,
    pub started_at: Option<f64>,
    pub healthy_at: Option<f64>,
}

/// A call that touched nothing but would have in a real run, or an answer the simulation
/// had to assume: the report lists them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Note {
    pub step: String,
    pub at_seconds: f64,
    pub text: String,
}

/// A probe that found a VM of the plan not running yet because its group comes later: what
/// turns a failed step into an order diagnostic.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Early {
    pub step: String,
    pub vm: String,
    pub vm_group: String,
}

#[derive(Debug, Default)]
struct State {
    now_ms: u64,
    /// The step running, its plan group and the simulated time its timeout ends.
    step: String,
    group: String,
    deadline_ms: u64,
    vms: HashMap<String, VmTimeline>,
    /// Restores begun when a group's boot asked for its VMs (as the real run's services begin
    /// them, a few at once): VM → (start, end), in simulated milliseconds.
    begun: HashMap<String, (u64, u64)>,
    notes: Vec<Note>,
    early: Vec<Early>,
}

/// The simulated site a run's steps are served by.
#[derive(Debug)]
pub struct SimWorld {
    pub target_site: String,
    /// The plan's VMs as the inventory defines them.
    pub vms: HashMap<String, lifeboat_plan::inventory::Vm>,
    /// Plan groups in run order, with their VMs.
    pub plan_groups: Vec<(String, Vec<String>)>,
    pub assignments: Vec<Assignment>,
    /// VM → its consistency group's point, or why none is known.
    pub points: HashMap<String, Result<SimPoint, String>>,
    pub timing: Timing,
    /// Real time when the simulation began: `now-ms` is this plus the simulated time.
    epoch_ms: u64,
    state: Mutex<State>,
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl SimWorld {
    pub fn new(
        target_site: String,
        vms: HashMap<String, lifeboat_plan::inventory::Vm>,
        plan_groups: Vec<(String, Vec<String>)>,
        assignments: Vec<Assignment>,
        points: HashMap<String, Result<SimPoint, String>>,
        timing: Timing,
    ) -> Self {
        Self {
            target_site,
            vms,
            plan_groups,
            assignments,
            points,
            timing,
            epoch_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            state: Mutex::new(State::default()),
        }
    }

    /// A world with no VMs, for trying one step (`lifeboat plugin test`): every address is
    /// outside it (assumed to answer, noted), approvals are granted, nothing is sent.
    pub fn empty() -> Self {
        Self::new(
            String::new(),
            HashMap::new(),
            Vec::new(),
            Vec::new(),
            HashMap::new(),
            Timing::default(),
        )
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, Error> {
        self.state
            .lock()
            .map_err(|_| other("the simulation's state lock is poisoned"))
    }

    /// The simulated seconds since the run began.
    pub fn now_seconds(&self) -> f64 {
        self.state.lock().map(|s| secs(s.now_ms)).unwrap_or(0.0)
    }

    /// Step `step` of plan group `group` begins now and may take `timeout` (simulated).
    pub fn begin_step(&self, step: &str, group: &str, timeout: Duration) {
        if let Ok(mut s) = self.state.lock() {
            s.step = step.to_string();
            s.group = group.to_string();
            s.deadline_ms = s.now_ms.saturating_add(timeout.as_millis() as u64);
        }
    }

    /// Moves the clock by `seconds`: what a step took that the model knows but no host call
    /// spends (a measured probe, a hook).
    pub fn advance(&self, seconds: f64) {
        if let Ok(mut s) = self.state.lock() {
            s.now_ms += (seconds * 1000.0).round() as u64;
        }
    }

    pub fn timelines(&self) -> HashMap<String, VmTimeline> {
        self.state.lock().map(|s| s.vms.clone()).unwrap_or_default()
    }

    pub fn notes(&self) -> Vec<Note> {
        self.state
            .lock()
            .map(|s| s.notes.clone())
            .unwrap_or_default()
    }

    pub fn early(&self) -> Vec<Early> {
        self.state
            .lock()
            .map(|s| s.early.clone())
            .unwrap_or_default()
    }

    fn note(&self, text: String) {
        if let Ok(mut s) = self.state.lock() {
            let (step, at_seconds) = (s.step.clone(), secs(s.now_ms));
            s.notes.push(Note {
                step,
                at_seconds,
                text,
            });
        }
    }

    fn group_of(&self, vm: &str) -> Option<(usize, &str)> {
        self.plan_groups
            .iter()
            .enumerate()
            .find(|(_, (_, vms))| vms.iter().any(|v| v == vm))
            .map(|(i, (g, _))| (i, g.as_str()))
    }

    fn known(&self, vm: &str) -> Result<&lifeboat_plan::inventory::Vm, Error> {
        if self.group_of(vm).is_none() {
            return Err(Error::NotFound(format!("VM `{vm}` is not in this plan")));
        }
        self.vms
            .get(vm)
            .ok_or_else(|| Error::NotFound(format!("no VM `{vm}` in the inventory")))
    }

    fn point(&self, vm: &str) -> Result<&SimPoint, Error> {
        match self.points.get(vm) {
            Some(Ok(p)) => Ok(p),
            Some(Err(why)) => Err(Error::NotFound(why.clone())),
            None => Err(Error::NotFound(format!(
                "VM `{vm}` is in no consistency group: it has no recovery points"
            ))),
        }
    }

    /// The VM of the plan at `ip`, if any.
    fn vm_at(&self, ip: IpAddr) -> Option<&str> {
        self.assignments
            .iter()
            .find(|a| a.ip == ip)
            .map(|a| a.vm.as_str())
    }

    /// How a VM at `target` (an address of the plan's VMs, or outside it) answers now.
    fn answer(&self, target: &str, host: Option<IpAddr>) -> Result<bool, Error> {
        let Some(vm) = host.and_then(|ip| self.vm_at(ip)) else {
            self.note(format!(
                "{target} is not an address of this plan's VMs: not reached, assumed to answer"
            ));
            return Ok(false);
        };
        let mut s = self.state()?;
        let now = secs(s.now_ms);
        let line = s.vms.get(vm).cloned().unwrap_or_default();
        match (line.started_at, line.healthy_at) {
            (Some(_), Some(h)) if h <= now => Ok(true),
            (Some(_), Some(h)) => Err(Error::Other(format!(
                "cannot connect to {target}: connection refused (simulated: `{vm}` is still booting, healthy at +{h:.1}s)"
            ))),
            _ => {
                let (at, vm_group) = self.group_of(vm).unwrap_or((usize::MAX, ""));
                let later = self
                    .plan_groups
                    .iter()
                    .position(|(g, _)| g == &s.group)
                    .is_some_and(|here| at > here);
                if later {
                    let step = s.step.clone();
                    s.early.push(Early {
                        step,
                        vm: vm.to_string(),
                        vm_group: vm_group.to_string(),
                    });
                }
                Err(Error::Other(format!(
                    "cannot connect to {target}: no route to host (simulated: `{vm}` is not running at this point of the run{})",
                    if later {
                        format!("; its group `{vm_group}` boots after group `{}`", s.group)
                    } else {
                        String::new()
                    }
                )))
            }
        }
    }
}

/// The host part of `http://host:port/…`, as an address.
fn url_host(url: &str) -> Option<IpAddr> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    host_ip(authority)
}

/// The IP of `host:port` (or `[v6]:port`).
fn host_ip(address: &str) -> Option<IpAddr> {
    let host = match address.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => address,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

#[async_trait::async_trait]
impl HostServices for SimWorld {
    fn simulated(&self) -> bool {
        true
    }

    async fn group_vms(&self, group: &str) -> Vec<inventory::Vm> {
        let names = self
            .plan_groups
            .iter()
            .find(|(g, _)| g == group)
            .map(|(_, vms)| vms.clone())
            .unwrap_or_default();
        // The real services begin the group's restores here, `RESTORES_AT_ONCE` at a time, so
        // a group's restores overlap; the simulation lays them out the same way.
        if let Ok(mut s) = self.state.lock() {
            let mut lanes = [s.now_ms; crate::services::RESTORES_AT_ONCE];
            for vm in &names {
                if s.begun.contains_key(vm) || matches!(self.points.get(vm), Some(Err(_)) | None) {
                    continue;
                }
                let seconds = self.timing.restore_seconds.get(vm).copied().unwrap_or(0.0);
                if let Some(lane) = lanes.iter_mut().min() {
                    let from = *lane;
                    *lane += (seconds * 1000.0).round() as u64;
                    s.begun.insert(vm.clone(), (from, *lane));
                }
            }
        }
        let mut out = Vec::new();
        for name in names {
            if let Ok(vm) = self.get_vm(&name).await {
                out.push(vm);
            }
        }
        out
    }

    async fn get_vm(&self, name: &str) -> Result<inventory::Vm, Error> {
        let vm = self.known(name)?;
        Ok(crate::services::wit_vm(
            name,
            &self.target_site,
            vm,
            &self.assignments,
        ))
    }

    async fn list_points(&self, vm: &str) -> Result<Vec<recovery::Point>, Error> {
        self.known(vm)?;
        Ok(vec![self.point(vm)?.point.clone()])
    }

    async fn pick_point(&self, vm: &str, _choice: &str) -> Result<recovery::Point, Error> {
        self.known(vm)?;
        Ok(self.point(vm)?.point.clone())
    }

    async fn restore(&self, vm: &str, point: &str, _key: &str) -> Result<Vec<String>, Error> {
        let def = self.known(vm)?;
        let chosen = self.point(vm)?;
        if chosen.point.id != point {
            return Err(Error::NotFound(format!(
                "the simulation knows point {} of `{vm}`, not {point}",
                chosen.point.id
            )));
        }
        let seconds = self.timing.restore_seconds.get(vm).copied().unwrap_or(0.0);
        let mut s = self.state()?;
        // Begun with the group's others, or now.
        let (from, end) = s
            .begun
            .get(vm)
            .copied()
            .unwrap_or((s.now_ms, s.now_ms + (seconds * 1000.0).round() as u64));
        s.now_ms = s.now_ms.max(end);
        let (from, to) = (secs(from), secs(end));
        let line = s.vms.entry(vm.to_string()).or_default();
        line.restored_from = Some(from);
        line.restored_at = Some(to);
        Ok(def
            .disks
            .names()
            .map(|d| format!("(simulated) {vm}/{d}"))
            .collect())
    }

    async fn start(&self, vm: &str, _key: &str) -> Result<(), Error> {
        self.known(vm)?;
        let boot = self.timing.boot_seconds.get(vm).copied().unwrap_or(0.0);
        let mut s = self.state()?;
        let now = secs(s.now_ms);
        let line = s.vms.entry(vm.to_string()).or_default();
        if line.restored_at.is_none() {
            return Err(Error::Invalid(format!(
                "VM `{vm}` has no restored disks in this run (simulated): restore it first"
            )));
        }
        if line.started_at.is_none() {
            line.started_at = Some(now);
            line.healthy_at = Some(now + boot);
        }
        Ok(())
    }

    async fn stop(&self, vm: &str, _key: &str) -> Result<(), Error> {
        self.known(vm)?;
        let mut s = self.state()?;
        if let Some(line) = s.vms.get_mut(vm) {
            line.started_at = None;
            line.healthy_at = None;
        }
        Ok(())
    }

    async fn status(&self, vm: &str) -> Result<VmState, Error> {
        self.known(vm)?;
        let s = self.state()?;
        let now = secs(s.now_ms);
        Ok(match s.vms.get(vm) {
            Some(VmTimeline {
                started_at: Some(_),
                healthy_at: Some(h),
                ..
            }) if *h <= now => VmState::Running,
            Some(VmTimeline {
                started_at: Some(_),
                ..
            }) => VmState::Starting,
            _ => VmState::Absent,
        })
    }

    async fn assignments(&self, vm: &str) -> Result<Vec<network::Assignment>, Error> {
        self.known(vm)?;
        Ok(self
            .assignments
            .iter()
            .filter(|a| a.vm == vm)
            .map(|a| network::Assignment {
                nic: a.nic as u32,
                network: a.network.clone(),
                subnet: a.subnet.clone(),
                ip: a.ip.to_string(),
                kept_source_ip: a.why == crate::network::Why::Kept,
            })
            .collect())
    }

    async fn approve(&self, message: &str) -> Result<String, Error> {
        self.note(format!(
            "approval asked (\"{message}\"): granted by the simulation"
        ));
        Ok("the simulation".into())
    }

    async fn tcp(&self, address: &str, _limit: Duration) -> Result<(), Error> {
        self.answer(address, host_ip(address)).map(|_| ())
    }

    async fn http_get(&self, url: &str, _limit: Duration) -> Result<u16, Error> {
        self.answer(url, url_host(url)).map(|_| 200)
    }

    async fn http_send(
        &self,
        request: &lifeboat_plugin_host::http::Request,
        _limit: Duration,
    ) -> Result<lifeboat_plugin_host::http::Answer, Error> {
        let method = request.method.to_ascii_uppercase();
        if let Some(ip) = url_host(&request.url)
            && self.vm_at(ip).is_some()
        {
            self.answer(&request.url, Some(ip))?;
        } else {
            self.note(format!("{method} {} not sent (dry run)", request.url));
        }
        Ok(lifeboat_plugin_host::http::Answer {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
            truncated: false,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch_ms + self.state.lock().map(|s| s.now_ms).unwrap_or_default()
    }

    async fn sleep(&self, ms: u64) -> Result<(), Error> {
        {
            let mut s = self.state()?;
            s.now_ms = s.now_ms.saturating_add(ms);
            if s.now_ms > s.deadline_ms {
                return Err(Error::Timeout(format!(
                    "the step would pass its timeout at +{:.1}s of the run (simulated)",
                    secs(s.deadline_ms)
                )));
            }
        }
        // Let the runtime breathe: a step that polls in a loop must stay interruptible.
        tokio::task::yield_now().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[test]
    fn addresses_are_read_from_probe_targets() {
        assert_eq!(host_ip("10.0.0.5:5432"), "10.0.0.5".parse().ok());
        assert_eq!(host_ip("[fd00::5]:80"), "fd00::5".parse().ok());
        assert_eq!(
            url_host("http://10.0.0.7:8080/health"),
            "10.0.0.7".parse().ok()
        );
        assert_eq!(url_host("https://hooks.example.com/x"), None);
    }

    /// The example inventory's ERP VMs in two groups (`db` then `app`), each VM at an address
    /// of its own, restores of 10 s and boots of 20 s (app-2: 40 s).
    fn world() -> SimWorld {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let v =
            lifeboat_loader::validate(&root.join("lifeboat.toml"), &[root.join("plans/erp.toml")]);
        let inventory = v.inventory.unwrap();
        let names = ["db-1", "app-1", "app-2"];
        let vms = names
            .iter()
            .map(|n| (n.to_string(), inventory.vms.get(n).unwrap().clone()))
            .collect();
        let assignments = names
            .iter()
            .enumerate()
            .map(|(i, n)| Assignment {
                vm: n.to_string(),
                nic: 0,
                network: "west/drill".into(),
                subnet: "app".into(),
                cidr: "10.9.0.0/24".parse().unwrap(),
                ip: format!("10.9.0.{}", i + 10).parse().unwrap(),
                why: crate::network::Why::NextFree,
            })
            .collect();
        let point = |id: &str| {
            Ok(SimPoint {
                point: recovery::Point {
                    id: id.into(),
                    kind: recovery::PointKind::CrashConsistent,
                    captured_at_ms: 1,
                    committed_at_ms: 2,
                },
                vm_bytes: HashMap::new(),
            })
        };
        let mut timing = Timing::default();
        for n in names {
            timing.restore_seconds.insert(n.into(), 10.0);
            timing
                .boot_seconds
                .insert(n.into(), if n == "app-2" { 40.0 } else { 20.0 });
        }
        SimWorld::new(
            "west".into(),
            vms,
            vec![
                ("db".into(), vec!["db-1".into()]),
                ("app".into(), vec!["app-1".into(), "app-2".into()]),
            ],
            assignments,
            names
                .iter()
                .map(|n| (n.to_string(), point(&format!("erp/{n}"))))
                .collect(),
            timing,
        )
    }

    fn block<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A probe of a VM is answered as that VM would answer at that moment of the run: not
    /// there before its group (an order problem when its group comes later), refused while it
    /// boots, accepted once healthy; the simulated clock moves only by what the steps spend.
    #[test]
    fn probes_answer_as_the_simulated_vms_would() {
        let w = world();
        block(async {
            let limit = Duration::from_secs(1);
            w.begin_step("db/pre/0", "db", Duration::from_secs(300));
            let e = w.tcp("10.9.0.11:8080", limit).await.unwrap_err();
            assert!(format!("{e:?}").contains("boots after group `db`"), "{e:?}");
            assert_eq!(w.early()[0].vm, "app-1");
            w.begin_step("db/boot", "db", Duration::from_secs(300));
            w.group_vms("db").await;
            w.restore("db-1", "erp/db-1", "k").await.unwrap();
            w.start("db-1", "k").await.unwrap();
            assert_eq!(w.now_seconds(), 10.0);
            let e = w.tcp("10.9.0.10:5432", limit).await.unwrap_err();
            assert!(format!("{e:?}").contains("still booting"), "{e:?}");
            assert_eq!(w.status("db-1").await.unwrap(), VmState::Starting);
            w.sleep(20_000).await.unwrap();
            assert_eq!(w.status("db-1").await.unwrap(), VmState::Running);
            w.tcp("10.9.0.10:5432", limit).await.unwrap();
            assert_eq!(w.now_seconds(), 30.0);
            // An address outside the plan: assumed to answer, and said.
            w.tcp("192.0.2.1:443", limit).await.unwrap();
            assert!(
                w.notes()[0].text.contains("192.0.2.1:443"),
                "{:?}",
                w.notes()
            );
        });
    }

    /// A group's restores begin together (as the real run's prefetch does), so two VMs of one
    /// group are restored in the time of one; a sleep past the step's timeout fails the step.
    #[test]
    fn a_groups_restores_overlap_and_a_step_cannot_outwait_its_timeout() {
        let w = world();
        block(async {
            w.begin_step("app/boot", "app", Duration::from_secs(45));
            w.group_vms("app").await;
            w.restore("app-1", "erp/app-1", "k").await.unwrap();
            w.start("app-1", "k").await.unwrap();
            w.restore("app-2", "erp/app-2", "k").await.unwrap();
            w.start("app-2", "k").await.unwrap();
            assert_eq!(w.now_seconds(), 10.0);
            let lines = w.timelines();
            assert_eq!(lines["app-2"].healthy_at, Some(50.0));
            let e = w.sleep(40_000).await.unwrap_err();
            assert!(format!("{e:?}").contains("timeout"), "{e:?}");
            // A point the simulation does not know is refused, as a real restore would be.
            assert!(w.restore("db-1", "erp/9", "k").await.is_err());
        });
    }
}
