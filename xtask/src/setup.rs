//! `cargo xtask setup` (`cargo xtask demo` and `cargo xtask test` start with it, see flow.rs).
//!
//! Setup installs, idempotently and without questions, everything a fresh machine of our kind
//! (Debian 12, root, rustup with stable and nightly, cargo-nextest, gcc) lacks: nightly's
//! rust-src, Debian packages, bpf-linker built against LLVM 22, cargo-fuzz (`cargo xtask fuzz`),
//! and a bpffs mount. Each step
//! says what it did or why it skipped.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{ebpf, util};

/// Debian packages netfn's builds, tests and demo need. Extend freely.
pub const PACKAGES: &[&str] = &[
    // bpf-linker 0.13.0 links against LLVM 22 (the nightly's LLVM).
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    // Tests, demo, benchmarks.
    "iproute2",
    "iputils-ping",
    "iperf3",
    "tcpdump",
    // The agent's tests: a real Prometheus server scrapes it, and promtool checks /metrics.
    "prometheus",
    // The firewall's kernel-mode form (nft loads its rules) and its benchmark's peer.
    "nftables",
    // `bench lb` empties the nftables baseline's connection table after its windows.
    "conntrack",
    // The WireGuard kind's peers in tests and the demo (`wg`, and wireguard-go's userspace
    // endpoint), and `wg show` against netfn's endpoints.
    "wireguard-tools",
    "wireguard-go",
    // The demo's web servers behind the load balancer (python3 -m http.server).
    "python3",
    // `cargo xtask deb` (dpkg-deb, dpkg-shlibdeps; strip from binutils) and its test (lintian),
    // the install test (`man -l` renders every page).
    "dpkg-dev",
    "binutils",
    "lintian",
    "man-db",
];

/// Packages installed only if this machine's Debian has them (checked with apt-cache policy).
pub const OPTIONAL_PACKAGES: &[&str] = &["bpftool", "librsvg2-bin"];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz for `cargo xtask fuzz` (it builds the targets with nightly's libFuzzer support).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

pub fn run() -> Result<()> {
    println!("== netfn setup");
    rust_src()?;
    apt_packages()?;
    bpf_linker()?;
    cargo_fuzz()?;
    bpffs()?;
    println!("== setup done");
    Ok(())
}

fn step(what: &str, outcome: &str) {
    println!("[setup] {what}: {outcome}");
}

/// `rustup component add rust-src --toolchain nightly`, unless it is there.
fn rust_src() -> Result<()> {
    let path = ebpf::path_with_cargo_bin();
    let out = Command::new("rustup")
        .env("PATH", &path)
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("cannot run rustup (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is missing (rustup said: {}); machines of this kind ship it",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let installed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim().starts_with("rust-src"));
    if installed {
        step("rust-src (nightly)", "present, skipped");
        return Ok(());
    }
    util::run(Command::new("rustup").env("PATH", &path).args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    step("rust-src (nightly)", "installed");
    Ok(())
}

/// True if dpkg says `pkg` is installed.
fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|out| {
            out.status.success() && String::from_utf8_lossy(&out.stdout).ends_with(" installed")
        })
}

/// True if apt knows an installable version of `pkg` (`Candidate:` other than `(none)`).
fn apt_candidate(pkg: &str) -> bool {
    Command::new("apt-cache")
        .args(["policy", pkg])
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                l.trim()
                    .strip_prefix("Candidate:")
                    .is_some_and(|c| c.trim() != "(none)" && !c.trim().is_empty())
            })
        })
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .env("NEEDRESTART_MODE", "a")
        .stdin(std::process::Stdio::null());
    cmd
}

/// Installs what is missing of [`PACKAGES`] and [`OPTIONAL_PACKAGES`], running `apt-get update`
/// once, and only if something must be installed.
fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    let missing_optional: Vec<&str> = OPTIONAL_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    let present: BTreeSet<&str> = PACKAGES
        .iter()
        .chain(OPTIONAL_PACKAGES)
        .copied()
        .filter(|p| !missing.contains(p) && !missing_optional.contains(p))
        .collect();
    if !present.is_empty() {
        step(
            "apt packages",
            &format!(
                "present, skipped: {}",
                present.into_iter().collect::<Vec<_>>().join(" ")
            ),
        );
    }
    if missing.is_empty() && missing_optional.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "apt packages missing ({}), and installing them needs root: run `cargo xtask setup` \
             as root",
            missing
                .iter()
                .chain(&missing_optional)
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    // Optional packages: apt-cache only knows them after an update on a fresh machine, so
    // update first whenever anything is missing.
    util::run(apt_get().arg("update").arg("-q"))?;
    step("apt-get update", "done");
    let mut install = missing.clone();
    for pkg in missing_optional {
        if apt_candidate(pkg) {
            install.push(pkg);
        } else {
            step(
                pkg,
                "not available from this machine's apt sources, skipped (optional)",
            );
        }
    }
    if install.is_empty() {
        return Ok(());
    }
    util::run(
        apt_get()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&install),
    )?;
    step("apt packages", &format!("installed: {}", install.join(" ")));
    Ok(())
}

/// bpf-linker 0.13.0 built against Debian's LLVM 22 (never with default features: they pick
/// LLVM 23).
fn bpf_linker() -> Result<()> {
    let path = ebpf::path_with_cargo_bin();
    if let Some(linker) = ebpf::find_in(&path, "bpf-linker") {
        let version = Command::new(&linker)
            .arg("--version")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .unwrap_or_default();
        if version.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
            step(
                "bpf-linker",
                &format!("{version} present at {}, skipped", linker.display()),
            );
            return Ok(());
        }
        step(
            "bpf-linker",
            &format!(
                "found `{version}` at {}, installing {BPF_LINKER_VERSION}",
                linker.display()
            ),
        );
    }
    if !Path::new(LLVM_PREFIX)
        .join("bin")
        .join("llvm-config")
        .is_file()
    {
        bail!("{LLVM_PREFIX}/bin/llvm-config is missing: llvm-22-dev did not install");
    }
    // LLVM_PREFIX as well as LLVM_SYS_221_PREFIX: /usr/bin/llvm-config is LLVM 14 here, and
    // bpf-linker's build script would pick it up otherwise.
    util::run(
        util::cargo()
            .env("PATH", &path)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )?;
    step("bpf-linker", &format!("{BPF_LINKER_VERSION} installed"));
    Ok(())
}

/// cargo-fuzz at [`CARGO_FUZZ_VERSION`], with the versions its lock file pins (`--locked`);
/// `cargo xtask fuzz` calls this too.
pub fn cargo_fuzz() -> Result<()> {
    let path = ebpf::path_with_cargo_bin();
    if let Some(bin) = ebpf::find_in(&path, "cargo-fuzz") {
        let version = util::cargo()
            .env("PATH", &path)
            .args(["fuzz", "--version"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .unwrap_or_default();
        if version.split_whitespace().any(|w| w == CARGO_FUZZ_VERSION) {
            step(
                "cargo-fuzz",
                &format!("{version} present at {}, skipped", bin.display()),
            );
            return Ok(());
        }
        step(
            "cargo-fuzz",
            &format!(
                "found `{version}` at {}, installing {CARGO_FUZZ_VERSION}",
                bin.display()
            ),
        );
    }
    util::run(
        util::cargo()
            .env("PATH", &path)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ]),
    )?;
    step("cargo-fuzz", &format!("{CARGO_FUZZ_VERSION} installed"));
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf unless /proc/mounts shows it there.
fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.nth(1) == Some(BPFFS) && fields.next() == Some("bpf")
    });
    if mounted {
        step("bpffs", &format!("mounted at {BPFFS}, skipped"));
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted at {BPFFS}, and mounting it needs root");
    }
    std::fs::create_dir_all(BPFFS).with_context(|| format!("cannot create {BPFFS}"))?;
    util::run(Command::new("mount").args([
        "-t",
        "bpf",
        "-o",
        "nosuid,nodev,noexec,mode=0700",
        "bpf",
        BPFFS,
    ]))?;
    step("bpffs", &format!("mounted at {BPFFS}"));
    Ok(())
}

/// True if the effective uid is 0.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
