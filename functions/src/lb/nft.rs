//! The load balancer's kernel-mode form: nftables DNAT in the function's namespace, loaded by
//! core with `nft -f`. Each service is one rule: packets to its VIP and port get the
//! destination of the backend a hash of their 5-tuple picks from a map of slots, shared out
//! among the backends by weight (as the Maglev quotas share the fast path's table). Linux
//! conntrack keeps each flow on its backend and restores the VIP on the answers. The ruleset
//! replaces the function's table whole: a reload is one atomic transaction, and tracked flows
//! keep their backends across it.

use std::fmt::Write as _;

use super::config::LbSettings;
use super::maglev::{self, Entry};

/// The nftables table a load balancer function owns in its namespace.
pub const TABLE: &str = "netfn_lb";

/// Slots of each service's map: a prime, so the hash spreads evenly, small enough for a quick
/// load. The slots are a Maglev table ([`maglev::build`]): weights give shares, and adding or
/// removing a backend moves about its share of the flows, not all of them.
pub const SLOTS: u32 = 1021;

/// The hash's seed, fixed: without one nftables picks a random seed at every load, and a
/// reload (a live apply) would send every flow the connection table does not hold elsewhere.
const SEED: u32 = 0x6e66_6c62;

/// The ruleset of a load balancer function (nft syntax, one transaction).
pub fn ruleset(s: &LbSettings) -> String {
    let mut out = String::new();
    // Declaring, then deleting, makes the load replace an existing table and work without one.
    let _ = writeln!(out, "table ip {TABLE}\ndelete table ip {TABLE}");
    let _ = writeln!(out, "table ip {TABLE} {{");
    let _ = writeln!(
        out,
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;"
    );
    for service in &s.services {
        let proto = service.proto.name();
        let ids: Vec<String> = service.backends.iter().map(|b| b.id()).collect();
        let entries: Vec<Entry<'_>> = service
            .backends
            .iter()
            .zip(&ids)
            .map(|(b, id)| Entry {
                id,
                weight: b.weight,
            })
            .collect();
        let label = service.label();
        if entries.iter().all(|e| e.weight == 0) {
            let _ = writeln!(
                out,
                "    ip daddr {} {proto} dport {} counter drop comment \"{label} lb-no-backend\"",
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
            "    ip daddr {vip} {proto} dport {port} counter dnat ip addr . port to jhash ip saddr \
             . {proto} sport . ip daddr . {proto} dport mod {SLOTS} seed {SEED:#x} map {{ {} }} comment \"{label}\"",
            map.join(", "),
            vip = service.vip,
            port = service.port,
        );
    }
    let _ = writeln!(out, "  }}\n}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::config::{BackendConf, L4, LbConntrack, ServiceConf};

    #[test]
    fn each_service_is_one_weighted_dnat_rule() {
        let backend = |a: &str, weight| BackendConf {
            address: a.parse().unwrap(),
            port: 8080,
            weight,
        };
        let s = LbSettings {
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
        };
        let text = ruleset(&s);
        let rule = text
            .lines()
            .find(|l| l.contains("dnat"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            rule.contains(
                "ip daddr 192.0.2.10 tcp dport 80 counter dnat ip addr . port to jhash ip saddr . \
                 tcp sport . ip daddr . tcp dport mod 1021 seed 0x6e666c62 map { 0 : "
            ),
            "{rule}"
        );
        // The weights' shares of the slots: 1:2.
        let on = |b: &str| rule.matches(&format!(": {b} . 8080")).count();
        assert_eq!((on("10.2.0.10"), on("10.2.0.11")), (340, 681));
    }
}
