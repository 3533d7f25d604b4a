//! The replication commands: `replicate`, `points list`, `restore`, `verify`, `gc`. Each loads
//! the inventory, opens the sites' stores, calls the engine and renders what it did.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use lifeboat_replication::export::trace::BootTrace;
use lifeboat_replication::gc::GcOptions;
use lifeboat_replication::{Error, GroupSpec, Progress, Repository, Store, points};

use crate::exit_codes;

/// A loaded inventory: its groups and how to open its sites.
pub struct Context {
    config: Arc<lifeboat_loader::Resolved>,
    pub json: bool,
    pub progress: bool,
}

/// Loads and checks the inventory; on errors, renders them and returns the exit code.
pub fn load(
    config: &Path,
    json: bool,
    progress: bool,
    io: &mut crate::Io<'_>,
) -> Result<Context, u8> {
    let loaded = crate::load::load(config, None, json, io)?;
    Ok(Context {
        config: loaded.config,
        json,
        progress,
    })
}

impl Context {
    /// A site's store, as the repository (fsync on) or as a source's cache (no fsync: see
    /// `Store::open_cache`).
    fn store(&self, name: &str, cache: bool) -> Result<Store, Error> {
        let site = self
            .config
            .inventory
            .sites
            .get(name)
            .ok_or_else(|| Error::failed(format!("unknown site `{name}`")))?;
        if cache {
            Store::open_cache(&site.store.value, &self.config.base)
        } else {
            Store::open(&site.store.value, &self.config.base)
        }
    }

    fn site(&self, name: &str) -> Result<Store, Error> {
        self.store(name, false)
    }

    /// The group that holds `vm`.
    fn group_of(&self, vm: &str) -> Result<&GroupSpec, Error> {
        self.config
            .groups
            .iter()
            .find(|g| g.vms.iter().any(|v| v.name == vm))
            .ok_or_else(|| {
                let known: Vec<&str> = self.config.inventory.vms.names().collect();
                Error::failed(format!(
                    "no VM `{vm}` in the inventory (VMs: {})",
                    known.join(", ")
                ))
            })
    }

    /// Where `group` runs now and which way it replicates, for people.
    fn placement_line(&self, group: &GroupSpec) -> String {
        match self.config.placements.get(&group.name) {
            None => format!(
                "runs at {} (home), replicating to {}",
                group.source_site, group.target_site
            ),
            Some(p) => format!(
                "runs at {}{}{}",
                p.site,
                p.run
                    .as_ref()
                    .map_or(String::new(), |r| format!(" (booted by run {r})")),
                match &p.replicate_to {
                    Some(to) => format!(", replicating to {to}"),
                    None => ", NOT PROTECTED (`lifeboat reprotect` turns it round)".into(),
                }
            ),
        }
    }

    /// Sites that hold a repository: every `replicate_to`.
    fn target_sites(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .config
            .groups
            .iter()
            .map(|g| g.target_site.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Prints an engine error and returns its exit code.
pub fn fail(e: &Error, io: &mut crate::Io<'_>) -> u8 {
    let _ = writeln!(io.stderr, "error: {e}");
    lifeboat_orchestrator::error::replication_exit_code(e)
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    crate::runtime().map_err(|e| Error::io("cannot start the async runtime", e))
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn begin(&self, what: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(what.to_string());
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn end(&self) {
        self.0.finish_and_clear();
    }
}

fn bar(ctx: &Context) -> Option<Arc<dyn Progress>> {
    if !ctx.progress {
        return None;
    }
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    Some(Arc::new(Bar(pb)))
}

pub(crate) fn mib(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `lifeboat replicate [VM…]`: one cycle of each group that holds one of the VMs (all groups
/// when none is named).
/// The groups of `vms` (every group when none is named).
pub fn chosen_groups<'a>(ctx: &'a Context, vms: &[String]) -> Result<Vec<&'a GroupSpec>, Error> {
    let mut chosen: Vec<&GroupSpec> = Vec::new();
    for vm in vms {
        let g = ctx.group_of(vm)?;
        if !chosen.iter().any(|c| c.name == g.name) {
            chosen.push(g);
        }
    }
    if vms.is_empty() {
        chosen = ctx.config.groups.iter().collect();
    }
    Ok(chosen)
}

/// One line for people of a committed cycle, and its notes.
pub fn print_cycle(r: &lifeboat_replication::CycleReport, io: &mut crate::Io<'_>) {
    for note in &r.notes {
        let _ = writeln!(io.stderr, "note: {note}");
    }
    let _ = writeln!(
        io.stdout,
        "{}: point {} ({}) captured {} — {} of {} read, {} changed, {} new, {} shipped in {:.2}s{}",
        r.group,
        r.seq,
        r.kind.as_str(),
        r.captured_at,
        mib(r.read_bytes),
        mib(r.disk_bytes),
        mib(r.changed_bytes),
        mib(r.new_bytes),
        mib(r.shipped_bytes),
        r.seconds,
        r.paused_seconds
            .map(|h| format!(", writers paused {:.1} ms", h * 1000.0))
            .unwrap_or_default()
    );
}

pub fn replicate(
    ctx: &Context,
    vms: &[String],
    ask: lifeboat_compute::site::Ask,
    io: &mut crate::Io<'_>,
) -> u8 {
    let chosen = match chosen_groups(ctx, vms) {
        Ok(c) => c,
        Err(e) => return fail(&e, io),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, io),
    };
    let mut reports = Vec::new();
    let mut code = exit_codes::OK;
    let driver: Arc<dyn lifeboat_compute::driver::Compute> = lifeboat_compute::Driver::new();
    let holder = lifeboat_replication::lease::Holder::new("replicate");
    for group in chosen {
        if !group.protected {
            let _ = writeln!(
                io.stderr,
                "note: group `{}` is not replicated: it {}",
                group.name,
                ctx.placement_line(group)
            );
            if !vms.is_empty() {
                code = code.max(exit_codes::FAILED);
            }
            continue;
        }
        // The source site's one cycle: the group's running VMs are held still for the cut
        // (paused under a guardian, at most the policy's max_pause), so the point is consistent.
        // One writer per group: refused (exit 8) while a daemon holds the group's lease.
        let result = rt.block_on(lifeboat_compute::site::cycle_once(
            &ctx.config.inventory,
            &ctx.config.base,
            driver.clone(),
            group,
            ask,
            bar(ctx),
            &holder,
        ));
        match result {
            Ok(r) => {
                if !ctx.json {
                    print_cycle(&r, io);
                }
                reports.push(r);
            }
            Err(e) => {
                let e = e.context(format!("group `{}`", group.name));
                let c = fail(&e, io);
                // Keep going with the other groups; report the most serious failure.
                code = code.max(c);
            }
        }
    }
    if ctx.json {
        crate::print_json(io, &reports);
    }
    code
}

/// `lifeboat status`: every protected VM and group. From the daemon when one runs on this
/// state folder (with next cycle, last error and the config's reload state), else computed from
/// the repositories. Exits `RPO_EXCEEDED` when any VM is over its threshold or has no point yet.
pub fn status(ctx: &Context, state: &Path, io: &mut crate::Io<'_>) -> u8 {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, io),
    };
    let socket = lifeboat_api::client::socket_path(state);
    let doc = match rt.block_on(lifeboat_api::client::status(&socket)) {
        Some(Ok(doc)) => doc,
        answered => {
            if let Some(Err(e)) = answered {
                let _ = writeln!(io.stderr, "warning: {e}; computing from the repositories");
            }
            rt.block_on(lifeboat_orchestrator::status::from_repositories(
                &ctx.config.inventory,
                &ctx.config.base,
                &ctx.config.groups,
            ))
        }
    };
    let mut code = exit_codes::OK;
    if doc
        .groups
        .iter()
        .any(|g| g.state == lifeboat_api::status::GroupState::Unknown && g.last_error.is_some())
    {
        code = exit_codes::FAILED;
    }
    if doc.rpo_exceeded() {
        code = code.max(exit_codes::RPO_EXCEEDED);
    }
    if ctx.json {
        crate::print_json(io, &doc);
        return code;
    }
    let _ = writeln!(
        io.stdout,
        "{:<12} {:<12} {:<14} {:<10} {:>8} {:>10}  {:<36} STATE",
        "VM", "GROUP", "SITE", "POLICY", "RPO", "THRESHOLD", "LAST POINT"
    );
    for v in &doc.vms {
        let rpo = v.rpo.seconds.map_or_else(|| "-".to_string(), human_secs);
        let last = v.last_point.as_ref().map_or_else(
            || "none yet".to_string(),
            |p| format!("{} ({}) {}", p.id, p.kind, p.captured_at),
        );
        let protected = doc
            .groups
            .iter()
            .find(|g| g.name == v.group)
            .is_none_or(|g| g.protected);
        let state = match (&v.last_point, v.rpo.ok) {
            _ if !protected => "NOT PROTECTED (lifeboat reprotect)",
            (None, _) => "NO POINT",
            (Some(_), true) => "ok",
            (Some(_), false) => "EXCEEDED",
        };
        let _ = writeln!(
            io.stdout,
            "{:<12} {:<12} {:<14} {:<10} {:>8} {:>10}  {:<36} {state}",
            v.name,
            v.group,
            format!("{}→{}", v.site, v.target_site),
            v.policy,
            rpo,
            human_secs(v.rpo.threshold_seconds),
            last
        );
    }
    for d in &doc.unprotected_domains {
        let _ = writeln!(
            io.stdout,
            "not protected: domain {} on {} (site {}, {}); `lifeboat discover {} --write --vm {}` protects it",
            d.domain, d.host, d.site, d.state, d.site, d.domain
        );
    }
    for v in doc.vms.iter().filter(|v| !v.damaged_points.is_empty()) {
        let _ = writeln!(
            io.stderr,
            "note: {}: point(s) {:?} of group `{}` are damaged (see `lifeboat verify`)",
            v.name, v.damaged_points, v.group
        );
    }
    let Some(daemon) = &doc.daemon else {
        for g in doc.groups.iter().filter(|g| g.last_error.is_some()) {
            let _ = writeln!(
                io.stderr,
                "error: group `{}`: {}",
                g.name,
                g.last_error.as_deref().unwrap_or_default()
            );
        }
        let _ = writeln!(
            io.stderr,
            "(computed from the repositories: no daemon runs with state {}; next cycle and last error come from `lifeboat daemon`)",
            state.display()
        );
        return code;
    };
    let _ = writeln!(io.stdout);
    let _ = writeln!(
        io.stdout,
        "{:<12} {:<9} {:>10} {:<22} LAST ERROR",
        "GROUP", "STATE", "INTERVAL", "NEXT CYCLE"
    );
    for g in &doc.groups {
        let error = match (&g.last_error, &g.writer) {
            (Some(e), _) => format!("{e} ({} failure(s) in a row)", g.failures),
            (None, Some(w)) => w.clone(),
            (None, None) => "-".into(),
        };
        let _ = writeln!(
            io.stdout,
            "{:<12} {:<9} {:>10} {:<22} {error}",
            g.name,
            g.state,
            human_secs(g.crash_interval_seconds),
            g.next_cycle_at.as_deref().unwrap_or("-"),
        );
    }
    let c = &daemon.config;
    let reload = match &c.last_reload {
        None => "no reload yet".to_string(),
        Some(r) if r.applied => format!("last reload applied at {} ({})", r.at, r.trigger),
        Some(r) => format!(
            "LAST RELOAD REJECTED at {} ({}); the config loaded at {} keeps running",
            r.at, r.trigger, c.loaded_at
        ),
    };
    let _ = writeln!(
        io.stdout,
        "\ndaemon pid {} (since {}): config generation {}, {} plan(s); {reload}",
        daemon.pid,
        daemon.started_at,
        c.generation,
        c.plans.len()
    );
    if let Some(r) = c.last_reload.as_ref().filter(|r| !r.applied) {
        for d in &r.diagnostics {
            let _ = writeln!(io.stdout, "  {d}");
        }
    }
    code
}

/// `lifeboat points list VM --output json` (see docs/reference/json.md).
#[derive(Debug, serde::Serialize)]
struct PointsDoc<'a> {
    vm: &'a str,
    group: &'a str,
    target_site: &'a str,
    /// Where the group runs now (absent: where the inventory says, never moved).
    #[serde(skip_serializing_if = "Option::is_none")]
    placement: Option<&'a lifeboat_replication::placement::Placement>,
    rpo: &'a points::Rpo,
    /// Intact points, newest first.
    points: Vec<PointLine<'a>>,
    /// Points whose manifest is damaged.
    damaged: &'a [lifeboat_replication::repo::DamagedPoint],
}

#[derive(Debug, serde::Serialize)]
struct PointLine<'a> {
    id: u64,
    kind: &'a str,
    captured_at: &'a str,
    committed_at: &'a str,
    epoch: u64,
    pinned: Vec<String>,
    disks: Vec<DiskLine<'a>>,
    /// What the point itself records (`unsafe-live-read: …`).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    notes: &'a [String],
}

#[derive(Debug, serde::Serialize)]
struct DiskLine<'a> {
    name: &'a str,
    size: u64,
    chunk_size: u32,
    changed_bytes: u64,
}

/// One repository's result, for commands that work on every target site.
#[derive(Debug, serde::Serialize)]
struct SiteReport<T> {
    site: String,
    report: T,
}

/// `lifeboat points list VM`.
pub fn points_list(ctx: &Context, vm: &str, io: &mut crate::Io<'_>) -> u8 {
    let group = match ctx.group_of(vm) {
        Ok(g) => g,
        Err(e) => return fail(&e, io),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, io),
    };
    let result = rt.block_on(async {
        let target = ctx.site(&group.target_site)?;
        let Some(repo) = Repository::open_if_any(&target).await? else {
            return Ok((Vec::new(), Vec::new(), Default::default()));
        };
        let (points, damaged) = repo.points_and_damaged(&group.name).await?;
        let pins = repo.pins(&group.name).await?;
        Ok((points, damaged, pins))
    });
    let (points, damaged, pins) = match result {
        Ok(p) => p,
        Err(e) => return fail(&e, io),
    };
    let now = SystemTime::now();
    // The VM's own policy sets its threshold; the group's is the strictest of its VMs'.
    let threshold = ctx
        .config
        .inventory
        .vms
        .get(vm)
        .and_then(|v| ctx.config.inventory.policies.get(&v.policy))
        .map_or(group.rpo_threshold, |p| p.rpo_threshold.value.0);
    let rpo = points::rpo(points.first(), threshold, now);
    if ctx.json {
        let doc = PointsDoc {
            vm,
            group: &group.name,
            target_site: &group.target_site,
            placement: ctx.config.placements.get(&group.name),
            rpo: &rpo,
            points: points
                .iter()
                .map(|m| PointLine {
                    id: m.seq,
                    kind: m.kind.as_str(),
                    captured_at: &m.captured_at,
                    committed_at: &m.committed_at,
                    epoch: m.epoch,
                    pinned: pins.get(&m.seq).cloned().unwrap_or_default(),
                    disks: m
                        .vms
                        .iter()
                        .filter(|v| v.name == vm)
                        .flat_map(|v| &v.disks)
                        .map(|d| DiskLine {
                            name: &d.name,
                            size: d.size,
                            chunk_size: d.chunk_size,
                            changed_bytes: d.changed_bytes,
                        })
                        .collect(),
                    notes: &m.notes,
                })
                .collect(),
            damaged: &damaged,
        };
        crate::print_json(io, &doc);
        return exit_codes::OK;
    }
    let _ = writeln!(
        io.stdout,
        "VM {vm} — group {}, points at site {}; it {}",
        group.name,
        group.target_site,
        ctx.placement_line(group)
    );
    let _ = match rpo.seconds {
        Some(s) => writeln!(
            io.stdout,
            "RPO {} (threshold {}): {}",
            human_secs(s),
            human_secs(rpo.threshold_seconds),
            if rpo.ok { "ok" } else { "EXCEEDED" }
        ),
        None => writeln!(
            io.stdout,
            "no recovery points yet: run `lifeboat replicate {vm}`"
        ),
    };
    for d in &damaged {
        let _ = writeln!(
            io.stdout,
            "point {} is DAMAGED and cannot be restored ({}); `lifeboat verify` names every damaged object",
            d.seq, d.error
        );
    }
    if points.is_empty() {
        return exit_codes::OK;
    }
    let _ = writeln!(
        io.stdout,
        "{:>6}  {:<5}  {:<24}  {:>10}  {:>12}  PINNED",
        "ID", "KIND", "CAPTURED", "AGE", "CHANGED"
    );
    for m in &points {
        let changed: u64 = m
            .vms
            .iter()
            .filter(|v| v.name == vm)
            .flat_map(|v| &v.disks)
            .map(|d| d.changed_bytes)
            .sum();
        let age = (lifeboat_replication::clock::unix_ms(now).saturating_sub(m.captured_unix_ms))
            as f64
            / 1000.0;
        let pinned = pins.get(&m.seq).map(|r| r.join(",")).unwrap_or_default();
        let _ = writeln!(
            io.stdout,
            "{:>6}  {:<5}  {:<24}  {:>10}  {:>12}  {}",
            m.seq,
            m.kind.as_str(),
            m.captured_at,
            human_secs(age),
            mib(changed),
            pinned
        );
        for note in &m.notes {
            let _ = writeln!(io.stdout, "        note: {note}");
        }
    }
    exit_codes::OK
}

fn human_secs(s: f64) -> String {
    humantime::format_duration(Duration::from_secs(s.max(0.0).round() as u64)).to_string()
}

/// Refuses a restore that would write over something that matters: a disk the inventory names
/// or a file some process has open (a running VM's disk) never, whatever the flags; any other
/// existing file unless `force`.
fn check_restore_target(
    ctx: &Context,
    out: &Path,
    point: &lifeboat_replication::Manifest,
    vm: &str,
    force: bool,
) -> Result<(), Error> {
    let names: Vec<&str> = point
        .vms
        .iter()
        .filter(|v| v.name == vm)
        .flat_map(|v| v.disks.iter().map(|d| d.name.as_str()))
        .collect();
    let inventory_disks: Vec<(String, PathBuf)> = ctx
        .config
        .inventory
        .vms
        .iter()
        .flat_map(|(name, v)| {
            v.disks.iter().map(move |(disk, path)| {
                (format!("{name}/{disk}"), ctx.config.base.join(&path.value))
            })
        })
        .collect();
    // One walk of every process's open files, once an image the restore would write exists.
    let mut open_files = None;
    for name in names {
        let path = out.join(format!("{name}.img"));
        if !path.exists() {
            continue;
        }
        let same = |other: &Path| same_file(&path, other);
        if let Some((disk, _)) = inventory_disks.iter().find(|(_, p)| same(p)) {
            return Err(Error::failed(format!(
                "{} is the disk `{disk}` of the inventory: a restore never writes over a protected disk (restore to another folder)",
                path.display()
            )));
        }
        let open_files = open_files.get_or_insert_with(lifeboat_compute::procfs::OpenFiles::walk);
        if let Some(pid) = open_files.holders(&path).first() {
            return Err(Error::failed(format!(
                "{} is open in process {pid} (a running VM's disk?): a restore never writes over a disk in use",
                path.display()
            )));
        }
        if !force {
            return Err(Error::failed(format!(
                "{} exists: pass --force to replace it, or restore to another folder",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Whether two paths name one file (same device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// `lifeboat restore VM --point ID --out DIR [--force]`.
pub fn restore(
    ctx: &Context,
    vm: &str,
    point: &str,
    out: &Path,
    force: bool,
    io: &mut crate::Io<'_>,
) -> u8 {
    let group = match ctx.group_of(vm) {
        Ok(g) => g,
        Err(e) => return fail(&e, io),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, io),
    };
    let progress = bar(ctx);
    let result = rt.block_on(async {
        let target = ctx.site(&group.target_site)?;
        let repo = Repository::open(&target).await?;
        let m = points::select(&repo, &group.name, point).await?;
        check_restore_target(ctx, out, &m, vm, force)?;
        lifeboat_replication::restore::restore(&repo, &m, vm, out, progress).await
    });
    match result {
        Ok(r) => {
            if ctx.json {
                crate::print_json(io, &r);
            } else {
                for d in &r.disks {
                    let _ = writeln!(
                        io.stdout,
                        "{}: {vm}/{} at point {} ({}, {} of data)",
                        d.path.display(),
                        d.name,
                        r.seq,
                        mib(d.size),
                        mib(d.written)
                    );
                }
                let _ = writeln!(
                    io.stdout,
                    "restored {} disk(s) of {vm}, every chunk verified, in {:.2}s",
                    r.disks.len(),
                    r.seconds
                );
            }
            exit_codes::OK
        }
        Err(e) => fail(&e, io),
    }
}

/// `lifeboat export VM --point ID --socket PATH [--boot-trace FILE]`: serves the point's disks
/// over NBD until interrupted; with a boot trace, follows it and records this boot's reads into
/// it on SIGUSR1.
pub fn export(
    ctx: &Context,
    vm: &str,
    point: &str,
    socket: &Path,
    site: Option<&str>,
    boot_trace: Option<&Path>,
    io: &mut crate::Io<'_>,
) -> u8 {
    let group = match ctx.group_of(vm) {
        Ok(g) => g,
        Err(e) => return fail(&e, io),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, io),
    };
    // Before anything listens: whoever runs the server may say "the boot is over" once the
    // socket is up, and SIGUSR1 unhandled would end the server. One listener each for the whole
    // serving loop: one made anew each time round would miss a signal that came between two
    // (seen: SIGUSR1 then SIGINT at once left the server serving).
    use tokio::signal::unix::{SignalKind, signal};
    let listeners = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::user_defined1())?,
            signal(SignalKind::interrupt())?,
        ))
    });
    let (mut boot_over, mut interrupt) = match listeners {
        Ok(l) => l,
        Err(e) => {
            return fail(&Error::failed(format!("cannot handle signals: {e}")), io);
        }
    };
    let opened = rt.block_on(async {
        let target = ctx.site(site.unwrap_or(&group.target_site))?;
        let repo = Arc::new(Repository::open(&target).await?);
        let remote = target.is_remote();
        let m = points::select(&repo, &group.name, point).await?;
        let disks = lifeboat_replication::export::DiskExport::of_point(repo, &m, vm).await?;
        Ok::<_, Error>((m.seq, disks, remote))
    });
    let (seq, disks, remote) = match opened {
        Ok(o) => o,
        Err(e) => return fail(&e, io),
    };
    let socket = std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
    for d in &disks {
        let _ = writeln!(
            io.stdout,
            "{vm}/{} at point {seq} ({}): nbd+unix:///{}?socket={}",
            d.name,
            mib(d.size),
            d.name,
            socket.display()
        );
    }
    if let Some(path) = boot_trace {
        // A trace is a hint: one that cannot be read is said and served without. It is followed
        // where each chunk is a round trip; from a local folder a fetch costs CPU, not waiting,
        // and fetching ahead of the guest measured slower there (the guest wants that CPU).
        let followed = rt.block_on(async {
            match BootTrace::load(path) {
                Ok(Some(_)) if !remote => {
                    let _ = writeln!(
                        io.stdout,
                        "the boot trace in {} is not followed: the repository is a local folder (reads ahead of the guest instead)",
                        path.display()
                    );
                    0
                }
                Ok(Some(t)) => lifeboat_replication::export::follow(&disks, &t),
                Ok(None) => 0,
                Err(e) => {
                    let _ = writeln!(io.stderr, "warning: {e}: not followed");
                    0
                }
            }
        });
        if followed > 0 {
            let _ = writeln!(
                io.stdout,
                "fetching {followed} chunks ahead of the guest, in the order an earlier boot read them ({})",
                path.display()
            );
        }
        for d in &disks {
            d.record();
        }
    }
    let _ = writeln!(io.stdout, "serving, read-only, until interrupted");
    let _ = io.stdout.flush();
    let served = rt.block_on(async {
        let serving = lifeboat_replication::export::serve(&socket, disks.clone());
        tokio::pin!(serving);
        loop {
            tokio::select! {
                r = &mut serving => return r,
                _ = interrupt.recv() => return Ok(()),
                _ = boot_over.recv() => {
                    let Some(path) = boot_trace else { continue };
                    let t = lifeboat_replication::export::recorded(&disks);
                    // Only the first signal finds a recording; an empty one keeps the last.
                    if t.chunks() == 0 {
                        continue;
                    }
                    match t.save(path) {
                        Ok(()) => {
                            let _ = writeln!(
                                io.stdout,
                                "the boot read {} chunks first: their order is in {}",
                                t.chunks(),
                                path.display()
                            );
                        }
                        Err(e) => {
                            let _ = writeln!(io.stderr, "warning: {e}");
                        }
                    }
                    let _ = io.stdout.flush();
                }
            }
        }
    });
    // The server's own socket goes; anything else at that path was never touched.
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&socket);
    }
    match served {
        Ok(()) => exit_codes::OK,
        Err(e) => fail(&e, io),
    }
}

/// Runs `op` on every repository the inventory replicates to; `render` prints each result for
/// people and returns its exit code. With `--output json`, prints `[{site, report}]` instead.
fn per_target<T: serde::Serialize>(
    ctx: &Context,
    io: &mut crate::Io<'_>,
    op: impl AsyncFn(&str, Store) -> Result<T, Error>,
    render: impl Fn(&str, &T, &mut crate::Io<'_>) -> u8,
) -> u8 {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, io),
    };
    let mut code = exit_codes::OK;
    let mut reports = Vec::new();
    for site in ctx.target_sites() {
        let result = rt.block_on(async {
            let target = ctx.site(&site)?;
            op(&site, target).await
        });
        match result {
            Ok(r) => {
                let c = render(&site, &r, io);
                code = code.max(c);
                reports.push(SiteReport { site, report: r });
            }
            Err(e) => code = code.max(fail(&e.context(format!("site `{site}`")), io)),
        }
    }
    if ctx.json {
        crate::print_json(io, &reports);
    }
    code
}

/// `lifeboat verify [--full]`: every repository the inventory replicates to.
pub fn verify(ctx: &Context, full: bool, io: &mut crate::Io<'_>) -> u8 {
    let op =
        async |_: &str, target: Store| lifeboat_replication::verify::verify(&target, full).await;
    per_target(ctx, io, op, |site, r, io| {
        if !ctx.json {
            let rehashed = if full {
                format!(
                    ", {} blobs re-hashed ({})",
                    r.blobs_checked,
                    mib(r.bytes_checked)
                )
            } else {
                String::new()
            };
            let verdict = if r.problems.is_empty() {
                "ok".to_string()
            } else {
                format!("{} damaged", r.problems.len())
            };
            let _ = writeln!(
                io.stdout,
                "site {site}: {} points, {} packs, {} index files{rehashed}: {verdict}",
                r.points, r.packs, r.index_files
            );
            for p in &r.problems {
                let _ = writeln!(io.stdout, "  damaged: {}: {}", p.object, p.what);
            }
        }
        if r.problems.is_empty() {
            exit_codes::OK
        } else {
            exit_codes::DAMAGED
        }
    })
}

/// `lifeboat store check URL`: whether the store's put-if-absent keeps one writer per group, and
/// its clock against this host's.
pub fn store_check(url: &str, json: bool, io: &mut crate::Io<'_>) -> u8 {
    let cwd = std::env::current_dir().unwrap_or_default();
    let probed = Store::open(url, &cwd)
        .and_then(|store| runtime()?.block_on(lifeboat_replication::probe::probe(&store)));
    let p = match probed {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: store `{url}`: {e}");
            return lifeboat_orchestrator::error::replication_exit_code(&e);
        }
    };
    if json {
        let doc = serde_json::json!({
            "store": url,
            "racers": p.racers,
            "winners": p.winners,
            "conditional_create_holds": p.conditional_create_holds(),
            "clock_skew_ms": p.skew_ms,
        });
        let _ = writeln!(io.stdout, "{doc}");
    } else {
        let verdict = if p.conditional_create_holds() {
            "holds"
        } else {
            "does NOT hold"
        };
        let _ = writeln!(
            io.stdout,
            "store {url}: put-if-absent {verdict} ({} of {} concurrent creates of one object won)",
            p.winners, p.racers
        );
        match p.skew_ms {
            Some(ms) => {
                let _ = writeln!(
                    io.stdout,
                    "clock: {:+.1} s against this host (leases expire by wall clock: keep it well under their TTL)",
                    ms as f64 / 1000.0
                );
            }
            None => {
                let _ = writeln!(io.stdout, "clock: the store reports no modification times");
            }
        }
    }
    if p.conditional_create_holds() {
        exit_codes::OK
    } else {
        exit_codes::FAILED
    }
}

/// `lifeboat gc`: retention, then garbage collection, in every repository.
pub fn gc(ctx: &Context, grace: Option<Duration>, io: &mut crate::Io<'_>) -> u8 {
    let opts = GcOptions {
        grace,
        ..GcOptions::default()
    };
    let op = async |site: &str, target: Store| {
        let groups: Vec<GroupSpec> = ctx
            .config
            .groups
            .iter()
            .filter(|g| g.target_site == site)
            .cloned()
            .collect();
        lifeboat_replication::gc::gc(&target, &groups, &opts).await
    };
    per_target(ctx, io, op, |site, r, io| {
        if !ctx.json {
            let _ = writeln!(
                io.stdout,
                "site {site}: {} points expired, {} kept; {} packs: {} repacked, {} condemned, {} deleted ({}); {} index files merged",
                r.expired.len(),
                r.points_kept,
                r.packs_total,
                r.packs_repacked,
                r.packs_condemned,
                r.packs_deleted,
                mib(r.bytes_deleted),
                r.index_files_merged
            );
            for g in &r.unknown_groups {
                let _ = writeln!(
                    io.stderr,
                    "note: group `{g}` is not in the inventory; all its points were kept"
                );
            }
        }
        exit_codes::OK
    })
}
