//! A writer for the cpio "newc" format (SVR4, no CRC): what the kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header (`070701` and 13 fields of 8 hex digits), the
//! NUL-terminated name padded to 4 bytes, and the data padded to 4 bytes; the archive ends with
//! an entry named `TRAILER!!!`. Names are relative (`bin/sh`, never `/bin/sh`). The kernel
//! creates a file only in a directory that already exists, so the writer emits every missing
//! parent directory first. All times are 0 and owners root, so archives are reproducible.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// One entry's header fields that vary between entries.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

/// Writes a newc archive to `out`. Call [`Writer::finish`] to write the trailer.
pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
    paths: BTreeSet<String>,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer {
            out,
            next_ino: 1,
            written: 0,
            paths: BTreeSet::new(),
        }
    }

    /// True if an entry (of any kind) already exists at `path`.
    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|p| self.paths.contains(&p))
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// A directory (and its parents). Adding an existing directory does nothing.
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        let path = normalize(path)?;
        if self.paths.contains(&path) {
            return Ok(());
        }
        self.parents(&path)?;
        self.entry(
            Header {
                name: &path,
                mode: S_IFDIR | (perm & 0o7777),
                nlink: 2,
                size: 0,
                rdev: (0, 0),
            },
            &mut io::empty(),
        )?;
        self.paths.insert(path);
        Ok(())
    }

    /// A regular file with the given contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let size = data.len() as u64;
        self.file_from(path, perm, size, &mut &data[..])
    }

    /// A regular file of `size` bytes read from `reader` (which must yield exactly that many).
    pub fn file_from(
        &mut self,
        path: &str,
        perm: u32,
        size: u64,
        reader: &mut dyn Read,
    ) -> io::Result<()> {
        let size = u32::try_from(size).map_err(|_| {
            invalid(format!(
                "{path}: {size} bytes is too large for a newc entry (4 GiB max)"
            ))
        })?;
        let path = self.new_path(path)?;
        self.entry(
            Header {
                name: &path,
                mode: S_IFREG | (perm & 0o7777),
                nlink: 1,
                size,
                rdev: (0, 0),
            },
            reader,
        )?;
        self.paths.insert(path);
        Ok(())
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let size = u32::try_from(target.len()).map_err(|_| invalid("symlink target too long"))?;
        let path = self.new_path(path)?;
        self.entry(
            Header {
                name: &path,
                mode: S_IFLNK | 0o777,
                nlink: 1,
                size,
                rdev: (0, 0),
            },
            &mut target.as_bytes(),
        )?;
        self.paths.insert(path);
        Ok(())
    }

    /// A character device node (the kernel creates it while unpacking, as root).
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = self.new_path(path)?;
        self.entry(
            Header {
                name: &path,
                mode: S_IFCHR | (perm & 0o7777),
                nlink: 1,
                size: 0,
                rdev: (major, minor),
            },
            &mut io::empty(),
        )?;
        self.paths.insert(path);
        Ok(())
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        let header = Header {
            name: TRAILER,
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
        };
        self.header(&header, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Normalizes `path`, refuses a duplicate and creates the missing parents.
    fn new_path(&mut self, path: &str) -> io::Result<String> {
        let path = normalize(path)?;
        if self.paths.contains(&path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{path} is already in the archive"),
            ));
        }
        self.parents(&path)?;
        Ok(path)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        Ok(())
    }

    fn entry(&mut self, header: Header<'_>, data: &mut dyn Read) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(&header, ino)?;
        let copied = io::copy(&mut data.take(u64::from(header.size)), &mut self.out)?;
        if copied != u64::from(header.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: expected {} bytes, read {copied}",
                    header.name, header.size
                ),
            ));
        }
        self.written += copied;
        self.pad()
    }

    fn header(&mut self, h: &Header<'_>, ino: u32) -> io::Result<()> {
        // c_namesize counts the terminating NUL.
        let namesize = u32::try_from(h.name.len() + 1).map_err(|_| invalid("name too long"))?;
        let fields = [
            ino, h.mode, 0, 0, h.nlink, 0, h.size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0,
        ];
        let mut text = String::with_capacity(110 + h.name.len() + 4);
        text.push_str(MAGIC);
        for field in fields {
            text.push_str(&format!("{field:08X}"));
        }
        text.push_str(h.name);
        text.push('\0');
        self.out.write_all(text.as_bytes())?;
        self.written += text.len() as u64;
        self.pad()
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        self.written += pad as u64;
        Ok(())
    }
}

/// `/a//b/` -> `a/b`; refuses empty names, `.` and `..` components and NUL bytes.
fn normalize(path: &str) -> io::Result<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || path.contains('\0') || parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(invalid(format!("bad archive path {path:?}")));
    }
    Ok(parts.join("/"))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed entry: name, mode, rdev and data.
    #[derive(Debug, PartialEq)]
    struct Entry {
        name: String,
        mode: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// A strict reader for what the writer produces (checks magic, padding and the trailer).
    fn parse(mut buf: &[u8]) -> Vec<Entry> {
        let total = buf.len();
        let mut entries = Vec::new();
        loop {
            assert!(buf.len() >= 110, "truncated header");
            assert_eq!(&buf[..6], MAGIC.as_bytes(), "bad magic");
            let field = |i: usize| {
                let text = std::str::from_utf8(&buf[6 + 8 * i..14 + 8 * i]).expect("ascii");
                u32::from_str_radix(text, 16).expect("hex field")
            };
            let (mode, size, rdev, namesize) =
                (field(1), field(6), (field(9), field(10)), field(11));
            let namesize = namesize as usize;
            let name = std::str::from_utf8(&buf[110..110 + namesize - 1])
                .expect("utf-8 name")
                .to_string();
            assert_eq!(buf[110 + namesize - 1], 0, "name is NUL-terminated");
            let data_at = (110 + namesize).next_multiple_of(4);
            let end = data_at + size as usize;
            let data = buf[data_at..end].to_vec();
            buf = &buf[end.next_multiple_of(4).min(buf.len())..];
            assert_eq!((total - buf.len()) % 4, 0, "entries are 4-byte aligned");
            if name == TRAILER {
                assert!(buf.is_empty(), "nothing after the trailer");
                return entries;
            }
            entries.push(Entry {
                name,
                mode,
                rdev,
                data,
            });
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        w.file("/bin/busybox", 0o755, b"\x7fELF not really")
            .expect("file");
        w.symlink("bin/sh", "busybox").expect("symlink");
        w.dir("etc", 0o755).expect("dir");
        w.dir("etc", 0o755).expect("dir twice is fine");
        w.file("etc/netfn/args", 0o644, b"").expect("empty file");
        w.char_dev("dev/console", 0o600, 5, 1).expect("char dev");
        w.file("init", 0o755, b"#!/bin/sh\n").expect("init");
        assert!(w.contains("/bin/sh") && w.contains("etc/netfn"));
        assert!(
            w.file("bin/sh", 0o755, b"x").is_err(),
            "duplicates are refused"
        );
        assert!(w.file("../escape", 0o644, b"x").is_err(), "`..` is refused");
        let len = w.bytes_written();
        let out = w.finish().expect("finish");
        assert!(out.len() as u64 > len, "trailer written");
        out
    }

    #[test]
    fn round_trip() {
        let entries = parse(&sample());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "etc",
                "etc/netfn",
                "etc/netfn/args",
                "dev",
                "dev/console",
                "init"
            ]
        );
        let by_name = |n: &str| entries.iter().find(|e| e.name == n).expect("entry");
        assert_eq!(by_name("bin").mode, S_IFDIR | 0o755);
        assert_eq!(by_name("bin/busybox").mode, S_IFREG | 0o755);
        assert_eq!(by_name("bin/busybox").data, b"\x7fELF not really");
        assert_eq!(by_name("bin/sh").mode, S_IFLNK | 0o777);
        assert_eq!(by_name("bin/sh").data, b"busybox");
        assert_eq!(by_name("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(by_name("dev/console").rdev, (5, 1));
        assert_eq!(by_name("init").data, b"#!/bin/sh\n");
    }

    #[test]
    fn short_reader_is_an_error() {
        let mut w = Writer::new(Vec::new());
        let err = w
            .file_from("f", 0o644, 10, &mut &b"abc"[..])
            .expect_err("short read");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// GNU cpio agrees with our reading of the format (skipped when cpio is not installed).
    #[test]
    fn gnu_cpio_lists_it() {
        use std::process::{Command, Stdio};
        let Ok(mut child) = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            eprintln!("cpio is not installed: skipping the cross-check");
            return;
        };
        let archive = sample();
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&archive)
            .expect("write to cpio");
        let out = child.wait_with_output().expect("cpio runs");
        assert!(out.status.success(), "cpio -t failed: {out:?}");
        let listed = String::from_utf8(out.stdout).expect("utf-8");
        let listed: Vec<&str> = listed.lines().collect();
        assert_eq!(listed.len(), 9, "{listed:?}");
        assert!(listed.contains(&"dev/console") && listed.contains(&"etc/netfn/args"));
    }
}
