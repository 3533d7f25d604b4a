//! The plugin host: built-in steps do their job, and every hostile plugin is contained within its
//! limit while a good step still runs after it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lifeboat_builtins::{artifacts, builtin};
use lifeboat_plugin_host::wit::lifeboat::plan::{compute::VmState, inventory, network, recovery};
use lifeboat_plugin_host::wit::{Direction, Error as PluginError, Operation, StepContext};
use lifeboat_plugin_host::{
    EngineOptions, Grants, HostServices, LoadError, NoServices, Plugin, PluginEngine, RunKv,
    StepLimits, StepOutcome, StepReport, StepRequest,
};

use crate::support::root;

/// Slack allowed past a deadline before a step's outcome is reported.
const SLACK: Duration = Duration::from_millis(100);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One engine for the whole test binary, with a compile cache in the target directory.
fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let cache = root().join("target/test-plugin-cache");
        PluginEngine::new(EngineOptions {
            cache_dir: Some(cache),
            ..EngineOptions::default()
        })
        .expect("engine")
    })
}

fn context(step: &str) -> StepContext {
    StepContext {
        plan: "erp".into(),
        run_id: "run-1".into(),
        operation: Operation::Test,
        direction: Direction::Forward,
        group: "database".into(),
        step: step.into(),
        attempt: 1,
        dry_run: false,
    }
}

fn request(
    step: &str,
    config: &str,
    grants: Grants,
    services: Arc<dyn HostServices>,
    limits: StepLimits,
) -> StepRequest {
    StepRequest {
        config: config.into(),
        context: context(step),
        grants: Arc::new(grants),
        services,
        kv: RunKv::default(),
        limits,
        effect_key: format!("run-1/{step}/1"),
    }
}

async fn load_file(path: &str) -> Result<Plugin, LoadError> {
    let bytes = std::fs::read(path).expect("fixture built");
    Plugin::load(engine(), &bytes, None).await
}

async fn load_builtin(name: &str) -> Plugin {
    Plugin::load(engine(), builtin(name).expect("builtin exists"), None)
        .await
        .expect("builtin loads")
}

/// A good step after each hostile one: the host and other steps are unaffected.
async fn good_step_still_runs() {
    let wait = load_builtin("wait").await;
    let report = wait
        .run(&request(
            "after",
            r#"{"duration":"1ms"}"#,
            Grants::default(),
            Arc::new(NoServices),
            StepLimits::default(),
        ))
        .await;
    assert_eq!(
        report.outcome,
        StepOutcome::Ok {
            outputs: r#"{"waited_ms":1}"#.into()
        }
    );
}

async fn run_fixture(path: &str, config: &str, grants: Grants, limits: StepLimits) -> StepReport {
    let plugin = load_file(path).await.expect("fixture loads");
    let report = plugin
        .run(&request(
            "hostile",
            config,
            grants,
            Arc::new(NoServices),
            limits,
        ))
        .await;
    assert!(
        report.elapsed <= limits.timeout + SLACK,
        "took {:?}, limit {:?}: {report:?}",
        report.elapsed,
        limits.timeout
    );
    report
}

fn short(timeout_ms: u64) -> StepLimits {
    StepLimits {
        timeout: Duration::from_millis(timeout_ms),
        ..StepLimits::default()
    }
}

#[test]
fn builtins_describe_themselves() {
    runtime().block_on(async {
        for name in lifeboat_plan::plan::BUILTIN_STEPS {
            let plugin = load_builtin(name).await;
            assert_eq!(plugin.info().name, *name);
            assert_eq!(plugin.info().api_version, lifeboat_plugin_host::API_VERSION);
            assert!(
                plugin
                    .imports()
                    .iter()
                    .all(|i| !i.starts_with("wasi:filesystem") && !i.starts_with("wasi:sockets")),
                "{name} imports {:?}",
                plugin.imports()
            );
        }
    });
}

#[test]
fn infinite_loop_times_out_at_its_deadline() {
    runtime().block_on(async {
        let report = run_fixture(
            artifacts::INFINITE_LOOP,
            "{}",
            Grants::default(),
            short(300),
        )
        .await;
        assert_eq!(
            report.outcome,
            StepOutcome::Timeout {
                after: Duration::from_millis(300)
            }
        );
        assert!(report.elapsed >= Duration::from_millis(300));
        good_step_still_runs().await;
    });
}

#[test]
fn memory_bomb_is_out_of_memory() {
    runtime().block_on(async {
        let limits = StepLimits {
            memory: 16 << 20,
            ..short(5_000)
        };
        let report = run_fixture(artifacts::MEMORY_BOMB, "{}", Grants::default(), limits).await;
        assert_eq!(report.outcome, StepOutcome::OutOfMemory { limit: 16 << 20 });
        good_step_still_runs().await;
    });
}

#[test]
fn deep_recursion_traps_on_stack_overflow() {
    runtime().block_on(async {
        let report = run_fixture(
            artifacts::DEEP_RECURSION,
            "{}",
            Grants::default(),
            short(5_000),
        )
        .await;
        assert_eq!(
            report.outcome,
            StepOutcome::Trap {
                message: "stack overflow".into()
            }
        );
        good_step_still_runs().await;
    });
}

#[test]
fn a_panic_is_a_trap_with_the_message_in_stderr() {
    runtime().block_on(async {
        let report = run_fixture(artifacts::PANIC, "{}", Grants::default(), short(5_000)).await;
        assert!(
            matches!(report.outcome, StepOutcome::Trap { .. }),
            "{report:?}"
        );
        assert!(
            report.stderr.contains("this plugin panics on purpose"),
            "stderr: {:?}",
            report.stderr
        );
        good_step_still_runs().await;
    });
}

#[test]
fn a_log_flood_is_cut_at_the_log_limit() {
    runtime().block_on(async {
        let report =
            run_fixture(artifacts::LOG_FLOOD, "{}", Grants::default(), short(20_000)).await;
        assert!(report.outcome.is_ok(), "{report:?}");
        let bytes: usize = report.log.iter().map(|l| l.message.len()).sum();
        assert!(bytes <= (1 << 20) + 4096, "log kept {bytes} bytes");
        assert!(
            report.log_dropped > 900_000,
            "dropped only {}",
            report.log_dropped
        );
        good_step_still_runs().await;
    });
}

#[test]
fn a_huge_string_to_the_host_traps() {
    runtime().block_on(async {
        let report = run_fixture(
            artifacts::HUGE_STRING,
            "{}",
            Grants::default(),
            short(5_000),
        )
        .await;
        assert!(
            matches!(report.outcome, StepOutcome::Trap { .. }),
            "{report:?}"
        );
        assert!(report.log.is_empty(), "the 32 MiB string reached the log");
        good_step_still_runs().await;
    });
}

#[test]
fn calls_outside_the_grant_are_denied_naming_step_and_plan_line() {
    runtime().block_on(async {
        let grants = Grants {
            tcp: vec!["127.0.0.1:1".into()],
            vms: vec!["db-1".into()],
            origin: "plans/erp.toml:24".into(),
            ..Grants::default()
        };
        for target in ["tcp", "vm", "kv"] {
            let config = format!(r#"{{"target":"{target}"}}"#);
            let report = run_fixture(
                artifacts::UNGRANTED_CALL,
                &config,
                grants.clone(),
                short(5_000),
            )
            .await;
            let StepOutcome::Denied { message } = &report.outcome else {
                panic!("{target}: {report:?}");
            };
            assert!(
                message.contains("step `hostile` of group `database`"),
                "{message}"
            );
            assert!(message.contains("plans/erp.toml:24"), "{message}");
            let named = match target {
                "tcp" => "127.0.0.1:9",
                "vm" => "not-granted-vm",
                _ => "not-granted-key",
            };
            assert!(message.contains(named), "{message}");
        }
        // With nothing granted at all, the same call is denied.
        let report = run_fixture(
            artifacts::UNGRANTED_CALL,
            "{}",
            Grants::default(),
            short(5_000),
        )
        .await;
        let StepOutcome::Denied { message } = &report.outcome else {
            panic!("{report:?}");
        };
        assert!(
            message.contains("may not connect to `127.0.0.1:9`"),
            "{message}"
        );
        good_step_still_runs().await;
    });
}

#[test]
fn wasi_filesystem_newer_api_truncation_and_digest_are_refused_at_load() {
    runtime().block_on(async {
        match load_file(artifacts::WASI_FILESYSTEM).await {
            Err(LoadError::ForbiddenImport { import }) => {
                assert!(import.starts_with("wasi:filesystem"), "{import}")
            }
            other => panic!("{other:?}"),
        }
        match load_file(artifacts::NEWER_API).await {
            Err(LoadError::ApiVersion { wanted, supported }) => {
                assert_eq!(wanted, "0.2.0");
                assert_eq!(supported, "0.1.1");
            }
            other => panic!("{other:?}"),
        }
        let bytes = builtin("wait").expect("wait");
        let truncated = &bytes[..bytes.len() / 2];
        assert!(matches!(
            Plugin::load(engine(), truncated, None).await,
            Err(LoadError::Invalid(_))
        ));
        let wrong = "0".repeat(64);
        match Plugin::load(engine(), bytes, Some(&wrong)).await {
            Err(LoadError::HashMismatch { expected, actual }) => {
                assert_eq!(expected, wrong);
                assert_eq!(actual.len(), 64);
            }
            other => panic!("{other:?}"),
        }
        good_step_still_runs().await;
    });
}

#[test]
fn the_template_probes_a_granted_port() {
    runtime().block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let plugin = load_file(artifacts::TEMPLATE)
            .await
            .expect("template loads");
        let grants = Grants {
            tcp: vec![address.clone()],
            ..Grants::default()
        };
        let config = format!(r#"{{"address":"{address}"}}"#);
        let report = plugin
            .run(&request(
                "port",
                &config,
                grants,
                Arc::new(NoServices),
                StepLimits::default(),
            ))
            .await;
        let StepOutcome::Ok { outputs } = &report.outcome else {
            panic!("{report:?}");
        };
        assert!(outputs.contains(&address), "{outputs}");
        assert_eq!(
            report.log[0].message,
            format!("{address} is open (test, forward)")
        );
        let problems = plugin
            .validate(&StepRequest::offline(
                r#"{"adress":"x"}"#.into(),
                context("port"),
            ))
            .await
            .expect("validate runs");
        assert_eq!(problems.len(), 2, "{problems:?}");
    });
}

async fn serve_http(status: u16) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes())
                .await;
        }
    });
    address
}

#[test]
fn tcp_and_http_checks_report_what_they_find() {
    runtime().block_on(async {
        let http = load_builtin("http-check").await;
        for (status, ok) in [(200, true), (503, false)] {
            let address = serve_http(status).await;
            let url = format!("http://{address}/health");
            let grants = Grants {
                http: vec![format!("http://{address}/")],
                ..Grants::default()
            };
            let report = http
                .run(&request(
                    "http",
                    &format!(r#"{{"url":"{url}"}}"#),
                    grants,
                    Arc::new(NoServices),
                    StepLimits::default(),
                ))
                .await;
            match (&report.outcome, ok) {
                (StepOutcome::Ok { outputs }, true) => assert_eq!(outputs, r#"{"status":200}"#),
                (StepOutcome::Failed(PluginError::Other(m)), false) => {
                    assert!(m.contains("answered 503"), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
        // A closed port: the tcp check fails with the plugin's own error, not a trap.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let tcp = load_builtin("tcp-check").await;
        let grants = Grants {
            tcp: vec![closed.clone()],
            ..Grants::default()
        };
        let report = tcp
            .run(&request(
                "tcp",
                &format!(r#"{{"address":"{closed}"}}"#),
                grants,
                Arc::new(NoServices),
                StepLimits::default(),
            ))
            .await;
        assert!(
            matches!(report.outcome, StepOutcome::Failed(_)),
            "{report:?}"
        );
    });
}

/// A compute site for the boot step: VMs become healthy after a few status polls; records the
/// order of calls and the most VMs starting at once.
#[derive(Default)]
struct FakeSite {
    vms: Vec<String>,
    calls: Mutex<Vec<String>>,
    polls: Mutex<std::collections::HashMap<String, usize>>,
    starting: AtomicUsize,
    max_starting: AtomicUsize,
    approver: Option<String>,
}

#[async_trait::async_trait]
impl HostServices for FakeSite {
    async fn group_vms(&self, _group: &str) -> Vec<inventory::Vm> {
        self.vms
            .iter()
            .map(|name| inventory::Vm {
                name: name.clone(),
                site: "west".into(),
                disks: vec!["os".into()],
                nics: vec![],
            })
            .collect()
    }
    async fn pick_point(&self, vm: &str, choice: &str) -> Result<recovery::Point, PluginError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("pick {vm} {choice}"));
        Ok(recovery::Point {
            id: format!("p-{vm}"),
            kind: recovery::PointKind::CrashConsistent,
            captured_at_ms: 1,
            committed_at_ms: 2,
        })
    }
    async fn restore(&self, vm: &str, point: &str, _key: &str) -> Result<Vec<String>, PluginError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("restore {vm} {point}"));
        Ok(vec![format!("/restored/{vm}/os.img")])
    }
    async fn assignments(&self, vm: &str) -> Result<Vec<network::Assignment>, PluginError> {
        Ok(vec![network::Assignment {
            nic: 0,
            network: "west/prod-dr".into(),
            subnet: "app".into(),
            ip: format!("127.20.1.{}", vm.len()),
            kept_source_ip: false,
        }])
    }
    async fn start(&self, vm: &str, _key: &str) -> Result<(), PluginError> {
        self.calls.lock().expect("lock").push(format!("start {vm}"));
        let now = self.starting.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_starting.fetch_max(now, Ordering::SeqCst);
        Ok(())
    }
    async fn stop(&self, vm: &str, _key: &str) -> Result<(), PluginError> {
        self.calls.lock().expect("lock").push(format!("stop {vm}"));
        Ok(())
    }
    async fn status(&self, vm: &str) -> Result<VmState, PluginError> {
        let mut polls = self.polls.lock().expect("lock");
        let n = polls.entry(vm.to_string()).or_default();
        *n += 1;
        if *n == 3 {
            self.starting.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(if *n >= 3 {
            VmState::Running
        } else {
            VmState::Starting
        })
    }
    async fn approve(&self, _message: &str) -> Result<String, PluginError> {
        match &self.approver {
            Some(who) => Ok(who.clone()),
            None => std::future::pending().await,
        }
    }
}

#[test]
fn boot_group_boots_every_vm_with_bounded_parallelism_and_undo_stops_them() {
    runtime().block_on(async {
        let vms: Vec<String> = (1..=5).map(|i| format!("app-{i}")).collect();
        let site = Arc::new(FakeSite {
            vms: vms.clone(),
            ..FakeSite::default()
        });
        let plugin = load_builtin("boot-group").await;
        let grants = Grants {
            vms: vms.clone(),
            ..Grants::default()
        };
        let config = r#"{"parallelism":2,"poll_ms":10,"point":"latest"}"#;
        let req = request("boot", config, grants, site.clone(), StepLimits::default());
        let report = plugin.run(&req).await;
        let StepOutcome::Ok { outputs } = &report.outcome else {
            panic!("{report:?}");
        };
        let outputs: serde_json::Value = serde_json::from_str(outputs).expect("json outputs");
        for vm in &vms {
            assert_eq!(outputs["vms"][vm]["point"], format!("p-{vm}"));
            assert_eq!(
                outputs["vms"][vm]["disks"][0],
                format!("/restored/{vm}/os.img")
            );
        }
        assert_eq!(
            site.max_starting.load(Ordering::SeqCst),
            2,
            "parallelism bound"
        );
        let calls = site.calls.lock().expect("lock").clone();
        for vm in &vms {
            let pick = calls
                .iter()
                .position(|c| c == &format!("pick {vm} latest"))
                .expect("picked");
            let restore = calls
                .iter()
                .position(|c| c == &format!("restore {vm} p-{vm}"))
                .expect("restored");
            let start = calls
                .iter()
                .position(|c| c == &format!("start {vm}"))
                .expect("started");
            assert!(pick < restore && restore < start, "{calls:?}");
        }
        let undo = plugin
            .undo(&req, &serde_json::to_string(&outputs).expect("json"))
            .await;
        assert!(undo.outcome.is_ok(), "{undo:?}");
        let stops = site
            .calls
            .lock()
            .expect("lock")
            .iter()
            .filter(|c| c.starts_with("stop "))
            .count();
        assert_eq!(stops, 5);
    });
}

#[test]
fn boot_group_gives_up_at_its_health_timeout() {
    runtime().block_on(async {
        #[derive(Default)]
        struct NeverHealthy(FakeSite);
        #[async_trait::async_trait]
        impl HostServices for NeverHealthy {
            async fn group_vms(&self, g: &str) -> Vec<inventory::Vm> {
                self.0.group_vms(g).await
            }
            async fn pick_point(&self, vm: &str, c: &str) -> Result<recovery::Point, PluginError> {
                self.0.pick_point(vm, c).await
            }
            async fn restore(
                &self,
                vm: &str,
                p: &str,
                k: &str,
            ) -> Result<Vec<String>, PluginError> {
                self.0.restore(vm, p, k).await
            }
            async fn assignments(&self, vm: &str) -> Result<Vec<network::Assignment>, PluginError> {
                self.0.assignments(vm).await
            }
            async fn start(&self, vm: &str, k: &str) -> Result<(), PluginError> {
                self.0.start(vm, k).await
            }
            async fn status(&self, _vm: &str) -> Result<VmState, PluginError> {
                Ok(VmState::Starting)
            }
        }
        let site = Arc::new(NeverHealthy(FakeSite {
            vms: vec!["db-1".into()],
            ..FakeSite::default()
        }));
        let plugin = load_builtin("boot-group").await;
        let grants = Grants {
            vms: vec!["db-1".into()],
            ..Grants::default()
        };
        let report = plugin
            .run(&request(
                "boot",
                r#"{"health_timeout_ms":200,"poll_ms":20}"#,
                grants,
                site,
                StepLimits::default(),
            ))
            .await;
        match &report.outcome {
            StepOutcome::Failed(PluginError::Timeout(m)) => assert!(m.contains("db-1"), "{m}"),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn approval_waits_for_a_person_and_times_out_without_one() {
    runtime().block_on(async {
        let plugin = load_builtin("approval").await;
        let yes = Arc::new(FakeSite {
            approver: Some("alice".into()),
            ..FakeSite::default()
        });
        let report = plugin
            .run(&request(
                "gate",
                r#"{"message":"go?"}"#,
                Grants::default(),
                yes,
                StepLimits::default(),
            ))
            .await;
        assert_eq!(
            report.outcome,
            StepOutcome::Ok {
                outputs: r#"{"approved_by":"alice"}"#.into()
            }
        );
        let nobody = Arc::new(FakeSite::default());
        let report = plugin
            .run(&request(
                "gate",
                r#"{"timeout":"1s"}"#,
                Grants::default(),
                nobody,
                StepLimits::default(),
            ))
            .await;
        assert!(
            matches!(report.outcome, StepOutcome::Failed(PluginError::Timeout(_))),
            "{report:?}"
        );
    });
}

#[test]
fn compiled_components_are_cached_on_disk() {
    runtime().block_on(async {
        let dir = std::env::temp_dir().join(format!("lifeboat-cache-test-{}", std::process::id()));
        let engine = PluginEngine::new(EngineOptions {
            cache_dir: Some(dir.clone()),
            ..EngineOptions::default()
        })
        .expect("engine");
        let bytes = builtin("wait").expect("wait");
        let first = Plugin::load(&engine, bytes, None).await.expect("compiles");
        let cached: Vec<_> = std::fs::read_dir(&dir)
            .expect("cache dir")
            .flatten()
            .collect();
        assert_eq!(cached.len(), 1, "one compiled component");
        let name = cached[0].file_name().to_string_lossy().to_string();
        assert!(
            name.starts_with(first.sha256()) && name.ends_with(".cwasm"),
            "{name}"
        );
        // A corrupt cache entry is dropped and the component recompiled, not run.
        std::fs::write(cached[0].path(), b"garbage").expect("corrupt");
        let second = Plugin::load(&engine, bytes, None)
            .await
            .expect("recompiles");
        assert_eq!(second.info(), first.info());
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn a_python_step_runs_with_its_grants() {
    runtime().block_on(async {
        let plugin = Plugin::load(engine(), &crate::support::python_kv_note(), None)
            .await
            .expect("python step loads");
        assert_eq!(plugin.info().name, "kv-note");
        assert!(
            plugin
                .imports()
                .iter()
                .all(|i| i.starts_with("lifeboat:plan/")),
            "WASI is stubbed out: {:?}",
            plugin.imports()
        );
        let grants = Grants {
            kv: vec!["note.*".into()],
            ..Grants::default()
        };
        let mut req = request(
            "note",
            r#"{"key":"note.db","value":"hello"}"#,
            grants,
            Arc::new(NoServices),
            StepLimits::default(),
        );
        req.limits.timeout = Duration::from_secs(30);
        let report = plugin.run(&req).await;
        assert_eq!(
            report.outcome,
            StepOutcome::Ok {
                outputs: r#"{"key": "note.db"}"#.into()
            },
            "{report:?}"
        );
        assert_eq!(req.kv.get("note.db").as_deref(), Some("hello"));
        assert_eq!(report.log[0].message, "note.db = hello (test run run-1)");
        // Outside its grant, the same plugin is denied.
        let report = plugin
            .run(&request(
                "note",
                r#"{"key":"secret"}"#,
                Grants::default(),
                Arc::new(NoServices),
                req.limits,
            ))
            .await;
        assert!(
            matches!(report.outcome, StepOutcome::Denied { .. }),
            "{report:?}"
        );
        let problems = plugin
            .validate(&StepRequest::offline(
                r#"{"value":1,"colour":2}"#.into(),
                context("note"),
            ))
            .await
            .expect("validate runs");
        assert_eq!(
            problems,
            [
                "unknown config key `colour`",
                "`key` (a string) is required"
            ]
        );
    });
}

#[test]
fn a_step_from_the_template_is_pinned_in_a_plan_and_validated() {
    let bytes = std::fs::read(artifacts::TEMPLATE).expect("template built");
    let sha256 = runtime().block_on(async {
        Plugin::load(engine(), &bytes, None)
            .await
            .expect("template loads")
            .sha256()
            .to_string()
    });
    let dir = std::env::temp_dir().join(format!("lifeboat-template-plan-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("plans/plugins")).expect("dirs");
    std::fs::write(dir.join("plans/plugins/port-open.wasm"), &bytes).expect("copy component");
    std::fs::copy(root().join("lifeboat.toml"), dir.join("lifeboat.toml")).expect("copy inventory");
    let write_plan = |step: &str| {
        let plan = format!(
            "version = 1\nname = \"web\"\nsource = \"east\"\ntarget = \"west\"\n\
             network.map = [{{ from = \"east/prod\", to = \"west/prod-dr\" }}]\n\
             [[group]]\nname = \"web\"\nvms = [\"web-1\"]\npost = [{step}]\n"
        );
        std::fs::write(dir.join("plans/web.toml"), plan).expect("write plan");
    };
    let config = dir.join("lifeboat.toml").display().to_string();
    let validate =
        || crate::support::lifeboat(&["--config", &config, "plan", "validate", "--format", "json"]);
    let rules = |out: &crate::support::Outcome| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        v["diagnostics"]
            .as_array()
            .expect("array")
            .iter()
            .map(|d| d["rule"].as_str().expect("rule").to_string())
            .collect()
    };

    write_plan(&format!(
        r#"{{ uses = "plugins/port-open.wasm", sha256 = "{sha256}", with = {{ address = "{{vm.web-1.ip}}:8081" }}, allow = {{ tcp = ["{{vm.web-1.ip}}:8081"] }} }}"#
    ));
    let out = validate();
    assert_eq!(out.code, lifeboat_cli::exit_codes::OK, "{}", out.stdout);

    write_plan(&format!(
        r#"{{ uses = "plugins/port-open.wasm", sha256 = "{sha256}", with = {{ adress = "x" }} }}"#
    ));
    let out = validate();
    assert_eq!(out.code, lifeboat_cli::exit_codes::INVALID);
    assert_eq!(
        rules(&out),
        ["capability-not-granted", "plugin-config", "plugin-config"],
        "{}",
        out.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a recording HTTP server saw: `METHOD path body` per request.
type Seen = Arc<Mutex<Vec<String>>>;

/// An HTTP server that records every request and answers `status` (with `location` for a
/// redirect). Its address.
async fn recording_server(status: u16, location: Option<String>) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then as much body as it announces.
            loop {
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        let line = head.lines().next().unwrap_or_default();
                        let mut parts = line.split(' ');
                        let method = parts.next().unwrap_or_default();
                        let path = parts.next().unwrap_or_default();
                        log.lock().unwrap().push(format!("{method} {path} {body}"));
                        break;
                    }
                }
            }
            let extra = location
                .as_ref()
                .map(|l| format!("location: {l}\r\n"))
                .unwrap_or_default();
            let _ = socket
                .write_all(
                    format!("HTTP/1.1 {status} X\r\n{extra}content-length: 2\r\n\r\nok").as_bytes(),
                )
                .await;
        }
    });
    (address, seen)
}

/// The `http` interface through `builtin:webhook`: a POST to a granted prefix is sent with its
/// JSON; another method, another prefix, or a redirect out of the prefix is not.
#[test]
fn the_http_interface_sends_only_what_is_granted_and_follows_no_redirect() {
    runtime().block_on(async {
        let webhook = load_builtin("webhook").await;
        let (address, seen) = recording_server(200, None).await;
        let grants = Grants {
            http: vec![format!("POST http://{address}/hooks/")],
            origin: "lifeboat.toml:40".into(),
            ..Grants::default()
        };
        let run = |config: String, grants: Grants| {
            let webhook = &webhook;
            async move {
                webhook
                    .run(&request(
                        "alert",
                        &config,
                        grants,
                        Arc::new(NoServices),
                        StepLimits::default(),
                    ))
                    .await
            }
        };
        let event = r#"{"kind":"rpo.breached","message":"group db-1: RPO 12.0s"}"#;
        let report = run(
            format!(r#"{{"url":"http://{address}/hooks/t1","event":{event}}}"#),
            grants.clone(),
        )
        .await;
        assert_eq!(
            report.outcome,
            StepOutcome::Ok {
                outputs: r#"{"status":200}"#.into()
            },
            "{report:?}"
        );
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert!(seen[0].starts_with("POST /hooks/t1 "), "{seen:?}");
            let body: serde_json::Value =
                serde_json::from_str(seen[0].splitn(3, ' ').nth(2).unwrap()).unwrap();
            assert_eq!(body["event"]["kind"], "rpo.breached");
            assert_eq!(body["text"], "lifeboat: group db-1: RPO 12.0s");
            assert_eq!(body["plan"], "erp");
        }
        // Another method to the same prefix, and the same method to another prefix: denied
        // (the step traps), nothing sent.
        for (method, path) in [("PUT", "/hooks/t1"), ("POST", "/other")] {
            let report = run(
                format!(r#"{{"url":"http://{address}{path}","method":"{method}"}}"#),
                grants.clone(),
            )
            .await;
            let StepOutcome::Denied { message } = &report.outcome else {
                panic!("{method} {path}: {report:?}");
            };
            assert!(
                message.contains(&format!("may not {method} `http://{address}{path}`")),
                "{message}"
            );
            assert!(message.contains("lifeboat.toml:40"), "{message}");
        }
        assert_eq!(seen.lock().unwrap().len(), 1, "a denied request was sent");

        // A redirect out of the granted prefix is not followed: the step sees the 302.
        let (elsewhere, elsewhere_seen) = recording_server(200, None).await;
        let (redirecting, _) =
            recording_server(302, Some(format!("http://{elsewhere}/steal"))).await;
        let report = run(
            format!(r#"{{"url":"http://{redirecting}/hooks/x"}}"#),
            Grants {
                http: vec![format!("POST http://{redirecting}/hooks/")],
                ..Grants::default()
            },
        )
        .await;
        let StepOutcome::Failed(PluginError::Other(m)) = &report.outcome else {
            panic!("{report:?}");
        };
        assert!(m.contains("answered 302"), "{m}");
        assert!(
            elsewhere_seen.lock().unwrap().is_empty(),
            "the redirect was followed"
        );
        // A plain `allow.http` entry (a probe's) grants GET, not POST.
        let report = run(
            format!(r#"{{"url":"http://{address}/hooks/t1"}}"#),
            Grants {
                http: vec![format!("http://{address}/hooks/")],
                ..Grants::default()
            },
        )
        .await;
        assert!(
            matches!(report.outcome, StepOutcome::Denied { .. }),
            "{report:?}"
        );
        good_step_still_runs().await;
    });
}

/// A step built against plugin API 0.1.0 keeps loading and running on this 0.1.1 host.
#[test]
fn a_step_built_for_api_0_1_0_runs_on_this_host() {
    runtime().block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let plugin = load_file(artifacts::API_0_1_0)
            .await
            .expect("a 0.1.0 step loads");
        assert_eq!(plugin.info().api_version, "0.1.0");
        let report = plugin
            .run(&request(
                "old",
                &format!(r#"{{"address":"{address}"}}"#),
                Grants {
                    tcp: vec![address.clone()],
                    ..Grants::default()
                },
                Arc::new(NoServices),
                StepLimits::default(),
            ))
            .await;
        assert_eq!(
            report.outcome,
            StepOutcome::Ok {
                outputs: format!(r#"{{"reached":"{address}"}}"#)
            },
            "{report:?}"
        );
        assert!(
            report.log[0].message.contains("built for 0.1.0"),
            "{:?}",
            report.log
        );
    });
}

/// `lifeboat plugin inspect`: a step's self-description and the pin, before any plan; a
/// component the host would refuse is refused here with the same reason.
#[test]
fn plugin_inspect_says_what_a_step_is_and_how_to_pin_it() {
    let bytes = std::fs::read(artifacts::TEMPLATE).expect("template built");
    let sha256 = runtime().block_on(async {
        Plugin::load(engine(), &bytes, None)
            .await
            .expect("template loads")
            .sha256()
            .to_string()
    });
    let out =
        crate::support::lifeboat(&["--output", "json", "plugin", "inspect", artifacts::TEMPLATE]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["sha256"], sha256.as_str());
    assert_eq!(doc["name"], "port-open");
    assert_eq!(doc["capabilities"], serde_json::json!(["probe-tcp"]));
    assert!(
        doc["grants"][0].as_str().unwrap().starts_with("allow.tcp"),
        "{doc}"
    );
    let out = crate::support::lifeboat(&["plugin", "inspect", artifacts::TEMPLATE]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("sha256 = \"{sha256}\"")),
        "{}",
        out.stdout
    );
    // Refused as a plan would refuse it: an import the sandbox does not offer.
    let out = crate::support::lifeboat(&["plugin", "inspect", artifacts::WASI_FILESYSTEM]);
    assert_eq!(out.code, 3, "{}", out.stdout);
    assert!(
        out.stderr.contains("is not a step Lifeboat can run"),
        "{}",
        out.stderr
    );
    let out = crate::support::lifeboat(&["plugin", "inspect", "no/such/step.wasm"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
}

/// `lifeboat plugin test`: a team tries its step before it is in a plan. It runs for real in the
/// sandbox; a hostile one is contained and said to be.
#[test]
fn plugin_test_runs_a_step_and_reports_a_hostile_one_contained() {
    // The template probes a TCP address: grant one that answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let with = format!("address={addr}");
    let allow = format!("tcp={addr}");
    let out = crate::support::lifeboat(&[
        "plugin",
        "test",
        artifacts::TEMPLATE,
        "--with",
        &with,
        "--allow",
        &allow,
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("port-open: ok"), "{}", out.stdout);
    // Without the grant, the same probe is denied, and the sandbox says it contained it.
    let out = crate::support::lifeboat(&[
        "--output",
        "json",
        "plugin",
        "test",
        artifacts::TEMPLATE,
        "--with",
        &with,
    ]);
    assert_eq!(out.code, 4, "{}", out.stdout);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false, "{doc}");
    // Hostile steps: a loop past its deadline, a memory bomb, an ungranted call.
    for (fixture, says) in [
        (artifacts::INFINITE_LOOP, "timed out"),
        (artifacts::MEMORY_BOMB, "memory"),
        (artifacts::UNGRANTED_CALL, "denied"),
    ] {
        let out = crate::support::lifeboat(&["plugin", "test", fixture, "--timeout", "2s"]);
        assert_eq!(out.code, 4, "{fixture}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains("contained by the sandbox") && out.stdout.contains(says),
            "{fixture}: {}",
            out.stdout
        );
    }
    let out = crate::support::lifeboat(&["plugin", "test", artifacts::TEMPLATE, "--with", "x"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}

/// Services that write down what a step asked of the world; `simulated` says whether they
/// stand for a simulated site.
struct Recorder {
    simulated: bool,
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn new(simulated: bool) -> Arc<Self> {
        Arc::new(Self {
            simulated,
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

#[async_trait::async_trait]
impl HostServices for Recorder {
    fn simulated(&self) -> bool {
        self.simulated
    }
    async fn tcp(&self, address: &str, _limit: Duration) -> Result<(), PluginError> {
        self.note(format!("tcp {address}"));
        Ok(())
    }
    async fn http_get(&self, url: &str, _limit: Duration) -> Result<u16, PluginError> {
        self.note(format!("get {url}"));
        Ok(204)
    }
    async fn http_send(
        &self,
        request: &lifeboat_plugin_host::http::Request,
        _limit: Duration,
    ) -> Result<lifeboat_plugin_host::http::Answer, PluginError> {
        self.note(format!("send {}", request.url));
        Err(PluginError::Other("not in a dry run".into()))
    }
    async fn approve(&self, message: &str) -> Result<String, PluginError> {
        self.note(format!("approve {message}"));
        Ok("the simulation".into())
    }
}

/// In a dry run the host serves a step only from simulated services: the built-in checks probe
/// them (a closed port on this machine is never tried), the webhook sends nothing, the approval
/// is granted by them; a dry run against services that reach real VMs is refused before the
/// step runs at all.
#[test]
fn builtins_in_a_dry_run_reach_only_the_simulated_site() {
    runtime().block_on(async {
        let mut grants = Grants::default();
        grants.tcp.push("127.0.0.1:9".into());
        grants.http.push("http://127.0.0.1:9/health".into());
        let cases = [
            (
                "tcp-check",
                r#"{"address":"127.0.0.1:9"}"#,
                Some("tcp 127.0.0.1:9"),
            ),
            (
                "http-check",
                r#"{"url":"http://127.0.0.1:9/health"}"#,
                Some("get http://127.0.0.1:9/health"),
            ),
            ("webhook", r#"{"url":"http://127.0.0.1:9/hook"}"#, None),
            ("approval", r#"{"message":"go?"}"#, Some("approve go?")),
        ];
        for (name, config, asked) in cases {
            let plugin = load_builtin(name).await;
            let world = Recorder::new(true);
            let mut req = request(name, config, grants.clone(), world.clone(), short(5_000));
            req.context.dry_run = true;
            let report = plugin.run(&req).await;
            assert!(report.outcome.is_ok(), "{name}: {report:?}");
            assert_eq!(
                world.calls(),
                asked.map(String::from).into_iter().collect::<Vec<_>>(),
                "{name}"
            );
            assert!(
                report.log.iter().any(|l| l.message.starts_with("dry run")),
                "{name}: {:?}",
                report.log
            );
        }
        // Services that reach real VMs: the dry run is refused and nothing is asked of them.
        let plugin = load_builtin("tcp-check").await;
        let real = Recorder::new(false);
        let mut req = request(
            "tcp-check",
            r#"{"address":"127.0.0.1:9"}"#,
            grants.clone(),
            real.clone(),
            short(5_000),
        );
        req.context.dry_run = true;
        let report = plugin.run(&req).await;
        assert!(
            report
                .outcome
                .summary()
                .contains("a dry run needs simulated host services"),
            "{report:?}"
        );
        assert!(real.calls().is_empty(), "{:?}", real.calls());
        // Without the dry run, the same closed port fails the check for real.
        let report = plugin
            .run(&request(
                "tcp-check",
                r#"{"address":"127.0.0.1:9"}"#,
                grants,
                Arc::new(NoServices),
                short(5_000),
            ))
            .await;
        assert!(!report.outcome.is_ok(), "{report:?}");
    });
}
