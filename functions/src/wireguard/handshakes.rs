//! Handshakes counted where both backends' packets pass: nftables counters in the function's
//! namespace on its listen port, by WireGuard message type (the first byte of the UDP payload: 1
//! is an initiation, 2 a response). An initiation received and never answered is a failed
//! handshake seen from this side (a peer with a key the endpoint does not know, or a wrong one;
//! which peer it was cannot be told: the sender's identity is encrypted), an initiation sent and
//! never answered one seen from the other. Per function, not per peer, for that reason.

use std::collections::BTreeMap;

use netfn_core::kernel::nft;

const TABLE: &str = "netfn_wireguard";

/// The counters' names, as the ruleset and [`Handshakes`] know them.
const COUNTERS: [&str; 4] = [
    "initiations_received",
    "responses_sent",
    "initiations_sent",
    "responses_received",
];

/// The ruleset for an endpoint listening on `port`: counters only, every packet accepted.
pub fn ruleset(port: u16) -> String {
    // @th,64,8: the first byte after the 8-byte UDP header; the message type is a
    // little-endian u32, so its first byte is the type.
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n\
         {counters}\
         \tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\
         \t\tudp dport {port} @th,64,8 1 counter name initiations_received\n\
         \t\tudp dport {port} @th,64,8 2 counter name responses_received\n\t}}\n\
         \tchain output {{\n\t\ttype filter hook output priority 0; policy accept;\n\
         \t\tudp sport {port} @th,64,8 1 counter name initiations_sent\n\
         \t\tudp sport {port} @th,64,8 2 counter name responses_sent\n\t}}\n}}\n",
        counters = COUNTERS
            .iter()
            .map(|c| format!("\tcounter {c} {{ }}\n"))
            .collect::<String>()
    )
}

/// Installs the counters in namespace `netns`.
pub fn install(netns: &str, port: u16) -> Result<(), String> {
    nft::load(netns, &ruleset(port)).map_err(|e| format!("count handshakes: {e}"))
}

/// Handshake messages through the endpoint since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Handshakes {
    pub initiations_received: u64,
    pub responses_sent: u64,
    pub initiations_sent: u64,
    pub responses_received: u64,
}

impl Handshakes {
    /// Initiations that got no response, either way.
    pub fn unanswered(&self) -> u64 {
        self.initiations_received
            .saturating_sub(self.responses_sent)
            + self
                .initiations_sent
                .saturating_sub(self.responses_received)
    }

    fn from_counters(c: &BTreeMap<String, (u64, u64)>) -> Self {
        let n = |name: &str| c.get(name).map_or(0, |&(packets, _)| packets);
        Handshakes {
            initiations_received: n(COUNTERS[0]),
            responses_sent: n(COUNTERS[1]),
            initiations_sent: n(COUNTERS[2]),
            responses_received: n(COUNTERS[3]),
        }
    }
}

/// The counts in namespace `netns`.
pub fn read(netns: &str) -> Result<Handshakes, String> {
    nft::counters(netns, "inet", TABLE)
        .map(|c| Handshakes::from_counters(&c))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_declared_and_counted() {
        let r = ruleset(51820);
        for c in COUNTERS {
            assert!(r.contains(&format!("counter {c} {{ }}")), "{c} declared");
            assert!(r.contains(&format!("counter name {c}\n")), "{c} counted");
        }
        assert!(r.contains("udp dport 51820 @th,64,8 1 counter name initiations_received"));
        assert!(r.contains("udp sport 51820 @th,64,8 2 counter name responses_sent"));
    }

    #[test]
    fn unanswered_initiations_either_way() {
        let h = Handshakes {
            initiations_received: 5,
            responses_sent: 1,
            initiations_sent: 2,
            responses_received: 2,
        };
        assert_eq!(h.unanswered(), 4);
        assert_eq!(Handshakes::default().unanswered(), 0);
    }
}
