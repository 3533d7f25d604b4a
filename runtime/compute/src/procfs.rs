//! What the kernel says about processes, read from `/proc`: who holds a file open for writing,
//! who listens on a TCP port, and which processes descend from which. Lifeboat's own records
//! (the command lines it launched, the pids it journaled) say what should be; these say what is.
//!
//! Linux only; on a system without `/proc` every answer is empty, and callers say so.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A process as a person would recognise it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Its command line, arguments joined by spaces (`[name]` for a kernel thread).
    pub command: String,
}

impl Process {
    pub fn of(pid: u32) -> Self {
        Self {
            pid,
            command: command_line(pid).unwrap_or_else(|| "(gone)".to_string()),
        }
    }
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} (`{}`)", self.pid, self.command)
    }
}

/// A process holding a file open for writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Writer {
    pub process: Process,
    /// The file, as the caller named it.
    pub path: PathBuf,
}

/// Every process on the machine: its pid and its `/proc` folder.
pub fn processes() -> impl Iterator<Item = (u32, PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, entry.path()))
        })
}

/// The command line of process `pid`, arguments joined by spaces.
pub fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.is_empty() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        return Some(format!("[{}]", comm.trim()));
    }
    Some(args.join(" "))
}

/// Every file the processes on the machine (but this one) hold open, by device and inode: one
/// walk of `/proc/*/fd`, read by as many lookups as need it. Descriptors that are not files
/// (sockets, pipes, anonymous inodes) are left out.
#[derive(Debug, Default)]
pub struct OpenFiles {
    by_file: HashMap<(u64, u64), Vec<(u32, std::ffi::OsString)>>,
}

impl OpenFiles {
    /// Walks every process's descriptors now.
    pub fn walk() -> Self {
        let own = std::process::id();
        let mut by_file: HashMap<(u64, u64), Vec<(u32, std::ffi::OsString)>> = HashMap::new();
        for (pid, dir) in processes() {
            if pid == own {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                // Sockets, pipes and anonymous inodes are never a disk: skip the stat.
                if !std::fs::read_link(fd.path()).is_ok_and(|t| t.is_absolute()) {
                    continue;
                }
                if let Ok(m) = std::fs::metadata(fd.path()) {
                    by_file
                        .entry((m.dev(), m.ino()))
                        .or_default()
                        .push((pid, fd.file_name()));
                }
            }
        }
        Self { by_file }
    }

    /// The processes holding `path` open, in any mode.
    pub fn holders(&self, path: &Path) -> Vec<u32> {
        let Some(key) = file_key(path) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = self
            .by_file
            .get(&key)
            .into_iter()
            .flatten()
            .map(|(pid, _)| *pid)
            .collect();
        pids.dedup();
        pids
    }

    /// The processes holding any of `paths` open for writing (the access mode their `fdinfo`
    /// records), one entry per process and file.
    pub fn writers(&self, paths: &[PathBuf]) -> Vec<Writer> {
        let mut out: Vec<Writer> = Vec::new();
        for path in paths {
            let Some(key) = file_key(path) else { continue };
            for (pid, fd) in self.by_file.get(&key).into_iter().flatten() {
                let dir = PathBuf::from(format!("/proc/{pid}"));
                if !opened_for_writing(&dir, &fd.to_string_lossy()) {
                    continue;
                }
                if !out.iter().any(|w| w.process.pid == *pid && &w.path == path) {
                    out.push(Writer {
                        process: Process::of(*pid),
                        path: path.clone(),
                    });
                }
            }
        }
        out
    }
}

/// A file's device and inode (what every name and descriptor of it share).
fn file_key(path: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// The processes (other than this one) that hold any of `paths` open for writing: found by the
/// device and inode each descriptor leads to (so a relative path, a symlink or a hard link is
/// the same file), with the access mode its `fdinfo` records.
pub fn writers(paths: &[PathBuf]) -> Vec<Writer> {
    OpenFiles::walk().writers(paths)
}

/// Whether descriptor `fd` of the process at `/proc/PID` was opened for writing (`O_WRONLY` or
/// `O_RDWR` in the octal `flags:` of its fdinfo). Unknown counts as writing: a check that
/// cannot see must not call a writer a reader.
fn opened_for_writing(proc_dir: &Path, fd: &str) -> bool {
    let Ok(info) = std::fs::read_to_string(proc_dir.join("fdinfo").join(fd)) else {
        return true;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .is_none_or(|flags| flags & 0o3 != 0)
}

/// `pid` and every process descending from it (by parent pid), as the process table stands now.
pub fn family(pid: u32) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (p, dir) in processes() {
        if let Some(parent) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| parent_of(&s))
        {
            children.entry(parent).or_default().push(p);
        }
    }
    let mut out = HashSet::from([pid]);
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children.get(&p).into_iter().flatten() {
            if out.insert(*c) {
                todo.push(*c);
            }
        }
    }
    out
}

/// The parent pid in a `/proc/PID/stat` line (field 4, after the parenthesised command).
fn parent_of(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The listening TCP sockets that a connection to `addr` would reach in the network namespace
/// of process `pid` (`None`: this process's): a listener on the address itself or on the
/// wildcard address, by inode.
pub fn listeners(pid: Option<u32>, addr: SocketAddr) -> Vec<u64> {
    let root = match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}/net")),
        None => PathBuf::from("/proc/self/net"),
    };
    let mut out = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(root.join(file)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some((local, inode)) = listening(line)
                && local.port() == addr.port()
                && (same_ip(local.ip(), addr.ip()) || local.ip().is_unspecified())
            {
                out.push(inode);
            }
        }
    }
    out
}

/// Whether two addresses are one, an IPv4 address and its IPv6-mapped form included.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// A `/proc/net/tcp{,6}` row in state LISTEN (`0A`): its local address and socket inode.
fn listening(line: &str) -> Option<(SocketAddr, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(3) != Some(&"0A") {
        return None;
    }
    let (ip, port) = fields.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = parse_proc_ip(ip)?;
    let inode = fields.get(9)?.parse().ok()?;
    Some((SocketAddr::new(ip, port), inode))
}

/// An address as `/proc/net/tcp{,6}` prints it: 32-bit words in hex, each in the machine's
/// byte order.
fn parse_proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// The processes holding any of the sockets `inodes` (a socket shared by a parent and its
/// children is held by each).
pub fn socket_holders(inodes: &[u64]) -> Vec<u32> {
    if inodes.is_empty() {
        return Vec::new();
    }
    processes()
        .map(|(pid, _)| pid)
        .filter(|pid| holds(*pid, inodes))
        .collect()
}

/// Who answers a TCP connection to an address, as far as the kernel tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answerer {
    /// A process of the VM (its own, or one it started).
    Vm,
    /// Another process holds the listening socket.
    Other(Process),
    /// Nothing the VM's network namespace lists listens there (the answer came from elsewhere:
    /// another host, a forwarder), or `/proc` could not tell.
    Unknown,
}

/// Who holds the listener a connection to `addr` reaches, seen from the network namespace of
/// VM process `vm_pid`: the VM's own process family, another process, or unknown.
pub fn answerer(vm_pid: u32, addr: SocketAddr) -> Answerer {
    let inodes = listeners(Some(vm_pid), addr);
    if inodes.is_empty() {
        return Answerer::Unknown;
    }
    // The common case first, without a walk of every process: the VM's own process listens.
    if holds(vm_pid, &inodes) {
        return Answerer::Vm;
    }
    let holders = socket_holders(&inodes);
    if holders.is_empty() {
        return Answerer::Unknown;
    }
    let family = family(vm_pid);
    if holders.iter().any(|p| family.contains(p)) {
        return Answerer::Vm;
    }
    Answerer::Other(Process::of(holders[0]))
}

/// Whether process `pid` holds any of the sockets `inodes`.
fn holds(pid: u32, inodes: &[u64]) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| {
                t.to_str()
                    .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
                    .is_some_and(|inode: u64| inodes.contains(&inode))
            })
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[test]
    fn proc_addresses_parse_in_the_machines_byte_order() {
        // 127.0.0.1 as the kernel prints it on a little-endian machine.
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_proc_ip("0100007F"),
                Some("127.0.0.1".parse().unwrap())
            );
            assert_eq!(
                parse_proc_ip("00000000000000000000000001000000"),
                Some("::1".parse().unwrap())
            );
        }
        let row = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        let (addr, inode) = listening(row).unwrap();
        assert_eq!(addr.port(), 8080);
        assert_eq!(inode, 12345);
        assert!(listening(&row.replace(" 0A ", " 01 ")).is_none());
    }

    #[test]
    fn a_listener_of_this_process_is_found_and_told_from_another_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let own = std::process::id();
        assert_eq!(answerer(own, addr), Answerer::Vm);
        // From a child's point of view (same namespace), the listener is its parent's.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        match answerer(child.id(), addr) {
            Answerer::Other(p) => assert_eq!(p.pid, own),
            other => panic!("{other:?}"),
        }
        child.kill().unwrap();
        child.wait().unwrap();
        drop(listener);
        assert_eq!(answerer(own, addr), Answerer::Unknown);
    }

    #[test]
    fn a_writer_is_found_by_its_file_and_a_reader_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, b"x").unwrap();
        let mut reader = std::process::Command::new("sh")
            .args(["-c", "exec 3<\"$0\"; exec sleep 5", disk.to_str().unwrap()])
            .spawn()
            .unwrap();
        let mut writer = std::process::Command::new("sh")
            .args(["-c", "exec 3<>\"$0\"; exec sleep 5", disk.to_str().unwrap()])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let found = writers(std::slice::from_ref(&disk));
            let reader_open = Path::new(&format!("/proc/{}/fd/3", reader.id())).exists();
            // The shell opens the file before it becomes `sleep`: wait for both.
            let settled = found
                .first()
                .is_some_and(|w| w.process.command == "sleep 5");
            if (settled && reader_open) || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        for c in [&mut reader, &mut writer] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].process.pid, writer.id());
        assert_eq!(found[0].process.command, "sleep 5", "{found:?}");
    }
}
