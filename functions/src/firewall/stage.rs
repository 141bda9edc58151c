//! The firewall's eBPF stage as the seam sees it: which programs, which maps and how big, and
//! how a new instance is filled from the compiled rules. The connection table, the statistics
//! and the table of fragmented datagrams in flight are kept across settings changes; everything else is the new rule set's own, so a change
//! goes live in one step when core switches the instance in.

use netfn_common::firewall::{
    ACTION_ACCEPT, ACTION_DROP, ACTION_REJECT, FW_ACTIONS_MAP, FW_CONF_MAP, FW_CT_MAP,
    FW_ENTRIES_MAP, FW_FRAGS_MAP, FW_NODES_MAP, FW_RATE_MAP, FW_RULE_COUNTERS_MAP, FW_STATS_MAP,
    FW_TC_PROGRAM, FW_XDP_PROGRAM, FwConf, LeafEntry, Node, RuleAction,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use netfn_common::firewall::RuleCounters;

use netfn_core::function::{
    FunctionContext, ProbePath, RecordedSettings, Stage, StageContent, StageError, StageMaps,
    StagePrograms,
};

use super::classifier::Compiled;
use super::config::Conntrack;
use super::kind::FirewallConfig;
use super::observe::{RecordedRules, label, rule_counters};
use super::rules::{Action, Rule};
use crate::maps::fill_array;

const SECOND: u64 = 1_000_000_000;

impl Stage for FirewallConfig {
    fn programs(&self) -> StagePrograms {
        StagePrograms {
            tc: FW_TC_PROGRAM,
            xdp: FW_XDP_PROGRAM,
        }
    }

    fn kept_maps(&self) -> &'static [&'static str] {
        &[FW_CT_MAP, FW_STATS_MAP, FW_FRAGS_MAP]
    }

    fn instance_maps(&self) -> &'static [&'static str] {
        &[FW_RULE_COUNTERS_MAP]
    }

    /// The compiled rules, and the chain probe's path (let through before them).
    fn prepare(&self, ctx: &FunctionContext) -> Result<Box<dyn StageContent + '_>, StageError> {
        let compiled = self.compiled().map_err(StageError::Other)?;
        Ok(Box::new(Content {
            compiled,
            default: self.settings.rules.default,
            conntrack: self.settings.conntrack,
            probe: ctx.probe,
            names: &self.settings.rules.rules,
            previous: ctx.previous.clone(),
        }))
    }
}

/// One instance's maps.
struct Content<'a> {
    compiled: Arc<Compiled>,
    default: Action,
    conntrack: Conntrack,
    probe: ProbePath,
    /// The rules (their names label their counters).
    names: &'a [Rule],
    /// The settings of the instance this one replaces (a change in place), whose rules'
    /// counters it carries over.
    previous: Option<RecordedSettings>,
}

impl Content<'_> {
    /// Writes what the replaced instance (its counters still pinned under `maps.dir`) counted
    /// under each label (a rule's name; the unnamed rules', the default verdict's, the chain
    /// probe's) into the carried half of this one's counters ([`FW_RULE_COUNTERS_MAP`]'s second
    /// half, which the stage never writes), at the first counter of the same label: a rule that
    /// persists keeps counting from where it was.
    fn carry_counters(&self, maps: &mut StageMaps<'_>) -> Result<(), String> {
        let Some(previous) = self.previous.as_ref().filter(|_| !maps.fresh) else {
            return Ok(());
        };
        let old = RecordedRules::of(previous);
        let before: HashMap<String, RuleCounters> = rule_counters(&maps.dir, &old.names())
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let names: Vec<Option<&str>> = self.names.iter().map(|r| r.name.as_deref()).collect();
        let counted = names.len() + 2;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
        let map = maps
            .map_mut(FW_RULE_COUNTERS_MAP)
            .map_err(|e| e.to_string())?;
        let mut array: PerCpuArray<&mut MapData, RuleCounters> =
            PerCpuArray::try_from(map).map_err(|e| format!("{FW_RULE_COUNTERS_MAP}: {e}"))?;
        let mut done = HashSet::new();
        for i in 0..counted {
            let label = label(i, &names);
            let Some(c) = before.get(label).filter(|_| done.insert(label)) else {
                continue;
            };
            let mut values = vec![RuleCounters::default(); cpus];
            values[0] = *c;
            let values = PerCpuValues::try_from(values).map_err(|e| e.to_string())?;
            let index = u32::try_from(counted + i).map_err(|e| e.to_string())?;
            array
                .set(index, values, 0)
                .map_err(|e| format!("{FW_RULE_COUNTERS_MAP}: {e}"))?;
        }
        Ok(())
    }
}

impl StageContent for Content<'_> {
    fn map_sizes(&self) -> Vec<(&'static str, u32)> {
        let c = &self.compiled;
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).max(1);
        let rules = len(c.actions.len());
        vec![
            (FW_NODES_MAP, len(c.nodes.len()).max(2)),
            (FW_ENTRIES_MAP, len(c.entries.len())),
            (FW_ACTIONS_MAP, rules),
            (FW_RATE_MAP, rules),
            // Two more: the default verdict's, the chain probe's; then as many for what they
            // carried over from the instances before. From the rules' own count (not `rules`,
            // which is 1 for none): the readers and the carry find the halves by it.
            (
                FW_RULE_COUNTERS_MAP,
                len(c.actions.len().saturating_add(2).saturating_mul(2)),
            ),
            (FW_CONF_MAP, 1),
            (FW_CT_MAP, self.conntrack.size.max(1)),
            (FW_STATS_MAP, 1),
            (FW_FRAGS_MAP, netfn_common::FRAGS_SIZE),
        ]
    }

    fn fill(&self, maps: &mut StageMaps<'_>) -> Result<(), StageError> {
        let c = &self.compiled;
        fill_array::<Node>(maps, FW_NODES_MAP, &c.nodes)?;
        fill_array::<LeafEntry>(maps, FW_ENTRIES_MAP, &c.entries)?;
        fill_array::<RuleAction>(maps, FW_ACTIONS_MAP, &c.actions)?;
        let t = &self.conntrack;
        let conf = FwConf {
            default_action: action(self.default),
            rules: u32::try_from(c.actions.len()).unwrap_or(u32::MAX),
            probe_src: u32::from_ne_bytes(self.probe.src.octets()),
            probe_dst: u32::from_ne_bytes(self.probe.dst.octets()),
            probe_port: u32::from(self.probe.port),
            _pad: 0,
            ..timeouts(t)
        };
        // Rate buckets start empty and fill at once (their last refill is "long ago"); counters
        // and statistics start at zero; the kept connection table keeps what it holds.
        fill_array::<FwConf>(maps, FW_CONF_MAP, &[conf])
    }

    /// The rules' counters carry over; failing that (a warning), the change stands and they
    /// start again from zero, as before.
    fn live(&self, maps: &mut StageMaps<'_>) -> Result<(), StageError> {
        if let Err(e) = self.carry_counters(maps) {
            tracing::warn!("firewall: the per-rule counters start again from zero: {e}");
        }
        Ok(())
    }
}

/// The stage's settings with `t`'s timeouts (in ns) and nothing else set: what a reader of the
/// connection table needs to tell a live connection from an expired one.
pub(super) fn timeouts(t: &Conntrack) -> FwConf {
    FwConf {
        tcp_syn_ns: u64::from(t.tcp_syn) * SECOND,
        tcp_established_ns: u64::from(t.tcp_established) * SECOND,
        tcp_half_closed_ns: u64::from(t.tcp_half_closed) * SECOND,
        tcp_closing_ns: u64::from(t.tcp_closing) * SECOND,
        udp_ns: u64::from(t.udp) * SECOND,
        udp_stream_ns: u64::from(t.udp_stream) * SECOND,
        icmp_ns: u64::from(t.icmp) * SECOND,
        ..FwConf::default()
    }
}

fn action(a: Action) -> u32 {
    match a {
        Action::Accept => ACTION_ACCEPT,
        Action::Drop => ACTION_DROP,
        Action::Reject => ACTION_REJECT,
    }
}
