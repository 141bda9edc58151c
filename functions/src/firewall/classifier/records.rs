//! The compiled classifier's records, as the eBPF stage reads them from its maps: the layouts
//! and the walk live in `netfn_common::firewall` (shared with the eBPF program, so the lookup
//! the tests check is the one the kernel runs); this module re-exports them and walks slices.

pub use netfn_common::firewall::{
    ACTION_ACCEPT, ACTION_DROP, ACTION_RATE_LIMITED, ACTION_REJECT, ENTRY_ANY_PROTO, ENTRY_EGRESS,
    ENTRY_V4, ENTRY_V6, FIELD_DPORT, FIELD_DST, FIELD_FAMILY, FIELD_PROTO, FIELD_SIDE, FIELD_SPORT,
    FIELD_SRC, FIELDS, Key, LeafEntry, MAX_LEAF_ENTRIES, MAX_NODE_STEPS, MAX_STEPS, MAX_TREES,
    NO_RULE, NODE_LEAF, Node, RuleAction,
};

/// The result of one walk: the first matching rule and the map lookups it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    pub rule: Option<u32>,
    pub steps: u32,
}

/// [`netfn_common::firewall::walk`] over slices (one slice read stands for one map lookup).
pub fn walk(nodes: &[Node], entries: &[LeafEntry], key: &Key) -> Walk {
    let w =
        netfn_common::firewall::walk(|i| nodes.get(i as usize), |i| entries.get(i as usize), key);
    Walk {
        rule: (w.rule != NO_RULE).then_some(w.rule),
        steps: w.steps,
    }
}
