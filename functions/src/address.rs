//! Checks of addresses that the kinds share.

use std::net::Ipv4Addr;

/// Why packets sent to `a` cannot reach a host: it is in 0.0.0.0/8 ("this network"), loopback,
/// multicast, reserved (240.0.0.0/4) or the broadcast address. `None` for an address a host can
/// have.
pub fn unusable(a: Ipv4Addr) -> Option<&'static str> {
    match a.octets()[0] {
        0 => Some("in 0.0.0.0/8 (\"this network\")"),
        127 => Some("a loopback address (127.0.0.0/8)"),
        224..=239 => Some("a multicast address (224.0.0.0/4)"),
        _ if a.is_broadcast() => Some("the broadcast address"),
        240.. => Some("a reserved address (240.0.0.0/4)"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::unusable;

    #[test]
    fn only_addresses_a_host_can_have_are_usable() {
        for ok in [
            "1.0.0.0",
            "10.2.0.10",
            "126.255.255.255",
            "128.0.0.1",
            "223.255.255.255",
        ] {
            assert_eq!(unusable(ok.parse().unwrap()), None, "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "0.255.1.2",
            "127.0.0.1",
            "224.0.0.5",
            "239.1.1.1",
            "240.0.0.1",
        ] {
            assert!(unusable(bad.parse().unwrap()).is_some(), "{bad}");
        }
        assert_eq!(
            unusable("255.255.255.255".parse().unwrap()),
            Some("the broadcast address")
        );
    }
}
