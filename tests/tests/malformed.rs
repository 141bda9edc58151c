//! Malformed and odd frames at every hop of tc and xdp chains holding every kind (forward,
//! firewall, load balancer, and a WireGuard endpoint, whose packets cross its own IP stack):
//! each frame is run through the hop's pinned forwarder with `BPF_PROG_TEST_RUN` (exact verdict,
//! the frame as it would leave, the stage reached by the forwarder's tail call), in both
//! directions. Every frame gets the verdict the table below defines for its function's kind;
//! every drop is counted under a reason at that function; nothing leaves with a broken checksum.
//! Then the same corpus is injected for real from the ingress endpoint, and the chain (through
//! the WireGuard endpoint's stack too) still carries good traffic.
//!
//! Frames shorter than an Ethernet header are not in the corpus: neither a veth nor
//! BPF_PROG_TEST_RUN carries one (packet sockets refuse to send them).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use Verdict::{Drop, Forward, Stack};
use netfn_tests::frames::{self, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ICMP, Link, TCP, UDP};
use netfn_tests::loss::function_drops;
use netfn_tests::test_run::{self, Hook, Verdict, hops, verdict};
use netfn_tests::traffic::udp_echo;
use netfn_tests::wireguard::keypair;
use netfn_tests::{ChainGuard, TempDir, in_netns, shared, unique_chain};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const VIP_PORT: u16 = 7000;

/// A frame of the corpus: its name and how to build it on a link.
struct Case {
    name: &'static str,
    build: fn(&Link) -> Vec<u8>,
}

fn udp_frame(l: &Link, payload: &[u8]) -> Vec<u8> {
    frames::ipv4_frame(l, UDP, &frames::udp(l, 40000, 7001, payload))
}

/// The corpus: well-formed controls first, then the odd and the broken.
fn corpus() -> Vec<Case> {
    vec![
        Case {
            name: "udp",
            build: |l| udp_frame(l, b"netfn"),
        },
        Case {
            name: "udp-empty-payload",
            build: |l| udp_frame(l, b""),
        },
        Case {
            name: "udp-to-vip",
            build: |l| {
                let l = Link { dst: VIP, ..*l };
                frames::ipv4_frame(&l, UDP, &frames::udp(&l, 40001, VIP_PORT, b"vip"))
            },
        },
        Case {
            name: "tcp-syn",
            build: |l| frames::ipv4_frame(l, TCP, &frames::tcp(l, 40002, 80, 0x02, 5)),
        },
        Case {
            name: "icmp-echo",
            build: |l| frames::ipv4_frame(l, ICMP, &frames::icmp_echo()),
        },
        Case {
            name: "ip-options",
            build: |l| {
                let u = frames::udp(l, 40003, 7001, b"opts");
                let mut f = frames::ethernet(l, ETH_P_IP);
                f.extend(frames::ipv4(l, UDP, 6, u.len(), 0));
                f.extend(u);
                f
            },
        },
        Case {
            name: "fragment-first",
            build: |l| {
                let u = frames::udp(l, 40004, 7001, &[7; 32]);
                let mut f = frames::ethernet(l, ETH_P_IP);
                f.extend(frames::ipv4(l, UDP, 5, 16, 0x2000));
                f.extend_from_slice(&u[..16]);
                f
            },
        },
        Case {
            name: "fragment-later",
            build: |l| {
                let mut f = frames::ethernet(l, ETH_P_IP);
                f.extend(frames::ipv4(l, UDP, 5, 16, 2));
                f.extend_from_slice(&[7; 16]);
                f
            },
        },
        Case {
            name: "ipv4-truncated",
            build: |l| {
                let mut f = frames::ethernet(l, ETH_P_IP);
                f.extend_from_slice(&frames::ipv4(l, UDP, 5, 8, 0)[..12]);
                f
            },
        },
        Case {
            name: "ihl-below-5",
            build: |l| {
                let mut f = udp_frame(l, b"x");
                f[14] = 0x44;
                frames::set_ipv4_checksum(&mut f[14..]);
                f
            },
        },
        Case {
            name: "ihl-beyond-frame",
            build: |l| {
                let mut f = udp_frame(l, b"");
                f[14] = 0x4f;
                frames::set_ipv4_checksum(&mut f[14..]);
                f
            },
        },
        Case {
            name: "total-length-beyond-frame",
            build: |l| {
                let mut f = udp_frame(l, b"x");
                f[16..18].copy_from_slice(&1400u16.to_be_bytes());
                frames::set_ipv4_checksum(&mut f[14..]);
                f
            },
        },
        Case {
            name: "total-length-below-header",
            build: |l| {
                let mut f = udp_frame(l, b"x");
                f[16..18].copy_from_slice(&12u16.to_be_bytes());
                frames::set_ipv4_checksum(&mut f[14..]);
                f
            },
        },
        Case {
            name: "ip-checksum-bad",
            build: |l| {
                let mut f = udp_frame(l, b"x");
                f[24] ^= 0x5a;
                f
            },
        },
        Case {
            name: "ip-version-6",
            build: |l| {
                let mut f = udp_frame(l, b"x");
                f[14] = 0x65;
                frames::set_ipv4_checksum(&mut f[14..]);
                f
            },
        },
        Case {
            name: "ttl-1",
            build: |l| {
                let mut f = udp_frame(l, b"x");
                f[22] = 1;
                frames::set_ipv4_checksum(&mut f[14..]);
                f
            },
        },
        Case {
            name: "udp-truncated",
            build: |l| {
                let u = frames::udp(l, 40005, 7001, b"");
                let mut f = frames::ethernet(l, ETH_P_IP);
                f.extend(frames::ipv4(l, UDP, 5, 4, 0));
                f.extend_from_slice(&u[..4]);
                f
            },
        },
        Case {
            name: "tcp-truncated",
            build: |l| {
                let t = frames::tcp(l, 40006, 80, 0x02, 5);
                let mut f = frames::ethernet(l, ETH_P_IP);
                f.extend(frames::ipv4(l, TCP, 5, 12, 0));
                f.extend_from_slice(&t[..12]);
                f
            },
        },
        Case {
            name: "tcp-data-offset-below-5",
            build: |l| {
                let mut t = frames::tcp(l, 40007, 80, 0x02, 5);
                t[12] = 2 << 4;
                let mut f = frames::ipv4_frame(l, TCP, &t);
                frames::set_l4_checksum(&mut f);
                f
            },
        },
        Case {
            name: "tcp-data-offset-beyond",
            build: |l| {
                let mut t = frames::tcp(l, 40008, 80, 0x02, 5);
                t[12] = 15 << 4;
                let mut f = frames::ipv4_frame(l, TCP, &t);
                frames::set_l4_checksum(&mut f);
                f
            },
        },
        Case {
            name: "icmp-truncated",
            build: |l| {
                let mut f = frames::ethernet(l, ETH_P_IP);
                f.extend(frames::ipv4(l, ICMP, 5, 2, 0));
                f.extend_from_slice(&[8, 0]);
                f
            },
        },
        Case {
            name: "vlan-tagged",
            build: |l| {
                let inner = udp_frame(l, b"vlan");
                let mut f = frames::ethernet(l, ETH_P_8021Q);
                f.extend_from_slice(&[0, 42]);
                f.extend_from_slice(&inner[12..]);
                f
            },
        },
        Case {
            name: "ipv6",
            build: |l| {
                let mut f = frames::ethernet(l, ETH_P_IPV6);
                f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, UDP, 64]);
                f.extend_from_slice(&[0; 32]);
                f.extend_from_slice(&[0x9c, 0x40, 0x1b, 0x59, 0, 8, 0, 0]);
                f
            },
        },
        Case {
            name: "broadcast",
            build: |l| {
                udp_frame(
                    &Link {
                        dst_mac: [0xff; 6],
                        ..*l
                    },
                    b"bcast",
                )
            },
        },
        Case {
            name: "multicast",
            build: |l| {
                let l = Link {
                    dst_mac: [0x01, 0x00, 0x5e, 0, 0, 1],
                    dst: Ipv4Addr::new(224, 0, 0, 1),
                    ..*l
                };
                udp_frame(&l, b"mcast")
            },
        },
    ]
}

/// The load balancer's backend is the egress endpoint on port 7003, not 7001 where the good
/// traffic's echo server answers: a load balancer drops (as `lb-reply-untracked`) what a
/// backend's service port sends without a balanced flow. The WireGuard endpoint is last, its
/// tunnel facing the egress side (a site-to-site tunnel); its peer never shows up, the clear
/// traffic crosses its stack all the same.
fn chain_file(name: &str, fastpath: &str, peer_public: &str) -> String {
    format!(
        "[[chain]]\nname = \"{name}\"\nfastpath = \"{fastpath}\"\n\n\
         [chain.ingress]\naddress = \"10.81.1.2/24\"\n\n\
         [chain.egress]\naddress = \"10.81.2.2/24\"\n\n\
         [[chain.function]]\nname = \"f1\"\nkind = \"forward\"\n\n\
         [[chain.function]]\nname = \"fw\"\nkind = \"firewall\"\ndefault = \"accept\"\n\n\
         [[chain.function]]\nname = \"lb\"\nkind = \"load-balancer\"\n\n\
         [[chain.function.service]]\nvip = \"{VIP}\"\nproto = \"udp\"\nport = {VIP_PORT}\n\
         backends = [{{ address = \"10.81.2.2\", port = 7003 }}]\n\n\
         [[chain.function]]\nname = \"vpn\"\nkind = \"wireguard\"\nside = \"egress\"\n\
         private_key_file = \"vpn.key\"\nlisten_port = 51820\naddress = [\"10.98.0.1/24\"]\n\n\
         [[chain.function.peer]]\npublic_key = \"{peer_public}\"\nallowed_ips = [\"10.98.0.2/32\"]\n"
    )
}

fn corpus_at_every_hop(fastpath: &str, hook: Hook) {
    let _shared = shared();
    let chain = unique_chain(&format!("mf{}", &fastpath[..1]));
    let dir = TempDir::new(&chain);
    keypair(&dir, "vpn.key");
    let (_, peer_public) = keypair(&dir, "peer.key");
    let file = dir.write("chain.toml", &chain_file(&chain, fastpath, &peer_public));
    let _guard = ChainGuard::up(&chain, &file);
    let program = test_run::forwarder(&chain, hook);
    let mut failures = Vec::new();
    let mut refused = Vec::new();
    let mut checked = 0;
    let hops = hops(&chain, netfn_tests::INGRESS_ADDR, netfn_tests::EGRESS_ADDR);
    let kinds: std::collections::BTreeSet<&str> = hops.iter().map(|h| h.kind.as_str()).collect();
    assert_eq!(
        kinds.len(),
        4,
        "every kind has a hop (forward, firewall, load-balancer, wireguard): {kinds:?}"
    );
    for hop in &hops {
        // Drops are read once per interface (a status call is slow in the test VM): what the
        // frames dropped here must have added, reason by reason, is what the table says.
        let before = function_drops(&chain, &hop.function);
        let mut should_count: BTreeMap<String, u64> = BTreeMap::new();
        for case in corpus() {
            let frame = (case.build)(&hop.link);
            let want = expected(case.name, &hop.kind);
            trace(&format!(
                "{fastpath} {} {} {}",
                hop.function, hop.interface, case.name
            ));
            let run = in_netns(&hop.netns, || {
                test_run::run_once(&program, hook, hop.ifindex, &frame)
            });
            let where_ = format!(
                "{} ({}) {}: {}",
                hop.function, hop.kind, hop.interface, case.name
            );
            let (retval, out) = match run {
                Ok(r) => r,
                // The kernel's skb test run refuses an IPv4 frame shorter than an IPv4 header;
                // the real injection below covers those.
                Err(e) if hook == Hook::Tc && e.raw_os_error() == Some(libc::EINVAL) => {
                    refused.push(case.name);
                    continue;
                }
                Err(e) => panic!("test run of {where_}: {e}"),
            };
            checked += 1;
            let Some(got) = verdict(hook, retval) else {
                failures.push(format!("{where_}: return value {retval}"));
                continue;
            };
            match (got, want) {
                (Drop(_), Drop(reason)) => {
                    *should_count.entry(reason.to_string()).or_default() += 1
                }
                (Drop(_), _) => failures.push(format!("{where_}: dropped, expected {want:?}")),
                _ if got != want => failures.push(format!("{where_}: {got:?}, expected {want:?}")),
                _ => {}
            }
            if got == Forward
                && let Some(problem) = frames::checksum_problem(&out)
            {
                failures.push(format!("{where_}: left with a broken {problem}"));
            }
        }
        let after = function_drops(&chain, &hop.function);
        let counted: BTreeMap<String, u64> = after
            .iter()
            .map(|(r, n)| (r.clone(), n - before.get(r).copied().unwrap_or(0)))
            .filter(|(_, d)| *d > 0)
            .collect();
        if counted != should_count {
            failures.push(format!(
                "{} {}: drops counted {counted:?}, expected {should_count:?}",
                hop.function, hop.interface
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} frames:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!(
        "{fastpath}: {checked} frames test-run at {} hops, all as defined; refused by the test run: {refused:?}",
        hops.len()
    );

    // The same corpus for real, from the ingress endpoint into the first function (f1):
    // each frame it must drop is counted there, and the chain still carries good traffic.
    let first = &hops[0];
    let ingress_ns = format!("nf-{chain}-ingress");
    let before: u64 = function_drops(&chain, &first.function).values().sum();
    let mut must_drop = 0;
    for case in corpus() {
        if matches!(expected(case.name, &first.kind), Drop(_)) {
            must_drop += 1;
        }
        let frame = (case.build)(&first.link);
        trace(&format!("{fastpath} inject {}", case.name));
        in_netns(&ingress_ns, || frames::inject("nf-out", &frame))
            .unwrap_or_else(|e| panic!("inject {}: {e}", case.name));
    }
    let mut dropped = 0;
    for _ in 0..50 {
        dropped = function_drops(&chain, &first.function)
            .values()
            .sum::<u64>()
            - before;
        if dropped >= must_drop {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        dropped, must_drop,
        "injected corpus: drops counted at {}",
        first.function
    );
    udp_echo(&ingress_ns, &format!("nf-{chain}-egress"), 20);
}

/// A progress line past the test harness's capture when NETFN_TEST_TRACE is set (to find where
/// a run in the test VM spends its time).
fn trace(what: &str) {
    if std::env::var_os("NETFN_TEST_TRACE").is_some() {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "trace: {what}");
    }
}

/// The verdict each function kind must give each frame of the corpus.
fn expected(case: &str, kind: &str) -> Verdict {
    if kind == "wireguard" {
        // A stack kind: the forwarder checks the IPv4 header as the kernel's ip_rcv would and
        // hands the rest to the function's stack, which routes (TTL included) as a router does.
        return match case {
            "ipv4-truncated"
            | "ihl-below-5"
            | "ihl-beyond-frame"
            | "total-length-beyond-frame"
            | "total-length-below-header"
            | "ip-checksum-bad"
            | "ip-version-6" => Drop("malformed"),
            _ => Stack,
        };
    }
    match case {
        "udp" | "udp-empty-payload" | "udp-to-vip" | "tcp-syn" | "icmp-echo" | "ip-options"
        | "fragment-first" | "fragment-later" => Forward,
        // Ports and flags are all a firewall or a load balancer reads of a TCP header.
        "tcp-data-offset-below-5" | "tcp-data-offset-beyond" => Forward,
        "vlan-tagged" | "ipv6" | "broadcast" | "multicast" => Stack,
        "ttl-1" => Drop("ttl-exceeded"),
        // A forward function routes, as a router does, without reading past the IPv4 header;
        // kinds that decide by ports (and the firewall by ICMP type) drop what lacks them.
        "udp-truncated" | "tcp-truncated" if kind != "forward" => Drop("malformed"),
        "icmp-truncated" if kind == "firewall" => Drop("malformed"),
        "udp-truncated" | "tcp-truncated" | "icmp-truncated" => Forward,
        _ => Drop("malformed"),
    }
}

#[test]
fn tc_every_hop_gives_every_odd_frame_a_defined_verdict() {
    corpus_at_every_hop("tc", Hook::Tc);
}

#[test]
fn xdp_every_hop_gives_every_odd_frame_a_defined_verdict() {
    corpus_at_every_hop("xdp", Hook::Xdp);
}
