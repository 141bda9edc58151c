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
    for f in &spec.functions {
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
            forwarding: true,
            routes: Vec::new(),
        });
    }
    hops.push(endpoint_hop(spec, "egress", &spec.egress));

    let links: Vec<LinkPlan> = (0..=n).map(|l| plan_link(spec, &hops, l)).collect();

    // Routes: every hop reaches the far subnets through its neighbours.
    let ingress_net = spec.ingress.address.trunc();
    let egress_net = spec.egress.address.trunc();
    for (h, hop) in hops.iter_mut().enumerate().take(n + 1).skip(1) {
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
    ChainPlan {
        chain: spec.name.clone(),
        fastpath: spec.fastpath,
        hops,
        links,
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
