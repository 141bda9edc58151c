//! The two traffic shapes, as frames for the chain bench's generator (60-byte UDP, to the VIP or,
//! for a `forward` function, to the egress endpoint or spread over the backends' addresses:
//! frame `k` of a shape goes to target `k mod targets`).
//!
//! - Few flows: [`FEW_FLOWS`] source ports of the ingress endpoint, as a handful of long-lived
//!   clients look. A load balancer's connection table (netfn's, or Linux's for nftables) holds
//!   them: after the first packets, each packet is a lookup.
//! - All-new flows, as a flood of new flows finds a load balancer: its connection table full of
//!   recent flows, every packet a flow it has not seen. Each repetition has its own
//!   [`NEW_FLOW_CLIENTS`] client addresses × [`NEW_FLOW_PORTS`] source ports (960,000 flows; no
//!   flow of an earlier run comes again, where Linux's table would still hold it: an unanswered
//!   UDP flow stays 30 s). The generator sends them in order, and the measured window starts
//!   after [`FILL_SECONDS`]: by then more than [`FILL_FLOWS`] flows went by, which fills netfn's
//!   table (65,536 by default) and Linux's (nf_conntrack_max, 262,144 on a 24 GB machine) alike,
//!   so both evict as they insert. The bench counts how true "every packet a new flow" is for
//!   every load balancer (see `NewFlowCounter`).

use std::net::{Ipv4Addr, SocketAddrV4};

use super::super::chain::{PPS_PORT, Topology, udp_frame_between};

pub(super) const FEW_FLOWS: u16 = 8;
pub(super) const NEW_FLOW_CLIENTS: u8 = 16;
pub(super) const NEW_FLOW_PORTS: u16 = 60_000;
/// Distinct client groups (repetitions past this many reuse them, minutes later).
const CLIENT_GROUPS: u8 = 9;
/// The first client of the all-new flows shape (10.83.1.100 to .243: the ingress subnet, which
/// the forwarder and kernel mode's reverse-path check accept as sources; no host has them).
const FIRST_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 83, 1, 100);
/// Flows that fill either load balancer's connection table before a window is measured.
pub(super) const FILL_FLOWS: u32 = 270_000;
// More than Linux's table holds here, and with a 1.5 s window at the baseline's ~100,000 pps
// (350,000 + 150,000 flows) no flow comes twice. Faster contenders wrap around the 960,000, but
// only netfn's are faster, and its table has evicted a flow long before it comes again (the
// counted new flows per packet say so).
const _: () = assert!(FILL_FLOWS > 262_144 && FILL_FLOWS + 300_000 < 960_000);
/// Seconds the generator sends before the window: [`FILL_FLOWS`] flows at the slowest rate of
/// any contender here (about 90,000 pps), with room.
pub(super) const FILL_SECONDS: f64 = 3.5;
/// Where a frame's UDP source port is (after the Ethernet and IPv4 headers).
const SPORT_AT: usize = 14 + 20;

/// Few flows from the ingress endpoint to `targets`.
pub(super) fn few_flows(t: &Topology, targets: &[Ipv4Addr]) -> Vec<Vec<u8>> {
    (0..FEW_FLOWS)
        .zip(targets.iter().cycle())
        .map(|(i, &dst)| {
            udp_frame_between(
                t,
                SocketAddrV4::new(t.src_addr, 40_000 + i),
                SocketAddrV4::new(dst, PPS_PORT),
            )
        })
        .collect()
}

/// All-new flows to `targets` for repetition `rep`, in an order where neighbouring frames differ
/// in client and port. One frame per client and target is built; the others copy one with
/// another source port (UDP checksum 0: nothing else changes), which keeps this quick in a
/// debug build.
pub(super) fn new_flows(t: &Topology, targets: &[Ipv4Addr], rep: usize) -> Vec<Vec<u8>> {
    let group = (rep % usize::from(CLIENT_GROUPS)) as u32 * u32::from(NEW_FLOW_CLIENTS);
    if targets.is_empty() {
        return Vec::new();
    }
    let clients = usize::from(NEW_FLOW_CLIENTS);
    // One frame per client and target, built when first used (frame `k` of client `c` goes
    // to target `k mod targets`: not every pair comes up).
    let mut bases: Vec<Option<Vec<u8>>> = vec![None; clients * targets.len()];
    let mut frames = Vec::with_capacity(clients * usize::from(NEW_FLOW_PORTS));
    for port in 0..NEW_FLOW_PORTS {
        for c in 0..NEW_FLOW_CLIENTS {
            let target = frames.len() % targets.len();
            let base = bases[target * clients + usize::from(c)].get_or_insert_with(|| {
                let client = Ipv4Addr::from(u32::from(FIRST_CLIENT) + group + u32::from(c));
                udp_frame_between(
                    t,
                    SocketAddrV4::new(client, 0),
                    SocketAddrV4::new(targets[target], PPS_PORT),
                )
            });
            let mut f = base.clone();
            f[SPORT_AT..SPORT_AT + 2].copy_from_slice(&(2000 + port).to_be_bytes());
            frames.push(f);
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology {
            name: "lb-tc 2".into(),
            mode: "lb",
            functions: 1,
            chain: Some("blb1".into()),
            src_ns: "a".into(),
            dst_ns: "b".into(),
            src_if: "nf-out".into(),
            src_addr: Ipv4Addr::new(10, 83, 1, 2),
            dst_addr: Ipv4Addr::new(10, 84, 0, 2),
            src_mac: [2, 0, 0, 0, 0, 1],
            next_mac: [2, 0, 0, 0, 0, 2],
        }
    }

    #[test]
    fn copied_frames_equal_built_ones() {
        let t = topology();
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        let frames = new_flows(&t, &[vip], 2);
        assert_eq!(
            frames.len(),
            usize::from(NEW_FLOW_CLIENTS) * usize::from(NEW_FLOW_PORTS)
        );
        let built = udp_frame_between(
            &t,
            SocketAddrV4::new(Ipv4Addr::new(10, 83, 1, 133), 2003),
            SocketAddrV4::new(vip, PPS_PORT),
        );
        assert_eq!(frames[3 * usize::from(NEW_FLOW_CLIENTS) + 1], built);
    }

    #[test]
    fn repetitions_never_repeat_a_flow_and_stay_in_the_ingress_subnet() {
        let t = topology();
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        let sources = |rep| {
            new_flows(&t, &[vip], rep)
                .into_iter()
                .map(|f| f[26..36].to_vec())
                .collect::<std::collections::HashSet<_>>()
        };
        let (first, second) = (sources(0), sources(1));
        assert!(first.is_disjoint(&second));
        let last = new_flows(&t, &[vip], usize::from(CLIENT_GROUPS) - 1);
        assert!(last.iter().all(|f| f[26..29] == [10, 83, 1] && f[29] > 2));
    }

    #[test]
    fn spread_flows_take_every_target_in_turn() {
        let t = topology();
        let targets: Vec<Ipv4Addr> = (0..5).map(|i| Ipv4Addr::new(10, 84, 16, i)).collect();
        let frames = new_flows(&t, &targets, 0);
        for (k, f) in frames.iter().enumerate().take(100) {
            assert_eq!(f[30..34], targets[k % 5].octets(), "frame {k}");
        }
        let few = few_flows(&t, &targets);
        assert_eq!(few[6][30..34], targets[1].octets());
    }
}
