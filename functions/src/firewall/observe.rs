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

use super::config::Conntrack;
use super::kind::PROBE_RULE;
use super::stage::timeouts;
use crate::maps::{monotonic_ns, read_per_cpu, stage_dir};

/// The connection table right now, walked at scrape time (a cost of a few microseconds per
/// entry; tables above [`COUNT_LIMIT`] are not walked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Table {
    /// Connections within their idle timeout.
    live: u64,
    /// Entries past it: the stage removes such an entry when its connection's next packet
    /// comes, and counts it expired then; until then it only waits in the table.
    stale: u64,
}

fn table(dir: &std::path::Path, conntrack: &Conntrack) -> Result<Option<Table>, KindMetricsError> {
    let data = MapData::from_pin(dir.join(FW_CT_MAP))?;
    let map = aya::maps::Map::from_map_data(data)?;
    let table: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(map)?;
    let now = monotonic_ns()?;
    let timeouts = timeouts(conntrack);
    let mut t = Table::default();
    for entry in table.iter() {
        let (key, ct) = entry?;
        if timeouts.live(key.proto, &ct, now) {
            t.live += 1;
        } else {
            t.stale += 1;
        }
        if t.live + t.stale > COUNT_LIMIT {
            return Ok(None);
        }
    }
    Ok(Some(t))
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
pub(super) struct RecordedRules {
    rules: Vec<RuleName>,
    default: String,
    /// The connection table's timeouts (not part of the rules; filled in by [`Self::of`]).
    #[serde(skip)]
    conntrack: Conntrack,
}

#[derive(Debug, serde::Deserialize)]
struct RuleName {
    #[serde(default)]
    name: Option<String>,
}

#[derive(serde::Deserialize)]
struct Recorded {
    rules: RecordedRules,
    #[serde(default)]
    conntrack: Conntrack,
}

impl RecordedRules {
    pub(super) fn of(settings: &RecordedSettings) -> Self {
        settings
            .parse::<Recorded>()
            .map(|r| RecordedRules {
                conntrack: r.conntrack,
                ..r.rules
            })
            .unwrap_or_default()
    }

    pub(super) fn names(&self) -> Vec<Option<&str>> {
        self.rules.iter().map(|r| r.name.as_deref()).collect()
    }
}

/// Per-rule counters labelled by rule: named rules by name, unnamed ones summed as
/// `(unnamed)`, the default verdict as `(default)`, the chain probe as `netfn-probe`.
pub(super) fn rule_counters(
    dir: &std::path::Path,
    names: &[Option<&str>],
) -> Result<Vec<(String, RuleCounters)>, KindMetricsError> {
    let all = read_per_cpu::<RuleCounters>(&dir.join(FW_RULE_COUNTERS_MAP), |t, v| {
        t.packets += v.packets;
        t.bytes += v.bytes;
    })?;
    Ok(by_label(&with_carried(all, names.len()), names))
}

/// The counters of an instance of `rules` rules (`all`, by index: the rules, the default
/// verdict, the chain probe), each with what it carried over from the instances before
/// (the map's second half, which the stage never writes: see `stage::carry_counters`). A map
/// without that half (a stage an earlier netfn loaded) is its counters alone.
fn with_carried(mut all: Vec<RuleCounters>, rules: usize) -> Vec<RuleCounters> {
    let counted = rules + 2;
    if all.len() == 2 * counted {
        let carried = all.split_off(counted);
        for (c, more) in all.iter_mut().zip(carried) {
            c.packets += more.packets;
            c.bytes += more.bytes;
        }
    }
    all
}

/// The label of counter `i` of a rule set named `names`: the rules', then the default
/// verdict's, then the chain probe's.
pub(super) fn label<'a>(i: usize, names: &[Option<&'a str>]) -> &'a str {
    match (names.get(i), i - names.len().min(i)) {
        (Some(Some(name)), _) => name,
        (Some(None), _) => "(unnamed)",
        (None, 0) => "(default)",
        (None, _) => PROBE_RULE,
    }
}

/// The counters of the rules (by index, as `names`), then of the default verdict, then of the
/// chain probe, summed by label.
fn by_label(all: &[RuleCounters], names: &[Option<&str>]) -> Vec<(String, RuleCounters)> {
    // Labels in the order they first come, each summed once: a hash index, not a search of
    // the labels so far (100,000 named rules made that quadratic on every scrape).
    let mut out: Vec<(String, RuleCounters)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    // The rules, then the default verdict, then the chain probe.
    for (i, c) in all.iter().enumerate() {
        let label = label(i, names);
        match index.get(label) {
            Some(&at) => {
                let t = &mut out[at].1;
                t.packets += c.packets;
                t.bytes += c.bytes;
            }
            None => {
                index.insert(label, out.len());
                out.push((label.to_string(), *c));
            }
        }
    }
    out
}

/// Entries the kernel evicted from the full LRU table: every entry created was removed by
/// expiry, evicted, or is still there (live or stale).
fn evicted(s: &FwStats, t: Table) -> u64 {
    s.ct_created
        .saturating_sub(s.ct_expired)
        .saturating_sub(t.live)
        .saturating_sub(t.stale)
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
    if let Some(t) = table(&dir, &recorded.conntrack)? {
        let mut g = ctx.gauge(
            "netfn_firewall_connections",
            "Connections in the table within their idle timeout (not exported above 1,048,576 \
             entries).",
        );
        g.sample_u64(&[], t.live);
        out.push(g.build());
        let mut e = ctx.counter(
            "netfn_firewall_connections_evicted_total",
            "Connections the full table evicted (least recently used): created - expired - \
             entries in the table.",
        );
        e.sample_u64(&[], evicted(&s, t));
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
            "Connections removed after their timeout (status's expired adds the ended ones \
             whose entries still wait in the table).",
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
        let table = table(&dir, &recorded.conntrack).ok().flatten();
        rows.push((
            "connections".into(),
            match table {
                Some(t) => format!(
                    "{} live, {} created, {} expired, {} evicted, {} packets tracked, {} classified",
                    t.live,
                    s.ct_created,
                    s.ct_expired + t.stale,
                    evicted(&s, t),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(n: u64) -> RuleCounters {
        RuleCounters {
            packets: n,
            bytes: 100 * n,
        }
    }

    #[test]
    fn rules_are_summed_by_label_in_first_seen_order() {
        let names = [Some("web"), None, Some("dns"), None, Some("web")];
        let all: Vec<RuleCounters> = (1..=7).map(counters).collect();
        let got = by_label(&all, &names);
        let want = [
            ("web", 1 + 5),
            ("(unnamed)", 2 + 4),
            ("dns", 3),
            ("(default)", 6),
            (PROBE_RULE, 7),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((label, c), (want_label, n)) in got.iter().zip(want) {
            assert_eq!(
                (label.as_str(), c.packets, c.bytes),
                (want_label, n, 100 * n)
            );
        }
    }

    #[test]
    fn the_carried_half_adds_to_the_counters() {
        // 2 rules, the default verdict, the probe; then what each carried.
        let all: Vec<RuleCounters> = (1..=8).map(counters).collect();
        let got = with_carried(all.clone(), 2);
        assert_eq!(
            got.iter().map(|c| c.packets).collect::<Vec<_>>(),
            [1 + 5, 2 + 6, 3 + 7, 4 + 8]
        );
        // Without that half (a stage an earlier netfn loaded): unchanged.
        assert_eq!(with_carried(all[..4].to_vec(), 2), all[..4]);
    }
}
