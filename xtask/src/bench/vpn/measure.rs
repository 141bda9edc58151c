//! One run through a tunnel (iperf3's, or the bench's own UDP flood or round trips), with the
//! CPU time it cost.

use anyhow::{Context, Result};
use serde::Serialize;

use super::Tunnel;
use super::latency::RoundTrips;
use crate::bench::chain::{
    IPERF_UDP_ARGS, IperfPath, clock_ticks, cpu_jiffies, cpu_stat_fields, iperf_on, tcp_gbit_per_s,
    udp_received_pps,
};

const IPERF_PORT: u16 = 5311;
/// /proc/stat's softirq column.
const SOFTIRQ: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// TCP, one stream, client to server.
    Tcp1,
    /// One stream from the server to the client (`-R`): the other direction through the tunnel.
    Tcp1Reverse,
    /// TCP, four streams.
    Tcp4,
    /// Our own generator's 60-byte UDP, client to server.
    Udp,
    /// The same from the server to the client: the other direction through the tunnel (for
    /// netfn-wggo, netfn encrypts and wireguard-go decrypts).
    UdpReverse,
    /// iperf3's UDP, a cross-check.
    IperfUdp,
    /// Round trips of a small UDP datagram, one a millisecond, nothing else in the tunnel.
    Latency,
    /// The same beside a steady 60-byte UDP load, client to server (20,000 datagrams a second
    /// unless `--latency-load-pps` says).
    LatencyLoaded,
}

impl Test {
    pub const ALL: [Test; 8] = [
        Test::Tcp1,
        Test::Tcp1Reverse,
        Test::Tcp4,
        Test::Udp,
        Test::UdpReverse,
        Test::IperfUdp,
        Test::Latency,
        Test::LatencyLoaded,
    ];
    /// The tests with a goal and a panel in the chart.
    pub(super) const MAIN: [Test; 5] = [
        Test::Tcp1,
        Test::Tcp1Reverse,
        Test::Tcp4,
        Test::Udp,
        Test::UdpReverse,
    ];

    /// A rate in datagrams a second (and CPU per datagram).
    pub(super) fn is_udp(self) -> bool {
        matches!(self, Test::Udp | Test::UdpReverse | Test::IperfUdp)
    }

    /// Round trips in µs (and CPU per datagram): lower is better.
    pub(super) fn is_latency(self) -> bool {
        matches!(self, Test::Latency | Test::LatencyLoaded)
    }

    /// A table column's name.
    pub(super) fn short(self) -> &'static str {
        match self {
            Test::Tcp1 => "TCP1",
            Test::Tcp1Reverse => "TCP1 -R",
            Test::Tcp4 => "TCP4",
            Test::Udp => "UDP",
            Test::UdpReverse => "UDP -R",
            Test::IperfUdp => "iperf UDP",
            Test::Latency => "RTT",
            Test::LatencyLoaded => "RTT loaded",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Test::Tcp1 => "TCP 1 stream",
            Test::Tcp1Reverse => "TCP 1 stream -R",
            Test::Tcp4 => "TCP 4 streams",
            Test::Udp => "UDP 60 B pps",
            Test::UdpReverse => "UDP 60 B pps -R",
            Test::IperfUdp => "iperf3 UDP pps",
            Test::Latency => "UDP round trip",
            Test::LatencyLoaded => "UDP round trip loaded",
        }
    }

    /// iperf3's arguments besides `-J -c DST -p PORT -B SRC -t SECONDS` (none for the tests
    /// of our own generator and round trips).
    pub(super) fn iperf_args(self) -> &'static [&'static str] {
        match self {
            Test::Tcp1 | Test::Udp | Test::UdpReverse | Test::Latency | Test::LatencyLoaded => &[],
            Test::Tcp1Reverse => &["-R"],
            Test::Tcp4 => &["-P", "4"],
            Test::IperfUdp => &IPERF_UDP_ARGS,
        }
    }
}

/// What one run carried and cost.
#[derive(Debug, Clone, Default)]
pub(super) struct Run {
    /// TCP: Gbit/s at the receiver; UDP: datagrams received per second; round trips: the
    /// median in µs.
    pub(super) rate: f64,
    /// TCP: Gbit received; UDP and round trips: datagrams received (for round trips both ways,
    /// and the load's).
    pub(super) carried: f64,
    /// CPU seconds of the tunnel's processes (utime + stime) over the run.
    pub(super) process_cpu_s: f64,
    /// The same per process, in the order of the tunnel's `endpoints`.
    pub(super) each_process_cpu_s: Vec<f64>,
    /// Datagrams each endpoint's UDP socket dropped over the run, its receive buffer full (in
    /// the order of the tunnel's `endpoints`).
    pub(super) each_socket_drops: Vec<u64>,
    /// CPU seconds of our UDP generator's and sink's threads (UDP floods only).
    pub(super) generator_cpu_s: Option<f64>,
    /// TCP segments the sender retransmitted (iperf3's `end.sum_sent.retransmits`): loss in
    /// the tunnel, which a TCP rate depends on as much as on CPU.
    pub(super) retransmits: Option<u64>,
    /// Round trips only: their percentiles and losses, and the load's rate.
    pub(super) round_trips: Option<RoundTrips>,
    /// Softirq CPU seconds of all CPUs over the run.
    pub(super) softirq_cpu_s: f64,
    /// Busy CPU seconds of the whole machine over the run.
    pub(super) machine_cpu_s: f64,
}

impl Run {
    /// Tunnel processes + softirq per Gbit (TCP) or per datagram, in µs (UDP, round trips).
    pub(super) fn cpu_per_unit(&self, test: Test) -> f64 {
        per_unit(self.process_cpu_s + self.softirq_cpu_s, self.carried, test)
    }

    /// Process `i`'s CPU time alone per Gbit (TCP) or per datagram, in µs (UDP, round trips).
    pub(super) fn process_per_unit(&self, i: usize, test: Test) -> f64 {
        let cpu = self.each_process_cpu_s.get(i).copied().unwrap_or(f64::NAN);
        per_unit(cpu, self.carried, test)
    }

    /// The generator's and sink's CPU time per packet, in µs (UDP floods).
    pub(super) fn generator_per_unit(&self, test: Test) -> Option<f64> {
        self.generator_cpu_s
            .map(|cpu| per_unit(cpu, self.carried, test))
    }

    /// The whole machine's busy time per Gbit (TCP) or per datagram, in µs (UDP, round trips).
    pub(super) fn machine_per_unit(&self, test: Test) -> f64 {
        per_unit(self.machine_cpu_s, self.carried, test)
    }

    pub(super) fn summary(&self, test: Test) -> String {
        if let Some(trips) = &self.round_trips {
            return format!(
                "p50 {:>6.0} us  p99 {:>6.0} us  lost {}{}",
                trips.p50_us,
                trips.p99_us,
                trips.lost,
                trips
                    .load_pps
                    .map(|pps| format!("  load {:.1} kpps", pps / 1e3))
                    .unwrap_or_default()
            );
        }
        let mut line = match test {
            Test::Udp | Test::UdpReverse | Test::IperfUdp => format!(
                "{:>9.0} pps  cpu {:>5.2} us/pkt",
                self.rate,
                self.cpu_per_unit(test)
            ),
            _ => format!(
                "{:>9.3} Gbit/s  cpu {:>5.2} s/Gbit  retransmits {}",
                self.rate,
                self.cpu_per_unit(test),
                self.retransmits
                    .map_or_else(|| "?".to_string(), |n| n.to_string())
            ),
        };
        if !self.each_socket_drops.is_empty() {
            let drops: Vec<String> = self.each_socket_drops.iter().map(u64::to_string).collect();
            line.push_str(&format!("  socket drops {}", drops.join(" / ")));
        }
        line
    }
}

fn per_unit(cpu_s: f64, carried: f64, test: Test) -> f64 {
    if carried <= 0.0 {
        return f64::NAN;
    }
    if test.is_udp() || test.is_latency() {
        cpu_s * 1e6 / carried
    } else {
        cpu_s / carried
    }
}

fn path(t: &Tunnel) -> IperfPath<'_> {
    IperfPath {
        src_ns: &t.client_ns,
        src_addr: t.client_addr,
        dst_ns: &t.server_ns,
        dst_addr: t.server_addr,
        port: IPERF_PORT,
    }
}

/// A short TCP run: handshakes done and path MTU learned before anything is measured.
pub(super) fn warm_up(t: &Tunnel) -> Result<()> {
    let json = iperf_on(&path(t), &[], 1.0)?;
    let gbit = tcp_gbit_per_s(&json)?;
    if gbit <= 0.0 {
        anyhow::bail!("nothing arrived");
    }
    Ok(())
}

/// CPU jiffies and socket drops at one moment.
#[derive(Debug, Clone)]
pub(super) struct Counters {
    /// utime + stime of each of the tunnel's processes.
    processes: Vec<u64>,
    /// Drops of each of the tunnel's endpoints' UDP sockets.
    socket_drops: Vec<u64>,
    /// softirq of all CPUs.
    softirq: u64,
    /// busy time of all CPUs.
    machine: u64,
}

pub(super) fn counters_now(t: &Tunnel) -> Result<Counters> {
    let mut processes = Vec::with_capacity(t.endpoints.len());
    let mut socket_drops = Vec::with_capacity(t.endpoints.len());
    for e in &t.endpoints {
        let (what, pid) = (&e.what, e.pid);
        let stat = format!("/proc/{pid}/stat");
        processes.push(task_jiffies(&stat).with_context(|| format!("{what} (pid {pid})"))?);
        socket_drops.push(super::drops::now(&e.netns, super::lab::PORT)?);
    }
    Ok(Counters {
        processes,
        socket_drops,
        softirq: cpu_stat_fields().get(SOFTIRQ).copied().unwrap_or(0),
        machine: cpu_jiffies().0,
    })
}

impl Run {
    /// A run that carried `carried` at `rate`, with the CPU spent and the datagrams the
    /// tunnel's sockets dropped between two moments.
    pub(super) fn between(rate: f64, carried: f64, before: &Counters, after: &Counters) -> Run {
        let each_process_cpu_s: Vec<f64> = before
            .processes
            .iter()
            .zip(&after.processes)
            .map(|(&a, &b)| jiffies_to_s(a, b))
            .collect();
        Run {
            rate,
            carried,
            process_cpu_s: each_process_cpu_s.iter().sum(),
            each_process_cpu_s,
            each_socket_drops: before
                .socket_drops
                .iter()
                .zip(&after.socket_drops)
                .map(|(&a, &b)| b.saturating_sub(a))
                .collect(),
            generator_cpu_s: None,
            retransmits: None,
            round_trips: None,
            softirq_cpu_s: jiffies_to_s(before.softirq, after.softirq),
            machine_cpu_s: jiffies_to_s(before.machine, after.machine),
        }
    }
}

/// Seconds between two jiffy counts.
pub(super) fn jiffies_to_s(before: u64, after: u64) -> f64 {
    after.saturating_sub(before) as f64 / clock_ticks()
}

/// The calling thread's stat file, for [`task_jiffies`].
pub(super) fn own_thread_stat() -> String {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    format!("/proc/self/task/{tid}/stat")
}

/// utime + stime in jiffies from a stat file of proc(5): `/proc/PID/stat` (a process, all its
/// threads) or `/proc/self/task/TID/stat` (one thread).
pub(super) fn task_jiffies(stat: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(stat).context("read its /proc stat: did it die?")?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .context("short /proc stat")?
            .parse()
            .context("bad /proc stat")
    };
    Ok(field(14)? + field(15)?)
}

/// One run of `test` for `seconds` (the loaded round trips beside `load_pps` datagrams a
/// second), with the CPU it cost.
pub(super) fn run(t: &Tunnel, test: Test, seconds: f64, load_pps: f64) -> Result<Run> {
    match test {
        Test::Udp => return super::flood::run(t, seconds, false),
        Test::UdpReverse => return super::flood::run(t, seconds, true),
        Test::Latency => return super::latency::run(t, seconds, None),
        Test::LatencyLoaded => return super::latency::run(t, seconds, Some(load_pps)),
        _ => {}
    }
    let before = counters_now(t)?;
    let json = iperf_on(&path(t), test.iperf_args(), seconds)?;
    let after = counters_now(t)?;
    let (rate, carried) = match test {
        Test::IperfUdp => {
            let pps = udp_received_pps(&json, seconds)?;
            let window = json["end"]["sum"]["seconds"].as_f64().unwrap_or(seconds);
            (pps, pps * window)
        }
        _ => {
            let bytes = json["end"]["sum_received"]["bytes"]
                .as_f64()
                .context("iperf3 reported no received bytes")?;
            (tcp_gbit_per_s(&json)?, bytes * 8.0 / 1e9)
        }
    };
    let mut run = Run::between(rate, carried, &before, &after);
    if !test.is_udp() {
        run.retransmits = json["end"]["sum_sent"]["retransmits"].as_u64();
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_per_gbit_for_tcp_and_per_packet_for_udp() {
        let run = Run {
            rate: 1.0,
            carried: 5.0,
            process_cpu_s: 4.0,
            each_process_cpu_s: vec![3.0, 1.0],
            each_socket_drops: vec![0, 0],
            generator_cpu_s: Some(2.5),
            retransmits: None,
            round_trips: None,
            softirq_cpu_s: 1.0,
            machine_cpu_s: 10.0,
        };
        assert_eq!(run.cpu_per_unit(Test::Tcp1), 1.0);
        assert_eq!(run.process_per_unit(0, Test::Tcp1), 0.6);
        assert_eq!(run.process_per_unit(1, Test::Udp), 0.2e6);
        assert!(run.process_per_unit(2, Test::Udp).is_nan());
        assert_eq!(run.generator_per_unit(Test::Udp), Some(0.5e6));
        assert_eq!(run.machine_per_unit(Test::Tcp4), 2.0);
        assert_eq!(run.cpu_per_unit(Test::Udp), 1e6);
        assert!(Run::default().cpu_per_unit(Test::Tcp1).is_nan());
    }

    #[test]
    fn our_own_process_and_thread_have_cpu_time() {
        assert!(task_jiffies(&format!("/proc/{}/stat", std::process::id())).is_ok());
        assert!(task_jiffies(&own_thread_stat()).is_ok());
        assert!(task_jiffies("/proc/self/task/0/stat").is_err());
    }
}
