//! Part of `cargo xtask bench deploy`: does one chain forward as fast with 99 other chains up
//! as alone? One probe chain of 10 forward functions stays up; its UDP pps (the chain bench's
//! generator and sink, [`super::chain`]) is measured alone and with 99 more chains of 10 (one
//! file, idle), interleaved, `repeats` times each. Goal: >= 0.97x. Every chain is the bench's
//! own and taken down by name, also when a step fails.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::chain::{self, ChainTopology};
use super::{median, timed_netfn};
use crate::util::netfn_netns;

/// Issue 14's goal: the crowd costs the probe chain at most 3% of its packet rate.
const GOAL_RATIO: f64 = 0.97;
/// Functions per chain, and chains up with the probe in the crowded case.
const PER_CHAIN: usize = 10;
const OTHERS: usize = 99;

#[derive(Serialize)]
pub struct Record {
    fastpath: String,
    alone_pps: Vec<f64>,
    with_99_chains_pps: Vec<f64>,
    alone_median: f64,
    with_99_chains_median: f64,
    ratio: f64,
}

/// Takes the bench's chains down by name when dropped.
struct Chains<'a> {
    netfn: &'a Path,
    names: Vec<String>,
}

impl Drop for Chains<'_> {
    fn drop(&mut self) {
        let errors = super::down_chains(self.netfn, &mut self.names);
        if !errors.is_empty() {
            eprintln!("bench deploy: cleanup: {}", errors.join("; "));
        }
    }
}

/// `settle`: the pause after the other chains come up, before the window (new namespaces have
/// kernel timers of their own for a moment: neighbours, IPv6).
pub fn run(
    netfn: &Path,
    fastpaths: &[String],
    seconds: f64,
    settle: f64,
    repeats: usize,
) -> Result<Vec<Record>> {
    let dir = std::env::temp_dir().join(format!("netfn-bench-deploy-pps-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut records = Vec::new();
    for fastpath in fastpaths {
        records.push(one_mode(netfn, &dir, fastpath, seconds, settle, repeats)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\npps through one chain of {PER_CHAIN} (60-byte UDP, median of {repeats} windows of \
         {seconds} s): alone vs with {OTHERS} other chains of {PER_CHAIN} up"
    );
    for r in &records {
        println!(
            "goal: {} with {OTHERS} chains up >= {GOAL_RATIO}x alone: {:.0} vs {:.0} pps = {:.3}x, {}",
            r.fastpath,
            r.with_99_chains_median,
            r.alone_median,
            r.ratio,
            if r.ratio >= GOAL_RATIO {
                "met"
            } else {
                "missed"
            }
        );
    }
    Ok(records)
}

fn one_mode(
    netfn: &Path,
    dir: &Path,
    fastpath: &str,
    seconds: f64,
    settle: f64,
    repeats: usize,
) -> Result<Record> {
    let probe = format!("bdp{}", &fastpath[..1]);
    let probe_file = dir.join(format!("{probe}.toml"));
    std::fs::write(&probe_file, chain::chain_file(&probe, PER_CHAIN, fastpath))?;
    let (crowd_file, crowd) =
        super::deploy::write_file(dir, fastpath, "chains", OTHERS * PER_CHAIN)?;
    let mut guard = Chains {
        netfn,
        names: vec![probe.clone()],
    };
    guard.names.extend(crowd.iter().cloned());
    timed_netfn(netfn, &["up", &probe_file.to_string_lossy(), "--quiet"])?;
    let src_ns = netfn_netns(&probe, "ingress");
    let topology = ChainTopology {
        name: format!("{fastpath}-{PER_CHAIN}"),
        mode: match fastpath {
            "kernel" => "kernel",
            "xdp" => "xdp",
            _ => "tc",
        },
        functions: PER_CHAIN,
        src_mac: chain::link_mac(&src_ns, "nf-out")?,
        next_mac: chain::link_mac(&netfn_netns(&probe, "f1"), "nf-in")?,
        chain: Some(probe.clone()),
        src_ns,
        dst_ns: netfn_netns(&probe, "egress"),
        src_if: "nf-out".into(),
        src_addr: chain::SRC_ADDR,
        dst_addr: chain::DST_ADDR,
    };
    chain::warm_up(&topology)?;
    let (mut alone, mut crowded) = (Vec::new(), Vec::new());
    for r in 0..repeats {
        eprintln!(
            "bench deploy: pps {fastpath}, alone and with {OTHERS} chains (repeat {}/{repeats})",
            r + 1
        );
        alone.push(chain::measure_pps(&topology, seconds)?.delivered);
        timed_netfn(netfn, &["up", &crowd_file, "--quiet"])?;
        std::thread::sleep(std::time::Duration::from_secs_f64(settle));
        let measured = chain::measure_pps(&topology, seconds);
        super::deploy::down_and_wait(netfn, &crowd_file)?;
        crowded.push(measured?.delivered);
    }
    chain::unpin();
    drop(guard);
    let (a, c) = (median(&mut alone.clone()), median(&mut crowded.clone()));
    Ok(Record {
        fastpath: fastpath.to_string(),
        alone_pps: alone,
        with_99_chains_pps: crowded,
        alone_median: a,
        with_99_chains_median: c,
        ratio: c / a,
    })
}
