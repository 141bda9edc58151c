//! Logging and tables.

use netfn_core::chain::state::Phase;
use netfn_core::chain::status::ChainStatus;

pub fn init_logging(level: &str) {
    let filter = std::env::var("NETFN_LOG").unwrap_or_else(|_| level.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Writes `text` and a newline to stderr in one piece. Diagnostics render with many small
/// writes, and stderr is unbuffered: 100,000 warnings were 1.2 million write calls.
pub fn to_stderr(text: impl std::fmt::Display) {
    use std::io::Write;
    let text = format!("{text}\n");
    // Nothing sensible is left to do when stderr itself fails.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// A plain left-aligned table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

/// What the host agent knows of the chain: its probe's verdict (the cause of "NOT healthy" when
/// every interface is up) and the tasks it had to restart.
fn agent_lines(s: &ChainStatus) -> String {
    let Some(a) = &s.agent else {
        return "agent: none runs, so no probe verdict (`netfn agent` probes chains)\n".into();
    };
    let probe = match &a.probe {
        None => "probe: off, or not run yet".to_string(),
        Some(p) if p.success => format!(
            "probe: ok{} ({} sent, {} failed)",
            p.rtt_seconds
                .map(|r| format!(", round trip {:.2} ms", r * 1e3))
                .unwrap_or_default(),
            p.sent,
            p.failed
        ),
        Some(p) => format!(
            "probe: FAILING, {} in a row ({} sent, {} failed){}",
            p.consecutive_failures,
            p.sent,
            p.failed,
            p.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    };
    let mut out = format!("agent: {probe}\n");
    for t in a.tasks.iter().filter(|t| t.restarts > 0) {
        out.push_str(&format!(
            "agent: task {} restarted {} time(s){}\n",
            t.task,
            t.restarts,
            t.last_error
                .as_deref()
                .map(|e| format!(", last because: {e}"))
                .unwrap_or_default()
        ));
    }
    out
}

/// What is wrong with the chain's namespaces, and what to do: one that is gone calls for the
/// chain to be made again, one that is there but could not be looked into says why.
fn netns_lines(s: &ChainStatus) -> String {
    let mut out = String::new();
    for hop in &s.hops {
        if let Some(why) = &hop.netns_error {
            out.push_str(&format!(
                "{}: namespace {} is there, but netfn could not look inside: {why}; if it \
                 cannot be mended, `netfn down {}`, then `netfn up {}`, makes the chain again\n",
                hop.name, hop.netns, s.chain, s.source
            ));
        } else if !hop.netns_present && s.phase == Phase::Up {
            out.push_str(&format!(
                "{}: namespace {} is gone (removed outside netfn, e.g. `ip netns del`), and its \
                 interfaces with it: `netfn down {}`, then `netfn up {}`, makes the chain again\n",
                hop.name, hop.netns, s.chain, s.source
            ));
        }
    }
    out
}

pub fn chain_table(s: &ChainStatus) -> String {
    let mut rows = Vec::new();
    for hop in &s.hops {
        if hop.interfaces.is_empty() {
            rows.push(vec![
                hop.name.clone(),
                hop.kind.clone(),
                hop.netns.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for i in &hop.interfaces {
            let state = match (hop.netns_present, i.present, i.up && i.carrier) {
                (false, _, _) => "no-netns",
                _ if hop.netns_error.is_some() => "netns-unreadable",
                (_, false, _) => "missing",
                (_, _, true) => "up",
                _ => "down",
            };
            let counters = match (i.rx_packets, i.rx_bytes, &i.fastpath) {
                (_, _, Some(f)) => format!(
                    "{} fwd / {} B, {} to stack, {} dropped",
                    f.forwarded_packets,
                    f.forwarded_bytes,
                    f.to_stack_packets,
                    f.drops.values().sum::<u64>()
                ),
                (Some(p), Some(b), None) => format!("{p} pkts / {b} B"),
                _ => "-".into(),
            };
            rows.push(vec![
                hop.name.clone(),
                hop.kind.clone(),
                hop.netns.clone(),
                i.name.clone(),
                i.planned_address.to_string(),
                state.into(),
                counters,
            ]);
        }
    }
    let mut details = String::new();
    for hop in s.hops.iter().filter(|h| !h.details.is_empty()) {
        let items: Vec<String> = hop
            .details
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        // A few short rows on one line; more (a load balancer's backends) one per line.
        if items.len() <= 3 {
            details.push_str(&format!("{}: {}\n", hop.name, items.join(", ")));
        } else {
            details.push_str(&format!("{}:\n", hop.name));
            for item in items {
                details.push_str(&format!("  {item}\n"));
            }
        }
    }
    for hop in &s.hops {
        for i in &hop.interfaces {
            if let Some(f) = i.fastpath.as_ref().filter(|f| !f.drops.is_empty()) {
                let drops: Vec<String> = f.drops.iter().map(|(r, n)| format!("{r} {n}")).collect();
                details.push_str(&format!(
                    "{} on {}: dropped {}\n",
                    hop.name,
                    i.name,
                    drops.join(", ")
                ));
            }
        }
    }
    details.push_str(&netns_lines(s));
    if !s.programs_current {
        details.push_str(&format!(
            "programs: another netfn build's ({}): `netfn apply {}` loads this netfn's in their \
             place, keeping the chain's state\n",
            s.programs
                .as_deref()
                .map_or("not recorded".to_string(), |b| format!("build {b}")),
            s.source
        ));
    }
    for p in &s.other_binaries {
        details.push_str(&format!(
            "{}: its process (pid {}) runs another netfn binary, {}: `netfn apply {}` starts it \
             again on this one\n",
            p.function, p.pid, p.binary, s.source
        ));
    }
    details.push_str(&agent_lines(s));
    format!(
        "chain {} ({}, {}{}) from {}\n{}{details}",
        s.chain,
        s.fastpath,
        serde_json::to_value(s.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        if s.healthy {
            ", healthy"
        } else {
            ", NOT healthy"
        },
        s.source,
        table(
            &[
                "FUNCTION",
                "KIND",
                "NAMESPACE",
                "INTERFACE",
                "ADDRESS",
                "STATE",
                "RECEIVED (eBPF)"
            ],
            &rows
        )
    )
}
