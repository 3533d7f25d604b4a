use std::io::IsTerminal;
use std::process::ExitCode;

// glibc's malloc keeps memory per thread arena: a daemon running cycles on many threads held
// several times its live memory. jemalloc returns it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let stdout = std::io::stdout();
    let color = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut stdout = stdout.lock();
    // Not locked for the whole run: log lines come from every thread (a lock held here would
    // block them forever).
    let mut stderr = std::io::stderr();
    let mut io = lifeboat_cli::Io {
        stdout: &mut stdout,
        stderr: &mut stderr,
        stderr_is_terminal: std::io::stderr().is_terminal(),
        stdout_is_color_terminal: color,
        server: &lifeboat_daemon::Daemon,
        program: std::env::current_exe()
            .map(|p| vec![p.into_os_string()])
            .unwrap_or_else(|_| vec!["lifeboat".into()]),
    };
    ExitCode::from(lifeboat_cli::run(std::env::args_os(), &mut io))
}
