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

/// Parses `250ms`, `1s`, `1.5s`, `2m`, `1h`, or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. 500ms, 1s, 2m or 1h"))?;
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
    crate::require_capabilities(
        "netfn agent",
        "reads pinned eBPF maps and enters chain namespaces",
        netfn_core::privilege::ADMIN_CAPABILITIES,
    )?;
    without_thread_caches();
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
    tune_allocator();
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
    rt.spawn(trim_freed_memory(Duration::from_secs(10)));
    let ran = rt.block_on(agent::run(config, kinds));
    // A task's blocking work still running (a name lookup a resolver is slow to answer) is
    // not waited for past a second: systemd gives a stopping agent 5 s.
    rt.shutdown_timeout(Duration::from_secs(1));
    ran.context("netfn agent")?;
    Ok(ExitCode::SUCCESS)
}

/// The agent runs for months, and its resident size must not creep. Its live heap is small and
/// flat (250-270 KiB through a soak's chaos, by heaptrack), yet under glibc's defaults the
/// resident size grew with the hours (+1.7 MiB over a 30-minute soak), all of it in malloc's
/// heaps (/proc/PID/smaps): glibc's per-thread caches (tcache: up to 7 freed blocks of each of
/// 64 sizes per thread, about 240 KiB a thread at most) kept filling with the blocks of sizes
/// seen rarely (malloc_info counted 1,140 KiB in use where 212 KiB were live), and every thread
/// that came and went (tokio's blocking pool, the threads that enter a function's namespace)
/// left freed memory in an arena of its own (five of 500-700 KiB). So the agent runs without
/// thread caches ([`without_thread_caches`]), with one arena, with blocks from 4 KiB up in
/// mappings of their own (unmapped when freed, never splitting the heap), and hands free pages
/// back now and then ([`trim_freed_memory`]). Called before any other thread exists.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets parameters of the allocator; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024);
    }
}

/// glibc reads its thread-cache setting only when a program starts (the tunable
/// `glibc.malloc.tcache_count`, no mallopt), so the agent runs itself again with it: the same
/// process (exec keeps the pid), arguments and environment, plus the tunable. A
/// `GLIBC_TUNABLES` that already sets it is left as the operator wrote it.
fn without_thread_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        let Some(tunables) = tunables_without_thread_caches(&current) else {
            return;
        };
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_else(|| "netfn".into());
        let err = std::process::Command::new("/proc/self/exe")
            .arg0(argv0)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .exec();
        tracing::warn!(
            "cannot run the agent again without glibc's thread caches ({err}); going on with \
             them: its resident size may grow by up to about 240 KiB per thread"
        );
    }
}

/// `GLIBC_TUNABLES` with the thread caches off, or None when `current` already sets them.
fn tunables_without_thread_caches(current: &str) -> Option<String> {
    const TUNABLE: &str = "glibc.malloc.tcache_count";
    if current
        .split(':')
        .any(|t| t.split('=').next() == Some(TUNABLE))
    {
        return None;
    }
    Some(if current.is_empty() {
        format!("{TUNABLE}=0")
    } else {
        format!("{current}:{TUNABLE}=0")
    })
}

/// Hands the pages that freed memory left in the heap back to the kernel, every `every`.
async fn trim_freed_memory(every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free pages; it takes the allocator's own locks.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_cache_tunable_is_added_once_and_an_operators_own_is_kept() {
        assert_eq!(
            tunables_without_thread_caches("").as_deref(),
            Some("glibc.malloc.tcache_count=0")
        );
        assert_eq!(
            tunables_without_thread_caches("glibc.malloc.arena_max=2").as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0")
        );
        assert_eq!(
            tunables_without_thread_caches("glibc.malloc.tcache_count=0"),
            None
        );
        assert_eq!(
            tunables_without_thread_caches("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=3"),
            None
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
