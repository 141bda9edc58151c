//! The guest's root file system, written as an uncompressed newc cpio archive: busybox and its
//! applet links, `/init` (init.sh), the kernel modules in load order, the test executables,
//! `netfn`, a few host tools, and every shared library `ldd` lists for them, at the same
//! absolute paths as on the host (the dynamic loader included).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::artifacts::TestExe;
use super::cpio;
use super::kernel::{Kernel, ModulePlan};

/// The init script; it reads its inputs from /etc/netfn/.
const INIT: &str = include_str!("init.sh");

/// Name of the deliberately failing test added by `--inject-failure` (sorts last).
pub const INJECTED: &str = "zz_injected_failure";

const INJECTED_SCRIPT: &str = "#!/bin/sh
echo \"injected failure: this test fails on purpose (cargo xtask vm-test --inject-failure)\"
echo \"it proves that a failing test binary turns the VM run red\"
exit 1
";

/// Files bigger than this are not copied by [`Payload::trees`] (test data should be small).
const MAX_TREE_FILE: u64 = 1 << 20;

/// What goes into the archive besides busybox and init.
#[derive(Default)]
pub struct Payload<'a> {
    pub busybox: PathBuf,
    pub netfn: Option<PathBuf>,
    pub tests: &'a [TestExe],
    pub inject_failure: bool,
    /// Extra arguments for every test binary.
    pub test_args: &'a [String],
    /// The directory the tests run in (the package's directory, as under cargo test).
    pub workdir: Option<PathBuf>,
    /// Host directories copied to the same absolute path (small files only, no `target/`).
    pub trees: Vec<PathBuf>,
    /// Host programs copied to /usr/local/bin, ahead of busybox's applets on PATH.
    pub host_tools: Vec<PathBuf>,
    /// The kernel whose modules to ship, with the plan of which.
    pub modules: Option<(&'a Kernel, &'a ModulePlan)>,
    /// Each VM's tests of a sharded run (`etc/netfn/shard-K`, K from 1), `binary test` per
    /// line; empty for one VM.
    pub shards: &'a [String],
}

/// Writes the archive to `out`; returns its size in bytes.
pub fn build(out: &Path, payload: &Payload<'_>) -> Result<u64> {
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = out.with_extension("cpio.tmp");
    let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = cpio::Writer::new(BufWriter::new(file));
    write_all(&mut w, payload).with_context(|| format!("cannot write {}", out.display()))?;
    let size = w.bytes_written();
    w.finish()
        .and_then(|mut f| f.flush())
        .with_context(|| format!("cannot finish {}", tmp.display()))?;
    fs::rename(&tmp, out).with_context(|| format!("cannot rename to {}", out.display()))?;
    Ok(size)
}

type Archive = cpio::Writer<BufWriter<File>>;

fn write_all(w: &mut Archive, p: &Payload<'_>) -> Result<()> {
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "usr/local/bin",
        "etc",
        "root",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "mnt",
        "tests",
    ] {
        w.dir(dir, 0o755)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.symlink("var/run", "../run")?;
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    w.file("etc/group", 0o644, b"root:x:0:\n")?;
    w.file(
        "etc/hosts",
        0o644,
        b"127.0.0.1 localhost netfn-vm\n::1 localhost\n",
    )?;
    w.file("init", 0o755, INIT.as_bytes())?;

    let mut args = String::new();
    for arg in p.test_args {
        if arg.contains('\n') {
            bail!("test arguments cannot contain newlines: {arg:?}");
        }
        args.push_str(arg);
        args.push('\n');
    }
    w.file("etc/netfn/args", 0o644, args.as_bytes())?;
    for (k, tests) in p.shards.iter().enumerate() {
        w.file(
            &format!("etc/netfn/shard-{}", k + 1),
            0o644,
            tests.as_bytes(),
        )?;
    }
    let workdir = p
        .workdir
        .as_deref()
        .map_or(String::new(), |d| d.display().to_string());
    w.file("etc/netfn/workdir", 0o644, workdir.as_bytes())?;

    // Host tools first: busybox links must not take their places.
    for tool in &p.host_tools {
        let name = tool
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("bad tool path {}", tool.display()))?;
        add_program(w, tool, &format!("usr/local/bin/{name}"))?;
    }
    if let Some(netfn) = &p.netfn {
        add_program(w, netfn, "bin/netfn")?;
    }
    for test in p.tests {
        add_program(w, &test.path, &format!("tests/{}", test.name))?;
    }
    if p.inject_failure {
        w.file(
            &format!("tests/{INJECTED}"),
            0o755,
            INJECTED_SCRIPT.as_bytes(),
        )?;
    }
    if let Some((kernel, plan)) = p.modules {
        add_modules(w, kernel, plan)?;
    } else {
        w.file("etc/netfn/modules", 0o644, b"")?;
    }
    add_busybox(w, &p.busybox)?;
    for tree in &p.trees {
        add_tree(w, tree)?;
    }
    Ok(())
}

/// A host file at `dest`, streamed (test binaries can be large).
fn add_host_file(w: &mut Archive, src: &Path, dest: &str, perm: u32) -> Result<()> {
    let mut file = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("cannot stat {}", src.display()))?
        .len();
    w.file_from(dest, perm, size, &mut file)
        .with_context(|| format!("cannot add {} as {dest}", src.display()))
}

/// An executable and the shared libraries it needs (each library once).
fn add_program(w: &mut Archive, src: &Path, dest: &str) -> Result<()> {
    add_host_file(w, src, dest, 0o755)?;
    for lib in shared_libs(src)? {
        let dest = lib.to_string_lossy().into_owned();
        if !w.contains(&dest) {
            add_host_file(w, &lib, &dest, 0o755)?;
        }
    }
    Ok(())
}

/// The absolute paths `ldd` prints, the dynamic loader included; none for a static binary.
fn shared_libs(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if text.contains("statically linked") || err.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        bail!("ldd {} failed: {err}", exe.display());
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", exe.display()))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("=> not found") {
            bail!("a library is missing on the host: {line}");
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`;
        // linux-vdso.so.1 has no path and is skipped.
        let path = line.split_once("=> ").map_or(line, |(_, rest)| rest);
        let path = path.split(" (").next().unwrap_or(path).trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// busybox at /bin/busybox and a link for every applet it lists that is not already there.
fn add_busybox(w: &mut Archive, busybox: &Path) -> Result<()> {
    add_program(w, busybox, "bin/busybox")?;
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .with_context(|| format!("cannot run {} --list-full", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list-full failed", busybox.display());
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || w.contains(applet) {
            continue;
        }
        w.symlink(applet, "/bin/busybox")?;
    }
    if !w.contains("bin/sh") {
        bail!("{} has no `sh` applet", busybox.display());
    }
    Ok(())
}

/// The modules, uncompressed, under `/lib/modules/<release>/`, their modules.dep, and
/// /etc/netfn/modules: the order init loads them in.
fn add_modules(w: &mut Archive, kernel: &Kernel, plan: &ModulePlan) -> Result<()> {
    let base = format!("lib/modules/{}", kernel.release);
    let mut order = String::new();
    let mut dep = String::new();
    for module in &plan.load {
        let bytes = module.contents()?;
        w.file(&format!("{base}/{}", module.rel), 0o644, &bytes)?;
        order.push_str(&module.rel);
        order.push('\n');
        dep.push_str(&format!("{}: {}\n", module.rel, module.deps.join(" ")));
    }
    w.file(&format!("{base}/modules.dep"), 0o644, dep.as_bytes())?;
    w.file("etc/netfn/modules", 0o644, order.as_bytes())?;
    Ok(())
}

/// A host directory at the same absolute path: small regular files, no hidden or `target`
/// directories, no symbolic links.
fn add_tree(w: &mut Archive, dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let dest = dir.to_string_lossy().into_owned();
    w.dir(&dest, 0o755)?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        let path = entry.path();
        // Symbolic links are skipped: they could loop or point out of the tree.
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if meta.is_dir() {
            add_tree(w, &path)?;
        } else if meta.is_file() && meta.len() <= MAX_TREE_FILE {
            use std::os::unix::fs::PermissionsExt;
            let perm = meta.permissions().mode() & 0o755;
            add_host_file(w, &path, &path.to_string_lossy(), perm)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let text = "\
\tlinux-vdso.so.1 (0x00007ffd4b3f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0b1a000000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0b19e00000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0b1a0a0000)
";
        let libs = parse_ldd(text).expect("parse");
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }
}
