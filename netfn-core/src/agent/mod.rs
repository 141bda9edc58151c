//! The host agent (`netfn agent`): one per host, like a node exporter. It owns the runtime tasks
//! of every chain (the prober today; load-balancer health checks and the WireGuard endpoint
//! later), serves `/metrics` and `/healthz` over HTTP, and answers the CLI on a Unix socket.
//!
//! Kernel objects outlive the agent: it only reads the chain records and the pinned maps, so it
//! can be killed and restarted at any time without touching traffic, and a restarted agent
//! adopts what runs ([`chains`]).
//!
//! Threads and namespaces: the agent runs on tokio; whatever must happen inside a chain's
//! namespace (binding the prober's sockets) runs on a fresh std thread that enters it, started
//! from the blocking pool ([`crate::kernel::netns::run_in`]), never on a tokio worker.

pub mod autostart;
pub mod board;
pub mod chains;
pub mod client;
pub mod control;
pub mod http;
pub mod prober;
pub mod protocol;
pub mod supervisor;
mod upgrade;

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::ebpf::EbpfError;
use crate::function::Registry;
use crate::kernel::netns::NetnsError;
use crate::metrics::{ChainCollector, Metrics, MetricsError, Records};
use crate::plan::names;
use crate::privilege;

pub use autostart::{AgentStart, AutostartError, AutostartOptions, ensure_agent_running};
pub use client::{ClientError, chain_reports, notify_rescan, ping};
pub use prober::{DEFAULT_PROBE_PORT, ProbeConfig};
pub use protocol::{ChainReport, Pong, ProbeReport, TaskReport};

/// The control socket, unless `NETFN_AGENT_SOCKET` names another.
pub const DEFAULT_SOCKET: &str = "/run/netfn/agent.sock";
/// Environment variable naming the control socket (for the CLI and `ensure_agent_running`).
pub const SOCKET_ENV: &str = "NETFN_AGENT_SOCKET";
/// The HTTP address, loopback only unless the operator says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9847";

/// The control socket the CLI talks to: `$NETFN_AGENT_SOCKET`, or [`DEFAULT_SOCKET`].
pub fn default_socket() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "another netfn agent already serves {}{}; stop it first (or give this one another --socket)",
        socket.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    AlreadyRunning { socket: PathBuf, pid: Option<u32> },
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot listen on {addr}: {source}; pick another --listen address")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot watch for signals: {0}")]
    Signals(io::Error),
    #[error("cannot drop the capabilities the agent does not need: {0}")]
    Privilege(String),
}

/// Why a runtime task stopped (its supervisor restarts it).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot {what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Ebpf(Box<EbpfError>),
    #[error("{0}")]
    Other(String),
    /// A function kind's task failed, for the reason it gave.
    #[error("{0}")]
    Kind(String),
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// HTTP address of /metrics and /healthz (port 0: any free port, reported by `ping`).
    pub listen: SocketAddr,
    pub socket: PathBuf,
    /// Where chain records are (normally /run/netfn/chains).
    pub state_dir: PathBuf,
    /// Where chains pin their eBPF objects (normally /sys/fs/bpf/netfn).
    pub bpf_root: PathBuf,
    /// Only these chains (empty: every recorded chain).
    pub only: BTreeSet<String>,
    /// `None`: no probing.
    pub probe: Option<ProbeConfig>,
    /// Forward each chain's eBPF log records into the agent's log.
    pub ebpf_logs: bool,
    pub rescan_interval: Duration,
    pub backoff: supervisor::Backoff,
    /// The capabilities the agent keeps once its sockets are bound (`None`: all it has).
    pub capabilities: Option<&'static [u32]>,
}

/// What the agent needs once its sockets are bound, and why: entering chain namespaces
/// (`setns`: CAP_SYS_ADMIN, which also admits `bpf()` for reading pinned maps: the kernel's
/// `bpf_capable()` takes CAP_BPF or CAP_SYS_ADMIN, so CAP_BPF would add nothing); the kinds'
/// runtime parts (load-balancer health checks change nftables in a namespace, the WireGuard
/// kinds read their counters and devices over netlink, and a restarted userspace endpoint
/// attaches to its TUN device: CAP_NET_ADMIN); and CAP_SETPCAP, so that a process the agent
/// restarts can empty its own bounding set. Everything else (CAP_DAC_OVERRIDE, CAP_NET_RAW,
/// CAP_SYS_MODULE, …) goes.
pub const AGENT_CAPABILITIES: &[u32] = &[
    privilege::CAP_SYS_ADMIN,
    privilege::CAP_NET_ADMIN,
    privilege::CAP_SETPCAP,
];

/// Keeps only [`AgentConfig::capabilities`] in the calling thread (a runtime thread as it
/// starts, or the agent's main thread once bound): see [`crate::privilege`].
pub fn drop_capabilities(keep: Option<&[u32]>) -> Result<(), AgentError> {
    match keep {
        Some(keep) => privilege::keep_only(keep).map_err(AgentError::Privilege),
        None => Ok(()),
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9847)),
            socket: default_socket(),
            state_dir: names::chain_state_dir(),
            bpf_root: PathBuf::from(names::BPFFS_DIR),
            only: BTreeSet::new(),
            probe: Some(ProbeConfig::default()),
            ebpf_logs: true,
            rescan_interval: Duration::from_secs(2),
            backoff: supervisor::Backoff::default(),
            capabilities: Some(AGENT_CAPABILITIES),
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT. Call on a tokio multi-thread runtime.
pub async fn run(config: AgentConfig, kinds: Arc<Registry>) -> Result<(), AgentError> {
    let _lock = control::InstanceLock::acquire(&config.socket)?;
    let http = TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
    let http_addr = http.local_addr().map_err(|source| AgentError::Listen {
        addr: config.listen,
        source,
    })?;
    let control = control::bind(&config.socket)?;
    let _socket_file = RemoveOnDrop(config.socket.clone());
    // Bound: from here on, only what the agent needs (the runtime's threads dropped theirs as
    // they started).
    drop_capabilities(config.capabilities)?;

    let board = Arc::new(board::Board::default());
    let records = Arc::new(Records::new(&config.state_dir, Some(config.only.clone())));
    let (registry, agent_metrics) = Metrics::agent_registry()?;
    let collector = ChainCollector::new(
        Arc::clone(&records),
        Arc::clone(&kinds),
        board.clone(),
        config.bpf_root.clone(),
        agent_metrics.scrape_errors.clone(),
    )?;
    let metrics = Metrics::new(registry, agent_metrics.clone(), collector)?;

    let (rescan_tx, rescan_rx) = mpsc::channel(16);
    let control_ctx = Arc::new(control::ControlContext {
        pong: Pong {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            http: http_addr.to_string(),
        },
        board: Arc::clone(&board),
        rescan: rescan_tx,
    });
    let manager = chains::ManagerContext {
        records,
        board,
        metrics: agent_metrics,
        probe: config.probe,
        ebpf_logs: config.ebpf_logs,
        bpf_root: config.bpf_root.clone(),
        rescan_interval: config.rescan_interval,
        backoff: config.backoff,
        kinds,
    };

    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    tracing::info!(
        http = %http_addr,
        socket = %config.socket.display(),
        state_dir = %config.state_dir.display(),
        "netfn agent {} running (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    tokio::select! {
        () = http::serve(http, metrics) => {}
        () = control::serve(control, control_ctx) => {}
        () = chains::manage(manager, rescan_rx) => {}
        _ = term.recv() => tracing::info!("SIGTERM: stopping (chains keep running)"),
        _ = int.recv() => tracing::info!("SIGINT: stopping (chains keep running)"),
    }
    Ok(())
}

/// Removes the control socket when the agent stops (a SIGKILLed agent leaves it; the next one
/// replaces it).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The agent's log file when `netfn up` starts it: /run/netfn/agent.log.
pub fn default_log_path() -> PathBuf {
    Path::new(names::STATE_DIR).join("agent.log")
}
