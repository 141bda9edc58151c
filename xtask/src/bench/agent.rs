//! `cargo xtask bench agent`: how long the host agent takes to answer `GET /metrics` for a chain
//! of N forward functions (goal: under 100 ms for 1,000), and how long `netfn apply` takes to
//! insert one function into the middle of a running M-function chain (goal: under 200 ms for
//! 100).
//!
//! Scrape times are measured by the client (connect, request, whole body read) over loopback,
//! with the agent running as in production: prober on, eBPF log forwarding on. The agent's own
//! `netfn_scrape_duration_seconds` (collect and encode, without HTTP) is reported beside them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use super::{forward_chain_file, median, netfn_release, timed_netfn, write_json};

/// Goals from the issue.
const SCRAPE_GOAL_MS: f64 = 100.0;
const APPLY_GOAL_MS: f64 = 200.0;
const APPLY_REPEATS: usize = 5;

#[derive(Serialize)]
#[serde(tag = "configuration", rename_all = "kebab-case")]
enum Record {
    Scrape {
        functions: usize,
        series: usize,
        body_bytes: usize,
        scrapes: usize,
        median_ms: f64,
        /// Nearest rank: with 50 scrapes, the slowest one.
        p99_ms: f64,
        min_ms: f64,
        max_ms: f64,
        /// The agent's own collect + encode time (netfn_scrape_duration_seconds sum / count).
        server_mean_ms: f64,
        goal_ms: f64,
        goal_met: bool,
        samples_ms: Vec<f64>,
    },
    ApplyInsert {
        /// kernel, tc or xdp.
        fastpath: String,
        functions: usize,
        repeats: usize,
        median_ms: f64,
        max_ms: f64,
        /// Removing the inserted function again (the reverse apply), for comparison.
        remove_median_ms: f64,
        goal_ms: f64,
        goal_met: bool,
        samples_ms: Vec<f64>,
        remove_samples_ms: Vec<f64>,
    },
    /// 100 chains of 10 under one agent at the default probe interval: the probers' CPU and
    /// the scrape time.
    AgentAtScale {
        chains: usize,
        functions: usize,
        probe_interval_ms: u64,
        /// The agent's CPU time (utime + stime) over a window with no scrapes, as a percentage
        /// of one core: its probers and rescans.
        agent_cpu_percent_of_one_core: f64,
        cpu_window_s: f64,
        cpu_goal_percent: f64,
        scrape_median_ms: f64,
        scrape_p99_ms: f64,
        series: usize,
        scrape_goal_ms: f64,
        goal_met: bool,
        scrape_samples_ms: Vec<f64>,
    },
    /// A configuration that could not be measured, and why (never a made-up number).
    NotMeasured { what: String, reason: String },
}

/// Takes the chain down when dropped.
struct Chain<'a> {
    netfn: &'a Path,
    name: String,
}

impl Drop for Chain<'_> {
    fn drop(&mut self) {
        if let Err(e) = timed_netfn(self.netfn, &["down", &self.name]) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// A `netfn agent` for some chains, stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Agent {
    child: Child,
    pub(crate) http: String,
    /// Set once the process has been waited for (its pid may be someone else's then).
    reaped: bool,
}

impl Agent {
    fn start(netfn: &Path, dir: &Path, chains: &[String]) -> Result<Agent> {
        let chains: Vec<&str> = chains.iter().map(String::as_str).collect();
        Self::start_for(
            netfn,
            &dir.join("agent.sock"),
            &dir.join("agent.log"),
            &chains,
            &[],
        )
    }

    /// An agent for `chains` on `socket` (and a free loopback port), with `extra` arguments, its
    /// output appended to `log`; returns once it answers on the socket.
    pub(crate) fn start_for(
        netfn: &Path,
        socket: &Path,
        log_path: &Path,
        chains: &[&str],
        extra: &[&str],
    ) -> Result<Agent> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let mut cmd = Command::new(netfn);
        cmd.args(["agent", "--listen", "127.0.0.1:0"]);
        for chain in chains {
            cmd.args(["--chain", chain]);
        }
        let child = cmd
            .args(extra)
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start netfn agent")?;
        let mut agent = Agent {
            child,
            http: String::new(),
            reaped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(http) = ping(socket) {
                agent.http = http;
                return Ok(agent);
            }
            if let Some(status) = agent.child.try_wait()? {
                bail!("netfn agent exited ({status}); see {}", log_path.display());
            }
            if Instant::now() > deadline {
                bail!("netfn agent did not answer on {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// Whether the process is still running (false once it has exited).
    pub(crate) fn running(&mut self) -> bool {
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(_)) => {
                self.reaped = true;
                false
            }
            Err(_) => false,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's HTTP address, from `{"cmd":"ping"}` on its socket.
pub(crate) fn ping(socket: &Path) -> Option<String> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"{\"cmd\":\"ping\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).ok()?;
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    v["http"].as_str().map(str::to_string)
}

/// One timed GET /metrics: (milliseconds, body).
pub(crate) fn scrape(addr: &str) -> Result<(f64, String)> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::with_capacity(1 << 20);
    s.read_to_end(&mut raw)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let text = String::from_utf8(raw).context("non-UTF-8 response")?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP head in the response");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics: {}", head.lines().next().unwrap_or_default());
    }
    Ok((ms, body.to_string()))
}

/// `n` timed scrapes: their times (ms) and the last body.
fn timed_scrapes(addr: &str, n: usize) -> Result<(Vec<f64>, String)> {
    let mut samples = Vec::with_capacity(n);
    let mut body = String::new();
    for _ in 0..n {
        let (ms, b) = scrape(addr)?;
        samples.push(ms);
        body = b;
    }
    Ok((samples, body))
}

/// The functions a /metrics body has a forward packet counter for.
fn functions_in(body: &str) -> usize {
    body.lines()
        .filter(|l| {
            l.starts_with("netfn_function_packets_total{") && l.contains("direction=\"forward\"")
        })
        .count()
}

pub(crate) fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn measure_scrape(
    netfn_bin: &Path,
    dir: &Path,
    functions: usize,
    scrapes: usize,
) -> Result<Record> {
    let name = format!("ba{functions}");
    let names: Vec<String> = (1..=functions).map(|i| format!("f{i}")).collect();
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, forward_chain_file(&name, 91, "kernel", &names))?;
    timed_netfn(netfn_bin, &["up", &file.to_string_lossy()])?;
    let _chain = Chain {
        netfn: netfn_bin,
        name: name.clone(),
    };
    let agent = Agent::start(netfn_bin, dir, std::slice::from_ref(&name))?;
    // Let the prober run once and the first scrapes warm the record cache.
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..3 {
        scrape(&agent.http)?;
    }
    let (samples, body) = timed_scrapes(&agent.http, scrapes)?;
    let series = body.lines().filter(|l| !l.starts_with('#')).count();
    let functions_seen = functions_in(&body);
    if functions_seen != functions {
        bail!("/metrics shows {functions_seen} functions, expected {functions}");
    }
    let server_mean_ms = match (
        value(&body, "netfn_scrape_duration_seconds_sum"),
        value(&body, "netfn_scrape_duration_seconds_count"),
    ) {
        (Some(sum), Some(n)) if n > 0.0 => sum / n * 1e3,
        _ => f64::NAN,
    };
    let mut sorted = samples.clone();
    let median_ms = median(&mut sorted);
    Ok(Record::Scrape {
        functions,
        series,
        body_bytes: body.len(),
        scrapes,
        median_ms,
        p99_ms: percentile(&sorted, 99.0),
        min_ms: sorted.first().copied().unwrap_or(f64::NAN),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        server_mean_ms,
        goal_ms: SCRAPE_GOAL_MS,
        goal_met: percentile(&sorted, 99.0) < SCRAPE_GOAL_MS,
        samples_ms: samples,
    })
}

fn measure_apply(netfn_bin: &Path, dir: &Path, functions: usize, fastpath: &str) -> Result<Record> {
    let name = format!("bp{functions}{}", &fastpath[..1]);
    let base: Vec<String> = (1..=functions).map(|i| format!("f{i}")).collect();
    let mut inserted = base.clone();
    inserted.insert(functions / 2, "new".to_string());
    let v1 = dir.join(format!("{name}-v1.toml"));
    let v2 = dir.join(format!("{name}-v2.toml"));
    std::fs::write(&v1, forward_chain_file(&name, 91, fastpath, &base))?;
    std::fs::write(&v2, forward_chain_file(&name, 91, fastpath, &inserted))?;
    let (v1, v2) = (v1.to_string_lossy(), v2.to_string_lossy());
    timed_netfn(netfn_bin, &["up", &v1])?;
    let _chain = Chain {
        netfn: netfn_bin,
        name,
    };
    let (mut inserts, mut removes) = (Vec::new(), Vec::new());
    for _ in 0..APPLY_REPEATS {
        inserts.push(timed_netfn(netfn_bin, &["apply", &v2])?);
        removes.push(timed_netfn(netfn_bin, &["apply", &v1])?);
    }
    let (mut i, mut r) = (inserts.clone(), removes.clone());
    let median_ms = median(&mut i);
    Ok(Record::ApplyInsert {
        fastpath: fastpath.to_string(),
        functions,
        repeats: APPLY_REPEATS,
        median_ms,
        max_ms: i.last().copied().unwrap_or(f64::NAN),
        remove_median_ms: median(&mut r),
        goal_ms: APPLY_GOAL_MS,
        goal_met: median_ms < APPLY_GOAL_MS,
        samples_ms: inserts,
        remove_samples_ms: removes,
    })
}

/// The agent's CPU time so far (utime + stime, seconds), from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .context("bad /proc/PID/stat")
    };
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(14)? + ticks(15)?) / hz)
}

/// Issue 14's goal for the probers: under 5% of one core at the default interval.
const CPU_GOAL_PERCENT: f64 = 5.0;
/// The default probe interval (`netfn agent --probe-interval`).
const DEFAULT_PROBE_INTERVAL_MS: u64 = 1000;

fn measure_at_scale(
    netfn_bin: &Path,
    dir: &Path,
    chains: usize,
    per_chain: usize,
    window: Duration,
    scrapes: usize,
) -> Result<Record> {
    let names: Vec<String> = (1..=chains).map(|i| format!("bas{i}")).collect();
    let functions: Vec<String> = (1..=per_chain).map(|i| format!("f{i}")).collect();
    let text: Vec<String> = names
        .iter()
        .map(|c| forward_chain_file(c, 92, "tc", &functions))
        .collect();
    let file = dir.join("scale.toml");
    std::fs::write(&file, text.join("\n"))?;
    let file = file.to_string_lossy().into_owned();
    let _chains = Chains {
        netfn: netfn_bin,
        file: file.clone(),
    };
    timed_netfn(netfn_bin, &["up", &file, "--quiet"])?;
    let agent = Agent::start(netfn_bin, dir, &names)?;
    // The probers start, and the first scrape fills the record cache.
    std::thread::sleep(Duration::from_secs(3));
    scrape(&agent.http)?;
    let (c0, t0) = (cpu_seconds(agent.child.id())?, Instant::now());
    std::thread::sleep(window);
    let (c1, t1) = (cpu_seconds(agent.child.id())?, Instant::now());
    let secs = (t1 - t0).as_secs_f64();
    let cpu = (c1 - c0) / secs * 100.0;
    let (samples, body) = timed_scrapes(&agent.http, scrapes)?;
    let seen = functions_in(&body);
    if seen != chains * per_chain {
        bail!(
            "/metrics shows {seen} functions, expected {}",
            chains * per_chain
        );
    }
    let mut sorted = samples.clone();
    let median_ms = median(&mut sorted);
    let p99 = percentile(&sorted, 99.0);
    Ok(Record::AgentAtScale {
        chains,
        functions: chains * per_chain,
        probe_interval_ms: DEFAULT_PROBE_INTERVAL_MS,
        agent_cpu_percent_of_one_core: cpu,
        cpu_window_s: secs,
        cpu_goal_percent: CPU_GOAL_PERCENT,
        scrape_median_ms: median_ms,
        scrape_p99_ms: p99,
        series: body.lines().filter(|l| !l.starts_with('#')).count(),
        scrape_goal_ms: SCRAPE_GOAL_MS,
        goal_met: p99 < SCRAPE_GOAL_MS && cpu < CPU_GOAL_PERCENT,
        scrape_samples_ms: samples,
    })
}

/// Takes every chain of a file down when dropped.
struct Chains<'a> {
    netfn: &'a Path,
    file: String,
}

impl Drop for Chains<'_> {
    fn drop(&mut self) {
        if let Err(e) = timed_netfn(self.netfn, &["down", &self.file, "--quiet"]) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// `cargo xtask bench agent` options.
#[derive(Args, Debug)]
pub struct AgentBench {
    /// Functions in the chain whose /metrics is scraped.
    #[arg(long, default_value_t = 1000)]
    functions: usize,
    /// Timed scrapes (after 3 untimed ones).
    #[arg(long, default_value_t = 50)]
    scrapes: usize,
    /// Functions in the chain that `apply` inserts one into.
    #[arg(long, default_value_t = 100)]
    apply_functions: usize,
    /// Chains of 10 tc functions under one agent for the at-scale measure (0: skip it).
    #[arg(long, default_value_t = 100)]
    scale_chains: usize,
    /// Seconds of the agent's CPU window at scale.
    #[arg(long, default_value_t = 10)]
    cpu_window: u64,
    /// Only the at-scale measure.
    #[arg(long)]
    scale_only: bool,
}

pub fn run(opts: &AgentBench) -> Result<()> {
    let (functions, scrapes, apply_functions) =
        (opts.functions, opts.scrapes, opts.apply_functions);
    let netfn_bin = netfn_release()?;
    let dir = std::env::temp_dir().join(format!("netfn-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| -> Result<Vec<Record>> {
        let mut records = Vec::new();
        if opts.scale_chains > 0 {
            records.push(measure_at_scale(
                &netfn_bin,
                &dir,
                opts.scale_chains,
                10,
                Duration::from_secs(opts.cpu_window),
                scrapes,
            )?);
        }
        if opts.scale_only {
            return Ok(records);
        }
        records.push(measure_scrape(&netfn_bin, &dir, functions, scrapes)?);
        for fastpath in ["kernel", "tc", "xdp"] {
            records.push(
                match measure_apply(&netfn_bin, &dir, apply_functions, fastpath) {
                    Ok(record) => record,
                    // A kernel without the fast path (see `netfn features`): say so.
                    Err(e) if fastpath != "kernel" => Record::NotMeasured {
                        what: format!("apply into a {apply_functions}-function {fastpath} chain"),
                        reason: format!("{e:#}"),
                    },
                    Err(e) => return Err(e),
                },
            );
        }
        Ok(records)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let records = result?;
    print_table(&records);
    let path = write_json("agent", &records)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn print_table(records: &[Record]) {
    println!(
        "{:<14}  {:>9}  {:>10}  {:>10}  {:>10}  {:>9}  notes",
        "measure", "functions", "median ms", "p99/max ms", "server ms", "goal ms"
    );
    for r in records {
        match r {
            Record::Scrape {
                functions,
                series,
                body_bytes,
                scrapes,
                median_ms,
                p99_ms,
                server_mean_ms,
                goal_ms,
                goal_met,
                ..
            } => println!(
                "{:<14}  {functions:>9}  {median_ms:>10.2}  {p99_ms:>10.2}  {server_mean_ms:>10.2}  {goal_ms:>9.0}  \
                 {scrapes} scrapes, {series} series, {body_bytes} B{}",
                "GET /metrics",
                if *goal_met { "" } else { ", GOAL MISSED" }
            ),
            Record::ApplyInsert {
                fastpath,
                functions,
                repeats,
                median_ms,
                max_ms,
                remove_median_ms,
                goal_ms,
                goal_met,
                ..
            } => println!(
                "{:<14}  {functions:>9}  {median_ms:>10.2}  {max_ms:>10.2}  {:>10}  {goal_ms:>9.0}  \
                 {repeats} runs (netfn process included); removing it again: {remove_median_ms:.2} ms{}",
                format!("apply ({fastpath})"),
                "-",
                if *goal_met { "" } else { ", GOAL MISSED" }
            ),
            Record::AgentAtScale {
                chains,
                functions,
                probe_interval_ms,
                agent_cpu_percent_of_one_core,
                cpu_goal_percent,
                scrape_median_ms,
                scrape_p99_ms,
                series,
                scrape_goal_ms,
                ..
            } => println!(
                "{:<14}  {functions:>9}  {scrape_median_ms:>10.2}  {scrape_p99_ms:>10.2}  {:>10}  {scrape_goal_ms:>9.0}  \
                 {chains} tc chains under one agent, {series} series; agent CPU with probes every \
                 {probe_interval_ms} ms: {agent_cpu_percent_of_one_core:.2}% of one core (goal < \
                 {cpu_goal_percent}%){}",
                "at scale",
                "-",
                if *agent_cpu_percent_of_one_core < *cpu_goal_percent
                    && *scrape_p99_ms < *scrape_goal_ms
                {
                    ""
                } else {
                    ", GOAL MISSED"
                }
            ),
            Record::NotMeasured { what, reason } => {
                println!("{what}: not measured: {reason}")
            }
        }
    }
}
