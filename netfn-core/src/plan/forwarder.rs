//! The forwarder's table, derived from a plan: what the eBPF fast path does with a packet
//! arriving on each function interface, and how its counters and rows are indexed. Pure data;
//! [`crate::ebpf`] writes it into the maps.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{ChainPlan, LinkEnd, names};
use crate::spec::FastPath;

/// Which way a packet crosses a function: from ingress toward egress, or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Forward,
    Reverse,
}

/// Sources besides the chain's subnets on packets going one way, declared by a function: the
/// hops those packets cross accept them. Either the function puts them on its packets (a load
/// balancer's VIP toward ingress, a VPN's decapsulated clients toward egress: the functions
/// crossed next accept them), or hosts beyond the endpoint the packets come from send them to
/// the function (a load balancer's backends routed beyond the egress endpoint: every function
/// from that endpoint up to the declaring one, itself included, accepts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExtraSource {
    /// The way the packets go: `Forward`, toward egress; `Reverse`, toward ingress.
    pub direction: Direction,
    pub net: Ipv4Net,
    #[serde(default, skip_serializing_if = "SourceOrigin::is_function")]
    pub origin: SourceOrigin,
}

/// Who puts an [`ExtraSource`] on the packets.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SourceOrigin {
    /// The declaring function.
    #[default]
    Function,
    /// Hosts beyond the endpoint the packets come from (egress for `Reverse`, ingress for
    /// `Forward`), sending to the declaring function.
    Beyond,
}

impl SourceOrigin {
    fn is_function(&self) -> bool {
        *self == SourceOrigin::Function
    }
}

impl ExtraSource {
    /// A source the function puts on its packets going `direction`.
    pub fn sent(direction: Direction, net: Ipv4Net) -> Self {
        ExtraSource {
            direction,
            net,
            origin: SourceOrigin::Function,
        }
    }

    /// A source of hosts beyond the endpoint packets going `direction` come from.
    pub fn beyond(direction: Direction, net: Ipv4Net) -> Self {
        ExtraSource {
            direction,
            net,
            origin: SourceOrigin::Beyond,
        }
    }

    /// Whether function hop `declared_at` declaring this source makes hop `hop` of a chain of
    /// `n` functions accept it on packets going its way.
    pub fn accepted_at(&self, declared_at: usize, hop: usize) -> bool {
        match (self.origin, self.direction) {
            // Crossed next on the way.
            (SourceOrigin::Function, Direction::Forward) => hop > declared_at,
            (SourceOrigin::Function, Direction::Reverse) => hop < declared_at,
            // Crossed from the far endpoint up to the declaring function.
            (SourceOrigin::Beyond, Direction::Forward) => hop <= declared_at,
            (SourceOrigin::Beyond, Direction::Reverse) => hop >= declared_at,
        }
    }
}

impl Direction {
    /// The direction's bit in a forwarder counter slot (forward 0, reverse 1).
    pub fn index(self) -> u32 {
        match self {
            Direction::Forward => 0,
            Direction::Reverse => 1,
        }
    }
}

/// What the forwarder (the eBPF fast path) does with a packet arriving on one function
/// interface. Pure data, derived from the plan by [`forwarder_entries`]; the eBPF map entries are
/// made from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwarderEntry {
    /// The interface the packet arrives on (unique within the chain: the table key).
    pub ifindex: u32,
    pub ifname: String,
    /// The function's hop (1..=N) and its forwarder slot ([`ChainPlan::function_slot`]).
    pub hop: usize,
    pub slot: u32,
    /// The function's kind has a per-packet stage: the forwarder hands the packets it would
    /// forward to the stage at `slot` instead.
    pub stage: bool,
    /// The function's own IP stack forwards (its kind crosses it, a VPN endpoint): the
    /// forwarder hands it every packet instead of forwarding.
    pub to_stack: bool,
    pub direction: Direction,
    /// The function's other interface, in the same namespace: the packet leaves through it.
    /// TC: `bpf_redirect_peer` target; XDP: devmap target.
    pub out_ifindex: u32,
    /// This interface's MAC: only unicast frames sent to it are forwarded.
    pub own_mac: [u8; 6],
    /// The wired neighbour (the other end of this interface's veth): the only source MAC, ARP
    /// sender and (besides `allowed_sources`) IPv4 source accepted.
    pub peer_mac: [u8; 6],
    pub peer_addr: Ipv4Addr,
    /// The subnet of the endpoint this side faces: the ingress subnet on the forward side, the
    /// egress subnet on the reverse side.
    pub allowed_sources: Ipv4Net,
    /// Further sources accepted on this interface: what the functions the packet crossed before
    /// (on its way in this direction) declared ([`ExtraSource`]). Sorted, no duplicates.
    pub extra_sources: Vec<Ipv4Net>,
    /// The function's own addresses (both interfaces): packets to them go to its stack.
    pub local_addrs: [Ipv4Addr; 2],
    /// The Ethernet addresses written on forwarded packets: destination = the next hop's
    /// interface (the peer of `out_ifindex`), source = the out interface.
    pub next_mac: [u8; 6],
    pub out_mac: [u8; 6],
}

impl ForwarderEntry {
    /// The entry's counter slot: `slot * 2 + direction`.
    pub fn counter_slot(&self) -> u32 {
        counter_slot(self.slot, self.direction)
    }
}

/// The forwarder counter slot of the function with slot `slot` in `direction`.
pub fn counter_slot(slot: u32, direction: Direction) -> u32 {
    slot.saturating_mul(2).saturating_add(direction.index())
}

/// The position of interface `ifindex` in tables indexed by interface (`ifindex - IFINDEX_BASE`;
/// see [`super::ifindex`]). `None` for an interface that is not a chain interface.
pub fn interface_slot(ifindex: u32) -> Option<u32> {
    ifindex.checked_sub(names::IFINDEX_BASE)
}

/// The extra sources accepted at hop `hop` for packets going `direction`: those the functions
/// before it on that way put on their packets, and those of hosts beyond the far endpoint that
/// functions at or after it on that way declared ([`ExtraSource::accepted_at`]); and, going
/// forward from the third function on, the functions' transit addresses: a function's own
/// traffic toward egress (a load balancer's health checks) leaves from its transit address,
/// which only its neighbour knows as a peer. No client can put one there: the first function
/// accepts the ingress subnet only.
fn extra_sources(plan: &ChainPlan, hop: usize, direction: Direction) -> Vec<Ipv4Net> {
    let n = plan.function_count();
    let mut out: Vec<Ipv4Net> = plan
        .hops
        .iter()
        .enumerate()
        .filter(|(k, _)| (1..=n).contains(k))
        .flat_map(|(k, h)| h.sources.iter().map(move |s| (k, s)))
        .filter(|(k, s)| s.direction == direction && s.accepted_at(*k, hop))
        .map(|(_, s)| s.net)
        .collect();
    if direction == Direction::Forward
        && hop >= 3
        && let Some(span) = transit_span(plan)
    {
        out.push(span);
    }
    out.sort();
    out.dedup();
    out
}

/// The smallest prefix that holds every transit link's addresses (the links between functions;
/// inside the chain's transit pool), or `None` for a chain of fewer than two functions.
pub fn transit_span(plan: &ChainPlan) -> Option<Ipv4Net> {
    let n = plan.function_count();
    let addrs: Vec<u32> = plan
        .links
        .iter()
        .take(n)
        .skip(1)
        .flat_map(|l| [l.out.address.addr(), l.inn.address.addr()])
        .map(u32::from)
        .collect();
    let (lo, hi) = (*addrs.iter().min()?, *addrs.iter().max()?);
    let len = (lo ^ hi).leading_zeros().min(32) as u8;
    Ipv4Net::new(Ipv4Addr::from(lo), len)
        .ok()
        .map(|n| n.trunc())
}

/// The forwarder table of a chain: two entries per function (arriving on `nf-in`: forward;
/// arriving on `nf-out`: reverse), in hop order. Endpoints get none: their interfaces belong to
/// their own stacks.
pub fn forwarder_entries(plan: &ChainPlan) -> Vec<ForwarderEntry> {
    let n = plan.function_count();
    let (Some(first), Some(last)) = (plan.links.first(), plan.links.get(n)) else {
        return Vec::new();
    };
    let ingress_net = first.out.address.trunc();
    let egress_net = last.inn.address.trunc();
    let mut entries = Vec::with_capacity(2 * n);
    for hop in 1..=n {
        let (Some(before), Some(after)) = (plan.links.get(hop - 1), plan.links.get(hop)) else {
            continue;
        };
        let (inn, out) = (&before.inn, &after.out);
        let slot = plan.function_slot(hop).unwrap_or_default();
        let stage = plan.hops.get(hop).is_some_and(|h| h.stage);
        // In tc/xdp chains a function's IP forwarding is on only when its own stack forwards.
        let to_stack =
            plan.fastpath != FastPath::Kernel && plan.hops.get(hop).is_some_and(|h| h.forwarding);
        let local_addrs = [inn.address.addr(), out.address.addr()];
        let entry = |arrive: &LinkEnd,
                     neighbour: &LinkEnd,
                     leave: &LinkEnd,
                     next: &LinkEnd,
                     direction: Direction,
                     allowed_sources: Ipv4Net| ForwarderEntry {
            ifindex: arrive.ifindex,
            ifname: arrive.ifname.clone(),
            hop,
            slot,
            stage,
            to_stack,
            direction,
            out_ifindex: leave.ifindex,
            own_mac: arrive.mac,
            peer_mac: neighbour.mac,
            peer_addr: neighbour.address.addr(),
            allowed_sources,
            extra_sources: extra_sources(plan, hop, direction),
            local_addrs,
            next_mac: next.mac,
            out_mac: leave.mac,
        };
        entries.push(entry(
            inn,
            &before.out,
            out,
            &after.inn,
            Direction::Forward,
            ingress_net,
        ));
        entries.push(entry(
            out,
            &after.inn,
            inn,
            &before.out,
            Direction::Reverse,
            egress_net,
        ));
    }
    entries
}

/// How many rows the forwarder's per-interface tables have ([`super::Capacity::interfaces`]).
pub fn forwarder_table_len(plan: &ChainPlan) -> u32 {
    plan.capacity().interfaces.max(1)
}

/// How many counter slots the forwarder has: two per function slot.
pub fn forwarder_counter_len(plan: &ChainPlan) -> u32 {
    plan.capacity().functions.saturating_mul(2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_specs::{a, tc_chain as spec};
    use crate::plan::{ifindex, mac, plan_chain};

    #[test]
    fn extra_sources_are_accepted_where_their_packets_arrive_next() {
        let mut plan = plan_chain(&spec(3, None));
        let vip: Ipv4Net = "192.0.2.10/32".parse().unwrap();
        let clients: Ipv4Net = "198.51.100.0/24".parse().unwrap();
        let backends: Ipv4Net = "203.0.113.0/28".parse().unwrap();
        plan.hops[2].sources = vec![
            ExtraSource::sent(Direction::Reverse, vip),
            ExtraSource::sent(Direction::Forward, clients),
            ExtraSource::beyond(Direction::Reverse, backends),
        ];
        let extra = |hop: usize, direction: Direction| {
            forwarder_entries(&plan)
                .into_iter()
                .find(|e| e.hop == hop && e.direction == direction)
                .map(|e| e.extra_sources)
                .unwrap()
        };
        // The VIP goes back toward ingress: fn1 sees it; fn3 (behind the declaring fn2) not.
        assert_eq!(extra(1, Direction::Reverse), [vip]);
        // The clients go on toward egress: fn3 sees them; fn1 not. fn3 also takes what fn1
        // sends from its own transit address (the links' span: 100.64.0.0/31 and /31 .2).
        let span = transit_span(&plan).unwrap();
        assert_eq!(span.to_string(), "100.64.0.0/30");
        assert_eq!(extra(3, Direction::Forward), [span, clients]);
        assert_eq!(extra(1, Direction::Forward), []);
        // The backends beyond egress answer toward the declaring fn2: fn3 and fn2 accept them;
        // fn1 (whose packets come from fn2, with the VIP) does not.
        assert_eq!(extra(3, Direction::Reverse), [backends]);
        assert_eq!(extra(2, Direction::Reverse), [backends]);
        // The declaring function's own checks are otherwise unchanged.
        assert_eq!(extra(2, Direction::Forward), []);
    }

    #[test]
    fn the_transit_span_holds_every_link_between_functions() {
        assert_eq!(transit_span(&plan_chain(&spec(1, None))), None);
        for n in [2usize, 3, 5, 17] {
            let plan = plan_chain(&spec(n, None));
            let span = transit_span(&plan).unwrap();
            for l in &plan.links[1..n] {
                assert!(
                    span.contains(&l.out.address.addr()) && span.contains(&l.inn.address.addr())
                );
            }
            for l in [&plan.links[0], &plan.links[n]] {
                assert!(!span.contains(&l.out.address.addr()), "{n}: {span}");
            }
        }
    }

    #[test]
    fn three_functions_get_two_entries_each_that_walk_the_chain() {
        let plan = plan_chain(&spec(3, None));
        let entries = forwarder_entries(&plan);
        assert_eq!(entries.len(), 6);
        let base = names::IFINDEX_BASE;
        // (arrives on, leaves by, direction, slot) for every entry, in hop order.
        let shape: Vec<(u32, u32, Direction, u32)> = entries
            .iter()
            .map(|e| (e.ifindex - base, e.out_ifindex - base, e.direction, e.slot))
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, 2, Direction::Forward, 0),
                (2, 1, Direction::Reverse, 0),
                (3, 4, Direction::Forward, 1),
                (4, 3, Direction::Reverse, 1),
                (5, 6, Direction::Forward, 2),
                (6, 5, Direction::Reverse, 2),
            ]
        );
        let slots: Vec<u32> = entries.iter().map(ForwarderEntry::counter_slot).collect();
        assert_eq!(slots, vec![0, 1, 2, 3, 4, 5]);
        // Room to grow: 16 function slots (two counters each), 64 interface rows.
        assert_eq!(forwarder_table_len(&plan), 64);
        assert_eq!(forwarder_counter_len(&plan), 32);
    }

    #[test]
    fn forward_side_of_the_first_function_faces_the_ingress_endpoint() {
        let plan = plan_chain(&spec(3, None));
        let e = &forwarder_entries(&plan)[0];
        assert_eq!(e.ifname, names::UP_IF_IN);
        assert_eq!(e.hop, 1);
        assert_eq!(e.own_mac, mac("edge", ifindex(0, true)));
        // Neighbour: the ingress endpoint's interface.
        assert_eq!(e.peer_mac, mac("edge", ifindex(0, false)));
        assert_eq!(e.peer_addr, a("10.1.0.2"));
        assert_eq!(e.allowed_sources, "10.1.0.0/24".parse::<Ipv4Net>().unwrap());
        // Own addresses: the gateway of the ingress subnet, and the first transit /31.
        assert_eq!(e.local_addrs, [a("10.1.0.1"), a("100.64.0.0")]);
        // Leaves by fn1's nf-out toward fn2's nf-in.
        assert_eq!(e.out_mac, mac("edge", ifindex(1, false)));
        assert_eq!(e.next_mac, mac("edge", ifindex(1, true)));
    }

    #[test]
    fn reverse_side_of_the_last_function_faces_the_egress_endpoint() {
        let plan = plan_chain(&spec(3, None));
        let e = &forwarder_entries(&plan)[5];
        assert_eq!((e.hop, e.direction), (3, Direction::Reverse));
        assert_eq!(e.ifname, names::UP_IF_OUT);
        assert_eq!(e.peer_mac, mac("edge", ifindex(3, true)));
        assert_eq!(e.peer_addr, a("10.2.0.2"));
        assert_eq!(e.allowed_sources, "10.2.0.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(e.local_addrs, [a("100.64.0.3"), a("10.2.0.1")]);
        // Leaves by fn3's nf-in toward fn2's nf-out.
        assert_eq!(e.out_ifindex, ifindex(2, true));
        assert_eq!(e.out_mac, mac("edge", ifindex(2, true)));
        assert_eq!(e.next_mac, mac("edge", ifindex(2, false)));
    }

    #[test]
    fn middle_function_neighbours_are_transit_addresses() {
        let plan = plan_chain(&spec(3, None));
        let entries = forwarder_entries(&plan);
        let (fwd, rev) = (&entries[2], &entries[3]);
        assert_eq!(fwd.peer_addr, a("100.64.0.0"), "fn1's nf-out");
        assert_eq!(rev.peer_addr, a("100.64.0.3"), "fn3's nf-in");
        assert_eq!(fwd.local_addrs, [a("100.64.0.1"), a("100.64.0.2")]);
        assert_eq!(fwd.local_addrs, rev.local_addrs);
    }

    #[test]
    fn one_function_and_an_existing_endpoint_namespace() {
        let plan = plan_chain(&spec(1, Some("server")));
        let entries = forwarder_entries(&plan);
        assert_eq!(entries.len(), 2);
        // The function's own interfaces keep their names; the endpoint's does not matter here.
        assert_eq!(entries[0].ifname, names::UP_IF_IN);
        assert_eq!(entries[1].ifname, names::UP_IF_OUT);
        assert_eq!(entries[0].peer_addr, a("10.1.0.2"));
        assert_eq!(entries[1].peer_addr, a("10.2.0.2"));
        assert_eq!(entries[0].local_addrs, [a("10.1.0.1"), a("10.2.0.1")]);
    }

    #[test]
    fn no_functions_no_entries_but_valid_map_sizes() {
        let plan = plan_chain(&spec(0, None));
        assert!(forwarder_entries(&plan).is_empty());
        assert_eq!(forwarder_table_len(&plan), 64);
        assert_eq!(forwarder_counter_len(&plan), 32);
    }

    #[test]
    fn interface_slots_are_offsets_from_the_base() {
        assert_eq!(interface_slot(ifindex(0, false)), Some(0));
        assert_eq!(interface_slot(ifindex(2, true)), Some(5));
        assert_eq!(interface_slot(1), None);
    }
}
