//! `cargo xtask bench validate`: how `netfn validate` scales with the size of its input. Chain
//! files of N chains and firewall rules files of N rules, each in two shapes: every entry
//! distinct (the file is valid), and every entry in conflict with another (chains whose
//! ingress and egress subnets overlap; rules each shadowed by the one before, so each draws a
//! warning). Reports the median wall and CPU time (the child's user + system time, which a
//! loaded machine does not inflate) of the release binary, and the per-entry cost of the
//! largest size against the smallest (1.0: linear).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{median, netfn_release, write_json};

pub struct Options {
    pub repetitions: usize,
    pub chains: Vec<usize>,
    pub rules: Vec<usize>,
}

#[derive(Serialize)]
struct Row {
    input: &'static str,
    shape: &'static str,
    entries: usize,
    wall_ms: f64,
    cpu_ms: f64,
    /// Problems `netfn validate` reported (errors and warnings).
    problems: usize,
}

pub fn run(options: &Options) -> Result<()> {
    let netfn = netfn_release()?;
    let dir = std::env::temp_dir().join(format!("netfn-bench-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let result = measure_all(&netfn, &dir, options);
    let _ = std::fs::remove_dir_all(&dir);
    let rows = result?;
    println!(
        "\n{:<8} {:<12} {:>8} {:>10} {:>10} {:>9}",
        "input", "shape", "entries", "wall ms", "cpu ms", "problems"
    );
    for r in &rows {
        println!(
            "{:<8} {:<12} {:>8} {:>10.0} {:>10.0} {:>9}",
            r.input, r.shape, r.entries, r.wall_ms, r.cpu_ms, r.problems
        );
    }
    println!("\nCPU per entry, largest size against smallest (1.0 = linear):");
    for input in ["chains", "rules"] {
        for shape in ["distinct", "conflicting"] {
            let mut same: Vec<&Row> = rows
                .iter()
                .filter(|r| r.input == input && r.shape == shape)
                .collect();
            same.sort_by_key(|r| r.entries);
            if let (Some(small), Some(large)) = (same.first(), same.last())
                && large.entries > small.entries
            {
                let per = |r: &Row| r.cpu_ms / r.entries as f64;
                println!(
                    "  {input} {shape}: {:.2}x ({} -> {})",
                    per(large) / per(small),
                    small.entries,
                    large.entries
                );
            }
        }
    }
    let path = write_json("validate", &rows)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn measure_all(netfn: &Path, dir: &Path, options: &Options) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &n in &options.chains {
        for (shape, conflicting) in [("distinct", false), ("conflicting", true)] {
            let file = dir.join(format!("chains-{shape}-{n}.toml"));
            std::fs::write(&file, chains(n, conflicting))?;
            rows.push(measure(
                netfn,
                &file,
                options.repetitions,
                ("chains", shape, n),
            )?);
        }
    }
    for &n in &options.rules {
        for (shape, conflicting) in [("distinct", false), ("conflicting", true)] {
            let rules_file = format!("rules-{shape}-{n}.toml");
            std::fs::write(dir.join(&rules_file), rules(n, conflicting))?;
            let file = dir.join(format!("firewall-{shape}-{n}.toml"));
            std::fs::write(&file, firewall_chain(&rules_file))?;
            rows.push(measure(
                netfn,
                &file,
                options.repetitions,
                ("rules", shape, n),
            )?);
        }
    }
    Ok(rows)
}

/// Median wall and CPU time of `netfn validate FILE` over `repetitions` runs.
fn measure(
    netfn: &Path,
    file: &PathBuf,
    repetitions: usize,
    (input, shape, entries): (&'static str, &'static str, usize),
) -> Result<Row> {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    let mut problems = 0;
    for _ in 0..repetitions.max(1) {
        let before = children_cpu_ms();
        let start = Instant::now();
        let out = Command::new(netfn)
            .arg("validate")
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", netfn.display()))?;
        wall.push(start.elapsed().as_secs_f64() * 1e3);
        cpu.push(children_cpu_ms() - before);
        let stderr = String::from_utf8_lossy(&out.stderr);
        problems = stderr
            .lines()
            .filter(|l| l.contains(": error: ") || l.contains(": warning: "))
            .count();
        // A distinct file must pass, a conflicting one must fail or warn for every entry:
        // otherwise the bench measured something else than it says.
        let expected = if shape == "distinct" {
            0
        } else {
            entries - usize::from(input == "rules")
        };
        if out.status.success() != (shape == "distinct" || input == "rules") || problems != expected
        {
            bail!(
                "netfn validate {}: exit {}, {problems} problem(s) where {expected} were expected:\n{}",
                file.display(),
                out.status,
                stderr.lines().take(5).collect::<Vec<_>>().join("\n")
            );
        }
    }
    println!(
        "  {input} {shape} {entries}: wall {:.0} ms, cpu {:.0} ms",
        median(&mut wall.clone()),
        median(&mut cpu.clone())
    );
    Ok(Row {
        input,
        shape,
        entries,
        wall_ms: median(&mut wall),
        cpu_ms: median(&mut cpu),
        problems,
    })
}

/// User + system time of the waited-for children so far, in milliseconds.
fn children_cpu_ms() -> f64 {
    // SAFETY: getrusage writes one struct rusage into the zeroed one we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return f64::NAN;
    }
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// `n` chains of one forward function; `conflicting`: each chain's egress subnet is its
/// ingress subnet (an error per chain).
fn chains(n: usize, conflicting: bool) -> String {
    let mut out = String::new();
    for i in 0..n {
        let (a, b) = (i / 256 % 256, i % 256);
        let hi = 10 + i / 65536;
        let egress = if conflicting {
            format!("{hi}.{a}.{b}.3/24")
        } else {
            format!("{}.{a}.{b}.2/24", hi + 100)
        };
        let _ = writeln!(
            out,
            "[[chain]]\nname = \"c{i}\"\n[chain.ingress]\naddress = \"{hi}.{a}.{b}.2/24\"\n\
             [chain.egress]\naddress = \"{egress}\"\n[[chain.function]]\nname = \"f1\"\n\
             kind = \"forward\"\n"
        );
    }
    out
}

/// `n` firewall rules; `conflicting`: the first takes all TCP to 10.2.0.0/16 and every later
/// one is a narrower TCP rule inside it (shadowed: a warning each).
fn rules(n: usize, conflicting: bool) -> String {
    let mut out = String::new();
    for i in 0..n {
        let port = 1 + i % 60_000;
        let rule = if conflicting && i == 0 {
            "proto = \"tcp\"\ndst = \"10.2.0.0/16\"".to_string()
        } else if conflicting {
            format!("proto = \"tcp\"\ndst = \"10.2.0.0/24\"\ndport = {port}")
        } else {
            let (a, b) = (i / 256, i % 256);
            format!(
                "proto = \"tcp\"\nsrc = \"172.{}.{}.{b}\"\ndport = {port}",
                16 + a / 256,
                a % 256
            )
        };
        let _ = writeln!(out, "[[rule]]\n{rule}\naction = \"accept\"\n");
    }
    out
}

fn firewall_chain(rules_file: &str) -> String {
    format!(
        "[[chain]]\nname = \"fw\"\nfastpath = \"tc\"\n[chain.ingress]\naddress = \"10.1.0.2/24\"\n\
         [chain.egress]\naddress = \"10.2.0.2/24\"\n[[chain.function]]\nname = \"fw1\"\n\
         kind = \"firewall\"\nrules_file = \"{rules_file}\"\n"
    )
}
