//! libvirt's remote protocol, spoken directly: XDR messages on the daemon's socket, the few
//! procedures Lifeboat calls (domains, checkpoints, pull backups, networks, the host's memory).
//! No C library is linked, so a Lifeboat binary runs where libvirt is not installed, and no
//! `unsafe` is needed for the calls the `virt` crate does not wrap (backups, checkpoints, job
//! abort). Procedure numbers and layouts are those of `remote_protocol.x`, which libvirt keeps
//! stable (numbers are only ever added). Blocking, one call at a time per connection.
//!
//! A daemon on this machine is reached on its Unix socket; one on another host through the
//! system's `ssh` client (the user's keys, agent and known hosts, as `virsh` does), which runs
//! `virt-ssh-helper` (or `nc -U SOCKET`) there and carries the same messages on its pipes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

const PROGRAM: u32 = 0x2000_8086;
const VERSION: u32 = 1;
const TYPE_CALL: u32 = 0;
const TYPE_REPLY: u32 = 1;
const STATUS_OK: u32 = 0;
const STATUS_ERROR: u32 = 1;
/// libvirt refuses messages larger than this; so do we.
const MAX_MESSAGE: usize = 32 << 20;
/// No call to a local daemon should take longer (a backup begins in 0.1 s).
const TIMEOUT: Duration = Duration::from_secs(120);

/// The procedures called, by their number in `remote_protocol.x`.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum Proc {
    ConnectOpen = 1,
    AuthList = 66,
    AuthPolkit = 70,
    NodeGetInfo = 6,
    DomainDefineXml = 11,
    DomainDestroy = 12,
    DomainGetXmlDesc = 14,
    DomainLookupByName = 23,
    DomainResume = 28,
    DomainShutdown = 33,
    DomainSuspend = 34,
    ConnectGetHostname = 59,
    NodeGetFreeMemory = 102,
    DomainAbortJob = 164,
    DomainCreateWithFlags = 196,
    DomainGetState = 212,
    DomainGetBlockJobInfo = 238,
    DomainBlockPull = 240,
    DomainUndefineFlags = 231,
    ConnectListAllDomains = 273,
    ConnectListAllNetworks = 283,
    DomainCheckpointCreateXml = 411,
    DomainListAllCheckpoints = 413,
    DomainCheckpointDelete = 417,
    DomainBackupBegin = 421,
    NetworkLookupByName = 46,
    NetworkDefineXml = 41,
    NetworkCreate = 39,
    NetworkDestroy = 42,
    NetworkGetXmlDesc = 43,
    NetworkUndefine = 49,
    NetworkUpdate = 291,
}

/// What went wrong talking to libvirt.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot reach libvirt at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// `ssh` to a remote host failed; its own words.
    #[error("cannot reach libvirt on {host} through ssh: {why}")]
    Ssh { host: String, why: String },
    #[error("libvirt connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("libvirt sent something Lifeboat cannot read: {0}")]
    Protocol(String),
    /// libvirt's own error: its code (`virErrorNumber`) and message.
    #[error("{message}")]
    Libvirt { code: i32, message: String },
    #[error("unsupported libvirt URI `{uri}`: {why}")]
    Uri { uri: String, why: String },
}

impl RpcError {
    /// libvirt's `VIR_ERR_NO_DOMAIN`.
    pub fn is_no_domain(&self) -> bool {
        matches!(self, Self::Libvirt { code: 42, .. })
    }

    /// libvirt's `VIR_ERR_NO_NETWORK`.
    pub fn is_no_network(&self) -> bool {
        matches!(self, Self::Libvirt { code: 43, .. })
    }
}

/// Where a libvirt daemon is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Its socket on this machine.
    Local(PathBuf),
    /// A daemon on another host: the `ssh` command line that reaches it.
    Ssh { host: String, argv: Vec<String> },
}

/// Where a libvirt URI is served and the name to open there: `qemu:///system` (the local
/// daemon's socket), `qemu+unix:///system?socket=PATH`, and `qemu+ssh://[USER@]HOST[:PORT]/system`
/// with libvirt's `keyfile=`, `no_verify=1` and `socket=` parameters.
pub fn endpoint(uri: &str) -> Result<(Endpoint, String), RpcError> {
    let bad = |why: &str| RpcError::Uri {
        uri: uri.to_string(),
        why: why.to_string(),
    };
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| bad("expected DRIVER[+TRANSPORT]://[HOST]/PATH"))?;
    let (driver, transport) = match scheme.split_once('+') {
        Some((d, t)) => (d, Some(t)),
        None => (scheme, None),
    };
    if driver != "qemu" {
        return Err(bad("Lifeboat drives QEMU domains (`qemu://…`)"));
    }
    let (hostpath, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let (host, path) = hostpath.split_at(hostpath.find('/').unwrap_or(hostpath.len()));
    if path != "/system" {
        return Err(bad("only the system daemon (`/system`) is supported"));
    }
    let params: Vec<(&str, &str)> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect();
    let param = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    match transport {
        None | Some("unix") if host.is_empty() => {
            if let Some((k, _)) = params.iter().find(|(k, _)| *k != "socket") {
                return Err(bad(&format!(
                    "unknown parameter `{k}` (a local daemon takes `socket=`)"
                )));
            }
            let socket = param("socket").unwrap_or("/run/libvirt/libvirt-sock");
            Ok((
                Endpoint::Local(PathBuf::from(socket)),
                "qemu:///system".to_string(),
            ))
        }
        Some("ssh") if !host.is_empty() => {
            if let Some((k, _)) = params
                .iter()
                .find(|(k, _)| !matches!(*k, "socket" | "keyfile" | "no_verify"))
            {
                return Err(bad(&format!(
                    "unknown parameter `{k}` (ssh takes `keyfile=`, `no_verify=1` and `socket=`)"
                )));
            }
            let (user, hostport) = match host.rsplit_once('@') {
                Some((u, h)) => (Some(u), h),
                None => (None, host),
            };
            // `host`, `host:port`, `[v6]`, `[v6]:port`.
            let (name, port) = match hostport.strip_prefix('[') {
                Some(v6) => {
                    let (addr, rest) = v6
                        .split_once(']')
                        .ok_or_else(|| bad("an IPv6 address needs its closing `]`"))?;
                    (addr, rest.strip_prefix(':'))
                }
                None => match hostport.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (hostport, None),
                },
            };
            let port: Option<u16> = port
                .map(|p| p.parse().map_err(|_| bad("the port is not a number")))
                .transpose()?;
            if name.is_empty() {
                return Err(bad("no host to reach"));
            }
            let mut argv: Vec<String> = [
                "ssh",
                "-T",
                "-e",
                "none",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                // A dead link ends the connection (and every call on it) within 45 s.
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=3",
            ]
            .map(String::from)
            .to_vec();
            if let Some(p) = port {
                argv.extend(["-p".into(), p.to_string()]);
            }
            if let Some(u) = user {
                argv.extend(["-l".into(), u.to_string()]);
            }
            if let Some(k) = param("keyfile") {
                argv.extend(["-i".into(), k.to_string()]);
            }
            if param("no_verify") == Some("1") {
                argv.extend(
                    [
                        "-o",
                        "StrictHostKeyChecking=no",
                        "-o",
                        "UserKnownHostsFile=/dev/null",
                    ]
                    .map(String::from),
                );
            }
            argv.extend(["--".into(), name.to_string()]);
            match param("socket") {
                Some(socket) => argv.extend(["nc".into(), "-U".into(), socket.to_string()]),
                None => argv.extend(["virt-ssh-helper".into(), "qemu:///system".into()]),
            }
            Ok((
                Endpoint::Ssh {
                    host: name.to_string(),
                    argv,
                },
                "qemu:///system".to_string(),
            ))
        }
        _ => Err(bad(
            "reach a daemon with `qemu:///system`, `qemu+unix:///system?socket=PATH` or `qemu+ssh://[USER@]HOST[:PORT]/system` (`qemu+tls` is not spoken)",
        )),
    }
}

/// Whether `uri` names a daemon on another host.
pub fn is_remote(uri: &str) -> bool {
    matches!(endpoint(uri), Ok((Endpoint::Ssh { .. }, _)))
}

/// A byte stream to a daemon: its socket, or an `ssh` child's pipes.
trait Link: Read + Write + Send + std::fmt::Debug {}

impl Link for UnixStream {}

/// An `ssh` child carrying the protocol: its stdout is read, its stdin written; it is killed
/// when the connection is dropped.
#[derive(Debug)]
struct SshLink {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::process::ChildStdout,
}

impl Read for SshLink {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdout.read(buf)
    }
}

impl Write for SshLink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stdin.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stdin.flush()
    }
}

impl Link for SshLink {}

impl Drop for SshLink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One open connection to a libvirt daemon.
#[derive(Debug)]
pub struct Connection {
    stream: Mutex<(Box<dyn Link>, u32)>,
}

impl Connection {
    /// Connects to the daemon serving `uri` and opens the connection there.
    pub fn open(uri: &str) -> Result<Self, RpcError> {
        let (endpoint, name) = endpoint(uri)?;
        let (link, ssh_errors): (Box<dyn Link>, _) = match &endpoint {
            Endpoint::Local(socket) => {
                let stream = UnixStream::connect(socket).map_err(|source| RpcError::Connect {
                    socket: socket.clone(),
                    source,
                })?;
                stream.set_read_timeout(Some(TIMEOUT))?;
                stream.set_write_timeout(Some(TIMEOUT))?;
                (Box::new(stream), None)
            }
            Endpoint::Ssh { host, argv } => {
                let errors = tempfile_for_ssh()?;
                let mut child = std::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(errors.try_clone()?)
                    .spawn()
                    .map_err(|e| RpcError::Ssh {
                        host: host.clone(),
                        why: format!("cannot run ssh: {e}"),
                    })?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(RpcError::Protocol("ssh without pipes".into()));
                };
                (
                    Box::new(SshLink {
                        child,
                        stdin,
                        stdout,
                    }),
                    Some((host.clone(), errors)),
                )
            }
        };
        let c = Self {
            stream: Mutex::new((link, 0)),
        };
        let opened = c.authenticate().and_then(|()| {
            let mut args = Xdr::default();
            args.opt_string(Some(&name)).u32(0);
            c.call(Proc::ConnectOpen, args).map(|_| ())
        });
        match (opened, ssh_errors) {
            (Ok(()), _) => Ok(c),
            // The connection died before it opened: ssh says why.
            (Err(RpcError::Io(e)), Some((host, mut errors))) => {
                drop(c);
                let mut why = String::new();
                use std::io::Seek;
                let _ = errors.seek(std::io::SeekFrom::Start(0));
                let _ = errors.read_to_string(&mut why);
                let why = why.trim();
                Err(RpcError::Ssh {
                    host,
                    why: if why.is_empty() {
                        e.to_string()
                    } else {
                        why.to_string()
                    },
                })
            }
            (Err(e), _) => Err(e),
        }
    }

    /// The socket's authentication: none, or polkit (which the daemon grants the users its
    /// policy allows, root always). SASL is not spoken.
    fn authenticate(&self) -> Result<(), RpcError> {
        let mut r = self.call(Proc::AuthList, Xdr::default())?;
        let types = r.array(|r| r.u32())?;
        if types.is_empty() || types.contains(&0) {
            return Ok(());
        }
        if types.contains(&2) {
            self.call(Proc::AuthPolkit, Xdr::default())?;
            return Ok(());
        }
        Err(RpcError::Protocol(
            "the daemon asks for SASL authentication, which Lifeboat does not speak; set `auth_unix_rw = \"polkit\"` or `\"none\"` in libvirtd.conf".into(),
        ))
    }

    /// Calls `proc` with `args` and returns the reply's body.
    pub fn call(&self, proc: Proc, args: Xdr) -> Result<Reader, RpcError> {
        let mut guard = self
            .stream
            .lock()
            .map_err(|_| RpcError::Protocol("an earlier call panicked".into()))?;
        let (stream, serial) = &mut *guard;
        *serial += 1;
        let mut head = Xdr::default();
        head.u32(PROGRAM)
            .u32(VERSION)
            .u32(proc as u32)
            .u32(TYPE_CALL)
            .u32(*serial)
            .u32(STATUS_OK);
        let len = 4 + head.0.len() + args.0.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_be_bytes());
        msg.extend_from_slice(&head.0);
        msg.extend_from_slice(&args.0);
        stream.write_all(&msg)?;
        loop {
            let mut len = [0u8; 4];
            stream.read_exact(&mut len)?;
            let len = u32::from_be_bytes(len) as usize;
            if !(28..=MAX_MESSAGE).contains(&len) {
                return Err(RpcError::Protocol(format!("a message of {len} bytes")));
            }
            let mut body = vec![0u8; len - 4];
            stream.read_exact(&mut body)?;
            let mut r = Reader::new(body);
            let (prog, _vers, got_proc, kind, got_serial, status) =
                (r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?);
            // Keepalives and events are not ours to answer.
            if prog != PROGRAM || kind != TYPE_REPLY || got_serial != *serial {
                continue;
            }
            if got_proc != proc as u32 {
                return Err(RpcError::Protocol(format!(
                    "a reply to procedure {got_proc} for a call of {}",
                    proc as u32
                )));
            }
            return match status {
                STATUS_OK => Ok(r),
                STATUS_ERROR => {
                    let code = r.i32()?;
                    let _domain = r.i32()?;
                    let message = r
                        .opt_string()?
                        .unwrap_or_else(|| format!("libvirt error {code}"));
                    Err(RpcError::Libvirt { code, message })
                }
                other => Err(RpcError::Protocol(format!("reply status {other}"))),
            };
        }
    }
}

/// Where an `ssh` child's messages go: an unnamed temporary file, read when the connection
/// fails (ssh's own words are the reason).
fn tempfile_for_ssh() -> Result<std::fs::File, RpcError> {
    let path = std::env::temp_dir().join(format!(
        "lifeboat-ssh-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

/// An XDR encoding under construction.
#[derive(Debug, Default)]
pub struct Xdr(Vec<u8>);

impl Xdr {
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// `unsigned hyper`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn string(&mut self, s: &str) -> &mut Self {
        self.opaque(s.as_bytes())
    }

    /// Variable-length opaque data: its length, the bytes, zeroes to a multiple of four.
    pub fn opaque(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    pub fn opt_string(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.u32(1).string(s),
            None => self.u32(0),
        }
    }

    /// A `remote_nonnull_domain`: name, UUID, id.
    pub fn domain(&mut self, d: &DomainRef) -> &mut Self {
        self.string(&d.name);
        self.0.extend_from_slice(&d.uuid);
        self.i32(d.id)
    }

    /// A `remote_nonnull_network`: name, UUID.
    pub fn network(&mut self, n: &NetworkRef) -> &mut Self {
        self.string(&n.name);
        self.0.extend_from_slice(&n.uuid);
        self
    }
}

/// A reply's body, read in order.
#[derive(Debug)]
pub struct Reader {
    body: Vec<u8>,
    at: usize,
}

impl Reader {
    fn new(body: Vec<u8>) -> Self {
        Self { body, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], RpcError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.body.len())
            .ok_or_else(|| RpcError::Protocol("a reply shorter than its fields".into()))?;
        let b = &self.body[self.at..end];
        self.at = end;
        Ok(b)
    }

    pub fn u32(&mut self) -> Result<u32, RpcError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i32(&mut self) -> Result<i32, RpcError> {
        Ok(self.u32()? as i32)
    }

    pub fn u64(&mut self) -> Result<u64, RpcError> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }

    pub fn string(&mut self) -> Result<String, RpcError> {
        let len = self.u32()? as usize;
        let padded = len.next_multiple_of(4);
        let b = self.take(padded)?;
        String::from_utf8(b[..len].to_vec())
            .map_err(|_| RpcError::Protocol("a string that is not UTF-8".into()))
    }

    pub fn opt_string(&mut self) -> Result<Option<String>, RpcError> {
        match self.u32()? {
            0 => Ok(None),
            _ => self.string().map(Some),
        }
    }

    fn uuid(&mut self) -> Result<[u8; 16], RpcError> {
        let b = self.take(16)?;
        let mut u = [0u8; 16];
        u.copy_from_slice(b);
        Ok(u)
    }

    pub fn domain(&mut self) -> Result<DomainRef, RpcError> {
        Ok(DomainRef {
            name: self.string()?,
            uuid: self.uuid()?,
            id: self.i32()?,
        })
    }

    pub fn network(&mut self) -> Result<NetworkRef, RpcError> {
        Ok(NetworkRef {
            name: self.string()?,
            uuid: self.uuid()?,
        })
    }

    /// A counted array, each element read by `each`.
    pub fn array<T>(
        &mut self,
        mut each: impl FnMut(&mut Self) -> Result<T, RpcError>,
    ) -> Result<Vec<T>, RpcError> {
        let n = self.u32()? as usize;
        if n > (self.body.len() - self.at) / 4 + 1 {
            return Err(RpcError::Protocol(format!("an array of {n} elements")));
        }
        (0..n).map(|_| each(self)).collect()
    }
}

/// A domain as libvirt names it on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRef {
    pub name: String,
    pub uuid: [u8; 16],
    /// The running domain's id; -1 when it is not running.
    pub id: i32,
}

/// A network as libvirt names it on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRef {
    pub name: String,
    pub uuid: [u8; 16],
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[test]
    fn strings_are_counted_and_padded_to_four_bytes() {
        let mut x = Xdr::default();
        x.string("abcde")
            .opt_string(None)
            .opt_string(Some(""))
            .u32(7);
        assert_eq!(
            x.0,
            [
                0, 0, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
                0, 0, 0, 0, 7
            ]
        );
        let mut r = Reader::new(x.0);
        assert_eq!(r.string().unwrap(), "abcde");
        assert_eq!(r.opt_string().unwrap(), None);
        assert_eq!(r.opt_string().unwrap().as_deref(), Some(""));
        assert_eq!(r.u32().unwrap(), 7);
        assert!(matches!(r.u32(), Err(RpcError::Protocol(_))));
    }

    #[test]
    fn a_hostile_count_is_refused_not_allocated() {
        let mut r = Reader::new(vec![0xff, 0xff, 0xff, 0xff]);
        assert!(r.array(|r| r.u32()).is_err());
    }

    #[test]
    fn uris_name_a_local_socket_or_an_ssh_command_or_are_refused_with_the_reason() {
        assert_eq!(
            endpoint("qemu:///system").unwrap(),
            (
                Endpoint::Local("/run/libvirt/libvirt-sock".into()),
                "qemu:///system".into()
            )
        );
        assert_eq!(
            endpoint("qemu+unix:///system?socket=/tmp/h2/libvirt-sock")
                .unwrap()
                .0,
            Endpoint::Local(PathBuf::from("/tmp/h2/libvirt-sock"))
        );
        let Endpoint::Ssh { host, argv } =
            endpoint("qemu+ssh://root@hv2:2222/system?keyfile=/k/id&no_verify=1")
                .unwrap()
                .0
        else {
            panic!("not ssh")
        };
        assert_eq!(host, "hv2");
        let line = argv.join(" ");
        assert!(
            line.starts_with("ssh -T -e none -o BatchMode=yes"),
            "{line}"
        );
        assert!(
            line.ends_with("-p 2222 -l root -i /k/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -- hv2 virt-ssh-helper qemu:///system"),
            "{line}"
        );
        let Endpoint::Ssh { argv, .. } =
            endpoint("qemu+ssh://hv3/system?socket=/s/sock").unwrap().0
        else {
            panic!("not ssh")
        };
        assert!(argv.join(" ").ends_with("-- hv3 nc -U /s/sock"), "{argv:?}");
        assert!(is_remote("qemu+ssh://hv3/system") && !is_remote("qemu:///system"));
        for (uri, host, port) in [
            ("qemu+ssh://[::1]/system", "::1", None),
            (
                "qemu+ssh://u@[fd00::2]:2200/system",
                "fd00::2",
                Some("2200"),
            ),
        ] {
            let Endpoint::Ssh { host: h, argv } = endpoint(uri).unwrap().0 else {
                panic!("not ssh")
            };
            assert_eq!(h, host);
            assert_eq!(
                argv.iter()
                    .position(|a| a == "-p")
                    .map(|i| argv[i + 1].as_str()),
                port,
                "{uri}"
            );
        }
        for (uri, why) in [
            ("qemu+tls://hv2/system", "not spoken"),
            ("qemu+ssh:///system", "qemu+ssh://[USER@]HOST"),
            ("qemu+ssh://hv2/system?proxy=x", "unknown parameter `proxy`"),
            ("qemu+ssh://hv2:ssh/system", "the port is not a number"),
            ("qemu+ssh://[::1/system", "closing `]`"),
            ("qemu+ssh://u@/system", "no host"),
            ("qemu:///system?keyfile=x", "unknown parameter `keyfile`"),
            ("xen:///system", "QEMU domains"),
            ("qemu:///session", "system daemon"),
            ("nonsense", "expected"),
        ] {
            let e = endpoint(uri).unwrap_err().to_string();
            assert!(e.contains(why), "{uri}: {e}");
        }
    }
}
