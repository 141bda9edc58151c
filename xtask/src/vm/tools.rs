//! Host tools the VM tests need, installed with apt-get only when a binary is missing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// A program, the Debian package that provides it, and why we need it.
struct Tool {
    bin: &'static str,
    package: &'static str,
    why: &'static str,
}

const TOOLS: &[Tool] = &[
    Tool {
        bin: "qemu-system-x86_64",
        package: "qemu-system-x86",
        why: "boots the test kernels",
    },
    Tool {
        bin: "busybox",
        package: "busybox-static",
        why: "the guest's shell, mount, insmod, ip and poweroff",
    },
    Tool {
        bin: "depmod",
        package: "kmod",
        why: "writes modules.dep for an unpacked kernel",
    },
    Tool {
        bin: "xz",
        package: "xz-utils",
        why: "decompresses .ko.xz modules",
    },
    Tool {
        bin: "ldd",
        package: "libc-bin",
        why: "lists the shared libraries of the test binaries",
    },
    Tool {
        bin: "dpkg-deb",
        package: "dpkg",
        why: "unpacks the kernel packages",
    },
    Tool {
        bin: "objcopy",
        package: "binutils",
        why: "strips debug info from the binaries copied into the initramfs",
    },
];

/// Installs (apt-get) the packages of every missing tool, and says so. Unless
/// `allow_removals`, apt may not remove a package to make room (`--no-remove`).
pub fn ensure(allow_removals: bool) -> Result<()> {
    let missing: Vec<&Tool> = TOOLS.iter().filter(|t| !util::have(t.bin)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for tool in &missing {
        println!(
            "vm-test: `{}` is missing ({}): installing Debian package {}",
            tool.bin, tool.why, tool.package
        );
    }
    let packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
    let install = || {
        let mut apt = Command::new("apt-get");
        apt.args(["install", "-y", "--no-install-recommends"]);
        if !allow_removals {
            // Removing a package to make room is the operator's call, not ours.
            apt.arg("--no-remove");
        }
        apt.args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get (the VM tests need Debian's apt)")
    };
    if !install()?.success() {
        println!("vm-test: apt-get install failed; running apt-get update and trying again");
        util::run(Command::new("apt-get").arg("update"))?;
        let status = install()?;
        if !status.success() {
            let list = packages.join(" ");
            bail!(
                "apt-get install {list} failed with {status}: are you root, or would apt have to \
                 remove packages (see its output above)? If removing them is acceptable, run \
                 vm-test again with --apt-allow-removals (docs/vm-tests.md)"
            );
        }
    }
    let still: Vec<&str> = missing
        .iter()
        .filter(|t| !util::have(t.bin))
        .map(|t| t.bin)
        .collect();
    if !still.is_empty() {
        bail!(
            "still missing after apt-get install: {} (is /usr/sbin on PATH?)",
            still.join(", ")
        );
    }
    Ok(())
}

/// The absolute path of `prog` on PATH.
pub fn which(prog: &str) -> Result<PathBuf> {
    let paths = std::env::var_os("PATH").context("PATH is not set")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(prog))
        .find(|p| p.is_file())
        .with_context(|| format!("`{prog}` is not on PATH"))
}

/// True when this process runs as root (the owner of /proc/self is the effective uid).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
