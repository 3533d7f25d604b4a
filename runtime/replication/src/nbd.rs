//! A minimal NBD client (fixed newstyle handshake, simple replies, reads only) over a Unix
//! socket: how a scan reads a disk that only its hypervisor can show frozen (QEMU exports a
//! running VM's copy-before-write fleece over NBD). Blocking, like the rest of the capture.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_EXPORT_NAME: u32 = 1;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;
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
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut hello = [0u8; 18];
        stream.read_exact(&mut hello)?;
        let magic = u64::from_be_bytes(hello[0..8].try_into().unwrap_or_default());
        let opt = u64::from_be_bytes(hello[8..16].try_into().unwrap_or_default());
        if magic != NBDMAGIC || opt != IHAVEOPT {
            return Err(protocol("not a newstyle NBD server"));
        }
        let flags = u16::from_be_bytes([hello[16], hello[17]]);
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(protocol("the NBD server does not speak fixed newstyle"));
        }
        let no_zeroes = flags & FLAG_NO_ZEROES != 0;
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES));
        let mut out = Vec::with_capacity(20 + name.len());
        out.extend_from_slice(&client_flags.to_be_bytes());
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        stream.write_all(&out)?;
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
            let mut req = [0u8; 28];
            req[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            req[6..8].copy_from_slice(&CMD_READ.to_be_bytes());
            req[8..16].copy_from_slice(&handle.to_be_bytes());
            req[16..24].copy_from_slice(&(offset + at as u64).to_be_bytes());
            req[24..28].copy_from_slice(&(len as u32).to_be_bytes());
            stream.write_all(&req)?;
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

impl Drop for NbdExport {
    fn drop(&mut self) {
        if let Ok(mut s) = self.stream.lock() {
            let mut req = [0u8; 28];
            req[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            req[6..8].copy_from_slice(&CMD_DISC.to_be_bytes());
            let _ = s.write_all(&req);
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
}
