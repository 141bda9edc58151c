//! `cargo xtask bench firewall`: what a firewall function costs, against its peers, in one run.
//!
//! Contenders, each a chain of one function between two endpoint namespaces the bench makes:
//! - `forward-tc`, `forward-xdp`, `forward-kernel`: a `forward` function (the cost of a hop);
//! - `fw-tc`, `fw-xdp`, `fw-kernel`: a netfn firewall (eBPF stage; its nftables kernel form);
//! - `nft-linear`: a kernel-mode `forward` function with nftables written as a linear rule list;
//! - `nft-expert`: the same rules as one set lookup on a concatenated key (address . port).
//!
//! For every rule count (10, 1,000, 10,000, 100,000 by default) and both cases (the traffic
//! meets the last rule; it meets none and the default accepts it), each contender is measured
//! with two traffic shapes from the chain bench's AF_PACKET generator (60-byte UDP frames,
//! counted at the sink's UDP socket): one flow (as long-lived connections look), and all-new
//! flows (every frame from another source port, cycling through 60,000; the firewall's
//! connection table holds 4,096, so every frame is a new connection: classification and an
//! insert per packet). The nftables baselines keep no state, so both shapes cost them the same.
//! Also measured: time to bring each firewall up (`netfn up`, rules compiled and loaded), to
//! swap its rule set (`netfn apply`), and to load each nftables ruleset (`nft -f`).
//!
//! Repetitions are interleaved (every contender once per repetition, the order rotated);
//! medians are reported. Output: a table, target/bench/firewall.json, firewall.svg and, with
//! rsvg-convert, firewall.png. All traffic stays between namespaces the bench created.

mod report;
mod rulesets;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::chain::{
    PPS_PORT, Topology, link_mac, measure_pps, measure_pps_of, netfn_command, udp_frame_from,
    warm_up,
};
use super::{median, netfn_release, timed_netfn};
use crate::util;
use crate::util::netfn_netns;
use rulesets::Case;

const SRC_ADDR: Ipv4Addr = Ipv4Addr::new(10, 83, 1, 2);
const DST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 83, 2, 2);
/// Distinct flows of the all-new-flows shape (more than the connection table holds).
const NEW_FLOWS: u16 = 60_000;
/// The firewalls' connection table in this bench.
const CONNTRACK: &str = "conntrack = { size = 4096, udp = 2, udp_stream = 2 }";

/// Options of `cargo xtask bench firewall`.
#[derive(Debug, Clone)]
pub struct Options {
    pub repetitions: usize,
    pub seconds: f64,
    pub rules: Vec<usize>,
}

/// One contender at one rule count and case.
#[derive(Debug, Clone)]
struct Contender {
    /// "fw-tc", "nft-linear", "forward-xdp"…
    kind: String,
    rules: usize,
    case: Case,
    topology: Topology,
    /// Milliseconds to bring it up (`netfn up`, or `nft -f` for the nftables rulesets).
    load_ms: f64,
    /// Milliseconds of `netfn apply` swapping its rule set (tc and xdp firewalls, case `Last`).
    swap_ms: Option<f64>,
}

/// Samples of one contender.
#[derive(Debug, Default, Clone)]
struct Samples {
    one_flow: Vec<f64>,
    new_flows: Vec<f64>,
}

pub fn run(options: &Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the firewall bench creates namespaces, loads eBPF and nftables: run it as root");
    }
    if options.repetitions == 0 || options.seconds <= 0.0 || options.rules.iter().any(|&n| n < 2) {
        bail!("--repetitions and --seconds must be positive, every rule count at least 2");
    }
    if !util::have("nft") {
        bail!("nft not found: run `cargo xtask setup` (it installs nftables)");
    }
    let started = Instant::now();
    let netfn = netfn_release()?;
    let dir = util::workspace_root().join("target/bench/firewall");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut lab = Lab {
        netfn,
        dir,
        chains: Vec::new(),
        next: 0,
    };
    let contenders = lab.build(&options.rules)?;
    println!(
        "set up {} contenders in {:.1} s; {} repetition(s) of {:.1} s windows, two traffic shapes",
        contenders.len(),
        started.elapsed().as_secs_f64(),
        options.repetitions,
        options.seconds
    );
    let new_flow_frames = |t: &Topology| -> Vec<Vec<u8>> {
        (0..NEW_FLOWS)
            .map(|i| udp_frame_from(t, 2000 + i, PPS_PORT))
            .collect()
    };
    let mut samples = vec![Samples::default(); contenders.len()];
    for rep in 0..options.repetitions {
        for k in 0..contenders.len() {
            let i = (k + rep) % contenders.len();
            let c = &contenders[i];
            let one = measure_pps(&c.topology, options.seconds)
                .with_context(|| format!("{}: one flow", c.topology.name))?;
            let new = measure_pps_of(&c.topology, options.seconds, new_flow_frames(&c.topology))
                .with_context(|| format!("{}: all-new flows", c.topology.name))?;
            eprintln!(
                "  rep {}/{} {:<24} one flow {:>9.0} pps   all-new flows {:>9.0} pps",
                rep + 1,
                options.repetitions,
                c.topology.name,
                one.delivered,
                new.delivered
            );
            samples[i].one_flow.push(one.delivered);
            samples[i].new_flows.push(new.delivered);
        }
    }
    lab.teardown()?;
    report::report(options, &contenders, &samples, started)
}

/// What the bench created; removed by `teardown` (or on drop, if the bench fails).
struct Lab {
    netfn: PathBuf,
    dir: PathBuf,
    chains: Vec<String>,
    next: usize,
}

impl Lab {
    fn build(&mut self, rules: &[usize]) -> Result<Vec<Contender>> {
        let mut out = Vec::new();
        for mode in ["tc", "xdp", "kernel"] {
            out.push(self.forward(mode)?);
        }
        for &n in rules {
            for case in [Case::Last, Case::None] {
                for mode in ["tc", "xdp", "kernel"] {
                    out.push(self.firewall(mode, n, case)?);
                }
                for flavour in ["linear", "expert"] {
                    out.push(self.nft(flavour, n, case)?);
                }
            }
        }
        Ok(out)
    }

    /// A fresh chain name (at most 12 bytes).
    fn name(&mut self) -> String {
        self.next += 1;
        format!("bfw{}", self.next)
    }

    /// Writes and brings up a chain of one function; returns its topology and the up time (ms).
    fn up(&mut self, label: String, mode: &str, function: &str) -> Result<(Topology, f64)> {
        let chain = self.name();
        let file = self.dir.join(format!("{chain}.toml"));
        let text = format!(
            "[[chain]]\nname = \"{chain}\"\nfastpath = \"{mode}\"\n\n[chain.ingress]\naddress = \
             \"{SRC_ADDR}/24\"\n\n[chain.egress]\naddress = \"{DST_ADDR}/24\"\n\n\
             [[chain.function]]\nname = \"f1\"\n{function}\n"
        );
        std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
        let _ = netfn_command(&self.netfn).args(["down", &chain]).output();
        let file_arg = file.to_string_lossy().into_owned();
        let up_ms = timed_netfn(&self.netfn, &["up", &file_arg])?;
        self.chains.push(chain.clone());
        let src_ns = netfn_netns(&chain, "ingress");
        let topology = Topology {
            name: label,
            mode: "fw",
            functions: 1,
            src_mac: link_mac(&src_ns, "nf-out")?,
            next_mac: link_mac(&netfn_netns(&chain, "f1"), "nf-in")?,
            dst_ns: netfn_netns(&chain, "egress"),
            chain: Some(chain),
            src_ns,
            src_if: "nf-out".into(),
            src_addr: SRC_ADDR,
            dst_addr: DST_ADDR,
        };
        Ok((topology, up_ms))
    }

    fn forward(&mut self, mode: &str) -> Result<Contender> {
        let (topology, load_ms) = self.up(format!("forward-{mode}"), mode, "kind = \"forward\"")?;
        warm_up(&topology)
            .with_context(|| format!("{}: no traffic gets through", topology.name))?;
        Ok(Contender {
            kind: format!("forward-{mode}"),
            rules: 0,
            case: Case::None,
            topology,
            load_ms,
            swap_ms: None,
        })
    }

    fn firewall(&mut self, mode: &str, n: usize, case: Case) -> Result<Contender> {
        let rules_file = self.dir.join(format!("rules-{n}-{}.toml", case.name()));
        let src = SRC_ADDR.to_string();
        std::fs::write(&rules_file, rulesets::netfn_rules(n, case, &src))?;
        let function = format!(
            "kind = \"firewall\"\ndefault = \"{}\"\nrules_file = \"{}\"\n{CONNTRACK}",
            rulesets::default_action(case),
            rules_file.display()
        );
        let label = format!("fw-{mode} {n} {}", case.name());
        let (topology, load_ms) = self.up(label, mode, &function)?;
        warm_up(&topology)
            .with_context(|| format!("{}: no traffic gets through", topology.name))?;
        // The swap: the same number of rules, the measured one moved to another port and back.
        let swap_ms = if mode != "kernel" && case == Case::Last {
            Some(self.swap(&topology, &rules_file, n, &src)?)
        } else {
            None
        };
        Ok(Contender {
            kind: format!("fw-{mode}"),
            rules: n,
            case,
            topology,
            load_ms,
            swap_ms,
        })
    }

    /// Times `netfn apply` of a changed rule set of `n` rules on the chain of `t`, then puts the
    /// original back (untimed).
    fn swap(&self, t: &Topology, rules_file: &Path, n: usize, src: &str) -> Result<f64> {
        let chain = t.chain.as_deref().unwrap_or_default();
        let file = self.dir.join(format!("{chain}.toml"));
        let original = std::fs::read_to_string(&file)?;
        let changed_rules = rules_file.with_extension("changed.toml");
        let text = rulesets::netfn_rules(n, Case::Last, src).replace(
            &format!("dport = {PPS_PORT}\naction = \"accept\""),
            &format!("dport = {}\naction = \"accept\"", PPS_PORT + 1),
        );
        std::fs::write(&changed_rules, text)?;
        let changed = self.dir.join(format!("{chain}-changed.toml"));
        std::fs::write(
            &changed,
            original.replace(
                &rules_file.display().to_string(),
                &changed_rules.display().to_string(),
            ),
        )?;
        let took = timed_netfn(&self.netfn, &["apply", &changed.to_string_lossy()])?;
        timed_netfn(&self.netfn, &["apply", &file.to_string_lossy()])?;
        Ok(took)
    }

    fn nft(&mut self, flavour: &str, n: usize, case: Case) -> Result<Contender> {
        let label = format!("nft-{flavour} {n} {}", case.name());
        let (topology, _) = self.up(label, "kernel", "kind = \"forward\"")?;
        let chain = topology.chain.clone().unwrap_or_default();
        let src = SRC_ADDR.to_string();
        let ruleset = match flavour {
            "linear" => rulesets::nft_linear(n, case, &src),
            _ => rulesets::nft_expert(n, case, &src),
        };
        let path = self.dir.join(format!("{chain}.nft"));
        std::fs::write(&path, ruleset)?;
        let started = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", &netfn_netns(&chain, "f1"), "nft", "-f"])
            .arg(&path)
            .output()
            .context("run nft")?;
        if !out.status.success() {
            bail!(
                "nft -f {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        warm_up(&topology)
            .with_context(|| format!("{}: no traffic gets through", topology.name))?;
        Ok(Contender {
            kind: format!("nft-{flavour}"),
            rules: n,
            case,
            topology,
            load_ms,
            swap_ms: None,
        })
    }

    fn teardown(&mut self) -> Result<()> {
        let errors = super::down_chains(&self.netfn, &mut self.chains);
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

/// The median of samples.
fn med(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    median(&mut v)
}
