//! The `demo-vm` binary; everything is in the library.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(lifeboat_demo_vm::run_from(std::env::args_os()))
}
