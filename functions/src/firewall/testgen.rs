//! Test-only generators: a small deterministic PRNG, random rule sets of a few shapes, and random
//! packets biased towards rule boundaries (prefix edges and ports at range ends, ±1). Used by the
//! classifier's property tests and its measurement; never by library code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::rules::{
    Action, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Packet, PortRange, Proto, RateLimit,
    Rule, RuleSet, Side,
};

/// SplitMix64: deterministic, seedable, good enough for tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5eed_f00d_cafe_b0ba)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn port(&mut self) -> u16 {
        self.next_u64() as u16
    }
}

/// Rule set shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// For property tests: nested and overlapping prefixes from a few bases, both families,
    /// ports at edges, lists, every protocol, both sides, ICMP types.
    Mixed,
    /// Security-group like: mostly /24–/32 sources or any, a few destinations, TCP/UDP single
    /// ports and some ranges.
    SecurityGroup,
    /// Random prefixes of random lengths (/0 to /32) and random port ranges.
    Adversarial,
    /// Random prefixes of /8 to /32 and port ranges of random widths: little shadowing.
    Dense,
}

const EDGE_PORTS: [u16; 12] = [0, 1, 22, 53, 80, 443, 1023, 1024, 8080, 32768, 65534, 65535];
const POPULAR_PORTS: [u16; 18] = [
    22, 80, 443, 3306, 5432, 6379, 8080, 8443, 53, 123, 25, 110, 143, 993, 995, 5672, 9092, 27017,
];
const V4_BASES: [u32; 4] = [0x0a00_0000, 0x0a01_0200, 0xc0a8_0100, 0xc0a8_0180];

fn v4(addr: u32, len: u8) -> IpNet {
    IpNet::V4(
        Ipv4Net::new(Ipv4Addr::from(addr), len)
            .expect("len <= 32")
            .trunc(),
    )
}

fn v6(addr: u128, len: u8) -> IpNet {
    IpNet::V6(
        Ipv6Net::new(Ipv6Addr::from(addr), len)
            .expect("len <= 128")
            .trunc(),
    )
}

/// A prefix for the mixed shape: near a few bases so that prefixes nest and overlap.
fn mixed_prefix(rng: &mut Rng) -> IpNet {
    if rng.chance(12) {
        let base = 0x2001_0db8_u128 << 96;
        let len = rng.pick(&[0u8, 16, 32, 48, 64, 96, 120, 127, 128]);
        return v6(
            base | u128::from(rng.below(4)) << 64 | u128::from(rng.below(256)),
            len,
        );
    }
    let base = rng.pick(&V4_BASES);
    let len = rng.pick(&[0u8, 1, 8, 16, 23, 24, 25, 28, 30, 31, 32, 32]);
    v4(base | rng.below(512) as u32, len)
}

fn ranges(rng: &mut Rng, edge: bool) -> Vec<PortRange> {
    let count = rng.pick(&[1usize, 1, 1, 2, 3]);
    (0..count)
        .map(|_| {
            let lo = if edge {
                rng.pick(&EDGE_PORTS)
            } else {
                rng.port()
            };
            match rng.below(4) {
                0 | 1 => PortRange::single(lo),
                2 => PortRange {
                    lo,
                    hi: lo.saturating_add(rng.below(2000) as u16),
                },
                _ => {
                    let hi = if edge {
                        rng.pick(&EDGE_PORTS)
                    } else {
                        rng.port()
                    };
                    PortRange {
                        lo: lo.min(hi),
                        hi: lo.max(hi),
                    }
                }
            }
        })
        .collect()
}

fn mixed_rule(rng: &mut Rng) -> Rule {
    let mut rule = Rule::any(rng.pick(&[Action::Accept, Action::Drop, Action::Reject]));
    let list = |rng: &mut Rng| -> Vec<IpNet> {
        if rng.chance(40) {
            Vec::new()
        } else {
            let n = rng.pick(&[1usize, 1, 1, 2, 3]);
            (0..n).map(|_| mixed_prefix(rng)).collect()
        }
    };
    rule.src = list(rng);
    rule.dst = list(rng);
    rule.proto = rng.pick(&[Proto::Any, Proto::Tcp, Proto::Udp, Proto::Icmp]);
    if rng.chance(35) {
        rule.sport = ranges(rng, true);
    }
    if rng.chance(60) {
        rule.dport = ranges(rng, true);
    }
    if rng.chance(8) || (rule.proto == Proto::Icmp && rng.chance(50)) {
        rule.icmp_type = Some(rng.pick(&[0u8, 3, 8, 128, 255]));
        if rng.chance(80) {
            rule.dport.clear();
        }
    }
    rule.from = if rng.chance(70) {
        Side::Ingress
    } else {
        Side::Egress
    };
    rule
}

fn security_group_rule(rng: &mut Rng) -> Rule {
    let mut rule = Rule::any(match rng.below(10) {
        0..7 => Action::Accept,
        7..9 => Action::Drop,
        _ => Action::Reject,
    });
    // A rule from any source always names a port (or an ICMP type): "any source, any port"
    // would shadow most of what follows, which real security groups do not do.
    let any_src = rng.chance(30);
    if !any_src {
        let n = if rng.chance(85) { 1 } else { rng.pick(&[2, 3]) };
        rule.src = (0..n)
            .map(|_| {
                let len = rng.pick(&[24u8, 26, 28, 29, 30, 32, 32, 32]);
                let base = rng.pick(&[0x0a00_0000u32, 0xac10_0000, 0xc0a8_0000, 0x6440_0000]);
                v4(base | (rng.next_u64() as u32 & 0x000f_ffff), len)
            })
            .collect();
    }
    if rng.chance(15) {
        rule.dst = vec![v4(
            0x0a80_0000 | (rng.below(8) as u32) << 8,
            rng.pick(&[16u8, 20, 24]),
        )];
    }
    rule.proto = match rng.below(20) {
        0..12 => Proto::Tcp,
        12..17 => Proto::Udp,
        17 => Proto::Icmp,
        _ if any_src => Proto::Tcp,
        _ => Proto::Any,
    };
    match rule.proto {
        Proto::Icmp => {
            if any_src || rng.chance(50) {
                rule.icmp_type = Some(rng.pick(&[0u8, 8]));
            }
        }
        Proto::Any => {}
        Proto::Tcp | Proto::Udp => match rng.below(20) {
            18.. if !any_src => {}
            15.. => {
                let lo = rng.port();
                rule.dport = vec![PortRange {
                    lo,
                    hi: lo.saturating_add(rng.below(1000) as u16),
                }];
            }
            _ => {
                let port = if rng.chance(60) {
                    rng.pick(&POPULAR_PORTS)
                } else {
                    rng.port()
                };
                rule.dport = vec![PortRange::single(port)];
                if rng.chance(10) {
                    rule.dport.push(PortRange::single(rng.pick(&POPULAR_PORTS)));
                }
            }
        },
    }
    if rng.chance(5) {
        rule.sport = vec![PortRange {
            lo: 1024,
            hi: 65535,
        }];
    }
    rule.from = if rng.chance(85) {
        Side::Ingress
    } else {
        Side::Egress
    };
    if rng.chance(5) {
        rule.rate = Some(RateLimit {
            pps: 100,
            burst: 20,
        });
    }
    rule
}

/// Random prefixes of /8 to /32 and random narrow-to-wide port ranges: little shadowing, so the
/// tree has to separate nearly every rule.
fn dense_rule(rng: &mut Rng) -> Rule {
    let mut rule = Rule::any(rng.pick(&[Action::Accept, Action::Drop, Action::Reject]));
    let prefix = |rng: &mut Rng| -> Vec<IpNet> {
        if rng.chance(10) {
            Vec::new()
        } else {
            vec![v4(rng.next_u64() as u32, 8 + rng.below(25) as u8)]
        }
    };
    let range = |rng: &mut Rng| {
        let lo = rng.port();
        let width = 1u16 << rng.below(16);
        vec![PortRange {
            lo,
            hi: lo.saturating_add(rng.below(u64::from(width)) as u16),
        }]
    };
    rule.src = prefix(rng);
    rule.dst = prefix(rng);
    rule.proto = rng.pick(&[Proto::Any, Proto::Tcp, Proto::Udp, Proto::Icmp]);
    if rng.chance(30) {
        rule.sport = range(rng);
    }
    if rng.chance(80) {
        rule.dport = range(rng);
    }
    rule.from = if rng.chance(50) {
        Side::Ingress
    } else {
        Side::Egress
    };
    rule
}

fn adversarial_rule(rng: &mut Rng) -> Rule {
    let mut rule = Rule::any(rng.pick(&[Action::Accept, Action::Drop, Action::Reject]));
    let prefix = |rng: &mut Rng| -> Vec<IpNet> {
        if rng.chance(20) {
            Vec::new()
        } else {
            vec![v4(rng.next_u64() as u32, rng.below(33) as u8)]
        }
    };
    let range = |rng: &mut Rng| {
        let (a, b) = (rng.port(), rng.port());
        vec![PortRange {
            lo: a.min(b),
            hi: a.max(b),
        }]
    };
    rule.src = prefix(rng);
    rule.dst = prefix(rng);
    rule.proto = rng.pick(&[Proto::Any, Proto::Tcp, Proto::Udp, Proto::Icmp]);
    if rng.chance(50) {
        rule.sport = range(rng);
    }
    if rng.chance(70) {
        rule.dport = range(rng);
    }
    rule.from = if rng.chance(50) {
        Side::Ingress
    } else {
        Side::Egress
    };
    rule
}

/// A random rule set of `n` rules.
pub fn rule_set(rng: &mut Rng, n: usize, shape: Shape) -> RuleSet {
    let rules = (0..n)
        .map(|_| match shape {
            Shape::Mixed => mixed_rule(rng),
            Shape::SecurityGroup => security_group_rule(rng),
            Shape::Adversarial => adversarial_rule(rng),
            Shape::Dense => dense_rule(rng),
        })
        .collect();
    RuleSet {
        rules,
        default: rng.pick(&[Action::Accept, Action::Drop]),
    }
}

/// An address near the edges of `net` (first, last, one before, one after, or inside).
fn edge_addr(rng: &mut Rng, net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let (first, last) = (u32::from(n.network()), u32::from(n.broadcast()));
            let inside = first.wrapping_add((rng.next_u64() as u32) & !u32::from(n.netmask()));
            IpAddr::V4(Ipv4Addr::from(rng.pick(&[
                first,
                last,
                first.wrapping_sub(1),
                last.wrapping_add(1),
                inside,
            ])))
        }
        IpNet::V6(n) => {
            let (first, last) = (u128::from(n.network()), u128::from(n.broadcast()));
            let inside = first.wrapping_add(u128::from(rng.next_u64()) & !u128::from(n.netmask()));
            IpAddr::V6(Ipv6Addr::from(rng.pick(&[
                first,
                last,
                first.wrapping_sub(1),
                last.wrapping_add(1),
                inside,
            ])))
        }
    }
}

/// An address of `v6`'s family from one of the rule's prefixes, or near the generators' bases.
fn addr_for(rng: &mut Rng, list: &[IpNet], v6: bool) -> IpAddr {
    let same: Vec<&IpNet> = list
        .iter()
        .filter(|n| matches!(n, IpNet::V6(_)) == v6)
        .collect();
    if !same.is_empty() && rng.chance(85) {
        let net = same[rng.below(same.len() as u64) as usize];
        return edge_addr(rng, net);
    }
    if v6 {
        IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8_u128 << 96) | u128::from(rng.below(4)) << 64 | u128::from(rng.below(512)),
        ))
    } else if rng.chance(70) {
        IpAddr::V4(Ipv4Addr::from(rng.pick(&V4_BASES) | rng.below(1024) as u32))
    } else {
        IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32))
    }
}

fn edge_port(rng: &mut Rng, list: &[PortRange]) -> u16 {
    if list.is_empty() || rng.chance(15) {
        return if rng.chance(50) {
            rng.pick(&EDGE_PORTS)
        } else {
            rng.port()
        };
    }
    let r = list[rng.below(list.len() as u64) as usize];
    let inside =
        r.lo.wrapping_add((rng.below(u64::from(r.hi.saturating_sub(r.lo)) + 1)) as u16);
    rng.pick(&[
        r.lo,
        r.hi,
        r.lo.wrapping_sub(1),
        r.hi.wrapping_add(1),
        inside,
    ])
}

/// A packet aimed at the boundaries of a random rule of `set` (or anywhere, sometimes).
pub fn packet(rng: &mut Rng, set: &RuleSet) -> Packet {
    let rule = if set.rules.is_empty() || rng.chance(10) {
        Rule::any(Action::Accept)
    } else {
        set.rules[rng.below(set.rules.len() as u64) as usize].clone()
    };
    let v6 = match (rule.src.first(), rule.dst.first()) {
        (Some(n), _) | (None, Some(n)) if rng.chance(90) => matches!(n, IpNet::V6(_)),
        _ => rng.chance(15),
    };
    let src = addr_for(rng, &rule.src, v6);
    let dst = addr_for(rng, &rule.dst, v6);
    let icmp = if v6 { PROTO_ICMPV6 } else { PROTO_ICMP };
    let proto = match rule.proto {
        _ if rng.chance(15) => {
            rng.pick(&[0u8, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, 47, 255])
        }
        Proto::Any => rng.pick(&[icmp, PROTO_TCP, PROTO_UDP, 47]),
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
        Proto::Icmp => icmp,
    };
    let (sport, dport) = if proto == icmp {
        let t = match rule.icmp_type {
            Some(t) if rng.chance(80) => {
                let delta = rng.pick(&[0, 0, 1, u16::MAX]);
                u16::from(t).wrapping_add(delta)
            }
            _ => rng.below(256) as u16,
        };
        (0, t)
    } else if proto == PROTO_TCP || proto == PROTO_UDP {
        (edge_port(rng, &rule.sport), edge_port(rng, &rule.dport))
    } else {
        (0, 0)
    };
    let side = if rng.chance(85) {
        rule.from
    } else {
        rng.pick(&[Side::Ingress, Side::Egress])
    };
    Packet {
        src,
        dst,
        proto,
        sport,
        dport,
        side,
    }
}
