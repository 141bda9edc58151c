//! Building the eBPF programs (`cargo xtask build-ebpf`).
//!
//! The eBPF crate (netfn-ebpf/netfn-ebpf-programs) is not a member of the host workspace: it
//! builds with nightly, `-Z build-std=core`, for `bpfel-unknown-none`, linked by bpf-linker,
//! into its own target dir (netfn-ebpf/target). netfn-core's build script embeds the release
//! object, so rebuild netfn after this.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// The target triple of the eBPF programs.
pub const TARGET: &str = "bpfel-unknown-none";

/// The eBPF crate, relative to the workspace root.
pub const CRATE_DIR: &str = "netfn-ebpf/netfn-ebpf-programs";

/// The eBPF crate's target dir, relative to the workspace root.
pub const TARGET_DIR: &str = "netfn-ebpf/target";

/// The name of the built object (the crate's binary).
pub const OBJECT_NAME: &str = "netfn-ebpf-programs";

/// Builds netfn-ebpf; returns the path of the object file.
pub fn build(release: bool) -> Result<PathBuf> {
    let root = util::workspace_root();
    let crate_dir = root.join(CRATE_DIR);
    let target_dir = root.join(TARGET_DIR);
    let path = path_with_cargo_bin();
    check_toolchain(&path)?;

    let mut cmd = util::cargo();
    cmd.current_dir(&crate_dir)
        .env("PATH", &path)
        // What the host cargo that started xtask may have set must not leak into the nightly
        // eBPF build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTDOC")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        // BTF for the loader (CO-RE, readable maps in bpftool).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "debuginfo=2", "-C", "link-arg=--btf"].join("\x1f"),
        )
        .args([
            "+nightly",
            "build",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd).context(
        "building the eBPF programs failed (if the toolchain is incomplete: run `cargo xtask \
         setup`)",
    )?;

    let object = object_path(&root, release);
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    println!("{}", object.display());
    if release {
        println!("eBPF object built; rebuild netfn to embed it (cargo build).");
    }
    Ok(object)
}

/// Where `build(release)` puts the object.
pub fn object_path(root: &Path, release: bool) -> PathBuf {
    root.join(TARGET_DIR)
        .join(TARGET)
        .join(if release { "release" } else { "debug" })
        .join(OBJECT_NAME)
}

/// `~/.cargo/bin` (or `$CARGO_HOME/bin`), where rustup's proxies and bpf-linker live.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".cargo").join("bin"))
}

/// `PATH` with the cargo bin dir in front (bpf-linker is found through PATH by rustc).
pub fn path_with_cargo_bin() -> OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    if let Some(bin) = cargo_bin_dir() {
        dirs.retain(|d| d != &bin);
        dirs.insert(0, bin);
    }
    std::env::join_paths(dirs).unwrap_or(current)
}

/// Finds `prog` in the directories of `path`.
pub fn find_in(path: &OsString, prog: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(prog))
        .find(|p| p.is_file())
}

/// Fails with "run cargo xtask setup" if nightly, its rust-src, or bpf-linker is missing.
fn check_toolchain(path: &OsString) -> Result<()> {
    let mut missing = Vec::new();
    let nightly = Command::new("rustup")
        .env("PATH", path)
        .args(["run", "nightly", "rustc", "--version"])
        .output();
    match nightly {
        Ok(out) if out.status.success() => {
            let src = Command::new("rustup")
                .env("PATH", path)
                .args(["component", "list", "--toolchain", "nightly", "--installed"])
                .output();
            let has_src = src.is_ok_and(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.trim().starts_with("rust-src"))
            });
            if !has_src {
                missing.push("the nightly toolchain's rust-src component");
            }
        }
        _ => missing.push("the nightly Rust toolchain (rustup)"),
    }
    if find_in(path, "bpf-linker").is_none() {
        missing.push("bpf-linker");
    }
    if !missing.is_empty() {
        bail!(
            "cannot build the eBPF programs: missing {}; run `cargo xtask setup`",
            missing.join(", ")
        );
    }
    Ok(())
}
