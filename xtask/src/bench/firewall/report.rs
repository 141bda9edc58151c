//! The firewall bench's results: records (medians and ratios), the table, the goals, the JSON and
//! the chart (packets per second against the rule count, log scale).

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::{Contender, Options, Samples, med};
use crate::bench::pps_chart::{PpsChart, Reference, Series, decade_ticks};
use crate::bench::{comma_list, kernel_release, write_chart, write_json};

#[derive(Debug, Clone, Serialize)]
struct Record {
    contender: String,
    rules: usize,
    case: super::Case,
    one_flow_pps: f64,
    one_flow_samples: Vec<f64>,
    /// One-flow pps relative to a `forward` function in the same fast path (kernel mode for
    /// the nftables baselines).
    vs_forward: f64,
    new_flows_pps: f64,
    new_flows_samples: Vec<f64>,
    load_ms: f64,
    swap_ms: Option<f64>,
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
    records: &'a [Record],
    goals: Vec<Goal>,
}

pub(super) fn report(
    options: &Options,
    contenders: &[Contender],
    samples: &[Samples],
    started: Instant,
) -> Result<()> {
    let forward = |mode: &str| {
        contenders
            .iter()
            .zip(samples)
            .find(|(c, _)| c.kind == format!("forward-{mode}"))
            .map(|(_, s)| med(&s.one_flow))
            .unwrap_or(f64::NAN)
    };
    let records: Vec<Record> = contenders
        .iter()
        .zip(samples)
        .map(|(c, s)| {
            let mode = c.kind.rsplit('-').next().unwrap_or("kernel");
            let mode = if c.kind.starts_with("nft-") {
                "kernel"
            } else {
                mode
            };
            let one = med(&s.one_flow);
            Record {
                contender: c.kind.clone(),
                rules: c.rules,
                case: c.case,
                one_flow_pps: one,
                one_flow_samples: s.one_flow.clone(),
                vs_forward: one / forward(mode),
                new_flows_pps: med(&s.new_flows),
                new_flows_samples: s.new_flows.clone(),
                load_ms: c.load_ms,
                swap_ms: c.swap_ms,
            }
        })
        .collect();

    println!(
        "\n{:<15} {:>7} {:<5} {:>12} {:>8} {:>14} {:>9} {:>9}",
        "contender", "rules", "case", "1 flow pps", "vs fwd", "new flows pps", "load ms", "swap ms"
    );
    for r in &records {
        println!(
            "{:<15} {:>7} {:<5} {:>12.0} {:>7.2}x {:>14.0} {:>9.0} {:>9}",
            r.contender,
            r.rules,
            if r.rules == 0 { "-" } else { case_name(r.case) },
            r.one_flow_pps,
            r.vs_forward,
            r.new_flows_pps,
            r.load_ms,
            r.swap_ms.map_or("-".into(), |s| format!("{s:.0}"))
        );
    }
    let goals = goals(&records, options);
    println!();
    for g in &goals {
        println!(
            "goal: {:<70} {:>9.3}  target {:<8} {}",
            g.what,
            g.value,
            g.target,
            if g.met { "met" } else { "NOT met" }
        );
    }
    let report = Report {
        bench: "firewall",
        command: format!(
            "cargo xtask bench firewall --repetitions {} --seconds {} --rules {}",
            options.repetitions,
            options.seconds,
            comma_list(&options.rules)
        ),
        kernel: kernel_release(),
        frame_bytes: crate::bench::chain::FRAME_BYTES,
        repetitions: options.repetitions,
        seconds: options.seconds,
        records: &records,
        goals,
    };
    let json = write_json("firewall", &report)?;
    println!("\nwrote {}", json.display());
    match write_chart("firewall", &svg(&records)) {
        Ok(paths) => paths.iter().for_each(|p| println!("wrote {}", p.display())),
        Err(e) => eprintln!("chart: {e:#}"),
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn case_name(c: super::Case) -> &'static str {
    c.name()
}

fn find<'a>(
    records: &'a [Record],
    who: &str,
    rules: usize,
    case: super::Case,
) -> Option<&'a Record> {
    records
        .iter()
        .find(|r| r.contender == who && r.rules == rules && r.case == case)
}

fn goals(records: &[Record], options: &Options) -> Vec<Goal> {
    use super::Case::{Last, None};
    let mut goals = Vec::new();
    let most = options.rules.iter().copied().max().unwrap_or(0);
    let least = options.rules.iter().copied().min().unwrap_or(0);
    let mut goal = |what: String, value: f64, target: f64, ge: bool| {
        goals.push(Goal {
            what,
            value,
            target: format!("{}{target}", if ge { ">= " } else { "<= " }),
            met: if ge { value >= target } else { value <= target },
        });
    };
    if let (Some(big), Some(small)) = (
        find(records, "fw-tc", most, Last),
        find(records, "fw-tc", least, Last),
    ) {
        goal(
            format!("fw-tc one flow at {most} rules vs at {least} rules (last rule)"),
            big.one_flow_pps / small.one_flow_pps,
            0.9,
            true,
        );
        goal(
            format!("fw-tc one flow at {most} rules vs a forward function"),
            big.vs_forward,
            0.8,
            true,
        );
        goal(
            format!("fw-tc all-new flows at {most} rules vs at {least} rules"),
            big.new_flows_pps / small.new_flows_pps,
            0.9,
            true,
        );
    }
    if let (Some(fw), Some(linear)) = (
        find(records, "fw-tc", 10_000, Last),
        find(records, "nft-linear", 10_000, Last),
    ) {
        goal(
            "fw-tc vs nft-linear at 10000 rules (one flow, last rule)".into(),
            fw.one_flow_pps / linear.one_flow_pps,
            30.0,
            true,
        );
        goal(
            "fw-tc vs nft-linear at 10000 rules (all-new flows, last rule)".into(),
            fw.new_flows_pps / linear.new_flows_pps,
            1.0,
            true,
        );
    }
    let mut worst = f64::INFINITY;
    let mut worst_new = f64::INFINITY;
    for &n in &options.rules {
        for case in [Last, None] {
            if let (Some(fw), Some(expert)) = (
                find(records, "fw-tc", n, case),
                find(records, "nft-expert", n, case),
            ) {
                worst = worst.min(fw.one_flow_pps / expert.one_flow_pps);
                worst_new = worst_new.min(fw.new_flows_pps / expert.new_flows_pps);
            }
        }
    }
    if worst.is_finite() {
        goal(
            "fw-tc vs nft-expert, worst rule count and case (one flow)".into(),
            worst,
            1.0,
            true,
        );
        goal(
            "fw-tc vs nft-expert, worst rule count and case (all-new flows)".into(),
            worst_new,
            1.0,
            true,
        );
    }
    for who in ["fw-tc", "fw-xdp"] {
        if let Some(r) = find(records, who, most, Last) {
            goal(
                format!("{who}: netfn up with {most} rules (ms, includes the process)"),
                r.load_ms,
                2000.0,
                false,
            );
            if let Some(s) = r.swap_ms {
                goal(
                    format!("{who}: netfn apply swapping {most} rules (ms)"),
                    s,
                    2000.0,
                    false,
                );
            }
        }
    }
    goals
}

/// Packets per second against the rule count (log scale): one line per contender (case
/// `last`), solid for one flow, dashed for all-new flows; the forward functions as flat
/// references.
fn svg(records: &[Record]) -> String {
    let colors = [
        ("fw-tc", "#1f77b4"),
        ("fw-xdp", "#d62728"),
        ("fw-kernel", "#2ca02c"),
        ("nft-expert", "#9467bd"),
        ("nft-linear", "#8c564b"),
    ];
    let last: Vec<&Record> = records
        .iter()
        .filter(|r| r.rules > 0 && r.case == super::Case::Last)
        .collect();
    let max_rules = last.iter().map(|r| r.rules).max().unwrap_or(10).max(10) as f64;
    let min_rules = last.iter().map(|r| r.rules).min().unwrap_or(10).max(1) as f64;
    let max_pps = records
        .iter()
        .flat_map(|r| [r.one_flow_pps, r.new_flows_pps])
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut series = Vec::new();
    for (who, color) in colors {
        let mut points: Vec<&Record> = last
            .iter()
            .copied()
            .filter(|r| r.contender == who)
            .collect();
        points.sort_by_key(|r| r.rules);
        for (dashed, value) in [
            (false, (|r: &Record| r.one_flow_pps) as fn(&Record) -> f64),
            (true, |r: &Record| r.new_flows_pps),
        ] {
            if who.starts_with("nft-") && dashed {
                continue; // stateless: the same as one flow
            }
            series.push(Series {
                label: if dashed {
                    format!("{who}, all-new flows")
                } else {
                    who.to_string()
                },
                color,
                dashed,
                points: points.iter().map(|r| (r.rules as f64, value(r))).collect(),
            });
        }
    }
    let references = records
        .iter()
        .find(|r| r.contender == "forward-tc")
        .map(|fwd| Reference {
            label: "forward function (tc)".into(),
            color: "#444",
            pps: fwd.one_flow_pps,
        })
        .into_iter()
        .collect();
    PpsChart {
        title: "netfn firewall: UDP packets/s through one function vs rule count (traffic meets \
                the last rule)",
        x_label: "rules (log scale)",
        x_ticks: decade_ticks(min_rules, max_rules),
        x_range: (min_rules, max_rules),
        y_max: max_pps,
        series,
        references,
    }
    .svg()
}
