//! The two traffic shapes, as frames for the chain bench's generator (60-byte UDP, to the VIP or,
//! for a `forward` function, to the egress endpoint).
//!
//! - Few flows: [`FEW_FLOWS`] source ports of the ingress endpoint, as a handful of long-lived
//!   clients look. A load balancer's connection table (netfn's, or Linux's for nftables) holds
//!   them: after the first packets, each packet is a lookup.
//! - All-new flows: [`NEW_FLOW_CLIENTS`] client addresses × [`NEW_FLOW_PORTS`] source ports
//!   (960,000 flows), each sent once per cycle. The load balancer's connection table holds 65,536
//!   flows (least recently used go first), Linux's holds nf_conntrack_max (262,144 on a 24 GB
//!   machine; a full table evicts unanswered flows early): a flow is long gone when its turn
//!   comes again, so every packet is balanced and tracked as a new flow. The bench counts how
//!   true that is for the nftables baseline (see `nft_counts`).

use std::net::{Ipv4Addr, SocketAddrV4};

use super::super::chain::{PPS_PORT, Topology, udp_frame_between};

pub(super) const FEW_FLOWS: u16 = 8;
pub(super) const NEW_FLOW_CLIENTS: u8 = 16;
pub(super) const NEW_FLOW_PORTS: u16 = 60_000;
/// The first client of the all-new flows shape (10.83.1.100 and up: the ingress subnet, which
/// the forwarder and kernel mode's reverse-path check accept as sources; no host has them).
const FIRST_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 83, 1, 100);
/// Where a frame's UDP source port is (after the Ethernet and IPv4 headers).
const SPORT_AT: usize = 14 + 20;

/// Few flows from the ingress endpoint to `dst`.
pub(super) fn few_flows(t: &Topology, dst: Ipv4Addr) -> Vec<Vec<u8>> {
    (0..FEW_FLOWS)
        .map(|i| {
            udp_frame_between(
                t,
                SocketAddrV4::new(t.src_addr, 40_000 + i),
                SocketAddrV4::new(dst, PPS_PORT),
            )
        })
        .collect()
}

/// All-new flows to `dst`, in an order where neighbouring frames differ in client and port.
/// One frame per client is built; the others copy it with another source port (UDP checksum
/// 0: nothing else changes), which keeps this quick in a debug build.
pub(super) fn new_flows(t: &Topology, dst: Ipv4Addr) -> Vec<Vec<u8>> {
    let bases: Vec<Vec<u8>> = (0..NEW_FLOW_CLIENTS)
        .map(|c| {
            let client = Ipv4Addr::from(u32::from(FIRST_CLIENT) + u32::from(c));
            udp_frame_between(
                t,
                SocketAddrV4::new(client, 0),
                SocketAddrV4::new(dst, PPS_PORT),
            )
        })
        .collect();
    let mut frames = Vec::with_capacity(bases.len() * usize::from(NEW_FLOW_PORTS));
    for port in 0..NEW_FLOW_PORTS {
        for base in &bases {
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
        let frames = new_flows(&t, vip);
        assert_eq!(
            frames.len(),
            usize::from(NEW_FLOW_CLIENTS) * usize::from(NEW_FLOW_PORTS)
        );
        let built = udp_frame_between(
            &t,
            SocketAddrV4::new(Ipv4Addr::new(10, 83, 1, 101), 2003),
            SocketAddrV4::new(vip, PPS_PORT),
        );
        assert_eq!(frames[3 * usize::from(NEW_FLOW_CLIENTS) + 1], built);
    }
}
