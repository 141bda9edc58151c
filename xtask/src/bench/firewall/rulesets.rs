//! The rule sets the firewall bench measures, written for each contender: netfn's firewall (a
//! rules file), nftables as a linear list, and nftables as an expert writes it (one set lookup
//! with a concatenated key). All three mean the same thing: `n` rules, the first accepting the
//! warm-up's ping-pong, then `n - 2` drop rules no bench packet matches, then (case `Last`) one
//! rule that accepts the measured traffic, or (case `None`) one more non-matching rule and a
//! default that accepts.

use std::fmt::Write as _;

use super::super::chain::{PING_PORT, PPS_PORT};

/// Which rule the measured traffic meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Case {
    /// The last rule accepts it (every rule before it is checked, and fails).
    Last,
    /// No rule matches it; the default accepts it.
    None,
}

impl Case {
    pub(super) fn name(self) -> &'static str {
        match self {
            Case::Last => "last",
            Case::None => "none",
        }
    }
}

/// The address of non-matching rule `i` (10.200.0.0/16 and up, never a bench address).
fn filler_addr(i: usize) -> String {
    format!(
        "10.{}.{}.{}",
        200 + (i >> 16) % 50,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

fn filler_port(i: usize) -> usize {
    1000 + i % 50_000
}

/// netfn's rules file (`[[rule]]` tables) for `n` rules.
pub(super) fn netfn_rules(n: usize, case: Case, src: &str) -> String {
    let mut s = String::with_capacity(n * 80);
    let _ = writeln!(
        s,
        "[[rule]]\nname = \"warm-up\"\nproto = \"udp\"\ndport = {PING_PORT}\naction = \"accept\"\n"
    );
    let fillers = n.saturating_sub(2);
    for i in 0..fillers {
        let _ = writeln!(
            s,
            "[[rule]]\nsrc = \"{}\"\nproto = \"udp\"\ndport = {}\naction = \"drop\"\n",
            filler_addr(i),
            filler_port(i)
        );
    }
    match case {
        Case::Last => {
            let _ = writeln!(
                s,
                "[[rule]]\nname = \"measured\"\nsrc = \"{src}\"\nproto = \"udp\"\ndport = {PPS_PORT}\naction = \"accept\"\n"
            );
        }
        Case::None => {
            let _ = writeln!(
                s,
                "[[rule]]\nsrc = \"{}\"\nproto = \"udp\"\ndport = {}\naction = \"drop\"\n",
                filler_addr(fillers),
                filler_port(fillers)
            );
        }
    }
    s
}

/// The default verdict of a case.
pub(super) fn default_action(case: Case) -> &'static str {
    match case {
        Case::Last => "drop",
        Case::None => "accept",
    }
}

/// nftables, a rule per rule, no connection tracking: every packet walks the list.
pub(super) fn nft_linear(n: usize, case: Case, src: &str) -> String {
    let mut s = String::with_capacity(n * 60);
    let _ = writeln!(
        s,
        "table inet bench\ndelete table inet bench\ntable inet bench {{\n  chain forward {{\n    type filter hook forward priority filter; policy {};",
        default_action(case)
    );
    // The warm-up's ping-pong both ways (no state: the echo needs its own rule).
    let _ = writeln!(s, "    udp dport {PING_PORT} accept");
    let _ = writeln!(s, "    udp sport {PING_PORT} accept");
    let fillers = n.saturating_sub(2);
    for i in 0..=fillers {
        if i == fillers && case == Case::Last {
            let _ = writeln!(s, "    ip saddr {src} udp dport {PPS_PORT} accept");
        } else {
            let _ = writeln!(
                s,
                "    ip saddr {} udp dport {} drop",
                filler_addr(i),
                filler_port(i)
            );
        }
    }
    s.push_str("  }\n}\n");
    s
}

/// nftables as an expert writes it: the drop rules as one set keyed by address . port (a hash
/// lookup whatever its size), then the accept rule; no connection tracking either.
pub(super) fn nft_expert(n: usize, case: Case, src: &str) -> String {
    let fillers = n.saturating_sub(2) + usize::from(case == Case::None);
    let mut s = String::with_capacity(n * 30);
    let _ = writeln!(
        s,
        "table inet bench\ndelete table inet bench\ntable inet bench {{\n  set drops {{\n    type ipv4_addr . inet_service\n    elements = {{"
    );
    for i in 0..fillers {
        let sep = if i + 1 == fillers { "" } else { "," };
        let _ = writeln!(s, "      {} . {}{sep}", filler_addr(i), filler_port(i));
    }
    let _ = writeln!(
        s,
        "    }}\n  }}\n  chain forward {{\n    type filter hook forward priority filter; policy {};",
        default_action(case)
    );
    let _ = writeln!(s, "    udp dport {PING_PORT} accept");
    let _ = writeln!(s, "    udp sport {PING_PORT} accept");
    let _ = writeln!(s, "    ip saddr . udp dport @drops drop");
    if case == Case::Last {
        let _ = writeln!(s, "    ip saddr {src} udp dport {PPS_PORT} accept");
    }
    s.push_str("  }\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_sets_have_n_rules_and_the_measured_one_last() {
        let netfn = netfn_rules(10, Case::Last, "10.82.1.2");
        assert_eq!(netfn.matches("[[rule]]").count(), 10);
        assert!(netfn.trim_end().ends_with("action = \"accept\""));
        let none = netfn_rules(10, Case::None, "10.82.1.2");
        assert_eq!(none.matches("[[rule]]").count(), 10);
        assert!(!none.contains("10.82.1.2"));
        let linear = nft_linear(10, Case::Last, "10.82.1.2");
        // n rules, and the echo of the warm-up's ping-pong.
        assert_eq!(
            linear.matches(" accept\n").count() + linear.matches(" drop\n").count(),
            11
        );
        let expert = nft_expert(1000, Case::None, "10.82.1.2");
        let elements = expert
            .lines()
            .filter(|l| l.trim_start().starts_with("10."))
            .count();
        assert_eq!(elements, 999);
        assert!(expert.contains("policy accept"));
    }
}
