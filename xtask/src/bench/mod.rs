//! `cargo xtask bench …`: measurements, never tests.

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// Time `netfn up` and `netfn down` of chains of N forward functions.
    Deploy {
        /// Chain lengths to measure.
        #[arg(long = "functions", value_delimiter = ',', default_values_t = vec![10, 100, 1000])]
        functions: Vec<usize>,
    },
}

pub fn run(which: Bench) -> Result<()> {
    match which {
        Bench::Deploy { functions } => {
            let _ = functions;
            anyhow::bail!("bench deploy is not implemented yet")
        }
    }
}
