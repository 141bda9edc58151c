//! A pure function from a validated chain to the kernel objects that must exist for it.
//!
//! Hop 0 is the ingress endpoint, hops 1..=N the functions, hop N+1 the egress endpoint. Link `l`
//! joins hop `l` (its `out` side) to hop `l+1` (its `in` side). Interface indexes and MAC addresses
//! are derived from the link number, so they are unique within a chain and known before anything
//! exists: eBPF maps can be filled from the plan alone.
//!
//! Everything under `plan` is pure: no kernel, no files, no clock. This module builds a chain's
//! plan ([`plan_chain`]); [`forwarder`] derives the eBPF forwarder's table from it, [`steering`]
//! the kernel-mode routes an apply uses while it switches, [`names`] names every object,
//! [`diff`] compares a running chain with its file and [`replan`] plans the change so that what
//! stays keeps its identity.

pub mod diff;
pub mod forwarder;
pub mod names;
mod record;
pub mod replan;
pub mod steering;
#[cfg(test)]
pub(crate) mod test_specs;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::function::RecordedSettings;
use crate::spec::{ChainSpec, EndpointSpec, FastPath};

pub use forwarder::{
    Direction, ExtraSource, ForwarderEntry, SourceOrigin, counter_slot, forwarder_counter_len,
    forwarder_entries, forwarder_table_len, interface_slot,
};
pub use steering::steering_routes;

/// What a hop is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum HopRole {
    Ingress,
    Function {
        kind: String,
        settings: RecordedSettings,
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
#[serde(from = "record::HopRecord")]
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
    /// Functions only: the kind runs a per-packet stage at this hop in tc/xdp chains
    /// ([`crate::function::FunctionConfig::stage`]); the forwarder hands such packets to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stage: bool,
    /// Functions only: the sources its kind puts on packets besides the chain's subnets
    /// ([`crate::function::FunctionConfig::extra_sources`]); the functions those packets cross
    /// next accept them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<ExtraSource>,
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

    /// The plan with every function's settings left out (null): what teardown needs of a plan
    /// is its objects.
    pub fn without_settings(&self) -> ChainPlan {
        let mut plan = self.clone();
        for hop in &mut plan.hops {
            if let HopRole::Function { settings, .. } = &mut hop.role {
                *settings = RecordedSettings::none();
            }
        }
        plan
    }

    /// The ingress and the egress endpoint's subnets.
    /// The way `route` of hop `hop` sends packets: [`Direction::Forward`] toward egress (its
    /// gateway is the next hop's end of the hop's out link), else [`Direction::Reverse`].
    pub fn route_direction(&self, hop: usize, route: &RoutePlan) -> Direction {
        match self.links.get(hop) {
            Some(l) if route.gateway == l.inn.address.addr() => Direction::Forward,
            _ => Direction::Reverse,
        }
    }

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
                settings: f.config.record(),
            },
            netns: NetnsPlan {
                name: names::netns_name(&spec.name, &f.name),
                created: true,
            },
            // In tc/xdp mode packets never reach a function's stack: forwarding stays off, so a
            // packet the fast path does not take is dropped, not quietly routed by the kernel;
            // unless the kind's packets must cross its stack (then the forwarder hands it all).
            forwarding: spec.fastpath == FastPath::Kernel || f.config.uses_stack(),
            routes: Vec::new(),
            retired_in: Vec::new(),
            retired_out: Vec::new(),
            slot: Some(slot),
            stage: spec.fastpath != FastPath::Kernel && f.config.stage().is_some(),
            sources: declared_sources(
                f.config.extra_sources(),
                spec.ingress.address.trunc(),
                spec.egress.address.trunc(),
            ),
        });
    }
    hops.push(endpoint_hop(spec, "egress", &spec.egress));

    let links: Vec<LinkPlan> = (0..=n).map(|l| plan_link(spec, &hops, l)).collect();

    function_routes(
        &mut hops,
        &links,
        spec.ingress.address.trunc(),
        spec.egress.address.trunc(),
        spec.transit,
    );
    ChainPlan {
        chain: spec.name.clone(),
        fastpath: spec.fastpath,
        hops,
        links,
        capacity: Capacity::for_functions(n),
    }
}

/// Sets the routes of every hop: the far subnets are reached through the neighbours (the
/// subnet next to a hop is directly connected), and so are the extra sources functions declare
/// ([`ExtraSource`]): a load balancer's VIP, which answers toward ingress, is reached toward
/// egress from every hop before it; a VPN's clients, sending toward egress, are reached toward
/// ingress from every hop after it; a load balancer's backends routed beyond the egress
/// endpoint are reached toward egress from it and every function after it (the egress
/// endpoint's own route to them is the operator's: that is what "routed from it" means).
pub(crate) fn function_routes(
    hops: &mut [HopPlan],
    links: &[LinkPlan],
    ingress_net: Ipv4Net,
    egress_net: Ipv4Net,
    transit: Ipv4Net,
) {
    let n = hops.len().saturating_sub(2);
    let declared: Vec<(usize, ExtraSource)> = hops
        .iter()
        .enumerate()
        .flat_map(|(k, h)| h.sources.iter().map(move |s| (k, *s)))
        .collect();
    for (h, hop) in hops.iter_mut().enumerate() {
        // Toward ingress through the previous hop, toward egress through the next one.
        let back = h
            .checked_sub(1)
            .and_then(|l| links.get(l))
            .map(|l| l.out.address.addr());
        let on = links.get(h).map(|l| l.inn.address.addr());
        let endpoint = h == 0 || h == n + 1;
        let mut routes = Vec::new();
        if let Some(gateway) = back
            && h > 1
            && !endpoint
        {
            routes.push(RoutePlan {
                destination: ingress_net,
                gateway,
            });
        }
        if let Some(gateway) = on
            && h < n
            && !endpoint
        {
            routes.push(RoutePlan {
                destination: egress_net,
                gateway,
            });
        }
        // A function's own traffic toward egress (a load balancer's health checks) leaves
        // from its transit address: the answers come back through every function after it,
        // which routes the transit pool toward ingress (their neighbours' /31s are connected).
        if let Some(gateway) = back
            && h > 1
            && !endpoint
            && n > 1
        {
            routes.push(RoutePlan {
                destination: transit,
                gateway,
            });
        }
        for (k, s) in &declared {
            if covered_further(&declared, *k, s) {
                continue;
            }
            let gateway = match (s.origin, s.direction) {
                (SourceOrigin::Function, Direction::Reverse) if h < *k => on,
                (SourceOrigin::Function, Direction::Forward) if h > *k => back,
                (SourceOrigin::Beyond, Direction::Reverse) if h >= *k && !endpoint => on,
                (SourceOrigin::Beyond, Direction::Forward) if h <= *k && !endpoint => back,
                _ => None,
            };
            if let Some(gateway) = gateway
                && !routes.iter().any(|r| r.destination == s.net)
            {
                routes.push(RoutePlan {
                    destination: s.net,
                    gateway,
                });
            }
        }
        // The egress endpoint reaches the functions' transit addresses through the last
        // function (and the functions pass them on, above), wherever a function stands in the
        // chain. Only in a namespace netfn made: chains that share an operator's namespace
        // would each route their transit pool (every chain may use the default one).
        if h == n + 1
            && n > 1
            && hop.netns.created
            && let Some(last) = links.get(n)
        {
            routes.push(RoutePlan {
                destination: transit,
                gateway: last.out.address.addr(),
            });
        }
        if endpoint {
            // An endpoint keeps the route to the far endpoint's subnet it was planned with.
            hop.routes.truncate(1);
            hop.routes.extend(routes);
        } else {
            hop.routes = routes;
        }
    }
}

/// Whether a source from beyond an endpoint that function `k` declares lies behind a function
/// further on its way toward that endpoint, which puts it on its own packets (a WireGuard
/// endpoint whose allowed IPs hold a load balancer's backend): that function's own routes
/// reach it (through its tunnel), and a route of the load balancer's toward the endpoint
/// would take the traffic past it.
fn covered_further(declared: &[(usize, ExtraSource)], k: usize, s: &ExtraSource) -> bool {
    s.origin == SourceOrigin::Beyond
        && declared.iter().any(|(k2, s2)| {
            let further = match s.direction {
                Direction::Reverse => *k2 > k,
                Direction::Forward => *k2 < k,
            };
            further
                && s2.origin == SourceOrigin::Function
                && s2.direction == s.direction
                && s2.net.contains(&s.net)
        })
}

/// A function's extra sources as the plan keeps them: a host beyond an endpoint inside that
/// endpoint's own subnet is no extra source (its subnet is accepted and directly connected).
fn declared_sources(
    mut sources: Vec<ExtraSource>,
    ingress_net: Ipv4Net,
    egress_net: Ipv4Net,
) -> Vec<ExtraSource> {
    sources.retain(|s| {
        let far = match s.direction {
            Direction::Forward => ingress_net,
            Direction::Reverse => egress_net,
        };
        s.origin != SourceOrigin::Beyond || !far.contains(&s.net)
    });
    sources
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
        stage: false,
        sources: Vec::new(),
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
            ifname: ifname(
                hop,
                if side_in {
                    names::UP_IF_IN
                } else {
                    names::UP_IF_OUT
                },
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use test_specs::tc_chain as spec;

    #[test]
    fn a_plan_reads_back_from_its_record_unchanged() {
        let plan = plan_chain(&spec(2, None));
        let json = serde_json::to_string(&plan).expect("serialize");
        assert!(
            json.contains(r#""role":"function","kind":"forward","settings":{}"#),
            "{json}"
        );
        let back: ChainPlan = serde_json::from_str(&json).expect("read back");
        assert_eq!(back, plan);
        let bare = plan.without_settings();
        let back: ChainPlan =
            serde_json::from_str(&serde_json::to_string(&bare).expect("serialize")).expect("read");
        assert_eq!(back, bare);
    }

    #[test]
    fn extra_sources_are_routed_toward_their_function() {
        let mut spec = spec(3, None);
        let plain = plan_chain(&spec);
        spec.functions[1] = crate::spec::FunctionSpec {
            name: "fn2".into(),
            kind: "lb".into(),
            config: std::sync::Arc::new(test_specs::WithSources(vec![ExtraSource::sent(
                Direction::Reverse,
                "192.0.2.10/32".parse().unwrap(),
            )])),
        };
        let plan = plan_chain(&spec);
        let vip = |h: usize| {
            plan.hops[h]
                .routes
                .iter()
                .find(|r| r.destination.to_string() == "192.0.2.10/32")
                .map(|r| r.gateway)
        };
        // The ingress endpoint and fn1 reach the VIP toward egress; fn2 has it; fn3 and the
        // egress endpoint do not route it.
        assert_eq!(vip(0), Some(plan.links[0].inn.address.addr()));
        assert_eq!(vip(1), Some(plan.links[1].inn.address.addr()));
        assert_eq!((vip(2), vip(3), vip(4)), (None, None, None));
        // Nothing else changed.
        for (h, (a, b)) in plain.hops.iter().zip(&plan.hops).enumerate() {
            let others: Vec<_> = b
                .routes
                .iter()
                .filter(|r| vip(h) != Some(r.gateway) || r.destination.prefix_len() != 32)
                .collect();
            assert_eq!(others.len(), a.routes.len(), "hop {h}");
        }
    }

    #[test]
    fn backends_beyond_egress_are_routed_toward_it_from_their_function_on() {
        let mut spec = spec(3, None);
        let egress_net = spec.egress.address.trunc();
        let inside = Ipv4Net::new(egress_net.hosts().nth(5).unwrap(), 32).unwrap();
        spec.functions[1] = crate::spec::FunctionSpec {
            name: "fn2".into(),
            kind: "lb".into(),
            config: std::sync::Arc::new(test_specs::WithSources(vec![
                ExtraSource::beyond(Direction::Reverse, "203.0.113.5/32".parse().unwrap()),
                ExtraSource::beyond(Direction::Reverse, inside),
            ])),
        };
        let plan = plan_chain(&spec);
        // A backend in the egress subnet is no extra source.
        assert_eq!(plan.hops[2].sources.len(), 1, "{:?}", plan.hops[2].sources);
        let via = |h: usize| {
            plan.hops[h]
                .routes
                .iter()
                .find(|r| r.destination.to_string() == "203.0.113.5/32")
                .map(|r| r.gateway)
        };
        // fn2 (the load balancer) and fn3 route it toward egress; fn1, which only ever sees the
        // VIP, and the endpoints do not.
        assert_eq!(via(2), Some(plan.links[2].inn.address.addr()));
        assert_eq!(via(3), Some(plan.links[3].inn.address.addr()));
        assert_eq!((via(0), via(1), via(4)), (None, None, None));
    }

    #[test]
    fn the_functions_transit_addresses_are_reached_from_egress() {
        let plan = plan_chain(&spec(3, None));
        let transit = spec(3, None).transit;
        let via = |h: usize| {
            plan.hops[h]
                .routes
                .iter()
                .find(|r| r.destination == transit)
                .map(|r| r.gateway)
        };
        // The egress endpoint through the last function, each function after the first
        // through the one before it; the first function and the ingress endpoint not.
        assert_eq!(via(4), Some(plan.links[3].out.address.addr()));
        assert_eq!(via(3), Some(plan.links[2].out.address.addr()));
        assert_eq!(via(2), Some(plan.links[1].out.address.addr()));
        assert_eq!((via(1), via(0)), (None, None));
        // Not in a namespace an operator brings (chains sharing it would collide).
        let mut shared = spec(3, None);
        shared.egress.namespace = Some("theirs".into());
        assert_eq!(plan_chain(&shared).hops[4].routes.len(), 1);
        // One function: no transit link at all.
        assert!(
            plan_chain(&spec(1, None))
                .hops
                .iter()
                .all(|h| h.routes.iter().all(|r| r.destination != transit))
        );
    }

    #[test]
    fn a_backend_behind_a_tunnel_further_on_is_left_to_the_tunnel() {
        let mut spec = spec(3, None);
        let backend: Ipv4Net = "10.50.0.5/32".parse().unwrap();
        let site: Ipv4Net = "10.50.0.0/24".parse().unwrap();
        spec.functions[0] = crate::spec::FunctionSpec {
            name: "fn1".into(),
            kind: "lb".into(),
            config: std::sync::Arc::new(test_specs::WithSources(vec![ExtraSource::beyond(
                Direction::Reverse,
                backend,
            )])),
        };
        spec.functions[2] = crate::spec::FunctionSpec {
            name: "fn3".into(),
            kind: "vpn".into(),
            config: std::sync::Arc::new(test_specs::WithSources(vec![ExtraSource::sent(
                Direction::Reverse,
                site,
            )])),
        };
        let plan = plan_chain(&spec);
        // No hop routes the backend itself: fn1 and fn2 route the site toward fn3, whose
        // tunnel reaches it.
        for (h, hop) in plan.hops.iter().enumerate() {
            assert!(
                hop.routes.iter().all(|r| r.destination != backend),
                "hop {h}: {:?}",
                hop.routes
            );
        }
        let toward = |h: usize| {
            plan.hops[h]
                .routes
                .iter()
                .find(|r| r.destination == site)
                .map(|r| r.gateway)
        };
        assert_eq!(toward(1), Some(plan.links[1].inn.address.addr()));
        assert_eq!(toward(2), Some(plan.links[2].inn.address.addr()));
        assert_eq!(toward(3), None);
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
}
