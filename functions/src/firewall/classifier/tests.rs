//! The classifier against the reference matcher: random rule sets and boundary-biased packets,
//! edge cases, structural bounds, and the errors pathological rule sets must get.

use std::net::IpAddr;

use super::records::{MAX_LEAF_ENTRIES, MAX_NODE_STEPS, MAX_STEPS, MAX_TREES, NODE_LEAF};
use super::*;
use crate::firewall::reference;
use crate::firewall::rules::{
    PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, PortRange, Proto, Rule,
};
use crate::firewall::testgen::{self, Rng, Shape};

/// Checks every path of every tree: depth, leaf sizes and entry ranges within the limits and
/// the recorded stats, entries of a leaf in rule order.
fn check_structure(c: &Compiled, limits: &Limits) {
    for tree in 0..MAX_TREES {
        let mut stack = vec![(tree as u32, 1usize)];
        let (mut max_depth, mut max_leaf) = (0, 0);
        while let Some((index, depth)) = stack.pop() {
            let node = c.nodes[index as usize];
            assert!(depth <= limits.max_node_steps, "path deeper than the limit");
            if node.field == NODE_LEAF {
                assert!((node.right as usize) <= limits.max_leaf);
                let (first, count) = (node.left as usize, node.right as usize);
                assert!(first + count <= c.entries.len());
                let leaf = &c.entries[first..first + count];
                assert!(leaf.windows(2).all(|w| w[0].rule <= w[1].rule));
                max_depth = max_depth.max(depth);
                max_leaf = max_leaf.max(count);
            } else {
                assert!((node.field as usize) < records::FIELDS);
                assert!(node.left as usize >= MAX_TREES && node.right as usize >= MAX_TREES);
                stack.push((node.left, depth + 1));
                stack.push((node.right, depth + 1));
            }
        }
        assert_eq!(max_depth, c.stats.max_depth[tree]);
        assert_eq!(max_leaf, c.stats.max_leaf[tree]);
    }
    assert!(c.max_steps() <= MAX_STEPS);
}

fn agree(set: &RuleSet, c: &Compiled, packet: &Packet) {
    let w = c.walk(packet);
    let expected = reference::first_match(set, packet);
    assert_eq!(
        w.rule,
        expected,
        "packet {packet:?}\nrules {:#?}",
        expected.or(w.rule).map(|i| &set.rules[i as usize])
    );
    assert!(w.steps as usize <= c.max_steps());
}

fn property(shape: Shape, sizes: &[usize], seeds: u64, packets: usize) {
    for &n in sizes {
        for seed in 0..seeds {
            let mut rng = Rng::new(seed * 1_000_003 + n as u64);
            let set = testgen::rule_set(&mut rng, n, shape);
            let c = compile(&set).unwrap_or_else(|e| panic!("{n} rules, seed {seed}: {e}"));
            check_structure(&c, &Limits::EBPF);
            for _ in 0..packets {
                agree(&set, &c, &testgen::packet(&mut rng, &set));
            }
        }
    }
}

#[test]
fn random_mixed_rule_sets_agree_with_the_reference() {
    property(
        Shape::Mixed,
        &[1, 2, 3, 5, 8, 13, 21, 50, 100, 250],
        12,
        4000,
    );
}

#[test]
fn large_mixed_rule_sets_agree_with_the_reference() {
    property(Shape::Mixed, &[1000, 3000], 2, 30_000);
}

#[test]
fn security_group_and_adversarial_sets_agree_with_the_reference() {
    property(Shape::SecurityGroup, &[10, 500, 3000], 2, 20_000);
    property(Shape::Adversarial, &[10, 500, 3000], 2, 20_000);
    property(Shape::Dense, &[10, 500, 3000], 2, 20_000);
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn pkt(src: &str, dst: &str, proto: u8, sport: u16, dport: u16, side: Side) -> Packet {
    Packet {
        src: ip(src),
        dst: ip(dst),
        proto,
        sport,
        dport,
        side,
    }
}

fn set(rules: Vec<Rule>) -> RuleSet {
    RuleSet {
        rules,
        default: Action::Drop,
    }
}

/// Compiles, checks the structure, and checks the expected result and the reference's for each
/// packet.
fn expect(set: &RuleSet, cases: &[(Packet, Option<u32>)]) {
    let c = compile(set).expect("compiles");
    check_structure(&c, &Limits::EBPF);
    for (packet, want) in cases {
        assert_eq!(
            reference::first_match(set, packet),
            *want,
            "reference, {packet:?}"
        );
        assert_eq!(c.lookup(packet), *want, "classifier, {packet:?}");
    }
}

#[test]
fn empty_rule_set_matches_nothing() {
    let s = set(vec![]);
    let c = compile(&s).expect("compiles");
    // One empty leaf per tree.
    assert_eq!(c.nodes.len(), MAX_TREES);
    assert!(c.nodes.iter().all(|n| n.field == NODE_LEAF && n.right == 0));
    assert_eq!(c.entries.len(), 0);
    expect(
        &s,
        &[(
            pkt("10.0.0.1", "10.0.0.2", PROTO_TCP, 1, 2, Side::Ingress),
            None,
        )],
    );
}

#[test]
fn all_wildcard_rule_matches_its_side_of_both_families() {
    let s = set(vec![Rule::any(Action::Accept), Rule::any(Action::Drop)]);
    expect(
        &s,
        &[
            (
                pkt("10.0.0.1", "10.0.0.2", PROTO_TCP, 1, 2, Side::Ingress),
                Some(0),
            ),
            (pkt("2001:db8::1", "::", 47, 0, 0, Side::Ingress), Some(0)),
            (
                pkt("0.0.0.0", "255.255.255.255", 0, 0, 0, Side::Egress),
                None,
            ),
        ],
    );
    // Everything after an all-wildcard rule is unreachable: the roots are leaves, one entry.
    let c = compile(&s).expect("compiles");
    assert_eq!((c.nodes.len(), c.entries.len()), (MAX_TREES, 1));
}

#[test]
fn zero_and_full_length_prefixes_and_extreme_ports() {
    let mut host = Rule::any(Action::Accept);
    host.src = vec!["10.0.0.1/32".parse().expect("net")];
    host.dport = vec![PortRange::single(65535)];
    host.proto = Proto::Tcp;
    let mut zero = Rule::any(Action::Drop);
    zero.dst = vec!["0.0.0.0/0".parse().expect("net")];
    zero.sport = vec![PortRange::single(0)];
    let mut v6_all = Rule::any(Action::Reject);
    v6_all.src = vec!["::/0".parse().expect("net")];
    let s = set(vec![host, zero, v6_all]);
    expect(
        &s,
        &[
            (
                pkt("10.0.0.1", "1.1.1.1", PROTO_TCP, 7, 65535, Side::Ingress),
                Some(0),
            ),
            (
                pkt("10.0.0.1", "1.1.1.1", PROTO_TCP, 7, 65534, Side::Ingress),
                None,
            ),
            (
                pkt("10.0.0.2", "1.1.1.1", PROTO_TCP, 7, 65535, Side::Ingress),
                None,
            ),
            (
                pkt("10.0.0.0", "1.1.1.1", PROTO_TCP, 0, 65535, Side::Ingress),
                Some(1),
            ),
            (
                pkt("255.255.255.255", "0.0.0.0", PROTO_UDP, 0, 0, Side::Ingress),
                Some(1),
            ),
            (
                pkt("10.0.0.1", "1.1.1.1", PROTO_UDP, 1, 65535, Side::Ingress),
                None,
            ),
            // ::/0 holds every IPv6 address and no IPv4 one.
            (pkt("::", "::1", PROTO_UDP, 1, 2, Side::Ingress), Some(2)),
            (
                pkt(
                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                    "::1",
                    6,
                    1,
                    2,
                    Side::Ingress,
                ),
                Some(2),
            ),
            (
                pkt("::ffff:10.0.0.1", "::1", PROTO_TCP, 7, 65535, Side::Ingress),
                Some(2),
            ),
        ],
    );
}

#[test]
fn ipv6_rules_coexist_with_ipv4_rules() {
    let mut a = Rule::any(Action::Accept);
    a.src = vec![
        "2001:db8::/32".parse().expect("net"),
        "10.0.0.0/8".parse().expect("net"),
    ];
    a.dst = vec!["2001:db8:1::/48".parse().expect("net")];
    let mut b = Rule::any(Action::Drop);
    b.src = vec!["10.0.0.0/8".parse().expect("net")];
    b.dst = vec!["192.168.0.0/16".parse().expect("net")];
    let mut c = Rule::any(Action::Reject);
    c.dst = vec!["::/0".parse().expect("net")];
    let s = set(vec![a, b, c]);
    expect(
        &s,
        &[
            (
                pkt(
                    "2001:db8::5",
                    "2001:db8:1::1",
                    PROTO_TCP,
                    1,
                    2,
                    Side::Ingress,
                ),
                Some(0),
            ),
            (
                pkt(
                    "2001:db8::5",
                    "2001:db8:2::1",
                    PROTO_TCP,
                    1,
                    2,
                    Side::Ingress,
                ),
                Some(2),
            ),
            (
                pkt("10.1.1.1", "192.168.3.4", PROTO_TCP, 1, 2, Side::Ingress),
                Some(1),
            ),
            (
                pkt("10.1.1.1", "172.16.0.1", PROTO_TCP, 1, 2, Side::Ingress),
                None,
            ),
            // A rule with an IPv4 source and an IPv6 destination only, matches no packet.
            (
                pkt("10.1.1.1", "2001:db8:1::1", PROTO_TCP, 1, 2, Side::Ingress),
                None,
            ),
        ],
    );
}

#[test]
fn icmp_types_use_the_destination_port_slot_in_both_families() {
    let mut echo = Rule::any(Action::Accept);
    echo.proto = Proto::Icmp;
    echo.icmp_type = Some(8);
    let mut tcp_with_type = Rule::any(Action::Drop);
    tcp_with_type.proto = Proto::Tcp;
    tcp_with_type.icmp_type = Some(8);
    let mut any_icmp = Rule::any(Action::Reject);
    any_icmp.proto = Proto::Icmp;
    let s = set(vec![echo, tcp_with_type, any_icmp]);
    expect(
        &s,
        &[
            (
                pkt("10.0.0.1", "10.0.0.2", PROTO_ICMP, 0, 8, Side::Ingress),
                Some(0),
            ),
            (
                pkt(
                    "2001:db8::1",
                    "2001:db8::2",
                    PROTO_ICMPV6,
                    0,
                    8,
                    Side::Ingress,
                ),
                Some(0),
            ),
            (
                pkt("10.0.0.1", "10.0.0.2", PROTO_ICMP, 0, 0, Side::Ingress),
                Some(2),
            ),
            // ICMPv6's number on an IPv4 packet is not ICMP.
            (
                pkt("10.0.0.1", "10.0.0.2", PROTO_ICMPV6, 0, 8, Side::Ingress),
                None,
            ),
            (
                pkt("10.0.0.1", "10.0.0.2", PROTO_TCP, 0, 8, Side::Ingress),
                None,
            ),
        ],
    );
}

#[test]
fn empty_port_ranges_and_mixed_family_packets_match_nothing() {
    let mut empty = Rule::any(Action::Accept);
    empty.dport = vec![PortRange { lo: 10, hi: 9 }];
    let s = set(vec![empty, Rule::any(Action::Drop)]);
    expect(
        &s,
        &[
            (
                pkt("10.0.0.1", "10.0.0.2", PROTO_TCP, 0, 9, Side::Ingress),
                Some(1),
            ),
            (
                pkt("10.0.0.1", "10.0.0.2", PROTO_TCP, 0, 10, Side::Ingress),
                Some(1),
            ),
            (
                pkt("10.0.0.1", "2001:db8::2", PROTO_TCP, 0, 10, Side::Ingress),
                None,
            ),
        ],
    );
}

#[test]
fn rules_beyond_leaf_size_get_separated() {
    // 200 host rules on one port, then a wildcard: leaves must stay small.
    let mut rules: Vec<Rule> = (0..200u32)
        .map(|i| {
            let mut r = Rule::any(Action::Accept);
            r.src = vec![IpNet::from(IpAddr::from([10, 0, (i >> 8) as u8, i as u8]))];
            r.proto = Proto::Tcp;
            r.dport = vec![PortRange::single(443)];
            r
        })
        .collect();
    rules.push(Rule::any(Action::Drop));
    let s = set(rules);
    let c = compile(&s).expect("compiles");
    check_structure(&c, &Limits::EBPF);
    assert!(c.stats.max_leaf.iter().all(|&l| l <= MAX_LEAF_ENTRIES));
    assert!(c.stats.max_depth.iter().all(|&d| d <= MAX_NODE_STEPS));
    expect(
        &s,
        &[
            (
                pkt("10.0.0.57", "1.1.1.1", PROTO_TCP, 9, 443, Side::Ingress),
                Some(57),
            ),
            (
                pkt("10.0.0.57", "1.1.1.1", PROTO_TCP, 9, 444, Side::Ingress),
                Some(200),
            ),
            (
                pkt("10.0.0.200", "1.1.1.1", PROTO_TCP, 9, 443, Side::Ingress),
                Some(200),
            ),
        ],
    );
}

use ipnet::IpNet;

/// A rule set whose rules cross within one tree (hosts against ports of a /9 holding them):
/// the tree needs about `n * n` leaves.
fn crossing(n: u32) -> RuleSet {
    let mut rules = Vec::new();
    for i in 0..n {
        let mut a = Rule::any(Action::Accept);
        a.src = vec![IpNet::from(IpAddr::from([10, 0, (i >> 8) as u8, i as u8]))];
        let mut b = Rule::any(Action::Drop);
        b.src = vec!["10.0.0.0/9".parse().expect("net")];
        b.proto = Proto::Tcp;
        b.dport = vec![PortRange::single(i as u16)];
        rules.push(a);
        rules.push(b);
    }
    set(rules)
}

#[test]
fn pathological_rule_sets_get_a_clear_error() {
    let s = crossing(300);
    let tight = Limits {
        max_nodes: 1000,
        ..Limits::EBPF
    };
    assert_eq!(
        compile_with(&s, &tight).err(),
        Some(CompileError::TooManyNodes { max: 1000 })
    );
    let tight = Limits {
        max_entries: 1000,
        ..Limits::EBPF
    };
    assert_eq!(
        compile_with(&s, &tight).err(),
        Some(CompileError::TooManyEntries { max: 1000 })
    );
    let shallow = Limits {
        max_node_steps: 4,
        max_leaf: 2,
        ..Limits::EBPF
    };
    assert!(matches!(
        compile_with(&s, &shallow).err(),
        Some(CompileError::TooDeep {
            max_node_steps: 4,
            max_leaf: 2,
            ..
        })
    ));
    let few_steps = Limits {
        max_steps: 8,
        ..Limits::EBPF
    };
    assert!(matches!(
        compile_with(&s, &few_steps).err(),
        Some(CompileError::TooManySteps { max: 8, .. })
    ));
    // Still fine within the real limits, and correct.
    let c = compile(&s).expect("compiles");
    check_structure(&c, &Limits::EBPF);
    let mut rng = Rng::new(7);
    for _ in 0..5000 {
        agree(&s, &c, &testgen::packet(&mut rng, &s));
    }
}

#[test]
fn too_wide_rules_and_loose_limits_are_refused() {
    let mut wide = Rule::any(Action::Accept);
    wide.src = (0..300u32)
        .map(|i| IpNet::from(IpAddr::from(i.to_be_bytes())))
        .collect();
    wide.dst = wide.src.clone();
    let s = set(vec![wide]);
    let err = compile(&s).err();
    assert!(matches!(
        err,
        Some(CompileError::RuleTooWide {
            rule: 0,
            boxes: 180_000,
            ..
        })
    ));
    // Numbered from 1 for the operator, as validate's other messages.
    let said = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(said.starts_with("rule 1 "), "{said}");
    let loose = Limits {
        max_leaf: MAX_LEAF_ENTRIES + 1,
        ..Limits::EBPF
    };
    assert_eq!(
        compile_with(&set(vec![]), &loose).err(),
        Some(CompileError::LimitsTooLoose)
    );
}

#[test]
fn nested_prefixes_in_one_list_and_overlapping_ports_merge() {
    let mut r = Rule::any(Action::Accept);
    r.src = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "10.0.0.0/8"]
        .iter()
        .map(|s| s.parse().expect("net"))
        .collect();
    r.dport = vec![
        PortRange { lo: 10, hi: 20 },
        PortRange { lo: 21, hi: 30 },
        PortRange { lo: 15, hi: 16 },
    ];
    let c = compile(&set(vec![r])).expect("compiles");
    assert_eq!(c.stats.boxes, 1);
}
