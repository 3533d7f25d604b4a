//! The `lifeboat` command line. Parses arguments, calls the engine crates, and renders results;
//! the only layer that knows about terminals.

mod daemon;
mod demo;
mod discover;
pub use lifeboat_api::exit_codes;
mod load;
mod orchestration;
mod plugin;
mod remote;
mod replication;
pub mod report;
mod simulate;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lifeboat_orchestrator::operations::FailoverRequest;

use crate::report::Format;

#[derive(Debug, Parser)]
#[command(
    name = "lifeboat",
    version,
    about = "Disaster recovery for VMs, with plans as code."
)]
#[command(after_help = exit_codes::after_help())]
struct Cli {
    /// The inventory file.
    #[arg(
        long,
        global = true,
        env = "LIFEBOAT_CONFIG",
        default_value = "lifeboat.toml"
    )]
    config: PathBuf,

    /// Where runs are kept (the run journal, restored disks, VM logs); default
    /// `.lifeboat/state` beside the inventory.
    #[arg(long, global = true, env = "LIFEBOAT_STATE")]
    state: Option<PathBuf>,

    /// Output for people or for tools.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    output: Output,

    /// Colour in human output.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,

    /// More log detail on stderr: -v info, -vv debug, -vvv trace (default: warnings). `RUST_LOG`
    /// (e.g. `lifeboat_replication=debug`) overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// How log lines are written: for people, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with recovery plans.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Run one replication cycle now: capture, ship and commit a recovery point.
    Replicate {
        /// VMs whose groups to replicate (default: every protected VM).
        vms: Vec<String>,
        /// Take an app-consistent point now (every VM of the group needs a quiesce hook).
        #[arg(long, conflicts_with = "crash")]
        app: bool,
        /// Take a crash-consistent point even if an app-consistent one is due.
        #[arg(long)]
        crash: bool,
        /// Read every disk in full, even where a QEMU VM's dirty bitmap says what changed
        /// (to check a bitmap's points against a full read: they are identical).
        #[arg(long)]
        full_scan: bool,
    },
    /// Protect every VM continuously: a point of each consistency group every `crash_interval`,
    /// until SIGTERM or SIGINT.
    Daemon(daemon::DaemonOptions),
    /// The domains on a `libvirt` site's hosts: disks, NICs, and which VM protects each.
    /// With --write, appends inventory stanzas for the domains named by --vm.
    Discover {
        /// A site whose compute driver is `libvirt`.
        site: String,
        /// Append a `[vms.NAME]` stanza for each domain named by --vm (NAME: the domain's name
        /// made a valid VM name), then validate the inventory (left as it was if it fails).
        #[arg(long, requires = "vm")]
        write: bool,
        /// A domain to protect (repeatable), with --write.
        #[arg(long = "vm", value_name = "DOMAIN")]
        vm: Vec<String>,
        /// The policy of the new VMs (default: the inventory's only policy).
        #[arg(long)]
        policy: Option<String>,
    },
    /// Every protected VM: where it runs, its policy, RPO against the threshold, the last point.
    /// Exits 7 when any RPO is over its threshold.
    Status,
    /// Work with recovery points.
    #[command(subcommand)]
    Points(PointsCommand),
    /// Check a store before trusting it with leases and repositories.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Write a VM's disks, as a point holds them, to raw images in a folder.
    Restore {
        vm: String,
        /// A point id from `points list`, `latest` or `latest-app-consistent`.
        #[arg(long, default_value = "latest")]
        point: String,
        /// The folder for the images (`<disk>.img`).
        #[arg(long)]
        out: PathBuf,
        /// Replace images already in the folder. A disk the inventory names, or one a process
        /// has open, is never replaced.
        #[arg(long)]
        force: bool,
    },
    /// Serve a VM's disks, as a point holds them, over NBD (read-only, from the repository,
    /// nothing restored first) on a Unix socket, until interrupted: one export per disk, named
    /// as the disk (`nbd+unix:///DISK?socket=PATH`).
    Export {
        vm: String,
        /// A point id from `points list`, `latest` or `latest-app-consistent`.
        #[arg(long, default_value = "latest")]
        point: String,
        /// The Unix socket to serve on (made; one left by an earlier server is replaced).
        #[arg(long)]
        socket: PathBuf,
        /// The site whose repository holds the point (default: the one the VM's group
        /// replicates to).
        #[arg(long)]
        site: Option<String>,
        /// Follow the boot this file traced (its chunks fetched ahead of the guest, in the
        /// order an earlier boot read them; from a repository on S3 or Azure), and on SIGUSR1
        /// write this boot's reads into it: what an instant boot's server is started with.
        #[arg(long, value_name = "FILE")]
        boot_trace: Option<PathBuf>,
    },
    /// Check every repository: objects exist and parse; with --full, every chunk re-hashed.
    Verify {
        #[arg(long)]
        full: bool,
    },
    /// Apply retention and remove data no kept point uses.
    Gc {
        /// How long unreferenced data is spared (default: the repository's, 1h). `0s` deletes
        /// at once: only when no replication cycle is running.
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
    },
    /// Boot a plan's VMs at the target: a drill (--test), or a real failover.
    #[command(group(clap::ArgGroup::new("kind").required(true).args(["test", "planned", "unplanned"])))]
    Failover {
        /// A plan file, or the name of one in `plans/`.
        plan: String,
        /// A drill: clones of the point in the test network; replication goes on.
        #[arg(long)]
        test: bool,
        /// The source is up: stop its VMs, replicate once more, fail over with no data loss.
        #[arg(long)]
        planned: bool,
        /// The source is gone: fail over from a recovery point.
        #[arg(long)]
        unplanned: bool,
        /// `latest`, `latest-processed`, `latest-app-consistent`, a point number, or
        /// `GROUP/NUMBER` (default: the plan's `recovery_point`).
        #[arg(long)]
        point: Option<String>,
        /// With --unplanned: go ahead although a source VM still answers its health probe.
        #[arg(long, conflicts_with_all = ["test", "planned"])]
        force: bool,
        /// Boot the target's VMs straight from the repository, their disks hydrating behind
        /// them (the default at `qemu` targets and `libvirt` ones whose hosts are this machine,
        /// unless the plan says `instant = false`).
        #[arg(long, conflicts_with = "no_instant")]
        instant: bool,
        /// Restore every disk before its VM boots.
        #[arg(long)]
        no_instant: bool,
    },
    /// Undo a drill (or a failover not yet committed): undo every step, stop its VMs, delete
    /// their disks, unpin its points.
    Cleanup { plan: String },
    /// Make a failover (or failback) final: the target takes its groups over and the old source
    /// is fenced. The groups then run there unprotected until `reprotect`.
    Commit {
        plan: String,
        /// Refuse, with how far hydration is, instead of waiting for an instant run's disks.
        #[arg(long)]
        no_wait: bool,
    },
    /// After a commit: protect the groups where they run now, replicating back to the plan's
    /// other site. Only what diverged since the failover crosses: the receiving site hashes
    /// the disks it still holds first.
    Reprotect {
        /// A plan file, or the name of one in `plans/`.
        plan: String,
    },
    /// Bring a reprotected plan home: a planned failover of the plan reversed (stop the running
    /// copies, replicate once more, boot at the plan's source from its repository with the
    /// network mapping reversed), running the steps whose `on` includes `failback`. Then
    /// `commit`, and `reprotect` to protect the original direction again.
    Failback {
        /// A plan file, or the name of one in `plans/`.
        plan: String,
        /// A drill of the failback: clones of the reverse direction's point at home, in the
        /// plan's `network.failback_test` network; the copies at the target run on.
        #[arg(long)]
        test: bool,
        /// With --test: `latest`, a point number, or `GROUP/NUMBER` (default: the plan's
        /// `recovery_point`).
        #[arg(long, requires = "test")]
        point: Option<String>,
        /// Boot the VMs straight from the repository (see `failover --instant`).
        #[arg(long, conflicts_with = "no_instant")]
        instant: bool,
        /// Restore every disk before its VM boots.
        #[arg(long)]
        no_instant: bool,
    },
    /// Stop protecting a VM (its group's schedule leaves it out); its points follow retention.
    Disable {
        vm: String,
        /// Also delete the points of its consistency group (once none of the group's VMs is
        /// protected). Asks first, unless --yes.
        #[arg(long)]
        purge: bool,
        /// Do not ask before --purge deletes points.
        #[arg(long, requires = "purge")]
        yes: bool,
    },
    /// Protect a disabled VM again.
    Enable { vm: String },
    /// Approve the approval step a run is waiting on.
    Approve {
        run: String,
        /// Who approves (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Resume a run whose process died, or retry the step it failed on.
    Retry { run: String },
    /// Skip the step a run failed on, and go on with the run.
    Skip { run: String },
    /// Stop a run (a running one stops at its current step); `cleanup` undoes what it did.
    Cancel { run: String },
    /// Runs of plans: what happened, when, with what RPO and RTO.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Reach a drill's copies, which run in a network namespace of their own.
    #[command(subcommand)]
    Drill(DrillCommand),
    /// Work with step components before they are in a plan.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Follow a running daemon's events: cycles, RPO breaches and recoveries, runs and their
    /// steps, approvals waiting, config reloads. Until the daemon stops or Ctrl-C.
    Events {
        /// First the kept events after this id (`0`: every kept one).
        #[arg(long)]
        after: Option<u64>,
        /// Only this run's events.
        #[arg(long)]
        run: Option<String>,
        /// Only this group's events.
        #[arg(long)]
        group: Option<String>,
    },
    /// A whole drill on embedded defaults, in a temporary folder: replicate, test failover,
    /// cleanup, unplanned failover, commit; checks the data at every step.
    Demo {
        /// Keep the demo's folder (printed) instead of deleting it.
        #[arg(long)]
        keep: bool,
        /// Real VMs: the guest in this folder (`contrib/guest/build.sh` builds it) under QEMU
        /// with TCG, instead of processes.
        #[arg(long, value_name = "GUEST_DIR")]
        qemu: Option<PathBuf>,
    },
    /// Print the OpenAPI document of the daemon's API (as `GET /v1/openapi.json` serves it).
    Openapi,
    /// Print a shell completion script (e.g. `lifeboat completions bash > /etc/bash_completion.d/lifeboat`).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff; e.g. `lifeboat man | man -l -`).
    Man,
    /// The demo workload (a stand-in application VM); `lifeboat demo` boots VMs with it.
    #[command(hide = true, disable_help_flag = true)]
    DemoVm {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DrillCommand {
    /// Run a command inside the drill's network namespace (e.g. `lifeboat drill exec erp-3 --
    /// curl http://127.90.1.254:8080/health`); exits with the command's code.
    Exec {
        run: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Every run, newest first.
    List,
    /// One run: timeline, steps with their logs, VMs, points, RPO and RTO.
    Show { run: String },
    /// What a finished run measured (each step's duration), as `plan simulate --profile`
    /// reads it.
    Profile { run: String },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// What a step component says of itself (name, version, capabilities and the grants they
    /// need, its `with` schema) and the sha256 to pin it by.
    Inspect { component: PathBuf },
    /// Run a step once in the sandbox, with no site behind it: its logs, outputs and outcome
    /// (and whether the sandbox had to contain it) before it is in a plan.
    Test {
        component: PathBuf,
        /// The step's `with`: KEY=VALUE (a VALUE that is JSON is that JSON). Repeatable.
        #[arg(long = "with", value_name = "KEY=VALUE")]
        with: Vec<String>,
        /// What its `allow` grants: tcp=ADDR, http=URL, kv=KEY or vms=VM. Repeatable.
        #[arg(long = "allow", value_name = "KIND=VALUE")]
        allow: Vec<String>,
        /// The operation the step is told it runs in.
        #[arg(long, value_enum, default_value_t = TestOperation::Test)]
        operation: TestOperation,
        /// The step's deadline.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TestOperation {
    Test,
    Planned,
    Unplanned,
    Failback,
}

#[derive(Debug, Subcommand)]
enum PointsCommand {
    /// List a VM's recovery points, newest first, with its RPO.
    List { vm: String },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Race concurrent creates of one object (exactly one must win, or leases cannot keep one
    /// writer per group) and read the store's clock against this host's. Exits 4 when more
    /// than one create wins.
    Check {
        /// A store as a site's `store` setting writes it (a path, `file:///…`, `s3://…`,
        /// `az://…`).
        url: String,
    },
}

#[derive(Debug, Subcommand)]
enum PlanCommand {
    /// Check the inventory and plans offline, reporting every problem at once.
    Validate(ValidateArgs),
    /// The run a failover would be, without running it: every step runs in the sandbox with
    /// `dry-run` against a simulated target site (nothing is started, restored or changed), and
    /// the report gives the timeline, the VMs with their addresses and points, the critical path
    /// and the RTO predicted from the plan's earlier runs. Exits 3 when a step would fail (a
    /// diagnostic in the plan), 9 when the prediction exceeds the plan's `rto_objective`.
    #[command(group(clap::ArgGroup::new("kind").args(["test", "planned", "unplanned", "failback"])))]
    Simulate {
        /// A plan file, or the name of one in `plans/`.
        plan: String,
        /// A drill (the default).
        #[arg(long)]
        test: bool,
        #[arg(long)]
        planned: bool,
        #[arg(long)]
        unplanned: bool,
        #[arg(long)]
        failback: bool,
        /// Step durations measured elsewhere (`lifeboat runs profile RUN --output json`), for
        /// CI where the journal is not; default: the plan's most recent finished run here.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Report format (default: `--output`): human, json, junit (a test case per step),
        /// github (annotations), sarif (the diagnostics).
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Predict an instant boot (see `failover --instant`), whatever the plan says.
        #[arg(long, conflicts_with = "no_instant")]
        instant: bool,
        /// Predict restoring every disk first.
        #[arg(long)]
        no_instant: bool,
    },
    /// Print the JSON Schema of the plan file (or of the inventory).
    Schema {
        /// Print the inventory's schema instead.
        #[arg(long)]
        inventory: bool,
    },
}

#[derive(Debug, Args)]
struct ValidateArgs {
    /// Plan files; default: every `*.toml` in `plans/` beside the inventory.
    plans: Vec<PathBuf>,

    /// Report format (default: `--output`).
    #[arg(long, value_enum)]
    format: Option<Format>,

    /// Also check the world: every host of a `libvirt` site answers, every VM's domain is on
    /// one of them with its disks there, every NIC's libvirt network exists.
    #[arg(long)]
    online: bool,
}

/// `--instant` / `--no-instant`: the run's choice, or the plan's when neither is given.
fn instant_choice(instant: bool, no_instant: bool) -> Option<bool> {
    match (instant, no_instant) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

/// Where a command writes, and whether the terminal takes colour.
pub struct Io<'a> {
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    /// Whether stderr is a terminal (progress bars are drawn only there).
    pub stderr_is_terminal: bool,
    /// Whether stdout is a terminal that takes colour (consulted for `--color auto`).
    pub stdout_is_color_terminal: bool,
    /// The daemon `lifeboat daemon` and the demo run in this process (the binary links it).
    pub server: &'static dyn lifeboat_api::server::Server,
    /// How to run this same Lifeboat again (`lifeboat` itself, or a binary that runs it after
    /// some arguments of its own): an instant boot's export server is a process of its own.
    pub program: Vec<OsString>,
}

impl std::fmt::Debug for Io<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("stdout_is_color_terminal", &self.stdout_is_color_terminal)
            .finish_non_exhaustive()
    }
}

/// Structured logs (`tracing`) to stderr: spans `cycle{group}`, `run{id}`, `step{id attempt}`
/// and `vm{vm}` carry their fields into every line. Set once per process (the first command of
/// a process that runs several, as tests do, sets it).
fn init_logging(verbose: u8, format: LogFormat, io: &mut Io<'_>) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            let _ = writeln!(
                io.stderr,
                "warning: RUST_LOG=`{spec}` is not a log filter ({e}); logging at `{default}`"
            );
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    // Another command of this process already set it up: its choice stands.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(io.stderr_is_terminal).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The async runtime a command runs its engine calls on: the one place it is built.
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Writes `value` as pretty JSON and a newline: `--output json`, from a typed struct.
pub(crate) fn print_json(io: &mut Io<'_>, value: &impl serde::Serialize) {
    let written = serde_json::to_writer_pretty(&mut *io.stdout, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(io.stdout));
    if let Err(e) = written
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        let _ = writeln!(io.stderr, "error: cannot write the output: {e}");
    }
}

/// Prints an unexpected failure and returns its exit code.
pub(crate) fn internal(io: &mut Io<'_>, e: &dyn std::fmt::Display) -> u8 {
    let _ = writeln!(io.stderr, "error: {e}");
    exit_codes::INTERNAL
}

/// Whether `lifeboat` accepts `args` (the first is the program name) as a command line, without
/// running it: what the docs' examples are checked against.
pub fn accepts<I, T>(args: I) -> Result<(), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Cli::try_parse_from(args).map(drop)
}

/// Run `lifeboat` with `args` (the first is the program name) and return its exit code.
pub fn run<I, T>(args: I, io: &mut Io<'_>) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit_codes::OK
                }
                _ => exit_codes::USAGE,
            };
            let text = e.render().to_string();
            let target = if code == exit_codes::OK {
                &mut io.stdout
            } else {
                &mut io.stderr
            };
            let _ = target.write_all(text.as_bytes());
            return code;
        }
    };
    // A daemon reports what it does: info by default.
    let verbose = if matches!(cli.command, Command::Daemon(_)) {
        cli.verbose.max(1)
    } else {
        cli.verbose
    };
    init_logging(verbose, cli.log_format, io);
    match execute(cli, io) {
        Ok(code) => code,
        // A reader that stopped early (`| head`) is not a failure: exit quietly, as ripgrep does.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                    || c.downcast_ref::<serde_json::Error>()
                        .and_then(|j| j.io_error_kind())
                        == Some(std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            exit_codes::OK
        }
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {e:#}");
            exit_codes::INTERNAL
        }
    }
}

/// Asks a yes/no question on the terminal; anything but `y`/`yes` (or no terminal) is no.
fn confirm(io: &mut Io<'_>, question: &str) -> bool {
    if !io.stderr_is_terminal {
        let _ = writeln!(
            io.stderr,
            "error: {question} needs a terminal to ask, or --yes"
        );
        return false;
    }
    let _ = write!(io.stderr, "{question} [y/N] ");
    let _ = io.stderr.flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

fn execute(cli: Cli, io: &mut Io<'_>) -> anyhow::Result<u8> {
    let color = match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => io.stdout_is_color_terminal,
    };
    let json = cli.output == Output::Json;
    let progress = io.stderr_is_terminal && !json;
    let config = cli.config.clone();
    let state = cli.state.clone();
    let context = |io: &mut Io<'_>| replication::load(&config, json, progress, io);
    let state_dir = state
        .clone()
        .unwrap_or_else(|| orchestration::default_state_dir(&lifeboat_loader::base_dir(&config)));
    // The run commands go through the daemon when one runs on the state folder.
    let daemon = || remote::Daemon::at(&state_dir);
    let orchestrate = |plan: Option<&str>, io: &mut Io<'_>| {
        let path = plan.map(|p| orchestration::plan_path(&config, p));
        orchestration::load(&config, state.as_deref(), path.as_deref(), json, io)
    };
    match cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "lifeboat", &mut *io.stdout);
            io.stdout.flush()?;
            Ok(exit_codes::OK)
        }
        Command::Openapi => {
            writeln!(io.stdout, "{}", io.server.openapi()?)?;
            Ok(exit_codes::OK)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut *io.stdout)?;
            io.stdout.flush()?;
            Ok(exit_codes::OK)
        }
        Command::DemoVm { args } => Ok(lifeboat_demo_vm::run_from(
            std::iter::once("demo-vm".to_string()).chain(args),
        )),
        Command::Demo { keep, qemu } => Ok(demo::run(keep, qemu, io)),
        Command::Failover {
            plan,
            test,
            planned,
            unplanned: _,
            point,
            force,
            instant,
            no_instant,
        } => {
            let op = if test {
                lifeboat_plan::plan::Operation::Test
            } else if planned {
                lifeboat_plan::plan::Operation::Planned
            } else {
                lifeboat_plan::plan::Operation::Unplanned
            };
            // A planned failover boots what the last cycle captured.
            let point = point.or_else(|| planned.then(|| "latest".to_string()));
            let req = FailoverRequest {
                op,
                point,
                force,
                reverse: false,
                instant: instant_choice(instant, no_instant),
            };
            if let Some(d) = daemon() {
                return Ok(remote::failover(&d, &config, &plan, req, json, io));
            }
            Ok(match orchestrate(Some(&plan), io) {
                Ok(l) => orchestration::failover(&l, req, json, io),
                Err(code) => code,
            })
        }
        Command::Cleanup { plan } => Ok(match daemon() {
            Some(d) => remote::cleanup(&d, &config, &plan, json, io),
            None => match orchestrate(Some(&plan), io) {
                Ok(l) => orchestration::cleanup(&l, json, io),
                Err(code) => code,
            },
        }),
        Command::Reprotect { plan } => Ok(match orchestrate(Some(&plan), io) {
            Ok(l) => orchestration::reprotect(&l, json, io),
            Err(code) => code,
        }),
        Command::Failback {
            plan,
            test,
            point,
            instant,
            no_instant,
        } => {
            use lifeboat_plan::plan::Operation;
            let req = FailoverRequest {
                op: if test {
                    Operation::Test
                } else {
                    Operation::Failback
                },
                // Zero loss: a failback boots what the last reverse cycle captured.
                point: point.or_else(|| (!test).then(|| "latest".to_string())),
                force: false,
                reverse: true,
                instant: instant_choice(instant, no_instant),
            };
            if let Some(d) = daemon() {
                return Ok(remote::failover(&d, &config, &plan, req, json, io));
            }
            Ok(match orchestrate(Some(&plan), io) {
                Ok(l) => orchestration::failover(&l, req, json, io),
                Err(code) => code,
            })
        }
        Command::Disable { vm, purge, yes } => {
            if purge
                && !yes
                && !confirm(
                    io,
                    &format!("delete every point of the consistency group of `{vm}`?"),
                )
            {
                let _ = writeln!(io.stderr, "nothing deleted (--yes skips the question)");
                return Ok(exit_codes::FAILED);
            }
            Ok(match orchestrate(None, io) {
                Ok(l) => orchestration::set_enabled(&l, &vm, false, purge, json, io),
                Err(code) => code,
            })
        }
        Command::Enable { vm } => Ok(match orchestrate(None, io) {
            Ok(l) => orchestration::set_enabled(&l, &vm, true, false, json, io),
            Err(code) => code,
        }),
        Command::Commit { plan, no_wait } => Ok(match daemon() {
            Some(d) => remote::commit(&d, &config, &plan, json, io),
            None => match orchestrate(Some(&plan), io) {
                Ok(l) => orchestration::commit(&l, !no_wait, json, io),
                Err(code) => code,
            },
        }),
        Command::Approve { run, by } => {
            let by = by
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "operator".into());
            Ok(match daemon() {
                Some(d) => remote::approve(&d, &run, &by, io),
                None => match orchestrate(None, io) {
                    Ok(l) => orchestration::approve(&l, &run, &by, io),
                    Err(code) => code,
                },
            })
        }
        Command::Retry { run } if let Some(d) = daemon() => {
            Ok(remote::retry(&d, &run, false, json, io))
        }
        Command::Skip { run } if let Some(d) = daemon() => {
            Ok(remote::retry(&d, &run, true, json, io))
        }
        Command::Cancel { run } if let Some(d) = daemon() => Ok(remote::cancel(&d, &run, io)),
        Command::Events { after, run, group } => Ok(remote::events(
            &state_dir,
            after,
            run.as_deref(),
            group.as_deref(),
            json,
            io,
        )),
        Command::Retry { run } => Ok(orchestration::retry(
            &config,
            state.as_deref(),
            &run,
            false,
            json,
            io,
        )),
        Command::Skip { run } => Ok(orchestration::retry(
            &config,
            state.as_deref(),
            &run,
            true,
            json,
            io,
        )),
        Command::Cancel { run } => Ok(match orchestrate(None, io) {
            Ok(l) => orchestration::cancel(&l, &run, io),
            Err(code) => code,
        }),
        Command::Drill(DrillCommand::Exec { run, command }) => Ok(match orchestrate(None, io) {
            Ok(l) => orchestration::drill_exec(&l, &run, &command, io),
            Err(code) => code,
        }),
        Command::Runs(RunsCommand::List) => Ok(match orchestrate(None, io) {
            Ok(l) => orchestration::runs_list(&l, json, io),
            Err(code) => code,
        }),
        Command::Runs(RunsCommand::Profile { run }) => Ok(match orchestrate(None, io) {
            Ok(l) => orchestration::runs_profile(&l, &run, io),
            Err(code) => code,
        }),
        Command::Plan(PlanCommand::Simulate {
            plan,
            test: _,
            planned,
            unplanned,
            failback,
            profile,
            format,
            instant,
            no_instant,
        }) => {
            use lifeboat_plan::plan::Operation;
            let op = if planned {
                Operation::Planned
            } else if unplanned {
                Operation::Unplanned
            } else if failback {
                Operation::Failback
            } else {
                Operation::Test
            };
            Ok(match orchestrate(Some(&plan), io) {
                Ok(l) => {
                    let format = format.unwrap_or(if json { Format::Json } else { Format::Human });
                    let instant = instant_choice(instant, no_instant);
                    simulate::run(l, op, profile.as_deref(), instant, format, io)
                }
                Err(code) => code,
            })
        }
        Command::Runs(RunsCommand::Show { run }) => Ok(match orchestrate(None, io) {
            Ok(l) => orchestration::runs_show(&l, &run, json, io),
            Err(code) => code,
        }),
        Command::Replicate {
            vms,
            app,
            crash,
            full_scan,
        } => {
            let mode = if app {
                lifeboat_replication::AppMode::Force
            } else if crash {
                lifeboat_replication::AppMode::Never
            } else {
                lifeboat_replication::AppMode::Auto
            };
            Ok(match context(io) {
                Ok(ctx) => match daemon() {
                    Some(_) if full_scan => {
                        let _ = writeln!(
                            io.stderr,
                            "error: --full-scan runs a cycle here, and the daemon protects these groups: stop it first"
                        );
                        exit_codes::USAGE
                    }
                    Some(d) => remote::replicate(&d, &ctx, &vms, mode, io),
                    None => replication::replicate(
                        &ctx,
                        &vms,
                        lifeboat_compute::site::Ask {
                            app: mode,
                            full_scan,
                        },
                        io,
                    ),
                },
                Err(code) => code,
            })
        }
        Command::Daemon(opts) => Ok(daemon::run(&config, state.as_deref(), opts, json, io)),
        Command::Discover {
            site,
            write,
            vm,
            policy,
        } => Ok(discover::run(
            &config,
            &discover::Discover {
                site: &site,
                write,
                vms: &vm,
                policy: policy.as_deref(),
            },
            json,
            io,
        )),
        Command::Status => Ok(match context(io) {
            Ok(ctx) => {
                let base = lifeboat_loader::base_dir(&config);
                let state = state
                    .clone()
                    .unwrap_or_else(|| orchestration::default_state_dir(&base));
                replication::status(&ctx, &state, io)
            }
            Err(code) => code,
        }),
        Command::Plugin(PluginCommand::Inspect { component }) => {
            Ok(plugin::inspect(&component, json, io))
        }
        Command::Plugin(PluginCommand::Test {
            component,
            with,
            allow,
            operation,
            timeout,
        }) => Ok(plugin::test(
            &plugin::TestRequest {
                component,
                with,
                allow,
                operation: match operation {
                    TestOperation::Test => lifeboat_plugin_host::wit::Operation::Test,
                    TestOperation::Planned => lifeboat_plugin_host::wit::Operation::Planned,
                    TestOperation::Unplanned => lifeboat_plugin_host::wit::Operation::Unplanned,
                    TestOperation::Failback => lifeboat_plugin_host::wit::Operation::Failback,
                },
                timeout,
            },
            json,
            io,
        )),
        Command::Store(StoreCommand::Check { url }) => Ok(replication::store_check(&url, json, io)),
        Command::Points(PointsCommand::List { vm }) => Ok(match context(io) {
            Ok(ctx) => replication::points_list(&ctx, &vm, io),
            Err(code) => code,
        }),
        Command::Restore {
            vm,
            point,
            out,
            force,
        } => Ok(match context(io) {
            Ok(ctx) => replication::restore(&ctx, &vm, &point, &out, force, io),
            Err(code) => code,
        }),
        Command::Export {
            vm,
            point,
            socket,
            site,
            boot_trace,
        } => Ok(match context(io) {
            Ok(ctx) => replication::export(
                &ctx,
                &vm,
                &point,
                &socket,
                site.as_deref(),
                boot_trace.as_deref(),
                io,
            ),
            Err(code) => code,
        }),
        Command::Verify { full } => Ok(match context(io) {
            Ok(ctx) => replication::verify(&ctx, full, io),
            Err(code) => code,
        }),
        Command::Gc { grace } => Ok(match context(io) {
            Ok(ctx) => replication::gc(&ctx, grace, io),
            Err(code) => code,
        }),
        Command::Plan(PlanCommand::Validate(args)) => {
            let format = args.format.unwrap_or(match cli.output {
                Output::Human => Format::Human,
                Output::Json => Format::Json,
            });
            let plans = if args.plans.is_empty() {
                lifeboat_loader::default_plans(&cli.config)
            } else {
                args.plans
            };
            let mut validation = lifeboat_loader::validate(&cli.config, &plans);
            if args.online
                && let Some(inventory) = &validation.inventory
            {
                let findings = lifeboat_compute::libvirt::online::check(inventory);
                validation.diagnostics.extend(findings);
            }
            let written = report::write(format, &validation, color, io.stdout)
                .and_then(|()| io.stdout.flush());
            match written {
                // A reader that stopped early (`| head`) is not a failure of validation.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
            Ok(if validation.is_valid() {
                exit_codes::OK
            } else {
                exit_codes::INVALID
            })
        }
        Command::Plan(PlanCommand::Schema { inventory }) => {
            let schema = if inventory {
                lifeboat_plan::schema::inventory_schema()
            } else {
                lifeboat_plan::schema::plan_schema()
            };
            serde_json::to_writer_pretty(&mut *io.stdout, &schema)?;
            writeln!(io.stdout)?;
            Ok(exit_codes::OK)
        }
    }
}
