//! `netfn`: bring service chains up and down, look at them, step inside them.

mod agent;
mod commands;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// The default `--log` (the agent logs at info unless told otherwise).
const DEFAULT_LOG: &str = "warn,netfn::ebpf=info";

#[derive(Parser)]
#[command(
    name = "netfn",
    version,
    about = "Service chains of network functions in Linux namespaces"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter; NETFN_LOG also works.
    /// eBPF program logs use the target `netfn::ebpf`.
    #[arg(long, global = true, default_value = DEFAULT_LOG)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a chain file and report every problem in it.
    Validate { file: PathBuf },
    /// Create the chains of a file (namespaces, veths, addresses, routes, eBPF).
    Up {
        file: PathBuf,
        /// Only this chain of the file.
        #[arg(long)]
        chain: Option<String>,
    },
    /// Change running chains to match the file: add, remove or reorder functions in place.
    Apply {
        file: PathBuf,
        /// Only this chain of the file.
        #[arg(long)]
        chain: Option<String>,
        /// Print what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove a chain (by name, or every chain of a file) and everything netfn created for it.
    Down {
        /// A chain name or a chain file.
        target: Option<String>,
        /// Every chain netfn knows about.
        #[arg(long, conflicts_with = "target")]
        all: bool,
    },
    /// Show chains, their functions, namespaces, interfaces and counters.
    Status {
        chain: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a function's (or endpoint's) namespace.
    Exec {
        chain: String,
        /// A function name, `ingress` or `egress`.
        function: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print what the chain's eBPF programs logged (aya-log), through netfn's log.
    Logs {
        chain: String,
        /// Keep printing new lines until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print a chain file as a graph description.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// List the function kinds this build knows.
    Kinds,
    /// What this kernel supports (TCX, redirect_peer, XDP on veth, WireGuard, BTF).
    Features {
        #[arg(long)]
        json: bool,
    },
    /// Run the host agent in the foreground: /metrics, chain probes, runtime tasks.
    Agent(agent::AgentArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let agent_log = matches!(cli.command, Command::Agent(_)) && cli.log == DEFAULT_LOG;
    output::init_logging(if agent_log {
        agent::AGENT_LOG
    } else {
        &cli.log
    });
    let result = match cli.command {
        Command::Validate { file } => commands::validate(&file),
        Command::Up { file, chain } => commands::up(&file, chain.as_deref()),
        Command::Apply {
            file,
            chain,
            dry_run,
        } => commands::apply(&file, chain.as_deref(), dry_run),
        Command::Down { target, all } => commands::down(target.as_deref(), all),
        Command::Status { chain, json } => commands::status(chain.as_deref(), json),
        Command::Exec {
            chain,
            function,
            command,
        } => commands::exec(&chain, &function, &command),
        Command::Graph { file, format } => commands::graph(
            &file,
            match format {
                GraphFormat::Dot => netfn_core::chain::graph::Format::Dot,
                GraphFormat::Mermaid => netfn_core::chain::graph::Format::Mermaid,
            },
        ),
        Command::Logs { chain, follow } => commands::logs(&chain, follow),
        Command::Kinds => commands::kinds(),
        Command::Agent(args) => agent::run(args),
        Command::Features { json } => commands::features(json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netfn: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
