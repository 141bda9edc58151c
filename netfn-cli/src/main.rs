//! `netfn`: bring service chains up and down, look at them, step inside them.

mod agent;
mod commands;
mod generate;
mod output;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// The default `--log` (the agent logs at info unless told otherwise).
const DEFAULT_LOG: &str = "warn,netfn::ebpf=info";

/// `netfn --version`: the workspace version and the commit (netfn-cli's build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NETFN_COMMIT"),
    ")"
);

/// The public command line. The hidden `generate` verb (completions and man pages) is added
/// in `main` only, so completions and pages are made from exactly this definition.
#[derive(Parser)]
#[command(
    name = "netfn",
    version = VERSION,
    about = "Service chains of network functions in Linux namespaces",
    after_help = "Examples:
  netfn validate examples/minimal.toml
  sudo netfn up examples/minimal.toml
  sudo netfn status minimal
  sudo netfn down minimal
  netfn features"
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
    #[command(after_help = "Examples:
  netfn validate examples/minimal.toml
  for f in examples/*.toml; do netfn validate \"$f\"; done
  netfn validate --no-lookup site.toml     # in a pipeline without DNS")]
    Validate {
        /// The chain file (TOML).
        file: PathBuf,
        /// Check host names (a WireGuard peer's endpoint) for their form only, without asking
        /// the resolver: what they stand for (unknown, loopback, IPv6 only) is left to `up`.
        #[arg(long)]
        no_lookup: bool,
    },
    /// Create the chains of a file (namespaces, veths, addresses, routes, eBPF).
    #[command(after_help = "Examples:
  sudo netfn up examples/minimal.toml
  sudo netfn up examples/two-chains.toml --chain fast")]
    Up {
        /// The chain file (TOML).
        file: PathBuf,
        /// Only this chain of the file.
        #[arg(long, value_parser = chain_name)]
        chain: Option<String>,
        /// No progress line (there is none when stderr is not a terminal either).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Change running chains to match the file: add, remove or reorder functions in place.
    #[command(after_help = "Examples:
  sudo netfn apply edited.toml --dry-run     # print what would change
  sudo netfn apply edited.toml")]
    Apply {
        /// The edited chain file (TOML).
        file: PathBuf,
        /// Only this chain of the file.
        #[arg(long, value_parser = chain_name)]
        chain: Option<String>,
        /// Print what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// No progress line (there is none when stderr is not a terminal either).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Remove a chain (by name, or every chain of a file) and everything netfn created for it.
    #[command(after_help = "Examples:
  sudo netfn down minimal
  sudo netfn down examples/minimal.toml
  sudo netfn down big.toml --wait     # return once the kernel has freed the namespaces
  sudo netfn down --all
  sudo netfn down --force minimal     # its record is damaged")]
    Down {
        /// A chain name or a chain file.
        target: Option<String>,
        /// Every chain netfn knows about.
        #[arg(long, conflicts_with = "target")]
        all: bool,
        /// Without the record (damaged or lost): remove what netfn names after the chain, its
        /// namespaces nf-CHAIN-*, pins /sys/fs/bpf/netfn/CHAIN, processes and files.
        #[arg(long, conflicts_with = "all", requires = "target")]
        force: bool,
        /// Then wait until the kernel has freed the removed namespaces (it does so in the
        /// background, and an `up` started meanwhile waits behind it), each one checked.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (the kernel goes on freeing).
        #[arg(long, value_name = "SECONDS", default_value_t = 300, requires = "wait")]
        wait_limit: u64,
        /// No progress line (there is none when stderr is not a terminal either).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show chains, their functions, namespaces, interfaces and counters.
    #[command(after_help = "Examples:
  sudo netfn status
  sudo netfn status minimal --json")]
    Status {
        /// Only this chain; by default every chain netfn knows about.
        #[arg(value_parser = chain_name)]
        chain: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a function's (or endpoint's) namespace.
    #[command(after_help = "Examples:
  sudo netfn exec minimal ingress -- ping -c 3 10.2.0.2
  sudo netfn exec minimal fw1 -- ip addr")]
    Exec {
        /// The chain's name.
        #[arg(value_parser = chain_name)]
        chain: String,
        /// A function name, `ingress` or `egress`.
        function: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print what the chain's eBPF programs logged (aya-log), through netfn's log.
    #[command(after_help = "Examples:
  sudo netfn logs minimal
  sudo netfn logs minimal --follow")]
    Logs {
        /// The chain's name.
        #[arg(value_parser = chain_name)]
        chain: String,
        /// Keep printing new lines until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print a chain file as a graph description.
    #[command(after_help = "Examples:
  netfn graph examples/minimal.toml | dot -Tsvg > minimal.svg
  netfn graph examples/minimal.toml --format mermaid")]
    Graph {
        /// The chain file (TOML).
        file: PathBuf,
        /// Graphviz dot or a Mermaid flowchart.
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// List the function kinds this build knows.
    #[command(after_help = "Examples:
  netfn kinds")]
    Kinds,
    /// What this kernel supports (TCX, redirect_peer, XDP on veth, WireGuard, BTF).
    #[command(after_help = "Examples:
  netfn features
  netfn features --json")]
    Features {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// WireGuard keys, as `wg` makes them.
    #[command(after_help = "Examples:
  umask 077; netfn wg genkey > vpn.key
  netfn wg pubkey < vpn.key")]
    Wg {
        #[command(subcommand)]
        command: WgCommand,
    },
    /// Runs a WireGuard function's userspace data plane (started by `netfn up`, not by hand).
    #[command(hide = true)]
    WireguardEndpoint {
        #[arg(long, value_parser = chain_name)]
        chain: String,
        #[arg(long)]
        function: String,
    },
    /// List the failpoints of up, apply and down (for tests: NETFN_FAILPOINT=NAME[:crash]).
    #[command(hide = true)]
    Failpoints,
    /// Run the host agent in the foreground: /metrics, chain probes, runtime tasks.
    #[command(after_help = "Examples:
  sudo netfn agent
  sudo netfn agent --listen 0.0.0.0:9847 --probe-interval 250ms
  sudo systemctl enable --now netfn-agent   # the installed unit runs `netfn agent`")]
    Agent(agent::AgentArgs),
}

#[derive(Subcommand)]
enum WgCommand {
    /// Print a new private key (base64) on stdout.
    #[command(after_help = "Examples:
  umask 077; netfn wg genkey > vpn.key")]
    Genkey,
    /// Read a private key on stdin, print its public key.
    #[command(after_help = "Examples:
  netfn wg pubkey < vpn.key")]
    Pubkey,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

/// Refuses to go on when the process, root or not, lacks any of `caps` (those that entering
/// namespaces, netlink and eBPF objects take): `what` (`netfn up`) `why` (what it does).
fn require_capabilities(what: &str, why: &str, caps: &[u32]) -> anyhow::Result<()> {
    use netfn_core::privilege;
    let missing = privilege::missing(caps).map_err(anyhow::Error::msg)?;
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing.into_iter().map(privilege::name).collect();
    let cap_add: Vec<String> = names
        .iter()
        .map(|n| format!("--cap-add {}", n.trim_start_matches("CAP_")))
        .collect();
    anyhow::bail!(
        "`{what}` {why}, and needs {}, which this process does not have although it runs as \
         root (a container started without them, a systemd unit's CapabilityBoundingSet, or \
         setpriv/capsh dropped them); run it with them (e.g. `docker run {}`, or add them to \
         the unit's capability sets)",
        names.join(" and "),
        cap_add.join(" ")
    )
}

/// A chain name argument, checked before it is ever part of a path under /run/netfn.
fn chain_name(arg: &str) -> Result<String, String> {
    netfn_core::chain::state::check_chain_name(arg)
        .map(|()| arg.to_string())
        .map_err(|e| e.to_string())
}

/// The log filter of a userspace WireGuard endpoint when `--log` is left at the CLI's default:
/// its start (with its I/O), handshake waits and peer changes, in
/// /run/netfn/chains/CHAIN.FUNCTION.log; not GotaTun's line per UAPI connection, which every
/// `wg show`, status and scrape would add.
const ENDPOINT_LOG: &str = "info,gotatun::device::uapi=warn";

fn main() -> ExitCode {
    let matches = Cli::command().subcommand(generate::command()).get_matches();
    if let Some((generate::NAME, args)) = matches.subcommand() {
        return report(generate::run(args, Cli::command()));
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The long-running processes log their lifecycle (info) unless `--log` says otherwise.
    let default_log = cli.log == DEFAULT_LOG;
    output::init_logging(match cli.command {
        Command::Agent(_) if default_log => agent::AGENT_LOG,
        Command::WireguardEndpoint { .. } if default_log => ENDPOINT_LOG,
        _ => &cli.log,
    });
    if prints_only(&cli.command) {
        // A reader that stops early (`netfn status | head -3`) ends a verb that only prints,
        // as it ends any Unix tool: by SIGPIPE, quietly. Rust ignores SIGPIPE, so the next
        // println! would panic with a backtrace. Verbs that change chains keep ignoring it (they
        // must finish: see progress::Live::println), and so do the long-running processes,
        // whose sockets a peer may close.
        // SAFETY: signal(2) with a valid signal number and SIG_DFL, before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Validate { file, no_lookup } => commands::validate(&file, no_lookup),
        Command::Up { file, chain, quiet } => commands::up(&file, chain.as_deref(), quiet),
        Command::Apply {
            file,
            chain,
            dry_run,
            quiet,
        } => commands::apply(&file, chain.as_deref(), dry_run, quiet),
        Command::Down {
            target,
            all,
            force,
            wait,
            wait_limit,
            quiet,
        } => commands::down(
            target.as_deref(),
            all,
            force,
            wait.then(|| std::time::Duration::from_secs(wait_limit)),
            quiet,
        ),
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
        Command::Wg { command } => commands::wg(matches!(command, WgCommand::Genkey)),
        Command::WireguardEndpoint { chain, function } => {
            netfn_functions::wireguard::dataplane::run(&chain, &function)
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| anyhow::anyhow!("WireGuard endpoint {chain}/{function}: {e}"))
        }
        Command::Features { json } => commands::features(json),
        Command::Failpoints => commands::failpoints(),
    };
    report(result)
}

/// Whether `command` only reads and prints (no chain changes, no long-running process).
fn prints_only(command: &Command) -> bool {
    match command {
        Command::Validate { .. }
        | Command::Status { .. }
        | Command::Graph { .. }
        | Command::Logs { .. }
        | Command::Kinds
        | Command::Wg { .. }
        | Command::Features { .. }
        | Command::Failpoints => true,
        Command::Up { .. }
        | Command::Apply { .. }
        | Command::Down { .. }
        | Command::Exec { .. }
        | Command::Agent(_)
        | Command::WireguardEndpoint { .. } => false,
    }
}

fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            output::to_stderr(format_args!("netfn: error: {}", output::error_text(&e)));
            ExitCode::FAILURE
        }
    }
}
