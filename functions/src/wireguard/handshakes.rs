//! Handshakes counted where both backends' packets pass: nftables counters in the function's
//! namespace on its listen port, by WireGuard message type (the first byte of the UDP payload: 1
//! is an initiation, 2 a response). An initiation received and never answered is a failed
//! handshake seen from this side (a peer with a key the endpoint does not know, or a wrong one),
//! an initiation sent and never answered one seen from the other.
//!
//! Per function, and per remote endpoint (IPv4 address and port: dynamic sets with a counter
//! per element, at most [`ENDPOINTS_MAX`], each gone after [`ENDPOINT_IDLE_S`] without a
//! message), which tells the peer whose endpoint it is: the one configured, or learned from its
//! handshakes. Which peer sent an initiation cannot be told
//! otherwise (the sender's identity is encrypted), so one from an endpoint no peer has counts
//! for the function only.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use netfn_core::kernel::nft;

const TABLE: &str = "netfn_wireguard";

/// The counters' names, as the ruleset and [`Handshakes`] know them.
const COUNTERS: [&str; 4] = [
    "initiations_received",
    "responses_sent",
    "initiations_sent",
    "responses_received",
];

/// How many remote endpoints each per-endpoint set holds (beyond, the function's counters still
/// count).
pub const ENDPOINTS_MAX: u32 = 4096;
/// An endpoint with no handshake message for this long leaves its set (anyone can send an
/// initiation from any address: the sets must not fill up for good), and its counts with it.
pub const ENDPOINT_IDLE_S: u32 = 3600;

/// The per-endpoint set of counter `c`.
fn endpoint_set(c: &str) -> String {
    format!("{c}_by_endpoint")
}

/// The ruleset for an endpoint listening on `port`: counters only, every packet accepted.
pub fn ruleset(port: u16) -> String {
    // @th,64,8: the first byte after the 8-byte UDP header; the message type is a
    // little-endian u32, so its first byte is the type. The per-endpoint rules are apart: `ip
    // saddr` would make a rule IPv4 only, and the function's counters count every family.
    let rule = |dir: &str, kind: u8, c: &str| {
        let (port_field, remote) = if dir == "input" {
            ("dport", "ip saddr . udp sport")
        } else {
            ("sport", "ip daddr . udp dport")
        };
        format!(
            "\t\tudp {port_field} {port} @th,64,8 {kind} counter name {c}\n\
             \t\tudp {port_field} {port} @th,64,8 {kind} update @{set} {{ {remote} }}\n",
            set = endpoint_set(c)
        )
    };
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n\
         {counters}{sets}\
         \tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\
         {init_in}{resp_in}\t}}\n\
         \tchain output {{\n\t\ttype filter hook output priority 0; policy accept;\n\
         {init_out}{resp_out}\t}}\n}}\n",
        counters = COUNTERS
            .iter()
            .map(|c| format!("\tcounter {c} {{ }}\n"))
            .collect::<String>(),
        sets = COUNTERS
            .iter()
            .map(|c| {
                format!(
                    "\tset {} {{ type ipv4_addr . inet_service; flags dynamic,timeout; \
                     timeout {ENDPOINT_IDLE_S}s; counter; size {ENDPOINTS_MAX}; }}\n",
                    endpoint_set(c)
                )
            })
            .collect::<String>(),
        init_in = rule("input", 1, COUNTERS[0]),
        resp_in = rule("input", 2, COUNTERS[3]),
        init_out = rule("output", 1, COUNTERS[2]),
        resp_out = rule("output", 2, COUNTERS[1]),
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
    /// Initiations either way: handshake attempts.
    pub fn initiations(&self) -> u64 {
        self.initiations_received + self.initiations_sent
    }

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

/// The counts in namespace `netns` per remote endpoint; `None` from a ruleset of an older
/// netfn, which had no sets.
pub fn read_by_endpoint(netns: &str) -> Result<Option<BTreeMap<SocketAddr, Handshakes>>, String> {
    let mut out: BTreeMap<SocketAddr, Handshakes> = BTreeMap::new();
    for (i, c) in COUNTERS.iter().enumerate() {
        let Some(elements) =
            nft::set_elements(netns, "inet", TABLE, &endpoint_set(c)).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        for (endpoint, packets) in elements.iter().filter_map(endpoint_count) {
            let h = out.entry(endpoint).or_default();
            *match i {
                0 => &mut h.initiations_received,
                1 => &mut h.responses_sent,
                2 => &mut h.initiations_sent,
                _ => &mut h.responses_received,
            } += packets;
        }
    }
    Ok(Some(out))
}

/// One element of a per-endpoint set as `nft -j` prints it: `{"elem": {"val": {"concat":
/// ["10.0.0.1", 51820]}, "counter": {"packets": 3, …}}}`.
fn endpoint_count(element: &serde_json::Value) -> Option<(SocketAddr, u64)> {
    let elem = element.get("elem")?;
    let parts = elem.get("val")?.get("concat")?.as_array()?;
    let ip: std::net::Ipv4Addr = parts.first()?.as_str()?.parse().ok()?;
    let port = u16::try_from(parts.get(1)?.as_u64()?).ok()?;
    let packets = elem.get("counter")?.get("packets")?.as_u64()?;
    Some((SocketAddr::from((ip, port)), packets))
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
        assert!(r.contains(
            "udp dport 51820 @th,64,8 1 update @initiations_received_by_endpoint { ip saddr . \
             udp sport }"
        ));
        assert!(r.contains(
            "udp sport 51820 @th,64,8 1 update @initiations_sent_by_endpoint { ip daddr . udp \
             dport }"
        ));
    }

    #[test]
    fn an_endpoint_count_is_read_from_nft_json() {
        let element = serde_json::json!({"elem": {"val": {"concat": ["10.85.1.2", 51999]},
            "counter": {"packets": 3, "bytes": 444}}});
        assert_eq!(
            endpoint_count(&element),
            Some(("10.85.1.2:51999".parse().unwrap(), 3))
        );
        assert_eq!(
            endpoint_count(&serde_json::json!({"elem": {"val": 1}})),
            None
        );
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
