//! Rule expansion: turns each rule into the boxes (one range per field) whose union is exactly
//! what it matches, in rule order, each with the leaf entry that checks it. This module owns the
//! normalisation of lists (nested prefixes and overlapping port ranges are merged) and the family
//! and protocol cases; it must not decide anything about the tree.

use std::net::IpAddr;

use ipnet::IpNet;

use super::CompileError;
use super::records::{
    ENTRY_ANY_PROTO, ENTRY_EGRESS, ENTRY_V4, ENTRY_V6, FIELD_DPORT, FIELD_DST, FIELD_FAMILY,
    FIELD_PROTO, FIELD_SIDE, FIELD_SPORT, FIELD_SRC, FIELDS, LeafEntry,
};
use crate::firewall::rules::{Family, PortRange, Proto, Rule, Side};

/// Most boxes one rule may expand to (the product of its list lengths, after merging).
pub const MAX_BOXES_PER_RULE: u64 = 1 << 16;
/// Most boxes a whole rule set may expand to.
pub const MAX_BOXES: usize = 1 << 22;

/// The boxes of a rule set, field by field (structure of arrays, for the builder's scans).
/// Box `i` belongs to rule `entries[i].rule`; boxes are in rule order.
#[derive(Debug, Default)]
pub struct Boxes {
    pub lo: [Vec<u128>; FIELDS],
    pub hi: [Vec<u128>; FIELDS],
    pub entries: Vec<LeafEntry>,
}

impl Boxes {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn push(&mut self, lo: [u128; FIELDS], hi: [u128; FIELDS], entry: LeafEntry) {
        for f in 0..FIELDS {
            self.lo[f].push(lo[f]);
            self.hi[f].push(hi[f]);
        }
        self.entries.push(entry);
    }
}

/// A normalised prefix: family, first address, prefix length in the 128-bit key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Prefix {
    family: u8,
    addr: u128,
    len: u8,
}

impl Prefix {
    fn of(net: &IpNet) -> Prefix {
        let net = net.trunc();
        let (family, len) = match Family::of_net(&net) {
            Family::V4 => (0, 96 + net.prefix_len()),
            Family::V6 => (1, net.prefix_len()),
        };
        Prefix {
            family,
            addr: addr_value(&net.network()),
            len,
        }
    }

    fn last(self) -> u128 {
        match self.len {
            0 => u128::MAX,
            128.. => self.addr,
            len => self.addr | (u128::MAX >> len),
        }
    }

    fn contains(self, other: Prefix) -> bool {
        self.family == other.family
            && self.len <= other.len
            && self.addr <= other.addr
            && other.addr <= self.last()
    }
}

/// An address as a number in the 128-bit key space (IPv4: the low 32 bits).
pub fn addr_value(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// `[high, low]` words of a 128-bit value.
pub fn words(value: u128) -> [u64; 2] {
    [(value >> 64) as u64, value as u64]
}

/// The prefixes of a list with those inside another one of the list removed; `[None]` (any)
/// for an empty list.
fn prefixes(list: &[IpNet]) -> Vec<Option<Prefix>> {
    if list.is_empty() {
        return vec![None];
    }
    let mut all: Vec<Prefix> = list.iter().map(Prefix::of).collect();
    all.sort_unstable();
    let mut kept: Vec<Prefix> = Vec::with_capacity(all.len());
    for p in all {
        // Prefixes nest or are disjoint, and sorting puts a container before what it contains,
        // so only the last kept prefix can contain `p`.
        if kept.last().is_some_and(|k| k.contains(p)) {
            continue;
        }
        kept.push(p);
    }
    kept.into_iter().map(Some).collect()
}

/// The non-empty ranges of a list merged (overlapping or adjacent ones joined), as inclusive
/// `(lo, hi)`; the full range for an empty list, nothing for a list of empty ranges.
fn ports(list: &[PortRange]) -> Vec<(u16, u16)> {
    if list.is_empty() {
        return vec![(0, u16::MAX)];
    }
    let mut ranges: Vec<(u16, u16)> = list
        .iter()
        .filter(|r| r.lo <= r.hi)
        .map(|r| (r.lo, r.hi))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// The protocol cases of a rule for one family choice (`None`: either family): `(family,
/// protocol)` pairs, `None` meaning any.
fn protocols(rule: &Rule, family: Option<u8>) -> Vec<(Option<u8>, Option<u8>)> {
    let fam = |f: u8| if f == 0 { Family::V4 } else { Family::V6 };
    let icmp = rule.icmp_type.is_some() || rule.proto == Proto::Icmp;
    if rule.icmp_type.is_some() && matches!(rule.proto, Proto::Tcp | Proto::Udp) {
        return Vec::new();
    }
    if icmp {
        // ICMP's number depends on the family.
        let families: &[u8] = match family {
            Some(f) => &[f][..],
            None => &[0, 1],
        };
        return families
            .iter()
            .map(|&f| (Some(f), Some(fam(f).icmp())))
            .collect();
    }
    vec![(family, rule.proto.number(Family::V4))]
}

/// Expands every rule into its boxes.
pub fn expand(rules: &[Rule]) -> Result<Boxes, CompileError> {
    let mut boxes = Boxes::default();
    for (index, rule) in rules.iter().enumerate() {
        let index =
            u32::try_from(index).map_err(|_| CompileError::TooManyRules { count: rules.len() })?;
        expand_rule(rule, index, &mut boxes)?;
        if boxes.len() > MAX_BOXES {
            return Err(CompileError::TooManyBoxes { max: MAX_BOXES });
        }
    }
    Ok(boxes)
}

fn expand_rule(rule: &Rule, index: u32, boxes: &mut Boxes) -> Result<(), CompileError> {
    let src = prefixes(&rule.src);
    let dst = prefixes(&rule.dst);
    let sport = ports(&rule.sport);
    let mut dport = ports(&rule.dport);
    if let Some(t) = rule.icmp_type {
        let t = u16::from(t);
        dport = if dport.iter().any(|&(lo, hi)| lo <= t && t <= hi) {
            vec![(t, t)]
        } else {
            Vec::new()
        };
    }
    let product = [src.len(), dst.len(), sport.len(), dport.len(), 2]
        .iter()
        .try_fold(1u64, |acc, &n| acc.checked_mul(n as u64))
        .unwrap_or(u64::MAX);
    if product > MAX_BOXES_PER_RULE {
        return Err(CompileError::RuleTooWide {
            rule: index,
            name: rule.name.clone().unwrap_or_default(),
            boxes: product,
            max: MAX_BOXES_PER_RULE,
        });
    }
    let side = match rule.from {
        Side::Ingress => 0u8,
        Side::Egress => 1u8,
    };
    for s in &src {
        for d in &dst {
            let family = match (s.map(|p| p.family), d.map(|p| p.family)) {
                (Some(a), Some(b)) if a != b => continue,
                (Some(a), _) | (_, Some(a)) => Some(a),
                (None, None) => None,
            };
            for (family, proto) in protocols(rule, family) {
                for &(sp_lo, sp_hi) in &sport {
                    for &(dp_lo, dp_hi) in &dport {
                        let mut lo = [0u128; FIELDS];
                        let mut hi = [0u128; FIELDS];
                        let (f_lo, f_hi) = family.map_or((0, 1), |f| (f, f));
                        let (p_lo, p_hi) = proto.map_or((0, 255), |p| (p, p));
                        let set = |lo: &mut [u128; FIELDS], hi: &mut [u128; FIELDS], f, l, h| {
                            lo[f as usize] = l;
                            hi[f as usize] = h;
                        };
                        set(&mut lo, &mut hi, FIELD_FAMILY, f_lo.into(), f_hi.into());
                        set(&mut lo, &mut hi, FIELD_SIDE, side.into(), side.into());
                        set(&mut lo, &mut hi, FIELD_PROTO, p_lo.into(), p_hi.into());
                        let (s_lo, s_hi) = s.map_or((0, u128::MAX), |p| (p.addr, p.last()));
                        let (d_lo, d_hi) = d.map_or((0, u128::MAX), |p| (p.addr, p.last()));
                        set(&mut lo, &mut hi, FIELD_SRC, s_lo, s_hi);
                        set(&mut lo, &mut hi, FIELD_DST, d_lo, d_hi);
                        set(&mut lo, &mut hi, FIELD_SPORT, sp_lo.into(), sp_hi.into());
                        set(&mut lo, &mut hi, FIELD_DPORT, dp_lo.into(), dp_hi.into());
                        let mut flags = match family {
                            None => ENTRY_V4 | ENTRY_V6,
                            Some(0) => ENTRY_V4,
                            Some(_) => ENTRY_V6,
                        };
                        if proto.is_none() {
                            flags |= ENTRY_ANY_PROTO;
                        }
                        if side == 1 {
                            flags |= ENTRY_EGRESS;
                        }
                        let entry = LeafEntry {
                            src: words(s_lo),
                            dst: words(d_lo),
                            sport_lo: sp_lo,
                            sport_hi: sp_hi,
                            dport_lo: dp_lo,
                            dport_hi: dp_hi,
                            rule: index,
                            src_len: s.map_or(0, |p| p.len),
                            dst_len: d.map_or(0, |p| p.len),
                            proto: proto.unwrap_or(0),
                            flags,
                        };
                        boxes.push(lo, hi, entry);
                    }
                }
            }
        }
    }
    Ok(())
}
