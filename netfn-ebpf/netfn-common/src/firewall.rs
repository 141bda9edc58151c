//! The firewall kind's map types and map names, shared by its eBPF stage
//! (`netfn-ebpf-programs/src/firewall.rs`) and userspace (`functions/src/firewall`).
//!
//! Three groups:
//! - the compiled rule set ([`Node`], [`LeafEntry`], [`RuleAction`]) and [`walk`], the lookup
//!   both sides run: the stage over its array maps, userspace's tests over slices, so the
//!   classifier that is unit-tested is the one the kernel runs;
//! - the connection table ([`CtKey`] → [`CtEntry`]) and the stage's settings ([`FwConf`]);
//! - counters ([`RuleCounters`], [`FwStats`]).
//!
//! Addresses in classifier records are host-order 128-bit numbers split in two `u64` words
//! (`[high, low]`; an IPv4 address is `[0, addr]`), so the structures hold IPv6 without change.

use crate::teardown::Teardown;

/// IP protocol numbers the firewall names (rules and the stage).
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Map names (the stage's own maps; each firewall function has its own instance of each).
pub const FW_NODES_MAP: &str = "NF_FW_NODES";
pub const FW_ENTRIES_MAP: &str = "NF_FW_ENTRIES";
pub const FW_ACTIONS_MAP: &str = "NF_FW_ACTIONS";
pub const FW_CONF_MAP: &str = "NF_FW_CONF";
pub const FW_RATE_MAP: &str = "NF_FW_RATE";
/// Per rule (and one more for the default verdict, one for the chain probe): packets and bytes
/// of new connections; then as many entries the stage never writes, what each carried over from
/// earlier instances (userspace writes them, readers add them in).
pub const FW_RULE_COUNTERS_MAP: &str = "NF_FW_RULE_COUNTERS";
/// Kept across settings changes: the connection table and the function's statistics.
pub const FW_CT_MAP: &str = "NF_FW_CT";
pub const FW_STATS_MAP: &str = "NF_FW_STATS";
/// Kept too: the IPv4 datagrams whose first fragment passed ([`crate::FragKey`] →
/// [`FragSeen`]), so that their later fragments (which carry no ports) follow it.
pub const FW_FRAGS_MAP: &str = "NF_FW_FRAGS";

/// The stage programs.
pub const FW_TC_PROGRAM: &str = "nf_fw_tc";
pub const FW_XDP_PROGRAM: &str = "nf_fw_xdp";

/// The firewall's drop reasons, counted at `KIND_DROP_BASE + i` of the function's counters.
pub const FW_DROP_RULE: usize = 0;
pub const FW_DROP_RATE_LIMIT: usize = 1;
pub const FW_DROP_NOT_SYN: usize = 2;
pub const FW_DROP_REJECTED: usize = 3;
/// A later fragment of an IPv4 datagram whose first fragment did not pass (dropped, not seen,
/// or seen more than [`crate::FRAG_TIMEOUT_NS`] ago).
pub const FW_DROP_FRAGMENT: usize = 4;
/// An ICMP error about no connection the firewall passed (conntrack holds it invalid; kernel
/// mode's `ct state invalid drop` counts it under the same name).
pub const FW_DROP_INVALID: usize = 5;
pub const FW_DROP_REASON_NAMES: [&str; 6] = [
    "fw-rule",
    "fw-rate-limit",
    "fw-not-syn",
    "fw-reject",
    "fw-fragment",
    "fw-invalid",
];
const _: () = assert!(FW_DROP_REASON_NAMES.len() <= super::DROP_SLOTS - super::KIND_DROP_BASE);

/// Node fields: which part of the [`Key`] a decision node compares.
pub const FIELD_FAMILY: u32 = 0;
pub const FIELD_SIDE: u32 = 1;
pub const FIELD_PROTO: u32 = 2;
pub const FIELD_SRC: u32 = 3;
pub const FIELD_DST: u32 = 4;
pub const FIELD_SPORT: u32 = 5;
pub const FIELD_DPORT: u32 = 6;
/// Number of fields (dimensions of the classification space).
pub const FIELDS: usize = 7;
/// [`Node::field`] of a leaf.
pub const NODE_LEAF: u32 = u32::MAX;

/// Trees walked per lookup: tree `t`'s root is node `t` (a tree without rules is an empty leaf).
pub const MAX_TREES: usize = 2;
/// Most node records one tree walk reads (the leaf's record included): the bound of the descent
/// loop.
pub const MAX_NODE_STEPS: usize = 48;
/// Most leaf entries one tree walk reads: the bound of the leaf scan loop.
pub const MAX_LEAF_ENTRIES: usize = 16;
/// Most map lookups one classification does, whatever the rule set: the compiler guarantees that
/// the deepest path plus the largest leaf, summed over the trees, stays within it.
pub const MAX_STEPS: usize = 64;

/// [`LeafEntry::flags`] bits.
pub const ENTRY_ANY_PROTO: u8 = 1;
/// The entry matches connections opened from the egress side (else from the ingress side).
pub const ENTRY_EGRESS: u8 = 2;
/// The entry matches IPv4 packets.
pub const ENTRY_V4: u8 = 4;
/// The entry matches IPv6 packets.
pub const ENTRY_V6: u8 = 8;

/// [`RuleAction::action`] values (also [`FwConf::default_action`]).
pub const ACTION_ACCEPT: u32 = 0;
pub const ACTION_DROP: u32 = 1;
pub const ACTION_REJECT: u32 = 2;
/// [`RuleAction::flags`]: the rule has a rate limit (`pps`, `burst`).
pub const ACTION_RATE_LIMITED: u32 = 1;

/// One decision node (array map, index → node; tree `t`'s root is index `t`).
///
/// Internal node: go to `left` if `key[field] < threshold`, else to `right`. Leaf
/// (`field == NODE_LEAF`): the candidate entries are `left .. left + right` of the entry array,
/// in rule order, at most [`MAX_LEAF_ENTRIES`].
///
/// Layout: `threshold: [u64; 2]` (0), `field, left, right, _pad: u32` (16..32); 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Node {
    /// `[high, low]` words of the 128-bit threshold (ports and small fields: `[0, value]`).
    pub threshold: [u64; 2],
    pub field: u32,
    pub left: u32,
    pub right: u32,
    pub _pad: u32,
}

/// One candidate of a leaf: a box of rule `rule`, checked against the whole key.
///
/// Addresses are prefixes: the key's address matches when its top `*_len` bits (of 128) equal
/// the entry's; an IPv4 /n prefix has length 96 + n, "any" has length 0. Ports: inclusive
/// ranges.
///
/// Layout: `src, dst: [u64; 2]` (0, 16), `sport_lo, sport_hi, dport_lo, dport_hi: u16`
/// (32..40), `rule: u32` (40), `src_len, dst_len, proto, flags: u8` (44..48); 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LeafEntry {
    pub src: [u64; 2],
    pub dst: [u64; 2],
    pub sport_lo: u16,
    pub sport_hi: u16,
    pub dport_lo: u16,
    pub dport_hi: u16,
    /// Index of the rule in the rule set (and in the [`RuleAction`] array).
    pub rule: u32,
    pub src_len: u8,
    pub dst_len: u8,
    /// Protocol number, unless `flags` has [`ENTRY_ANY_PROTO`].
    pub proto: u8,
    /// [`ENTRY_ANY_PROTO`] | [`ENTRY_EGRESS`] | [`ENTRY_V4`] | [`ENTRY_V6`].
    pub flags: u8,
}

/// What a rule does (array map, rule index → action). Layout: 4 × u32; 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleAction {
    /// [`ACTION_ACCEPT`], [`ACTION_DROP`] or [`ACTION_REJECT`].
    pub action: u32,
    /// [`ACTION_RATE_LIMITED`] when `pps` and `burst` apply.
    pub flags: u32,
    pub pps: u32,
    pub burst: u32,
}

/// A connection's first packet as the classifier sees it (built once per lookup, on the stack).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Key {
    /// 0: IPv4, 1: IPv6.
    pub family: u8,
    /// 0: opened from the ingress side, 1: from the egress side.
    pub side: u8,
    pub proto: u8,
    pub src: [u64; 2],
    pub dst: [u64; 2],
    pub sport: u16,
    /// Destination port, or the ICMP type for ICMP/ICMPv6.
    pub dport: u16,
}

impl Key {
    /// The value of one field, as a node compares it.
    #[inline(always)]
    pub fn field(&self, field: u32) -> [u64; 2] {
        match field {
            FIELD_FAMILY => [0, self.family as u64],
            FIELD_SIDE => [0, self.side as u64],
            FIELD_PROTO => [0, self.proto as u64],
            FIELD_SRC => self.src,
            FIELD_DST => self.dst,
            FIELD_SPORT => [0, self.sport as u64],
            _ => [0, self.dport as u64],
        }
    }
}

/// `a < b` for `[high, low]` words.
#[inline(always)]
pub fn less(a: [u64; 2], b: [u64; 2]) -> bool {
    a[0] < b[0] || (a[0] == b[0] && a[1] < b[1])
}

/// Whether the top `len` bits (of 128) of `key` and `prefix` are equal (`len` ≤ 128).
#[inline(always)]
pub fn prefix_matches(key: [u64; 2], prefix: [u64; 2], len: u8) -> bool {
    if len == 0 {
        true
    } else if len <= 64 {
        (key[0] ^ prefix[0]) >> (64 - len as u32) == 0
    } else {
        let low = if len >= 128 { 128 } else { len as u32 };
        key[0] == prefix[0] && (key[1] ^ prefix[1]) >> (128 - low) == 0
    }
}

impl LeafEntry {
    /// Whether this entry matches `key` in every field.
    #[inline(always)]
    pub fn matches(&self, key: &Key) -> bool {
        let family_bit = if key.family == 0 { ENTRY_V4 } else { ENTRY_V6 };
        let egress = self.flags & ENTRY_EGRESS != 0;
        self.flags & family_bit != 0
            && egress == (key.side != 0)
            && (self.flags & ENTRY_ANY_PROTO != 0 || self.proto == key.proto)
            && self.sport_lo <= key.sport
            && key.sport <= self.sport_hi
            && self.dport_lo <= key.dport
            && key.dport <= self.dport_hi
            && prefix_matches(key.src, self.src, self.src_len)
            && prefix_matches(key.dst, self.dst, self.dst_len)
    }
}

/// "No match yet" in [`walk`]: larger than every rule index.
pub const NO_RULE: u32 = u32::MAX;

/// The result of one walk: the first matching rule ([`NO_RULE`]: none) and the map lookups it
/// took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    pub rule: u32,
    pub steps: u32,
}

/// Classifies `key`: for each of the [`MAX_TREES`] trees, descends from its root (node `t`) to a
/// leaf (at most [`MAX_NODE_STEPS`] node reads), then checks the leaf's entries in order (at most
/// [`MAX_LEAF_ENTRIES`]), stopping at the first match or at the first entry of a rule no better
/// than the best match so far (entries are in rule order). The lowest rule index wins. `node`
/// and `entry` are one array-map lookup each (`None`: out of range, which ends that tree's walk
/// with no match; it cannot happen with a structure the compiler built). They lend the records
/// rather than copy them: in the stage, copies took stack the verifier's 512 bytes cannot spare.
#[inline(always)]
pub fn walk<'a>(
    node: impl Fn(u32) -> Option<&'a Node>,
    entry: impl Fn(u32) -> Option<&'a LeafEntry>,
    key: &Key,
) -> Walk {
    let mut steps = 0;
    let mut best = NO_RULE;
    for tree in 0..MAX_TREES as u32 {
        let mut index = tree;
        let mut first = 0;
        let mut count = 0;
        for _ in 0..MAX_NODE_STEPS {
            let Some(n) = node(index) else {
                break;
            };
            steps += 1;
            if n.field == NODE_LEAF {
                first = n.left;
                count = n.right;
                break;
            }
            index = if less(key.field(n.field), n.threshold) {
                n.left
            } else {
                n.right
            };
        }
        for i in 0..MAX_LEAF_ENTRIES as u32 {
            if i >= count {
                break;
            }
            let Some(e) = entry(first.wrapping_add(i)) else {
                break;
            };
            steps += 1;
            if e.rule >= best {
                break;
            }
            if e.matches(key) {
                best = e.rule;
                break;
            }
        }
    }
    Walk { rule: best, steps }
}

/// The stage's settings for one function (array map of one element).
///
/// Timeouts in nanoseconds (`bpf_ktime_get_ns` time). Layout: 6 × u32 then 7 × u64; 80 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FwConf {
    /// The verdict for new connections no rule matches: [`ACTION_ACCEPT`] / [`ACTION_DROP`] /
    /// [`ACTION_REJECT`].
    pub default_action: u32,
    /// Rules in the set: the default verdict's counters are at this index of
    /// [`FW_RULE_COUNTERS_MAP`], the chain probe's at the next.
    pub rules: u32,
    /// The host agent's chain probe, accepted before the rules: UDP from `probe_src` to
    /// `probe_dst` (packet byte order) port `probe_port`, opened from the ingress side. Port 0:
    /// no probe.
    pub probe_src: u32,
    pub probe_dst: u32,
    pub probe_port: u32,
    pub _pad: u32,
    /// A TCP connection that saw a SYN and nothing back yet.
    pub tcp_syn_ns: u64,
    pub tcp_established_ns: u64,
    /// After a FIN from one side only.
    pub tcp_half_closed_ns: u64,
    /// After a FIN from each side, or an RST.
    pub tcp_closing_ns: u64,
    /// UDP before a reply, and after one.
    pub udp_ns: u64,
    pub udp_stream_ns: u64,
    /// ICMP echo and other ICMP pseudo-connections.
    pub icmp_ns: u64,
}

impl FwConf {
    /// How long a connection of `proto` in `state` may stay idle (the stage drops it after;
    /// userspace counts it as expired, not live).
    #[inline(always)]
    pub fn idle_timeout_ns(&self, proto: u8, state: u8) -> u64 {
        match (proto, state) {
            (PROTO_TCP, CT_NEW) => self.tcp_syn_ns,
            (PROTO_TCP, CT_ESTABLISHED) => self.tcp_established_ns,
            (PROTO_TCP, s) if FW_TEARDOWN.half_closed(s) => self.tcp_half_closed_ns,
            (PROTO_TCP, _) => self.tcp_closing_ns,
            (PROTO_UDP, CT_NEW) => self.udp_ns,
            (PROTO_UDP, _) => self.udp_stream_ns,
            _ => self.icmp_ns,
        }
    }

    /// Whether the connection over `proto` whose entry is `ct` is live at `now`: idle no longer
    /// than its state's timeout (an entry another CPU stamped after `now` is fresh).
    #[inline(always)]
    pub fn live(&self, proto: u8, ct: &CtEntry, now: u64) -> bool {
        now.saturating_sub(ct.last_seen_ns) <= self.idle_timeout_ns(proto, ct.state)
    }
}

/// A connection, in a direction-independent form: the lower (address, port) endpoint first, so
/// a packet and its reply find the same entry with one lookup. For ICMP echo the "ports" are the
/// echo identifier on both sides.
///
/// Layout: `a, b: [u64; 2]` (0, 16), `a_port, b_port: u16` (32, 34), `proto: u8` (36),
/// `_pad: [u8; 3]`; 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub a: [u64; 2],
    pub b: [u64; 2],
    pub a_port: u16,
    pub b_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// When a datagram's first fragment passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragSeen {
    pub at_ns: u64,
}

/// [`CtEntry::state`] values.
pub const CT_NEW: u8 = 0;
/// A reply was seen (TCP: the connection is established; UDP: a stream).
pub const CT_ESTABLISHED: u8 = 1;
/// TCP: a FIN from each side, or an RST, was seen.
pub const CT_CLOSING: u8 = 2;
/// TCP: a FIN from the side that opened the connection, none from the other yet.
pub const CT_FIN_BY_OPENER: u8 = 3;
/// TCP: a FIN from the side that answered, none from the opener yet.
pub const CT_FIN_BY_ANSWERER: u8 = 4;

/// The teardown states of [`CtEntry::state`].
pub const FW_TEARDOWN: Teardown = Teardown {
    new: CT_NEW,
    established: CT_ESTABLISHED,
    closing: CT_CLOSING,
    fin_by_opener: CT_FIN_BY_OPENER,
    fin_by_answerer: CT_FIN_BY_ANSWERER,
};

/// [`CtEntry::flags`]: the connection was opened by the `a` endpoint of its key.
pub const CT_OPENED_BY_A: u8 = 1;
/// [`CtEntry::flags`]: the connection was opened from the egress side.
pub const CT_FROM_EGRESS: u8 = 2;

/// One tracked connection. Layout: `last_seen_ns: u64`, `rule: u32`, `state, flags: u8`,
/// `_pad: [u8; 2]`; 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtEntry {
    pub last_seen_ns: u64,
    /// The rule that accepted it ([`NO_RULE`]: the default verdict).
    pub rule: u32,
    pub state: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// A rule's token bucket (array map, rule index → bucket): `credit_ns` is time credit, one
/// packet costs `1e9 / pps` ns of it, and it is capped at `burst` packets' worth. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateBucket {
    pub credit_ns: u64,
    pub last_ns: u64,
}

/// Packets and bytes of new connections a rule decided (per CPU). 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// One firewall function's statistics (per CPU, kept across settings changes). 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FwStats {
    /// Connections entered into the table.
    pub ct_created: u64,
    /// Packets of tracked connections (passed without rule evaluation).
    pub ct_hits: u64,
    /// Entries found expired and removed.
    pub ct_expired: u64,
    /// New connections the table could not take (the insert failed): still decided by the
    /// rules, not tracked.
    pub ct_insert_failed: u64,
    /// Classifications (new connections evaluated against the rules).
    pub classified: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY (all): `#[repr(C)]`, `Copy`, integer fields only, laid out without padding (the
    // layouts are stated on each type and asserted in the tests); every bit pattern is valid.
    unsafe impl aya::Pod for Node {}
    unsafe impl aya::Pod for LeafEntry {}
    unsafe impl aya::Pod for RuleAction {}
    unsafe impl aya::Pod for FwConf {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for FragSeen {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for RuleCounters {}
    unsafe impl aya::Pod for RateBucket {}
    unsafe impl aya::Pod for FwStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<Node>(), 32);
        assert_eq!(core::mem::size_of::<LeafEntry>(), 48);
        assert_eq!(core::mem::size_of::<RuleAction>(), 16);
        assert_eq!(core::mem::size_of::<FwConf>(), 80);
        assert_eq!(core::mem::size_of::<CtKey>(), 40);
        assert_eq!(core::mem::size_of::<FragSeen>(), 8);
        assert_eq!(core::mem::size_of::<CtEntry>(), 16);
        assert_eq!(core::mem::size_of::<RuleCounters>(), 16);
        assert_eq!(core::mem::size_of::<RateBucket>(), 16);
        assert_eq!(core::mem::size_of::<FwStats>(), 40);
        assert!(
            FW_DROP_REASON_NAMES.len() <= super::super::DROP_SLOTS - super::super::KIND_DROP_BASE
        );
    }

    #[test]
    fn tcp_timeouts_follow_the_teardown() {
        let conf = FwConf {
            tcp_syn_ns: 1,
            tcp_established_ns: 2,
            tcp_half_closed_ns: 3,
            tcp_closing_ns: 4,
            ..FwConf::default()
        };
        for (state, timeout) in [
            (CT_NEW, 1),
            (CT_ESTABLISHED, 2),
            (CT_FIN_BY_OPENER, 3),
            (CT_FIN_BY_ANSWERER, 3),
            (CT_CLOSING, 4),
        ] {
            assert_eq!(
                conf.idle_timeout_ns(PROTO_TCP, state),
                timeout,
                "state {state}"
            );
        }
    }

    #[test]
    fn prefixes_match_their_top_bits() {
        let v4 = |a: u32| [0u64, a as u64];
        assert!(prefix_matches(v4(0x0a01_0203), v4(0x0a01_0000), 96 + 16));
        assert!(!prefix_matches(v4(0x0a02_0203), v4(0x0a01_0000), 96 + 16));
        assert!(prefix_matches(v4(1), v4(1), 128));
        assert!(!prefix_matches(v4(1), v4(0), 128));
        assert!(prefix_matches([5, 5], [0, 0], 0));
        assert!(prefix_matches([0xff00 << 48, 9], [0xff00 << 48, 1], 8));
    }
}
