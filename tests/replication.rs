//! The replication engine's properties, end to end: real disk images, real stores on disk, the
//! real `lifeboat` command (in-process, or as a process we kill -9).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lifeboat_replication::{Cut, CycleOptions, ErrorKind, GroupSpec, Store};

use crate::support::{Outcome, lifeboat};

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n.div_ceil(8))
            .flat_map(|_| self.next().to_le_bytes())
            .take(n)
            .collect()
    }
}

/// Where the two sites keep their stores: folders beside the inventory, or servers.
#[derive(Clone, Debug)]
struct Stores {
    /// `east`'s store: its cache.
    east: String,
    /// `west`'s store: the repository.
    west: String,
}

impl Stores {
    fn folders() -> Self {
        Self {
            east: "east".into(),
            west: "west".into(),
        }
    }
}

/// Two sites in a temporary folder: `east` (VMs, cache) replicating to `west` (repository).
struct Lab {
    dir: tempfile::TempDir,
    stores: Stores,
}

impl Lab {
    /// `vms`: (name, [(disk, size)]); `groups`: consistency groups.
    fn new(vms: &[(&str, &[(&str, u64)])], groups: &[(&str, &[&str])]) -> Self {
        Self::on(Stores::folders(), vms, groups)
    }

    /// The same, with the sites' stores where `stores` says.
    fn on(stores: Stores, vms: &[(&str, &[(&str, u64)])], groups: &[(&str, &[&str])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = format!(
            "version = 1\n\n[sites.east]\nstore = \"{}\"\ncompute = \"process\"\nreplicate_to = \"west\"\n\n\
             [sites.west]\nstore = \"{}\"\ncompute = \"process\"\n\n\
             [policies.p]\ncrash_interval = \"10s\"\nretention = \"1h\"\nrpo_threshold = \"1m\"\n",
            stores.east, stores.west
        );
        for (vm, disks) in vms {
            toml.push_str(&format!("\n[vms.{vm}]\nsite = \"east\"\npolicy = \"p\"\n"));
            for (disk, size) in *disks {
                let rel = format!("vms/{vm}/{disk}.img");
                toml.push_str(&format!("disks.{disk} = \"{rel}\"\n"));
                let path = dir.path().join(&rel);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::File::create(&path)
                    .unwrap()
                    .set_len(*size)
                    .unwrap();
            }
        }
        for (group, members) in groups {
            let list: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
            toml.push_str(&format!(
                "\n[consistency_groups.{group}]\nvms = [{}]\n",
                list.join(", ")
            ));
        }
        std::fs::write(dir.path().join("lifeboat.toml"), toml).unwrap();
        std::fs::write(dir.path().join("test.key"), "c4".repeat(32)).unwrap();
        Self { dir, stores }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn disk(&self, vm: &str, disk: &str) -> PathBuf {
        self.path(&format!("vms/{vm}/{disk}.img"))
    }

    fn config(&self) -> String {
        self.path("lifeboat.toml").display().to_string()
    }

    fn run(&self, args: &[&str]) -> Outcome {
        let config = self.config();
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        lifeboat(&all)
    }

    fn replicate(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json", "replicate"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert_eq!(out.code, 0, "replicate failed: {}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// Point ids of a VM, newest first.
    fn points(&self, vm: &str) -> Vec<u64> {
        let out = self.run(&["--output", "json", "points", "list", vm]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        doc["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_u64().unwrap())
            .collect()
    }

    fn points_json(&self, vm: &str) -> serde_json::Value {
        let out = self.run(&["--output", "json", "points", "list", vm]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// Restores `vm` at `point` into a fresh folder; returns it (or the failed outcome).
    fn restore(&self, vm: &str, point: &str) -> Result<PathBuf, Outcome> {
        let out_dir = self.path(&format!("restored/{vm}-{point}-{}", unique()));
        let out = self.run(&[
            "restore",
            vm,
            "--point",
            point,
            "--out",
            &out_dir.display().to_string(),
        ]);
        if out.code == 0 { Ok(out_dir) } else { Err(out) }
    }

    fn inventory_groups(&self) -> Vec<GroupSpec> {
        let v = lifeboat_loader::validate(&self.path("lifeboat.toml"), &[]);
        assert!(v.is_valid(), "{:?}", v.diagnostics);
        lifeboat_replication::groups(v.inventory.as_ref().unwrap(), self.dir.path()).unwrap()
    }
}

fn unique() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Random writes: `n` blocks of 4 KiB at 4 KiB-aligned offsets; sometimes zeroes a whole chunk.
fn scribble(path: &Path, rng: &mut Rng, n: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let size = f.metadata().unwrap().len();
    for _ in 0..n {
        if rng.below(10) == 0 {
            let chunk = rng.below(size / 65536);
            f.write_all_at(&vec![0; 65536], chunk * 65536).unwrap();
        } else {
            let at = rng.below(size / 4096) * 4096;
            let len = 4096.min(size - at) as usize;
            f.write_all_at(&rng.bytes(len), at).unwrap();
        }
    }
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn every_point_restores_to_the_image_at_its_capture() {
    every_point_restores(Stores::folders(), 8);
}

#[test]
fn on_s3_every_point_restores_to_the_image_at_its_capture() {
    let west = crate::servers::s3(&format!("every-point-{}", unique()));
    every_point_restores(
        Stores {
            east: "east".into(),
            west,
        },
        5,
    );
}

#[test]
fn on_azure_every_point_restores_to_the_image_at_its_capture() {
    let west = crate::servers::azure(&format!("every-point-{}", unique()));
    every_point_restores(
        Stores {
            east: "east".into(),
            west,
        },
        5,
    );
}

/// A source cache on one kind of server and the repository on another.
#[test]
fn with_the_cache_on_azure_and_the_repository_on_s3_every_point_restores() {
    let n = unique();
    every_point_restores(
        Stores {
            east: crate::servers::azure(&format!("cache-{n}")),
            west: crate::servers::s3(&format!("repo-{n}")),
        },
        4,
    );
}

/// An encrypted repository on a server: the same.
#[test]
fn on_s3_an_encrypted_repository_restores_every_point() {
    let west = crate::servers::s3(&format!("sealed-{}", unique())) + "&key_file=test.key";
    every_point_restores(
        Stores {
            east: "east?key_file=test.key".into(),
            west,
        },
        3,
    );
}

/// `stores` may name `test.key`, a key the lab holds.
fn every_point_restores(stores: Stores, cycles: u64) {
    // Odd sizes on purpose: the last chunk of `a/os` is partial.
    let lab = Lab::on(
        stores,
        &[
            ("a", &[("os", (8 << 20) + 12_345), ("data", 16 << 20)]),
            ("b", &[("os", 4 << 20)]),
        ],
        &[("g", &["a", "b"])],
    );
    let mut rng = Rng::new(7);
    let disks = [("a", "os"), ("a", "data"), ("b", "os")];
    let mut expected: Vec<(u64, Vec<(String, PathBuf)>)> = Vec::new();
    for cycle in 0..cycles {
        for (vm, disk) in disks {
            let n = if cycle == 0 {
                400
            } else {
                1 + rng.below(40) as usize
            };
            scribble(&lab.disk(vm, disk), &mut rng, n);
        }
        let report = lab.replicate(&["a"]);
        let seq = report[0]["seq"].as_u64().unwrap();
        let mut copies = Vec::new();
        for (vm, disk) in disks {
            let copy = lab.path(&format!("expected/{seq}/{vm}-{disk}.img"));
            std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
            std::fs::copy(lab.disk(vm, disk), &copy).unwrap();
            copies.push((format!("{vm}/{disk}"), copy));
        }
        expected.push((seq, copies));
    }
    assert_eq!(lab.points("a"), (1..=cycles).rev().collect::<Vec<_>>());
    for (seq, copies) in &expected {
        for vm in ["a", "b"] {
            let dir = lab.restore(vm, &seq.to_string()).unwrap();
            for (name, copy) in copies
                .iter()
                .filter(|(n, _)| n.starts_with(&format!("{vm}/")))
            {
                let disk = name.split('/').nth(1).unwrap();
                let restored = dir.join(format!("{disk}.img"));
                assert!(
                    same_bytes(&restored, copy),
                    "point {seq}: {name} differs from the image at its capture"
                );
            }
        }
    }
    let verify = lab.run(&["verify", "--full"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains(": ok"), "{}", verify.stdout);
}

#[test]
fn a_cycle_ships_only_the_changed_chunks() {
    let lab = Lab::new(&[("a", &[("os", 32 << 20)])], &[]);
    let disk = lab.disk("a", "os");
    let mut rng = Rng::new(3);
    scribble(&disk, &mut rng, 2000);
    lab.replicate(&[]);
    // Touch 20 distinct chunks with random data.
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    for chunk in 0..20u64 {
        f.write_all_at(&rng.bytes(4096), chunk * 7 * 65536 + 8192)
            .unwrap();
    }
    let report = lab.replicate(&[]);
    assert_eq!(report[0]["changed_bytes"].as_u64().unwrap(), 20 * 65536);
    assert_eq!(report[0]["new_bytes"].as_u64().unwrap(), 20 * 65536);
    // Data plus the rewritten leaf and root pages; random data does not compress.
    let shipped = report[0]["shipped_bytes"].as_u64().unwrap();
    assert!(
        shipped <= 20 * 65536 + 64 * 1024,
        "shipped {shipped} bytes for 1.25 MiB of change"
    );
    // An unchanged disk ships nothing and still gives a point.
    let report = lab.replicate(&[]);
    assert_eq!(report[0]["changed_bytes"].as_u64().unwrap(), 0);
    assert_eq!(report[0]["shipped_bytes"].as_u64().unwrap(), 0);
    assert_eq!(lab.points("a"), vec![3, 2, 1]);
}

#[test]
fn sparse_and_zero_regions_cost_nothing() {
    let lab = Lab::new(&[("a", &[("os", 1 << 30)])], &[]);
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(lab.disk("a", "os"))
        .unwrap();
    f.write_all_at(&Rng::new(1).bytes(65536), 512 << 20)
        .unwrap();
    let report = lab.replicate(&[]);
    assert_eq!(report[0]["new_bytes"].as_u64().unwrap(), 65536);
    let dir = lab.restore("a", "latest").unwrap();
    let restored = dir.join("os.img");
    assert!(same_bytes(&restored, &lab.disk("a", "os")));
    // The restored image is sparse too: 1 GiB logical, a few blocks allocated.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&restored).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "restored image allocates {} bytes",
        meta.blocks() * 512
    );
}

#[test]
fn qcow2_images_are_captured_through_qemu_img() {
    let lab = Lab::new(&[("q", &[("os", 0)])], &[]);
    let disk = lab.disk("q", "os");
    std::fs::remove_file(&disk).unwrap();
    let ok = |c: &mut Command| {
        let out = c
            .output()
            .expect("qemu-img and qemu-io are installed (qemu-utils)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("16M"));
    ok(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 1M 192k",
            "-c",
            "write -P 0x5c 9M 4k",
        ])
        .arg(&disk));
    lab.replicate(&[]);
    ok(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x11 1M 4k"])
        .arg(&disk));
    lab.replicate(&[]);
    let raw = lab.path("expected.raw");
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&disk)
        .arg(&raw));
    let dir = lab.restore("q", "2").unwrap();
    assert!(same_bytes(&dir.join("os.img"), &raw));
    let points = lab.points_json("q");
    assert_eq!(
        points["points"][0]["disks"][0]["changed_bytes"]
            .as_u64()
            .unwrap(),
        65536
    );
}

#[test]
fn failover_restores_from_the_target_alone() {
    failover_from_the_target_alone(Stores::folders());
}

#[test]
fn on_s3_failover_restores_from_the_target_alone() {
    failover_from_the_target_alone(Stores {
        east: "east".into(),
        west: crate::servers::s3(&format!("failover-{}", unique())),
    });
}

#[test]
fn on_azure_failover_restores_from_the_target_alone() {
    failover_from_the_target_alone(Stores {
        east: "east".into(),
        west: crate::servers::azure(&format!("failover-{}", unique())),
    });
}

fn failover_from_the_target_alone(stores: Stores) {
    let lab = Lab::on(stores, &[("a", &[("os", 8 << 20)])], &[]);
    let mut rng = Rng::new(11);
    let mut copies = Vec::new();
    for i in 0..3 {
        scribble(&lab.disk("a", "os"), &mut rng, 300);
        lab.replicate(&[]);
        let copy = lab.path(&format!("copy-{i}.img"));
        std::fs::copy(lab.disk("a", "os"), &copy).unwrap();
        copies.push(copy);
    }
    // The source site is gone: its VMs' disks and its cache.
    std::fs::remove_dir_all(lab.path("east")).unwrap();
    std::fs::remove_dir_all(lab.path("vms")).unwrap();
    for (i, copy) in copies.iter().enumerate() {
        let dir = lab.restore("a", &(i + 1).to_string()).unwrap();
        assert!(same_bytes(&dir.join("os.img"), copy), "point {}", i + 1);
    }
    assert_eq!(lab.run(&["verify", "--full"]).code, 0);
}

/// Kill -9 the real command at random instants of capture, ship and commit, again and again:
/// every listed point must restore to the image of its cycle, and no point once listed may go.
/// `LIFEBOAT_KILL_LOOP=N` runs N rounds (default 10).
#[test]
fn kill_9_during_cycles_loses_nothing_committed() {
    let rounds: u64 = std::env::var("LIFEBOAT_KILL_LOOP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let lab = Lab::new(
        &[("a", &[("os", 24 << 20)]), ("b", &[("os", 8 << 20)])],
        &[("g", &["a", "b"])],
    );
    let helper = env!("CARGO_BIN_EXE_lifeboat-test-helper");
    let mut rng = Rng::new(42);
    // (state window start, end, copies of a and b)
    let mut states: Vec<(u64, u64, PathBuf, PathBuf)> = Vec::new();
    let mut listed_before: Vec<u64> = Vec::new();
    let mut killed = 0;
    // Kill instants fall inside a cycle: the range follows how long an uninterrupted one took.
    let mut cycle_ms = 400;
    for round in 0..rounds {
        scribble(
            &lab.disk("a", "os"),
            &mut rng,
            if round == 0 { 3000 } else { 200 },
        );
        scribble(&lab.disk("b", "os"), &mut rng, 100);
        let copy_a = lab.path(&format!("state/{round}-a.img"));
        let copy_b = lab.path(&format!("state/{round}-b.img"));
        std::fs::create_dir_all(copy_a.parent().unwrap()).unwrap();
        std::fs::copy(lab.disk("a", "os"), &copy_a).unwrap();
        std::fs::copy(lab.disk("b", "os"), &copy_b).unwrap();
        let start = now_ms();
        let mut child = Command::new(helper)
            .args(["cli", "--config", &lab.config(), "replicate"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.below(cycle_ms));
        let began = Instant::now();
        let deadline = began + delay;
        let mut finished = None;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                finished = Some(status);
                cycle_ms = began.elapsed().as_millis().max(10) as u64;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if finished.is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        let status = child.wait().unwrap();
        if finished.is_some() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(status.success(), "round {round}: replicate failed: {err}");
        }
        states.push((start, now_ms(), copy_a, copy_b));
        let listed = lab.points("a");
        for seq in &listed_before {
            assert!(
                listed.contains(seq),
                "round {round}: point {seq} was listed and is gone"
            );
        }
        listed_before = listed;
    }
    assert!(
        killed > 0,
        "no cycle was interrupted; the test proved nothing"
    );
    // One clean cycle: it commits or discards what the killed ones staged.
    lab.replicate(&[]);
    let points = lab.points_json("a");
    for p in points["points"].as_array().unwrap() {
        let seq = p["id"].as_u64().unwrap();
        let captured = humantime::parse_rfc3339(p["captured_at"].as_str().unwrap()).unwrap();
        let captured = captured.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        // The images change only between rounds, so a point holds the state of the round whose
        // window contains its capture (or the last state, for the final clean cycle).
        let (_, _, a, b) = states
            .iter()
            .find(|(s, e, _, _)| *s <= captured && captured <= *e)
            .unwrap_or_else(|| states.last().unwrap());
        let dir_a = lab
            .restore("a", &seq.to_string())
            .unwrap_or_else(|o| panic!("point {seq}: {}", o.stderr));
        let dir_b = lab
            .restore("b", &seq.to_string())
            .unwrap_or_else(|o| panic!("point {seq}: {}", o.stderr));
        assert!(
            same_bytes(&dir_a.join("os.img"), a),
            "point {seq} of a is not the image of its cycle"
        );
        assert!(
            same_bytes(&dir_b.join("os.img"), b),
            "point {seq} of b is not the image of its cycle"
        );
    }
    let verify = lab.run(&["verify", "--full"]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    // What the killed cycles left unreferenced, GC removes; the points stay whole.
    let gc = lab.run(&["gc", "--grace", "0s"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert_eq!(lab.run(&["verify", "--full"]).code, 0);
    let last = lab.points("a")[0];
    let dir = lab.restore("a", &last.to_string()).unwrap();
    assert!(same_bytes(&dir.join("os.img"), &states.last().unwrap().2));
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Which object to damage.
#[derive(Clone, Copy, Debug)]
enum Target {
    ChunkInPack,
    PackTrailer,
    Index,
    Page,
    Manifest,
}

#[test]
fn corruption_of_every_object_kind_is_reported_and_refused() {
    for (round, target) in [
        Target::ChunkInPack,
        Target::PackTrailer,
        Target::Index,
        Target::Page,
        Target::Manifest,
    ]
    .into_iter()
    .cycle()
    .take(10)
    .enumerate()
    {
        let lab = Lab::new(&[("a", &[("os", 4 << 20)])], &[]);
        let mut rng = Rng::new(100 + round as u64);
        scribble(&lab.disk("a", "os"), &mut rng, 200);
        lab.replicate(&[]);
        let original = lab.path("original.img");
        std::fs::copy(lab.disk("a", "os"), &original).unwrap();
        let damaged = damage(&lab, target, &mut rng);
        let verify = lab.run(&["verify", "--full"]);
        assert_eq!(
            verify.code, 5,
            "{target:?}: verify --full missed damage to {damaged}: {}",
            verify.stdout
        );
        assert!(verify.stdout.contains("damaged"), "{}", verify.stdout);
        let named = verify.stdout.lines().any(|l| {
            l.contains("damaged:")
                && (l.contains(&damaged) || matches!(target, Target::Page | Target::ChunkInPack))
        });
        assert!(
            named,
            "{target:?}: verify does not name {damaged}: {}",
            verify.stdout
        );
        match lab.restore("a", "latest") {
            Err(out) => {
                assert_eq!(out.code, 5, "{target:?}: {}", out.stderr);
                assert!(out.stderr.contains("damaged"), "{}", out.stderr);
                let leftovers: Vec<_> = std::fs::read_dir(lab.path("restored"))
                    .map(|d| {
                        d.flatten()
                            .flat_map(|e| std::fs::read_dir(e.path()).unwrap().flatten())
                            .collect()
                    })
                    .unwrap_or_default();
                assert!(
                    leftovers.is_empty(),
                    "a refused restore left files: {leftovers:?}"
                );
            }
            // Damage outside every blob the point reads (a trailer) must not change a byte.
            Ok(dir) => {
                assert!(
                    matches!(target, Target::PackTrailer),
                    "{target:?}: restore accepted damaged data"
                );
                assert!(same_bytes(&dir.join("os.img"), &original));
            }
        }
    }
}

/// Flips one random byte of an object of the kind asked; returns the object's name.
fn damage(lab: &Lab, target: Target, rng: &mut Rng) -> String {
    let repo = lab.path("west/repo");
    let files = |sub: &str| -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![repo.join(sub)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path())
                } else {
                    out.push(e.path())
                }
            }
        }
        out.sort();
        out
    };
    // Packs and their trailers, from their footers.
    let packs: Vec<(PathBuf, Vec<u8>)> = files("packs")
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    let meta_class = |b: &[u8]| b[b.len() - 48 + 6] == 2;
    let (path, range) = match target {
        Target::Index => {
            let f = files("index").remove(0);
            let n = std::fs::metadata(&f).unwrap().len();
            (f, 0..n)
        }
        Target::Manifest => {
            let f = files("points").remove(0);
            let n = std::fs::metadata(&f).unwrap().len();
            (f, 0..n)
        }
        Target::ChunkInPack | Target::Page | Target::PackTrailer => {
            let want_meta = matches!(target, Target::Page);
            let (p, b) = packs
                .iter()
                .find(|(_, b)| meta_class(b) == want_meta)
                .unwrap();
            let count =
                u32::from_le_bytes(b[b.len() - 48..b.len() - 44].try_into().unwrap()) as u64;
            let trailer = count * 50 + 48;
            let data_end = b.len() as u64 - trailer;
            if matches!(target, Target::PackTrailer) {
                (p.clone(), data_end..b.len() as u64)
            } else {
                (p.clone(), 0..data_end)
            }
        }
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (range.start + rng.below(range.end - range.start)) as usize;
    bytes[at] ^= 1 << rng.below(8);
    std::fs::write(&path, bytes).unwrap();
    path.strip_prefix(lab.path("west"))
        .unwrap()
        .display()
        .to_string()
}

/// A cut hook that waits for the other writer, so both have read the same parent before either
/// commits: the race is certain, not likely.
struct Rendezvous(Arc<tokio::sync::Barrier>);

#[async_trait::async_trait]
impl Cut for Rendezvous {
    async fn hold(&self) -> lifeboat_replication::Result<()> {
        self.0.wait().await;
        Ok(())
    }
    async fn release(&self) -> lifeboat_replication::Result<()> {
        Ok(())
    }
}

#[test]
fn two_writers_for_one_group_one_wins_the_other_is_fenced() {
    two_writers_one_fenced(Stores::folders());
}

#[test]
fn on_s3_two_writers_for_one_group_one_wins_the_other_is_fenced() {
    two_writers_one_fenced(Stores {
        east: "east".into(),
        west: crate::servers::s3(&format!("fencing-{}", unique())),
    });
}

#[test]
fn on_azure_two_writers_for_one_group_one_wins_the_other_is_fenced() {
    two_writers_one_fenced(Stores {
        east: "east".into(),
        west: crate::servers::azure(&format!("fencing-{}", unique())),
    });
}

fn two_writers_one_fenced(stores: Stores) {
    let lab = Lab::on(stores, &[("a", &[("os", 4 << 20)])], &[]);
    scribble(&lab.disk("a", "os"), &mut Rng::new(5), 100);
    let group = lab.inventory_groups().remove(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for round in 0..3 {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let opts = CycleOptions {
            cut: Some(Arc::new(Rendezvous(barrier))),
            ..CycleOptions::default()
        };
        let (x, y) = rt.block_on(async {
            let source = Store::open(&lab.stores.east, lab.dir.path()).unwrap();
            let target = Store::open(&lab.stores.west, lab.dir.path()).unwrap();
            tokio::join!(
                lifeboat_replication::replicate(&group, &source, &target, &opts),
                lifeboat_replication::replicate(&group, &source, &target, &opts)
            )
        });
        let (won, lost) = match (x, y) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            (a, b) => panic!("round {round}: exactly one writer must win: {a:?} / {b:?}"),
        };
        assert_eq!(lost.kind(), ErrorKind::Fenced, "{lost}");
        assert!(
            lost.to_string().contains("another writer committed point"),
            "{lost}"
        );
        assert_eq!(won.seq, round + 1);
    }
    assert_eq!(lab.points("a"), vec![3, 2, 1]);
    assert!(lab.restore("a", "latest").is_ok());

    // A take-over (failover commit) raises the epoch: the old source's next cycle stops.
    rt.block_on(async {
        let target = Store::open(&lab.stores.west, lab.dir.path()).unwrap();
        lifeboat_replication::fencing::fence(&target, "a")
            .await
            .unwrap()
    });
    let out = lab.run(&["replicate", "a"]);
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(
        out.stderr.contains("is fenced") && out.stderr.contains("epoch 2"),
        "{}",
        out.stderr
    );
    assert_eq!(lab.points("a"), vec![4, 3, 2, 1]);
}

/// Stops the pair writer for the cut (SIGSTOP) and lets it go on after (SIGCONT).
struct Pause(u32);

#[async_trait::async_trait]
impl Cut for Pause {
    async fn hold(&self) -> lifeboat_replication::Result<()> {
        let ok = Command::new("kill")
            .args(["-STOP", &self.0.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        // Let a write in flight land: the writer is stopped between system calls.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if ok {
            Ok(())
        } else {
            Err(lifeboat_replication::Error::failed(
                "cannot stop the writer",
            ))
        }
    }
    async fn release(&self) -> lifeboat_replication::Result<()> {
        let ok = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(())
        } else {
            Err(lifeboat_replication::Error::failed(
                "cannot resume the writer",
            ))
        }
    }
}

fn newest_record(image: &Path) -> u64 {
    std::fs::read(image)
        .unwrap()
        .chunks(4096)
        .map(|s| u64::from_le_bytes(s[..8].try_into().unwrap()))
        .max()
        .unwrap()
}

#[test]
fn a_group_cut_never_holds_a_later_write_without_an_earlier_one() {
    let lab = Lab::new(
        &[("a", &[("os", 16 << 20)]), ("b", &[("os", 16 << 20)])],
        &[("g", &["a", "b"])],
    );
    let mut writer = Command::new(env!("CARGO_BIN_EXE_lifeboat-test-helper"))
        .arg("pair-writer")
        .arg(lab.disk("a", "os"))
        .arg(lab.disk("b", "os"))
        .spawn()
        .unwrap();
    // Records are synced one by one: on a loaded machine the first may take a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    while newest_record(&lab.disk("b", "os")) == 0 {
        assert!(Instant::now() < deadline, "the writer never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    let group = lab.inventory_groups().remove(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = CycleOptions {
        cut: Some(Arc::new(Pause(writer.id()))),
        ..CycleOptions::default()
    };
    for _ in 0..5 {
        rt.block_on(async {
            let source = Store::open("east", lab.dir.path()).unwrap();
            let target = Store::open("west", lab.dir.path()).unwrap();
            lifeboat_replication::replicate(&group, &source, &target, &opts)
                .await
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.kill().unwrap();
    writer.wait().unwrap();
    for seq in 1..=5 {
        let a = lab.restore("a", &seq.to_string()).unwrap().join("os.img");
        let b = lab.restore("b", &seq.to_string()).unwrap().join("os.img");
        let (ra, rb) = (newest_record(&a), newest_record(&b));
        assert!(ra > 0, "point {seq}: the writer had not started");
        assert!(
            rb <= ra,
            "point {seq}: disk b holds record {rb} but disk a only {ra}"
        );
        assert!(
            ra - rb <= 1,
            "point {seq}: a at {ra}, b at {rb}: not one instant"
        );
    }
}

impl Lab {
    /// Rewrites part of the inventory (e.g. a shorter retention, a quiesce hook).
    fn edit(&self, from: &str, to: &str) {
        let path = self.path("lifeboat.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "inventory has no `{from}`");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
}

#[test]
fn a_quiesce_hook_gives_app_consistent_points_and_a_failing_one_crash_points() {
    let lab = Lab::new(&[("a", &[("os", 4 << 20)])], &[]);
    scribble(&lab.disk("a", "os"), &mut Rng::new(9), 50);
    lab.edit(
        "disks.os = \"vms/a/os.img\"\n",
        "disks.os = \"vms/a/os.img\"\nquiesce = { freeze = [\"sh\", \"-c\", \"echo freeze >> hook.log\"], thaw = [\"sh\", \"-c\", \"echo thaw >> hook.log\"] }\n",
    );
    let report = lab.replicate(&["--app"]);
    assert_eq!(report[0]["kind"], "app");
    assert_eq!(
        std::fs::read_to_string(lab.path("hook.log")).unwrap(),
        "freeze\nthaw\n"
    );
    // Without --app and no app interval in the policy: a crash-consistent point, no hook run.
    let report = lab.replicate(&[]);
    assert_eq!(report[0]["kind"], "crash");
    assert_eq!(
        std::fs::read_to_string(lab.path("hook.log")).unwrap(),
        "freeze\nthaw\n"
    );
    // A freeze that fails: the point is crash-consistent, and the user is told why.
    lab.edit("echo freeze >> hook.log", "echo cannot freeze >&2; exit 3");
    let out = lab.run(&["replicate", "--app"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("point 3 (crash)"), "{}", out.stdout);
    assert!(
        out.stderr.contains("freeze of `a` failed") && out.stderr.contains("cannot freeze"),
        "{}",
        out.stderr
    );
    let points = lab.points_json("a");
    let kinds: Vec<&str> = points["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["crash", "crash", "app"]);
    let dir = lab.restore("a", "latest-app-consistent").unwrap();
    assert!(same_bytes(&dir.join("os.img"), &lab.disk("a", "os")));
    assert!(points["rpo"]["ok"].as_bool().unwrap());
    assert!(points["rpo"]["seconds"].as_f64().unwrap() < 60.0);
}

#[test]
fn retention_expires_old_points_but_keeps_pinned_and_latest_and_gc_keeps_them_whole() {
    let lab = Lab::new(&[("a", &[("os", 8 << 20)])], &[]);
    lab.edit(
        "crash_interval = \"10s\"\nretention = \"1h\"",
        "crash_interval = \"1s\"\nretention = \"5s\"",
    );
    let mut rng = Rng::new(21);
    let mut copies = Vec::new();
    for i in 1..=4 {
        scribble(&lab.disk("a", "os"), &mut rng, 300);
        lab.replicate(&[]);
        let copy = lab.path(&format!("copy-{i}.img"));
        std::fs::copy(lab.disk("a", "os"), &copy).unwrap();
        copies.push(copy);
        if i == 2 {
            std::thread::sleep(Duration::from_millis(5200));
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let target = Store::open("west", lab.dir.path()).unwrap();
        let repo = lifeboat_replication::Repository::open(&target)
            .await
            .unwrap();
        repo.pin("a", 1, "drill").await.unwrap();
    });
    let out = lab.run(&["--output", "json", "gc", "--grace", "0s"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        report[0]["report"]["expired"],
        serde_json::json!([["a", 2]])
    );
    assert_eq!(lab.points("a"), vec![4, 3, 1]);
    assert!(lab.run(&["points", "list", "a"]).stdout.contains("drill"));
    for seq in [1usize, 3, 4] {
        let dir = lab.restore("a", &seq.to_string()).unwrap();
        assert!(
            same_bytes(&dir.join("os.img"), &copies[seq - 1]),
            "point {seq} after GC"
        );
    }
    assert_eq!(lab.run(&["verify", "--full"]).code, 0);
    // Once unpinned and old, point 1 goes too; the latest always stays.
    rt.block_on(async {
        let target = Store::open("west", lab.dir.path()).unwrap();
        let repo = lifeboat_replication::Repository::open(&target)
            .await
            .unwrap();
        repo.unpin("a", 1, "drill").await.unwrap();
    });
    std::thread::sleep(Duration::from_millis(5200));
    assert_eq!(lab.run(&["gc", "--grace", "0s"]).code, 0);
    assert_eq!(lab.points("a"), vec![4]);
    let dir = lab.restore("a", "4").unwrap();
    assert!(same_bytes(&dir.join("os.img"), &copies[3]));
    assert_eq!(lab.run(&["verify", "--full"]).code, 0);
}

#[test]
fn bad_requests_get_clear_errors() {
    let lab = Lab::new(&[("a", &[("os", 1 << 20)])], &[]);
    let out = lab.run(&["points", "list", "nope"]);
    assert_eq!(out.code, 4);
    assert!(out.stderr.contains("no VM `nope`"), "{}", out.stderr);
    let out = lab.run(&["restore", "a", "--out", "x"]);
    assert_eq!(out.code, 4);
    assert!(out.stderr.contains("no repository"), "{}", out.stderr);
    lab.replicate(&[]);
    let out = lab.run(&["restore", "a", "--point", "9", "--out", "x"]);
    assert_eq!(out.code, 4);
    assert!(out.stderr.contains("has no point 9"), "{}", out.stderr);
    let out = lab.run(&["restore", "a", "--point", "yesterday", "--out", "x"]);
    assert_eq!(out.code, 4);
    assert!(out.stderr.contains("is not a point"), "{}", out.stderr);
    std::fs::remove_file(lab.disk("a", "os")).unwrap();
    let out = lab.run(&["replicate"]);
    assert_eq!(out.code, 4);
    assert!(
        out.stderr.contains("os.img") && out.stderr.contains("No such file"),
        "{}",
        out.stderr
    );
    assert_eq!(lab.points("a"), vec![1], "a failed cycle commits nothing");
}

#[test]
fn a_staged_point_is_shipped_by_the_next_cycle_and_a_torn_one_is_dropped() {
    for torn in [false, true] {
        let lab = Lab::new(&[("a", &[("os", 4 << 20)])], &[]);
        scribble(&lab.disk("a", "os"), &mut Rng::new(31), 300);
        let captured = lab.path("captured.img");
        std::fs::copy(lab.disk("a", "os"), &captured).unwrap();
        // The target cannot take packs (a file where its pack folder goes): the cycle stages the
        // point in the cache and fails.
        std::fs::create_dir_all(lab.path("west/repo")).unwrap();
        std::fs::write(lab.path("west/repo/packs"), b"in the way").unwrap();
        let out = lab.run(&["replicate"]);
        assert_eq!(out.code, 4, "{}", out.stderr);
        assert!(out.stderr.contains("staged in the cache"), "{}", out.stderr);
        assert!(lab.points("a").is_empty());
        std::fs::remove_file(lab.path("west/repo/packs")).unwrap();
        let staged: Vec<PathBuf> = walk(&lab.path("east/cache/a/sessions"))
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("/packs/"))
            .collect();
        assert!(!staged.is_empty());
        if torn {
            // A power loss tore a staged pack: a byte of its first blob is wrong.
            let mut bytes = std::fs::read(&staged[0]).unwrap();
            bytes[10] ^= 0xff;
            std::fs::write(&staged[0], bytes).unwrap();
        }
        // The image moves on; the next cycle first deals with the staged point.
        scribble(&lab.disk("a", "os"), &mut Rng::new(32), 50);
        let out = lab.run(&["--output", "json", "replicate"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let notes = report[0]["notes"].to_string();
        if torn {
            assert!(
                notes.contains("dropped a damaged staged session"),
                "{notes}"
            );
            assert_eq!(lab.points("a"), vec![1]);
            let dir = lab.restore("a", "1").unwrap();
            assert!(same_bytes(&dir.join("os.img"), &lab.disk("a", "os")));
        } else {
            assert_eq!(report[0]["resumed"], 1, "{report}");
            assert_eq!(lab.points("a"), vec![2, 1]);
            let dir = lab.restore("a", "1").unwrap();
            assert!(
                same_bytes(&dir.join("os.img"), &captured),
                "the staged point is the image at its cut"
            );
            let dir = lab.restore("a", "2").unwrap();
            assert!(same_bytes(&dir.join("os.img"), &lab.disk("a", "os")));
        }
        assert_eq!(lab.run(&["verify", "--full"]).code, 0);
        assert!(
            walk(&lab.path("east/cache/a/sessions")).is_empty(),
            "sessions left in the cache"
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path())
            } else {
                out.push(e.path())
            }
        }
    }
    out
}

/// Regression: with the newest point's manifest damaged, `points list`, the restore of every
/// other point and every later cycle failed. The damage costs only that point now: it is listed
/// as damaged, the others restore, cycles go on from the last intact point, `verify` names it.
#[test]
fn a_damaged_manifest_costs_only_its_own_point() {
    let lab = Lab::new(&[("a", &[("os", 4 << 20)])], &[]);
    let mut rng = Rng::new(77);
    let mut images = Vec::new();
    for _ in 0..3 {
        scribble(&lab.disk("a", "os"), &mut rng, 50);
        lab.replicate(&[]);
        let copy = lab.path(&format!("at-{}.img", images.len() + 1));
        std::fs::copy(lab.disk("a", "os"), &copy).unwrap();
        images.push(copy);
    }
    // Damage point 3's manifest (manifests are named by inverted number: the newest sorts first).
    let points = lab.path("west/repo/points/a");
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&points)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    manifests.sort();
    let newest = manifests[0].clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&newest, bytes).unwrap();

    let out = lab.run(&["points", "list", "a"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("point 3 is DAMAGED"), "{}", out.stdout);
    assert_eq!(lab.points("a"), vec![2, 1]);
    for (seq, image) in [(1, &images[0]), (2, &images[1])] {
        let dir = lab.restore("a", &seq.to_string()).unwrap();
        assert!(same_bytes(&dir.join("os.img"), image), "point {seq}");
    }
    let verify = lab.run(&["verify"]);
    assert_eq!(verify.code, 5, "{}", verify.stdout);
    assert!(
        verify.stdout.contains("damaged: repo/points/a/"),
        "{}",
        verify.stdout
    );

    // Replication goes on: point 4 builds on point 2 and restores to the image of now.
    scribble(&lab.disk("a", "os"), &mut rng, 50);
    let out = lab.run(&["replicate"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("point 3 of group `a` is damaged"),
        "{}",
        out.stderr
    );
    assert_eq!(lab.points("a"), vec![4, 2, 1]);
    let dir = lab.restore("a", "latest").unwrap();
    assert!(same_bytes(&dir.join("os.img"), &lab.disk("a", "os")));
}

/// A cut that records how often it let the writers go.
struct CountingCut(std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl Cut for CountingCut {
    async fn hold(&self) -> lifeboat_replication::Result<()> {
        Ok(())
    }
    async fn release(&self) -> lifeboat_replication::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// A cut held past the policy's `max_pause` is abandoned: the writers are let go at once (not
/// when the scan ends), the cycle fails saying why, and no point is committed.
#[test]
fn a_cut_held_past_max_pause_is_abandoned_and_the_writers_let_go() {
    let lab = Lab::new(&[("a", &[("os", 256 << 20)])], &[]);
    scribble(&lab.disk("a", "os"), &mut Rng::new(9), 4000);
    let group = lab.inventory_groups().remove(0);
    let cut = Arc::new(CountingCut(std::sync::atomic::AtomicUsize::new(0)));
    let opts = CycleOptions {
        cut: Some(cut.clone()),
        max_pause: Some(Duration::from_millis(1)),
        ..CycleOptions::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(async {
        let source = Store::open("east", lab.dir.path()).unwrap();
        let target = Store::open("west", lab.dir.path()).unwrap();
        lifeboat_replication::replicate(&group, &source, &target, &opts).await
    });
    // Where the file system gives reflink copies the cut ends before the scan (every disk has a
    // frozen view), so there is nothing to bound: the point commits.
    let reflinks = Command::new("cp")
        .arg("--reflink=always")
        .arg(lab.disk("a", "os"))
        .arg(lab.path("reflink-probe"))
        .status()
        .is_ok_and(|s| s.success());
    if reflinks {
        assert_eq!(result.unwrap().seq, 1);
        assert_eq!(cut.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        return;
    }
    let e = result.expect_err("a cut held past max_pause must not commit");
    assert!(e.to_string().contains("past the policy's max_pause"), "{e}");
    assert_eq!(
        cut.0.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the writers were not let go exactly once"
    );
    assert!(lab.points("a").is_empty());
    // The next cycle, unbounded, commits.
    let ok = rt.block_on(async {
        let source = Store::open("east", lab.dir.path()).unwrap();
        let target = Store::open("west", lab.dir.path()).unwrap();
        lifeboat_replication::replicate(&group, &source, &target, &CycleOptions::default()).await
    });
    assert_eq!(ok.unwrap().seq, 1);
}

/// `lifeboat status`: every VM's RPO against its threshold and its last point, from the
/// repositories; exit 7 when any VM has no point or is over its threshold (monitors rely on it).
#[test]
fn status_shows_every_vms_rpo_and_exits_7_on_a_breach() {
    let lab = Lab::new(&[("a", &[("os", 1 << 20)]), ("b", &[("os", 1 << 20)])], &[]);
    let out = lab.run(&["status"]);
    assert_eq!(out.code, 7, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.matches("NO POINT").count(), 2, "{}", out.stdout);

    lab.replicate(&[]);
    let out = lab.run(&["status"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.matches(" ok").count(), 2, "{}", out.stdout);
    let json = lab.run(&["--output", "json", "status"]);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let vms = doc["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 2);
    for v in vms {
        assert_eq!(v["last_point"]["id"], 1, "{v}");
        assert_eq!(v["rpo"]["ok"], true, "{v}");
        assert_eq!(v["site"], "east");
    }

    // A threshold of one second, and more than a second since the last point: a breach.
    lab.edit("crash_interval = \"10s\"", "crash_interval = \"1s\"");
    lab.edit("rpo_threshold = \"1m\"", "rpo_threshold = \"1s\"");
    std::thread::sleep(Duration::from_millis(1500));
    let out = lab.run(&["status"]);
    assert_eq!(out.code, 7, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.matches("EXCEEDED").count(), 2, "{}", out.stdout);
}

/// Does any file under `dir` hold `needle`?
fn holds(dir: &Path, needle: &[u8]) -> bool {
    walk(dir).iter().any(|f| {
        std::fs::read(f)
            .unwrap_or_default()
            .windows(needle.len())
            .any(|w| w == needle)
    })
}

#[test]
fn an_encrypted_repository_holds_no_plaintext_and_refuses_changed_bytes_and_wrong_keys() {
    let stores = Stores {
        east: "east?key_file=east.key".into(),
        west: "west?key_file=west.key".into(),
    };
    let lab = Lab::on(stores, &[("a", &[("os", 8 << 20)])], &[]);
    std::fs::write(lab.path("east.key"), "5e".repeat(32)).unwrap();
    std::fs::write(lab.path("west.key"), "ab".repeat(32)).unwrap();
    // A known, incompressible pattern on the disk (stored raw, so plain in an open repository).
    let pattern = Rng::new(99).bytes(4096);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(lab.disk("a", "os"))
            .unwrap();
        f.write_all_at(&pattern, 0).unwrap();
        f.write_all_at(&pattern, 3 << 20).unwrap();
    }
    let mut rng = Rng::new(3);
    lab.replicate(&[]);
    scribble(&lab.disk("a", "os"), &mut rng, 50);
    lab.replicate(&[]);
    let dir = lab.restore("a", "latest").unwrap();
    assert!(same_bytes(&dir.join("os.img"), &lab.disk("a", "os")));
    assert!(
        !holds(&lab.path("west"), &pattern[..64]),
        "plaintext in the repository"
    );
    assert!(
        !holds(&lab.path("east"), &pattern[..64]),
        "plaintext in the cache"
    );
    // The check can fail: without keys the same disk leaves the pattern in the repository.
    let open_lab = Lab::new(&[("a", &[("os", 8 << 20)])], &[]);
    std::fs::copy(lab.disk("a", "os"), open_lab.disk("a", "os")).unwrap();
    open_lab.replicate(&[]);
    assert!(holds(&open_lab.path("west"), &pattern[..64]));

    // A flipped byte in any object that holds points is refused.
    let verify = lab.run(&["verify", "--full"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    let objects: Vec<PathBuf> = walk(&lab.path("west/repo"))
        .into_iter()
        .filter(|f| {
            let rel = f.strip_prefix(lab.path("west/repo")).unwrap();
            ["config", "packs", "index", "points"]
                .iter()
                .any(|k| rel.starts_with(k))
        })
        .collect();
    assert!(objects.len() >= 6, "{objects:?}");
    for f in &objects {
        let good = std::fs::read(f).unwrap();
        let mut bad = good.clone();
        let at = rng.below(bad.len() as u64) as usize;
        bad[at] ^= 0x20;
        std::fs::write(f, &bad).unwrap();
        // A new process, as a person's `verify` is (this one keeps index files it has read).
        let out = Command::new(crate::failover::HELPER)
            .args(["cli", "--config", &lab.config(), "verify", "--full"])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "a flipped byte at {at} of {} went unnoticed: {}",
            f.display(),
            String::from_utf8_lossy(&out.stdout)
        );
        std::fs::write(f, &good).unwrap();
    }

    // A wrong key is refused before anything is read; so is no key.
    std::fs::write(lab.path("west.key"), "cd".repeat(32)).unwrap();
    let out = lab.run(&["points", "list", "a"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("does not open with the store's key"),
        "{}",
        out.stderr
    );
    let toml = std::fs::read_to_string(lab.path("lifeboat.toml")).unwrap();
    std::fs::write(
        lab.path("lifeboat.toml"),
        toml.replace("west?key_file=west.key", "west"),
    )
    .unwrap();
    let out = lab.run(&["points", "list", "a"]);
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("is encrypted: give the store its key"),
        "{}",
        out.stderr
    );
    // A malformed key says what a key is.
    std::fs::write(
        lab.path("lifeboat.toml"),
        toml.replace("west?key_file=west.key", "west?key_file=east.key"),
    )
    .unwrap();
    std::fs::write(lab.path("east.key"), "not a key").unwrap();
    let out = lab.run(&["points", "list", "a"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("64 hex digits"), "{}", out.stderr);
}

/// An object store that fails every `every`-th request — half of them before doing it, half after
/// (the answer lost) — and answers each request late: what a cycle meets on a bad day.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn object_store::ObjectStore>,
    every: u64,
    requests: std::sync::atomic::AtomicU64,
    faults: std::sync::atomic::AtomicU64,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flaky({})", self.inner)
    }
}

/// What a fault does to a request: nothing, or fail before it, or after it.
enum Fault {
    None,
    Before,
    After,
}

impl Flaky {
    async fn fault(&self) -> Fault {
        use std::sync::atomic::Ordering;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        if n % self.every != self.every - 1 {
            return Fault::None;
        }
        let k = self.faults.fetch_add(1, Ordering::Relaxed);
        if k.is_multiple_of(2) {
            Fault::Before
        } else {
            Fault::After
        }
    }

    fn error() -> object_store::Error {
        object_store::Error::Generic {
            store: "flaky",
            source: "injected fault: connection reset".into(),
        }
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        match self.fault().await {
            Fault::None => self.inner.put_opts(location, payload, opts).await,
            Fault::Before => Err(Self::error()),
            Fault::After => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(Self::error())
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        match self.fault().await {
            Fault::None => self.inner.get_opts(location, options).await,
            _ => Err(Self::error()),
        }
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        use std::sync::atomic::Ordering;
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        if n % self.every == self.every - 1 {
            self.faults.fetch_add(1, Ordering::Relaxed);
            return Box::pin(futures::stream::once(async { Err(Flaky::error()) }));
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[test]
fn with_one_request_in_twenty_failing_cycles_converge_and_every_point_restores_exact() {
    let lab = Lab::new(&[("a", &[("os", 16 << 20)])], &[]);
    let group = lab.inventory_groups().remove(0);
    std::fs::create_dir_all(lab.path("west")).unwrap();
    let flaky = Arc::new(Flaky {
        inner: Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(lab.path("west")).unwrap(),
        ),
        every: 20,
        requests: Default::default(),
        faults: Default::default(),
    });
    let west = Store::from_object_store(flaky.clone(), "flaky west");
    let east = Store::open_cache("east", lab.dir.path()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rng = Rng::new(21);
    let mut copies = Vec::new();
    for i in 0..8 {
        scribble(
            &lab.disk("a", "os"),
            &mut rng,
            if i == 0 { 800 } else { 60 },
        );
        let report = rt
            .block_on(lifeboat_replication::replicate(
                &group,
                &east,
                &west,
                &CycleOptions::default(),
            ))
            .unwrap_or_else(|e| panic!("cycle {i} did not converge: {e}"));
        let copy = lab.path(&format!("copy-{}.img", report.seq));
        std::fs::copy(lab.disk("a", "os"), &copy).unwrap();
        copies.push((report.seq, copy));
    }
    let faults = flaky.faults.load(std::sync::atomic::Ordering::Relaxed);
    // Both kinds (before and after the request), several times over.
    assert!(faults >= 4, "only {faults} faults were injected");
    // Every point is listed whole and restores exact, from the repository as it is on disk.
    assert_eq!(lab.points("a"), (1..=8).rev().collect::<Vec<_>>());
    for (seq, copy) in &copies {
        let dir = lab.restore("a", &seq.to_string()).unwrap();
        assert!(same_bytes(&dir.join("os.img"), copy), "point {seq}");
    }
    let verify = lab.run(&["verify", "--full"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    // A restore through the faulty store itself finishes too.
    let out = lab.path("through-faults");
    rt.block_on(async {
        let repo = lifeboat_replication::Repository::open(&west).await.unwrap();
        let m = lifeboat_replication::points::select(&repo, "a", "latest")
            .await
            .unwrap();
        lifeboat_replication::restore::restore(&repo, &m, "a", &out, None)
            .await
            .unwrap();
    });
    assert!(same_bytes(&out.join("os.img"), &copies.last().unwrap().1));
}

#[test]
fn a_sites_bandwidth_is_honoured_within_ten_percent() {
    let lab = Lab::new(&[("a", &[("os", 24 << 20)])], &[]);
    let toml = std::fs::read_to_string(lab.path("lifeboat.toml")).unwrap();
    std::fs::write(
        lab.path("lifeboat.toml"),
        toml.replacen(
            "[sites.east]\nstore = \"east\"\n",
            "[sites.east]\nstore = \"east\"\nbandwidth = \"4 MiB/s\"\n",
            1,
        ),
    )
    .unwrap();
    // Incompressible: what is shipped is what was written.
    std::fs::write(lab.disk("a", "os"), Rng::new(8).bytes(24 << 20)).unwrap();
    let report = lab.replicate(&[]);
    let shipped = report[0]["shipped_bytes"].as_f64().unwrap();
    let seconds = report[0]["seconds"].as_f64().unwrap();
    let rate = shipped / seconds / 1048576.0;
    assert!(shipped > 20.0 * 1048576.0, "{report}");
    assert!(
        (3.6..=4.4).contains(&rate),
        "shipped {:.1} MiB in {seconds:.2} s: {rate:.2} MiB/s against a 4 MiB/s limit",
        shipped / 1048576.0
    );
    // A rate that is not one is refused by validation.
    std::fs::write(
        lab.path("lifeboat.toml"),
        toml.replacen(
            "[sites.east]\nstore = \"east\"\n",
            "[sites.east]\nstore = \"east\"\nbandwidth = \"4 MiB\"\n",
            1,
        ),
    )
    .unwrap();
    let out = lab.run(&["plan", "validate"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stdout.contains("invalid rate `4 MiB`"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn an_s3_server_killed_and_restarted_mid_cycle_costs_no_point() {
    let mut server = crate::servers::OwnS3::start();
    let west = server.url(&format!("restart-{}", unique()));
    let lab = Lab::on(
        Stores {
            east: "east".into(),
            west: west.clone(),
        },
        &[("a", &[("os", 48 << 20)])],
        &[],
    );
    // Incompressible, so the cycle ships several full packs while the server goes away.
    std::fs::write(lab.disk("a", "os"), Rng::new(17).bytes(48 << 20)).unwrap();
    let mut group = lab.inventory_groups().remove(0);
    // At 16 MiB/s the cycle ships for three seconds: the outage lands in the middle of it.
    group.bandwidth = Some(16 << 20);
    let base = lab.dir.path().to_path_buf();
    let cycle = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let east = Store::open_cache("east", &base).unwrap();
            let west = Store::open(&west, &base).unwrap();
            lifeboat_replication::replicate(&group, &east, &west, &CycleOptions::default()).await
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    let in_flight = cycle.join().unwrap();
    if let Ok(report) = &in_flight {
        // It was still shipping when the server died (0.3 s in) and came back.
        assert!(report.seconds > 2.5, "{report:?}");
    }
    // The cycle in flight either rode out the outage (retries), or failed saying so — then the
    // next cycle converges (committing what the first staged).
    if let Err(e) = &in_flight {
        eprintln!("the cycle in flight failed: {e}");
        lab.replicate(&[]);
    }
    let points = lab.points("a");
    assert!(!points.is_empty());
    let dir = lab.restore("a", "latest").unwrap();
    assert!(same_bytes(&dir.join("os.img"), &lab.disk("a", "os")));
    let verify = lab.run(&["verify", "--full"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
}

/// `lifeboat store check` races eight creates of one object: on a folder exactly one wins and
/// the clock is this host's; on the SeaweedFS S3 server and on Azurite too (printed, and
/// asserted: a server that starts letting several through is noticed here).
#[test]
fn store_check_races_creates_of_one_object_and_reads_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("repo").display().to_string();
    let out = lifeboat(&["store", "check", &folder]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("put-if-absent holds (1 of 8 concurrent creates of one object won)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("clock: +0.0 s") || out.stdout.contains("clock: -0.0 s"),
        "{}",
        out.stdout
    );
    let s3 = crate::servers::s3(&format!("probe-{}", unique()));
    let out = lifeboat(&["--output", "json", "store", "check", &s3]);
    eprintln!("SeaweedFS: {}{}", out.stdout, out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["racers"], 8);
    // What docs/guide/stores.md says of SeaweedFS: its conditional create holds.
    assert_eq!(
        doc["winners"], 1,
        "SeaweedFS let several creates through: {doc}"
    );
    assert_eq!(doc["conditional_create_holds"], true);
    assert_eq!(out.code, 0, "{doc}");
    assert!(
        doc["clock_skew_ms"]
            .as_i64()
            .is_some_and(|ms| ms.abs() < 5_000),
        "{doc}"
    );
    let azure = crate::servers::azure(&format!("probe-{}", unique()));
    let out = lifeboat(&["--output", "json", "store", "check", &azure]);
    eprintln!("Azurite: {}{}", out.stdout, out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        doc["winners"], 1,
        "Azurite let several creates through: {doc}"
    );
    assert_eq!(out.code, 0, "{doc}");
}

/// `lifeboat export` serves a point's disks over NBD from the repository, nothing restored:
/// `qemu-img convert` through the export gives the image at its capture byte for byte, `qemu-img
/// map` sees its zero regions as holes (never sent), a read past the end is refused and the
/// server serves on, and an interrupted server removes its socket.
#[test]
fn a_point_is_served_over_nbd_byte_for_byte_with_its_holes() {
    export_serves(Stores::folders());
}

#[test]
fn on_s3_an_encrypted_point_is_served_over_nbd() {
    let west = crate::servers::s3(&format!("export-{}", unique())) + "&key_file=test.key";
    export_serves(Stores {
        east: "east?key_file=test.key".into(),
        west,
    });
}

fn export_serves(stores: Stores) {
    let lab = Lab::on(
        stores,
        &[("a", &[("os", (48 << 20) + 4096), ("data", 8 << 20)])],
        &[],
    );
    let mut rng = Rng::new(11);
    scribble(&lab.disk("a", "os"), &mut rng, 200);
    scribble(&lab.disk("a", "data"), &mut rng, 50);
    use std::os::unix::fs::FileExt;
    // 16 MiB of zeros in the middle of `os`, written as zeros (not a hole) at the source.
    std::fs::OpenOptions::new()
        .write(true)
        .open(lab.disk("a", "os"))
        .unwrap()
        .write_all_at(&vec![0u8; 16 << 20], 16 << 20)
        .unwrap();
    lab.replicate(&[]);
    // A path that holds something else is refused, and what it holds is left as it was.
    let taken = lab.path("notes.txt");
    std::fs::write(&taken, "keep me").unwrap();
    let out = lab.run(&["export", "a", "--socket", &taken.display().to_string()]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("exists and is not a socket"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "keep me");
    let socket = lab.path("export.sock");
    let socket_s = socket.display().to_string();
    let config = lab.config();
    let server = Command::new(crate::failover::HELPER)
        .args([
            "cli", "--config", &config, "export", "a", "--point", "latest",
        ])
        .args(["--socket", &socket_s])
        .current_dir(lab.path(""))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(lab.path("export.log")).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the export did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let qemu_img = |args: &[&str]| {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {out:?}; the server said: {}",
            std::fs::read_to_string(lab.path("export.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for disk in ["os", "data"] {
        let url = format!("nbd+unix:///{disk}?socket={socket_s}");
        let copy = lab.path(&format!("{disk}.copy"));
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &url,
            &copy.display().to_string(),
        ]);
        assert!(
            same_bytes(&copy, &lab.disk("a", disk)),
            "{disk} through the export differs from the image"
        );
    }
    // The zero chunks are holes to the client.
    let url = format!("nbd+unix:///os?socket={socket_s}");
    let map: serde_json::Value =
        serde_json::from_str(&qemu_img(&["map", "--output=json", "-f", "raw", &url])).unwrap();
    let holes: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == false && e["zero"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert!(holes >= 16 << 20, "the zeros are not holes: {map:#}");
    // A read past the end is refused (EINVAL, a simple reply), and the same connection then
    // reads on: spoken raw, as a client that does not check bounds itself would.
    {
        use std::io::{Read, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let mut greeting = [0u8; 18];
        c.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[0..8], b"NBDMAGIC");
        let mut hello = 3u32.to_be_bytes().to_vec(); // fixed newstyle, no zeroes
        hello.extend_from_slice(b"IHAVEOPT");
        hello.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        hello.extend_from_slice(&2u32.to_be_bytes());
        hello.extend_from_slice(b"os");
        c.write_all(&hello).unwrap();
        let mut info = [0u8; 10];
        c.read_exact(&mut info).unwrap();
        let size = u64::from_be_bytes(info[0..8].try_into().unwrap());
        assert_eq!(size, (48 << 20) + 4096);
        let request = |handle: u64, offset: u64, len: u32| {
            let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
            r.extend_from_slice(&0u16.to_be_bytes());
            r.extend_from_slice(&0u16.to_be_bytes()); // NBD_CMD_READ
            r.extend_from_slice(&handle.to_be_bytes());
            r.extend_from_slice(&offset.to_be_bytes());
            r.extend_from_slice(&len.to_be_bytes());
            r
        };
        c.write_all(&request(7, size - 4096, 8192)).unwrap();
        let mut reply = [0u8; 16];
        c.read_exact(&mut reply).unwrap();
        assert_eq!(
            u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            22,
            "EINVAL"
        );
        assert_eq!(u64::from_be_bytes(reply[8..16].try_into().unwrap()), 7);
        c.write_all(&request(8, 1 << 20, 8192)).unwrap();
        c.read_exact(&mut reply).unwrap();
        assert_eq!(u32::from_be_bytes(reply[4..8].try_into().unwrap()), 0);
        let mut got = vec![0u8; 8192];
        c.read_exact(&mut got).unwrap();
        let mut want = vec![0u8; 8192];
        use std::os::unix::fs::FileExt as _;
        std::fs::File::open(lab.disk("a", "os"))
            .unwrap()
            .read_exact_at(&mut want, 1 << 20)
            .unwrap();
        assert_eq!(got, want);
    }
    qemu_img(&["info", &url]);
    // Interrupted: it stops and takes its socket with it.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = server.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("a/os at point 1 (")
            && stdout.contains(&format!("nbd+unix:///os?socket={socket_s}")),
        "{stdout}"
    );
    assert!(!socket.exists());
}

/// An export told to keep a boot trace records the chunks its clients read first, in that
/// order, when SIGUSR1 says the boot is over (once: later signals change nothing); a server
/// started again with that trace fetches them ahead of the guest, and one whose trace does not
/// parse says so and serves as before.
#[test]
fn an_export_records_the_order_a_boot_read_and_the_next_follows_it() {
    // On the S3 server: from a local folder a trace is recorded but not followed.
    let west = crate::servers::s3(&format!("trace-{}", unique()));
    let stores = Stores {
        east: "east".into(),
        west,
    };
    let lab = Lab::on(stores, &[("a", &[("os", 8 << 20)])], &[]);
    let mut rng = Rng::new(17);
    let mut bytes = vec![0u8; 8 << 20];
    for b in bytes.chunks_mut(8) {
        b.copy_from_slice(&(rng.next() | 1).to_le_bytes());
    }
    std::fs::write(lab.disk("a", "os"), &bytes).unwrap();
    lab.replicate(&[]);
    let socket = lab.path("trace.sock");
    let socket_s = socket.display().to_string();
    let trace = lab.path("a.trace.json");
    let config = lab.config();
    let serve = || {
        let _ = std::fs::remove_file(&socket);
        let mut server = Command::new(crate::failover::HELPER)
            .args([
                "cli", "--config", &config, "export", "a", "--socket", &socket_s,
            ])
            .args(["--boot-trace", &trace.display().to_string()])
            .current_dir(lab.path(""))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // What it says before it serves, up to the line that says it serves.
        let mut said = String::new();
        let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
        while !said.contains("serving, read-only") {
            let mut line = String::new();
            use std::io::BufRead;
            assert_ne!(
                out.read_line(&mut line).unwrap(),
                0,
                "the export ended: {said}"
            );
            said.push_str(&line);
        }
        let started = Instant::now();
        while !socket.exists() {
            assert!(started.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(20));
        }
        (server, said, out)
    };
    // An interrupted server ends at once: a test that waited on one that did not would hang.
    let ends_within = |server: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = server.kill();
                panic!("the export server went on serving after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let signal = |server: &std::process::Child, s| {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(server.id() as i32).unwrap(),
            s,
        )
        .unwrap();
    };
    // The "boot": three reads out of order, spanning chunks 80, 16–17 and 112 (64 KiB each).
    let boot = || {
        let url = format!("nbd+unix:///os?socket={socket_s}");
        let out = Command::new("qemu-io")
            .args(["-r", "-f", "raw", &url])
            .args([
                "-c",
                "read 5M 64k",
                "-c",
                "read 1M 128k",
                "-c",
                "read 7M 64k",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };

    let (mut server, said, mut out) = serve();
    assert!(!said.contains("fetching"), "no trace yet: {said}");
    boot();
    signal(&server, rustix::process::Signal::USR1);
    let mut line = String::new();
    use std::io::BufRead;
    out.read_line(&mut line).unwrap();
    assert!(line.contains("the boot read 4 chunks first"), "{line}");
    let recorded = std::fs::read_to_string(&trace).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&recorded).unwrap();
    assert_eq!(doc["disks"]["os"]["chunk_size"], 65536, "{doc}");
    assert_eq!(
        doc["disks"]["os"]["runs"],
        serde_json::json!([[80, 1], [16, 2], [112, 1]]),
        "{doc}"
    );
    // The boot is over: reads after it are not the boot's, and another signal keeps the trace.
    let url = format!("nbd+unix:///os?socket={socket_s}");
    let copy = lab.path("os.copy");
    let convert = |url: &str| {
        let out = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", url])
            .arg(&copy)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(same_bytes(&copy, &lab.disk("a", "os")));
    };
    convert(&url);
    signal(&server, rustix::process::Signal::USR1);
    signal(&server, rustix::process::Signal::INT);
    assert!(ends_within(&mut server).success());
    assert_eq!(std::fs::read_to_string(&trace).unwrap(), recorded);

    // The next server follows it, and serves the same bytes.
    let (mut server, said, _out) = serve();
    assert!(
        said.contains(
            "fetching 4 chunks ahead of the guest, in the order an earlier boot read them"
        ),
        "{said}"
    );
    boot();
    convert(&url);
    signal(&server, rustix::process::Signal::INT);
    assert!(ends_within(&mut server).success());

    // A trace that does not parse is said and not followed; the disk is served all the same.
    std::fs::write(&trace, "{\"disks\": [").unwrap();
    let (mut server, said, _out) = serve();
    assert!(!said.contains("fetching"), "{said}");
    convert(&url);
    signal(&server, rustix::process::Signal::INT);
    ends_within(&mut server);
    let out = server.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not a boot trace") && stderr.contains("not followed"),
        "{stderr}"
    );
}

/// A group's `max_pause` is the shortest its VMs' policies set, longer than the default too (a
/// disk copied whole at the cut on a file system without reflinks needs it), and the default
/// (10 s) only where no policy sets one.
#[test]
fn a_policy_sets_the_pause_its_groups_may_take_longer_or_shorter_than_the_default() {
    let lab = Lab::new(
        &[("a", &[("d", 4096)]), ("b", &[("d", 4096)])],
        &[("ab", &["a", "b"])],
    );
    let pause = |edit: &dyn Fn(String) -> String| {
        let path = lab.path("lifeboat.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(text.clone())).unwrap();
        let p = lab.inventory_groups()[0].max_pause;
        std::fs::write(&path, text).unwrap();
        p
    };
    assert_eq!(pause(&|t| t), Duration::from_secs(10));
    let longer = |t: String| t.replacen("[policies.p]\n", "[policies.p]\nmax_pause = \"5m\"\n", 1);
    assert_eq!(pause(&longer), Duration::from_secs(300));
    // Another policy for `b`, with the shorter pause: the group takes that one.
    let mixed = |t: String| {
        longer(t).replacen(
            "[vms.b]\nsite = \"east\"\npolicy = \"p\"",
            "[vms.b]\nsite = \"east\"\npolicy = \"q\"",
            1,
        ) + "\n[policies.q]\ncrash_interval = \"10s\"\nretention = \"1h\"\nrpo_threshold = \"1m\"\nmax_pause = \"2s\"\n"
    };
    assert_eq!(pause(&mixed), Duration::from_secs(2));
}
