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

/// UDP payload of the pps test: 14 + 20 + 8 + 18 = 60-byte frames.
const PPS_PAYLOAD: usize = 18;
const FRAME_BYTES: usize = 14 + 20 + 8 + PPS_PAYLOAD;
/// Frames per `sendmmsg` / datagrams per `recvmmsg`.
const BATCH: usize = 256;
const PPS_PORT: u16 = 9000;
const PING_PORT: u16 = 9100;
const IPERF_PORT: u16 = 5301;
/// Addresses of the chains' endpoints (inside their own namespaces only).
const SRC_ADDR: Ipv4Addr = Ipv4Addr::new(10, 82, 1, 2);
const DST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 82, 2, 2);
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
struct Topology {
    /// "bare", "kernel-1", "tc-3"…
    name: String,
    mode: &'static str,
    functions: usize,
    chain: Option<String>,
    src_ns: String,
    dst_ns: String,
    src_if: String,
    src_addr: Ipv4Addr,
    dst_addr: Ipv4Addr,
    /// Source MAC (the generator's interface) and next-hop MAC (the sink's interface, or the
    /// first function's `nf-in`): the generator writes whole frames.
    src_mac: [u8; 6],
    next_mac: [u8; 6],
}

/// One figure: the median of the samples, its unit, and the samples.
#[derive(Debug, Clone, Serialize)]
struct Figure {
    median: f64,
    unit: &'static str,
    samples: Vec<f64>,
}

impl Figure {
    fn new(unit: &'static str, samples: &[f64]) -> Self {
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
struct Goal {
    what: String,
    value: f64,
    unit: &'static str,
    target: String,
    met: bool,
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
    println!();
    for g in &goals {
        println!(
            "goal: {:<52} {:>8.2} {:<10} target {:<10} {}",
            g.what,
            g.value,
            g.unit,
            g.target,
            if g.met { "met" } else { "NOT met" }
        );
    }
    let report = Report {
        bench: "chain",
        command: format!(
            "cargo xtask bench chain --repetitions {} --seconds {} --functions {}",
            options.repetitions,
            options.seconds,
            options
                .functions
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpus: online_cpus(),
        frame_bytes: FRAME_BYTES,
        repetitions: options.repetitions,
        seconds: options.seconds,
        records: &records,
        goals,
    };
    let json = write_json("chain", &report)?;
    println!("\nwrote {}", json.display());
    match chart(&records) {
        Ok(paths) => {
            for p in paths {
                println!("wrote {}", p.display());
            }
        }
        Err(e) => eprintln!("chart: {e:#}"),
    }
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

// ---------------------------------------------------------------------------------------------
// Setup and teardown
// ---------------------------------------------------------------------------------------------

/// What the bench created, removed by `teardown` (or on drop, if the bench fails).
struct Lab {
    netfn: PathBuf,
    chains: Vec<String>,
    bare: bool,
}

impl Lab {
    fn build(&mut self, dir: &Path, lengths: &[usize]) -> Result<Vec<Topology>> {
        let mut topologies = vec![self.bare_pair()?];
        for mode in MODES {
            for &n in lengths {
                let chain = format!("b{}{n}", &mode[..1]);
                let file = dir.join(format!("{chain}.toml"));
                std::fs::write(&file, chain_file(&chain, n, mode))?;
                // A bench that died earlier may have left it.
                let _ = netfn_command(&self.netfn).args(["down", &chain]).output();
                let out = netfn_command(&self.netfn)
                    .arg("up")
                    .arg(&file)
                    .output()
                    .context("run netfn up")?;
                if !out.status.success() {
                    bail!(
                        "netfn up {} failed: {}",
                        file.display(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                self.chains.push(chain.clone());
                let src_ns = format!("nf-{chain}-ingress");
                topologies.push(Topology {
                    name: format!("{mode}-{n}"),
                    mode,
                    functions: n,
                    src_mac: link_mac(&src_ns, "nf-out")?,
                    next_mac: link_mac(&format!("nf-{chain}-f1"), "nf-in")?,
                    chain: Some(chain.clone()),
                    src_ns,
                    dst_ns: format!("nf-{chain}-egress"),
                    src_if: "nf-out".into(),
                    src_addr: SRC_ADDR,
                    dst_addr: DST_ADDR,
                });
            }
        }
        Ok(topologies)
    }

    /// Two namespaces joined by one veth pair: the limit every chain is compared with.
    fn bare_pair(&mut self) -> Result<Topology> {
        for ns in [BARE_A, BARE_B] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        self.bare = true;
        for ns in [BARE_A, BARE_B] {
            ip(&["netns", "add", ns])?;
            in_netns(ns, || {
                for conf in ["all", "default"] {
                    std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")?;
                }
                Ok(())
            })?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link", "add", "nfb0", "netns", BARE_A, "type", "veth", "peer", "name", "nfb1",
            "netns", BARE_B,
        ])?;
        for (ns, dev, addr) in [(BARE_A, "nfb0", BARE_SRC), (BARE_B, "nfb1", BARE_DST)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(Topology {
            name: "bare".into(),
            mode: "bare",
            functions: 0,
            chain: None,
            src_ns: BARE_A.into(),
            dst_ns: BARE_B.into(),
            src_if: "nfb0".into(),
            src_addr: BARE_SRC,
            dst_addr: BARE_DST,
            src_mac: link_mac(BARE_A, "nfb0")?,
            next_mac: link_mac(BARE_B, "nfb1")?,
        })
    }

    fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        for chain in std::mem::take(&mut self.chains) {
            match netfn_command(&self.netfn).args(["down", &chain]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => errors.push(format!(
                    "netfn down {chain}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )),
                Err(e) => errors.push(format!("netfn down {chain}: {e}")),
            }
        }
        if std::mem::take(&mut self.bare) {
            for ns in [BARE_A, BARE_B] {
                if let Err(e) = ip(&["netns", "del", ns]) {
                    errors.push(format!("{e:#}"));
                }
            }
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

/// `netfn` without starting the host agent (the bench measures the data path alone).
fn netfn_command(netfn: &Path) -> Command {
    let mut c = Command::new(netfn);
    c.env("NETFN_AGENT_AUTOSTART", "0");
    c
}

fn chain_file(name: &str, n: usize, mode: &str) -> String {
    let mut s = format!(
        "[[chain]]\nname = \"{name}\"\nfastpath = \"{mode}\"\n\n\
         [chain.ingress]\naddress = \"{SRC_ADDR}/24\"\n\n\
         [chain.egress]\naddress = \"{DST_ADDR}/24\"\n"
    );
    for i in 1..=n {
        s.push_str(&format!(
            "\n[[chain.function]]\nname = \"f{i}\"\nkind = \"forward\"\n"
        ));
    }
    s
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The MAC address of `dev` in namespace `ns`.
fn link_mac(ns: &str, dev: &str) -> Result<[u8; 6]> {
    let json: serde_json::Value =
        serde_json::from_str(&ip(&["-n", ns, "-j", "link", "show", "dev", dev])?)?;
    let text = json[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC for {dev} in {ns}"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {text}");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)?;
    }
    Ok(mac)
}

// ---------------------------------------------------------------------------------------------
// Namespaces and CPUs
// ---------------------------------------------------------------------------------------------

/// Enters namespace `ns` on the calling thread (only call on threads made for it).
fn enter(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns with a valid namespace fd.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    Ok(())
}

/// Runs `f` on a new thread inside `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in {ns} panicked"))?
    })
}

/// CPUs online (not the calling thread's affinity, which pinning changes).
fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Pins the calling thread to `cpu` (if the machine has it).
fn pin_to(cpu: usize) {
    let cpus = online_cpus();
    if cpu >= cpus {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET on an index below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Busy and total jiffies of all CPUs (/proc/stat).
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy, busy + get(3) + get(4))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

// ---------------------------------------------------------------------------------------------
// Our own traffic: warm-up, UDP pps, ping-pong latency
// ---------------------------------------------------------------------------------------------

fn udp_in(ns: &str, addr: SocketAddrV4) -> Result<UdpSocket> {
    in_netns(ns, || {
        UdpSocket::bind(addr).with_context(|| format!("bind {addr} in {ns}"))
    })
}

/// A few echoes both ways, so every neighbour is resolved before anything is measured.
fn warm_up(t: &Topology) -> Result<()> {
    let (p50, _) = ping_pong(t, 50, Duration::from_secs(5))?;
    if p50.is_nan() {
        bail!("no echo came back");
    }
    Ok(())
}

struct Pps {
    delivered: f64,
    offered: f64,
    cpu_ns_per_packet: f64,
}

fn measure_pps(t: &Topology, seconds: f64) -> Result<Pps> {
    let sink = udp_in(&t.dst_ns, SocketAddrV4::new(t.dst_addr, PPS_PORT))?;
    set_rcvbuf(&sink, 64 << 20);
    sink.set_read_timeout(Some(Duration::from_millis(50)))?;
    let frame = udp_frame(t, PPS_PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));

    let sink_thread = {
        let (stop, received) = (stop.clone(), received.clone());
        thread::spawn(move || {
            pin_to(1);
            recv_loop(&sink, &stop, &received);
        })
    };
    let gen_thread = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let (ns, dev) = (t.src_ns.clone(), t.src_if.clone());
        thread::spawn(move || -> Result<()> {
            enter(&ns)?;
            pin_to(0);
            send_loop(&dev, &frame, &stop, &sent)
        })
    };

    // Let queues fill and the CPUs settle, then measure a window.
    thread::sleep(Duration::from_millis(300));
    let (r0, s0, (b0, _), t0) = (
        received.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        cpu_jiffies(),
        Instant::now(),
    );
    thread::sleep(Duration::from_secs_f64(seconds));
    let (r1, s1, (b1, _), t1) = (
        received.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        cpu_jiffies(),
        Instant::now(),
    );
    stop.store(true, Ordering::Relaxed);
    let gen_result = gen_thread
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))?;
    sink_thread
        .join()
        .map_err(|_| anyhow::anyhow!("sink panicked"))?;
    gen_result?;
    let secs = (t1 - t0).as_secs_f64();
    let delivered = (r1 - r0) as f64;
    let busy_secs = (b1.saturating_sub(b0)) as f64 / clock_ticks();
    Ok(Pps {
        delivered: delivered / secs,
        offered: (s1 - s0) as f64 / secs,
        cpu_ns_per_packet: if delivered > 0.0 {
            busy_secs * 1e9 / delivered
        } else {
            f64::NAN
        },
    })
}

fn set_rcvbuf(sock: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: valid fd and option value. SO_RCVBUFFORCE (root) ignores rmem_max.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Counts datagrams at the UDP socket until `stop`.
fn recv_loop(sock: &UdpSocket, stop: &AtomicBool, received: &AtomicU64) {
    let mut bufs = vec![[0u8; 64]; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: zeroed mmsghdr is valid; each points at its own iovec, alive for the loop.
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `msgs` holds BATCH valid headers; blocking with the socket's read timeout.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            received.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Sends `frame` out of `dev` (calling thread's namespace) as fast as it can, until `stop`.
fn send_loop(dev: &str, frame: &[u8], stop: &AtomicBool, sent: &AtomicU64) -> Result<()> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: plain syscalls on a socket this function owns; every pointer handed to the
    // kernel points at live locals.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            bail!("no interface {dev}");
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // Protocol 0: this socket sends only, it receives nothing.
        if libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error()).context("bind AF_PACKET");
        }
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        };
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
            .map(|_| {
                let mut m: libc::mmsghdr = std::mem::zeroed();
                m.msg_hdr.msg_iov = &mut iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        while !stop.load(Ordering::Relaxed) {
            let n = libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as libc::c_uint, 0);
            if n > 0 {
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// An Ethernet + IPv4 + UDP frame from the topology's source to its sink (UDP checksum 0).
fn udp_frame(t: &Topology, port: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_BYTES);
    f.extend_from_slice(&t.next_mac);
    f.extend_from_slice(&t.src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 8 + PPS_PAYLOAD) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&t.src_addr.octets());
    ip[16..20].copy_from_slice(&t.dst_addr.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + PPS_PAYLOAD) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0x5a; PPS_PAYLOAD]);
    f
}

fn measure_latency(t: &Topology, seconds: f64) -> Result<(f64, f64)> {
    ping_pong(t, usize::MAX, Duration::from_secs_f64(seconds))
}

/// Round trips of a 16-byte datagram, until `count` or `duration`; (p50, p99) in µs.
///
/// Both sides busy-poll non-blocking sockets on their own CPU (client CPU 0, echo CPU 1): no
/// sleeping, so the figure is the path itself, not how fast an idle virtual CPU wakes up (which
/// dominates blocking ping-pong between CPUs of a VM: tens of µs).
fn ping_pong(t: &Topology, count: usize, duration: Duration) -> Result<(f64, f64)> {
    let server = udp_in(&t.dst_ns, SocketAddrV4::new(t.dst_addr, PING_PORT))?;
    server.set_nonblocking(true)?;
    let client = udp_in(&t.src_ns, SocketAddrV4::new(t.src_addr, PING_PORT + 1))?;
    client.connect(SocketAddrV4::new(t.dst_addr, PING_PORT))?;
    client.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        thread::spawn(move || {
            pin_to(1);
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..n], from);
                } else {
                    std::hint::spin_loop();
                }
            }
        })
    };
    pin_to(0);
    let mut rtts = Vec::new();
    let payload = [0x42u8; 16];
    let mut buf = [0u8; 64];
    let start = Instant::now();
    let mut lost = 0usize;
    'rounds: while rtts.len() < count && start.elapsed() < duration && lost <= 3 {
        let t0 = Instant::now();
        client.send(&payload)?;
        loop {
            match client.recv(&mut buf) {
                Ok(16) => {
                    rtts.push(t0.elapsed().as_secs_f64() * 1e6);
                    continue 'rounds;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if t0.elapsed() > Duration::from_secs(1) {
                        lost += 1;
                        continue 'rounds;
                    }
                    std::hint::spin_loop();
                }
                Err(e) => return Err(e).context("ping-pong recv"),
            }
        }
    }
    unpin();
    stop.store(true, Ordering::Relaxed);
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))?;
    if rtts.is_empty() {
        bail!("no round trip completed ({lost} lost)");
    }
    rtts.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
    Ok((pct(0.50), pct(0.99)))
}

/// Lets the calling (main) thread run anywhere again.
fn unpin() {
    let cpus = online_cpus();
    // SAFETY: as in `pin_to`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cpus.min(libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

// ---------------------------------------------------------------------------------------------
// iperf3
// ---------------------------------------------------------------------------------------------

/// An iperf3 server in the sink's namespace for one test (`-1`); killed on drop if still there.
struct IperfServer(Child);

impl IperfServer {
    fn start(t: &Topology) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", &t.dst_ns, "iperf3", "-s", "-1", "-p"])
            .arg(IPERF_PORT.to_string())
            .arg("-B")
            .arg(t.dst_addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 -s")?;
        let server = IperfServer(child);
        // Wait until it listens.
        let start = Instant::now();
        loop {
            let ss = ip(&["netns", "exec", &t.dst_ns, "ss", "-Hltn"])?;
            if ss.contains(&format!(":{IPERF_PORT}")) {
                return Ok(server);
            }
            if start.elapsed() > Duration::from_secs(5) {
                bail!("iperf3 server did not start");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn iperf_client(t: &Topology, extra: &[&str], seconds: f64) -> Result<serde_json::Value> {
    let _server = IperfServer::start(t)?;
    let out = Command::new("ip")
        .args(["netns", "exec", &t.src_ns, "iperf3", "-J", "-c"])
        .arg(t.dst_addr.to_string())
        .arg("-p")
        .arg(IPERF_PORT.to_string())
        .arg("-B")
        .arg(t.src_addr.to_string())
        .arg("-t")
        .arg(format!("{seconds}"))
        .args(extra)
        .output()
        .context("run iperf3 -c")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = json["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(json)
}

/// TCP throughput at the receiver, Gbit/s.
fn iperf_tcp(t: &Topology, seconds: f64) -> Result<f64> {
    let json = iperf_client(t, &[], seconds)?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3 reported no received throughput")
}

/// Received UDP datagrams per second of `iperf3 -u -b 0 -l 18`.
fn iperf_udp(t: &Topology, seconds: f64) -> Result<f64> {
    let json = iperf_client(
        t,
        &["-u", "-b", "0", "-l", &PPS_PAYLOAD.to_string()],
        seconds,
    )?;
    let sum = &json["end"]["sum"];
    let packets = sum["packets"].as_f64().context("iperf3: no packets")?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64().unwrap_or(seconds);
    Ok((packets - lost) / secs)
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

fn records(topologies: &[Topology], samples: &[Samples]) -> Vec<Record> {
    let bare = topologies
        .iter()
        .zip(samples)
        .find(|(t, _)| t.mode == "bare")
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    let bare_pps = median(&mut bare.pps.clone());
    let bare_tcp = median(&mut bare.tcp_gbit.clone());
    topologies
        .iter()
        .zip(samples)
        .map(|(t, s)| {
            let pps = Figure::new("packets/s", &s.pps);
            let tcp = (!s.tcp_gbit.is_empty()).then(|| Figure::new("Gbit/s", &s.tcp_gbit));
            Record {
                config: t.name.clone(),
                chain: t.chain.clone(),
                mode: t.mode,
                functions: t.functions,
                udp_pps_vs_bare: pps.median / bare_pps,
                udp_pps: pps,
                udp_offered_pps: Figure::new("packets/s", &s.offered),
                cpu_per_packet: Figure::new("ns/packet", &s.cpu_ns),
                iperf3_udp_pps: (!s.iperf_udp.is_empty())
                    .then(|| Figure::new("packets/s", &s.iperf_udp)),
                tcp_vs_bare: tcp.as_ref().map(|f| f.median / bare_tcp),
                tcp_throughput: tcp,
                latency_p50: Figure::new("us", &s.p50_us),
                latency_p99: Figure::new("us", &s.p99_us),
            }
        })
        .collect()
}

fn print_table(records: &[Record]) {
    println!(
        "\n{:<9} {:>10} {:>6} {:>10} {:>9} {:>10} {:>8} {:>8} {:>8}",
        "config",
        "UDP pps",
        "×bare",
        "CPU ns/pk",
        "iperf3 pps",
        "TCP Gb/s",
        "×bare",
        "p50 us",
        "p99 us"
    );
    for r in records {
        println!(
            "{:<9} {:>10.0} {:>6.2} {:>10.0} {:>9} {:>10} {:>8} {:>8.1} {:>8.1}",
            r.config,
            r.udp_pps.median,
            r.udp_pps_vs_bare,
            r.cpu_per_packet.median,
            r.iperf3_udp_pps
                .as_ref()
                .map_or("-".into(), |f| format!("{:.0}", f.median)),
            r.tcp_throughput
                .as_ref()
                .map_or("-".into(), |f| format!("{:.2}", f.median)),
            r.tcp_vs_bare.map_or("-".into(), |x| format!("{x:.2}")),
            r.latency_p50.median,
            r.latency_p99.median,
        );
    }
    println!(
        "(medians of {} repetitions; UDP: {FRAME_BYTES}-byte frames from an AF_PACKET generator, \
         counted at the sink's UDP socket; latency: UDP round trip)",
        records.first().map_or(0, |r| r.udp_pps.samples.len())
    );
}

/// The issue's goals: a 3-function tc/xdp chain at >= 0.85x the bare pair's pps; each added hop
/// at most +1 µs p50 and +5 µs p99 (round trip, per added function, from 1 to 3 functions); and
/// DESIGN.md's: xdp never slower than kernel mode.
fn goals(records: &[Record]) -> Vec<Goal> {
    let find = |mode: &str, n: usize| records.iter().find(|r| r.mode == mode && r.functions == n);
    let mut goals = Vec::new();
    for mode in ["tc", "xdp"] {
        if let Some(r) = find(mode, 3) {
            goals.push(Goal {
                what: format!("{mode}-3 UDP pps vs bare veth"),
                value: r.udp_pps_vs_bare,
                unit: "x",
                target: ">= 0.85".into(),
                met: r.udp_pps_vs_bare >= 0.85,
            });
        }
    }
    // DESIGN.md: XDP must at least never be slower than kernel forwarding.
    for n in 1..=3 {
        if let (Some(xdp), Some(kernel)) = (find("xdp", n), find("kernel", n)) {
            let ratio = xdp.udp_pps.median / kernel.udp_pps.median;
            goals.push(Goal {
                what: format!("xdp-{n} UDP pps vs kernel-{n}"),
                value: ratio,
                unit: "x",
                target: ">= 1.00".into(),
                met: ratio >= 1.0,
            });
        }
    }
    for mode in MODES {
        let (Some(one), Some(three)) = (find(mode, 1), find(mode, 3)) else {
            continue;
        };
        for (what, a, b, limit) in [
            ("p50", one.latency_p50.median, three.latency_p50.median, 1.0),
            ("p99", one.latency_p99.median, three.latency_p99.median, 5.0),
        ] {
            let per_hop = (b - a) / 2.0;
            goals.push(Goal {
                what: format!("{mode}: {what} RTT per added function (1 -> 3)"),
                value: per_hop,
                unit: "us",
                target: format!("<= {limit}"),
                met: per_hop <= limit,
            });
        }
    }
    goals
}

/// An SVG with two panels (UDP pps and latency against chain length, one line per mode, the bare
/// pair as a dashed reference), converted to PNG with rsvg-convert when it is installed.
fn chart(records: &[Record]) -> Result<Vec<PathBuf>> {
    let dir = util::workspace_root().join("target/bench");
    let svg_path = dir.join("chain.svg");
    let svg = svg_chart(records);
    std::fs::write(&svg_path, svg).with_context(|| format!("write {}", svg_path.display()))?;
    let mut written = vec![svg_path.clone()];
    if util::have("rsvg-convert") {
        let png = dir.join("chain.png");
        util::run(
            Command::new("rsvg-convert")
                .args(["-b", "white", "-o"])
                .arg(&png)
                .arg(&svg_path),
        )?;
        written.push(png);
    } else {
        eprintln!(
            "rsvg-convert not found (Debian: apt-get install librsvg2-bin): chart left as SVG"
        );
    }
    Ok(written)
}

fn svg_chart(records: &[Record]) -> String {
    const W: f64 = 1000.0;
    const H: f64 = 420.0;
    let colors = [("kernel", "#888888"), ("tc", "#1f77b4"), ("xdp", "#d62728")];
    let max_n = records
        .iter()
        .map(|r| r.functions)
        .max()
        .unwrap_or(3)
        .max(1) as f64;
    let bare = records.iter().find(|r| r.mode == "bare");
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">netfn chain bench: bare veth pair vs chains of forward functions</text>"#,
        W / 2.0
    );
    // (title, unit, value of a record, one line per figure: (selector, dashed))
    type Getter = fn(&Record) -> f64;
    type Panel = (&'static str, &'static str, Vec<(Getter, bool)>);
    let panels: [Panel; 2] = [
        (
            "UDP packets/s delivered (60-byte frames)",
            "Mpps",
            vec![(|r: &Record| r.udp_pps.median / 1e6, false)],
        ),
        (
            "UDP round trip: p50 (solid), p99 (dashed)",
            "us",
            vec![
                (|r: &Record| r.latency_p50.median, false),
                (|r: &Record| r.latency_p99.median, true),
            ],
        ),
    ];
    for (p, (title, unit, lines)) in panels.iter().enumerate() {
        let x0 = 70.0 + p as f64 * (W / 2.0);
        let (pw, ph, y0) = (W / 2.0 - 110.0, H - 120.0, 50.0);
        let mut vmax: f64 = 0.0;
        for r in records {
            for (get, _) in lines {
                vmax = vmax.max(get(r));
            }
        }
        let vmax = if vmax > 0.0 { nice_ceiling(vmax) } else { 1.0 };
        let xpos = |n: f64| x0 + n / max_n * pw;
        let ypos = |v: f64| y0 + ph - (v / vmax) * ph;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{title}</text>"#,
            x0 + pw / 2.0,
            y0 - 8.0
        );
        let _ = write!(
            s,
            r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
        );
        for i in 0..=5 {
            let v = vmax * i as f64 / 5.0;
            let y = ypos(v);
            let _ = write!(
                s,
                r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                x0 + pw,
                x0 - 6.0,
                y + 4.0,
                trim_number(v)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{unit}</text>"#,
            x0 - 48.0,
            y0 + ph / 2.0,
            x0 - 48.0,
            y0 + ph / 2.0
        );
        for n in 0..=(max_n as usize) {
            let x = xpos(n as f64);
            let label = if n == 0 {
                "bare".to_string()
            } else {
                n.to_string()
            };
            let _ = write!(
                s,
                r#"<text x="{x}" y="{}" text-anchor="middle">{label}</text>"#,
                y0 + ph + 16.0
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">functions in the chain</text>"#,
            x0 + pw / 2.0,
            y0 + ph + 34.0
        );
        for (get, dashed) in lines {
            if let Some(b) = bare {
                let y = ypos(get(b));
                let _ = write!(
                    s,
                    r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#2ca02c" stroke-dasharray="2,3"/>"##,
                    x0 + pw
                );
            }
            for (mode, color) in colors {
                let mut pts: Vec<(f64, f64)> = records
                    .iter()
                    .filter(|r| r.mode == mode)
                    .map(|r| (xpos(r.functions as f64), ypos(get(r))))
                    .collect();
                if let Some(b) = bare {
                    pts.insert(0, (xpos(0.0), ypos(get(b))));
                }
                let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let dash = if *dashed {
                    r#" stroke-dasharray="6,4""#
                } else {
                    ""
                };
                let _ = write!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                    path.join(" ")
                );
                for (x, y) in pts {
                    let _ = write!(
                        s,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"#
                    );
                }
            }
        }
    }
    // Legend.
    let mut lx = 70.0;
    for (mode, color) in colors.iter().chain([("bare veth", "#2ca02c")].iter()) {
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{}">{mode}</text>"#,
            H - 22.0,
            lx + 20.0,
            H - 17.0
        );
        lx += 110.0;
    }
    s.push_str("</svg>\n");
    s
}

fn nice_ceiling(v: f64) -> f64 {
    let exp = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * exp >= v {
            return m * exp;
        }
    }
    10.0 * exp
}

fn trim_number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
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
