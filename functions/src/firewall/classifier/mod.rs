//! The rule compiler: turns a [`RuleSet`] into a decision tree laid out as flat records that an
//! eBPF program walks with bounded loops, and [`Compiled::lookup`], which walks it exactly as
//! that program will. This module owns the compile entry point, its errors and limits; the
//! record layouts are in [`records`], rule expansion in `boxes`, the tree builder in `build`. It
//! must not parse or validate configuration, nor touch maps or the kernel.
//!
//! # Structure: two HyperSplit-style decision trees over boxes
//!
//! Each rule expands into boxes (one inclusive range per field: family, opening side, protocol,
//! source, destination, source port, destination port/ICMP type; a rule's lists make a union of
//! boxes). Boxes are grouped into two trees: narrow sources (longer than /7 for IPv4) and wide
//! ones (any source included). Each tree is a binary decision tree: an internal node sends the
//! key left when `key[field] < threshold`; a leaf lists at most 16 (preferably 8) boxes in rule
//! order, checked one by one. A lookup walks both trees and keeps the lowest rule index; a leaf
//! scan stops at the first match or at a rule no better than the other tree's. Regions prune
//! boxes a covering or shadowing earlier box makes unreachable; identical leaves are shared.
//!
//! **Guaranteed bound**: at most 64 map lookups per classification (the deepest path plus the
//! largest leaf, summed over the two trees), whatever the rule set; the eBPF loops are bounded by
//! 48 node reads and 16 entry checks per tree. A rule set that cannot meet the bound or the map
//! sizes (2 Mi nodes, 2 Mi entries) gets a [`CompileError`], never a structure that breaks it.
//!
//! **Why** (measured by `measure.rs`, release, 100,000 rules): per-field bit vectors
//! (bpf-iptables) would read 7 × 1,563 = 10,941 words per lookup and need up to 2.4 GB of vectors
//! (143,740 source intervals × 1,563 words for the security-group shape); RFC-style cross products
//! need 2.0 million source × destination classes for security groups and 8.4 × 10⁹ for random
//! prefixes: neither is near-flat or modest. A single decision tree was small for random rule
//! sets (2.4 MB, ≤ 32 steps) but security groups, where "any source, port p" rules cross
//! "source s" rules, copied every wide rule into every source cut: 27 MB at 10,000 rules and more
//! than 2 Mi nodes at 100,000. Splitting off the wide-source rules (EffiCuts' separable trees)
//! removes that crossing: 7.6 MB, 413 ms, ≤ 47 steps (mean 34) at 100,000 security-group rules.
//! What remains pathological is crossing within one group (hosts of a /9 against ports of the
//! whole /9, at scale): that is the case that gets `TooManyNodes` or `TooManySteps`.

mod boxes;
mod build;
pub mod records;

#[cfg(test)]
mod measure;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use thiserror::Error;

use super::rules::{Action, Family, Packet, RuleSet, Side};
use boxes::{addr_value, words};
use records::{
    ACTION_ACCEPT, ACTION_DROP, ACTION_RATE_LIMITED, ACTION_REJECT, Key, LeafEntry,
    MAX_LEAF_ENTRIES, MAX_NODE_STEPS, MAX_STEPS, MAX_TREES, Node, RuleAction, Walk, walk,
};

/// The sizes a compiled structure must respect. [`Limits::EBPF`] is what the eBPF program's loops
/// and maps allow; tests may tighten it, never loosen it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most node records on any path from a tree's root to a leaf (leaf included).
    pub max_node_steps: usize,
    /// Most entries in one leaf.
    pub max_leaf: usize,
    /// Most map lookups of a whole classification (every tree's deepest path and largest leaf).
    pub max_steps: usize,
    /// Most node records, all trees together (32 bytes each).
    pub max_nodes: usize,
    /// Most leaf entries (48 bytes each).
    pub max_entries: usize,
}

impl Limits {
    /// Per tree at most 48 node reads and 16 entry checks, at most 64 map lookups for the whole
    /// classification; at most 64 MiB of nodes and 96 MiB of leaf entries (2 Mi records each).
    pub const EBPF: Limits = Limits {
        max_node_steps: MAX_NODE_STEPS,
        max_leaf: MAX_LEAF_ENTRIES,
        max_steps: MAX_STEPS,
        max_nodes: 1 << 21,
        max_entries: 1 << 21,
    };
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("{count} rules are more than the classifier can number")]
    TooManyRules { count: usize },
    /// `rule` and `rules` are indexes in the rule set; messages number rules from 1, as
    /// validate's other messages (and an operator reading the file) do.
    #[error(
        "rule {} {name:?}: its lists combine into {boxes} cases (source × destination × \
         ports), more than {max}; split it into several rules",
        .rule + 1
    )]
    RuleTooWide {
        rule: u32,
        name: String,
        boxes: u64,
        max: u64,
    },
    #[error("the rules combine into more than {max} cases")]
    TooManyBoxes { max: usize },
    #[error(
        "rules {:?} overlap in a way the classifier cannot separate within \
         {max_node_steps} decisions and {max_leaf} final checks",
        .rules.iter().map(|r| r + 1).collect::<Vec<_>>()
    )]
    TooDeep {
        max_node_steps: usize,
        max_leaf: usize,
        rules: Vec<u32>,
    },
    #[error(
        "the classifier would need {steps} map lookups for some packets, more than {max} \
         (rules overlapping in too many ways)"
    )]
    TooManySteps { steps: usize, max: usize },
    #[error("the rule set needs more than {max} decision nodes (rules crossing each other)")]
    TooManyNodes { max: usize },
    #[error("the rule set needs more than {max} leaf entries (rules crossing each other)")]
    TooManyEntries { max: usize },
    #[error("limits looser than the eBPF program allows")]
    LimitsTooLoose,
    #[error("classifier bug: {0}")]
    Internal(&'static str),
}

impl CompileError {
    /// The rule (an index in the rule set) the error names first, if it names one: where
    /// validate reports it.
    pub fn rule(&self) -> Option<u32> {
        match self {
            CompileError::RuleTooWide { rule, .. } => Some(*rule),
            CompileError::TooDeep { rules, .. } => rules.first().copied(),
            _ => None,
        }
    }
}

/// A compiled rule set: the arrays the eBPF program's maps will hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// Decision nodes; the root is node 0.
    pub nodes: Vec<Node>,
    /// Leaf entries, referenced by leaves as `first .. first + count`.
    pub entries: Vec<LeafEntry>,
    /// What each rule does, by rule index.
    pub actions: Vec<RuleAction>,
    /// The verdict when no rule matches.
    pub default: Action,
    pub stats: Stats,
}

/// Facts about a compiled structure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Boxes the rules expanded to.
    pub boxes: usize,
    /// Per tree: most node records a walk reads (leaf included).
    pub max_depth: [usize; MAX_TREES],
    /// Per tree: most entries of any leaf.
    pub max_leaf: [usize; MAX_TREES],
}

impl Compiled {
    /// The index of the first rule matching `packet` (`None`: the default verdict applies).
    pub fn lookup(&self, packet: &Packet) -> Option<u32> {
        self.walk(packet).rule
    }

    /// The lookup, with the number of map lookups it took.
    pub fn walk(&self, packet: &Packet) -> Walk {
        match key(packet) {
            Some(key) => walk(&self.nodes, &self.entries, &key),
            None => Walk {
                rule: None,
                steps: 0,
            },
        }
    }

    /// Rules no packet can reach first: the compiler dropped every case of theirs as covered by
    /// earlier rules, so no leaf holds them. (A rule it could not prove shadowed keeps its
    /// entries: this never names a rule that can match, but may miss one that cannot.)
    pub fn unreachable_rules(&self) -> Vec<u32> {
        let mut reached = vec![false; self.actions.len()];
        for e in &self.entries {
            if let Some(r) = reached.get_mut(e.rule as usize) {
                *r = true;
            }
        }
        (0u32..)
            .zip(reached)
            .filter_map(|(i, r)| (!r).then_some(i))
            .collect()
    }

    /// Bytes of map values (nodes, leaf entries, actions).
    pub fn memory_bytes(&self) -> usize {
        self.nodes.len() * size_of::<Node>()
            + self.entries.len() * size_of::<LeafEntry>()
            + self.actions.len() * size_of::<RuleAction>()
    }

    /// Most map lookups any packet can take (the structure's own bound, at most
    /// [`records::MAX_STEPS`]).
    pub fn max_steps(&self) -> usize {
        (0..MAX_TREES)
            .map(|t| self.stats.max_depth[t].max(1) + self.stats.max_leaf[t])
            .sum()
    }
}

/// The classifier's key for a packet; `None` when its addresses differ in family.
pub fn key(packet: &Packet) -> Option<Key> {
    let family = Family::of(&packet.src);
    if family != Family::of(&packet.dst) {
        return None;
    }
    let value = |a: &IpAddr| words(addr_value(a));
    Some(Key {
        family: u8::from(family == Family::V6),
        side: u8::from(packet.side == Side::Egress),
        proto: packet.proto,
        src: value(&packet.src),
        dst: value(&packet.dst),
        sport: packet.sport,
        dport: packet.dport,
    })
}

/// Compiles `set` for the eBPF program's limits.
pub fn compile(set: &RuleSet) -> Result<Compiled, CompileError> {
    compile_with(set, &Limits::EBPF)
}

/// Compiles `set` within `limits` (each at most [`Limits::EBPF`]'s).
pub fn compile_with(set: &RuleSet, limits: &Limits) -> Result<Compiled, CompileError> {
    let max = Limits::EBPF;
    if limits.max_node_steps > max.max_node_steps
        || limits.max_leaf > max.max_leaf
        || limits.max_steps > max.max_steps
        || limits.max_nodes > max.max_nodes
        || limits.max_entries > max.max_entries
        || limits.max_node_steps == 0
    {
        return Err(CompileError::LimitsTooLoose);
    }
    let boxes = boxes::expand(&set.rules)?;
    let tree = build::build(&boxes, limits)?;
    let actions = set
        .rules
        .iter()
        .map(|rule| RuleAction {
            action: match rule.action {
                Action::Accept => ACTION_ACCEPT,
                Action::Drop => ACTION_DROP,
                Action::Reject => ACTION_REJECT,
            },
            flags: if rule.rate.is_some() {
                ACTION_RATE_LIMITED
            } else {
                0
            },
            pps: rule.rate.map_or(0, |r| r.pps),
            burst: rule.rate.map_or(0, |r| r.burst),
        })
        .collect();
    Ok(Compiled {
        nodes: tree.nodes,
        entries: tree.entries,
        actions,
        default: set.default,
        stats: Stats {
            boxes: boxes.len(),
            max_depth: tree.max_depth,
            max_leaf: tree.max_leaf,
        },
    })
}
