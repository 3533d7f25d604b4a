//! Validate 100 plans of 100 VMs each against one inventory of 10 000 VMs, and compare with
//! merely parsing the same files as TOML, in the same run. `cargo bench -p lifeboat-loader`
//! (`LIFEBOAT_BENCH_QUICK=1`: 10 plans, 3 runs).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const VMS_PER_PLAN: usize = 100;
const GROUPS_PER_PLAN: usize = 10;

/// Quick mode (`LIFEBOAT_BENCH_QUICK=1`, what `.ci/run` sets): proves the benchmark runs.
fn quick() -> bool {
    std::env::var_os("LIFEBOAT_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

fn plan_count() -> usize {
    if quick() { 10 } else { 100 }
}

fn runs() -> usize {
    if quick() { 3 } else { 11 }
}

fn write_inventory(dir: &Path) -> PathBuf {
    let mut s = String::from(
        r#"version = 1
[sites.east]
store = "/srv/lifeboat/east"
compute = "process"
replicate_to = "west"
networks.prod.subnets = { app = "10.10.0.0/16" }
[sites.west]
store = "/srv/lifeboat/west"
compute = "process"
networks.prod-dr.subnets = { app = "10.20.0.0/16" }
networks.drill.subnets = { app = "10.90.0.0/16" }
[policies.default]
crash_interval = "30s"
retention = "24h"
rpo_threshold = "2m"
"#,
    );
    for i in 0..plan_count() * VMS_PER_PLAN {
        let ip = format!("10.10.{}.{}", i / 250, i % 250 + 1);
        let _ = write!(
            s,
            r#"
[vms.vm-{i}]
site = "east"
policy = "default"
disks.os = "vms/vm-{i}/os.img"
nics = [{{ network = "prod", subnet = "app", ip = "{ip}" }}]
boot = {{ command = ["demo-vm", "--disk", "{{disk.os}}", "--listen", "{{nic0.ip}}:8080"] }}
health = {{ http = "http://{{nic0.ip}}:8080/health" }}
"#
        );
    }
    let path = dir.join("lifeboat.toml");
    std::fs::write(&path, s).expect("write inventory");
    path
}

fn write_plans(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir.join("plans")).expect("plans dir");
    (0..plan_count())
        .map(|p| {
            let mut s = format!(
                "version = 1\nname = \"plan-{p}\"\nsource = \"east\"\ntarget = \"west\"\n\
                 [network]\nmap = [{{ from = \"east/prod\", to = \"west/prod-dr\" }}]\ntest = \"west/drill\"\n"
            );
            let per_group = VMS_PER_PLAN / GROUPS_PER_PLAN;
            for g in 0..GROUPS_PER_PLAN {
                let vms: Vec<String> = (0..per_group)
                    .map(|v| format!("\"vm-{}\"", p * VMS_PER_PLAN + g * per_group + v))
                    .collect();
                let first = p * VMS_PER_PLAN + g * per_group;
                let _ = write!(
                    s,
                    "\n[[group]]\nname = \"g{g}\"\nvms = [{}]\n\
                     post = [{{ uses = \"builtin:http-check\", with = {{ url = \"http://{{vm.vm-{first}.ip}}:8080/health\" }}, \
                     timeout = \"2m\", allow = {{ http = [\"http://{{vm.vm-{first}.ip}}:8080/\"] }} }}]\n",
                    vms.join(", ")
                );
            }
            let path = dir.join("plans").join(format!("plan-{p}.toml"));
            std::fs::write(&path, s).expect("write plan");
            path
        })
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("lifeboat-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = write_inventory(&dir);
    let plans = write_plans(&dir);

    let check = lifeboat_loader::validate(&config, &plans);
    assert!(
        check.is_valid(),
        "generated files must be valid: {:?}",
        &check.diagnostics[..check.diagnostics.len().min(3)]
    );

    let mut validate = Vec::new();
    let mut parse_only = Vec::new();
    for _ in 0..runs() {
        let start = Instant::now();
        let v = lifeboat_loader::validate(&config, &plans);
        validate.push(start.elapsed());
        assert!(v.is_valid());

        let start = Instant::now();
        for path in std::iter::once(&config).chain(&plans) {
            let text = std::fs::read_to_string(path).expect("read");
            let table: toml::Table = toml::from_str(&text).expect("parse");
            std::hint::black_box(table);
        }
        parse_only.push(start.elapsed());
    }
    let (v, p) = (median(validate), median(parse_only));
    println!(
        "validate {} plans x {VMS_PER_PLAN} VMs (inventory of {} VMs): median {:.1} ms over {} runs",
        plan_count(),
        plan_count() * VMS_PER_PLAN,
        v.as_secs_f64() * 1e3,
        runs()
    );
    println!(
        "baseline, toml::from_str of the same files: median {:.1} ms",
        p.as_secs_f64() * 1e3
    );
    println!(
        "ratio validate / parse-only: {:.2}x (target: validate under 1000 ms)",
        v.as_secs_f64() / p.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
