//! `cargo xtask fuzz`: the libFuzzer targets of fuzz/ (issue #13), each for a while.
//!
//! The targets feed raw bytes to the chain-file parser and validator and to every kind's settings
//! parser; an input that panics fails the run. fuzz/ is a cargo-fuzz project with its own
//! workspace, built with nightly. Each target starts from its committed corpus
//! (fuzz/corpus/TARGET, read only) and writes what it finds to fuzz/target/corpus/TARGET, so a
//! run never changes the committed files; a crash lands in fuzz/artifacts/TARGET/.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{ebpf, setup, util};

/// The fuzz project, relative to the workspace root.
const FUZZ_DIR: &str = "fuzz";

/// How the targets are built (the same for `build` and `run`, or `run` builds again):
/// - no sanitizer: the targets run safe Rust (the parsers, serde, toml), where AddressSanitizer
///   has nothing to find, and it slows both the build and every execution; a panic is the
///   failure these targets look for;
/// - 16 codegen units instead of cargo-fuzz's 1, so that rustc splits each crate's
///   optimization over the cores: the build is most of CI's fuzzing time.
const BUILD_FLAGS: [&str; 4] = ["--sanitizer", "none", "--codegen-units", "16"];

/// Seconds one input may take before libFuzzer calls it a hang (and fails the run).
const INPUT_TIMEOUT_S: u64 = 20;

/// Lines shown from a failing target's output: after its panic message, and at its end.
const PANIC_LINES: usize = 8;
const TAIL_LINES: usize = 12;

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds each target runs.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub seconds: u64,

    /// Run only this target (see fuzz/Cargo.toml; default: every target).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,

    /// Build the targets and stop (CI builds them at idle priority while the tests run).
    #[arg(long)]
    pub build_only: bool,
}

/// What one target's run showed.
struct Outcome {
    target: String,
    runs: Option<u64>,
    corpus: Option<u64>,
    /// Seconds fuzzed (libFuzzer's count; the build check before it is not included).
    seconds: u64,
    /// `None`: no input failed.
    failure: Option<Failure>,
}

struct Failure {
    /// What libFuzzer saved the failing input as (crash-…, timeout-…, oom-…), if it said.
    artifact: Option<String>,
    /// The lines worth showing: the panic and libFuzzer's last words.
    excerpt: Vec<String>,
    log: PathBuf,
}

pub fn run(args: FuzzArgs) -> Result<()> {
    setup::cargo_fuzz()?;
    let root = util::workspace_root();
    let fuzz_dir = root.join(FUZZ_DIR);
    let all = list_targets(&root)?;
    let targets = match &args.target {
        None => all,
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target `{t}`; the targets are: {}", all.join(", ")),
    };

    println!("== building the fuzz targets (cargo +nightly fuzz build)");
    util::run(cargo_fuzz(&root).arg("build").args(BUILD_FLAGS)).context(
        "building the fuzz targets failed (is the nightly toolchain installed? `cargo xtask \
         setup` checks)",
    )?;
    if args.build_only {
        println!("== built {}", targets.join(", "));
        return Ok(());
    }

    // One target per core at a time (libFuzzer runs one process per target): on CI's 2 cores
    // the five targets take three rounds instead of five.
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let work = fuzz_dir.join("target");
    let mut outcomes = Vec::new();
    for round in targets.chunks(jobs) {
        println!("== fuzzing {} for {} s", round.join(", "), args.seconds);
        let results: Vec<Result<Outcome>> = std::thread::scope(|s| {
            let running: Vec<_> = round
                .iter()
                .map(|target| {
                    let (root, work) = (&root, &work);
                    s.spawn(move || {
                        let tmp = work.join("tmp").join(target);
                        std::fs::create_dir_all(&tmp)
                            .with_context(|| format!("cannot create {}", tmp.display()))?;
                        let outcome = fuzz_one(root, target, args.seconds, &tmp);
                        // The target's scratch files (a rules file per input): nothing to keep.
                        let _ = std::fs::remove_dir_all(&tmp);
                        outcome
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a fuzz thread panicked")))
                })
                .collect()
        });
        for outcome in results {
            let outcome = outcome?;
            println!("{}", summary(&outcome));
            if let Some(f) = &outcome.failure {
                println!("--- from {}:", f.log.display());
                for l in &f.excerpt {
                    println!("{l}");
                }
                println!("---");
            }
            outcomes.push(outcome);
        }
    }

    println!("== fuzz summary");
    for o in &outcomes {
        println!("{}", summary(o));
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let f = o.failure.as_ref()?;
            Some(match &f.artifact {
                Some(a) => format!(
                    "{}: the input {a} fails it (reproduce: cargo +nightly fuzz run {} {a}; \
                     log: {})",
                    o.target,
                    o.target,
                    f.log.display()
                ),
                None => format!("{}: failed, see {}", o.target, f.log.display()),
            })
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} fuzz target(s) failed; make each failing input a regression test and fix it:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz` in the workspace root, with nothing of the stable cargo that started
/// xtask leaking in (cargo-fuzz sets its own RUSTFLAGS and target dir).
fn cargo_fuzz(root: &Path) -> Command {
    let mut cmd = util::cargo();
    cmd.current_dir(root)
        .env("PATH", ebpf::path_with_cargo_bin())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .args(["+nightly", "fuzz"]);
    cmd
}

/// The targets fuzz/Cargo.toml declares (`cargo fuzz list`).
fn list_targets(root: &Path) -> Result<Vec<String>> {
    let out = cargo_fuzz(root)
        .arg("list")
        .output()
        .context("cannot run `cargo +nightly fuzz list`")?;
    if !out.status.success() {
        bail!(
            "`cargo +nightly fuzz list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let targets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if targets.is_empty() {
        bail!("fuzz/Cargo.toml declares no fuzz target");
    }
    Ok(targets)
}

/// Runs one target for `seconds`, its libFuzzer output into fuzz/target/logs/TARGET.log.
fn fuzz_one(root: &Path, target: &str, seconds: u64, tmp: &Path) -> Result<Outcome> {
    let fuzz_dir = root.join(FUZZ_DIR);
    let seeds = fuzz_dir.join("corpus").join(target);
    let found = fuzz_dir.join("target").join("corpus").join(target);
    let logs = fuzz_dir.join("target").join("logs");
    for dir in [&seeds, &found, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let dict = fuzz_dir.join("chain.dict");

    // libFuzzer adds new inputs to its first corpus directory only: the scratch one.
    let mut cmd = cargo_fuzz(root);
    cmd.args(["run", target])
        .args(BUILD_FLAGS)
        .arg(&found)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg(format!("-dict={}", dict.display()))
        .arg("-print_final_stats=1")
        // The scratch files of the targets (see fuzz/src/lib.rs).
        .env("TMPDIR", tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;

    // libFuzzer (and the panic) report on stderr, cargo-fuzz's hints go to stdout: both into
    // the log, stderr first.
    let stdout = child.stdout.take();
    let copy_stdout = std::thread::spawn(move || {
        stdout
            .map(|s| BufReader::new(s).lines().map_while(Result::ok).collect())
            .unwrap_or_else(Vec::<String>::new)
    });
    let lines: Vec<String> = child
        .stderr
        .take()
        .map(|s| BufReader::new(s).lines().map_while(Result::ok).collect())
        .unwrap_or_default();
    let status = child
        .wait()
        .with_context(|| format!("waiting for the fuzz target {target}"))?;
    let hints = copy_stdout.join().unwrap_or_default();
    let elapsed = started.elapsed().as_secs();
    write_log(&log_path, &lines, &hints)?;

    let failure = (!status.success()).then(|| Failure {
        artifact: artifact(&lines),
        excerpt: excerpt(&lines),
        log: log_path,
    });
    Ok(Outcome {
        target: target.to_string(),
        runs: runs(&lines),
        corpus: corpus_size(&lines),
        seconds: fuzzed_seconds(&lines).unwrap_or(elapsed),
        failure,
    })
}

fn write_log(path: &Path, stderr: &[String], stdout: &[String]) -> Result<()> {
    use std::io::Write;
    let mut f = File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let separator = "--- cargo fuzz's output:".to_string();
    for l in stderr.iter().chain([&separator]).chain(stdout) {
        writeln!(f, "{l}").with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// A failed run's lines worth showing: the panic message (the first `panicked at` line and
/// a few after it), then the end of libFuzzer's output (what it saved, its verdict).
fn excerpt(stderr: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let panic = stderr.iter().position(|l| l.contains("panicked at"));
    if let Some(at) = panic {
        out.extend(stderr.iter().skip(at).take(PANIC_LINES).cloned());
        out.push("…".to_string());
    }
    let from = stderr
        .len()
        .saturating_sub(TAIL_LINES)
        .max(panic.map_or(0, |at| at + PANIC_LINES));
    out.extend(stderr.iter().skip(from).cloned());
    out
}

/// Inputs executed: libFuzzer's final `stat::number_of_executed_units: N`, or `Done N runs`.
fn runs(lines: &[String]) -> Option<u64> {
    let stat = lines.iter().rev().find_map(|l| {
        l.strip_prefix("stat::number_of_executed_units:")
            .and_then(|n| n.trim().parse().ok())
    });
    stat.or_else(|| {
        lines.iter().rev().find_map(|l| {
            l.strip_prefix("Done ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
    })
}

/// Seconds fuzzed: libFuzzer's `Done N runs in S second(s)`.
fn fuzzed_seconds(lines: &[String]) -> Option<u64> {
    lines.iter().rev().find_map(|l| {
        let rest = l.strip_prefix("Done ")?;
        let at = rest.find(" runs in ")?;
        rest[at + " runs in ".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Inputs in the corpus at the end: the last status line's `corp: N/SIZE`.
fn corpus_size(lines: &[String]) -> Option<u64> {
    lines.iter().rev().find_map(|l| {
        let rest = &l[l.find(" corp: ")? + " corp: ".len()..];
        rest.split('/').next()?.trim().parse().ok()
    })
}

/// The failing input libFuzzer saved: `… Test unit written to PATH`.
fn artifact(lines: &[String]) -> Option<String> {
    lines.iter().rev().find_map(|l| {
        let at = l.find("Test unit written to ")?;
        let path = l[at + "Test unit written to ".len()..].trim();
        (!path.is_empty()).then(|| path.to_string())
    })
}

fn summary(o: &Outcome) -> String {
    let number = |n: Option<u64>| n.map_or("?".to_string(), |n| n.to_string());
    let result = match &o.failure {
        None => "ok, no failing input".to_string(),
        Some(Failure {
            artifact: Some(a), ..
        }) => format!("FAILED: {a}"),
        Some(f) => format!("FAILED: see {}", f.log.display()),
    };
    format!(
        "[fuzz] {}: {} runs in {} s, corpus {} inputs: {result}",
        o.target,
        number(o.runs),
        o.seconds,
        number(o.corpus)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    #[test]
    fn libfuzzer_output_is_read() {
        let out = lines(
            "#2\tINITED cov: 10 ft: 11 corp: 3/120b exec/s: 0 rss: 40Mb\n\
             #900\tNEW    cov: 12 ft: 15 corp: 7/1210b lim: 4 exec/s: 0 rss: 41Mb\n\
             #9000\tDONE   cov: 12 ft: 15 corp: 8/1300b lim: 4 exec/s: 150 rss: 41Mb\n\
             Done 9000 runs in 61 second(s)\n\
             stat::number_of_executed_units: 9001\n",
        );
        assert_eq!(runs(&out), Some(9001));
        assert_eq!(fuzzed_seconds(&out), Some(61));
        assert_eq!(corpus_size(&out), Some(8));
        assert_eq!(artifact(&out), None);
    }

    #[test]
    fn a_crash_names_its_input() {
        let out = lines(
            "==1== ERROR: libFuzzer: deadly signal\n\
             artifact_prefix='/w/fuzz/artifacts/chain_file/'; Test unit written to \
             /w/fuzz/artifacts/chain_file/crash-da39a3ee\n\
             Done 12 runs in 0 second(s)\n",
        );
        assert_eq!(
            artifact(&out).as_deref(),
            Some("/w/fuzz/artifacts/chain_file/crash-da39a3ee")
        );
        assert_eq!(runs(&out), Some(12));
    }

    #[test]
    fn a_failure_shows_its_panic_and_the_end() {
        let mut out = lines(
            "INFO: Seed: 1\n\
             thread '<unnamed>' panicked at fuzz/src/lib.rs:60:13:\n\
             refused without an error\n",
        );
        out.extend((0..30).map(|i| format!("backtrace {i}")));
        out.push("SUMMARY: libFuzzer: deadly signal".into());
        let shown = excerpt(&out);
        assert_eq!(
            shown[0],
            "thread '<unnamed>' panicked at fuzz/src/lib.rs:60:13:"
        );
        assert_eq!(shown[1], "refused without an error");
        assert_eq!(shown[PANIC_LINES], "…");
        assert_eq!(shown.len(), PANIC_LINES + 1 + TAIL_LINES);
        assert_eq!(
            shown.last().map(String::as_str),
            Some("SUMMARY: libFuzzer: deadly signal")
        );
    }
}
