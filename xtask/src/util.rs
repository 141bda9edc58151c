//! Small helpers shared by the tasks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `cargo`, as a shell would start it. `cargo xtask` is `cargo run`, which gives xtask the
/// environment of a package's binary (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...); a cargo started
/// with it would see xtask's values, and build scripts that read them (ring's does) would run
/// again and rebuild their crates and everything above them: CI's `cargo build -p netfn-cli`
/// from its shell and the same build from `cargo xtask test` recompiled ring, gotatun, netfn's
/// functions and netfn (29 s, 2026-12-05).
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    without_cargo_run_env(&mut cmd);
    cmd
}

/// Removes from `cmd`'s environment what `cargo run` set for xtask (see [`cargo`]).
pub fn without_cargo_run_env(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if is_cargo_run_env(name) {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Whether `name` is one of the variables `cargo run` sets for the package's binary.
fn is_cargo_run_env(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
        )
}

/// Runs a command, streaming its output; fails with the command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// True if `prog` is found on PATH.
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(prog).is_file()))
}

/// The namespace netfn gives `hop` (`ingress`, `egress` or a function's name) of chain `chain`:
/// netfn-core's `plan::names::netns_name`, spelled again here: xtask does not depend on
/// netfn-core (it builds the eBPF object that netfn-core embeds).
pub fn netfn_netns(chain: &str, hop: &str) -> String {
    format!("{NETFN_NETNS}{chain}-{hop}")
}

/// What every namespace of chain `chain` starts with (for finding its leftovers).
pub fn netfn_netns_prefix(chain: &str) -> String {
    format!("{NETFN_NETNS}{chain}-")
}

/// What the names of netfn's namespaces start with.
pub const NETFN_NETNS: &str = "nf-";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_cargo_run_sets_is_removed() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_MANIFEST_LINKS",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
        ] {
            assert!(is_cargo_run_env(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "PATH",
        ] {
            assert!(!is_cargo_run_env(name), "{name}");
        }
    }
}
