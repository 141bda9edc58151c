//! `cargo xtask bench lb`: what a load-balancer function costs, against its peers, in one run.
//!
//! Contenders, each a chain of one function between two endpoint namespaces the bench makes
//! (ingress 10.83.1.2/24, egress 10.84.0.2/16):
//! - `forward-tc`, `forward-xdp`, `forward-kernel`: a `forward` function (the cost of a hop);
//! - `forward-tc-spread`, `forward-xdp-spread` (when more than one backend count is measured):
//!   a `forward` function whose traffic goes to the most backends' addresses in turn, the
//!   reference for what many destinations cost the sink's namespace, whatever sent them;
//! - `lb-tc`, `lb-xdp`: a netfn load balancer (its eBPF stage) of one UDP service on the VIP
//!   192.0.2.10 with 2, 16, 256 and 4,096 backends (by default), a 65,537-entry Maglev table;
//! - `lb-kernel`: the same load balancer in a kernel-mode chain. Its kernel form *is* nftables
//!   DNAT (a jhash of the 5-tuple into a 1,021-slot map, Linux conntrack keeping each flow on its
//!   backend): this is the nftables DNAT baseline.
//!
//! The backends are addresses the egress namespace owns ([`service::BACKEND_NET`], through one
//! `local` route), so the sink (the chain bench's `recvmmsg` counter, its UDP socket bound to
//! 0.0.0.0 there) counts every datagram that reached a backend, whichever. The generator is the
//! chain bench's (AF_PACKET, 60-byte UDP frames); the two traffic shapes are in [`flows`]: few
//! flows (8), and all-new flows (flows of its own in each repetition, measured once both
//! connection tables are full: every packet a new flow for every contender, which the bench
//! counts: the new flows the baseline's DNAT rule saw, and netfn's flows balanced, per packet).
//! A `forward` function gets the same frames, addressed to the egress endpoint.
//!
//! Also measured: time to bring each chain up (`netfn up`), and the swap: `netfn apply` of the
//! same backends with one weight changed (the Maglev table rebuilt over the live one, a new stage
//! instance filled and switched in), as wall time of the whole command and, from netfn's debug
//! log, the stage load alone (object loaded, table built and written, program verified,
//! switched in) and its table-building part.
//!
//! Repetitions are interleaved (every contender once per repetition, the order rotated);
//! medians are reported. After a kernel-mode contender's windows its conntrack is emptied
//! (`flush_conntrack`): Linux's connection table is shared by the whole machine, and what one
//! contender leaves there must not tax the next. Output: a table, target/bench/lb.json, lb.svg
//! and, with rsvg-convert, lb.png. All traffic stays between namespaces the bench created; the chains and the bench's
//! files go at the end, also when the bench fails.

mod flows;
mod report;
mod service;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::chain::{
    PPS_PORT, Topology, ip, link_mac, measure_pps_after, measure_pps_into, netfn_command, warm_up,
};
use super::{
    down_chains, median, netfn_release, prog_cost, timed_netfn, timed_netfn_log, timed_netfn_output,
};
use crate::util;
use crate::util::netfn_netns;
use service::VIP;

const SRC_ADDR: Ipv4Addr = Ipv4Addr::new(10, 83, 1, 2);
const DST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 84, 0, 2);
/// The fast paths a load balancer runs on (kernel: its nftables form, the baseline).
pub const MODES: [&str; 3] = ["tc", "xdp", "kernel"];
/// The sink's socket: every address of the egress namespace (the endpoint's, the backends').
const SINK: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PPS_PORT);
/// netfn's log during the timed swap: the stage load's lines and warnings, nothing else.
const SWAP_LOG: &str = "warn,netfn_core::chain::kinds=debug,netfn_core::ebpf::stages=debug";
/// The nftables table of a load balancer's kernel form (functions/src/lb/nft.rs).
const NFT_TABLE: &str = "netfn_lb";
/// Seconds of the check that traffic to the VIP reaches the backends.
const PROBE_SECONDS: f64 = 0.2;
/// Seconds of all-new flows a tc or xdp contender's eBPF cost is measured over (after its pps
/// windows, with the kernel's program statistics on).
const COST_SECONDS: f64 = 1.0;

/// Options of `cargo xtask bench lb`.
#[derive(Debug, Clone)]
pub struct Options {
    pub repetitions: usize,
    pub seconds: f64,
    pub backends: Vec<usize>,
    /// Which of [`MODES`] to measure.
    pub modes: Vec<String>,
}

/// One contender at one backend count.
#[derive(Debug, Clone)]
struct Contender {
    /// "lb-tc", "lb-kernel", "forward-xdp"…
    kind: String,
    mode: &'static str,
    /// 0 for a forward function.
    backends: usize,
    topology: Topology,
    /// Where its traffic goes: the VIP; or, a forward function, the egress endpoint or (the
    /// spread reference) every backend address in turn.
    targets: Vec<Ipv4Addr>,
    /// Milliseconds of `netfn up`.
    up_ms: f64,
    swap: Option<Swap>,
}

/// The timed `netfn apply` of one changed weight.
#[derive(Debug, Clone, Copy, Serialize)]
struct Swap {
    /// Wall time of the whole command (process, parsing, plan, the change), ms.
    apply_ms: f64,
    /// The new stage instance, from netfn's log (tc/xdp): loaded, filled, verified, switched.
    stage_ms: Option<f64>,
    /// Part of `stage_ms`: the tables built over the live ones and written into the new maps.
    fill_ms: Option<f64>,
}

/// Samples of one contender, one per repetition.
#[derive(Debug, Default, Clone)]
struct Samples {
    few_flows: Vec<f64>,
    new_flows: Vec<f64>,
    /// The nftables baseline: new flows its DNAT rule saw per packet that reached the function,
    /// over the all-new-flows run (1.0: every packet a new flow).
    new_per_packet: Vec<f64>,
    /// tc and xdp: nanoseconds of eBPF per packet (the chain's forwarder and the function's
    /// stage) with all-new flows, as the kernel's program statistics count them.
    new_flow_ns: Vec<f64>,
}

pub fn run(options: &Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lb bench creates namespaces, loads eBPF and nftables: run it as root");
    }
    if options.repetitions == 0
        || options.seconds <= 0.0
        || options.backends.is_empty()
        || options
            .backends
            .iter()
            .any(|&n| n == 0 || n > service::MAX_BACKENDS)
    {
        bail!(
            "--repetitions and --seconds must be positive, every backend count 1 to {}",
            service::MAX_BACKENDS
        );
    }
    let modes: Vec<&'static str> = MODES
        .into_iter()
        .filter(|m| options.modes.iter().any(|o| o == m))
        .collect();
    if let Some(unknown) = options.modes.iter().find(|o| !MODES.contains(&o.as_str())) {
        bail!("--modes: unknown fast path {unknown:?}; choose from tc, xdp and kernel");
    }
    if modes.is_empty() {
        bail!("--modes: name at least one of tc, xdp and kernel");
    }
    if !util::have("nft") {
        bail!("nft not found: run `cargo xtask setup` (it installs nftables)");
    }
    if modes.contains(&"kernel") && !util::have("conntrack") {
        bail!("conntrack not found: run `cargo xtask setup` (it installs conntrack)");
    }
    let started = Instant::now();
    let netfn = netfn_release()?;
    let dir = util::workspace_root().join("target/bench/lb");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut lab = Lab {
        netfn,
        dir,
        chains: Vec::new(),
        next: 0,
    };
    let contenders = lab.build(&options.backends, &modes)?;
    println!(
        "set up {} contenders in {:.1} s; {} repetition(s) of {:.1} s windows, two traffic shapes",
        contenders.len(),
        started.elapsed().as_secs_f64(),
        options.repetitions,
        options.seconds
    );
    let mut samples = vec![Samples::default(); contenders.len()];
    for rep in 0..options.repetitions {
        for k in 0..contenders.len() {
            let i = (k + rep) % contenders.len();
            let c = &contenders[i];
            let t = &c.topology;
            let few = measure_pps_into(t, SINK, options.seconds, flows::few_flows(t, &c.targets))
                .with_context(|| format!("{}: few flows", t.name))?;
            let counter = NewFlowCounter::of(c, &lab.netfn);
            let before = counter.as_ref().map(|n| n.read(t)).transpose()?;
            let new = measure_pps_after(
                t,
                SINK,
                Duration::from_secs_f64(flows::FILL_SECONDS),
                options.seconds,
                flows::new_flows(t, &c.targets, rep),
            )
            .with_context(|| format!("{}: all-new flows", t.name))?;
            let mut note = String::new();
            if new.delivered * flows::FILL_SECONDS < f64::from(flows::FILL_FLOWS) {
                note += "   (too slow to fill the connection tables before the window)";
            }
            if let (Some(counter), Some((flows0, packets0))) = (&counter, before) {
                let (flows1, packets1) = counter.read(t)?;
                let per_packet =
                    flows1.saturating_sub(flows0) as f64 / packets1.saturating_sub(packets0) as f64;
                samples[i].new_per_packet.push(per_packet);
                note = format!("   ({per_packet:.2} new flows per packet");
                if matches!(counter, NewFlowCounter::Nft) {
                    note += &format!(", {} conntrack entries", conntrack_count(t)?);
                }
                note += ")";
            }
            if let Some(ns) = all_new_cost(c, rep)? {
                note += &format!("   eBPF {ns:.0} ns/packet");
                samples[i].new_flow_ns.push(ns);
            }
            if c.mode == "kernel" {
                flush_conntrack(t)?;
            }
            eprintln!(
                "  rep {}/{} {:<18} few flows {:>9.0} pps   all-new flows {:>9.0} pps{note}",
                rep + 1,
                options.repetitions,
                t.name,
                few.delivered,
                new.delivered
            );
            samples[i].few_flows.push(few.delivered);
            samples[i].new_flows.push(new.delivered);
        }
    }
    lab.teardown()?;
    report::report(options, &contenders, &samples, started)
}

/// Nanoseconds per packet of a tc or xdp contender's eBPF (its chain's forwarder, the stage
/// inside it) over [`COST_SECONDS`] of all-new flows; none for a kernel-mode contender.
fn all_new_cost(c: &Contender, rep: usize) -> Result<Option<f64>> {
    let t = &c.topology;
    let Some(chain) = t.chain.as_deref().filter(|_| c.mode != "kernel") else {
        return Ok(None);
    };
    let pinned = prog_cost::forwarder(chain, c.mode);
    let _on = prog_cost::StatsOn::enable()?;
    let before = prog_cost::read(&pinned)?;
    measure_pps_after(
        t,
        SINK,
        Duration::ZERO,
        COST_SECONDS,
        flows::new_flows(t, &c.targets, rep),
    )
    .with_context(|| format!("{}: the eBPF cost window", t.name))?;
    Ok(prog_cost::read(&pinned)?.ns_per_run_since(before))
}

/// What the bench created; removed by `teardown` (or on drop, if the bench fails).
struct Lab {
    netfn: PathBuf,
    /// The bench's files (chain files, neighbour batches), removed with the chains.
    dir: PathBuf,
    chains: Vec<String>,
    next: usize,
}

impl Lab {
    fn build(&mut self, backends: &[usize], modes: &[&'static str]) -> Result<Vec<Contender>> {
        let mut out = Vec::new();
        for &mode in modes {
            out.push(self.forward(mode)?);
        }
        // The spread reference: its sink pays for as many destinations as the most backends.
        let (fewest, most) = (backends.iter().min(), backends.iter().max());
        if let (Some(&fewest), Some(&most)) = (fewest, most)
            && most > fewest
        {
            for &mode in modes.iter().filter(|&&m| m != "kernel") {
                out.push(self.forward_spread(mode, most)?);
            }
        }
        for &n in backends {
            for &mode in modes {
                out.push(self.load_balancer(mode, n)?);
            }
        }
        Ok(out)
    }

    /// A fresh chain name (at most 12 bytes).
    fn name(&mut self) -> String {
        self.next += 1;
        format!("blb{}", self.next)
    }

    fn chain_file(&self, chain: &str) -> PathBuf {
        self.dir.join(format!("{chain}.toml"))
    }

    /// Writes and brings up a chain of one function whose settings are `function`, and gives
    /// its egress namespace the backends' addresses; returns its topology and the up time (ms).
    fn up(&mut self, label: String, mode: &str, function: &str) -> Result<(Topology, f64)> {
        let chain = self.name();
        let file = self.chain_file(&chain);
        let text = format!(
            "[[chain]]\nname = \"{chain}\"\nfastpath = \"{mode}\"\n\n[chain.ingress]\naddress = \
             \"{SRC_ADDR}/24\"\n\n[chain.egress]\naddress = \"{DST_ADDR}/16\"\n\n\
             [[chain.function]]\nname = \"f1\"\n{function}"
        );
        std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
        // A bench that died earlier may have left it.
        let _ = netfn_command(&self.netfn).args(["down", &chain]).output();
        let file_arg = file.to_string_lossy().into_owned();
        let up_ms = timed_netfn(&self.netfn, &["up", &file_arg])?;
        self.chains.push(chain.clone());
        let src_ns = netfn_netns(&chain, "ingress");
        let dst_ns = netfn_netns(&chain, "egress");
        // Every backend address is local in the egress namespace, so the sink's socket (bound
        // to 0.0.0.0) receives what any backend would.
        ip(&[
            "-n",
            &dst_ns,
            "route",
            "add",
            "local",
            service::BACKEND_NET,
            "dev",
            "lo",
        ])?;
        let topology = Topology {
            name: label,
            mode: "lb",
            functions: 1,
            src_mac: link_mac(&src_ns, "nf-out")?,
            next_mac: link_mac(&netfn_netns(&chain, "f1"), "nf-in")?,
            dst_ns,
            chain: Some(chain),
            src_ns,
            src_if: "nf-out".into(),
            src_addr: SRC_ADDR,
            dst_addr: DST_ADDR,
        };
        Ok((topology, up_ms))
    }

    fn forward(&mut self, mode: &'static str) -> Result<Contender> {
        let kind = format!("forward-{mode}");
        let (topology, up_ms) = self.up(kind.clone(), mode, "kind = \"forward\"\n")?;
        warm_up(&topology)
            .with_context(|| format!("{}: no traffic gets through", topology.name))?;
        Ok(Contender {
            kind,
            mode,
            backends: 0,
            topology,
            targets: vec![DST_ADDR],
            up_ms,
            swap: None,
        })
    }

    /// A `forward` function whose traffic goes to the first `n` backend addresses in turn: the
    /// egress namespace's sink pays for many destinations as it does behind a load balancer
    /// (a wildcard-bound UDP socket is first looked up by destination address and port: a
    /// table slot per address), so the load balancer's many-backend rates compare against it.
    /// tc and xdp only (in kernel mode the function would need a neighbour per address).
    fn forward_spread(&mut self, mode: &'static str, n: usize) -> Result<Contender> {
        let kind = format!("forward-{mode}-spread");
        let (topology, up_ms) = self.up(kind.clone(), mode, "kind = \"forward\"\n")?;
        warm_up(&topology)
            .with_context(|| format!("{}: no traffic gets through", topology.name))?;
        Ok(Contender {
            kind,
            mode,
            backends: 0,
            topology,
            targets: (0..n).map(service::backend).collect(),
            up_ms,
            swap: None,
        })
    }

    fn load_balancer(&mut self, mode: &'static str, n: usize) -> Result<Contender> {
        let kind = format!("lb-{mode}");
        let (topology, up_ms) =
            self.up(format!("{kind} {n}"), mode, &service::function(n, false))?;
        if mode == "kernel" {
            self.static_neighbours(&topology, n)?;
        }
        // Neighbours resolved both ways (through the function, not the VIP), then: does traffic
        // to the VIP reach the backends?
        warm_up(&topology)
            .with_context(|| format!("{}: no traffic gets through", topology.name))?;
        let probe = measure_pps_into(
            &topology,
            SINK,
            PROBE_SECONDS,
            flows::few_flows(&topology, &[VIP]),
        )?;
        if probe.delivered <= 0.0 {
            bail!(
                "{}: nothing sent to the VIP {VIP}:{PPS_PORT} reached a backend",
                topology.name
            );
        }
        let swap = self.swap(&topology, n)?;
        Ok(Contender {
            kind,
            mode,
            backends: n,
            topology,
            targets: vec![VIP],
            up_ms,
            swap: Some(swap),
        })
    }

    /// Kernel mode: permanent neighbour entries for the backends in the function's namespace
    /// (see [`service::neighbours`]).
    fn static_neighbours(&self, t: &Topology, n: usize) -> Result<()> {
        let chain = t.chain.as_deref().unwrap_or_default();
        let batch = self.dir.join(format!("{chain}.neigh"));
        let mac = link_mac(&t.dst_ns, "nf-in")?;
        std::fs::write(&batch, service::neighbours(n, mac, "nf-out"))
            .with_context(|| format!("write {}", batch.display()))?;
        ip(&[
            "-n",
            &netfn_netns(chain, "f1"),
            "-batch",
            &batch.to_string_lossy(),
        ])?;
        Ok(())
    }

    /// Times `netfn apply` of the chain of `t` with one backend's weight changed, then puts the
    /// original back (untimed).
    fn swap(&self, t: &Topology, n: usize) -> Result<Swap> {
        let chain = t.chain.as_deref().unwrap_or_default();
        let file = self.chain_file(chain);
        let original =
            std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        let (was, now) = (service::function(n, false), service::function(n, true));
        if !original.contains(&was) {
            bail!(
                "{}: the load balancer's settings are not where the bench wrote them",
                file.display()
            );
        }
        let changed = self.dir.join(format!("{chain}-changed.toml"));
        std::fs::write(&changed, original.replace(&was, &now))
            .with_context(|| format!("write {}", changed.display()))?;
        let (apply_ms, log) = timed_netfn_log(
            &self.netfn,
            &["--log", SWAP_LOG, "apply", &changed.to_string_lossy()],
        )?;
        timed_netfn(&self.netfn, &["apply", &file.to_string_lossy()])?;
        let filled = logged_ms(&log, "filled by ");
        let object = logged_ms(&log, "object and maps ");
        Ok(Swap {
            apply_ms,
            stage_ms: logged_ms(&log, "stage loaded in "),
            fill_ms: filled.zip(object).map(|(f, o)| f - o),
        })
    }

    fn teardown(&mut self) -> Result<()> {
        let mut errors = down_chains(&self.netfn, &mut self.chains);
        if let Err(e) = remove_dir_if_present(&self.dir) {
            errors.push(format!("{e:#}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("cleanup failed:\n  {}", errors.join("\n  "))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("{e:#}");
        }
    }
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Where a load balancer's new flows are counted: the nftables baseline's DNAT rule, or netfn's
/// own count of flows balanced (`netfn status`).
enum NewFlowCounter<'a> {
    Nft,
    Netfn(&'a Path),
}

impl<'a> NewFlowCounter<'a> {
    fn of(c: &Contender, netfn: &'a Path) -> Option<Self> {
        match (c.backends, c.mode) {
            (0, _) => None,
            (_, "kernel") => Some(Self::Nft),
            _ => Some(Self::Netfn(netfn)),
        }
    }

    /// New flows so far, and packets the function received.
    fn read(&self, t: &Topology) -> Result<(u64, u64)> {
        match self {
            Self::Nft => nft_counts(t),
            Self::Netfn(netfn) => netfn_counts(netfn, t),
        }
    }
}

/// The namespace of the bench chain's function `f1`.
fn function_ns(t: &Topology) -> String {
    netfn_netns(t.chain.as_deref().unwrap_or_default(), "f1")
}

/// Entries in the connection table of the function's namespace (the nftables baseline's).
fn conntrack_count(t: &Topology) -> Result<u64> {
    let ns = function_ns(t);
    let count = ip(&[
        "netns",
        "exec",
        &ns,
        "cat",
        "/proc/sys/net/netfilter/nf_conntrack_count",
    ])?;
    count
        .trim()
        .parse()
        .with_context(|| format!("nf_conntrack_count in {ns}: {count:?}"))
}

/// Empties the connection table of a kernel-mode contender's function namespace, once its
/// windows are over. Its all-new flows leave Linux's conntrack full (262,144 unreplied UDP flows,
/// 30 s each), and conntrack's hash table and its garbage collector are the machine's, not the
/// namespace's: left alone, they tax whichever contenders come next (the collector's work and
/// the caches it sweeps). The baseline's own windows are unchanged: it fills its table anew
/// before every window.
fn flush_conntrack(t: &Topology) -> Result<()> {
    ip(&["netns", "exec", &function_ns(t), "conntrack", "--flush"]).map(drop)
}

/// netfn's load balancer: flows it balanced ("N balanced" in its status row `flows`) and
/// packets its fast path forwarded toward the backends.
fn netfn_counts(netfn: &Path, t: &Topology) -> Result<(u64, u64)> {
    let chain = t.chain.as_deref().unwrap_or_default();
    let (_, out, _) = timed_netfn_output(netfn, &["status", chain, "--json"])?;
    let status: serde_json::Value =
        serde_json::from_str(&out).context("netfn status's JSON output")?;
    let hop = status
        .as_array()
        .and_then(|chains| chains.first())
        .unwrap_or(&status)["hops"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["name"] == "f1")
        .with_context(|| format!("netfn status {chain}: no function f1"))?;
    let balanced = hop["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|row| row[0] == "flows")
        .and_then(|row| row[1].as_str())
        .and_then(|v| v.split(' ').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("netfn status {chain}: no `flows` row of f1"))?;
    let packets = hop["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == "nf-in")
        .and_then(|i| i["fastpath"]["forwarded_packets"].as_u64())
        .with_context(|| format!("netfn status {chain}: no fast-path count of f1's nf-in"))?;
    Ok((balanced, packets))
}

/// In a kernel-mode load balancer: the new flows its nftables DNAT rule saw (the service's
/// named counter; a NAT rule meets only the first packet of a flow Linux does not track yet),
/// and the packets that arrived at the function.
fn nft_counts(t: &Topology) -> Result<(u64, u64)> {
    let ns = function_ns(t);
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns, "nft", "-j", "list", "table", "ip", NFT_TABLE,
        ])
        .output()
        .context("run nft")?;
    if !out.status.success() {
        bail!(
            "nft list table ip {NFT_TABLE} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ruleset: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("nft's JSON output")?;
    let flows = counted_packets(&ruleset);
    let link: serde_json::Value = serde_json::from_str(&ip(&[
        "-n", &ns, "-s", "-j", "link", "show", "dev", "nf-in",
    ])?)?;
    let packets = link[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .with_context(|| format!("no packet count of nf-in in {ns}"))?;
    Ok((flows, packets))
}

/// The packets counted by the named counters of an `nft -j list table` listing (the kind's
/// rules count into one per service, and carry no count of their own).
fn counted_packets(listing: &serde_json::Value) -> u64 {
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["counter"]["packets"].as_u64())
        .sum()
}

/// The duration netfn's log gives right after `marker` (`12.34ms`, `1.20s`, `850.00µs`), in
/// milliseconds.
fn logged_ms(log: &str, marker: &str) -> Option<f64> {
    let rest = &log[log.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let value: f64 = rest[..end].parse().ok()?;
    let unit = &rest[end..];
    let scale = if unit.starts_with("ms") {
        1.0
    } else if unit.starts_with("µs") || unit.starts_with("us") {
        1e-3
    } else if unit.starts_with("ns") {
        1e-6
    } else if unit.starts_with('s') {
        1e3
    } else {
        return None;
    };
    Some(value * scale)
}

/// The median of samples.
fn med(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    median(&mut v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_flows_are_read_from_the_named_counters() {
        // As nft 1.0.6 lists the kind's table: a named counter per service, referenced by name
        // from the DNAT rule (which then carries no packet count of its own).
        let named: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "netfn_lb", "handle": 1}},
            {"counter": {"family": "ip", "name": "svc0", "table": "netfn_lb", "handle": 2,
                         "packets": 4242, "bytes": 254520}},
            {"rule": {"family": "ip", "table": "netfn_lb", "chain": "pre", "handle": 3,
                      "expr": [{"counter": "svc0"}, {"dnat": {"addr": "10.0.0.1"}}]}}]}"#,
        )
        .expect("JSON");
        assert_eq!(counted_packets(&named), 4242);
    }

    #[test]
    fn durations_are_read_from_the_log() {
        let log = "DEBUG function f1: object and maps 20.50ms, filled by 61.00ms, program \
                   verified by 1.20s\nDEBUG chain blb4: function f1: stage loaded in 850.00µs \
                   (state kept)\n";
        assert_eq!(logged_ms(log, "object and maps "), Some(20.5));
        assert_eq!(logged_ms(log, "filled by "), Some(61.0));
        assert_eq!(logged_ms(log, "verified by "), Some(1200.0));
        assert_eq!(logged_ms(log, "stage loaded in "), Some(0.85));
        assert_eq!(logged_ms(log, "not there "), None);
    }
}
