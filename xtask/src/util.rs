//! Small helpers shared by the tasks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
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
