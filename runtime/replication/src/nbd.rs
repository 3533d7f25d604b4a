//! A minimal NBD client over a Unix socket: how a scan reads a disk that only its hypervisor
//! can show frozen (QEMU exports a running VM's copy-before-write fleece over NBD; libvirt a
//! pull backup). Reads use the fixed newstyle handshake and simple replies; `block_status`
//! opens a second connection that negotiates structured replies and one metadata context
//! (`qemu:dirty-bitmap:NAME`: what changed since a checkpoint). Blocking, like the rest of the
//! capture.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub(crate) const FLAG_NO_ZEROES: u16 = 2;
pub(crate) const OPT_EXPORT_NAME: u32 = 1;
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_BLOCK_STATUS: u16 = 7;
pub(crate) const OPT_GO: u32 = 7;
pub(crate) const OPT_STRUCTURED_REPLY: u32 = 8;
pub(crate) const OPT_SET_META_CONTEXT: u32 = 10;
pub(crate) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(crate) const REP_ACK: u32 = 1;
pub(crate) const REP_INFO: u32 = 3;
pub(crate) const REP_META_CONTEXT: u32 = 4;
pub(crate) const INFO_EXPORT: u16 = 0;
pub(crate) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub(crate) const REPLY_FLAG_DONE: u16 = 1;
pub(crate) const REPLY_TYPE_NONE: u16 = 0;
pub(crate) const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// The most one block-status request asks about (the length field is 32 bits).
const MAX_STATUS: u64 = 1 << 30;
/// QEMU serves reads of up to 32 MiB; larger reads are split.
const MAX_READ: usize = 32 << 20;
/// No single exchange with a local server should take longer than this.
const TIMEOUT: Duration = Duration::from_secs(60);

/// One export, read-only.
#[derive(Debug)]
pub struct NbdExport {
    socket: PathBuf,
    name: String,
    size: u64,
    stream: Mutex<UnixStream>,
}

impl NbdExport {
    /// Connects to the server at `socket` and opens export `name`.
    pub fn connect(socket: &Path, name: &str) -> std::io::Result<Self> {
        let (mut stream, no_zeroes) = greet(socket)?;
        option(&mut stream, OPT_EXPORT_NAME, name.as_bytes())?;
        // An unknown export makes the server hang up here.
        let mut info = [0u8; 10];
        stream.read_exact(&mut info).map_err(|e| {
            std::io::Error::new(e.kind(), format!("NBD export `{name}` was refused ({e})"))
        })?;
        if !no_zeroes {
            let mut zeroes = [0u8; 124];
            stream.read_exact(&mut zeroes)?;
        }
        let size = u64::from_be_bytes(info[0..8].try_into().unwrap_or_default());
        Ok(Self {
            socket: socket.to_path_buf(),
            name: name.to_string(),
            size,
            stream: Mutex::new(stream),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` from `offset` (which, with the length, must lie inside the export).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "read past the end of NBD export `{}` ({} bytes)",
                    self.name, self.size
                ),
            ));
        }
        let mut stream = self
            .stream
            .lock()
            .map_err(|_| protocol("an earlier read of this export panicked"))?;
        let mut at = 0usize;
        while at < buf.len() {
            let len = (buf.len() - at).min(MAX_READ);
            let handle = offset + at as u64;
            stream.write_all(&request(CMD_READ, handle, offset + at as u64, len as u32))?;
            let mut reply = [0u8; 16];
            stream.read_exact(&mut reply)?;
            let magic = u32::from_be_bytes(reply[0..4].try_into().unwrap_or_default());
            let error = u32::from_be_bytes(reply[4..8].try_into().unwrap_or_default());
            let got = u64::from_be_bytes(reply[8..16].try_into().unwrap_or_default());
            if magic != SIMPLE_REPLY_MAGIC || got != handle {
                return Err(protocol("the NBD server sent a reply out of step"));
            }
            if error != 0 {
                return Err(std::io::Error::from_raw_os_error(error as i32));
            }
            stream.read_exact(&mut buf[at..at + len])?;
            at += len;
        }
        Ok(())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// The extents of export `name` at `socket` whose flags in metadata context `context` have
/// bit 0 set (for `qemu:dirty-bitmap:NAME`, the dirty ones), merged where they touch.
pub fn block_status(socket: &Path, name: &str, context: &str) -> std::io::Result<Vec<(u64, u64)>> {
    let (mut stream, _) = greet(socket)?;
    option(&mut stream, OPT_STRUCTURED_REPLY, &[])?;
    let replies = option_replies(&mut stream, OPT_STRUCTURED_REPLY)?;
    if replies.iter().all(|(t, _)| *t != REP_ACK) {
        return Err(protocol("the NBD server refuses structured replies"));
    }
    let mut query = Vec::new();
    query.extend_from_slice(&(name.len() as u32).to_be_bytes());
    query.extend_from_slice(name.as_bytes());
    query.extend_from_slice(&1u32.to_be_bytes());
    query.extend_from_slice(&(context.len() as u32).to_be_bytes());
    query.extend_from_slice(context.as_bytes());
    option(&mut stream, OPT_SET_META_CONTEXT, &query)?;
    let context_id = option_replies(&mut stream, OPT_SET_META_CONTEXT)?
        .into_iter()
        .find(|(t, data)| *t == REP_META_CONTEXT && data.len() >= 4)
        .map(|(_, data)| be32(&data[0..4]))
        .ok_or_else(|| protocol(&format!("export `{name}` offers no context `{context}`")))?;
    let mut go = Vec::new();
    go.extend_from_slice(&(name.len() as u32).to_be_bytes());
    go.extend_from_slice(name.as_bytes());
    go.extend_from_slice(&0u16.to_be_bytes());
    option(&mut stream, OPT_GO, &go)?;
    let size = option_replies(&mut stream, OPT_GO)?
        .into_iter()
        .find(|(t, data)| {
            *t == REP_INFO
                && data.len() >= 10
                && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT
        })
        .map(|(_, data)| be64(&data[2..10]))
        .ok_or_else(|| protocol(&format!("NBD export `{name}` told no size")))?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut at = 0u64;
    let mut handle = 0u64;
    while at < size {
        handle += 1;
        let len = (size - at).min(MAX_STATUS);
        stream.write_all(&request(CMD_BLOCK_STATUS, handle, at, len as u32))?;
        let mut covered = at;
        loop {
            let mut head = [0u8; 20];
            stream.read_exact(&mut head)?;
            if be32(&head[0..4]) != STRUCTURED_REPLY_MAGIC || be64(&head[8..16]) != handle {
                return Err(protocol("the NBD server sent a reply out of step"));
            }
            let flags = u16::from_be_bytes([head[4], head[5]]);
            let kind = u16::from_be_bytes([head[6], head[7]]);
            let length = be32(&head[16..20]) as usize;
            if length > 64 << 20 {
                return Err(protocol("the NBD server sent an oversized reply"));
            }
            let mut payload = vec![0u8; length];
            stream.read_exact(&mut payload)?;
            if kind & 0x8000 != 0 {
                let error = payload.get(0..4).map(be32).unwrap_or(0);
                let text = payload
                    .get(6..)
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .unwrap_or_default();
                return Err(std::io::Error::other(format!(
                    "NBD block status of `{name}` failed (error {error}): {text}"
                )));
            }
            if kind == REPLY_TYPE_BLOCK_STATUS
                && payload.len() >= 4
                && be32(&payload[0..4]) == context_id
            {
                for d in payload[4..].chunks_exact(8) {
                    let (len, flags) = (u64::from(be32(&d[0..4])), be32(&d[4..8]));
                    if flags & 1 != 0 {
                        match out.last_mut() {
                            Some((s, l)) if *s + *l == covered => *l += len,
                            _ => out.push((covered, len)),
                        }
                    }
                    covered += len;
                }
            } else if kind != REPLY_TYPE_NONE && kind != REPLY_TYPE_BLOCK_STATUS {
                return Err(protocol(
                    "the NBD server answered block status with something else",
                ));
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        if covered <= at {
            return Err(protocol("the NBD server's block status covered nothing"));
        }
        at = covered.min(size);
    }
    let _ = stream.write_all(&request(CMD_DISC, 0, 0, 0));
    if let Some(last) = out.last_mut() {
        last.1 = last.1.min(size - last.0);
    }
    Ok(out)
}

/// Connects and does the fixed newstyle greeting; whether the server skips the zero padding.
fn greet(socket: &Path) -> std::io::Result<(UnixStream, bool)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut hello = [0u8; 18];
    stream.read_exact(&mut hello)?;
    if be64(&hello[0..8]) != NBDMAGIC || be64(&hello[8..16]) != IHAVEOPT {
        return Err(protocol("not a newstyle NBD server"));
    }
    let flags = u16::from_be_bytes([hello[16], hello[17]]);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(protocol("the NBD server does not speak fixed newstyle"));
    }
    stream.write_all(&u32::from(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)).to_be_bytes())?;
    Ok((stream, flags & FLAG_NO_ZEROES != 0))
}

fn option(stream: &mut UnixStream, opt: u32, data: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    stream.write_all(&out)
}

/// The server's replies to option `opt`, up to its final one (an ack, or an error).
fn option_replies(stream: &mut UnixStream, opt: u32) -> std::io::Result<Vec<(u32, Vec<u8>)>> {
    let mut replies = Vec::new();
    loop {
        let mut head = [0u8; 20];
        stream.read_exact(&mut head)?;
        if be64(&head[0..8]) != OPT_REPLY_MAGIC || be32(&head[8..12]) != opt {
            return Err(protocol("the NBD server answered an option out of step"));
        }
        let kind = be32(&head[12..16]);
        let length = be32(&head[16..20]) as usize;
        if length > 1 << 20 {
            return Err(protocol("the NBD server sent an oversized option reply"));
        }
        let mut data = vec![0u8; length];
        stream.read_exact(&mut data)?;
        if kind & 0x8000_0000 != 0 {
            return Err(std::io::Error::other(format!(
                "the NBD server refused option {opt}: {}",
                String::from_utf8_lossy(&data)
            )));
        }
        let last = kind == REP_ACK;
        replies.push((kind, data));
        if last {
            return Ok(replies);
        }
    }
}

/// A transmission-phase request.
fn request(cmd: u16, handle: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut req = [0u8; 28];
    req[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    req[6..8].copy_from_slice(&cmd.to_be_bytes());
    req[8..16].copy_from_slice(&handle.to_be_bytes());
    req[16..24].copy_from_slice(&offset.to_be_bytes());
    req[24..28].copy_from_slice(&len.to_be_bytes());
    req
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[0..4].try_into().unwrap_or_default())
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[0..8].try_into().unwrap_or_default())
}

impl Drop for NbdExport {
    fn drop(&mut self) {
        if let Ok(mut s) = self.stream.lock() {
            let _ = s.write_all(&request(CMD_DISC, 0, 0, 0));
        }
    }
}

fn protocol(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Against a real NBD server (`qemu-nbd`, from qemu-utils): every byte read is the file's.
    #[test]
    fn reads_an_export_served_by_qemu_nbd() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let data: Vec<u8> = (0..(3 << 20) + 4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&image, &data).unwrap();
        let socket = dir.path().join("nbd.sock");
        let mut server = std::process::Command::new("qemu-nbd")
            .args([
                "--read-only",
                "--persistent",
                "--format=raw",
                "--export-name=disk",
            ])
            .arg(format!("--socket={}", socket.display()))
            .arg(&image)
            .spawn()
            .expect("qemu-nbd (qemu-utils) is installed");
        let started = std::time::Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "qemu-nbd did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let export = NbdExport::connect(&socket, "disk").unwrap();
        assert_eq!(export.size(), data.len() as u64);
        let mut whole = vec![0u8; data.len()];
        export.read_at(&mut whole, 0).unwrap();
        assert!(whole == data, "the export's bytes are the file's");
        let mut piece = vec![0u8; 5000];
        export.read_at(&mut piece, 1_000_001).unwrap();
        assert_eq!(piece, data[1_000_001..1_005_001]);
        let past = export
            .read_at(&mut piece, data.len() as u64 - 10)
            .unwrap_err();
        assert!(past.to_string().contains("past the end"), "{past}");
        drop(export);
        assert!(NbdExport::connect(&socket, "nonesuch").is_err());
        let _ = server.kill();
        let _ = server.wait();
    }

    /// A persistent dirty bitmap records a write; `qemu-nbd` exports it as a context, and
    /// block status names exactly the written extents.
    #[test]
    fn block_status_names_the_extents_a_dirty_bitmap_marks() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.qcow2");
        let run = |program: &str, args: &[&str]| {
            let out = std::process::Command::new(program)
                .args(args)
                .output()
                .expect("qemu-utils is installed");
            assert!(out.status.success(), "{program} {args:?}: {out:?}");
        };
        let img = image.to_str().unwrap();
        run("qemu-img", &["create", "-q", "-f", "qcow2", img, "16M"]);
        run("qemu-img", &["bitmap", "--add", img, "b0"]);
        run(
            "qemu-io",
            &["-c", "write 1M 64k", "-c", "write 5M 128k", img],
        );
        let socket = dir.path().join("nbd.sock");
        let mut server = std::process::Command::new("qemu-nbd")
            .args([
                "--read-only",
                "--persistent",
                "--export-name=disk",
                "-B",
                "b0",
            ])
            .arg(format!("--socket={}", socket.display()))
            .arg(&image)
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "qemu-nbd did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let dirty = block_status(&socket, "disk", "qemu:dirty-bitmap:b0").unwrap();
        assert_eq!(dirty, vec![(1 << 20, 64 << 10), (5 << 20, 128 << 10)]);
        let none = block_status(&socket, "disk", "qemu:dirty-bitmap:nonesuch").unwrap_err();
        assert!(none.to_string().contains("no context"), "{none}");
        let _ = server.kill();
        let _ = server.wait();
    }
}
