//! Results: records per topology (medians and ratios to the bare pair), the table, the goals.

use super::*;

pub(super) fn records(topologies: &[Topology], samples: &[Samples]) -> Vec<Record> {
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

pub(super) fn print_table(records: &[Record]) {
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

/// The goals: a 3-function tc/xdp chain at >= 0.85x the bare pair's pps; each added hop
/// at most +1 µs p50 and +5 µs p99 (round trip, per added function, from 1 to 3 functions); and
/// DESIGN.md's: xdp never slower than kernel mode.
pub(super) fn goals(records: &[Record]) -> Vec<Goal> {
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

/// Prints the goals, one line each, after a blank line. Three decimals: with two, a ratio of
/// 1.497 printed as "1.50 x, target >= 1.5, NOT met" (bench vpn, 2026-12-05).
pub(in crate::bench) fn print_goals(goals: &[Goal]) {
    println!();
    for g in goals {
        println!(
            "goal: {:<52} {:>8.3} {:<10} target {:<10} {}",
            g.what,
            g.value,
            g.unit,
            g.target,
            if g.met { "met" } else { "NOT met" }
        );
    }
}
