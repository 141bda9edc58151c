//! The lb bench's results: records (medians and ratios), the table, the goals, the JSON and the
//! chart (packets per second against the backend count, log scale).

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::{Contender, Options, Samples, Swap, med, service};
use crate::bench::pps_chart::{PpsChart, Reference, Series};
use crate::bench::{comma_list, kernel_release, write_chart, write_json};

#[derive(Debug, Clone, Serialize)]
struct Record {
    contender: String,
    mode: &'static str,
    /// 0 for a forward function.
    backends: usize,
    /// Distinct destinations of its traffic past the function: the backends, or a forward
    /// function's targets (many for `forward-<mode>-spread`, the reference of many backends).
    addresses: usize,
    few_flows_pps: f64,
    few_flows_samples: Vec<f64>,
    /// Few-flows pps relative to a `forward` function in the same mode.
    few_flows_vs_forward: f64,
    /// Few-flows pps relative to the same contender with the fewest backends measured (2 by
    /// default); none for a forward function.
    few_flows_vs_fewest: Option<f64>,
    new_flows_pps: f64,
    new_flows_samples: Vec<f64>,
    new_flows_vs_forward: f64,
    new_flows_vs_fewest: Option<f64>,
    /// tc and xdp load balancers: all-new-flows pps relative to the nftables DNAT baseline
    /// (`lb-kernel`) with as many backends.
    new_flows_vs_nft: Option<f64>,
    /// Load balancers: new flows per packet in the all-new-flows runs, the fewest of any run
    /// (1.0: every packet was a new flow), counted by the nftables baseline's DNAT rule or by
    /// netfn's count of flows balanced.
    new_flows_per_packet: Option<f64>,
    /// tc and xdp: median nanoseconds of eBPF per packet with all-new flows (the forwarder and
    /// the stage, by the kernel's program statistics), and its ratio to the same contender with
    /// the fewest backends.
    new_flows_ebpf_ns: Option<f64>,
    new_flows_ebpf_ns_samples: Vec<f64>,
    new_flows_ebpf_vs_fewest: Option<f64>,
    up_ms: f64,
    swap: Option<Swap>,
}

#[derive(Serialize)]
struct Goal {
    what: String,
    value: f64,
    target: String,
    met: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    bench: &'static str,
    command: String,
    kernel: String,
    frame_bytes: usize,
    repetitions: usize,
    seconds: f64,
    few_flows: u16,
    new_flows: usize,
    table_size: u32,
    baseline: &'static str,
    records: &'a [Record],
    goals: Vec<Goal>,
}

pub(super) fn report(
    options: &Options,
    contenders: &[Contender],
    samples: &[Samples],
    started: Instant,
) -> Result<()> {
    let fewest = options.backends.iter().copied().min().unwrap_or(0);
    let most = options.backends.iter().copied().max().unwrap_or(0);
    let samples_of = |kind: &str, backends: usize| {
        contenders
            .iter()
            .zip(samples)
            .find(|(c, _)| c.kind == kind && c.backends == backends)
            .map(|(_, s)| s)
    };
    let median_of = |kind: &str, backends: usize| {
        samples_of(kind, backends).map(|s| (med(&s.few_flows), med(&s.new_flows)))
    };
    let ebpf_ns = |s: &Samples| (!s.new_flow_ns.is_empty()).then(|| med(&s.new_flow_ns));
    let records: Vec<Record> = contenders
        .iter()
        .zip(samples)
        .map(|(c, s)| {
            let (few, new) = (med(&s.few_flows), med(&s.new_flows));
            let forward = median_of(&format!("forward-{}", c.mode), 0);
            let base = (c.backends > 0)
                .then(|| median_of(&c.kind, fewest))
                .flatten();
            let nft = (c.backends > 0 && c.mode != "kernel")
                .then(|| median_of("lb-kernel", c.backends))
                .flatten();
            Record {
                contender: c.kind.clone(),
                mode: c.mode,
                backends: c.backends,
                addresses: if c.backends > 0 {
                    c.backends
                } else {
                    c.targets.len()
                },
                few_flows_pps: few,
                few_flows_samples: s.few_flows.clone(),
                few_flows_vs_forward: forward.map_or(f64::NAN, |(f, _)| few / f),
                few_flows_vs_fewest: base.map(|(b, _)| few / b),
                new_flows_pps: new,
                new_flows_samples: s.new_flows.clone(),
                new_flows_vs_forward: forward.map_or(f64::NAN, |(_, f)| new / f),
                new_flows_vs_fewest: base.map(|(_, b)| new / b),
                new_flows_vs_nft: nft.map(|(_, b)| new / b),
                new_flows_per_packet: (!s.new_per_packet.is_empty()).then(|| {
                    s.new_per_packet
                        .iter()
                        .copied()
                        .fold(f64::INFINITY, f64::min)
                }),
                new_flows_ebpf_ns: ebpf_ns(s),
                new_flows_ebpf_ns_samples: s.new_flow_ns.clone(),
                new_flows_ebpf_vs_fewest: (c.backends > 0)
                    .then(|| Some(ebpf_ns(s)? / ebpf_ns(samples_of(&c.kind, fewest)?)?))
                    .flatten(),
                up_ms: c.up_ms,
                swap: c.swap,
            }
        })
        .collect();

    print_table(&records, fewest);
    let goals = goals(&records, fewest, most);
    println!();
    for g in &goals {
        println!(
            "goal: {:<72} {:>9.3}  target {:<7} {}",
            g.what,
            g.value,
            g.target,
            if g.met { "met" } else { "NOT met" }
        );
    }
    println!(
        "\nlb-kernel is netfn's kernel form of the load balancer: nftables DNAT (jhash into a \
         1,021-slot map) with Linux conntrack, the nftables baseline."
    );
    let report = Report {
        bench: "lb",
        command: format!(
            "cargo xtask bench lb --repetitions {} --seconds {} --backends {} --modes {}",
            options.repetitions,
            options.seconds,
            comma_list(&options.backends),
            options.modes.join(",")
        ),
        kernel: kernel_release(),
        frame_bytes: crate::bench::chain::FRAME_BYTES,
        repetitions: options.repetitions,
        seconds: options.seconds,
        few_flows: super::flows::FEW_FLOWS,
        new_flows: usize::from(super::flows::NEW_FLOW_CLIENTS)
            * usize::from(super::flows::NEW_FLOW_PORTS),
        table_size: service::TABLE_SIZE,
        baseline: "lb-kernel: the load balancer's kernel form, nftables DNAT with Linux conntrack",
        records: &records,
        goals,
    };
    let json = write_json("lb", &report)?;
    println!("\nwrote {}", json.display());
    match write_chart("lb", &svg(&records)) {
        Ok(paths) => paths.iter().for_each(|p| println!("wrote {}", p.display())),
        Err(e) => eprintln!("chart: {e:#}"),
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn print_table(records: &[Record], fewest: usize) {
    let vs_fewest = format!("vs {fewest}");
    println!(
        "\n{:<15} {:>8} {:>12} {:>8} {:>8} {:>13} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>8}",
        "contender",
        "backends",
        "few fl. pps",
        "vs fwd",
        vs_fewest,
        "all-new pps",
        "vs fwd",
        vs_fewest,
        "vs nft",
        "up ms",
        "apply ms",
        "stage ms",
        "fill ms"
    );
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |v| format!("{v:.2}x"));
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for r in records {
        println!(
            "{:<15} {:>8} {:>12.0} {:>7.2}x {:>8} {:>13.0} {:>7.2}x {:>8} {:>8} {:>7.0} {:>9} {:>9} {:>8}",
            r.contender,
            backends_label(r),
            r.few_flows_pps,
            r.few_flows_vs_forward,
            ratio(r.few_flows_vs_fewest),
            r.new_flows_pps,
            r.new_flows_vs_forward,
            ratio(r.new_flows_vs_fewest),
            ratio(r.new_flows_vs_nft),
            r.up_ms,
            ms(r.swap.map(|s| s.apply_ms)),
            ms(r.swap.and_then(|s| s.stage_ms)),
            ms(r.swap.and_then(|s| s.fill_ms)),
        );
    }
    for r in records.iter().filter(|r| r.new_flows_ebpf_ns.is_some()) {
        println!(
            "{} {}: eBPF {:.0} ns per packet with all-new flows (forwarder and stage, the \
             kernel's program statistics){}",
            r.contender,
            backends_label(r),
            r.new_flows_ebpf_ns.unwrap_or(f64::NAN),
            r.new_flows_ebpf_vs_fewest
                .filter(|_| r.backends != fewest)
                .map_or(String::new(), |v| format!(
                    ", {v:.2}x that of {fewest} backends"
                ))
        );
    }
    for r in records
        .iter()
        .filter(|r| r.backends == 0 && r.addresses > 1)
    {
        println!(
            "{}: a forward function whose traffic goes to {} backend addresses in turn (what many \
             destinations cost the sink's namespace, a socket lookup slot per address)",
            r.contender, r.addresses
        );
    }
    for r in records.iter().filter(|r| r.new_flows_per_packet.is_some()) {
        let counter = if r.contender == "lb-kernel" {
            "its DNAT rule's counter"
        } else {
            "its count of flows balanced"
        };
        println!(
            "{} {}: at least {:.2} new flows per packet in every all-new-flows run ({counter})",
            r.contender,
            r.backends,
            r.new_flows_per_packet.unwrap_or(f64::NAN)
        );
    }
}

/// The backend count of a record; for a forward function "-", or its count of destination
/// addresses and "a" (the spread reference).
fn backends_label(r: &Record) -> String {
    match (r.backends, r.addresses) {
        (0, 0 | 1) => "-".to_string(),
        (0, a) => format!("{a}a"),
        (n, _) => n.to_string(),
    }
}

fn find<'a>(records: &'a [Record], who: &str, backends: usize) -> Option<&'a Record> {
    records
        .iter()
        .find(|r| r.contender == who && r.backends == backends)
}

/// The goals, at the backend counts measured (its own: 4,096 against 2).
fn goals(records: &[Record], fewest: usize, most: usize) -> Vec<Goal> {
    let mut goals = Vec::new();
    let mut goal = |what: String, value: f64, target: f64, at_least: bool| {
        goals.push(Goal {
            what,
            value,
            target: format!("{}{target}", if at_least { ">= " } else { "< " }),
            met: if at_least {
                value >= target
            } else {
                value < target
            },
        });
    };
    // The worst of a ratio over the backend counts, with the count it was at.
    let worst = |who: &str, ratio: fn(&Record) -> Option<f64>| {
        records
            .iter()
            .filter(|r| r.contender == who)
            .filter_map(|r| Some((ratio(r)?, r.backends)))
            .filter(|(v, _)| !v.is_nan())
            .min_by(|a, b| a.0.total_cmp(&b.0))
    };
    for who in ["lb-tc", "lb-xdp"] {
        if most > fewest
            && let Some(r) = find(records, who, most)
        {
            for (shape, value) in [
                ("few flows", r.few_flows_vs_fewest),
                ("all-new flows", r.new_flows_vs_fewest),
            ] {
                if let Some(v) = value {
                    goal(
                        format!("{who} {shape}: {most} backends vs {fewest}"),
                        v,
                        0.95,
                        true,
                    );
                }
            }
        }
    }
    // The same, against the forward function whose traffic reaches as many addresses (relative
    // to one address): what many backends cost the load balancer, without the sink's share.
    for who in ["lb-tc", "lb-xdp"] {
        let mode = who.trim_start_matches("lb-");
        let spread = records
            .iter()
            .find(|r| r.contender == format!("forward-{mode}-spread") && r.addresses == most);
        // Against one address: fair for a fewest of 1 or 2 backends (both cache-resident).
        if most > fewest
            && fewest <= 2
            && let (Some(r), Some(spread)) = (find(records, who, most), spread)
            && let Some(v) = r.new_flows_vs_fewest
        {
            goal(
                format!(
                    "{who} all-new flows: {most} vs {fewest} backends, over forward to {most} addr."
                ),
                v / spread.new_flows_vs_forward,
                0.95,
                true,
            );
        }
    }
    if let Some((v, n)) = worst("lb-tc", |r| Some(r.few_flows_vs_forward)) {
        goal(
            format!("lb-tc few flows vs a forward function (tc), worst: {n} backends"),
            v,
            0.8,
            true,
        );
    }
    for who in ["lb-tc", "lb-xdp"] {
        if let Some((v, n)) = worst(who, |r| r.new_flows_vs_nft) {
            goal(
                format!("{who} all-new flows vs nftables DNAT, worst: {n} backends"),
                v,
                2.0,
                true,
            );
        }
    }
    for who in ["lb-tc", "lb-xdp"] {
        let Some(swap) = find(records, who, most).and_then(|r| r.swap) else {
            continue;
        };
        match swap.stage_ms {
            Some(ms) => goal(
                format!(
                    "{who}: {}-entry table with {most} backends built and swapped (ms)",
                    service::TABLE_SIZE
                ),
                ms,
                100.0,
                false,
            ),
            None => println!("{who}: netfn's log gave no stage load time for the swap"),
        }
    }
    goals
}

/// Packets per second against the backend count (log scale): one line per load balancer,
/// solid for few flows, dashed for all-new flows; the forward functions as flat references.
fn svg(records: &[Record]) -> String {
    let colors = [
        ("lb-tc", "lb-tc", "#1f77b4"),
        ("lb-xdp", "lb-xdp", "#d62728"),
        ("lb-kernel", "nft DNAT", "#2ca02c"),
    ];
    let counts: Vec<usize> = {
        let mut c: Vec<usize> = records
            .iter()
            .map(|r| r.backends)
            .filter(|&n| n > 0)
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let fewest = counts.first().copied().unwrap_or(1) as f64;
    let most = counts.last().copied().unwrap_or(1) as f64;
    let most = if most > fewest { most } else { fewest * 10.0 };
    let max_pps = records
        .iter()
        .flat_map(|r| [r.few_flows_pps, r.new_flows_pps])
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut series = Vec::new();
    for (who, label, color) in colors {
        let mut points: Vec<&Record> = records.iter().filter(|r| r.contender == who).collect();
        points.sort_by_key(|r| r.backends);
        for (dashed, value) in [
            (false, (|r: &Record| r.few_flows_pps) as fn(&Record) -> f64),
            (true, |r: &Record| r.new_flows_pps),
        ] {
            series.push(Series {
                label: if dashed {
                    format!("{label}, all-new flows")
                } else {
                    format!("{label}, few flows")
                },
                color,
                dashed,
                points: points
                    .iter()
                    .map(|r| (r.backends as f64, value(r)))
                    .collect(),
            });
        }
    }
    let references = [("forward-tc", "#444"), ("forward-xdp", "#e377c2")]
        .into_iter()
        .filter_map(|(who, color)| {
            let r = find(records, who, 0)?;
            Some(Reference {
                label: format!("forward function ({})", r.mode),
                color,
                pps: r.few_flows_pps,
            })
        })
        .collect();
    PpsChart {
        title: "netfn load balancer: UDP packets/s vs backends (nft DNAT: its kernel form)",
        x_label: "backends (log scale)",
        x_ticks: counts.iter().map(|&n| n as f64).collect(),
        x_range: (fewest, most),
        y_max: max_pps,
        series,
        references,
    }
    .svg()
}
