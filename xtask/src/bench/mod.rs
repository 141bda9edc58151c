//! `cargo xtask bench …`: measurements, never tests. Each prints a table and writes
//! target/bench/NAME.json.

pub(crate) mod agent;
pub(crate) mod chain;
mod deploy;
mod deploy_pps;
mod firewall;
mod lb;
mod pps_chart;
mod prog_cost;
mod validate;
pub(crate) mod vpn;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;

use crate::util;

#[derive(Subcommand)]
pub enum Bench {
    /// Scrape time of the agent's /metrics (1,000 functions) and `apply` insert time.
    Agent(agent::AgentBench),
    /// Time `netfn up` and `netfn down` of N forward functions per mode, as one chain and as
    /// N/10 chains of 10, and how long the kernel takes to free the namespaces after down.
    Deploy(deploy::Options),
    /// UDP pps, TCP throughput and latency: a bare veth pair vs chains of forward functions in
    /// kernel, tc and xdp modes, interleaved repetitions (target/bench/chain.json, chain.png).
    Chain {
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
        /// Seconds per UDP pps and TCP window.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Chain lengths to measure.
        #[arg(long = "functions", value_delimiter = ',', default_values_t = vec![1, 2, 3])]
        functions: Vec<usize>,
        /// Skip the iperf3 runs (TCP throughput and the UDP cross-check).
        #[arg(long)]
        no_iperf: bool,
    },
    /// UDP pps through one firewall function with 10…100,000 rules (one flow and all-new flows),
    /// tc and xdp and its kernel form, against a forward function and nftables written linearly
    /// and as sets; load and swap times (target/bench/firewall.json, firewall.png).
    Firewall {
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
        /// Seconds per pps window.
        #[arg(long, default_value_t = 1.5)]
        seconds: f64,
        /// Rule counts to measure (each at least 2).
        #[arg(long = "rules", value_delimiter = ',', default_values_t = vec![10, 1000, 10000, 100000])]
        rules: Vec<usize>,
    },
    /// UDP pps through one load balancer with 2…4,096 backends (few flows and all-new flows),
    /// tc and xdp, against a forward function and the nftables DNAT baseline (its kernel form);
    /// table build and swap time (target/bench/lb.json, lb.png).
    Lb {
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
        /// Seconds per pps window.
        #[arg(long, default_value_t = 1.5)]
        seconds: f64,
        /// Backend counts to measure (1 to 4,096).
        #[arg(long = "backends", value_delimiter = ',', default_values_t = vec![2, 16, 256, 4096])]
        backends: Vec<usize>,
        /// Fast paths to measure (tc, xdp, kernel; kernel is the nftables baseline), e.g. for a
        /// quicker look at one of them.
        #[arg(long = "modes", value_delimiter = ',', default_values_t = lb::MODES.map(String::from).to_vec())]
        modes: Vec<String>,
    },
    /// `netfn validate` of chain files of N chains and firewall rules files of N rules, valid
    /// and with every entry in conflict: wall and CPU time (target/bench/validate.json).
    Validate {
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
        /// Chain counts to measure.
        #[arg(long = "chains", value_delimiter = ',', default_values_t = vec![1000, 10000])]
        chains: Vec<usize>,
        /// Firewall rule counts to measure.
        #[arg(long = "rules", value_delimiter = ',', default_values_t = vec![10000, 100000])]
        rules: Vec<usize>,
    },
    /// iperf3 TCP (1 and 4 streams), 60-byte UDP pps and UDP round trips (idle and loaded)
    /// through netfn's WireGuard endpoint to a wireguard-go peer and to another netfn endpoint,
    /// against a wireguard-go pair and a bare veth, with CPU per Gbit (target/bench/vpn.json,
    /// vpn.png).
    Vpn {
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// The chains' fast path: tc, xdp or kernel.
        #[arg(long, default_value = "tc")]
        fastpath: String,
        /// Also measure netfn's tunnels on GotaTun's own device (`userspace = "gotatun"`),
        /// side by side with the default batched device.
        #[arg(long)]
        also_gotatun: bool,
        /// netfn's batched endpoints' `receive_moderation_us` (0 = off); netfn's default (100)
        /// unless given.
        #[arg(long, value_name = "US")]
        receive_moderation_us: Option<u16>,
        /// Only these tests (comma-separated), e.g. `--tests tcp1-reverse` to look at one
        /// direction; all by default. The goals are judged on the tests run.
        #[arg(long, value_enum, value_delimiter = ',', value_name = "TEST,…")]
        tests: Vec<vpn::Test>,
        /// The steady load beside the loaded round trips (`latency-loaded`), datagrams a
        /// second: how a tunnel's latency changes with its load.
        #[arg(long, value_name = "PPS", default_value_t = vpn::latency::LOAD_PPS,
              value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        latency_load_pps: u32,
    },
}

pub fn run(which: Bench) -> Result<()> {
    match which {
        Bench::Vpn {
            repetitions,
            seconds,
            fastpath,
            also_gotatun,
            receive_moderation_us,
            tests,
            latency_load_pps,
        } => vpn::run(&vpn::Options {
            repetitions,
            seconds,
            fastpath,
            also_gotatun,
            receive_moderation_us,
            tests,
            latency_load_pps,
        }),
        Bench::Firewall {
            repetitions,
            seconds,
            rules,
        } => firewall::run(&firewall::Options {
            repetitions,
            seconds,
            rules,
        }),
        Bench::Lb {
            repetitions,
            seconds,
            backends,
            modes,
        } => lb::run(&lb::Options {
            repetitions,
            seconds,
            backends,
            modes,
        }),
        Bench::Validate {
            repetitions,
            chains,
            rules,
        } => validate::run(&validate::Options {
            repetitions,
            chains,
            rules,
        }),
        Bench::Agent(opts) => agent::run(&opts),
        Bench::Deploy(opts) => deploy::run(&opts),
        Bench::Chain {
            repetitions,
            seconds,
            functions,
            no_iperf,
        } => chain::run(&chain::Options {
            repetitions,
            seconds,
            functions,
            no_iperf,
        }),
    }
}

/// Builds the release `netfn` (with the eBPF object embedded) and returns its path.
pub fn netfn_release() -> Result<PathBuf> {
    crate::flow::ensure_built(crate::flow::Profile::Release)
}

/// A chain file `name`: endpoints 10.NET.1.2/24 and 10.NET.2.2/24 (inside the chain's own
/// namespaces only), and one forward function per name.
pub fn forward_chain_file(name: &str, net: u8, fastpath: &str, functions: &[String]) -> String {
    let mut s = format!(
        "[[chain]]\nname = \"{name}\"\nfastpath = \"{fastpath}\"\n\n[chain.ingress]\naddress = \"10.{net}.1.2/24\"\n\n\
         [chain.egress]\naddress = \"10.{net}.2.2/24\"\n"
    );
    for f in functions {
        s.push_str(&format!(
            "\n[[chain.function]]\nname = \"{f}\"\nkind = \"forward\"\n"
        ));
    }
    s
}

/// Runs `netfn ARGS…` (with no host agent: benchmarks measure netfn alone) and returns its
/// wall time in milliseconds; fails with netfn's stderr.
pub fn timed_netfn(netfn: &std::path::Path, args: &[&str]) -> Result<f64> {
    timed_netfn_log(netfn, args).map(|(ms, _)| ms)
}

/// [`timed_netfn`], also returning what netfn wrote to stderr (its log, as `--log` asks).
pub fn timed_netfn_log(netfn: &std::path::Path, args: &[&str]) -> Result<(f64, String)> {
    timed_netfn_output(netfn, args).map(|(ms, _, log)| (ms, log))
}

/// [`timed_netfn`], also returning what netfn wrote to stdout and to stderr.
pub fn timed_netfn_output(netfn: &std::path::Path, args: &[&str]) -> Result<(f64, String, String)> {
    let start = std::time::Instant::now();
    let out = std::process::Command::new(netfn)
        .args(args)
        .env("NETFN_AGENT_AUTOSTART", "0")
        .output()
        .with_context(|| format!("run {}", netfn.display()))?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        anyhow::bail!(
            "netfn {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        ms,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The median of the samples (sorts them).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    match samples.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => samples[n / 2],
        n => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
    }
}

/// Writes target/bench/NAME.json. A report that is an object gets the code it measured first,
/// as `"commit"` (see [`source_commit`]): a number is then traced to its code without a note.
pub fn write_json<T: Serialize>(name: &str, records: &T) -> Result<PathBuf> {
    let dir = util::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let json = if serde_json::to_value(records)?.is_object() {
        serde_json::to_vec_pretty(&WithCommit {
            commit: source_commit(),
            report: records,
        })?
    } else {
        serde_json::to_vec_pretty(records)?
    };
    std::fs::write(&path, json).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// A report with the commit of the code it measured before its own fields.
#[derive(Serialize)]
struct WithCommit<'a, T: Serialize> {
    commit: Option<String>,
    #[serde(flatten)]
    report: &'a T,
}

/// The workspace's commit, `-dirty` when its tracked files have changes (`git describe --always
/// --dirty`); `None` outside a git checkout.
fn source_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .current_dir(util::workspace_root())
        .output()
        .ok()?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}

/// Writes `svg` as target/bench/NAME.svg and, where rsvg-convert is installed, NAME.png;
/// returns the files written.
pub fn write_chart(name: &str, svg: &str) -> Result<Vec<PathBuf>> {
    let dir = util::workspace_root().join("target/bench");
    let svg_path = dir.join(format!("{name}.svg"));
    std::fs::write(&svg_path, svg).with_context(|| format!("write {}", svg_path.display()))?;
    let mut written = vec![svg_path.clone()];
    if util::have("rsvg-convert") {
        let png = dir.join(format!("{name}.png"));
        util::run(
            std::process::Command::new("rsvg-convert")
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

/// The running kernel's release, for a report.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `1,2,3`: a list option as a command line writes it.
pub fn comma_list(values: &[usize]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `netfn down` for every chain of `chains` (emptying it); returns what failed.
pub fn down_chains(netfn: &std::path::Path, chains: &mut Vec<String>) -> Vec<String> {
    let mut errors = Vec::new();
    for chain in std::mem::take(chains) {
        match std::process::Command::new(netfn)
            .args(["down", &chain])
            .env("NETFN_AGENT_AUTOSTART", "0")
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => errors.push(format!(
                "netfn down {chain}: {}",
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => errors.push(format!("netfn down {chain}: {e}")),
        }
    }
    errors
}

/// Ok when a teardown met no error, else one error listing them all.
pub fn cleanup_result(errors: &[String]) -> Result<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("cleanup failed:\n  {}", errors.join("\n  "))
    }
}

/// Says which report and chart files a bench wrote (a chart that failed is a warning).
pub fn print_written(json: &std::path::Path, chart: Result<Vec<PathBuf>>) {
    println!("\nwrote {}", json.display());
    match chart {
        Ok(paths) => {
            for p in paths {
                println!("wrote {}", p.display());
            }
        }
        Err(e) => eprintln!("chart: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_report_gets_the_commit_first_and_keeps_its_fields_in_order() {
        #[derive(Serialize)]
        struct Report {
            bench: &'static str,
            repetitions: u32,
        }
        let report = Report {
            bench: "vpn",
            repetitions: 3,
        };
        let with = WithCommit {
            commit: Some("58a72de0c1b2".into()),
            report: &report,
        };
        assert_eq!(
            serde_json::to_string(&with).unwrap(),
            r#"{"commit":"58a72de0c1b2","bench":"vpn","repetitions":3}"#
        );
    }
}
