//! `cargo xtask bench chain`: how close the fast path gets to a bare veth pair.
//!
//! Topologies, all up at once and measured interleaved (repetition by repetition, the order
//! rotated each time): a bare veth pair between two namespaces (the limit), and chains of 1, 2
//! and 3 forward functions in kernel, tc and xdp modes (`netfn up`).
//!
//! Figures, per topology and repetition:
//! - **UDP pps**: 60-byte frames (18-byte UDP payload) from our own generator (AF_PACKET,
//!   `sendmmsg` of 256 frames per call, qdisc bypass) in the ingress namespace, counted by a sink
//!   at its UDP socket (`recvmmsg`) in the egress namespace: delivered packets per second. The
//!   generator is pinned to CPU 0 (which also runs the softirq work of every hop: veth delivery
//!   happens on the sending CPU), the sink to CPU 1.
//! - **CPU per packet**: busy CPU time of the whole machine (/proc/stat) over the pps window,
//!   divided by delivered packets (generator and sink included, so compare between topologies).
//! - **iperf3 UDP pps** (cross-check with an external tool): `iperf3 -u -b 0 -l 18`, received
//!   datagrams per second.
//! - **TCP throughput**: `iperf3` (receiver side).
//! - **Latency**: our own UDP ping-pong (16-byte payload, both sides busy-polling on their own
//!   CPU), round-trip p50 and p99.
//!
//! Output: a table, target/bench/chain.json (one record per topology, every figure with its
//! unit), target/bench/chain.svg and, with `rsvg-convert` (Debian: librsvg2-bin), chain.png.
//! All traffic stays between namespaces the bench created; everything is removed at the end.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{median, netfn_release, write_json};
use crate::util;

mod chart;
mod iperf;
mod lab;
mod report;
mod traffic;

pub(in crate::bench) use Topology as ChainTopology;
use chart::*;
pub(in crate::bench) use chart::{nice_ceiling, trim_number};
pub(in crate::bench) use iperf::*;
pub(crate) use lab::*;
pub(in crate::bench) use report::print_goals;
use report::*;
pub(crate) use traffic::*;

/// UDP payload of the pps test: 14 + 20 + 8 + 18 = 60-byte frames.
pub(in crate::bench) const PPS_PAYLOAD: usize = 18;
pub(in crate::bench) const FRAME_BYTES: usize = 14 + 20 + 8 + PPS_PAYLOAD;
/// Frames per `sendmmsg` / datagrams per `recvmmsg`.
const BATCH: usize = 256;
pub(in crate::bench) const PPS_PORT: u16 = 9000;
pub(in crate::bench) const PING_PORT: u16 = 9100;
const IPERF_PORT: u16 = 5301;
/// Addresses of the chains' endpoints (inside their own namespaces only).
pub(in crate::bench) const SRC_ADDR: Ipv4Addr = Ipv4Addr::new(10, 82, 1, 2);
pub(in crate::bench) const DST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 82, 2, 2);
/// The bare pair.
const BARE_A: &str = "nfbench-a";
const BARE_B: &str = "nfbench-b";
const BARE_SRC: Ipv4Addr = Ipv4Addr::new(10, 82, 3, 1);
const BARE_DST: Ipv4Addr = Ipv4Addr::new(10, 82, 3, 2);
const MODES: [&str; 3] = ["kernel", "tc", "xdp"];

/// Options of `cargo xtask bench chain`.
#[derive(Debug, Clone)]
pub struct Options {
    pub repetitions: usize,
    /// Seconds of each pps window (TCP runs as long; iperf3 UDP and latency about half).
    pub seconds: f64,
    /// Chain lengths.
    pub functions: Vec<usize>,
    /// Skip the iperf3 runs.
    pub no_iperf: bool,
}

/// One thing to measure: where the generator and the sink live, and how to reach the sink.
#[derive(Debug, Clone)]
pub(in crate::bench) struct Topology {
    /// "bare", "kernel-1", "tc-3"…
    pub(in crate::bench) name: String,
    pub(in crate::bench) mode: &'static str,
    pub(in crate::bench) functions: usize,
    pub(in crate::bench) chain: Option<String>,
    pub(in crate::bench) src_ns: String,
    pub(in crate::bench) dst_ns: String,
    pub(in crate::bench) src_if: String,
    pub(in crate::bench) src_addr: Ipv4Addr,
    pub(in crate::bench) dst_addr: Ipv4Addr,
    /// Source MAC (the generator's interface) and next-hop MAC (the sink's interface, or the
    /// first function's `nf-in`): the generator writes whole frames.
    pub(in crate::bench) src_mac: [u8; 6],
    pub(in crate::bench) next_mac: [u8; 6],
}

/// One figure: the median of the samples, its unit, and the samples.
#[derive(Debug, Clone, Serialize)]
pub(in crate::bench) struct Figure {
    pub(in crate::bench) median: f64,
    pub(in crate::bench) unit: &'static str,
    pub(in crate::bench) samples: Vec<f64>,
}

impl Figure {
    pub(in crate::bench) fn new(unit: &'static str, samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        Figure {
            median: median(&mut sorted),
            unit,
            samples: samples.to_vec(),
        }
    }
}

/// One topology's results.
#[derive(Debug, Clone, Serialize)]
struct Record {
    config: String,
    /// The netfn chain measured (none for the bare pair).
    chain: Option<String>,
    mode: &'static str,
    functions: usize,
    udp_pps: Figure,
    udp_pps_vs_bare: f64,
    udp_offered_pps: Figure,
    cpu_per_packet: Figure,
    iperf3_udp_pps: Option<Figure>,
    tcp_throughput: Option<Figure>,
    tcp_vs_bare: Option<f64>,
    latency_p50: Figure,
    latency_p99: Figure,
}

/// Samples of one topology, one entry per repetition.
#[derive(Debug, Default, Clone)]
struct Samples {
    pps: Vec<f64>,
    offered: Vec<f64>,
    cpu_ns: Vec<f64>,
    iperf_udp: Vec<f64>,
    tcp_gbit: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
}

#[derive(Serialize)]
struct Report<'a> {
    bench: &'static str,
    command: String,
    kernel: String,
    cpus: usize,
    frame_bytes: usize,
    repetitions: usize,
    seconds: f64,
    records: &'a [Record],
    goals: Vec<Goal>,
}

#[derive(Serialize)]
pub(in crate::bench) struct Goal {
    pub(in crate::bench) what: String,
    pub(in crate::bench) value: f64,
    pub(in crate::bench) unit: &'static str,
    pub(in crate::bench) target: String,
    pub(in crate::bench) met: bool,
}

pub fn run(options: &Options) -> Result<()> {
    require_root()?;
    if options.repetitions == 0 || options.seconds <= 0.0 {
        bail!("--repetitions and --seconds must be positive");
    }
    let have_iperf = !options.no_iperf && util::have("iperf3");
    if !options.no_iperf && !have_iperf {
        eprintln!("iperf3 not found (cargo xtask setup installs it): TCP and iperf3 UDP skipped");
    }
    let netfn = netfn_release()?;
    let started = Instant::now();
    let dir = util::workspace_root().join("target/bench/chains");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;

    let mut lab = Lab {
        netfn,
        chains: Vec::new(),
        bare: false,
    };
    let topologies = lab.build(&dir, &options.functions)?;
    println!(
        "set up {} topologies in {:.1} s; measuring {} repetition(s) of {:.1} s windows",
        topologies.len(),
        started.elapsed().as_secs_f64(),
        options.repetitions,
        options.seconds
    );
    for t in &topologies {
        warm_up(t).with_context(|| format!("{}: no traffic gets through", t.name))?;
    }

    let mut samples = vec![Samples::default(); topologies.len()];
    for rep in 0..options.repetitions {
        for k in 0..topologies.len() {
            let i = (k + rep) % topologies.len();
            let t = &topologies[i];
            let s = &mut samples[i];
            let pps =
                measure_pps(t, options.seconds).with_context(|| format!("{}: UDP pps", t.name))?;
            s.pps.push(pps.delivered);
            s.offered.push(pps.offered);
            s.cpu_ns.push(pps.cpu_ns_per_packet);
            let (p50, p99) = measure_latency(t, options.seconds / 2.0)
                .with_context(|| format!("{}: latency", t.name))?;
            s.p50_us.push(p50);
            s.p99_us.push(p99);
            if have_iperf {
                s.tcp_gbit.push(
                    iperf_tcp(t, options.seconds)
                        .with_context(|| format!("{}: iperf3 TCP", t.name))?,
                );
                s.iperf_udp.push(
                    iperf_udp(t, (options.seconds / 2.0).max(1.0))
                        .with_context(|| format!("{}: iperf3 UDP", t.name))?,
                );
            }
            eprintln!(
                "  rep {}/{} {:<9} {:>9.0} pps  p50 {:>6.1} us  p99 {:>6.1} us{}",
                rep + 1,
                options.repetitions,
                t.name,
                pps.delivered,
                p50,
                p99,
                s.tcp_gbit
                    .last()
                    .map(|g| format!("  tcp {g:.2} Gbit/s"))
                    .unwrap_or_default()
            );
        }
    }
    lab.teardown()?;

    let records = records(&topologies, &samples);
    print_table(&records);
    let goals = goals(&records);
    print_goals(&goals);
    let report = Report {
        bench: "chain",
        command: format!(
            "cargo xtask bench chain --repetitions {} --seconds {} --functions {}",
            options.repetitions,
            options.seconds,
            super::comma_list(&options.functions)
        ),
        kernel: super::kernel_release(),
        cpus: online_cpus(),
        frame_bytes: FRAME_BYTES,
        repetitions: options.repetitions,
        seconds: options.seconds,
        records: &records,
        goals,
    };
    let json = write_json("chain", &report)?;
    super::print_written(&json, chart(&records));
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the chain bench creates namespaces and loads eBPF: run it as root");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        Topology {
            name: "tc-1".into(),
            mode: "tc",
            functions: 1,
            chain: Some("bt1".into()),
            src_ns: "a".into(),
            dst_ns: "b".into(),
            src_if: "nf-out".into(),
            src_addr: SRC_ADDR,
            dst_addr: DST_ADDR,
            src_mac: [2, 0, 0, 0, 0, 1],
            next_mac: [2, 0, 0, 0, 0, 2],
        }
    }

    #[test]
    fn frames_are_60_bytes_with_a_valid_ip_checksum() {
        let f = udp_frame(&topo(), PPS_PORT);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &[2, 0, 0, 0, 0, 2]);
        let mut sum: u32 = f[14..34]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff, "header checksum must verify");
    }

    #[test]
    fn chain_files_name_the_mode_and_functions() {
        let f = chain_file("bt2", 2, "tc");
        assert!(f.contains("fastpath = \"tc\""));
        assert_eq!(f.matches("kind = \"forward\"").count(), 2);
    }

    #[test]
    fn chart_axes_round_up() {
        assert_eq!(nice_ceiling(0.87), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(42.0), 50.0);
    }
}
