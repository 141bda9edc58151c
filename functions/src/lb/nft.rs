//! The load balancer's kernel-mode form: nftables DNAT in the function's namespace, loaded by
//! core with `nft -f`. Each service is one rule: packets to its VIP and port get the
//! destination of the backend a hash of their 5-tuple picks from a map of slots, shared out
//! among the backends by weight (as the Maglev quotas share the fast path's table). Linux
//! conntrack keeps each flow on its backend and restores the VIP on the answers. The ruleset
//! replaces the function's table whole: a reload is one atomic transaction, and tracked flows
//! keep their backends across it.
//!
//! The table also holds what the health checks decided, as the fast path's maps do: set
//! [`DOWN_SET`] lists the backends taken out (they get no slots), so an agent that restarts,
//! or an `apply` that reloads the rules, starts from the verdicts in force. Each service's rule
//! counts into a named counter: the flows it balanced (a NAT rule sees a flow's first packet
//! only), or dropped for want of a backend.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use netfn_core::kernel::nft;

use super::config::{LbConntrack, LbSettings};
use super::maglev::{self, Entry};
use crate::conntrack::{CLOSING_STATES, HALF_CLOSED_STATES, timeout_sysctl};

/// The nftables table a load balancer function owns in its namespace.
pub const TABLE: &str = "netfn_lb";

/// The set of backends (address . port) the health checks took out.
pub const DOWN_SET: &str = "down";

/// Slots of each service's map: a prime, so the hash spreads evenly, small enough for a quick
/// load. The slots are a Maglev table ([`maglev::build`]): weights give shares, and adding or
/// removing a backend moves about its share of the flows, not all of them.
pub const SLOTS: u32 = 1021;

/// The hash's seed, fixed: without one nftables picks a random seed at every load, and a
/// reload (a live apply) would send every flow the connection table does not hold elsewhere.
const SEED: u32 = 0x6e66_6c62;

/// The named counter of service `i`'s flows: balanced, or dropped with no backend to take them.
pub fn flows_counter(i: usize) -> String {
    format!("flows_{i}")
}

/// The conntrack timeouts of the function's namespace (per-namespace sysctls): the fast path's
/// flow timeouts, for Linux conntrack, which keeps the flows in kernel mode (TCP's handshake,
/// established TCP, TCP after a FIN from one side, TCP after a FIN from each or an RST, UDP both
/// ways), as the firewall's.
pub fn sysctls(t: &LbConntrack) -> Vec<(String, String)> {
    [
        ("tcp_timeout_syn_sent", t.tcp_syn),
        ("tcp_timeout_syn_recv", t.tcp_syn),
        ("tcp_timeout_established", t.tcp),
        ("udp_timeout", t.udp),
        ("udp_timeout_stream", t.udp),
    ]
    .into_iter()
    .chain(HALF_CLOSED_STATES.map(|k| (k, t.tcp_half_closed)))
    .chain(CLOSING_STATES.map(|k| (k, t.tcp_closing)))
    .map(|(k, v)| timeout_sysctl(k, v))
    .collect()
}

/// The ruleset of a load balancer function (nft syntax, one transaction), without the backends
/// in `down` (ids as `BackendConf::id`).
pub fn ruleset(s: &LbSettings, down: &BTreeSet<String>) -> String {
    let mut out = String::new();
    // Declaring, then deleting, makes the load replace an existing table and work without one.
    let _ = writeln!(out, "table ip {TABLE}\ndelete table ip {TABLE}");
    let _ = writeln!(out, "table ip {TABLE} {{");
    let down_elements: Vec<String> = s
        .services
        .iter()
        .flat_map(|service| &service.backends)
        .filter(|b| b.address.is_ipv4() && down.contains(&b.id()))
        .map(|b| format!("{} . {}", b.address, b.port))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let _ = write!(
        out,
        "  set {DOWN_SET} {{\n    type ipv4_addr . inet_service\n    comment \"backends the health checks took out\"\n"
    );
    if !down_elements.is_empty() {
        let _ = writeln!(out, "    elements = {{ {} }}", down_elements.join(", "));
    }
    let _ = writeln!(out, "  }}");
    for (i, service) in s.services.iter().enumerate() {
        let _ = writeln!(
            out,
            "  counter {} {{ comment \"{}\" }}",
            flows_counter(i),
            service.label()
        );
    }
    let _ = writeln!(
        out,
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;"
    );
    for (i, service) in s.services.iter().enumerate() {
        let proto = service.proto.name();
        let ids: Vec<String> = service.backends.iter().map(|b| b.id()).collect();
        let entries: Vec<Entry<'_>> = service
            .backends
            .iter()
            .zip(&ids)
            .map(|(b, id)| Entry {
                id,
                weight: if down.contains(id) { 0 } else { b.weight },
            })
            .collect();
        let label = service.label();
        let counter = flows_counter(i);
        if entries.iter().all(|e| e.weight == 0) {
            let _ = writeln!(
                out,
                "    ip daddr {} {proto} dport {} counter name \"{counter}\" drop comment \"{label} lb-no-backend\"",
                service.vip, service.port
            );
            continue;
        }
        let map: Vec<String> = maglev::build(&entries, SLOTS, None)
            .iter()
            .enumerate()
            .filter_map(|(slot, &b)| {
                let b = service.backends.get(b as usize)?;
                Some(format!("{slot} : {} . {}", b.address, b.port))
            })
            .collect();
        let _ = writeln!(
            out,
            "    ip daddr {vip} {proto} dport {port} counter name \"{counter}\" dnat ip addr . port to jhash ip saddr \
             . {proto} sport . ip daddr . {proto} dport mod {SLOTS} seed {SEED:#x} map {{ {} }} comment \"{label}\"",
            map.join(", "),
            vip = service.vip,
            port = service.port,
        );
    }
    let _ = writeln!(out, "  }}\n}}");
    out
}

/// The backends the live ruleset in namespace `netns` holds as down (none before its first
/// load), as `BackendConf::id`s.
pub fn down_backends(netns: &str) -> Result<BTreeSet<String>, String> {
    let elements = nft::set_elements(netns, "ip", TABLE, DOWN_SET)
        .map_err(|e| format!("read the backends the health checks took out: {e}"))?;
    Ok(elements
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            let parts = e.get("concat")?.as_array()?;
            let address: IpAddr = parts.first()?.as_str()?.parse().ok()?;
            let port = parts.get(1)?.as_u64()?;
            Some(format!("{address}:{port}"))
        })
        .collect())
}

/// Per service (in the settings' order), the flows its rule balanced or dropped, from the named
/// counters of the live ruleset in namespace `netns`.
pub fn service_flows(netns: &str, s: &LbSettings) -> Result<Vec<u64>, String> {
    let counters = nft::counters(netns, "ip", TABLE)
        .map_err(|e| format!("read the services' counters: {e}"))?;
    Ok((0..s.services.len())
        .map(|i| counters.get(&flows_counter(i)).map_or(0, |c| c.0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::config::{BackendConf, L4, LbConntrack, ServiceConf};

    fn settings() -> LbSettings {
        let backend = |a: &str, weight| BackendConf {
            address: a.parse().unwrap(),
            port: 8080,
            weight,
        };
        LbSettings {
            services: vec![ServiceConf {
                vip: "192.0.2.10".parse().unwrap(),
                proto: L4::Tcp,
                port: 80,
                backends: vec![backend("10.2.0.10", 1), backend("10.2.0.11", 2)],
                health: None,
            }],
            table_size: maglev::DEFAULT_SIZE,
            conntrack: LbConntrack::default(),
            spans: Vec::new(),
        }
    }

    fn service_rule(text: &str) -> &str {
        text.lines()
            .find(|l| l.contains("dport 80"))
            .unwrap_or_else(|| panic!("{text}"))
    }

    #[test]
    fn each_service_is_one_weighted_dnat_rule() {
        let text = ruleset(&settings(), &BTreeSet::new());
        let rule = service_rule(&text);
        assert!(
            rule.contains(
                "ip daddr 192.0.2.10 tcp dport 80 counter name \"flows_0\" dnat ip addr . port to \
                 jhash ip saddr . tcp sport . ip daddr . tcp dport mod 1021 seed 0x6e666c62 map { 0 : "
            ),
            "{rule}"
        );
        // The weights' shares of the slots: 1:2.
        let on = |b: &str| rule.matches(&format!(": {b} . 8080")).count();
        assert_eq!((on("10.2.0.10"), on("10.2.0.11")), (340, 681));
        assert!(text.contains("counter flows_0 {"), "{text}");
        assert!(!text.contains("elements"), "nothing is down: {text}");
    }

    #[test]
    fn a_backend_down_is_in_the_set_and_gets_no_slot() {
        let down = BTreeSet::from(["10.2.0.11:8080".to_string()]);
        let text = ruleset(&settings(), &down);
        assert!(text.contains("elements = { 10.2.0.11 . 8080 }"), "{text}");
        let rule = service_rule(&text);
        assert_eq!(rule.matches(": 10.2.0.10 . 8080").count(), 1021, "{rule}");
        assert!(!rule.contains("10.2.0.11"), "{rule}");
        // All down: the service drops new flows, counted as its flows.
        let down = BTreeSet::from(["10.2.0.10:8080".to_string(), "10.2.0.11:8080".to_string()]);
        let text = ruleset(&settings(), &down);
        assert!(
            service_rule(&text).contains("counter name \"flows_0\" drop"),
            "{text}"
        );
    }
}
