//! `cargo xtask setup`, and the demo and test commands that start with it.

use anyhow::Result;

pub fn run() -> Result<()> {
    anyhow::bail!("setup is not implemented yet")
}

pub fn demo() -> Result<()> {
    run()
}

pub fn test(args: &[String]) -> Result<()> {
    let _ = args;
    run()
}
