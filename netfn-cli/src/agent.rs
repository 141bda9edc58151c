//! `netfn agent`: the host agent in the foreground (systemd runs it as is; `netfn up` starts it
//! detached when none runs).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use netfn_core::agent::{self, AgentConfig, ProbeConfig};

/// The log filter of the agent when `--log` is left at the CLI's default.
pub const AGENT_LOG: &str = "info,netfn::ebpf=info";

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// HTTP address of /metrics and /healthz. Loopback by default; port 0 picks a free port
    /// (the control socket's `ping` tells which).
    #[arg(long, default_value = agent::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// The control socket for the CLI [default: $NETFN_AGENT_SOCKET or /run/netfn/agent.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Where the chain records are [default: /run/netfn/chains].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Only this chain (repeat for more); by default every recorded chain.
    #[arg(long = "chain", value_name = "CHAIN")]
    chains: Vec<String>,
    /// Time between two probes of a chain (e.g. 1s, 250ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    probe_interval: Duration,
    /// How long to wait for a probe's echo (at most the interval).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    probe_timeout: Duration,
    /// UDP port of probes, bound in each chain's egress endpoint namespace.
    #[arg(long, default_value_t = agent::DEFAULT_PROBE_PORT)]
    probe_port: u16,
    /// Do not probe chains.
    #[arg(long)]
    no_probe: bool,
    /// Do not forward the chains' eBPF log records into the agent's log.
    #[arg(long)]
    no_ebpf_logs: bool,
    /// Time between two reads of the state directory (the CLI also asks for one after changes).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    rescan_interval: Duration,
}

/// Parses `250ms`, `1s`, `1.5s`, `2m`, or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. 500ms, 1s or 2m"))?;
    let secs = value * scale;
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(format!("`{s}` is out of range (1ms to 24h)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn run(args: AgentArgs) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "`netfn agent` reads pinned eBPF maps and enters chain namespaces, and needs root; \
             run it with sudo or as the systemd unit"
        );
    }
    let defaults = AgentConfig::default();
    let config = AgentConfig {
        listen: args.listen,
        socket: args.socket.unwrap_or(defaults.socket),
        state_dir: args.state_dir.unwrap_or(defaults.state_dir),
        only: args.chains.into_iter().collect::<BTreeSet<_>>(),
        probe: (!args.no_probe).then_some(ProbeConfig {
            interval: args.probe_interval,
            timeout: args.probe_timeout,
            port: args.probe_port,
        }),
        ebpf_logs: !args.no_ebpf_logs,
        rescan_interval: args.rescan_interval,
        ..defaults
    };
    // The runtime's threads keep only what the agent needs from the start (they bind nothing);
    // the main thread drops the rest once the agent's sockets are bound (agent::run).
    let keep = config.capabilities;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("netfn-agent")
        .on_thread_start(move || {
            if let Err(e) = agent::drop_capabilities(keep) {
                // A thread with more than it needs is a hole: stop rather than run with it.
                eprintln!("netfn agent: {e}");
                std::process::abort();
            }
        })
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let kinds = Arc::new(netfn_functions::registry());
    rt.block_on(agent::run(config, kinds))
        .context("netfn agent")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
