//! A peer's endpoint written as `NAME:PORT`: the addresses the name stands for, as the chain
//! file's checks ([`super::config`]) and the agent's task ([`super::reresolve`]) take them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use netfn_core::function::{HostNames, NameAnswer, is_temporary};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A peer's endpoint as written, `NAME:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedEndpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for NamedEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why a name gives no endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("names are not looked up here")]
    NotLookedUp,
    /// Taken for its form alone, on purpose (`netfn validate --no-lookup`): no address yet.
    #[error("the name was not looked up (--no-lookup)")]
    Skipped,
    #[error("the name does not resolve ({0})")]
    Unresolved(String),
    /// The resolver could not answer now (no DNS server did): the name may well exist.
    #[error("the name could not be looked up now ({0})")]
    Unavailable(String),
    #[error("{host} resolves to {first}, {why}")]
    Unusable {
        host: String,
        first: Ipv4Addr,
        why: &'static str,
    },
    #[error("{host} resolves to IPv6 addresses only ({first}): not yet")]
    Ipv6Only { host: String, first: IpAddr },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
}

impl NameError {
    /// What to do about it.
    pub fn hint(&self) -> String {
        let literal = "or write the peer's IPv4 address, e.g. \"192.0.2.7:51820\"";
        match self {
            NameError::NotLookedUp => format!(
                "netfn looks names up when it reads the chain file (validate, up, apply); \
                 {literal}"
            ),
            NameError::Skipped => {
                "`netfn validate` without --no-lookup looks the name up".to_string()
            }
            NameError::Unresolved(_) => format!(
                "check the name and this host's resolver (/etc/hosts, /etc/resolv.conf), \
                 {literal}"
            ),
            NameError::Unavailable(_) => "a new peer starts without an endpoint (it can still \
                 reach netfn), a running one keeps its own; the host agent, where one runs, \
                 looks the name up again every 15 s until the peer has a session, and so does \
                 the next `netfn apply`. Check this host's DNS (/etc/resolv.conf)"
                .to_string(),
            NameError::Unusable { .. } => {
                format!("give the name the address the peer is reached at, {literal}")
            }
            NameError::Ipv6Only { .. } => {
                format!("chains are IPv4 today: give the name an IPv4 (A) record, {literal}")
            }
            NameError::NoAddress { .. } => {
                format!("check the name and this host's resolver, {literal}")
            }
        }
    }
}

/// The peer's endpoint `host` stands for at `port`: the lowest of [`resolve`]'s, a stable
/// choice when a name has several addresses, which a DNS server may hand out in turns (`wg`
/// takes the first answer, whichever that is).
pub fn lowest(host: &str, port: u16, names: &HostNames) -> Result<SocketAddr, NameError> {
    resolve(host, port, names)?
        .first()
        .copied()
        .ok_or_else(|| NameError::NoAddress { host: host.into() })
}

/// The endpoints `host` stands for at `port`: the IPv4 addresses among the answers of `names`
/// that a host can have, lowest first, never empty.
pub fn resolve(host: &str, port: u16, names: &HostNames) -> Result<Vec<SocketAddr>, NameError> {
    let found = match names.lookup(host) {
        NameAnswer::Found(found) => found,
        NameAnswer::Failed(why) if is_temporary(&why) => return Err(NameError::Unavailable(why)),
        NameAnswer::Failed(why) => return Err(NameError::Unresolved(why)),
        NameAnswer::Skipped => return Err(NameError::Skipped),
        NameAnswer::Refused => return Err(NameError::NotLookedUp),
    };
    let v4: Vec<Ipv4Addr> = found
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
        .collect();
    let mut usable: Vec<Ipv4Addr> = v4
        .iter()
        .copied()
        .filter(|a| crate::address::unusable(*a).is_none())
        .collect();
    usable.sort_unstable();
    usable.dedup();
    if !usable.is_empty() {
        return Ok(usable
            .into_iter()
            .map(|a| SocketAddr::V4(SocketAddrV4::new(a, port)))
            .collect());
    }
    let host = host.to_string();
    Err(match (v4.first(), found.first()) {
        (Some(&first), _) => NameError::Unusable {
            host,
            first,
            why: crate::address::unusable(first).unwrap_or("not an address a peer can have"),
        },
        (None, Some(&first)) => NameError::Ipv6Only { host, first },
        (None, None) => NameError::NoAddress { host },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usable_ipv4_answers_lowest_first() {
        let names = HostNames::from_fn(|host| match host {
            "turns.test" => Ok(vec![
                [10, 9, 0, 8].into(),
                "fd00::1".parse().unwrap(),
                [127, 0, 1, 1].into(),
                [10, 9, 0, 7].into(),
                [10, 9, 0, 8].into(),
            ]),
            "loop.test" => Ok(vec!["fd00::1".parse().unwrap(), [127, 0, 1, 1].into()]),
            "six.test" => Ok(vec!["fd00::8".parse().unwrap()]),
            "none.test" => Ok(vec![]),
            "down.test" => Err("Temporary failure in name resolution".into()),
            _ => Err("Name or service not known".into()),
        });
        let at = |a: &str| -> SocketAddr { a.parse().unwrap() };
        assert_eq!(
            resolve("turns.test", 7, &names),
            Ok(vec![at("10.9.0.7:7"), at("10.9.0.8:7")])
        );
        assert_eq!(lowest("turns.test", 7, &names), Ok(at("10.9.0.7:7")));
        assert_eq!(
            resolve("loop.test", 7, &names).map_err(|e| e.to_string()),
            Err("loop.test resolves to 127.0.1.1, a loopback address (127.0.0.0/8)".into())
        );
        assert_eq!(
            resolve("six.test", 7, &names).map_err(|e| e.to_string()),
            Err("six.test resolves to IPv6 addresses only (fd00::8): not yet".into())
        );
        assert_eq!(
            resolve("none.test", 7, &names),
            Err(NameError::NoAddress {
                host: "none.test".into()
            })
        );
        assert_eq!(
            resolve("gone.test", 7, &names),
            Err(NameError::Unresolved("Name or service not known".into()))
        );
        assert_eq!(
            resolve("down.test", 7, &names),
            Err(NameError::Unavailable(
                "Temporary failure in name resolution".into()
            ))
        );
        assert_eq!(
            resolve("turns.test", 7, &HostNames::unresolved()),
            Err(NameError::NotLookedUp)
        );
        assert_eq!(
            resolve("turns.test", 7, &HostNames::form_only()),
            Err(NameError::Skipped)
        );
    }
}
