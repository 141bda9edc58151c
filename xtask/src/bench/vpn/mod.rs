//! `cargo xtask bench vpn`: netfn's WireGuard endpoint against Debian's wireguard-go.
//!
//! Tunnels, all up at once and measured interleaved (repetition by repetition, the order rotated
//! each time), each between an iperf3 client and server in namespaces the bench made:
//! - **bare**: one veth pair between two namespaces, no tunnel (the reference);
//! - **wggo-pair**: two wireguard-go processes, each in its namespace, over one veth pair; client
//!   and server use the tunnel addresses;
//! - **netfn-wggo**: a chain whose only function is a netfn WireGuard endpoint (`side =
//!   "ingress"`); wireguard-go in the chain's ingress namespace is its peer (as in
//!   tests/tests/wireguard.rs); the client sends from wireguard-go's tunnel address to the server
//!   in the chain's egress namespace;
//! - **netfn-netfn**: two chains, each with one netfn endpoint, their encrypted sides facing one
//!   namespace of the bench (chain A's egress and chain B's ingress), which routes between them
//!   and NATs the tunnel's UDP (so each endpoint sees its neighbour's address, as the forwarder's
//!   anti-spoofing check wants); client in A's ingress, server in B's egress;
//! - with `--also-gotatun`, **netfn-wggo-gotatun** and **netfn-netfn-gotatun**: the same two on
//!   GotaTun's own device (`userspace = "gotatun"`) instead of netfn's batched device (the
//!   default), in subnets and names of their own. The goals are the default device's.
//!
//! `--receive-moderation-us US` sets netfn's batched endpoints' receive moderation (0: off), to
//! measure what it costs or saves against netfn's default (the JSON records it).
//!
//! `--tests tcp1-reverse,udp` measures only those tests (every tunnel still comes up): a quicker
//! look at one direction; the goals are judged on the tests run.
//!
//! Figures, per tunnel and repetition, each from its own run: iperf3's (`iperf3 -J -c … -t
//! SECONDS`, a fresh `iperf3 -s -1`, default flags otherwise) or the bench's own traffic:
//! - **TCP, 1 stream** and **TCP, 4 streams** (`-P 4`): throughput at the receiver;
//! - **UDP pps**: 60-byte frames before encapsulation from our own generator ([`flood`]), client
//!   to server and server to client (`-R`), datagrams received per second; and iperf3's
//!   `-u -b 0 -l 18` as a cross-check;
//! - **Round trips** ([`latency`]): an 18-byte UDP request a millisecond from the client to an
//!   echo in the server's namespace, p50 and p99 in µs; idle, and beside a steady load of
//!   60-byte UDP client to server (20 kpps unless `--latency-load-pps` says: two to a 100 µs
//!   tick, where receive moderation would cost latency for little; a sweep of rates shows how
//!   each tunnel's latency grows with its load);
//! - **CPU**: over each run, the utime + stime of the tunnel's userspace processes (both
//!   wireguard-go processes, netfn's endpoint processes; /proc/PID/stat) plus the softirq time
//!   of every CPU (/proc/stat), divided by the Gbit the receiver got (TCP) or the datagrams it got
//!   (UDP); each of those processes alone (which end a tunnel's cost is at) and, for the UDP
//!   floods, the generator's and sink's threads; and, for comparison, the busy time of the whole
//!   machine (iperf3 included) per Gbit.
//! - **Socket drops**: over each run, the datagrams each endpoint's UDP socket dropped with its
//!   receive buffer full ([`drops`]): a TCP rate is set by that loss as much as by CPU (Debian's
//!   wireguard-go keeps the kernel's default buffer, and drops in every test it receives in).
//!
//! Output: the tables, target/bench/vpn.json (every sample), vpn.svg and, with rsvg-convert,
//! vpn.png. Traffic stays between namespaces the bench created; everything is removed at the end,
//! also on failure and on ctrl-c.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::chain::{Figure, Goal, online_cpus, print_goals};
use super::{netfn_release, write_json};
use crate::util;

mod chart;
mod drops;
mod flood;
pub(crate) mod lab;
pub mod latency;
mod measure;
mod report;

use lab::VpnLab;
use measure::Run;
pub use measure::Test;

/// Options of `cargo xtask bench vpn`.
#[derive(Debug, Clone)]
pub struct Options {
    pub repetitions: usize,
    /// Seconds of each run.
    pub seconds: f64,
    /// The chains' fast path (tc, xdp or kernel).
    pub fastpath: String,
    /// netfn's tunnels again on GotaTun's own device (`userspace = "gotatun"`), side by side.
    pub also_gotatun: bool,
    /// netfn's batched endpoints' `receive_moderation_us`, when not netfn's default.
    pub receive_moderation_us: Option<u16>,
    /// The tests to run, in [`Test::ALL`]'s order; all of them when empty.
    pub tests: Vec<Test>,
    /// The load beside the loaded round trips, datagrams a second.
    pub latency_load_pps: u32,
}

impl Options {
    /// The tests to run: those asked for, in [`Test::ALL`]'s order; all when none were.
    fn tests(&self) -> Vec<Test> {
        Test::ALL
            .into_iter()
            .filter(|t| self.tests.is_empty() || self.tests.contains(t))
            .collect()
    }
}

/// One tunnel to measure: where the iperf3 client and server run, and which processes carry it.
struct Tunnel {
    /// "bare", "wggo-pair", "netfn-wggo", "netfn-netfn" (and the last two "-gotatun").
    name: &'static str,
    about: String,
    client_ns: String,
    client_addr: Ipv4Addr,
    server_ns: String,
    server_addr: Ipv4Addr,
    /// The tunnel's userspace processes (wireguard-go, netfn endpoints): their CPU and their
    /// sockets' drops are counted.
    endpoints: Vec<Endpoint>,
}

/// One process that carries a tunnel.
struct Endpoint {
    /// What it is, e.g. "wireguard-go (client side)".
    what: String,
    pid: i32,
    /// The namespace of its UDP socket (bound to [`lab::PORT`]).
    netns: String,
}

impl Endpoint {
    fn new(what: &str, pid: i32, netns: &str) -> Endpoint {
        Endpoint {
            what: what.to_string(),
            pid,
            netns: netns.to_string(),
        }
    }
}

/// Samples of one tunnel: one run per test and repetition.
#[derive(Default)]
struct Samples {
    runs: Vec<(Test, Run)>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM stop the bench between runs (children in the terminal's process group get
/// ctrl-c too, so a run under way fails at once); the lab's guard then removes everything.
fn catch_signals() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

#[derive(Serialize)]
struct Report<'a> {
    bench: &'static str,
    command: String,
    kernel: String,
    cpus: usize,
    /// /proc/loadavg before and after the measurements: others' work on the machine.
    load_before: String,
    load_after: String,
    fastpath: &'a str,
    repetitions: usize,
    seconds: f64,
    /// netfn's batched endpoints' receive moderation, when set (else netfn's default).
    receive_moderation_us: Option<u16>,
    /// The load beside the loaded round trips, datagrams a second.
    latency_load_pps: u32,
    /// The receive moderation the endpoints ran with, as their status says it (the default's
    /// value too: 40 µs before 2026-12-05's 43623f4, 100 since).
    receive_moderation: Option<String>,
    method: Vec<&'static str>,
    records: &'a [report::Record],
    goals: Vec<Goal>,
}

pub fn run(options: &Options) -> Result<()> {
    crate::flow::require_root("cargo xtask bench vpn")?;
    if options.repetitions == 0 || options.seconds < 1.0 {
        bail!("--repetitions must be positive and --seconds at least 1");
    }
    if !["tc", "xdp", "kernel"].contains(&options.fastpath.as_str()) {
        bail!("--fastpath is tc, xdp or kernel");
    }
    for (tool, package) in [
        ("iperf3", "iperf3"),
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
        ("nft", "nftables"),
    ] {
        if !util::have(tool) {
            bail!("{tool} not found (Debian: apt-get install {package}; cargo xtask setup)");
        }
    }
    let netfn = netfn_release()?;
    catch_signals();
    let started = Instant::now();
    let dir: PathBuf =
        util::workspace_root().join(format!("target/bench/vpn-{}", std::process::id()));
    let mut lab = VpnLab::new(netfn, dir, options.receive_moderation_us);
    let tunnels = lab.build(&options.fastpath, options.also_gotatun)?;
    let receive_moderation = lab.receive_moderation();
    println!(
        "set up {} tunnels in {:.1} s (netfn's receive moderation: {}); measuring {} \
         repetition(s) of {:.1} s runs",
        tunnels.len(),
        started.elapsed().as_secs_f64(),
        receive_moderation.as_deref().unwrap_or("unknown"),
        options.repetitions,
        options.seconds
    );
    for t in &tunnels {
        measure::warm_up(t).with_context(|| format!("{}: no traffic gets through", t.name))?;
    }
    let tests = options.tests();
    let load_before = loadavg();
    let mut samples: Vec<Samples> = tunnels.iter().map(|_| Samples::default()).collect();
    for rep in 0..options.repetitions {
        for k in 0..tunnels.len() {
            let i = (k + rep) % tunnels.len();
            let t = &tunnels[i];
            for &test in &tests {
                check_interrupted()?;
                let run = measure::run(t, test, options.seconds, options.latency_load_pps.into())
                    .with_context(|| format!("{}: {}", t.name, test.label()))?;
                eprintln!(
                    "  rep {}/{} {:<12} {:<21} {}",
                    rep + 1,
                    options.repetitions,
                    t.name,
                    test.label(),
                    run.summary(test)
                );
                samples[i].runs.push((test, run));
            }
        }
    }
    let load_after = loadavg();
    lab.teardown()?;

    let records = report::records(&tunnels, &samples, &tests);
    report::print_tables(&records, &tests, options);
    let goals = report::goals(&records);
    print_goals(&goals);
    let report = Report {
        bench: "vpn",
        command: format!(
            "cargo xtask bench vpn --repetitions {} --seconds {} --fastpath {}{}{}{}{}",
            options.repetitions,
            options.seconds,
            options.fastpath,
            if options.also_gotatun {
                " --also-gotatun"
            } else {
                ""
            },
            options
                .receive_moderation_us
                .map(|us| format!(" --receive-moderation-us {us}"))
                .unwrap_or_default(),
            if options.latency_load_pps == latency::LOAD_PPS {
                String::new()
            } else {
                format!(" --latency-load-pps {}", options.latency_load_pps)
            },
            if options.tests.is_empty() {
                String::new()
            } else {
                let names: Vec<String> = tests
                    .iter()
                    .filter_map(clap::ValueEnum::to_possible_value)
                    .map(|v| v.get_name().to_string())
                    .collect();
                format!(" --tests {}", names.join(","))
            }
        ),
        kernel: super::kernel_release(),
        cpus: online_cpus(),
        load_before,
        load_after,
        fastpath: &options.fastpath,
        repetitions: options.repetitions,
        seconds: options.seconds,
        receive_moderation_us: options.receive_moderation_us,
        latency_load_pps: options.latency_load_pps,
        receive_moderation,
        method: report::METHOD.to_vec(),
        records: &records,
        goals,
    };
    let json = write_json("vpn", &report)?;
    super::print_written(&json, chart::chart(&records));
    println!(
        "load average before: {}, after: {}",
        report.load_before, report.load_after
    );
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}
