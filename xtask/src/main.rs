//! `cargo xtask …`: setup, eBPF build, demo, tests, VM tests and benchmarks.

mod bench;
mod deb;
mod demo_vpn;
mod ebpf;
mod flow;
mod fuzz;
mod install;
mod package;
mod setup;
mod soak;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "netfn developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install every toolchain extra and package netfn needs (idempotent).
    Setup,
    /// Build the eBPF programs for bpfel-unknown-none (with BTF).
    BuildEbpf {
        /// Build in debug mode.
        #[arg(long)]
        debug: bool,
    },
    /// Set up, build, and run the demo chain with real traffic.
    Demo,
    /// Set up, build, and run every test (unit and root integration tests).
    Test {
        /// Extra arguments passed to the test runner (a filter, for instance).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Benchmarks (not tests): they print a table and write target/bench/NAME.json.
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
    /// Run each libFuzzer target of fuzz/ (chain files, the kinds' settings) for a while; fails
    /// when an input panics, naming the target and the input (installs cargo-fuzz if missing).
    Fuzz(fuzz::FuzzArgs),
    /// A chaos soak: streams through kernel, tc and xdp chains while functions are inserted,
    /// removed and reordered, applies and agents are killed, a chain goes down and up; reports
    /// loss, leftovers, the agent's growth and every error (target/soak/report.json).
    Soak(soak::SoakArgs),
    /// Run the integration suite inside QEMU VMs on other kernels.
    VmTest(vm::VmTestArgs),
    /// Build the release netfn and install it, the agent's systemd unit (not enabled unless
    /// --enable), completions, man pages, docs and examples under --prefix (default /usr/local).
    Install(install::InstallArgs),
    /// Remove exactly what `cargo xtask install` put under --prefix (its manifest lists it).
    Uninstall(install::UninstallArgs),
    /// Build a Debian package (dpkg-deb) into target/debian/.
    Deb(deb::DebArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(),
        Command::BuildEbpf { debug } => ebpf::build(!debug).map(|_| ()),
        Command::Demo => flow::demo(),
        Command::Test { args } => flow::test(&args),
        Command::Bench { which } => bench::run(which),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Soak(args) => soak::run(args),
        Command::VmTest(args) => vm::run(args),
        Command::Install(args) => install::install(args),
        Command::Uninstall(args) => install::uninstall(args),
        Command::Deb(args) => deb::build(args),
    }
}
