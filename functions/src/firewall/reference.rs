//! The naive first-match matcher: the definition of what a rule set means, written to be
//! obviously correct rather than fast (linear in rules and list lengths). The classifier is
//! tested against it; nothing on a packet path may use it.

use super::rules::{Action, Family, Packet, PortRange, Rule, RuleSet};

/// The index of the first rule that matches `packet`, or `None` (the default verdict applies).
pub fn first_match(set: &RuleSet, packet: &Packet) -> Option<u32> {
    set.rules
        .iter()
        .position(|rule| matches(rule, packet))
        .and_then(|i| u32::try_from(i).ok())
}

/// The verdict for `packet`: the first matching rule's action, or the default.
pub fn verdict(set: &RuleSet, packet: &Packet) -> Action {
    match first_match(set, packet) {
        Some(i) => set.rules[i as usize].action,
        None => set.default,
    }
}

/// Whether `rule` matches `packet`.
pub fn matches(rule: &Rule, packet: &Packet) -> bool {
    let family = Family::of(&packet.src);
    if family != Family::of(&packet.dst) {
        return false;
    }
    let proto_ok = match rule.proto.number(family) {
        None => true,
        Some(number) => packet.proto == number,
    };
    let icmp_ok = match rule.icmp_type {
        None => true,
        Some(t) => packet.proto == family.icmp() && packet.dport == u16::from(t),
    };
    rule.from == packet.side
        && (rule.src.is_empty() || rule.src.iter().any(|net| net.contains(&packet.src)))
        && (rule.dst.is_empty() || rule.dst.iter().any(|net| net.contains(&packet.dst)))
        && proto_ok
        && icmp_ok
        && ports_match(&rule.sport, packet.sport)
        && ports_match(&rule.dport, packet.dport)
}

fn ports_match(ranges: &[PortRange], port: u16) -> bool {
    ranges.is_empty() || ranges.iter().any(|r| r.contains(port))
}
