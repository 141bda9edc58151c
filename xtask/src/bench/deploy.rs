//! `cargo xtask bench deploy`: how long `netfn up` and `netfn down` take for chains of N forward
//! functions, and how many objects `down` leaves behind (must be 0).

use std::path::Path;

use anyhow::{Result, bail};
use serde::Serialize;

use super::{forward_chain_file, median, netfn_release, timed_netfn, write_json};

const REPEATS: usize = 3;

#[derive(Serialize)]
struct Record {
    functions: usize,
    repeats: usize,
    up_total_ms: f64,
    up_per_function_us: f64,
    down_total_ms: f64,
    down_per_function_us: f64,
    up_samples_ms: Vec<f64>,
    down_samples_ms: Vec<f64>,
    leftover_objects: usize,
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

pub fn run(sizes: &[usize]) -> Result<()> {
    let netfn = netfn_release()?;
    let dir = std::env::temp_dir().join(format!("netfn-bench-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut records = Vec::new();
    println!(
        "{:>9}  {:>10}  {:>12}  {:>10}  {:>12}  {:>9}",
        "functions", "up (ms)", "up/fn (us)", "down (ms)", "down/fn (us)", "leftovers"
    );
    for &n in sizes {
        let chain = format!("bd{}", n);
        let file = dir.join(format!("{chain}.toml"));
        let names: Vec<String> = (1..=n).map(|i| format!("f{i}")).collect();
        std::fs::write(&file, forward_chain_file(&chain, 90, "kernel", &names))?;
        let file_arg = file.to_string_lossy().into_owned();
        let (mut ups, mut downs, mut left) = (Vec::new(), Vec::new(), 0);
        for _ in 0..REPEATS {
            let up = timed_netfn(&netfn, &["up", &file_arg]);
            // Always take it down, even if up failed.
            let down = timed_netfn(&netfn, &["down", &chain]);
            ups.push(up?);
            downs.push(down?);
            left = left.max(leftovers(&chain));
        }
        let (up, down) = (median(&mut ups), median(&mut downs));
        let r = Record {
            functions: n,
            repeats: REPEATS,
            up_total_ms: up,
            up_per_function_us: up * 1e3 / n as f64,
            down_total_ms: down,
            down_per_function_us: down * 1e3 / n as f64,
            up_samples_ms: ups,
            down_samples_ms: downs,
            leftover_objects: left,
        };
        println!(
            "{:>9}  {:>10.1}  {:>12.1}  {:>10.1}  {:>12.1}  {:>9}",
            n,
            r.up_total_ms,
            r.up_per_function_us,
            r.down_total_ms,
            r.down_per_function_us,
            r.leftover_objects
        );
        records.push(r);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("(median of {REPEATS} runs each; times include starting the netfn process)");
    let path = write_json("deploy", &records)?;
    println!("wrote {}", path.display());
    if records.iter().any(|r| r.leftover_objects > 0) {
        bail!("netfn down left objects behind");
    }
    Ok(())
}
