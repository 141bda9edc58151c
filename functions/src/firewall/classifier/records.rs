//! The compiled classifier's records and the walk over them: plain `#[repr(C)]` structs linked by
//! array indexes (no pointers), meant to live in BPF array maps, and [`walk`], the lookup written
//! the way the eBPF program will run it (two bounded loops, one array lookup per step). This
//! module owns the layouts and the walk; it must not build records (see `build`) nor know about
//! rules beyond their index.
//!
//! Field values are host-order numbers: addresses as 128-bit integers split in two `u64` words
//! (`[high, low]`; an IPv4 address is the low 32 bits, `[0, addr]`), ports and ICMP types as
//! `u16`. The eBPF side converts the packet's network-order fields once, when it builds its
//! [`Key`].

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
/// the deepest path plus the largest leaf, summed over the trees, stays within it (the loops'
/// bounds alone would allow `MAX_TREES * (MAX_NODE_STEPS + MAX_LEAF_ENTRIES)` = 128).
pub const MAX_STEPS: usize = 64;

/// [`LeafEntry::flags`] bits.
pub const ENTRY_ANY_PROTO: u8 = 1;
/// The entry matches connections opened from the egress side (else from the ingress side).
pub const ENTRY_EGRESS: u8 = 2;
/// The entry matches IPv4 packets.
pub const ENTRY_V4: u8 = 4;
/// The entry matches IPv6 packets.
pub const ENTRY_V6: u8 = 8;

/// [`RuleAction::action`] values.
pub const ACTION_ACCEPT: u32 = 0;
pub const ACTION_DROP: u32 = 1;
pub const ACTION_REJECT: u32 = 2;
/// [`RuleAction::flags`]: the rule has a rate limit (`pps`, `burst`).
pub const ACTION_RATE_LIMITED: u32 = 1;

/// One decision node (array map, index → node; the root is index 0).
///
/// Internal node: go to `left` if `key[field] < threshold`, else to `right`. Leaf
/// (`field == NODE_LEAF`): the candidate entries are `left .. left + right` of the entry array,
/// in rule order, at most [`MAX_LEAF_ENTRIES`]. Several parents may share one leaf.
///
/// Layout: `threshold: [u64; 2]` (offset 0), `field: u32` (16), `left: u32` (20), `right: u32`
/// (24), `_pad: u32` (28); 32 bytes, 8-byte aligned, no implicit padding.
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

/// One candidate of a leaf (array map, index → entry): a box of the rule `rule`, checked against
/// the whole key (a rule whose lists make a union of boxes has one entry per box).
///
/// Addresses are prefixes: the key's address matches when its top `*_len` bits (of 128) equal
/// the entry's; an IPv4 /n prefix has length 96 + n (the high 96 bits of an IPv4 key are 0),
/// "any" has length 0. Ports: inclusive ranges.
///
/// Layout: `src: [u64; 2]` (0), `dst: [u64; 2]` (16), `sport_lo, sport_hi, dport_lo, dport_hi:
/// u16` (32..40), `rule: u32` (40), `src_len, dst_len, proto, flags: u8` (44..48); 48 bytes,
/// 8-byte aligned, no implicit padding.
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

/// What a rule does (array map, rule index → action).
///
/// Layout: `action, flags, pps, burst: u32`; 16 bytes, 4-byte aligned, no padding.
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

const _: () = assert!(size_of::<Node>() == 32);
const _: () = assert!(size_of::<LeafEntry>() == 48);
const _: () = assert!(size_of::<RuleAction>() == 16);

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
            FIELD_FAMILY => [0, u64::from(self.family)],
            FIELD_SIDE => [0, u64::from(self.side)],
            FIELD_PROTO => [0, u64::from(self.proto)],
            FIELD_SRC => self.src,
            FIELD_DST => self.dst,
            FIELD_SPORT => [0, u64::from(self.sport)],
            _ => [0, u64::from(self.dport)],
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
        (key[0] ^ prefix[0]) >> (64 - u32::from(len)) == 0
    } else {
        key[0] == prefix[0] && (key[1] ^ prefix[1]) >> (128 - u32::from(len.min(128))) == 0
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

/// The result of one walk: the first matching rule and the map lookups it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    pub rule: Option<u32>,
    pub steps: u32,
}

/// Classifies `key`: for each of the [`MAX_TREES`] trees, descends from its root (node `t`) to a
/// leaf (at most [`MAX_NODE_STEPS`] node reads), then checks the leaf's entries in order (at most
/// [`MAX_LEAF_ENTRIES`]), stopping at the first match or at the first entry of a rule no better
/// than the best match so far (entries are in rule order). The lowest rule index wins. Each `get`
/// stands for one BPF array map lookup; a failed lookup (index out of range) ends that tree's
/// walk with no match, as the eBPF program will (it cannot happen with a structure `compile`
/// built).
pub fn walk(nodes: &[Node], entries: &[LeafEntry], key: &Key) -> Walk {
    let mut steps = 0;
    let mut best = NO_RULE;
    for tree in 0..MAX_TREES as u32 {
        let mut index = tree;
        let mut leaf = None;
        for _ in 0..MAX_NODE_STEPS {
            let Some(node) = nodes.get(index as usize) else {
                break;
            };
            steps += 1;
            if node.field == NODE_LEAF {
                leaf = Some((node.left, node.right));
                break;
            }
            index = if less(key.field(node.field), node.threshold) {
                node.left
            } else {
                node.right
            };
        }
        let Some((first, count)) = leaf else {
            continue;
        };
        for i in 0..MAX_LEAF_ENTRIES as u32 {
            if i >= count {
                break;
            }
            let Some(entry) = entries.get(first.wrapping_add(i) as usize) else {
                break;
            };
            steps += 1;
            if entry.rule >= best {
                break;
            }
            if entry.matches(key) {
                best = entry.rule;
                break;
            }
        }
    }
    Walk {
        rule: (best != NO_RULE).then_some(best),
        steps,
    }
}

/// "No match yet" in [`walk`]: larger than every rule index.
pub const NO_RULE: u32 = u32::MAX;
