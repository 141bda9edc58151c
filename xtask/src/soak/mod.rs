//! `cargo xtask soak [--minutes N] [--seed S]`: a chaos soak. Owns the run: the lab, the
//! traffic, the chaos loop and the report (target/soak/report.json).
//!
//! Four chains, each `fw` (firewall), `lb` (load balancer) and forward functions, in kernel, tc
//! and xdp mode, and a fourth (`…d`) whose mode rotates; the tc chain has a WireGuard endpoint
//! in front, its traffic crossing the tunnel from a wireguard-go peer. Through the first three,
//! for the whole soak: a sequenced UDP stream each way and a TCP transfer to the load
//! balancer's VIP. Meanwhile a chaos loop, seeded (the seed is printed; the same seed gives the
//! same steps), inserts, removes and reorders their functions with `netfn apply`, SIGKILLs an
//! apply of the fourth chain mid-way and recovers it, SIGKILLs the "chaos" agent and starts it
//! again, and takes the fourth chain down and up. A second agent, never killed, is watched for
//! growth. Goals: no datagram lost and the TCP transfer intact on the three chains (never
//! down), nothing with the soak's prefix left after the end, the watched agent's RSS and open
//! descriptors within 10 % of what they were a quarter into the chaos (at most 30 s in: the
//! first changes grow it once), no failed step. The exit status is non-zero when a
//! goal fails.

mod chaos;
mod lab;
mod report;
mod traffic;

use std::net::SocketAddrV4;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use crate::bench::agent::{Agent, scrape};
use crate::bench::vpn::lab::GoPeer;
use crate::flow::Profile;
use crate::util;
use chaos::{Change, Event, Rng};
use lab::Chain;

#[derive(Args)]
pub struct SoakArgs {
    /// Wall time of the whole soak, setup and teardown included.
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// Seed of the chaos loop (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Datagrams per second of each UDP stream.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// No WireGuard endpoint in front of the tc chain (to tell a loss through the userspace
    /// endpoint, which needs a CPU in time like any process, from one in netfn's fast path).
    #[arg(long)]
    without_vpn: bool,
    /// The build of netfn to soak (CI: `dev`, the build its tests already made).
    #[arg(long, value_enum, default_value_t = Profile::Release)]
    profile: Profile,
}

/// UDP ports: the stream toward egress (sent from +1), toward ingress (+2, +3), bursts.
const FORWARD_PORT: u16 = 7100;
const REVERSE_PORT: u16 = 7102;
const BURST_PORT: u16 = 7200;
/// The TCP transfer's pace.
const TCP_BYTES_PER_SECOND: u64 = 1 << 20;
/// Time kept for teardown and the report at the end of the budget.
const TEARDOWN_BUDGET: Duration = Duration::from_secs(15);

/// What the soak made, taken down on drop (also when it fails half-way).
struct Soak {
    netfn: PathBuf,
    dir: PathBuf,
    chains: Vec<Chain>,
    peers: Vec<GoPeer>,
    agents: Vec<Agent>,
}

impl Soak {
    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        self.agents.clear();
        self.peers.clear();
        for chain in std::mem::take(&mut self.chains) {
            if let Err(e) = lab::netfn(&self.netfn, &["down", &chain.name]) {
                errors.push(format!("teardown: {e:#}"));
            }
        }
        if self.dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            errors.push(format!("remove {}: {e}", self.dir.display()));
        }
        errors
    }
}

impl Drop for Soak {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("{e}");
        }
    }
}

pub fn run(args: SoakArgs) -> Result<()> {
    crate::flow::require_root("cargo xtask soak")?;
    let netfn = crate::flow::ensure_built(args.profile)?;
    // The budget counts from here: building netfn is not part of the soak.
    let started = Instant::now();
    let budget = Duration::from_secs_f64(args.minutes.max(0.5) * 60.0);
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let prefix = format!("sk{:x}", std::process::id());
    println!(
        "soak: seed {seed} (again: cargo xtask soak --minutes {} --seed {seed}); prefix {prefix}",
        args.minutes
    );
    let out_dir = util::workspace_root().join("target/soak");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let dir = out_dir.join(&prefix);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let mut soak = Soak {
        netfn: netfn.clone(),
        dir: dir.clone(),
        chains: Vec::new(),
        peers: Vec::new(),
        agents: Vec::new(),
    };

    // The lab: three streaming chains and the fourth, the VPN in the tc one.
    let mut chains = vec![
        Chain::new(format!("{prefix}k"), "kernel", 71),
        Chain::new(format!("{prefix}t"), "tc", 72),
        Chain::new(format!("{prefix}x"), "xdp", 73),
    ];
    if args.without_vpn {
        println!("soak: without the WireGuard endpoint (--without-vpn)");
    } else {
        chains[1].vpn = Some(lab::vpn_keys(&netfn, &dir, &chains[1].name)?);
    }
    let mut fourth = Chain::new(format!("{prefix}d"), "tc", 74);
    for chain in chains.iter().chain([&fourth]) {
        let file = chain.write(&dir)?;
        soak.chains.push(chain.clone());
        lab::netfn(&netfn, &["up", &file.to_string_lossy()])?;
        println!("up: {} ({}): {}", chain.name, chain.mode, chain.describe());
    }
    for chain in chains.iter().filter(|c| c.vpn.is_some()) {
        soak.peers.push(lab::start_peer(chain)?);
    }
    // The VPN endpoints' processes: the same ones must run at the end (killing agents and
    // changing other functions must not restart them).
    let endpoints: Vec<(String, Option<i32>)> = chains
        .iter()
        .filter(|c| c.vpn.is_some())
        .map(|c| (c.name.clone(), lab::process_pid(&c.name, "vpn")))
        .collect();
    for chain in chains.iter().chain([&fourth]) {
        lab::wait_carrying(chain, BURST_PORT, Duration::from_secs(20))?;
    }
    let owned_names: Vec<String> = chains
        .iter()
        .chain([&fourth])
        .map(|c| c.name.clone())
        .collect();
    let names: Vec<&str> = owned_names.iter().map(String::as_str).collect();
    // Two agents, each probing on its own port in the egress namespaces.
    let agent_in = |role: &str| {
        let port = if role == "watched" { "9848" } else { "9849" };
        Agent::start_for(
            &netfn,
            &dir.join(format!("{role}.sock")),
            &out_dir.join(format!("{prefix}-{role}.log")),
            &names,
            &["--probe-port", port],
        )
    };
    soak.agents.push(agent_in("watched")?);
    let mut chaos_agent = Some(agent_in("chaos")?);

    // Traffic through the three chains, for the whole soak.
    let backlog_at_start = lab::backlog_drops();
    let mut streams = Vec::new();
    let mut transfers = Vec::new();
    for chain in &chains {
        streams.push(traffic::SeqStream::start(
            &format!("{} toward egress", chain.name),
            &chain.forward_path(),
            FORWARD_PORT,
            args.rate,
        )?);
        streams.push(traffic::SeqStream::start(
            &format!("{} toward ingress", chain.name),
            &chain.reverse_path(),
            REVERSE_PORT,
            args.rate,
        )?);
        transfers.push(traffic::TcpTransfer::start(
            &format!("{} TCP to the VIP", chain.name),
            &chain.egress_ns(),
            SocketAddrV4::new(chain.egress_addr(), lab::BACKEND_PORT),
            &chain.ingress_ns(),
            SocketAddrV4::new(lab::VIP, lab::VIP_PORT),
            TCP_BYTES_PER_SECOND,
        )?);
    }

    // The watched agent, warmed up: a few scrapes, then its size.
    let watched_http = soak.agents[0].http.clone();
    let watched_pid = soak.agents[0].pid();
    for _ in 0..5 {
        scrape(&watched_http)?;
        std::thread::sleep(Duration::from_millis(500));
    }
    let before_chaos = lab::settled_rss_and_fds(watched_pid)?;
    println!(
        "watched agent (pid {watched_pid}): {} KiB resident, {} open descriptors",
        before_chaos.0, before_chaos.1
    );

    // The chaos.
    let chaos_end = (started + budget)
        .checked_sub(TEARDOWN_BUDGET)
        .filter(|end| *end > Instant::now() + Duration::from_secs(20))
        .unwrap_or(Instant::now() + Duration::from_secs(20));
    let chaos_started = Instant::now();
    // The baseline for "flat" is taken once the chaos has run a while: the first applies,
    // agent restarts and chain changes make the agent's allocator and caches grow once (a
    // 2-minute soak measured from before the chaos read +5 % and +10 % with no trend after).
    let warm_up = (chaos_end - chaos_started).min(Duration::from_secs(120)) / 4;
    let mut at_start = None;
    let mut rng = Rng::new(seed);
    let mut events: Vec<Event> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut scrapes = 0u64;
    while Instant::now() < chaos_end {
        let t0 = Instant::now();
        let pick = rng.below(10);
        let (step, chain_name, result) = match pick {
            0..=5 => {
                let i = rng.below(chains.len());
                let what = [Change::Insert, Change::Remove, Change::Reorder][rng.below(3)];
                let r = chaos::change(&netfn, &dir, &mut chains[i], what, &mut rng);
                ("apply", chains[i].name.clone(), r)
            }
            6 => {
                let delay = rng.below(20) as u64;
                let r = chaos::kill_apply(&netfn, &dir, &mut fourth, delay, BURST_PORT);
                ("kill-apply", fourth.name.clone(), r)
            }
            7 => {
                let r = restart_agent(&mut chaos_agent, &agent_in, &names);
                ("kill-agent", String::new(), r)
            }
            8 => {
                let r = chaos::down_up(&netfn, &dir, &mut fourth, BURST_PORT);
                ("down-up", fourth.name.clone(), r)
            }
            _ => {
                let r = scrape(&watched_http).map(|(ms, body)| {
                    format!(
                        "watched agent answered /metrics in {ms:.1} ms, {} lines",
                        body.lines().count()
                    )
                });
                ("scrape", String::new(), r)
            }
        };
        scrapes += u64::from(scrape(&watched_http).is_ok());
        if at_start.is_none() && chaos_started.elapsed() >= warm_up {
            at_start = Some(lab::rss_and_fds(watched_pid)?);
        }
        let event = Event {
            at_seconds: chaos_started.elapsed().as_secs_f64(),
            step: step.into(),
            chain: chain_name,
            ok: result.is_ok(),
            detail: match &result {
                Ok(d) => d.clone(),
                Err(e) => format!("{e:#}"),
            },
            millis: t0.elapsed().as_secs_f64() * 1e3,
        };
        println!(
            "[{:7.1}s] {:10} {:12} {} {}",
            event.at_seconds,
            event.step,
            event.chain,
            if event.ok { "ok  " } else { "FAIL" },
            event.detail
        );
        if !event.ok {
            errors.push(format!("{} {}: {}", event.step, event.chain, event.detail));
        }
        events.push(event);
        if !soak.agents[0].running() {
            errors.push("the watched agent exited".into());
            break;
        }
        std::thread::sleep(Duration::from_millis(200 + rng.below(1300) as u64));
    }
    let chaos_seconds = chaos_started.elapsed().as_secs_f64();
    for (chain, pid) in &endpoints {
        let now = lab::process_pid(chain, "vpn");
        if pid.is_none() || now != *pid {
            errors.push(format!(
                "{chain}: the VPN endpoint's process was {pid:?} at the start, {now:?} at the end"
            ));
        }
    }
    let at_end = lab::settled_rss_and_fds(watched_pid);
    let at_start = at_start.unwrap_or(before_chaos);
    println!(
        "watched agent: {} KiB before the chaos, {} KiB after its first {:.0} s, {} KiB at the end",
        before_chaos.0,
        at_start.0,
        warm_up.as_secs_f64(),
        at_end.as_ref().map(|a| a.0).unwrap_or(0)
    );

    // The end: traffic first (its losses), then the agents, the peer and the chains.
    let mut stream_results = Vec::new();
    for s in streams {
        match s.finish(chaos_started) {
            Ok(r) => stream_results.push(r),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let tcp_results: Vec<_> = transfers.into_iter().map(|t| t.finish()).collect();
    let backlog_dropped = lab::backlog_drops().saturating_sub(backlog_at_start);
    let drops: Vec<_> = chains
        .iter()
        .map(|c| lab::chain_drops(&netfn, &c.name))
        .collect();
    drop(chaos_agent.take());
    let agent_log_errors = agent_log_errors(&out_dir, &prefix);
    // The VPN endpoints' own logs go with their chains: kept for the report's reader (a loss
    // through a tunnel is explained, or not, by what the endpoint said).
    for c in chains.iter().filter(|c| c.vpn.is_some()) {
        let to = out_dir.join(format!("{}-vpn.log", c.name));
        if lab::keep_process_log(&c.name, "vpn", &to) {
            println!(
                "kept the VPN endpoint's log of {}: {}",
                c.name,
                to.display()
            );
        }
    }
    soak.chains = chains.iter().chain([&fourth]).cloned().collect();
    errors.extend(soak.teardown());
    let leftovers = lab::leftovers(&prefix, true);

    let report = report::Report {
        seed,
        minutes: args.minutes,
        chaos_seconds,
        kernel: crate::bench::kernel_release(),
        rate_per_stream: args.rate,
        prefix: prefix.clone(),
        chains: chains
            .iter()
            .zip(drops)
            .map(|(c, drops)| report::ChainReport {
                name: c.name.clone(),
                mode: c.mode.clone(),
                vpn: c.vpn.is_some(),
                functions_at_end: c.describe(),
                drops,
            })
            .collect(),
        backlog_dropped,
        streams: stream_results,
        tcp: tcp_results,
        events,
        watched_agent: report::AgentUse {
            pid: watched_pid,
            rss_kib_start: at_start.0,
            // Descriptors against the state before the chaos, every chain up as at the end
            // (the allocator's one-time growth that delays the RSS baseline does not apply;
            // a sample mid-chaos caught a chain down: 23 against 26 before and after).
            fds_start: before_chaos.1,
            rss_kib_end: at_end.as_ref().map(|a| a.0).unwrap_or(0),
            fds_end: at_end.as_ref().map(|a| a.1).unwrap_or(0),
            scrapes,
        },
        leftovers,
        errors,
        agent_log_errors,
        goals: Vec::new(),
    };
    let report = report.judged();
    report.print();
    let path = out_dir.join("report.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", path.display()))?;
    println!("wrote {}", path.display());
    println!(
        "soak took {:.0} s (seed {seed})",
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = report
        .goals
        .iter()
        .filter(|g| !g.met)
        .map(|g| g.name.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "soak goals not met: {} (seed {seed}; see {})",
            failed.join(", "),
            path.display()
        );
    }
    Ok(())
}

/// SIGKILLs the chaos agent and starts another; it must answer and serve the chains' metrics.
fn restart_agent(
    agent: &mut Option<Agent>,
    start: &dyn Fn(&str) -> Result<Agent>,
    chains: &[&str],
) -> Result<String> {
    let old = agent.take().map(|a| {
        let pid = a.pid();
        a.kill9();
        pid
    });
    let new = start("chaos")?;
    let pid = new.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    let missing = loop {
        let body = scrape(&new.http).map(|(_, b)| b).unwrap_or_default();
        let missing: Vec<&str> = chains
            .iter()
            .filter(|c| !body.contains(&format!("chain=\"{c}\"")))
            .copied()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    *agent = Some(new);
    if !missing.is_empty() {
        anyhow::bail!(
            "restarted agent {pid} shows no metrics of {}",
            missing.join(", ")
        );
    }
    Ok(format!(
        "SIGKILLed agent {}, the new one ({pid}) serves every chain",
        old.map(|p| p.to_string()).unwrap_or("(none)".into())
    ))
}

/// ERROR and WARN lines of the soak's agent logs (kept in target/soak for a look).
fn agent_log_errors(out_dir: &Path, prefix: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for role in ["watched", "chaos"] {
        let text = std::fs::read_to_string(out_dir.join(format!("{prefix}-{role}.log")))
            .unwrap_or_default();
        lines.extend(
            text.lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                .map(|l| format!("{role}: {l}")),
        );
    }
    lines
}
