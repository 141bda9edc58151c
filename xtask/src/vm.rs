//! `cargo xtask vm-test`: the integration suite inside QEMU on other kernels.

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct VmTestArgs {
    /// Kernel versions to boot (Debian packages), e.g. 6.1.
    #[arg(long = "kernel")]
    pub kernels: Vec<String>,
}

pub fn run(args: VmTestArgs) -> Result<()> {
    let _ = args;
    anyhow::bail!("vm-test is not implemented yet")
}
