//! The firewall rule model: an ordered list of rules (first match wins) and a default verdict,
//! plus the flow key a rule is matched against. This module owns the data types only; parsing
//! the configuration and validating it (for instance refusing IPv6 prefixes while chains are
//! IPv4) are not its business, and the types deliberately hold IPv6 so dual-stack needs no new
//! syntax.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// IP protocol numbers the rule model names (shared with the eBPF stage).
pub use netfn_common::firewall::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// An ordered list of rules and the verdict for new connections no rule matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub default: Action,
}

/// One rule. Every field narrows the match; an empty list matches anything. A rule matches a
/// packet when every field matches (a list matches when one of its elements does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Source prefixes (empty: any source, either family).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub src: Vec<IpNet>,
    /// Destination prefixes (empty: any destination, either family).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dst: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Proto::is_any")]
    pub proto: Proto,
    /// Source port ranges (empty: any). Packets without ports carry port 0 (see [`Packet`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sport: Vec<PortRange>,
    /// Destination port ranges (empty: any). For ICMP packets this slot holds the ICMP type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dport: Vec<PortRange>,
    /// ICMP type: the packet must be ICMP (ICMPv6 for IPv6 packets) with this type, whatever
    /// `proto` says (a TCP or UDP rule with an ICMP type matches nothing; the validator will
    /// refuse it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// The side that opened the connection.
    #[serde(default, skip_serializing_if = "Side::is_ingress")]
    pub from: Side,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateLimit>,
}

impl Rule {
    /// A rule that matches every connection opened from the ingress side.
    pub fn any(action: Action) -> Rule {
        Rule {
            name: None,
            src: Vec::new(),
            dst: Vec::new(),
            proto: Proto::Any,
            sport: Vec::new(),
            dport: Vec::new(),
            icmp_type: None,
            from: Side::Ingress,
            action,
            rate: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Any,
    Tcp,
    Udp,
    /// ICMP for IPv4 packets, ICMPv6 for IPv6 packets.
    Icmp,
}

impl Proto {
    pub fn is_any(&self) -> bool {
        *self == Proto::Any
    }

    /// The protocol number this matches for packets of `family`; `None` for `Any`.
    pub fn number(self, family: Family) -> Option<u8> {
        match self {
            Proto::Any => None,
            Proto::Tcp => Some(PROTO_TCP),
            Proto::Udp => Some(PROTO_UDP),
            Proto::Icmp => Some(family.icmp()),
        }
    }
}

/// The side of the function a connection was opened from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    #[default]
    Ingress,
    Egress,
}

impl Side {
    pub fn is_ingress(&self) -> bool {
        *self == Side::Ingress
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Drop,
    Reject,
}

/// An inclusive port range; `lo > hi` is empty (matches nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn single(port: u16) -> PortRange {
        PortRange { lo: port, hi: port }
    }

    pub fn contains(self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

/// A token bucket: `pps` packets per second on average, bursts of up to `burst` packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    pub pps: u32,
    pub burst: u32,
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// The ICMP protocol number of this family.
    pub fn icmp(self) -> u8 {
        match self {
            Family::V4 => PROTO_ICMP,
            Family::V6 => PROTO_ICMPV6,
        }
    }
}

/// The flow key of a connection's first packet, as the fast path extracts it.
///
/// `src` and `dst` have the same family (a packet with mixed families cannot exist on the wire
/// and matches no rule). Protocols without ports carry `sport = dport = 0`; ICMP and ICMPv6
/// carry `sport = 0` and the ICMP type in `dport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub side: Side,
}
