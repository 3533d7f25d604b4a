//! `lifeboat demo`: a whole drill and failover on one machine, from nothing. It writes an
//! inventory and a plan into a temporary folder (two sites, addresses inside 127.0.0.0/8),
//! starts demo VMs at the source (each writes sequenced, checksummed records to its disk),
//! replicates, then runs the real commands — `failover --test`, `cleanup`, `failover
//! --unplanned` with the source deleted, `commit` — and checks the data at every step. It exits
//! 0 only if every check passed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lifeboat_compute::driver::{Compute, Handle, ProcessDriver};
use lifeboat_orchestrator::health::{Probe, wait_healthy};

use crate::exit_codes;
use lifeboat_api::NoticeKind;

/// The demo's VMs: name, consistency group, subnet, source address, port.
const VMS: &[(&str, &str, &str, &str, u16)] = &[
    ("db-1", "shop", "db", "127.41.2.10", 15432),
    ("app-1", "shop", "app", "127.41.1.11", 18080),
    ("app-2", "app-2", "app", "127.41.1.12", 18080),
];

const DISK_BYTES: u64 = 16 << 20;

/// What the demo's VMs are.
#[derive(Clone, Debug)]
pub enum Workload {
    /// `demo-vm` processes (this program, as `lifeboat demo-vm`).
    Process(PathBuf),
    /// Real VMs at `qemu` sites: the test guest (`contrib/guest/build.sh`) under QEMU with TCG,
    /// running the same workload on its virtio disk.
    Qemu(PathBuf),
}

impl Workload {
    /// How long a VM may take to answer its health probe.
    fn boot_timeout(&self) -> Duration {
        match self {
            Self::Process(_) => Duration::from_secs(30),
            Self::Qemu(_) => Duration::from_secs(120),
        }
    }
}

fn inventory(workload: &Workload) -> String {
    // A process VM's boot command; a QEMU VM's machine settings (at `qemu` sites).
    let boot = |port: u16| match workload {
        Workload::Process(exe) => format!(
            "boot = {{ command = [{:?}, \"demo-vm\", \"--disk\", \"{{disk.data}}\", \"--listen\", \"{{nic0.ip}}:{port}\"] }}",
            exe.display().to_string()
        ),
        Workload::Qemu(guest) => format!(
            "machine = {{ kernel = {:?}, initrd = {:?}, append = \"console=ttyS0 panic=-1 quiet lifeboat.port={port}\", ports = [{port}] }}",
            guest.join("vmlinuz").display().to_string(),
            guest.join("initrd.gz").display().to_string()
        ),
    };
    let compute = match workload {
        Workload::Process(_) => "process",
        Workload::Qemu(_) => "qemu",
    };
    let mut out = String::from(
        r#"# Written by `lifeboat demo`.
version = 1

[sites.east]
store = "sites/east"
compute = "COMPUTE"
replicate_to = "west"
networks.prod.subnets = { app = "127.41.1.0/24", db = "127.41.2.0/24" }

[sites.west]
store = "sites/west"
compute = "COMPUTE"
networks.prod-dr.subnets = { app = "127.42.1.0/24", db = "127.41.2.0/24" }
networks.drill.subnets = { app = "127.49.1.0/24", db = "127.49.2.0/24" }

[policies.default]
crash_interval = "2s"
retention = "1h"
rpo_threshold = "1m"

[consistency_groups.shop]
vms = ["db-1", "app-1"]
"#,
    )
    .replace("COMPUTE", compute);
    for (name, _, subnet, ip, port) in VMS {
        out.push_str(&format!(
            r#"
[vms.{name}]
site = "east"
policy = "default"
disks.data = "vms/{name}/data.img"
nics = [{{ network = "prod", subnet = "{subnet}", ip = "{ip}" }}]
{}
health = {{ http = "http://{{nic0.ip}}:{port}/health", timeout = "1m" }}
"#,
            boot(*port)
        ));
    }
    out
}

const PLAN: &str = r#"# Written by `lifeboat demo`: the database first, then the application tier.
version = 1
name = "shop"
source = "east"
target = "west"
recovery_point = "latest"

[network]
map = [{ from = "east/prod", to = "west/prod-dr" }]
test = "west/drill"

[[group]]
name = "database"
vms = ["db-1"]
post = [
  { name = "db-port", uses = "builtin:tcp-check", with = { address = "{vm.db-1.ip}:15432" }, retries = 2, allow = { tcp = ["{vm.db-1.ip}:15432"] } },
]

[[group]]
name = "app"
vms = ["app-1", "app-2"]
pre = [
  { uses = "builtin:approval", with = { message = "Fail the shop over to west?" }, on = ["unplanned", "planned"] },
]
post = [
  { uses = "builtin:http-check", with = { url = "http://{vm.app-1.ip}:18080/health" }, allow = { http = ["http://{vm.app-1.ip}:18080/"] } },
]
"#;

/// The demo's running state and its tally of checks.
struct Demo<'a, 'io> {
    dir: PathBuf,
    config: PathBuf,
    io: &'a mut crate::Io<'io>,
    passed: usize,
    failed: Vec<String>,
}

impl Demo<'_, '_> {
    fn say(&mut self, text: &str) {
        let _ = writeln!(self.io.stdout, "{text}");
        let _ = self.io.stdout.flush();
    }

    fn check(&mut self, ok: bool, what: &str) -> bool {
        if ok {
            self.passed += 1;
            self.say(&format!("  ✓ {what}"));
        } else {
            self.failed.push(what.to_string());
            self.say(&format!("  ✗ {what}"));
        }
        ok
    }

    /// Runs a `lifeboat` command against the demo's inventory, as a user would type it.
    fn lifeboat(&mut self, args: &[&str]) -> u8 {
        self.say(&format!("\n$ lifeboat {}", args.join(" ")));
        let config = self.config.display().to_string();
        let mut full = vec!["lifeboat", "--config", config.as_str()];
        full.extend_from_slice(args);
        let code = crate::run(full, self.io);
        let _ = self.io.stdout.flush();
        code
    }

    /// The same, with the output captured (for `--output json`).
    fn lifeboat_json(&mut self, args: &[&str]) -> (u8, serde_json::Value) {
        let config = self.config.display().to_string();
        let mut full = vec!["lifeboat", "--config", config.as_str(), "--output", "json"];
        full.extend_from_slice(args);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = {
            let mut io = crate::Io {
                stdout: &mut out,
                stderr: &mut err,
                stderr_is_terminal: false,
                stdout_is_color_terminal: false,
                server: self.io.server,
                program: self.io.program.clone(),
            };
            crate::run(full, &mut io)
        };
        let _ = self.io.stderr.write_all(&err);
        (code, serde_json::from_slice(&out).unwrap_or_default())
    }
}

/// `GET path` from `addr`, body as JSON (no answer within 2 s is none).
fn get_json(rt: &tokio::runtime::Runtime, addr: &str, path: &str) -> Option<serde_json::Value> {
    let url = format!("http://{addr}{path}");
    rt.block_on(lifeboat_plugin_host::http::get_within(
        &url,
        Duration::from_secs(2),
    ))
    .ok()?
    .json()
}

/// `GET path` from `addr` inside network namespace `netns` (a drill's), or from the host.
fn get_json_in(
    rt: &tokio::runtime::Runtime,
    netns: Option<&str>,
    addr: &str,
    path: &str,
) -> Option<serde_json::Value> {
    let Some(ns) = netns else {
        return get_json(rt, addr, path);
    };
    let url = format!("http://{addr}{path}");
    rt.block_on(
        lifeboat_compute::netns::Netns::named(ns).within(move || async move {
            lifeboat_plugin_host::http::get_within(&url, Duration::from_secs(2)).await
        }),
    )
    .ok()?
    .ok()?
    .json()
}

/// The network namespace run `run` made for its copies, from its timeline.
fn netns_of(demo: &mut Demo<'_, '_>, run: &str) -> Option<String> {
    let (_, rec) = demo.lifeboat_json(&["runs", "show", run]);
    rec["timeline"].as_array()?.iter().find_map(|pair| {
        let e = pair.get(1)?;
        (e["kind"] == "isolated").then(|| e["netns"].as_str().map(str::to_string))?
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The record a booted VM recovered from its disk: (seq, unix ms).
fn recovered(state: &serde_json::Value) -> Option<(u64, u64)> {
    let last = &state["recovered"]["last"];
    Some((last["seq"].as_u64()?, last["unix_ms"].as_u64()?))
}

pub fn run(keep: bool, qemu: Option<PathBuf>, io: &mut crate::Io<'_>) -> u8 {
    let workload = match qemu {
        Some(guest) => {
            if !guest.join("vmlinuz").is_file() || !guest.join("initrd.gz").is_file() {
                let _ = writeln!(
                    io.stderr,
                    "error: no guest in {}: `contrib/guest/build.sh {}` builds one",
                    guest.display(),
                    guest.display()
                );
                return exit_codes::USAGE;
            }
            Workload::Qemu(std::path::absolute(&guest).unwrap_or(guest))
        }
        None => match std::env::current_exe() {
            Ok(exe) => Workload::Process(exe),
            Err(e) => {
                let _ = writeln!(io.stderr, "error: cannot find this program: {e}");
                return exit_codes::INTERNAL;
            }
        },
    };
    let dir = match tempfile::Builder::new().prefix("lifeboat-demo-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: cannot create a temporary folder: {e}");
            return exit_codes::FAILED;
        }
    };
    let path = dir.path().to_path_buf();
    let mut demo = Demo {
        config: path.join("lifeboat.toml"),
        dir: path.clone(),
        io,
        passed: 0,
        failed: Vec::new(),
    };
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(demo.io.stderr, "error: {e}");
            return exit_codes::INTERNAL;
        }
    };
    let driver = ProcessDriver::new();
    let mut source: Vec<Handle> = Vec::new();
    let result = scenario(&mut demo, &workload, &rt, &driver, &mut source);
    // Whatever happened, leave no VM behind.
    for h in &source {
        let _ = rt.block_on(driver.stop(h, Duration::from_secs(2)));
    }
    stop_target_vms(&demo, &rt, &driver);
    if let Err(e) = result {
        demo.failed.push(e.clone());
        let _ = writeln!(demo.io.stderr, "error: {e}");
    }
    let ok = demo.failed.is_empty();
    demo.say(&format!(
        "\ndemo: {} checks passed, {} failed{}",
        demo.passed,
        demo.failed.len(),
        if ok { "" } else { " — see ✗ above" }
    ));
    if keep {
        let kept = dir.keep();
        demo.say(&format!("demo folder kept: {}", kept.display()));
    }
    if ok {
        exit_codes::OK
    } else {
        exit_codes::FAILED
    }
}

/// Stops every VM the demo's runs started and did not stop.
fn stop_target_vms(demo: &Demo<'_, '_>, rt: &tokio::runtime::Runtime, driver: &Arc<ProcessDriver>) {
    let journal = demo.dir.join(".lifeboat/state/runs.db");
    if !journal.exists() {
        return;
    }
    let running = lifeboat_orchestrator::journal::Journal::open(&journal)
        .and_then(|j| lifeboat_orchestrator::runs::running_vms(&j))
        .unwrap_or_default();
    for h in running {
        let _ = rt.block_on(driver.stop(&h, Duration::from_secs(2)));
    }
}

/// `lifeboat replicate`: one cycle of every group. It finds the source VMs by their boot
/// command and pauses them for the cut, so each point is crash-consistent; the demo checks it
/// said so.
fn replicate(demo: &mut Demo<'_, '_>) -> Result<Vec<(String, u64)>, String> {
    demo.say("\n$ lifeboat replicate");
    let (code, reports) = demo.lifeboat_json(&["replicate"]);
    if code != 0 {
        return Err(format!("lifeboat replicate exited with {code}"));
    }
    let mut out = Vec::new();
    let mut held = true;
    for r in reports.as_array().into_iter().flatten() {
        let group = r["group"].as_str().unwrap_or_default().to_string();
        let seq = r["seq"].as_u64().unwrap_or_default();
        let notes: Vec<&str> = r["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .collect();
        held &= notes
            .iter()
            .any(|n| n.starts_with("held ") || n.starts_with("cut "));
        demo.say(&format!(
            "{group}: point {seq} captured {} — {:.1} KiB shipped in {:.2}s; {}",
            r["captured_at"].as_str().unwrap_or_default(),
            r["shipped_bytes"].as_f64().unwrap_or_default() / 1024.0,
            r["seconds"].as_f64().unwrap_or_default(),
            notes.join("; ")
        ));
        out.push((group, seq));
    }
    demo.check(
        held && out.len() == 2,
        "every group's source VMs were held still (or cut by QEMU) for the cut",
    );
    Ok(out)
}

/// Where run `run` put each VM: `ip:port`, from the run's record (`runs show --output json`).
fn addresses(demo: &mut Demo<'_, '_>, run: &str) -> std::collections::HashMap<String, String> {
    let (_, rec) = demo.lifeboat_json(&["runs", "show", run]);
    let mut out = std::collections::HashMap::new();
    for v in rec["vms"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default();
        let port = VMS.iter().find(|x| x.0 == name).map_or(0, |x| x.4);
        if let Some(ip) = v["addresses"][0]["ip"].as_str() {
            out.insert(name.to_string(), format!("{ip}:{port}"));
        }
    }
    out
}

fn scenario(
    demo: &mut Demo<'_, '_>,
    workload: &Workload,
    rt: &tokio::runtime::Runtime,
    driver: &Arc<ProcessDriver>,
    source: &mut Vec<Handle>,
) -> Result<(), String> {
    let write = |p: &Path, text: &str| -> Result<(), String> {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    write(&demo.config, &inventory(workload))?;
    // Drills run in a network namespace of their own, which takes root; elsewhere the demo's
    // drill shares the host's network, and says so.
    let isolated = rustix::process::geteuid().is_root();
    let plan = if isolated {
        PLAN.to_string()
    } else {
        demo.say("not root: the drill runs in the host's network (`network.test_isolation = \"none\"`); as root it runs in a network namespace of its own");
        PLAN.replace(
            "test = \"west/drill\"",
            "test = \"west/drill\"\ntest_isolation = \"none\"",
        )
    };
    write(&demo.dir.join("plans/shop.toml"), &plan)?;
    demo.say(&format!(
        "Lifeboat demo in {}: sites east (source) and west (target), VMs db-1, app-1, app-2;\nconsistency group shop = db-1 + app-1; plan shop boots group database, then app.",
        demo.dir.display()
    ));
    let code = demo.lifeboat(&["plan", "validate"]);
    demo.check(code == 0, "the demo's inventory and plan are valid");
    if code != 0 {
        return Err("the demo's own files do not validate".into());
    }

    // The demo's addresses are fixed: something already answering there (a demo that was
    // killed and left its VMs running) would be taken for the demo's own VMs.
    for (name, _, _, ip, port) in VMS {
        let addr = format!("{ip}:{port}");
        if let Ok(a) = addr.parse::<std::net::SocketAddr>()
            && std::net::TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok()
        {
            return Err(format!(
                "{addr}, the address of the demo's {name}, is already in use: is an earlier demo still running? (`pkill -f 'lifeboat demo-vm'` stops its VMs)"
            ));
        }
    }

    // The source site: each VM a demo-vm (a process, or a QEMU guest running it) writing 50
    // records a second to its disk, started as the inventory says: that is how `lifeboat
    // replicate` and a planned failover recognise the source VMs.
    demo.say("\nstarting the source VMs at site east");
    let inventory = lifeboat_loader::validate(&demo.config, &[])
        .inventory
        .ok_or("the demo's inventory does not load")?;
    for (name, ..) in VMS {
        let disk = demo.dir.join(format!("vms/{name}/data.img"));
        std::fs::create_dir_all(disk.parent().unwrap_or(&demo.dir)).map_err(|e| e.to_string())?;
        let f = std::fs::File::create(&disk).map_err(|e| e.to_string())?;
        f.set_len(DISK_BYTES).map_err(|e| e.to_string())?;
        let mut launch = lifeboat_compute::site::source_launch(&inventory, &demo.dir, name)
            .ok_or_else(|| format!("VM {name} has no way to start"))?;
        launch.log = demo.dir.join(format!("source-logs/{name}.log"));
        let h = rt
            .block_on(driver.start(&launch))
            .map_err(|e| e.to_string())?;
        source.push(h);
    }
    for (name, _, _, ip, port) in VMS {
        let probe = Probe::Http(format!("http://{ip}:{port}/health"));
        let healthy = rt.block_on(wait_healthy(&probe, workload.boot_timeout(), &demo.dir));
        demo.check(
            healthy.is_ok(),
            &format!("source VM {name} is healthy at {ip}:{port}"),
        );
    }
    std::thread::sleep(Duration::from_millis(800));
    replicate(demo)?;
    std::thread::sleep(Duration::from_millis(500));
    let points = replicate(demo)?;
    demo.lifeboat(&["points", "list", "db-1"]);

    // From here the daemon protects the site (in the background, in this process).
    demo.say("\n$ lifeboat daemon &");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = rt.spawn(demo.io.server.serve(
        lifeboat_api::server::DaemonOptions {
            config: demo.config.clone(),
            state: demo.dir.join(".lifeboat/state"),
            max_cycles: 2,
            grace: Duration::from_secs(10),
            lease_ttl: lifeboat_replication::lease::DEFAULT_TTL,
            listen: None,
            gc_every: Duration::from_secs(3600),
            verify_every: Duration::from_secs(6 * 3600),
            token: None,
            lifeboat: demo.io.program.clone(),
        },
        Some(Box::pin(async move {
            let _ = stopped.await;
            "the demo"
        })),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answering = false;
    while !answering && Instant::now() < deadline {
        answering = demo.lifeboat_json(&["status"]).1["source"] == "daemon";
        std::thread::sleep(Duration::from_millis(100));
    }
    demo.check(
        answering,
        "the daemon is protecting the site (status answers from it)",
    );

    // The daemon's event stream, as `lifeboat events` follows it.
    demo.say("\n$ lifeboat events &");
    let socket = lifeboat_api::client::socket_path(&demo.dir.join(".lifeboat/state"));
    let mut feed = rt
        .block_on(lifeboat_api::client::follow(&socket, "/v1/events"))
        .and_then(Result::ok);

    // 1. A drill: clones of the latest point in the drill network, the source untouched. With
    // the daemon running, the CLI asks it to run the drill.
    // First, the drill before it runs: its steps in the sandbox against a simulated site.
    demo.lifeboat(&["plan", "simulate", "shop"]);
    let (code, sim) = demo.lifeboat_json(&["plan", "simulate", "shop"]);
    demo.check(
        code == 0 && sim["recovers"] == true,
        &format!(
            "plan simulate: every step passes against a simulated site, nothing started (predicted RTO {:.1}s)",
            sim["rto_seconds"].as_f64().unwrap_or_default()
        ),
    );
    let code = demo.lifeboat(&["failover", "shop", "--test"]);
    demo.check(code == 0, "test failover succeeded");
    let (_, rec) = demo.lifeboat_json(&["runs", "show", "shop-1"]);
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["id"].as_str().map(String::from))
            .collect()
    };
    let simulated_at = |vm: &serde_json::Value| {
        sim["vms"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["vm"] == vm["name"] && s["addresses"] == vm["addresses"])
    };
    demo.check(
        !ids(&rec).is_empty()
            && ids(&sim) == ids(&rec)
            && rec["vms"]
                .as_array()
                .into_iter()
                .flatten()
                .all(simulated_at),
        "the drill ran the steps plan simulate showed, in its order, at its addresses",
    );
    let seen = rt.block_on(async {
        let mut seen = Vec::new();
        let Some(feed) = feed.as_mut() else {
            return seen;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(n) = feed.recv().await {
                let end = n.kind == NoticeKind::RunFinished && n.run.as_deref() == Some("shop-1");
                seen.push(n);
                if end {
                    break;
                }
            }
        })
        .await;
        seen
    });
    let steps = seen
        .iter()
        .filter(|n| n.kind == NoticeKind::StepFinished && n.run.as_deref() == Some("shop-1"))
        .count();
    let ended = seen.iter().any(|n| {
        n.kind == NoticeKind::RunFinished
            && n.run.as_deref() == Some("shop-1")
            && n.data["status"] == "succeeded"
    });
    demo.check(
        ended && steps > 0,
        &format!(
            "the daemon ran the drill: its {steps} step(s) and its end are on the event stream"
        ),
    );
    let drill_at = addresses(demo, "shop-1");
    demo.check(
        drill_at.values().all(|a| a.starts_with("127.49.")),
        "every drill VM got an address in the drill network (west/drill)",
    );
    // The drill's copies run in a network namespace of the run's (as root): they answer there,
    // and only there.
    let netns = netns_of(demo, "shop-1");
    if isolated {
        demo.check(
            netns.is_some(),
            &format!(
                "the drill runs in a network namespace of its own ({})",
                netns.as_deref().unwrap_or("none")
            ),
        );
        let from_host = drill_at
            .values()
            .any(|at| get_json(rt, at, "/health").is_some());
        demo.check(
            !from_host,
            "the drill's copies cannot be reached from the host's network (nor reach production)",
        );
    }
    for (name, _, _, ip, port) in VMS {
        let at = drill_at.get(*name).cloned().unwrap_or_default();
        let drill = get_json_in(rt, netns.as_deref(), &at, "/state");
        let rec = drill.as_ref().and_then(recovered);
        demo.check(
            rec.is_some_and(|(seq, _)| seq > 0),
            &format!(
                "drill {name} booted at {at} from a consistent disk (recovered record {})",
                rec.map_or(0, |r| r.0)
            ),
        );
        let src = get_json(rt, &format!("{ip}:{port}"), "/state");
        let src_last = src.as_ref().and_then(|s| s["last_record"].as_u64());
        demo.check(
            matches!((rec, src_last), (Some((r, _)), Some(s)) if r < s),
            &format!("source {name} still running and ahead of its drill copy ({src_last:?})"),
        );
    }
    // The daemon keeps every group's points fresh while the drill runs.
    let mut fresh = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fresh && Instant::now() < deadline {
        let (_, st) = demo.lifeboat_json(&["status"]);
        fresh = points.iter().all(|(g, seq)| {
            st["groups"].as_array().into_iter().flatten().any(|x| {
                x["name"] == g.as_str() && x["last_point"]["id"].as_u64().is_some_and(|n| n > *seq)
            })
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    demo.check(
        fresh,
        "the daemon committed a new point of every group while the drill ran",
    );
    let code = demo.lifeboat(&["status"]);
    demo.check(
        code == 0,
        "status, from the daemon: every RPO within its threshold",
    );
    let code = demo.lifeboat(&["replicate"]);
    demo.check(
        code == exit_codes::OK,
        "`lifeboat replicate` asks the daemon, which holds the groups' writer leases: a point of every group now",
    );
    let (_, list) = demo.lifeboat_json(&["points", "list", "db-1"]);
    let pinned = list["points"].as_array().is_some_and(|ps| {
        ps.iter()
            .any(|p| p["pinned"].as_array().is_some_and(|a| !a.is_empty()))
    });
    demo.check(pinned, "the drill's point is pinned");

    // 2. Cleanup: undo every step, stop the drill VMs, delete their disks, unpin.
    let code = demo.lifeboat(&["cleanup", "shop"]);
    demo.check(code == 0, "cleanup succeeded");
    let gone = match &netns {
        Some(ns) => !lifeboat_compute::netns::Netns::named(ns).exists(),
        None => drill_at
            .values()
            .all(|at| get_json(rt, at, "/state").is_none()),
    };
    demo.check(
        gone,
        if netns.is_some() {
            "the drill VMs are stopped and their network namespace is removed"
        } else {
            "the drill VMs are stopped"
        },
    );
    let runs = demo.dir.join(".lifeboat/state/runs/shop-1/disks");
    demo.check(!runs.exists(), "the drill's disks are deleted");
    let (_, list) = demo.lifeboat_json(&["points", "list", "db-1"]);
    let unpinned = list["points"].as_array().is_some_and(|ps| {
        ps.iter()
            .all(|p| p["pinned"].as_array().is_none_or(|a| a.is_empty()))
    });
    demo.check(unpinned, "no point is pinned any more");

    // The daemon stops as on SIGTERM: cycles in flight finish, leases released, no VM paused.
    demo.say("\n$ kill -TERM <daemon>");
    let _ = stop.send(());
    let drained = rt.block_on(daemon);
    let running = source
        .iter()
        .all(|h| !lifeboat_compute::driver::process_paused(h.pid));
    demo.check(
        matches!(drained, Ok(Ok(()))) && running,
        "the daemon stopped cleanly, no VM left paused",
    );

    // 3. Disaster: the source dies mid-write; its site is gone.
    std::thread::sleep(Duration::from_millis(700));
    replicate(demo)?;
    std::thread::sleep(Duration::from_millis(1500));
    demo.say("\ndisaster: the source VMs are killed (kill -9) and site east is deleted");
    let disaster_at = now_ms();
    let mut source_last = std::collections::HashMap::new();
    for h in source.drain(..) {
        let _ = rustix_kill(h.pid);
        let _ = rt.block_on(driver.stop(&h, Duration::ZERO));
        let disk = demo.dir.join(format!("vms/{}/data.img", h.vm));
        let check = std::fs::File::open(&disk)
            .map_err(|e| e.to_string())
            .and_then(|f| lifeboat_demo_vm::disk::check(&f).map_err(|e| e.to_string()))?;
        if let Some(last) = check.last {
            source_last.insert(h.vm.clone(), (last.seq, last.unix_ms));
        }
    }
    for gone in ["sites/east", "vms"] {
        std::fs::remove_dir_all(demo.dir.join(gone)).map_err(|e| e.to_string())?;
    }
    demo.check(
        !demo.dir.join("sites/east").exists(),
        "site east (its cache and disks) is deleted",
    );

    // 4. Unplanned failover to the latest point; an operator approves the app tier.
    let config = demo.config.clone();
    let server = demo.io.server;
    let approver = {
        let program = demo.io.program.clone();
        std::thread::spawn(move || approve_when_asked(&config, "shop-2", server, &program))
    };
    let code = demo.lifeboat(&["failover", "shop", "--unplanned", "--point", "latest"]);
    let approved = approver.join().unwrap_or(false);
    demo.check(
        code == 0,
        "unplanned failover succeeded with the source site gone",
    );
    demo.check(
        approved,
        "the approval step waited for the operator's `lifeboat approve`",
    );
    let target_at = addresses(demo, "shop-2");
    demo.check(
        target_at.get("db-1").map(String::as_str) == Some("127.41.2.10:15432"),
        "db-1 kept its address (west's db subnet holds it)",
    );
    demo.check(
        ["app-1", "app-2"].iter().all(|v| {
            target_at
                .get(*v)
                .is_some_and(|a| a.starts_with("127.42.1."))
        }),
        "app-1 and app-2 got addresses in west's app subnet",
    );
    let mut rpos = Vec::new();
    for (name, ..) in VMS {
        let at = target_at.get(*name).cloned().unwrap_or_default();
        let rec = get_json(rt, &at, "/state").as_ref().and_then(recovered);
        let src = source_last.get(*name).copied();
        let ok = matches!((rec, src), (Some((r, _)), Some((s, _))) if r > 0 && r <= s);
        let (lost, rpo_ms) = match (rec, src) {
            (Some((r, rt_ms)), Some((s, st_ms))) => {
                (s.saturating_sub(r), st_ms.saturating_sub(rt_ms))
            }
            _ => (0, 0),
        };
        demo.check(
            ok,
            &format!(
                "{name} runs at {at}: recovered record {} of the source's last {}: {lost} records lost, achieved RPO {:.2}s",
                rec.map_or(0, |r| r.0),
                src.map_or(0, |s| s.0),
                rpo_ms as f64 / 1000.0
            ),
        );
        rpos.push((name.to_string(), rpo_ms));
    }
    let _ = disaster_at;

    // 5. Commit: the target takes the groups over; the old source would be fenced.
    let code = demo.lifeboat(&["commit", "shop"]);
    demo.check(code == 0, "commit succeeded");
    let (_, list) = demo.lifeboat_json(&["points", "list", "db-1"]);
    let epochs: Vec<u64> = list["points"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["epoch"].as_u64()).collect())
        .unwrap_or_default();
    demo.check(
        epochs.len() >= 2 && epochs[0] > epochs[1],
        "the newest point carries a higher writer epoch (the old source is fenced)",
    );
    demo.lifeboat(&["runs", "list"]);
    let (_, run) = demo.lifeboat_json(&["runs", "show", "shop-2"]);
    let rto = run["rto_seconds"].as_f64();
    demo.check(rto.is_some(), "the run records its RTO");
    demo.say(&format!(
        "\nachieved RPO: {}; RTO (failover start to the last group healthy): {}",
        rpos.iter()
            .map(|(n, ms)| format!("{n} {:.2}s", *ms as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(", "),
        rto.map_or_else(|| "-".into(), |s| format!("{s:.2}s"))
    ));
    round_trip(demo, rt, "shop-2")
}

/// Step 6, there and back: reprotect (east lost its disks, so a full seed), failback with
/// zero loss, commit, and reprotect in the original direction again (differential: west hashes
/// the copies it stopped, only what diverged crosses).
fn round_trip(
    demo: &mut Demo<'_, '_>,
    rt: &tokio::runtime::Runtime,
    failover: &str,
) -> Result<(), String> {
    demo.say("\nthe copies at west run on, unprotected; east is rebuilt empty");
    std::thread::sleep(Duration::from_millis(1500));
    let (code, groups, shipped, disks) = reprotect(demo);
    demo.check(
        code == 0 && groups.len() == 2 && groups.iter().all(|g| g["full_seed"] == true),
        &format!(
            "reprotect: both groups protected at west, replicating to east — a full seed, east held none of their disks ({} shipped of {})",
            crate::replication::mib(shipped),
            crate::replication::mib(disks)
        ),
    );
    let code = demo.lifeboat(&["replicate"]);
    demo.check(code == 0, "points flow west → east");
    // What the copies at west wrote last, once failback has stopped them.
    let west: Vec<(String, PathBuf)> = restored_disks(demo, failover);
    let (code, run) = demo.lifeboat_json(&["failback", "shop"]);
    let id = run["id"].as_str().unwrap_or_default().to_string();
    demo.check(
        code == 0 && run["operation"] == "failback",
        &format!("failback {id} succeeded: the copies at west stopped, one last reverse cycle, booted at east"),
    );
    for (vm, disk) in &west {
        let written = std::fs::File::open(disk)
            .ok()
            .and_then(|f| lifeboat_demo_vm::disk::check(&f).ok())
            .and_then(|c| c.last.map(|l| l.seq));
        let home = VMS
            .iter()
            .find(|v| v.0 == vm)
            .map(|v| format!("{}:{}", v.3, v.4))
            .unwrap_or_default();
        let at_home = get_json(rt, &home, "/state").as_ref().and_then(recovered);
        demo.check(
            written.is_some() && at_home.map(|r| r.0) == written,
            &format!(
                "{vm} is home at {home} with the last record its copy at west wrote ({}): nothing lost",
                written.unwrap_or(0)
            ),
        );
    }
    let code = demo.lifeboat(&["commit", "shop"]);
    demo.check(
        code == 0,
        "failback committed: east takes the groups back, west is fenced",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (code, groups, shipped, disks) = reprotect(demo);
    demo.check(
        code == 0
            && groups.len() == 2
            && groups.iter().all(|g| g["full_seed"] == false)
            && shipped * 10 < disks,
        &format!(
            "reprotect again, east → west: west hashed the copies it had stopped; only what diverged crossed ({} of {})",
            crate::replication::mib(shipped),
            crate::replication::mib(disks)
        ),
    );
    let (code, list) = demo.lifeboat_json(&["points", "list", "db-1"]);
    demo.check(
        code == 0
            && list["placement"]["site"] == "east"
            && list["placement"]["replicate_to"] == "west",
        "db-1 runs at east again, protected to west: the original direction",
    );
    Ok(())
}

/// `lifeboat reprotect shop`: its exit code, its groups, and the bytes shipped of the disks'.
fn reprotect(demo: &mut Demo<'_, '_>) -> (u8, Vec<serde_json::Value>, u64, u64) {
    demo.say("\n$ lifeboat reprotect shop");
    let (code, rep) = demo.lifeboat_json(&["reprotect", "shop"]);
    let groups = rep["groups"].as_array().cloned().unwrap_or_default();
    let sum = |key: &str| -> u64 { groups.iter().filter_map(|g| g[key].as_u64()).sum() };
    let (shipped, disks) = (sum("shipped_bytes"), sum("disk_bytes"));
    (code, groups, shipped, disks)
}

/// Each VM's disk as run `run` restored it, from the journal.
fn restored_disks(demo: &Demo<'_, '_>, run: &str) -> Vec<(String, PathBuf)> {
    let journal = demo.dir.join(".lifeboat/state/runs.db");
    lifeboat_orchestrator::journal::Journal::open(&journal)
        .and_then(|j| j.events(run))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, _, e)| match e {
            lifeboat_orchestrator::journal::Event::Restored { vm, disks, .. } => {
                Some((vm, PathBuf::from(disks.first()?)))
            }
            _ => None,
        })
        .collect()
}

/// Kills a process at once (SIGKILL), as a power cut would.
fn rustix_kill(pid: u32) -> Result<(), String> {
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or("no such pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).map_err(|e| e.to_string())
}

/// The operator: runs `lifeboat approve RUN` until the run waits for an approval and takes it.
fn approve_when_asked(
    config: &Path,
    run: &str,
    server: &'static dyn lifeboat_api::server::Server,
    program: &[std::ffi::OsString],
) -> bool {
    let config = config.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut io = crate::Io {
            stdout: &mut out,
            stderr: &mut err,
            stderr_is_terminal: false,
            stdout_is_color_terminal: false,
            server,
            program: program.to_vec(),
        };
        let args = [
            "lifeboat",
            "--config",
            &config,
            "approve",
            run,
            "--by",
            "demo operator",
        ];
        if crate::run(args, &mut io) == exit_codes::OK {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
