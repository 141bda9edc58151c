//! `cargo xtask bench deploy`: N forward functions per fast path, as one chain of N
//! (`--shape chain`) or N/10 chains of 10 in one file (`--shape chains`):
//! - the time of `netfn up`, of `netfn down`, of an `up` started right after that `down`
//!   (re-up: it stands behind the kernel freeing what `down` removed), and from the end of a
//!   `down` until the kernel had freed its namespaces (`netfn down --wait`, namespace by
//!   namespace);
//! - memory per function: /proc/meminfo's MemAvailable, Slab and Percpu before and after `up`
//!   (host-wide: other work on the host moves them too, so medians), the bytes of the chains'
//!   eBPF maps (`bytes_memlock` of every pinned map, per chain and per function), and the peak
//!   RSS of the `netfn up` process (no netfn process stays: the agent is off here);
//! - objects left after `down` (must be 0);
//! - with `--pps-seconds` > 0: the UDP pps through one chain of 10 with 99 other chains of 10
//!   up against with none ([`super::deploy_pps`]).
//!
//! Output: a table, target/bench/deploy.json. Every chain is the bench's own (`bd…`), taken
//! down by name; traffic stays between the chain's own namespaces.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{
    forward_chain_file, median, netfn_release, timed_netfn, timed_netfn_output, write_json,
};
use crate::util::netfn_netns_prefix;

/// Issue 14's goals: 1,000 functions up in at most 5 s in tc and xdp mode, either shape, and
/// kernel mode no slower than before (2.15 s).
const GOAL_FUNCTIONS: usize = 1000;
const GOAL_FASTPATH_MS: f64 = 5000.0;
const GOAL_KERNEL_MS: f64 = 2150.0;

#[derive(clap::Args)]
pub struct Options {
    /// Functions per measurement (with --shape chains: a multiple of 10).
    #[arg(short = 'n', long = "functions", value_delimiter = ',', default_values_t = vec![1000])]
    functions: Vec<usize>,
    /// Fast paths to measure.
    #[arg(long, alias = "modes", value_delimiter = ',', default_values_t = ["kernel", "tc", "xdp"].map(String::from))]
    fastpath: Vec<String>,
    /// `chain`: one chain of N functions; `chains`: N/10 chains of 10 in one file.
    #[arg(long, alias = "shapes", value_delimiter = ',', default_values_t = ["chain", "chains"].map(String::from))]
    shape: Vec<String>,
    /// Repetitions (interleaved over the setups); medians are reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seconds per pps window of the 1-vs-100-chains comparison (0: skip it).
    #[arg(long, default_value_t = 3.0)]
    pps_seconds: f64,
    /// Seconds between the 99 chains coming up and the pps window.
    #[arg(long, default_value_t = 10.0)]
    pps_settle: f64,
    /// Fast paths of the 1-vs-100-chains pps comparison.
    #[arg(long, value_delimiter = ',', default_values_t = ["tc".to_string()])]
    pps_fastpath: Vec<String>,
}

/// Median (and samples) of one figure.
#[derive(Serialize, Default, Clone)]
struct Figure {
    median: f64,
    samples: Vec<f64>,
}

impl Figure {
    fn of(mut samples: Vec<f64>) -> Figure {
        Figure {
            median: median(&mut samples),
            samples,
        }
    }
}

#[derive(Serialize)]
struct Record {
    fastpath: String,
    shape: String,
    functions: usize,
    chains: usize,
    repeats: usize,
    up_ms: Figure,
    down_ms: Figure,
    /// `up` started right after a plain `down` of the same chains.
    reup_after_down_ms: Figure,
    /// From the end of `down` until the kernel had freed the namespaces it removed.
    freed_after_ms: Figure,
    /// Per function, from /proc/meminfo before and after `up` (KiB).
    mem_available_drop_kib_per_function: Figure,
    slab_kib_per_function: Figure,
    percpu_kib_per_function: Figure,
    /// The chains' pinned eBPF maps: bytes_memlock per map name (all chains), per function.
    map_bytes: BTreeMap<String, u64>,
    map_bytes_per_function: f64,
    /// Peak RSS of the `netfn up` process (KiB).
    netfn_up_max_rss_kib: Figure,
    leftover_objects: usize,
}

/// One measurement: a file of chains and their names, and what was measured so far.
struct Setup {
    fastpath: String,
    shape: String,
    functions: usize,
    file: String,
    chains: Vec<String>,
    samples: BTreeMap<&'static str, Vec<f64>>,
    maps: BTreeMap<String, u64>,
    left: usize,
}

impl Setup {
    fn push(&mut self, what: &'static str, value: f64) {
        self.samples.entry(what).or_default().push(value);
    }

    fn figure(&self, what: &str) -> Figure {
        Figure::of(self.samples.get(what).cloned().unwrap_or_default())
    }
}

/// Namespaces, state files and pins left for `chain`.
pub(super) fn leftovers(chain: &str) -> usize {
    let prefix = netfn_netns_prefix(chain);
    let netns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0);
    let files = ["json", "lock"]
        .iter()
        .filter(|ext| Path::new(&format!("/run/netfn/chains/{chain}.{ext}")).exists())
        .count();
    let pins = usize::from(Path::new(&format!("/sys/fs/bpf/netfn/{chain}")).exists());
    netns + files + pins
}

/// Writes the file for `fastpath`, `shape` and `n` functions; returns its path and chain names.
pub(super) fn write_file(
    dir: &Path,
    fastpath: &str,
    shape: &str,
    n: usize,
) -> Result<(String, Vec<String>)> {
    let m = &fastpath[..1];
    let (chains, per_chain) = match shape {
        "chain" | "one" => (vec![format!("bd{m}{n}")], n),
        "chains" | "many" if n >= 10 && n.is_multiple_of(10) => {
            ((1..=n / 10).map(|i| format!("bd{m}{n}x{i}")).collect(), 10)
        }
        "chains" | "many" => bail!("--shape chains needs --functions in multiples of 10, not {n}"),
        other => bail!("unknown shape `{other}`: say chain or chains"),
    };
    let names: Vec<String> = (1..=per_chain).map(|i| format!("f{i}")).collect();
    let text: Vec<String> = chains
        .iter()
        .map(|c| forward_chain_file(c, 90, fastpath, &names))
        .collect();
    let file = dir.join(format!("{fastpath}-{shape}-{n}.toml"));
    std::fs::write(&file, text.join("\n"))?;
    Ok((file.to_string_lossy().into_owned(), chains))
}

/// `netfn down FILE --wait`: down's own time and the kernel's time to free the namespaces
/// after it (netfn's `kernel: freed N namespace(s) in MS ms` line).
pub(super) fn down_and_wait(netfn: &Path, file: &str) -> Result<(f64, f64)> {
    let (ms, stdout, _) = timed_netfn_output(netfn, &["down", file, "--wait", "--quiet"])?;
    let freed = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("kernel: freed ")?
                .split(" in ")
                .nth(1)?
                .split(" ms")
                .next()?
                .parse::<f64>()
                .ok()
        })
        .with_context(|| format!("netfn down --wait printed no freed line:\n{stdout}"))?;
    Ok((ms - freed, freed))
}

/// MemAvailable, Slab and Percpu of /proc/meminfo (KiB).
fn meminfo() -> Result<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .with_context(|| format!("/proc/meminfo has no {name}"))
    };
    Ok([field("MemAvailable:")?, field("Slab:")?, field("Percpu:")?])
}

/// bytes_memlock of every map pinned for `chains`, summed by map name.
fn map_bytes(chains: &[String]) -> BTreeMap<String, u64> {
    let mut bytes = BTreeMap::new();
    for chain in chains {
        let Ok(dir) = std::fs::read_dir(format!("/sys/fs/bpf/netfn/{chain}")) else {
            continue;
        };
        for pin in dir.flatten() {
            let Ok(out) = std::process::Command::new("bpftool")
                .args(["-j", "map", "show", "pinned"])
                .arg(pin.path())
                .output()
            else {
                continue;
            };
            // Programs and links are pinned there too: bpftool refuses them as maps.
            let Ok(map) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                continue;
            };
            if let (Some(name), Some(b)) = (map["name"].as_str(), map["bytes_memlock"].as_u64()) {
                *bytes.entry(name.to_string()).or_default() += b;
            }
        }
    }
    bytes
}

/// `netfn up FILE`: wall time (ms) and the process's peak RSS (KiB).
fn up_with_rss(netfn: &Path, file: &str) -> Result<(f64, f64)> {
    let started = std::time::Instant::now();
    let child = std::process::Command::new(netfn)
        .args(["up", file, "--quiet"])
        .env("NETFN_AGENT_AUTOSTART", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", netfn.display()))?;
    let pid = i32::try_from(child.id()).context("pid")?;
    let mut stderr = child.stderr.context("stderr")?;
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log)?;
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for our own child; status and usage are valid out-pointers.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        bail!("wait for netfn up: {}", std::io::Error::last_os_error());
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("netfn up {file} failed: {log}");
    }
    Ok((ms, usage.ru_maxrss as f64))
}

/// One repetition of one setup: up (memory before and after), down, re-up right away, down
/// --wait (the kernel's freeing time).
fn measure(netfn: &Path, s: &mut Setup) -> Result<()> {
    let before = meminfo()?;
    let (up, rss) = up_with_rss(netfn, &s.file)?;
    let after = meminfo()?;
    s.maps = map_bytes(&s.chains);
    let n = s.functions as f64;
    s.push("up", up);
    s.push("rss", rss);
    s.push("available", (before[0] - after[0]) / n);
    s.push("slab", (after[1] - before[1]) / n);
    s.push("percpu", (after[2] - before[2]) / n);
    s.push("down", timed_netfn(netfn, &["down", &s.file, "--quiet"])?);
    let reup = timed_netfn(netfn, &["up", &s.file, "--quiet"]);
    let (down, freed) = down_and_wait(netfn, &s.file)?;
    s.push("reup", reup?);
    s.push("down_wait", down);
    s.push("freed", freed);
    Ok(())
}

pub fn run(opts: &Options) -> Result<()> {
    let netfn = netfn_release()?;
    let dir = std::env::temp_dir().join(format!("netfn-bench-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut setups = Vec::new();
    for &n in &opts.functions {
        for fastpath in &opts.fastpath {
            for shape in &opts.shape {
                let (file, chains) = write_file(&dir, fastpath, shape, n)?;
                setups.push(Setup {
                    fastpath: fastpath.clone(),
                    shape: shape.clone(),
                    functions: n,
                    file,
                    chains,
                    samples: BTreeMap::new(),
                    maps: BTreeMap::new(),
                    left: 0,
                });
            }
        }
    }
    // Repeats interleave the setups, so that a slow minute of this shared host spreads over all.
    let mut failure = None;
    'outer: for r in 0..opts.repeats {
        for s in &mut setups {
            eprintln!(
                "bench deploy: {} {} {} (repeat {}/{})",
                s.fastpath,
                s.shape,
                s.functions,
                r + 1,
                opts.repeats
            );
            let result = measure(&netfn, s);
            if result.is_err() {
                // Whatever happened, the chains go (by name).
                let _ = super::down_chains(&netfn, &mut s.chains.clone());
            }
            s.left = s.left.max(s.chains.iter().map(|c| leftovers(c)).sum());
            if let Err(e) = result {
                failure = Some(e);
                break 'outer;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(e) = failure {
        return Err(e);
    }
    let records: Vec<Record> = setups
        .iter()
        .map(|s| {
            let map_total: u64 = s.maps.values().sum();
            Record {
                fastpath: s.fastpath.clone(),
                shape: s.shape.clone(),
                functions: s.functions,
                chains: s.chains.len(),
                repeats: opts.repeats,
                up_ms: s.figure("up"),
                down_ms: s.figure("down"),
                reup_after_down_ms: s.figure("reup"),
                freed_after_ms: s.figure("freed"),
                mem_available_drop_kib_per_function: s.figure("available"),
                slab_kib_per_function: s.figure("slab"),
                percpu_kib_per_function: s.figure("percpu"),
                map_bytes: s.maps.clone(),
                map_bytes_per_function: map_total as f64 / s.functions as f64,
                netfn_up_max_rss_kib: s.figure("rss"),
                leftover_objects: s.left,
            }
        })
        .collect();
    print_table(&records);
    let pps = if opts.pps_seconds > 0.0 {
        super::deploy_pps::run(
            &netfn,
            &opts.pps_fastpath,
            opts.pps_seconds,
            opts.pps_settle,
            opts.repeats,
        )?
    } else {
        Vec::new()
    };
    let path = write_json(
        "deploy",
        &serde_json::json!({ "deploy": records, "pps_one_vs_many_chains": pps }),
    )?;
    println!("wrote {}", path.display());
    if records.iter().any(|r| r.leftover_objects > 0) {
        bail!("down left objects behind (see the leftovers column)");
    }
    Ok(())
}

fn print_table(records: &[Record]) {
    println!(
        "{:>6}  {:>6}  {:>5}  {:>6}  {:>8}  {:>8}  {:>10}  {:>10}  {:>11}  {:>9}  {:>10}  {:>9}  {:>8}  {:>4}",
        "mode",
        "shape",
        "fns",
        "chains",
        "up ms",
        "down ms",
        "re-up ms",
        "freed ms",
        "avail KiB/f",
        "slab KiB/f",
        "percpu KiB/f",
        "maps B/f",
        "rss MiB",
        "left"
    );
    for r in records {
        println!(
            "{:>6}  {:>6}  {:>5}  {:>6}  {:>8.0}  {:>8.0}  {:>10.0}  {:>10.0}  {:>11.1}  {:>9.1}  {:>10.2}  {:>9.0}  {:>8.1}  {:>4}",
            r.fastpath,
            r.shape,
            r.functions,
            r.chains,
            r.up_ms.median,
            r.down_ms.median,
            r.reup_after_down_ms.median,
            r.freed_after_ms.median,
            r.mem_available_drop_kib_per_function.median,
            r.slab_kib_per_function.median,
            r.percpu_kib_per_function.median,
            r.map_bytes_per_function,
            r.netfn_up_max_rss_kib.median / 1024.0,
            r.leftover_objects
        );
    }
    println!(
        "(median of {} runs each, interleaved; times include starting the netfn process; re-up: \
         an up right after a plain down of the same chains; freed: from the end of down until \
         the kernel had freed its namespaces; memory per function from /proc/meminfo around up, \
         host-wide; maps: bytes_memlock of the chains' pinned maps; rss: the netfn up process)",
        records.first().map_or(0, |r| r.repeats)
    );
    for r in records.iter().filter(|r| r.functions == GOAL_FUNCTIONS) {
        let goal = if r.fastpath == "kernel" {
            GOAL_KERNEL_MS
        } else {
            GOAL_FASTPATH_MS
        };
        println!(
            "goal: {} {} of {GOAL_FUNCTIONS} functions up in <= {goal:.0} ms: {:.0} ms, {}",
            r.fastpath,
            r.shape,
            r.up_ms.median,
            if r.up_ms.median <= goal {
                "met"
            } else {
                "missed"
            }
        );
    }
    for r in records {
        let maps: Vec<String> = r
            .map_bytes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "maps {} {} ({} chain(s)): {}",
            r.fastpath,
            r.shape,
            r.chains,
            maps.join(", ")
        );
    }
}
