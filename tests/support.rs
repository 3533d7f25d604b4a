//! Running `lifeboat` in-process, as a user would from the repository root.

use std::path::{Path, PathBuf};

/// The repository root (the folder holding `lifeboat.toml` and `plans/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// What one `lifeboat` invocation did.
#[derive(Debug)]
pub struct Outcome {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

/// Run `lifeboat ARGS…` with colour off. Paths in the arguments may be absolute; `stdout` has the
/// repository root stripped from them so golden files read as if run from the root.
pub fn lifeboat(args: &[&str]) -> Outcome {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut io = lifeboat_cli::Io {
        stdout: &mut stdout,
        stderr: &mut stderr,
        stderr_is_terminal: false,
        stdout_is_color_terminal: false,
        server: &lifeboat_daemon::Daemon,
        program: vec![
            env!("CARGO_BIN_EXE_lifeboat-test-helper").into(),
            "cli".into(),
        ],
    };
    let code = lifeboat_cli::run(
        std::iter::once("lifeboat").chain(args.iter().copied()),
        &mut io,
    );
    let prefix = format!("{}/", root().display());
    Outcome {
        code,
        stdout: String::from_utf8(stdout)
            .expect("stdout is UTF-8")
            .replace(&prefix, ""),
        stderr: String::from_utf8(stderr)
            .expect("stderr is UTF-8")
            .replace(&prefix, ""),
    }
}

pub fn path(relative: &str) -> String {
    root().join(relative).display().to_string()
}

/// Whether golden files should be rewritten instead of compared (`LIFEBOAT_BLESS=1`).
pub fn bless() -> bool {
    std::env::var_os("LIFEBOAT_BLESS").is_some_and(|v| v == "1")
}

/// The Python example step, built with componentize-py (WASI stubbed out) and cached by the
/// hash of its source and of the WIT package, so the ~10 s build happens once per change.
pub fn python_kv_note() -> Vec<u8> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let source_dir = root().join("plugins/python/kv-note");
    let mut hasher = DefaultHasher::new();
    for file in [source_dir.join("app.py"), root().join("wit/lifeboat.wit")] {
        std::fs::read(&file)
            .expect("source readable")
            .hash(&mut hasher);
    }
    let out_dir = root().join("target/python-plugins");
    std::fs::create_dir_all(&out_dir).expect("output dir");
    let out = out_dir.join(format!("kv-note-{:016x}.wasm", hasher.finish()));
    if !out.is_file() {
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let status = std::process::Command::new("componentize-py")
            .current_dir(&source_dir)
            .args(["-q", "-d"])
            .arg(root().join("wit"))
            .args(["-w", "step", "componentize", "app", "--stub-wasi", "-o"])
            .arg(&tmp)
            .status()
            .expect("componentize-py runs (pip install componentize-py==0.25.1)");
        assert!(status.success(), "componentize-py failed");
        std::fs::rename(&tmp, &out).expect("rename");
    }
    std::fs::read(&out).expect("component")
}
