//! What the fast path's eBPF costs per packet, as the kernel measures it: with
//! `kernel.bpf_stats_enabled` on, every program counts its runs and the nanoseconds they took
//! (`run_cnt`, `run_time_ns`; a stage a forwarder tail-calls is inside its forwarder's run).
//! Unlike packets per second at a sink, this excludes the generator, the veths and the sink, so
//! two contenders' eBPF compare within a few percent on a host whose pps move by 15%.
//!
//! The counting costs two clock reads per run: pps windows run with it off, and a cost window
//! of its own runs with it on.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The kernel's program statistics on, while it lives; the previous setting back on drop.
pub struct StatsOn {
    previous: String,
}

impl StatsOn {
    pub fn enable() -> Result<Self> {
        let previous = std::fs::read_to_string(SYSCTL)
            .with_context(|| format!("cannot read {SYSCTL} (a kernel without BPF stats?)"))?;
        std::fs::write(SYSCTL, "1").with_context(|| format!("cannot write 1 to {SYSCTL}"))?;
        Ok(StatsOn {
            previous: previous.trim().to_string(),
        })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(SYSCTL, &self.previous) {
            eprintln!("warning: cannot restore {SYSCTL} to {}: {e}", self.previous);
        }
    }
}

/// Runs and nanoseconds of one program so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Runs {
    pub count: u64,
    pub ns: u64,
}

impl Runs {
    /// Nanoseconds per run between `earlier` and this reading.
    pub fn ns_per_run_since(self, earlier: Runs) -> Option<f64> {
        let count = self.count.checked_sub(earlier.count)?;
        let ns = self.ns.checked_sub(earlier.ns)?;
        (count > 0).then(|| ns as f64 / count as f64)
    }
}

/// The forwarder program netfn pinned for `chain` in fast path `mode` ("tc" or "xdp").
pub fn forwarder(chain: &str, mode: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/netfn/{chain}/nf_fwd_{mode}"))
}

/// The pinned program's counts (`bpftool prog show pinned PATH --json`).
pub fn read(pinned: &std::path::Path) -> Result<Runs> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "pinned"])
        .arg(pinned)
        .arg("--json")
        .output()
        .context("cannot run bpftool (`cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show pinned {}: {}",
            pinned.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool's JSON for {}", pinned.display()))?;
    // Absent while the statistics have never been on (the kernel omits zero counts).
    let field = |name: &str| v.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Ok(Runs {
        count: field("run_cnt"),
        ns: field("run_time_ns"),
    })
}
