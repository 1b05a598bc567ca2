//! A writer (and a small reader, for checks) of SVR4 "newc" cpio archives, the format Linux
//! unpacks into its initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Why our own and not the `cpio` crate (0.4.2, evaluated): its `Writer::finish` accepts a body
//! shorter than the size in the header without an error (a file that shrinks while being packed
//! yields a corrupt archive silently), names are `&str` (a non-UTF-8 file name cannot be packed),
//! and sizes are bare `u32`s with no typed refusal above 4 GiB. `librarium` buffers every member
//! in memory before writing. newc itself is a 110-byte ASCII header, the name, and the body,
//! each padded to 4 bytes; what follows is that and nothing more.
//!
//! Every member is written with `mtime 0`, `nlink 1` and a sequential inode number, so the
//! same entries in the same order give the same bytes. Hard links are not preserved (each link
//! is packed as its own file), which the kernel unpacks to the same content.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::ImageError;

/// The largest body a newc member can hold: its size field has 8 hex digits.
pub const MAX_MEMBER_SIZE: u64 = u32::MAX as u64;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;

/// The body of a regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Bytes in memory (generated files, secrets).
    Bytes(Vec<u8>),
    /// A file on this machine, read while packing; `size` is what its header will say.
    File {
        /// The source file.
        path: PathBuf,
        /// Its size when planned.
        size: u64,
    },
}

impl Body {
    /// The body's size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File { size, .. } => *size,
        }
    }
}

/// What an archive member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File(Body),
    /// A symbolic link to this target.
    Symlink(PathBuf),
    /// A character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, relative (`etc/plasmacloud/node`).
    pub path: PathBuf,
    /// Permission bits (`0o7777` mask; the file type comes from `kind`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// What it is.
    pub kind: Kind,
}

impl Entry {
    /// A root-owned directory.
    pub fn dir(path: impl Into<PathBuf>, perm: u32) -> Self {
        Self {
            path: path.into(),
            perm,
            uid: 0,
            gid: 0,
            kind: Kind::Dir,
        }
    }

    /// A root-owned file with in-memory content.
    pub fn bytes(path: impl Into<PathBuf>, perm: u32, content: impl Into<Vec<u8>>) -> Self {
        Self {
            path: path.into(),
            perm,
            uid: 0,
            gid: 0,
            kind: Kind::File(Body::Bytes(content.into())),
        }
    }

    /// A root-owned symlink.
    pub fn symlink(path: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            perm: 0o777,
            uid: 0,
            gid: 0,
            kind: Kind::Symlink(target.into()),
        }
    }

    /// The full `st_mode`: file type bits and permissions.
    pub fn mode(&self) -> u32 {
        let ty = match self.kind {
            Kind::Dir => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDev { .. } => 0o020000,
            Kind::BlockDev { .. } => 0o060000,
            Kind::Fifo => 0o010000,
        };
        ty | (self.perm & 0o7777)
    }

    /// Body size in bytes (symlinks: the target's length).
    pub fn size(&self) -> u64 {
        match &self.kind {
            Kind::File(b) => b.size(),
            Kind::Symlink(t) => t.as_os_str().len() as u64,
            _ => 0,
        }
    }
}

/// Streams newc members into `W`. Call [`NewcWriter::finish`] to write the trailer.
pub struct NewcWriter<W: Write> {
    out: W,
    out_name: PathBuf,
    offset: u64,
    next_ino: u32,
    buf: Vec<u8>,
}

impl<W: Write> NewcWriter<W> {
    /// A writer into `out`; `out_name` names the output in error messages.
    pub fn new(out: W, out_name: impl Into<PathBuf>) -> Self {
        Self {
            out,
            out_name: out_name.into(),
            offset: 0,
            next_ino: 1,
            buf: Vec::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.out
            .write_all(bytes)
            .map_err(ImageError::io(&self.out_name, "writing the archive"))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> Result<(), ImageError> {
        let pad = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0u8; 4][..pad])
    }

    fn header(
        &mut self,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> Result<(), ImageError> {
        let ino = if name == TRAILER.as_bytes() {
            0
        } else {
            let i = self.next_ino;
            self.next_ino = self.next_ino.wrapping_add(1);
            i
        };
        let mut h = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        h.extend_from_slice(MAGIC);
        let namesize = name.len() as u32 + 1;
        for field in [
            ino, mode, uid, gid, 1, /* mtime */ 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ] {
            h.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        h.extend_from_slice(name);
        h.push(0);
        self.put(&h)?;
        self.pad4()
    }

    /// Appends one member.
    pub fn append(&mut self, entry: &Entry) -> Result<(), ImageError> {
        let name = entry.path.as_os_str().as_bytes();
        if name.is_empty() || name.starts_with(b"/") || name.contains(&0) {
            return Err(ImageError::bad(
                &entry.path,
                "archive member names must be relative paths without NUL bytes",
            ));
        }
        let size = entry.size();
        let source = match &entry.kind {
            Kind::File(Body::File { path, .. }) => path.clone(),
            _ => entry.path.clone(),
        };
        if size > MAX_MEMBER_SIZE {
            return Err(ImageError::MemberTooLarge {
                path: source,
                size,
                limit: MAX_MEMBER_SIZE,
            });
        }
        let rdev = match entry.kind {
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => (major, minor),
            _ => (0, 0),
        };
        self.header(name, entry.mode(), entry.uid, entry.gid, size as u32, rdev)?;
        match &entry.kind {
            Kind::File(Body::Bytes(b)) => self.put(b)?,
            Kind::File(Body::File { path, size }) => self.copy_file(path, *size)?,
            Kind::Symlink(t) => self.put(t.as_os_str().as_bytes())?,
            _ => {}
        }
        self.pad4()
    }

    fn copy_file(&mut self, path: &Path, size: u64) -> Result<(), ImageError> {
        let mut f = File::open(path).map_err(ImageError::io(path, "opening"))?;
        if self.buf.is_empty() {
            self.buf = vec![0u8; 256 * 1024];
        }
        let mut buf = std::mem::take(&mut self.buf);
        let mut left = size;
        let result = loop {
            if left == 0 {
                // The file must not have grown either.
                match f.read(&mut buf[..1]) {
                    Ok(0) => break Ok(()),
                    Ok(_) => {
                        break Err(ImageError::ChangedWhilePacking {
                            path: path.to_path_buf(),
                            expected: size,
                            read: size + 1,
                        })
                    }
                    Err(e) => break Err(ImageError::io(path, "reading")(e)),
                }
            }
            let want = left.min(buf.len() as u64) as usize;
            match f.read(&mut buf[..want]) {
                Ok(0) => {
                    break Err(ImageError::ChangedWhilePacking {
                        path: path.to_path_buf(),
                        expected: size,
                        read: size - left,
                    })
                }
                Ok(n) => {
                    if let Err(e) = self.put(&buf[..n]) {
                        break Err(e);
                    }
                    left -= n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(ImageError::io(path, "reading")(e)),
            }
        };
        self.buf = buf;
        result
    }

    /// Writes the trailer, pads the archive to 512 bytes (as GNU cpio does, so that archives
    /// concatenated uncompressed can be listed one after another), and returns the output.
    pub fn finish(mut self) -> Result<W, ImageError> {
        self.header(TRAILER.as_bytes(), 0, 0, 0, 0, (0, 0))?;
        let pad = ((512 - (self.offset % 512)) % 512) as usize;
        self.put(&vec![0u8; pad])?;
        self.out
            .flush()
            .map_err(ImageError::io(&self.out_name, "writing the archive"))?;
        Ok(self.out)
    }
}

/// Packs `entries` (in the given order) into an uncompressed newc archive in memory.
pub fn archive_to_vec(entries: &[Entry]) -> Result<Vec<u8>, ImageError> {
    let mut w = NewcWriter::new(Vec::new(), "<memory>");
    for e in entries {
        w.append(e)?;
    }
    w.finish()
}

/// One member as read back by [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Member name.
    pub name: String,
    /// Full `st_mode`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: u32,
    /// Body.
    pub data: Vec<u8>,
}

/// Reads every member of one or more concatenated, uncompressed newc archives (zero padding
/// between them is skipped, as the kernel does). Trailers are not listed.
pub fn list(mut data: &[u8]) -> Result<Vec<Listed>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let align = |p: usize| (p + 3) & !3;
    loop {
        while pos < data.len() && data[pos] == 0 {
            pos += 1;
        }
        if pos >= data.len() {
            return Ok(out);
        }
        data = &data[pos..];
        pos = 0;
        if data.len() < HEADER_LEN || &data[..6] != MAGIC {
            return Err(format!("no newc magic at offset {pos}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let s = std::str::from_utf8(&data[6 + i * 8..14 + i * 8]).map_err(|e| e.to_string())?;
            u32::from_str_radix(s, 16).map_err(|e| e.to_string())
        };
        let (mode, uid, gid, mtime, size, namesize) = (
            field(1)?,
            field(2)?,
            field(3)?,
            field(5)?,
            field(6)? as usize,
            field(11)? as usize,
        );
        let name_end = HEADER_LEN + namesize;
        if name_end > data.len() || namesize == 0 {
            return Err("truncated name".into());
        }
        let name = String::from_utf8_lossy(&data[HEADER_LEN..name_end - 1]).into_owned();
        let body = align(name_end);
        let end = body + size;
        if end > data.len() {
            return Err(format!("{name}: truncated body"));
        }
        pos = align(end);
        if name == TRAILER {
            continue;
        }
        out.push(Listed {
            name,
            mode,
            uid,
            gid,
            mtime,
            data: data[body..end].to_vec(),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_is_deterministic_and_padded() {
        let entries = vec![
            Entry::dir("etc", 0o755),
            Entry::bytes("etc/a", 0o600, b"hello".to_vec()),
            Entry::symlink("init", "/lib/systemd/systemd"),
        ];
        let a = archive_to_vec(&entries).unwrap();
        let b = archive_to_vec(&entries).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len() % 512, 0);
        let l = list(&[a.clone(), a].concat()).unwrap();
        assert_eq!(l.len(), 6);
        assert_eq!(l[1].name, "etc/a");
        assert_eq!(l[1].mode, 0o100600);
        assert_eq!(l[1].data, b"hello");
        assert_eq!(l[1].mtime, 0);
        assert_eq!(l[2].data, b"/lib/systemd/systemd");
    }

    #[test]
    fn oversized_member_is_refused_not_dropped() {
        let e = Entry {
            path: "big".into(),
            perm: 0o644,
            uid: 0,
            gid: 0,
            kind: Kind::File(Body::File {
                path: "/nonexistent/big".into(),
                size: MAX_MEMBER_SIZE + 1,
            }),
        };
        let err = archive_to_vec(&[e]).unwrap_err();
        assert!(matches!(err, ImageError::MemberTooLarge { .. }), "{err}");
        assert!(err.to_string().contains("4 GiB"), "{err}");
    }

    #[test]
    fn a_file_that_shrank_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let e = Entry {
            path: "f".into(),
            perm: 0o644,
            uid: 0,
            gid: 0,
            kind: Kind::File(Body::File { path: p, size: 10 }),
        };
        let err = archive_to_vec(&[e]).unwrap_err();
        assert!(
            matches!(err, ImageError::ChangedWhilePacking { .. }),
            "{err}"
        );
    }
}
