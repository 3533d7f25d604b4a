//! `demo-vm`: behaves like an application on a VM, so a drill can measure what it lost.
//!
//! It validates its disk when it starts (crash recovery) and reports the last intact record,
//! then writes a sequenced, checksummed record at a steady rate, syncing each, and serves
//! `GET /health` (200 once the disk checked out) and `GET /state` (JSON: the newest record
//! written, the one recovered at start). `--check` only validates the disk and prints the
//! result as JSON: exit 0 if it is consistent, 1 if not.

pub mod disk;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Parser)]
#[command(
    name = "demo-vm",
    about = "A stand-in application that makes data loss measurable."
)]
struct Args {
    /// The disk image (a raw file; at least two 4 KiB slots).
    #[arg(long)]
    disk: PathBuf,
    /// Where to serve /health and /state (port 0 picks one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Records written per second.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Validate the disk, print the result as JSON and exit (0 consistent, 1 not).
    #[arg(long)]
    check: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs demo-vm with `args` (the first is the program name): what `main` does, so the
/// `lifeboat` binary can carry a demo VM too (`lifeboat demo-vm …`).
pub fn run_from<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // Not `parse_from`: a library (the `lifeboat` binary carries this) must not exit the process.
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo-vm: {e}");
            2
        }
    }
}

fn run(args: Args) -> Result<u8, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(!args.check)
        .open(&args.disk)
        .map_err(|e| format!("cannot open disk {}: {e}", args.disk.display()))?;
    let check =
        disk::check(&file).map_err(|e| format!("cannot read disk {}: {e}", args.disk.display()))?;
    if args.check {
        println!("{}", serde_json::to_string(&check).unwrap_or_default());
        return Ok(if check.consistent() { 0 } else { 1 });
    }
    if check.slots < 2 {
        return Err(format!(
            "disk {} is smaller than two 4 KiB slots",
            args.disk.display()
        ));
    }
    if !check.consistent() {
        return Err(format!(
            "disk {} is not consistent: records {:?} are missing before record {}",
            args.disk.display(),
            &check.missing[..check.missing.len().min(10)],
            check.last.map_or(0, |r| r.seq)
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(serve(args, file, check))
}

struct State {
    recovered: disk::Check,
    last_seq: AtomicU64,
    last_ms: AtomicU64,
    written: AtomicU64,
}

async fn serve(args: Args, file: std::fs::File, recovered: disk::Check) -> Result<u8, String> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let slots = recovered.slots;
    let start = recovered.last.map_or(0, |r| r.seq);
    println!(
        "demo-vm: disk {}: last intact record {start}; listening on {addr}",
        args.disk.display()
    );
    let _ = std::io::stdout().flush();
    let state = Arc::new(State {
        last_seq: AtomicU64::new(start),
        last_ms: AtomicU64::new(recovered.last.map_or(0, |r| r.unix_ms)),
        written: AtomicU64::new(0),
        recovered,
    });

    // The writer: one record per tick, synced before the next.
    let writer_state = state.clone();
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let writer = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut seq = start;
        loop {
            seq += 1;
            let ms = now_ms();
            disk::write(&file, slots, seq, ms)
                .map_err(|e| format!("write of record {seq} failed: {e}"))?;
            writer_state.last_seq.store(seq, Ordering::SeqCst);
            writer_state.last_ms.store(ms, Ordering::SeqCst);
            writer_state.written.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(period);
        }
    });

    let server = async {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                // Read the whole request head before answering: closing on a half-read request
                // would reset the client's connection.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&buf);
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = match path {
                    "/health" => ("200 OK", "ok\n".to_string()),
                    "/state" => ("200 OK", state_json(&state)),
                    _ => ("404 Not Found", "not found\n".to_string()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    };
    tokio::select! {
        result = writer => match result {
            Ok(Err(e)) => Err(e),
            _ => Err("the writer stopped".into()),
        },
        () = server => Ok(0),
        _ = tokio::signal::ctrl_c() => Ok(0),
    }
}

fn state_json(state: &State) -> String {
    let doc = serde_json::json!({
        "last_record": state.last_seq.load(Ordering::SeqCst),
        "last_record_unix_ms": state.last_ms.load(Ordering::SeqCst),
        "written_since_start": state.written.load(Ordering::SeqCst),
        "recovered": state.recovered,
    });
    format!("{doc}\n")
}
