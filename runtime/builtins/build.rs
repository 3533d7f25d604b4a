// A build script reports failure by panicking.
#![allow(clippy::panic, clippy::unwrap_used)]

//! Builds the `plugins/` workspace for wasm32-wasip2 and exposes the components: the built-in
//! steps are embedded with `include_bytes!`, the test fixtures are named by path. The guest build
//! has its own target directory beside this workspace's, so it is incremental and shared by
//! every profile.

use std::path::{Path, PathBuf};
use std::process::Command;

const BUILTINS: &[(&str, &str)] = &[
    ("boot-group", "lifeboat_builtin_boot_group"),
    ("tcp-check", "lifeboat_builtin_tcp_check"),
    ("http-check", "lifeboat_builtin_http_check"),
    ("approval", "lifeboat_builtin_approval"),
    ("wait", "lifeboat_builtin_wait"),
    ("webhook", "lifeboat_builtin_webhook"),
];

const OTHERS: &[(&str, &str)] = &[
    ("TEMPLATE", "lifeboat_step_template"),
    ("INFINITE_LOOP", "lifeboat_fixture_infinite_loop"),
    ("MEMORY_BOMB", "lifeboat_fixture_memory_bomb"),
    ("DEEP_RECURSION", "lifeboat_fixture_deep_recursion"),
    ("PANIC", "lifeboat_fixture_panic"),
    ("LOG_FLOOD", "lifeboat_fixture_log_flood"),
    ("HUGE_STRING", "lifeboat_fixture_huge_string"),
    ("UNGRANTED_CALL", "lifeboat_fixture_ungranted_call"),
    ("WASI_FILESYSTEM", "lifeboat_fixture_wasi_filesystem"),
    ("NEWER_API", "lifeboat_fixture_newer_api"),
    ("API_0_1_0", "lifeboat_fixture_api_0_1_0"),
    ("NOOP", "lifeboat_fixture_noop"),
];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let plugins = root.join("plugins");
    for watched in [
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
        "plugins/sdk",
        "plugins/builtins",
        "plugins/fixtures",
        "plugins/template",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    // OUT_DIR is <target>/<profile>/build/<pkg>/out: put the guests in <target>/wasm-plugins.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|p| p.join("wasm-plugins"))
        .unwrap_or_else(|| out_dir.join("wasm-plugins"));

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags and wrappers (clippy, coverage) are for the host, not the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    let status = command.status().expect("run cargo for plugins/");
    if !status.success() {
        panic!(
            "building plugins/ for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
    }

    let release = target_dir.join("wasm32-wasip2/release");
    let mut generated = String::new();
    generated.push_str("/// The built-in steps: (name after `builtin:`, component bytes).\n");
    generated.push_str("pub const BUILTINS: &[(&str, &[u8])] = &[\n");
    for (name, file) in BUILTINS {
        let path = wasm(&release, file);
        generated.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    generated.push_str("];\n\n");
    generated.push_str(
        "/// Paths of the template and the hostile fixtures, for tests and benchmarks.\n",
    );
    generated.push_str("pub mod artifacts {\n");
    for (name, file) in OTHERS {
        let path = wasm(&release, file);
        generated.push_str(&format!(
            "    pub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    generated.push_str("}\n");
    std::fs::write(out_dir.join("components.rs"), generated).expect("write components.rs");
}

fn wasm(release: &Path, file: &str) -> PathBuf {
    let path = release.join(format!("{file}.wasm"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
