//! The firewall's kernel-mode form: the same rule set as an nftables ruleset in the function's
//! namespace (forward hook, Linux conntrack for the state, its timeouts as the namespace's
//! conntrack sysctls), loaded by core with `nft -f`.
//! Connections are tracked the same way as in the fast path: established and related packets
//! pass first, a new TCP connection must start with a SYN, and the rules decide new
//! connections in order, first match wins, then the default verdict. The ruleset replaces the
//! function's table whole, so a reload is one atomic transaction.

use std::fmt::Write as _;

use ipnet::IpNet;
use netfn_core::function::FunctionContext;

use super::config::Conntrack;
use super::rules::{Action, PortRange, Proto, Rule, RuleSet, Side};
use crate::conntrack::{CLOSING_STATES, HALF_CLOSED_STATES, timeout_sysctl};

/// The nftables table a firewall function owns in its namespace.
pub const TABLE: &str = "netfn_fw";

/// The conntrack timeouts of the function's namespace (per-namespace sysctls).
pub fn sysctls(t: &Conntrack) -> Vec<(String, String)> {
    [
        ("tcp_timeout_syn_sent", t.tcp_syn),
        ("tcp_timeout_syn_recv", t.tcp_syn),
        ("tcp_timeout_established", t.tcp_established),
        ("udp_timeout", t.udp),
        ("udp_timeout_stream", t.udp_stream),
        ("icmp_timeout", t.icmp),
    ]
    .into_iter()
    .chain(HALF_CLOSED_STATES.map(|k| (k, t.tcp_half_closed)))
    .chain(CLOSING_STATES.map(|k| (k, t.tcp_closing)))
    .map(|(k, v)| timeout_sysctl(k, v))
    .collect()
}

/// The ruleset of a firewall function (nft syntax, one transaction).
pub fn ruleset(rules: &RuleSet, ctx: &FunctionContext) -> String {
    let mut out = String::new();
    // Declaring, then deleting, makes the load replace an existing table and work without one.
    let _ = writeln!(out, "table inet {TABLE}\ndelete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");
    let _ = writeln!(
        out,
        "  chain forward {{\n    type filter hook forward priority filter; policy accept;"
    );
    // Every packet of a connection the rules accepted passes, as in the fast path: replies
    // (established), ICMP errors about it (related), and the later packets of a one-way flow
    // (still "new" to conntrack, but its entry is confirmed).
    let _ = writeln!(out, "    ct state established,related counter accept");
    let _ = writeln!(out, "    ct status confirmed counter accept");
    let _ = writeln!(
        out,
        "    ct state invalid counter drop comment \"fw-invalid\""
    );
    let _ = writeln!(
        out,
        "    meta l4proto tcp tcp flags & (fin|syn|rst|ack) != syn counter drop comment \"fw-not-syn\""
    );
    for (i, rule) in rules.rules.iter().enumerate() {
        let m = matcher(rule, ctx);
        let comment = rule
            .name
            .clone()
            .unwrap_or_else(|| format!("rule {}", i + 1));
        if let Some(rate) = rule.rate {
            let _ = writeln!(
                out,
                "    {m}limit rate over {}/second burst {} packets counter drop comment \"{comment} fw-rate-limit\"",
                rate.pps, rate.burst
            );
        }
        verdict(&mut out, &m, rule.proto, rule.action, &comment);
    }
    verdict(&mut out, "", Proto::Any, rules.default, "default");
    let _ = writeln!(out, "  }}\n}}");
    out
}

/// The rule's match, ending in a space (empty for a rule that matches everything).
fn matcher(rule: &Rule, ctx: &FunctionContext) -> String {
    let mut m = String::new();
    let side = match rule.from {
        Side::Ingress => &ctx.ingress_ifs,
        Side::Egress => &ctx.egress_ifs,
    };
    let _ = write!(
        m,
        "iifname {} ",
        set(side.iter().map(|i| format!("\"{i}\"")))
    );
    if !rule.src.is_empty() {
        let _ = write!(m, "ip saddr {} ", set(rule.src.iter().map(net)));
    }
    if !rule.dst.is_empty() {
        let _ = write!(m, "ip daddr {} ", set(rule.dst.iter().map(net)));
    }
    let l4 = match rule.proto {
        Proto::Any => None,
        Proto::Tcp => Some("tcp"),
        Proto::Udp => Some("udp"),
        Proto::Icmp => Some("icmp"),
    };
    if let Some(l4) = l4 {
        let _ = write!(m, "meta l4proto {l4} ");
        if !rule.sport.is_empty() {
            let _ = write!(m, "{l4} sport {} ", set(rule.sport.iter().map(ports)));
        }
        if !rule.dport.is_empty() {
            let _ = write!(m, "{l4} dport {} ", set(rule.dport.iter().map(ports)));
        }
    }
    if let Some(t) = rule.icmp_type {
        let _ = write!(m, "icmp type {t} ");
    }
    m
}

fn verdict(out: &mut String, m: &str, proto: Proto, action: Action, comment: &str) {
    let c = format!("comment \"{comment}\"");
    match action {
        Action::Accept => {
            let _ = writeln!(out, "    {m}counter accept {c}");
        }
        Action::Drop => {
            let _ = writeln!(out, "    {m}counter drop {c}");
        }
        Action::Reject => {
            if proto != Proto::Icmp && proto != Proto::Udp {
                let tcp = if proto == Proto::Tcp {
                    ""
                } else {
                    "meta l4proto tcp "
                };
                let _ = writeln!(out, "    {m}{tcp}counter reject with tcp reset {c}");
            }
            if proto != Proto::Tcp {
                let _ = writeln!(
                    out,
                    "    {m}counter reject with icmp type port-unreachable {c}"
                );
            }
        }
    }
}

fn net(n: &IpNet) -> String {
    n.to_string()
}

fn ports(r: &PortRange) -> String {
    if r.lo == r.hi {
        r.lo.to_string()
    } else {
        format!("{}-{}", r.lo, r.hi)
    }
}

fn set(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.len() == 1 {
        items.into_iter().next().unwrap_or_default()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}
