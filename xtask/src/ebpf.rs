//! Building the eBPF programs.

use std::path::PathBuf;

use anyhow::Result;

/// Builds netfn-ebpf; returns the path of the object file.
pub fn build(release: bool) -> Result<PathBuf> {
    let _ = release;
    anyhow::bail!("build-ebpf is not implemented yet")
}
