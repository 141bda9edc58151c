//! What a firewall function shows: its metric families and `netfn status` rows, read at scrape
//! time from the pinned maps of its stage (tc/xdp chains) and its recorded settings. Kernel-mode
//! firewalls count in nftables (`nft list table inet netfn_fw` in the namespace) and export only
//! the generic per-function metrics.

use aya::maps::{HashMap, MapData};
use netfn_common::firewall::{
    CtEntry, CtKey, FW_CT_MAP, FW_RULE_COUNTERS_MAP, FW_STATS_MAP, FwStats, RuleCounters,
};
use netfn_core::function::{
    FunctionMetricsContext, KindMetricsError, MetricFamily, RecordedSettings,
};

use super::kind::PROBE_RULE;
use crate::maps::{read_per_cpu, stage_dir};

/// Connections in the table right now, counted by walking its keys (a scrape-time cost of
/// about a microsecond per connection; tables above [`COUNT_LIMIT`] are not walked).
fn live_connections(dir: &std::path::Path) -> Result<Option<u64>, KindMetricsError> {
    let data = MapData::from_pin(dir.join(FW_CT_MAP))?;
    let map = aya::maps::Map::from_map_data(data)?;
    let table: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(map)?;
    let mut n = 0u64;
    for key in table.keys() {
        key?;
        n += 1;
        if n > COUNT_LIMIT {
            return Ok(None);
        }
    }
    Ok(Some(n))
}

/// Largest table whose connections a scrape counts.
const COUNT_LIMIT: u64 = 1 << 20;

fn stats(dir: &std::path::Path) -> Result<FwStats, KindMetricsError> {
    let all = read_per_cpu::<FwStats>(&dir.join(FW_STATS_MAP), |t, v| {
        t.ct_created += v.ct_created;
        t.ct_hits += v.ct_hits;
        t.ct_expired += v.ct_expired;
        t.ct_insert_failed += v.ct_insert_failed;
        t.classified += v.classified;
    })?;
    Ok(all.into_iter().next().unwrap_or_default())
}

/// What a scrape needs of the recorded settings: each rule's name (by index, `None`: unnamed)
/// and the default verdict. The rules' other fields are skipped, not decoded (a scrape of a
/// 100,000-rule firewall stays cheap).
#[derive(Debug, Default, serde::Deserialize)]
struct RecordedRules {
    rules: Vec<RuleName>,
    default: String,
}

#[derive(Debug, serde::Deserialize)]
struct RuleName {
    #[serde(default)]
    name: Option<String>,
}

#[derive(serde::Deserialize)]
struct Recorded {
    rules: RecordedRules,
}

impl RecordedRules {
    fn of(settings: &RecordedSettings) -> Self {
        settings
            .parse::<Recorded>()
            .map(|r| r.rules)
            .unwrap_or_default()
    }

    fn names(&self) -> Vec<Option<&str>> {
        self.rules.iter().map(|r| r.name.as_deref()).collect()
    }
}

/// Per-rule counters labelled by rule: named rules by name, unnamed ones summed as
/// `(unnamed)`, the default verdict as `(default)`, the chain probe as `netfn-probe`.
fn rule_counters(
    dir: &std::path::Path,
    names: &[Option<&str>],
) -> Result<Vec<(String, RuleCounters)>, KindMetricsError> {
    let all = read_per_cpu::<RuleCounters>(&dir.join(FW_RULE_COUNTERS_MAP), |t, v| {
        t.packets += v.packets;
        t.bytes += v.bytes;
    })?;
    let mut out: Vec<(String, RuleCounters)> = Vec::new();
    let mut add = |label: String, c: &RuleCounters| match out.iter_mut().find(|(l, _)| *l == label)
    {
        Some((_, t)) => {
            t.packets += c.packets;
            t.bytes += c.bytes;
        }
        None => out.push((label, *c)),
    };
    // The rules, then the default verdict, then the chain probe.
    for (i, c) in all.iter().enumerate() {
        let label = match (names.get(i), i - names.len().min(i)) {
            (Some(Some(name)), _) => name.to_string(),
            (Some(None), _) => "(unnamed)".into(),
            (None, 0) => "(default)".into(),
            (None, _) => PROBE_RULE.into(),
        };
        add(label, c);
    }
    Ok(out)
}

/// Entries the kernel evicted from the full LRU table: every entry created was removed by
/// expiry, evicted, or is still there.
fn evicted(s: &FwStats, live: u64) -> u64 {
    s.ct_created
        .saturating_sub(s.ct_expired)
        .saturating_sub(live)
}

pub fn metrics(ctx: &FunctionMetricsContext<'_>) -> Result<Vec<MetricFamily>, KindMetricsError> {
    let recorded = RecordedRules::of(ctx.settings);
    let names = recorded.names();
    let mut rules = ctx.gauge("netfn_firewall_rules", "Rules in the function's rule set.");
    rules.sample_u64(&[], names.len() as u64);
    let mut out = vec![rules.build()];
    let Some(dir) = stage_dir(ctx) else {
        return Ok(out);
    };
    let mut conns = ctx.counter(
        "netfn_firewall_rule_connections_total",
        "New connections decided by a rule (named rules; unnamed ones summed; the default verdict).",
    );
    let mut bytes = ctx.counter(
        "netfn_firewall_rule_bytes_total",
        "Bytes of the first packets of the connections a rule decided.",
    );
    for (label, c) in rule_counters(&dir, &names)? {
        conns.sample_u64(&[("rule", &label)], c.packets);
        bytes.sample_u64(&[("rule", &label)], c.bytes);
    }
    out.push(conns.build());
    out.push(bytes.build());
    let s = stats(&dir)?;
    if let Some(live) = live_connections(&dir)? {
        let mut g = ctx.gauge(
            "netfn_firewall_connections",
            "Connections in the table (not exported above 1,048,576).",
        );
        g.sample_u64(&[], live);
        out.push(g.build());
        let mut e = ctx.counter(
            "netfn_firewall_connections_evicted_total",
            "Connections the full table evicted (least recently used): created - expired - live.",
        );
        e.sample_u64(&[], evicted(&s, live));
        out.push(e.build());
    }
    out.extend(ctx.counters(&[
        (
            "netfn_firewall_connections_created_total",
            "Connections entered into the table.",
            s.ct_created,
        ),
        (
            "netfn_firewall_connection_packets_total",
            "Packets of tracked connections, passed without rule evaluation.",
            s.ct_hits,
        ),
        (
            "netfn_firewall_connections_expired_total",
            "Connections removed after their timeout.",
            s.ct_expired,
        ),
        (
            "netfn_firewall_conntrack_insert_failures_total",
            "Accepted connections the table could not take (decided by the rules, not tracked).",
            s.ct_insert_failed,
        ),
        (
            "netfn_firewall_classified_total",
            "New connections evaluated against the rules.",
            s.classified,
        ),
    ]));
    Ok(out)
}

pub fn status(ctx: &FunctionMetricsContext<'_>) -> Vec<(String, String)> {
    let recorded = RecordedRules::of(ctx.settings);
    let names = recorded.names();
    let default = match recorded.default.as_str() {
        "" => "?",
        d => d,
    };
    let mut rows = vec![(
        "rules".to_string(),
        format!("{} (default {default})", names.len()),
    )];
    if let Some(dir) = stage_dir(ctx)
        && let Ok(s) = stats(&dir)
    {
        let live = live_connections(&dir).ok().flatten();
        rows.push((
            "connections".into(),
            match live {
                Some(live) => format!(
                    "{live} live, {} created, {} expired, {} evicted, {} packets tracked, {} classified",
                    s.ct_created,
                    s.ct_expired,
                    evicted(&s, live),
                    s.ct_hits,
                    s.classified
                ),
                None => format!(
                    "{} created, {} expired, {} packets tracked, {} classified",
                    s.ct_created, s.ct_expired, s.ct_hits, s.classified
                ),
            },
        ));
        if let Ok(rules) = rule_counters(&dir, &names) {
            let named: Vec<String> = rules
                .iter()
                .filter(|(_, c)| c.packets > 0)
                .map(|(l, c)| format!("{l} {}", c.packets))
                .collect();
            if !named.is_empty() {
                rows.push(("by rule".into(), named.join(", ")));
            }
        }
    }
    rows
}
