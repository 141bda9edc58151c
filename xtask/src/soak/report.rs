//! The soak's report: what ran, what was lost, what was left, the watched agent's size, every
//! error; the goals judged from those figures, printed and written as target/soak/report.json.

use serde::Serialize;

use super::chaos::Event;
use super::traffic::{StreamResult, TcpResult};

#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub minutes: f64,
    pub chaos_seconds: f64,
    pub kernel: String,
    pub rate_per_stream: u64,
    pub prefix: String,
    pub chains: Vec<ChainReport>,
    /// Packets the host's CPU input backlogs dropped during the soak (any namespace).
    pub backlog_dropped: u64,
    pub streams: Vec<StreamResult>,
    pub tcp: Vec<TcpResult>,
    pub events: Vec<Event>,
    pub watched_agent: AgentUse,
    pub leftovers: Vec<String>,
    /// Failed steps, traffic that could not be counted, teardown errors.
    pub errors: Vec<String>,
    /// ERROR and WARN lines the agents logged (not a goal: read them).
    pub agent_log_errors: Vec<String>,
    pub goals: Vec<Goal>,
}

#[derive(Debug, Serialize)]
pub struct ChainReport {
    pub name: String,
    pub mode: String,
    pub vpn: bool,
    pub functions_at_end: String,
    /// Drops counted in the chain's namespaces at the end (interfaces, UDP sockets, fast path):
    /// where a lost datagram went.
    pub drops: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct AgentUse {
    pub pid: u32,
    pub rss_kib_start: u64,
    pub rss_kib_end: u64,
    pub fds_start: u64,
    pub fds_end: u64,
    pub scrapes: u64,
}

#[derive(Debug, Serialize)]
pub struct Goal {
    pub name: String,
    pub met: bool,
    pub detail: String,
}

/// Whether a count measured at the start and the end (both read: nonzero) grew by 10 % at most.
/// Less at the end is no leak: the soak SIGKILLs agents and replaces chains, and the watched
/// agent held 23 descriptors at the end of a run that began with 26 (2026-12-05), which a
/// two-sided bound failed.
fn flat(start: u64, end: u64) -> bool {
    start > 0 && end > 0 && end as f64 <= start as f64 * 1.10
}

impl Report {
    /// Fills in the goals.
    pub fn judged(mut self) -> Report {
        let mut goals = Vec::new();
        let sent: u64 = self.streams.iter().map(|s| u64::from(s.sent)).sum();
        let lost: u64 = self.streams.iter().map(|s| s.lost).sum();
        goals.push(Goal {
            name: "no datagram lost".into(),
            met: lost == 0 && self.streams.len() == self.chains.len() * 2 && sent > 0,
            detail: format!(
                "{lost} of {sent} lost over {} streams on chains never down",
                self.streams.len()
            ),
        });
        let tcp_ok = self
            .tcp
            .iter()
            .all(|t| t.errors.is_empty() && t.bytes_read > 0);
        goals.push(Goal {
            name: "TCP transfers intact".into(),
            met: tcp_ok && self.tcp.len() == self.chains.len(),
            detail: self
                .tcp
                .iter()
                .map(|t| {
                    format!(
                        "{}: {} bytes{}",
                        t.what,
                        t.bytes_read,
                        if t.errors.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", t.errors.join("; "))
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        });
        goals.push(Goal {
            name: "nothing left behind".into(),
            met: self.leftovers.is_empty(),
            detail: format!(
                "{} leftovers with prefix {}",
                self.leftovers.len(),
                self.prefix
            ),
        });
        let a = &self.watched_agent;
        goals.push(Goal {
            name: "agent RSS flat (10 %)".into(),
            met: flat(a.rss_kib_start, a.rss_kib_end),
            detail: format!("{} KiB -> {} KiB", a.rss_kib_start, a.rss_kib_end),
        });
        goals.push(Goal {
            name: "agent descriptors flat (10 %)".into(),
            met: flat(a.fds_start, a.fds_end),
            detail: format!("{} -> {}", a.fds_start, a.fds_end),
        });
        goals.push(Goal {
            name: "no error".into(),
            met: self.errors.is_empty(),
            detail: format!("{} errors", self.errors.len()),
        });
        self.goals = goals;
        self
    }

    pub fn print(&self) {
        println!(
            "\nsoak: seed {}, {:.0} s of chaos, {} steps, kernel {}",
            self.seed,
            self.chaos_seconds,
            self.events.len(),
            self.kernel
        );
        let mut kinds: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
        for e in &self.events {
            let k = kinds.entry(e.step.as_str()).or_default();
            k.0 += 1;
            k.1 += usize::from(!e.ok);
        }
        for (step, (n, failed)) in kinds {
            println!("  {step:12} {n:4} steps, {failed} failed");
        }
        let mid_way = self
            .events
            .iter()
            .filter(|e| e.step == "kill-apply" && e.detail.contains("landed mid-way"))
            .count();
        println!("  kill-apply landed mid-way {mid_way} times");
        println!(
            "\n{:<26} {:>9} {:>9} {:>6} {:>5}",
            "stream", "sent", "received", "lost", "dup"
        );
        for s in &self.streams {
            println!(
                "{:<26} {:>9} {:>9} {:>6} {:>5}",
                s.what, s.sent, s.received, s.lost, s.duplicates
            );
            for (a, b, t) in &s.lost_ranges {
                println!("    lost {a}..={b} (sent ~{t:.1} s after the chaos began)");
            }
        }
        for c in &self.chains {
            println!(
                "{} ({}, at the end: {})",
                c.name, c.mode, c.functions_at_end
            );
            for (what, n) in &c.drops {
                println!("    dropped: {what}: {n}");
            }
        }
        println!(
            "host input backlog drops during the soak: {}",
            self.backlog_dropped
        );
        for t in &self.tcp {
            println!(
                "{}: {} bytes written, {} read, {}",
                t.what,
                t.bytes_written,
                t.bytes_read,
                if t.errors.is_empty() {
                    "intact".to_string()
                } else {
                    t.errors.join("; ")
                }
            );
        }
        let a = &self.watched_agent;
        println!(
            "watched agent {}: RSS {} -> {} KiB, fds {} -> {}, {} scrapes",
            a.pid, a.rss_kib_start, a.rss_kib_end, a.fds_start, a.fds_end, a.scrapes
        );
        println!("leftovers: {}", self.leftovers.len());
        for l in &self.leftovers {
            println!("  {l}");
        }
        println!("errors: {}", self.errors.len());
        for e in &self.errors {
            println!("  {e}");
        }
        // The chain prober's view: a chain the chaos never took down should never look down.
        // The prober logs a failure when a chain turns down (not each failed probe after it).
        let probe_failures: Vec<String> = self
            .chains
            .iter()
            .map(|c| {
                let tag = format!("chain={} task=prober", c.name);
                let n = self
                    .agent_log_errors
                    .iter()
                    .filter(|l| l.starts_with("watched:") && l.contains(&tag))
                    .filter(|l| l.contains("probe failed"))
                    .count();
                format!("{} {n}", c.name)
            })
            .collect();
        println!(
            "times the watched agent's prober saw a chain turn down: {}",
            probe_failures.join(", ")
        );
        println!(
            "agent log ERROR/WARN lines: {}",
            self.agent_log_errors.len()
        );
        for l in self.agent_log_errors.iter().take(20) {
            println!("  {l}");
        }
        println!("\ngoals:");
        for g in &self.goals {
            println!(
                "  [{}] {}: {}",
                if g.met { "met" } else { "NOT MET" },
                g.name,
                g.detail
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_growth_beyond_ten_percent_is_not_flat() {
        assert!(flat(26, 23), "fewer at the end");
        assert!(flat(26, 28));
        assert!(!flat(26, 29), "11.5 % more");
        assert!(!flat(0, 26) && !flat(26, 0), "a count not read");
    }
}
