//! Address arithmetic for the checks: parsing prefixes, gateways, overlaps, transit sizes.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Parses `a.b.c.d/len`; the error completes a sentence about the value.
pub(super) fn parse_net(text: &str) -> Result<Ipv4Net, String> {
    if let Ok(net) = text.parse::<Ipv4Net>() {
        return Ok(net);
    }
    if text.parse::<Ipv4Addr>().is_ok() {
        return Err("has no prefix length".into());
    }
    if text.parse::<ipnet::IpNet>().is_ok() || text.parse::<std::net::IpAddr>().is_ok() {
        return Err("is IPv6; netfn supports IPv4 only for now".into());
    }
    Err("is not an IPv4 address with a prefix length".into())
}

pub(super) fn example_address(role: &str) -> &'static str {
    if role == "egress" {
        "10.2.0.2/24"
    } else {
        "10.1.0.2/24"
    }
}

/// The default gateway of an endpoint: for a /31 the other address, otherwise the first host
/// address of the subnet that is not the endpoint's own. `None` for a /32.
pub(in crate::spec) fn default_gateway(address: &Ipv4Net) -> Option<Ipv4Addr> {
    match address.prefix_len() {
        32 => None,
        31 => address.hosts().find(|a| *a != address.addr()),
        _ => address.trunc().hosts().find(|a| *a != address.addr()),
    }
}

pub(super) fn nth_address(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).saturating_add(n))
}

pub(super) fn overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// How many /31 links fit in a pool.
pub(super) fn link_capacity(pool: &Ipv4Net) -> u64 {
    match pool.prefix_len() {
        len @ 0..=31 => 1u64 << (31 - len),
        _ => 0,
    }
}

/// The longest prefix whose pool holds `links` /31 links.
pub(super) fn prefix_for_links(links: u64) -> u8 {
    let bits = u64::BITS - links.saturating_sub(1).leading_zeros();
    31u8.saturating_sub(u8::try_from(bits).unwrap_or(31))
}
