//! `cargo xtask bench deploy`: how long `netfn up` and `netfn down` take for N forward
//! functions in each mode, as one chain and as N/10 chains of 10 in one file; how long the
//! kernel then takes to free the namespaces (`netfn down --wait`); and how many objects `down`
//! leaves behind (must be 0).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{
    forward_chain_file, median, netfn_release, timed_netfn, timed_netfn_output, write_json,
};

const REPEATS: usize = 3;

/// Issue 14's goals: 1,000 functions up in at most 5 s in tc and xdp mode, either shape, and
/// kernel mode no slower than before (2.15 s).
const GOAL_FUNCTIONS: usize = 1000;
const GOAL_FASTPATH_MS: f64 = 5000.0;
const GOAL_KERNEL_MS: f64 = 2150.0;

#[derive(clap::Args)]
pub struct Options {
    /// Functions per measurement (with --shapes many: a multiple of 10).
    #[arg(long = "functions", value_delimiter = ',', default_values_t = vec![100, 1000])]
    functions: Vec<usize>,
    /// Fast paths to measure.
    #[arg(long, value_delimiter = ',', default_values_t = ["kernel", "tc", "xdp"].map(String::from))]
    modes: Vec<String>,
    /// `one`: one chain of N functions; `many`: N/10 chains of 10 in one file.
    #[arg(long, value_delimiter = ',', default_values_t = ["one", "many"].map(String::from))]
    shapes: Vec<String>,
}

#[derive(Serialize)]
struct Record {
    mode: String,
    shape: String,
    functions: usize,
    chains: usize,
    repeats: usize,
    up_total_ms: f64,
    up_per_function_us: f64,
    down_total_ms: f64,
    /// From the end of `down` until the kernel had freed the namespaces it removed (the
    /// `net_namespace` slab count, as `netfn down --wait` watches it).
    freed_after_ms: f64,
    up_samples_ms: Vec<f64>,
    down_samples_ms: Vec<f64>,
    freed_after_samples_ms: Vec<f64>,
    leftover_objects: usize,
}

/// One measurement: a file of chains and their names.
struct Setup {
    mode: String,
    shape: String,
    functions: usize,
    file: String,
    chains: Vec<String>,
    ups: Vec<f64>,
    downs: Vec<f64>,
    freed: Vec<f64>,
    left: usize,
}

/// Namespaces, state files and pins left for `chain`.
fn leftovers(chain: &str) -> usize {
    let prefix = format!("nf-{chain}-");
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

/// Writes the file for `mode`, `shape` and `n` functions; returns its path and chain names.
fn write_file(dir: &Path, mode: &str, shape: &str, n: usize) -> Result<(String, Vec<String>)> {
    let m = &mode[..1];
    let (chains, per_chain) = match shape {
        "one" => (vec![format!("bd{m}{n}")], n),
        "many" if n >= 10 && n.is_multiple_of(10) => {
            ((1..=n / 10).map(|i| format!("bd{m}{n}x{i}")).collect(), 10)
        }
        "many" => bail!("--shapes many needs --functions in multiples of 10, not {n}"),
        other => bail!("unknown shape `{other}`: say one or many"),
    };
    let names: Vec<String> = (1..=per_chain).map(|i| format!("f{i}")).collect();
    let text: Vec<String> = chains
        .iter()
        .map(|c| forward_chain_file(c, 90, mode, &names))
        .collect();
    let file = dir.join(format!("{mode}-{shape}-{n}.toml"));
    std::fs::write(&file, text.join("\n"))?;
    Ok((file.to_string_lossy().into_owned(), chains))
}

/// `netfn down FILE --wait`: down's own time and the kernel's time to free the namespaces
/// after it (netfn's `kernel: freed N namespace(s) in MS ms` line).
fn down_and_wait(netfn: &Path, file: &str) -> Result<(f64, f64)> {
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

pub fn run(opts: &Options) -> Result<()> {
    let netfn = netfn_release()?;
    let dir = std::env::temp_dir().join(format!("netfn-bench-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut setups = Vec::new();
    for &n in &opts.functions {
        for mode in &opts.modes {
            for shape in &opts.shapes {
                let (file, chains) = write_file(&dir, mode, shape, n)?;
                setups.push(Setup {
                    mode: mode.clone(),
                    shape: shape.clone(),
                    functions: n,
                    file,
                    chains,
                    ups: Vec::new(),
                    downs: Vec::new(),
                    freed: Vec::new(),
                    left: 0,
                });
            }
        }
    }
    // Repeats interleave the setups, so that a slow minute of this shared host spreads over all.
    for _ in 0..REPEATS {
        for s in &mut setups {
            let up = timed_netfn(&netfn, &["up", &s.file]);
            // Always take it down, even if up failed; --wait: the next up starts clean.
            let down = down_and_wait(&netfn, &s.file);
            s.ups.push(up?);
            let (down, freed) = down?;
            s.downs.push(down);
            s.freed.push(freed);
            s.left = s.left.max(s.chains.iter().map(|c| leftovers(c)).sum());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{:>6}  {:>5}  {:>9}  {:>6}  {:>9}  {:>10}  {:>9}  {:>16}  {:>9}",
        "mode",
        "shape",
        "functions",
        "chains",
        "up (ms)",
        "up/fn (us)",
        "down (ms)",
        "freed after (ms)",
        "leftovers"
    );
    let mut records = Vec::new();
    for mut s in setups {
        let (up, down, freed) = (
            median(&mut s.ups),
            median(&mut s.downs),
            median(&mut s.freed),
        );
        let r = Record {
            mode: s.mode,
            shape: s.shape,
            functions: s.functions,
            chains: s.chains.len(),
            repeats: REPEATS,
            up_total_ms: up,
            up_per_function_us: up * 1e3 / s.functions as f64,
            down_total_ms: down,
            freed_after_ms: freed,
            up_samples_ms: s.ups,
            down_samples_ms: s.downs,
            freed_after_samples_ms: s.freed,
            leftover_objects: s.left,
        };
        println!(
            "{:>6}  {:>5}  {:>9}  {:>6}  {:>9.1}  {:>10.1}  {:>9.1}  {:>16.1}  {:>9}",
            r.mode,
            r.shape,
            r.functions,
            r.chains,
            r.up_total_ms,
            r.up_per_function_us,
            r.down_total_ms,
            r.freed_after_ms,
            r.leftover_objects
        );
        records.push(r);
    }
    println!(
        "(median of {REPEATS} runs each, interleaved; times include starting the netfn process; \
         freed after: from the end of down until the kernel had freed its namespaces)"
    );
    for r in records.iter().filter(|r| r.functions == GOAL_FUNCTIONS) {
        let goal = if r.mode == "kernel" {
            GOAL_KERNEL_MS
        } else {
            GOAL_FASTPATH_MS
        };
        println!(
            "goal: {} {} of {GOAL_FUNCTIONS} functions up in <= {goal:.0} ms: {:.0} ms, {}",
            r.mode,
            r.shape,
            r.up_total_ms,
            if r.up_total_ms <= goal {
                "met"
            } else {
                "missed"
            }
        );
    }
    let path = write_json("deploy", &records)?;
    println!("wrote {}", path.display());
    if records.iter().any(|r| r.leftover_objects > 0) {
        bail!("netfn down left objects behind");
    }
    Ok(())
}
