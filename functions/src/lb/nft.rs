//! The load balancer's kernel-mode form: nftables DNAT in the function's namespace, loaded by
//! core with `nft -f`. Each service is one rule: packets to its VIP and port get the
//! destination of the backend a hash of their 5-tuple picks from a map of slots, shared out
//! among the backends by weight (as the Maglev quotas share the fast path's table). Linux
//! conntrack keeps each flow on its backend and restores the VIP on the answers. The ruleset
//! replaces the function's table whole: a reload is one atomic transaction, and tracked flows
//! keep their backends across it.

use std::fmt::Write as _;

use netfn_core::function::FunctionContext;

use super::config::LbSettings;
use super::maglev::{self, Entry};

/// The nftables table a load balancer function owns in its namespace.
pub const TABLE: &str = "netfn_lb";

/// Most slots one service's map has (fewer when the weights add up to less).
const MAX_SLOTS: u32 = 1024;

/// The ruleset of a load balancer function (nft syntax, one transaction).
pub fn ruleset(s: &LbSettings, _ctx: &FunctionContext) -> String {
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
        let total: u32 = entries.iter().map(|e| e.weight).sum();
        let label = service.label();
        if total == 0 {
            let _ = writeln!(
                out,
                "    ip daddr {} {proto} dport {} counter drop comment \"{label} lb-no-backend\"",
                service.vip, service.port
            );
            continue;
        }
        let slots = total.min(MAX_SLOTS);
        let mut map = Vec::new();
        let mut slot = 0u32;
        for (b, quota) in service.backends.iter().zip(maglev::quotas(&entries, slots)) {
            for _ in 0..quota {
                map.push(format!("{slot} : {} . {}", b.address, b.port));
                slot += 1;
            }
        }
        let _ = writeln!(
            out,
            "    ip daddr {vip} {proto} dport {port} counter dnat ip addr . port to jhash ip saddr \
             . {proto} sport . ip daddr . {proto} dport mod {slots} map {{ {} }} comment \"{label}\"",
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
    use netfn_core::function::ProbePath;

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
        let ctx = FunctionContext {
            chain: "c".into(),
            function: "lb".into(),
            ingress_ifs: vec!["nf-in".into()],
            egress_ifs: vec!["nf-out".into()],
            ingress_subnet: "10.1.0.0/24".parse().unwrap(),
            egress_subnet: "10.2.0.0/24".parse().unwrap(),
            probe: ProbePath {
                src: "10.1.0.2".parse().unwrap(),
                dst: "10.2.0.2".parse().unwrap(),
                port: 9848,
            },
        };
        let text = ruleset(&s, &ctx);
        assert!(
            text.contains(
                "ip daddr 192.0.2.10 tcp dport 80 counter dnat ip addr . port to jhash ip saddr . \
                 tcp sport . ip daddr . tcp dport mod 3 map { 0 : 10.2.0.10 . 8080, 1 : \
                 10.2.0.11 . 8080, 2 : 10.2.0.11 . 8080 }"
            ),
            "{text}"
        );
    }
}
