//! Results: one record per tunnel (medians, ratios to the wireguard-go pair), the tables, the
//! issue's goals.

use serde::Serialize;

use super::measure::{Run, Test};
use super::{Figure, Goal, Options, Samples, Tunnel};

/// How every figure is produced (also written into vpn.json).
pub(super) const METHOD: [&str; 11] = [
    "each figure is the median of one run per repetition (iperf3, or our own generator and \
     round trips); tunnels measured interleaved, the order rotated each repetition",
    "TCP: iperf3 -J -c SERVER -B CLIENT -t SECONDS (and -P 4), a fresh iperf3 -s -1 per run; \
     throughput = end.sum_received.bits_per_second",
    "UDP 60 B: 18-byte datagrams (60-byte frames before encapsulation) from a connected socket, \
     256 per sendmmsg, counted at a UDP socket (recvmmsg) over the window after 0.3 s; client to \
     server, and server to client (-R: for netfn-wggo, netfn encrypts and wireguard-go decrypts)",
    "iperf3 UDP (a cross-check): iperf3 -u -b 0 -l 18; pps = (packets - lost_packets) / \
     seconds of end.sum",
    "CPU (tunnel + softirq): utime + stime of the tunnel's userspace processes (wireguard-go, \
     netfn endpoints; /proc/PID/stat) plus softirq jiffies of all CPUs (/proc/stat) over the run, \
     per Gbit received (TCP) or µs per datagram received (UDP); tick-based accounting may count \
     a softirq tick in both a process's stime and softirq",
    "TCP retransmits: iperf3's end.sum_sent.retransmits per run (loss in the tunnel)",
    "socket drops: per run, the drops column of /proc/net/udp and udp6 (datagrams refused with \
     the receive buffer full) for each tunnel endpoint's socket, bound to port 51820 in its \
     namespace",
    "CPU per process: the same utime + stime of each tunnel process alone (which end the cost \
     is at), and for the UDP floods our generator's and sink's threads \
     (/proc/self/task/TID/stat)",
    "CPU (machine): busy jiffies of all CPUs (user nice system irq softirq steal) over the run, \
     iperf3 and everything else included, per Gbit received",
    "round trips: 18-byte UDP requests, each with its sequence number, from the client to an \
     echo in the server's namespace, one a millisecond (at once after a slower one), both sides \
     blocking in recv (no busy polling); p50 and p99 of a run in µs, a reply after 500 ms lost; \
     loaded: beside latency_load_pps (20,000 by default) 18-byte datagrams a second from the \
     client to a sink in the server's \
     namespace (paced, what is due sent at each wake-up, at most 4 at once); the load's received \
     rate is recorded (load_pps); CPU per datagram counts both ways of each round trip and the \
     load (the bench's own client, echo and load threads not counted)",
    "no pinning, no tuning: default MTUs (tunnels 1420), default iperf3 buffers",
];

#[derive(Debug, Clone, Serialize)]
pub(super) struct TestFigures {
    test: Test,
    /// Gbit/s (TCP), packets/s (UDP) or the round trip's p50 in µs.
    rate: Figure,
    /// The median rate over the wireguard-go pair's (round trips: above 1 is slower).
    pub(super) vs_wggo_pair: f64,
    /// Tunnel processes + softirq: s/Gbit (TCP), µs/packet (UDP) or µs/datagram (round trips).
    tunnel_cpu: Figure,
    /// Whole machine busy time: s/Gbit (TCP), µs/packet (UDP) or µs/datagram (round trips).
    machine_cpu: Figure,
    /// Each of the tunnel's processes alone (in the order of the record's `processes`), same
    /// unit: which end a tunnel's cost is at.
    process_cpu: Vec<Figure>,
    /// Our UDP generator's and sink's threads (floods only), µs/packet: the share of the machine
    /// that is neither tunnel nor softirq.
    #[serde(skip_serializing_if = "Option::is_none")]
    generator_cpu: Option<Figure>,
    /// TCP: segments the sender retransmitted per run.
    #[serde(skip_serializing_if = "Option::is_none")]
    retransmits: Option<Figure>,
    /// Datagrams each process's UDP socket dropped per run (receive buffer full), in the order
    /// of the record's `processes`.
    socket_drops: Vec<Figure>,
    /// Round trips: their p99 per run, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_us: Option<Figure>,
    /// Round trips: the requests lost per run.
    #[serde(skip_serializing_if = "Option::is_none")]
    lost: Option<Figure>,
    /// Loaded round trips: the load's datagrams received a second.
    #[serde(skip_serializing_if = "Option::is_none")]
    load_pps: Option<Figure>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Record {
    pub(super) config: &'static str,
    about: String,
    /// What the CPU figures count besides softirq.
    processes: Vec<String>,
    pub(super) tests: Vec<TestFigures>,
}

impl Record {
    pub(super) fn figures(&self, test: Test) -> Option<&TestFigures> {
        self.tests.iter().find(|f| f.test == test)
    }
}

impl TestFigures {
    pub(super) fn median(&self) -> f64 {
        self.rate.median
    }
}

fn of(s: &Samples, test: Test, f: impl Fn(&Run) -> f64) -> Vec<f64> {
    s.runs
        .iter()
        .filter(|(t, _)| *t == test)
        .map(|(_, r)| f(r))
        .collect()
}

/// The runs' values of `test` that `f` has, as a figure; none if no run has one.
fn some_of(
    s: &Samples,
    test: Test,
    unit: &'static str,
    f: impl Fn(&Run) -> Option<f64>,
) -> Option<Figure> {
    let values: Vec<f64> = s
        .runs
        .iter()
        .filter(|(t, _)| *t == test)
        .filter_map(|(_, r)| f(r))
        .collect();
    (!values.is_empty()).then(|| Figure::new(unit, &values))
}

pub(super) fn records(tunnels: &[Tunnel], samples: &[Samples], tests: &[Test]) -> Vec<Record> {
    let pair = tunnels
        .iter()
        .zip(samples)
        .find(|(t, _)| t.name == "wggo-pair")
        .map(|(_, s)| s);
    let pair_median = |test: Test| {
        pair.map_or(f64::NAN, |s| {
            Figure::new("", &of(s, test, |r| r.rate)).median
        })
    };
    tunnels
        .iter()
        .zip(samples)
        .map(|(t, s)| Record {
            config: t.name,
            about: t.about.clone(),
            processes: t.endpoints.iter().map(|e| e.what.clone()).collect(),
            tests: tests
                .iter()
                .map(|&test| {
                    let (unit, cpu_unit) = if test.is_latency() {
                        ("us", "us/datagram")
                    } else if test.is_udp() {
                        ("packets/s", "us/packet")
                    } else {
                        ("Gbit/s", "s/Gbit")
                    };
                    let rate = Figure::new(unit, &of(s, test, |r| r.rate));
                    TestFigures {
                        test,
                        vs_wggo_pair: rate.median / pair_median(test),
                        rate,
                        tunnel_cpu: Figure::new(cpu_unit, &of(s, test, |r| r.cpu_per_unit(test))),
                        machine_cpu: Figure::new(
                            cpu_unit,
                            &of(s, test, |r| r.machine_per_unit(test)),
                        ),
                        process_cpu: (0..t.endpoints.len())
                            .map(|i| {
                                Figure::new(cpu_unit, &of(s, test, |r| r.process_per_unit(i, test)))
                            })
                            .collect(),
                        generator_cpu: some_of(s, test, cpu_unit, |r| r.generator_per_unit(test)),
                        retransmits: some_of(s, test, "segments", |r| {
                            r.retransmits.map(|n| n as f64)
                        }),
                        socket_drops: (0..t.endpoints.len())
                            .map(|i| {
                                Figure::new(
                                    "datagrams",
                                    &of(s, test, |r| {
                                        r.each_socket_drops.get(i).map_or(f64::NAN, |&n| n as f64)
                                    }),
                                )
                            })
                            .collect(),
                        p99_us: some_of(s, test, "us", |r| r.round_trips.map(|t| t.p99_us)),
                        lost: some_of(s, test, "requests", |r| {
                            r.round_trips.map(|t| t.lost as f64)
                        }),
                        load_pps: some_of(s, test, "packets/s", |r| {
                            r.round_trips.and_then(|t| t.load_pps)
                        }),
                    }
                })
                .collect(),
        })
        .collect()
}

pub(super) fn print_tables(records: &[Record], tests: &[Test], options: &Options) {
    let (rates, latencies): (Vec<Test>, Vec<Test>) =
        tests.iter().partition(|test| !test.is_latency());
    print_rates(records, &rates);
    print_latencies(records, &latencies, options.latency_load_pps);
    print_processes(records);
    println!(
        "(medians of {} runs of {} s each; ×pair: over the wireguard-go pair; tun: tunnel \
         processes + softirq; mach: whole machine busy)",
        options.repetitions, options.seconds
    );
}

/// The rates (TCP and UDP) and their CPU.
fn print_rates(records: &[Record], tests: &[Test]) {
    if tests.is_empty() {
        return;
    }
    let mut head = format!("\n{:<12}", "tunnel");
    for &test in tests {
        let unit = if test.is_udp() { "kpps" } else { "Gb/s" };
        head.push_str(&format!(
            " {:>14} {:>6}",
            format!("{} {unit}", test.short()),
            "×pair"
        ));
    }
    println!("{head}");
    for r in records {
        let mut line = format!("{:<12}", r.config);
        for f in r.tests.iter().filter(|f| tests.contains(&f.test)) {
            let value = if f.test.is_udp() {
                f.median() / 1e3
            } else {
                f.median()
            };
            line.push_str(&format!(" {value:>14.3} {:>6.2}", f.vs_wggo_pair));
        }
        println!("{line}");
    }
    let mut head = format!("\n{:<12}", "CPU");
    for &test in tests {
        let unit = if test.is_udp() { "us/pkt" } else { "s/Gbit" };
        head.push_str(&format!(
            " {:>21}",
            format!("{} {unit} tun/mach", test.short())
        ));
    }
    println!("{head}");
    for r in records {
        let mut line = format!("{:<12}", r.config);
        for f in r.tests.iter().filter(|f| tests.contains(&f.test)) {
            line.push_str(&format!(
                " {:>21}",
                format!("{:.2} / {:.2}", f.tunnel_cpu.median, f.machine_cpu.median)
            ));
        }
        println!("{line}");
    }
}

/// The round trips: p50 and p99 in µs, the requests lost, the load's rate.
fn print_latencies(records: &[Record], tests: &[Test], load_pps: u32) {
    if tests.is_empty() {
        return;
    }
    let mut head = format!("\n{:<12}", "round trip");
    for &test in tests {
        head.push_str(&format!(
            " {:>24} {:>6} {:>5}",
            format!("{} p50/p99 µs", test.short()),
            "×pair",
            "lost"
        ));
    }
    if tests.contains(&Test::LatencyLoaded) {
        head.push_str(&format!(" {:>10}", "load kpps"));
    }
    println!("{head}");
    let median = |f: &Option<Figure>| f.as_ref().map_or(f64::NAN, |f| f.median);
    for r in records {
        let mut line = format!("{:<12}", r.config);
        for f in r.tests.iter().filter(|f| tests.contains(&f.test)) {
            line.push_str(&format!(
                " {:>24} {:>6.2} {:>5.0}",
                format!("{:.0} / {:.0}", f.median(), median(&f.p99_us)),
                f.vs_wggo_pair,
                median(&f.lost)
            ));
        }
        if let Some(f) = r.figures(Test::LatencyLoaded) {
            line.push_str(&format!(" {:>10.1}", median(&f.load_pps) / 1e3));
        }
        println!("{line}");
    }
    println!(
        "(round trips one a millisecond; loaded: beside {:.0} kpps of 60-byte UDP, client to \
         server; ×pair: p50 over the wireguard-go pair's, above 1 is slower)",
        f64::from(load_pps) / 1e3
    );
}

/// Whether a main test (one with a goal and a chart panel) ran.
pub(super) fn any_main_test(records: &[Record]) -> bool {
    records
        .iter()
        .any(|r| Test::MAIN.iter().any(|&t| r.figures(t).is_some()))
}

/// Each tunnel process's CPU and socket drops, for the main tests.
fn print_processes(records: &[Record]) {
    if !any_main_test(records) {
        return;
    }
    println!(
        "\nCPU per process: s/Gbit (TCP), µs/packet (UDP; gen: our generator and sink); drops: \
         datagrams its UDP socket dropped per run, the receive buffer full"
    );
    for r in records.iter().filter(|r| !r.processes.is_empty()) {
        for test in Test::MAIN {
            let Some(f) = r.figures(test) else { continue };
            let mut line = format!("{:<12} {:<7}", r.config, test.short());
            for (i, (what, cpu)) in r.processes.iter().zip(&f.process_cpu).enumerate() {
                line.push_str(&format!("  {what} {:.2}", cpu.median));
                if let Some(drops) = f.socket_drops.get(i) {
                    line.push_str(&format!(" (drops {:.0})", drops.median));
                }
            }
            if let Some(g) = &f.generator_cpu {
                line.push_str(&format!("  gen {:.2}", g.median));
            }
            println!("{line}");
        }
    }
}

/// The goals: netfn to wireguard-go >= 1.5x the wireguard-go pair, netfn to netfn >= 3x;
/// for every test.
pub(super) fn goals(records: &[Record]) -> Vec<Goal> {
    let mut goals = Vec::new();
    for (config, target) in [("netfn-wggo", 1.5), ("netfn-netfn", 3.0)] {
        let Some(r) = records.iter().find(|r| r.config == config) else {
            continue;
        };
        for f in r.tests.iter().filter(|f| Test::MAIN.contains(&f.test)) {
            goals.push(Goal {
                what: format!("{config} {} vs wggo-pair", f.test.label()),
                value: f.vs_wggo_pair,
                unit: "x",
                target: format!(">= {target}"),
                met: f.vs_wggo_pair >= target,
            });
        }
    }
    goals
}
