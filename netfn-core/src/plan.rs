//! A pure function from a validated chain to the kernel objects that must exist for it.
//!
//! Hop 0 is the ingress endpoint, hops 1..=N the functions, hop N+1 the egress endpoint. Link `l`
//! joins hop `l` (its `out` side) to hop `l+1` (its `in` side). Interface indexes and MAC addresses
//! are derived from the link number, so they are unique within a chain and known before anything
//! exists: eBPF maps can be filled from the plan alone.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::names;
use crate::spec::{ChainSpec, EndpointSpec, FastPath};

/// What a hop is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum HopRole {
    Ingress,
    Function {
        kind: String,
        settings: serde_json::Value,
    },
    Egress,
}

/// A network namespace that a hop lives in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsPlan {
    pub name: String,
    /// True if netfn creates (and later removes) it; false for an operator's existing namespace.
    pub created: bool,
}

/// A route in a hop's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePlan {
    pub destination: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// One hop of a chain: an endpoint or a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopPlan {
    /// The function name, or `ingress` / `egress`.
    pub name: String,
    #[serde(flatten)]
    pub role: HopRole,
    pub netns: NetnsPlan,
    /// IP forwarding on (functions in kernel mode).
    pub forwarding: bool,
    pub routes: Vec<RoutePlan>,
    /// Interfaces (by index) this hop received on toward egress (`retired_in`) or toward
    /// ingress (`retired_out`) before a live apply replaced them. Their counters stay in the
    /// pinned map, so a function's totals stay monotonic across applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_in: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_out: Vec<u32>,
    /// Functions only: the function's slot in the forwarder's per-function maps (counters at
    /// `2 × slot + direction`). Fixed for the function's life in the chain, wherever a live
    /// apply moves it, so its counters stay continuous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
}

/// One side of a veth pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEnd {
    pub hop: usize,
    pub ifname: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// Address with prefix length.
    pub address: Ipv4Net,
}

/// A veth pair between hop `index` and hop `index + 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPlan {
    pub index: usize,
    /// In hop `index`: traffic leaves the hop toward egress here.
    pub out: LinkEnd,
    /// In hop `index + 1`: traffic enters the hop from ingress here.
    pub inn: LinkEnd,
}

/// Everything one chain needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPlan {
    pub chain: String,
    pub fastpath: FastPath,
    pub hops: Vec<HopPlan>,
    pub links: Vec<LinkPlan>,
    /// The sizes of the forwarder's maps, fixed when the chain comes up.
    #[serde(default)]
    pub capacity: Capacity,
}

/// The sizes of a chain's forwarder maps, chosen at `up` with room for a live apply to grow the
/// chain: the per-interface tables hold `interfaces` rows (indexed by `ifindex - IFINDEX_BASE`),
/// the per-function maps `functions` slots. During an apply the old and the new interfaces and
/// functions exist side by side, so the chain can grow to about half of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capacity {
    pub interfaces: u32,
    pub functions: u32,
}

impl Capacity {
    /// Room for a chain of `functions` functions to double (and at least 16 functions).
    pub fn for_functions(functions: usize) -> Capacity {
        let functions = u32::try_from(functions).unwrap_or(u32::MAX / 8);
        let functions = functions.saturating_mul(2).max(16).next_power_of_two();
        Capacity {
            // Two interfaces per link, one link more than functions; then room to double.
            interfaces: functions.saturating_mul(4),
            functions,
        }
    }
}

impl ChainPlan {
    /// Namespaces that netfn creates for this chain.
    pub fn created_namespaces(&self) -> impl Iterator<Item = &str> {
        self.hops
            .iter()
            .filter(|h| h.netns.created)
            .map(|h| h.netns.name.as_str())
    }

    /// The interfaces in hop `hop`, in (in, out) order where present.
    pub fn interfaces_of(&self, hop: usize) -> impl Iterator<Item = &LinkEnd> {
        let inn = hop
            .checked_sub(1)
            .and_then(|l| self.links.get(l))
            .map(|l| &l.inn);
        let out = self.links.get(hop).map(|l| &l.out);
        inn.into_iter().chain(out)
    }

    pub fn hop(&self, name: &str) -> Option<(usize, &HopPlan)> {
        self.hops.iter().enumerate().find(|(_, h)| h.name == name)
    }

    pub fn function_count(&self) -> usize {
        self.hops.len().saturating_sub(2)
    }

    /// The ingress and the egress endpoint's subnets.
    pub fn endpoint_subnets(&self) -> (Ipv4Net, Ipv4Net) {
        let ingress = self.links.first().map(|l| l.out.address.trunc());
        let egress = self.links.last().map(|l| l.inn.address.trunc());
        (ingress.unwrap_or_default(), egress.unwrap_or_default())
    }

    /// The forwarder slot of the function at hop `hop` (None for an endpoint). Records written
    /// before slots existed use the function's position.
    pub fn function_slot(&self, hop: usize) -> Option<u32> {
        let h = self.hops.get(hop)?;
        if !matches!(h.role, HopRole::Function { .. }) {
            return None;
        }
        h.slot.or_else(|| u32::try_from(hop - 1).ok())
    }

    /// The forwarder's map sizes (records written before they were kept: just enough for the
    /// plan).
    pub fn capacity(&self) -> Capacity {
        if self.capacity.interfaces > 0 {
            return self.capacity;
        }
        let functions = u32::try_from(self.function_count()).unwrap_or(u32::MAX);
        Capacity {
            interfaces: u32::try_from(self.links.len().saturating_mul(2)).unwrap_or(u32::MAX),
            functions: functions.max(1),
        }
    }
}

/// The interface index of one side of link `link` (`out` = 0, `in` = 1).
pub fn ifindex(link: usize, side_in: bool) -> u32 {
    // Chains are validated to hold far fewer links than this range; saturate rather than wrap.
    let link = u32::try_from(link).unwrap_or(u32::MAX / 4);
    names::IFINDEX_BASE
        .saturating_add(link.saturating_mul(2))
        .saturating_add(u32::from(side_in))
}

/// A locally administered unicast MAC derived from the chain name and the interface index.
pub fn mac(chain: &str, ifindex: u32) -> [u8; 6] {
    let h = chain.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let i = ifindex.to_be_bytes();
    [0x02, (h & 0xff) as u8, i[0] ^ 0x4e, i[1], i[2], i[3]]
}

/// Plans one chain. The spec is valid, so this cannot fail.
pub fn plan_chain(spec: &ChainSpec) -> ChainPlan {
    let n = spec.functions.len();
    let mut hops = Vec::with_capacity(n + 2);
    hops.push(endpoint_hop(spec, "ingress", &spec.ingress));
    for (slot, f) in (0u32..).zip(&spec.functions) {
        hops.push(HopPlan {
            name: f.name.clone(),
            role: HopRole::Function {
                kind: f.kind.clone(),
                settings: f.config.to_json(),
            },
            netns: NetnsPlan {
                name: names::netns_name(&spec.name, &f.name),
                created: true,
            },
            // In tc/xdp mode packets never reach a function's stack: forwarding stays off, so a
            // packet the fast path does not take is dropped, not quietly routed by the kernel.
            forwarding: spec.fastpath == FastPath::Kernel,
            routes: Vec::new(),
            retired_in: Vec::new(),
            retired_out: Vec::new(),
            slot: Some(slot),
        });
    }
    hops.push(endpoint_hop(spec, "egress", &spec.egress));

    let links: Vec<LinkPlan> = (0..=n).map(|l| plan_link(spec, &hops, l)).collect();

    function_routes(
        &mut hops,
        &links,
        spec.ingress.address.trunc(),
        spec.egress.address.trunc(),
    );
    ChainPlan {
        chain: spec.name.clone(),
        fastpath: spec.fastpath,
        hops,
        links,
        capacity: Capacity::for_functions(n),
    }
}

/// Sets the routes of every function hop: the far subnets are reached through the neighbours
/// (the subnet next to a function is directly connected).
pub(crate) fn function_routes(
    hops: &mut [HopPlan],
    links: &[LinkPlan],
    ingress_net: Ipv4Net,
    egress_net: Ipv4Net,
) {
    let n = hops.len().saturating_sub(2);
    for (h, hop) in hops.iter_mut().enumerate().take(n + 1).skip(1) {
        hop.routes.clear();
        if h > 1 {
            hop.routes.push(RoutePlan {
                destination: ingress_net,
                gateway: links[h - 1].out.address.addr(),
            });
        }
        if h < n {
            hop.routes.push(RoutePlan {
                destination: egress_net,
                gateway: links[h].inn.address.addr(),
            });
        }
    }
}

fn endpoint_hop(spec: &ChainSpec, name: &str, ep: &EndpointSpec) -> HopPlan {
    let (role, destination) = if name == "ingress" {
        (HopRole::Ingress, spec.egress.address.trunc())
    } else {
        (HopRole::Egress, spec.ingress.address.trunc())
    };
    HopPlan {
        name: name.to_string(),
        role,
        netns: match &ep.namespace {
            Some(existing) => NetnsPlan {
                name: existing.clone(),
                created: false,
            },
            None => NetnsPlan {
                name: names::netns_name(&spec.name, name),
                created: true,
            },
        },
        forwarding: false,
        routes: vec![RoutePlan {
            destination,
            gateway: ep.gateway,
        }],
        retired_in: Vec::new(),
        retired_out: Vec::new(),
        slot: None,
    }
}

fn plan_link(spec: &ChainSpec, hops: &[HopPlan], l: usize) -> LinkPlan {
    let n = spec.functions.len();
    let (out_addr, in_addr) = if l == 0 {
        // Ingress subnet: the endpoint, and the first function as its gateway.
        let p = spec.ingress.address.prefix_len();
        (spec.ingress.address, net(spec.ingress.gateway, p))
    } else if l == n {
        let p = spec.egress.address.prefix_len();
        (net(spec.egress.gateway, p), spec.egress.address)
    } else {
        let base = u32::from(spec.transit.network()).saturating_add(2 * (l as u32 - 1));
        (
            net(Ipv4Addr::from(base), 31),
            net(Ipv4Addr::from(base + 1), 31),
        )
    };
    let ifname = |hop: usize, default: &str| {
        if hops[hop].netns.created {
            default.to_string()
        } else {
            names::endpoint_ifname(&spec.name)
        }
    };
    let end = |hop: usize, side_in: bool, address: Ipv4Net| {
        let ifindex = ifindex(l, side_in);
        LinkEnd {
            hop,
            ifname: ifname(hop, if side_in { names::IF_IN } else { names::IF_OUT }),
            ifindex,
            mac: mac(&spec.name, ifindex),
            address,
        }
    };
    LinkPlan {
        index: l,
        out: end(l, false, out_addr),
        inn: end(l + 1, true, in_addr),
    }
}

fn net(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
    // Prefixes come from validated networks, so they are <= 32.
    Ipv4Net::new(addr, prefix).unwrap_or_else(|_| Ipv4Net::from(addr))
}

/// Kernel mode, during a live apply: the routes that steer a function's packets by the interface
/// they arrived on. Packets from the ingress side (arriving on the function's `in` interface) are
/// routed by a table of their own holding the route toward egress, packets from the egress side
/// by one holding the route toward ingress; the table id is the arriving interface's index
/// (unique in the chain), and a rule `iif INTERFACE lookup TABLE` selects it. While the steering
/// is in place a packet's path follows the links it travels on: one already on the old links
/// stays on them to the end, and one that takes a switched route takes the new path all the way,
/// never half of each (so a reorder cannot skip the function that moves). Once the old links are
/// gone the main table routes the same way and the steering is removed: custom rules cost on
/// every packet (a rule walk, and a second lookup to validate the source). (Where a side faces an endpoint's subnet directly, there is no table:
/// the main table's connected route applies.) Empty for endpoints and for functions that do not
/// forward (tc/xdp mode).
pub fn steering_routes(plan: &ChainPlan, hop: usize) -> Vec<(&LinkEnd, RoutePlan)> {
    let Some(h) = plan.hops.get(hop).filter(|h| h.forwarding) else {
        return Vec::new();
    };
    let (ingress_net, egress_net) = plan.endpoint_subnets();
    let route_to = |net: Ipv4Net| h.routes.iter().find(|r| r.destination == net).cloned();
    let inn = hop
        .checked_sub(1)
        .and_then(|l| plan.links.get(l))
        .map(|l| (&l.inn, route_to(egress_net)));
    let out = plan.links.get(hop).map(|l| (&l.out, route_to(ingress_net)));
    inn.into_iter()
        .chain(out)
        .filter_map(|(end, route)| Some((end, route?)))
        .collect()
}

/// Which way a packet crosses a function: from ingress toward egress, or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Forward,
    Reverse,
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
/// see [`ifindex`]). `None` for an interface that is not a chain interface.
pub fn interface_slot(ifindex: u32) -> Option<u32> {
    ifindex.checked_sub(names::IFINDEX_BASE)
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
            direction,
            out_ifindex: leave.ifindex,
            own_mac: arrive.mac,
            peer_mac: neighbour.mac,
            peer_addr: neighbour.address.addr(),
            allowed_sources,
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

/// How many rows the forwarder's per-interface tables have ([`Capacity::interfaces`]).
pub fn forwarder_table_len(plan: &ChainPlan) -> u32 {
    plan.capacity().interfaces.max(1)
}

/// How many counter slots the forwarder has: two per function slot.
pub fn forwarder_counter_len(plan: &ChainPlan) -> u32 {
    plan.capacity().functions.saturating_mul(2).max(1)
}

/// Chains for unit tests of the planning code (no kind registry needed).
#[cfg(test)]
pub(crate) mod test_specs {
    use std::sync::Arc;

    use crate::function::FunctionConfig;
    use crate::spec::{ChainSpec, EndpointSpec, FastPath, FunctionSpec};

    #[derive(Debug)]
    struct Forward;

    impl FunctionConfig for Forward {
        fn kind(&self) -> &'static str {
            "forward"
        }
        fn to_json(&self) -> serde_json::Value {
            serde_json::json!({})
        }
    }

    /// Chain `name`: 10.1.0.2/24 → forward functions `functions` → 10.2.0.2/24.
    pub(crate) fn chain(
        name: &str,
        fastpath: FastPath,
        functions: &[&str],
        egress_namespace: Option<&str>,
    ) -> ChainSpec {
        let parse = |s: &str| s.parse().expect("test address");
        ChainSpec {
            name: name.into(),
            fastpath,
            transit: "100.64.0.0/16".parse().expect("test transit"),
            ingress: EndpointSpec {
                address: "10.1.0.2/24".parse().expect("test address"),
                gateway: parse("10.1.0.1"),
                namespace: None,
            },
            egress: EndpointSpec {
                address: "10.2.0.2/24".parse().expect("test address"),
                gateway: parse("10.2.0.1"),
                namespace: egress_namespace.map(str::to_string),
            },
            functions: functions
                .iter()
                .map(|f| FunctionSpec {
                    name: f.to_string(),
                    kind: "forward".into(),
                    config: Arc::new(Forward),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(functions: usize, egress_namespace: Option<&str>) -> ChainSpec {
        let names: Vec<String> = (1..=functions).map(|i| format!("fn{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        test_specs::chain("edge", FastPath::Tc, &names, egress_namespace)
    }

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
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
        assert_eq!(e.ifname, names::IF_IN);
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
        assert_eq!(e.ifname, names::IF_OUT);
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
        assert_eq!(entries[0].ifname, names::IF_IN);
        assert_eq!(entries[1].ifname, names::IF_OUT);
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
    fn kernel_mode_steers_each_side_by_its_own_table() {
        let mut s = spec(3, None);
        s.fastpath = FastPath::Kernel;
        let plan = plan_chain(&s);
        // fn2: from ingress (arriving on nf-in) toward egress via fn3; back via fn1.
        let routes = steering_routes(&plan, 2);
        let shape: Vec<(u32, Ipv4Net, Ipv4Addr)> = routes
            .iter()
            .map(|(end, r)| (end.ifindex, r.destination, r.gateway))
            .collect();
        let (ingress, egress) = plan.endpoint_subnets();
        assert_eq!(
            shape,
            vec![
                (ifindex(1, true), egress, a("100.64.0.3")),
                (ifindex(2, false), ingress, a("100.64.0.0")),
            ]
        );
        // fn1's reverse side faces the ingress subnet directly: no table of its own.
        let first: Vec<u32> = steering_routes(&plan, 1)
            .iter()
            .map(|(e, _)| e.ifindex)
            .collect();
        assert_eq!(first, vec![ifindex(0, true)]);
        // Endpoints, and functions in tc mode, are not steered.
        assert!(steering_routes(&plan, 0).is_empty());
        assert!(steering_routes(&plan_chain(&spec(3, None)), 2).is_empty());
    }

    #[test]
    fn capacity_leaves_room_to_double_the_chain() {
        for n in [0usize, 1, 7, 8, 9, 100, 1000] {
            let c = Capacity::for_functions(n);
            let links = n as u32 + 1;
            assert!(
                c.functions >= 2 * n as u32 && c.functions >= 16,
                "{n}: {c:?}"
            );
            assert!(c.interfaces >= 2 * (2 * links), "{n}: {c:?}");
        }
        assert_eq!(
            Capacity::for_functions(1000),
            Capacity {
                interfaces: 8192,
                functions: 2048
            }
        );
    }

    #[test]
    fn slots_follow_the_function_not_its_position() {
        let mut plan = plan_chain(&spec(2, None));
        plan.hops[1].slot = Some(5);
        assert_eq!(plan.function_slot(1), Some(5));
        assert_eq!(plan.function_slot(2), Some(1));
        assert_eq!(plan.function_slot(0), None);
        let entries = forwarder_entries(&plan);
        assert_eq!(
            (entries[0].counter_slot(), entries[1].counter_slot()),
            (10, 11)
        );
        // A record from before slots existed: the position.
        plan.hops[1].slot = None;
        assert_eq!(plan.function_slot(1), Some(0));
    }

    #[test]
    fn interface_slots_are_offsets_from_the_base() {
        assert_eq!(interface_slot(ifindex(0, false)), Some(0));
        assert_eq!(interface_slot(ifindex(2, true)), Some(5));
        assert_eq!(interface_slot(1), None);
    }
}
