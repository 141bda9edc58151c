//! The agent's task `reresolve` for an endpoint whose peers' endpoints are host names: what
//! WireGuard's `reresolve-dns.sh` does from cron, built in. Every [`EVERY`], a named peer
//! without a session (no handshake in the last 180 s, or none yet) has its name looked up
//! again; when the device sends to none of the addresses the name now stands for, it is moved
//! to the lowest of them, in place. The move says only the endpoint anew: the peer's allowed
//! IPs, keepalive and preshared key are given back as the device has them, so no key file is
//! read. A peer with a session is left alone: it is where its handshakes say (it may have
//! roamed), and a name looked up then would only pull it back. The record keeps the address
//! the name had when the chain file was read; the next `netfn apply` looks the name up itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use netfn_core::chain::function_record;
use netfn_core::chain::state::ChainLock;
use netfn_core::function::{HostNames, KindTask, TaskContext, TaskRun};
use netfn_core::unix_time;

use super::config::{PeerConf, WgSettings};
use super::device::Device;
use super::keys;
use super::named_endpoint::{self, NameError, NamedEndpoint};
use super::peers::{PeerChange, PeerSet};
use super::uapi::PeerState;

/// How often named peers without a session are looked up again.
pub const EVERY: Duration = Duration::from_secs(15);

/// What was last logged of each named peer (by public key), so that a failure is logged once
/// when it starts or changes, not every round.
type Said = BTreeMap<String, String>;

/// The task, if any peer's endpoint was written as a name.
pub fn task(ctx: &TaskContext, settings: &WgSettings) -> Option<KindTask> {
    if !settings.peers.iter().any(|p| p.endpoint_name.is_some()) {
        return None;
    }
    let (chain, function) = (ctx.chain.clone(), ctx.function.clone());
    Some(KindTask {
        name: "reresolve".into(),
        start: Arc::new(move || -> TaskRun {
            let (chain, function) = (chain.clone(), function.clone());
            Box::pin(async move {
                let mut said = Said::new();
                loop {
                    let (c, f) = (chain.clone(), function.clone());
                    // Asked once a round (no waiting out a resolver's temporary failure: the
                    // next round asks again), so that a stopping agent waits for one lookup.
                    said = tokio::task::spawn_blocking(move || {
                        let mut said = said;
                        round(&c, &f, &HostNames::system(), &mut said);
                        said
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    tokio::time::sleep(EVERY).await;
                }
            })
        }),
    })
}

/// One look at the named peers of `function`.
fn round(chain: &str, function: &str, names: &HostNames, said: &mut Said) {
    let Ok((_, settings)) = function_record::load::<WgSettings>(chain, function) else {
        return;
    };
    // An endpoint being restarted answers nothing for a moment: the next round looks again.
    let Ok(running) = Device::of(chain, function).peers() else {
        return;
    };
    let who_of = |state: &PeerState| format!("function {function}: peer {}…", state.label());
    let mut moves = Vec::new();
    for (peer, name) in named(&settings) {
        let Some(state) = running.iter().find(|r| r.public_key == peer.public_key) else {
            continue;
        };
        let who = who_of(state);
        match look(state, name, names, unix_time::now()) {
            Ok(Look::Session) => {
                said.remove(&peer.public_key);
            }
            Ok(Look::There) => {
                if said.remove(&peer.public_key).is_some() {
                    tracing::info!("{who}: endpoint {name} resolves again, to where it is");
                }
            }
            Ok(Look::Away(found)) => moves.push((peer, name, found)),
            Err(e) => {
                let stays = state.endpoint.map_or_else(
                    || "without an endpoint".to_string(),
                    |at| format!("at {at}"),
                );
                say(
                    said,
                    peer,
                    format!(
                        "{who}: endpoint `{name}`: {e}; it stays {stays}, and the name is \
                         looked up again every {} s",
                        EVERY.as_secs()
                    ),
                );
            }
        }
    }
    if moves.is_empty() {
        return;
    }
    // A CLI changing the chain holds its lock: its settings win, and the next round looks
    // again. Under the lock, the record, the device and its peers are as of now, and a peer
    // that got a session or reached one of its name's addresses meanwhile stays.
    let Ok(Some(_lock)) = ChainLock::try_existing(chain) else {
        return;
    };
    let Ok((_, now_recorded)) = function_record::load::<WgSettings>(chain, function) else {
        return;
    };
    let device = Device::of(chain, function);
    let Ok(running) = device.peers() else {
        return;
    };
    let now = unix_time::now();
    for (peer, name, found) in moves {
        let Some(state) = running.iter().find(|r| r.public_key == peer.public_key) else {
            continue;
        };
        let Some(&to) = found.first() else {
            continue;
        };
        if !now_recorded.peers.contains(peer)
            || state.session_fresh(now)
            || state.endpoint.is_some_and(|at| found.contains(&at))
        {
            continue;
        }
        let who = who_of(state);
        let from = state
            .endpoint
            .map_or_else(|| "none".into(), |a| a.to_string());
        match endpoint_only(state, to).and_then(|change| device.apply(&[change], None)) {
            Ok(()) => {
                tracing::info!(
                    "{who}: endpoint {name} now resolves to {to}: moved there from {from}"
                );
                said.remove(&peer.public_key);
            }
            Err(why) => say(
                said,
                peer,
                format!(
                    "{who}: endpoint {name} now resolves to {to}, but the device was not moved \
                     there: {why}"
                ),
            ),
        }
    }
}

/// Logs `message` for `peer` unless it was the last thing said of it.
fn say(said: &mut Said, peer: &PeerConf, message: String) {
    if said.get(&peer.public_key) != Some(&message) {
        tracing::warn!("{message}");
        said.insert(peer.public_key.clone(), message);
    }
}

/// The peers of `settings` whose endpoint was written as a name, with the name.
fn named(settings: &WgSettings) -> impl Iterator<Item = (&PeerConf, &NamedEndpoint)> {
    settings
        .peers
        .iter()
        .filter_map(|p| Some((p, p.endpoint_name.as_ref()?)))
}

/// What a look at a named peer found.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    /// It has a session (no lookup made): where its handshakes put it.
    Session,
    /// At one of the addresses its name stands for.
    There,
    /// Elsewhere (or nowhere): the name's addresses, lowest first, to move it to the first.
    Away(Vec<SocketAddr>),
}

/// Looks at a peer in `state` at Unix time `now`, whose endpoint was written as `name`.
fn look(
    state: &PeerState,
    name: &NamedEndpoint,
    names: &HostNames,
    now: u64,
) -> Result<Look, NameError> {
    if state.session_fresh(now) {
        return Ok(Look::Session);
    }
    let found = named_endpoint::resolve(&name.host, name.port, names)?;
    if state.endpoint.is_some_and(|at| found.contains(&at)) {
        return Ok(Look::There);
    }
    Ok(Look::Away(found))
}

/// The peer of `state`, as the device has it, at endpoint `to`.
fn endpoint_only(state: &PeerState, to: SocketAddr) -> Result<PeerChange, String> {
    let allowed_ips = state
        .allowed_ips
        .iter()
        .map(|net| {
            net.parse()
                .map_err(|_| format!("the device's allowed IP `{net}` is not an IPv4 prefix"))
        })
        .collect::<Result<_, _>>()?;
    Ok(PeerChange::Set(PeerSet {
        public_key: keys::decode(&state.public_key)
            .map_err(|why| format!("the device's peer key {why}"))?,
        allowed_ips,
        endpoint: Some(to),
        keepalive: state.keepalive,
        preshared_key: state.preshared_key,
    }))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn state(endpoint: &str, handshake_ago: Option<u64>, now: u64) -> PeerState {
        PeerState {
            endpoint: endpoint.parse().ok(),
            last_handshake_unix: handshake_ago.map_or(0, |ago| now - ago),
            ..PeerState::default()
        }
    }

    #[test]
    fn only_a_peer_without_a_session_and_away_from_its_names_addresses_is_moved() {
        let names = HostNames::from_fn(|host| match host {
            "site.test" => Ok(vec![IpAddr::from([10, 9, 0, 2])]),
            // Two addresses, in the order of the moment (a DNS server may turn them).
            "turns.test" => Ok(vec![
                IpAddr::from([10, 9, 0, 4]),
                IpAddr::from([10, 9, 0, 3]),
            ]),
            "loop.test" => Ok(vec![IpAddr::from([127, 0, 0, 1])]),
            _ => Err("Name or service not known".into()),
        });
        let now = 1_000_000;
        let at = |a: &str| -> SocketAddr { a.parse().unwrap() };
        let name = |host: &str| NamedEndpoint {
            host: host.into(),
            port: 51820,
        };
        let site = || Ok(Look::Away(vec![at("10.9.0.2:51820")]));
        // No handshake yet, or a stale one: moved, unless already there.
        for ago in [None, Some(181), Some(3600)] {
            let peer = state("10.9.0.1:51820", ago, now);
            assert_eq!(look(&peer, &name("site.test"), &names, now), site());
            let there = state("10.9.0.2:51820", ago, now);
            assert_eq!(
                look(&there, &name("site.test"), &names, now),
                Ok(Look::There)
            );
        }
        // None yet (the resolver could not answer when the file was read): moved.
        let nowhere = state("", None, now);
        assert_eq!(look(&nowhere, &name("site.test"), &names, now), site());
        // At any of a name's addresses, it stays; elsewhere, it goes to the lowest.
        let higher = state("10.9.0.4:51820", None, now);
        assert_eq!(
            look(&higher, &name("turns.test"), &names, now),
            Ok(Look::There)
        );
        let away = state("10.9.0.9:51820", None, now);
        assert_eq!(
            look(&away, &name("turns.test"), &names, now),
            Ok(Look::Away(vec![at("10.9.0.3:51820"), at("10.9.0.4:51820")]))
        );
        // The same address at another port is not where the name says.
        let other_port = state("10.9.0.2:4000", None, now);
        assert_eq!(look(&other_port, &name("site.test"), &names, now), site());
        // A session (the peer may have roamed): left alone, and the name is not looked up.
        let roamed = state("192.0.2.9:4000", Some(30), now);
        assert_eq!(
            look(&roamed, &name("gone.test"), &names, now),
            Ok(Look::Session)
        );
        let stale = state("10.9.0.1:51820", None, now);
        assert!(matches!(
            look(&stale, &name("gone.test"), &names, now),
            Err(NameError::Unresolved(_))
        ));
        assert!(matches!(
            look(&stale, &name("loop.test"), &names, now),
            Err(NameError::Unusable { .. })
        ));
    }

    #[test]
    fn a_move_gives_back_what_the_device_has_but_the_endpoint() {
        let key = keys::encode(&[7; 32]);
        let psk = keys::PresharedKey::new([9; 32]);
        let state = PeerState {
            public_key: key,
            endpoint: "10.9.0.1:51820".parse().ok(),
            allowed_ips: vec!["10.99.0.2/32".into(), "10.98.0.0/24".into()],
            keepalive: 25,
            preshared_key: psk,
            ..PeerState::default()
        };
        let to: SocketAddr = "10.9.0.2:51820".parse().unwrap();
        let PeerChange::Set(set) = endpoint_only(&state, to).unwrap() else {
            panic!("not a Set");
        };
        assert_eq!(set.public_key, [7; 32]);
        assert_eq!(set.endpoint, Some(to));
        assert_eq!(set.keepalive, 25);
        assert_eq!(set.preshared_key, psk);
        assert_eq!(
            set.allowed_ips,
            vec![
                "10.99.0.2/32".parse().unwrap(),
                "10.98.0.0/24".parse().unwrap()
            ]
        );
        let odd = PeerState {
            allowed_ips: vec!["fd00::/64".into()],
            ..state
        };
        assert!(endpoint_only(&odd, to).is_err());
    }

    #[test]
    fn a_failure_is_said_once_until_it_changes() {
        let peer = PeerConf {
            public_key: keys::encode(&[7; 32]),
            preshared_key_file: None,
            preshared_key_fingerprint: None,
            allowed_ips: vec![],
            endpoint: None,
            endpoint_name: None,
            persistent_keepalive: None,
        };
        let mut said = Said::new();
        say(&mut said, &peer, "a".into());
        assert_eq!(said.get(&peer.public_key), Some(&"a".to_string()));
        say(&mut said, &peer, "a".into());
        say(&mut said, &peer, "b".into());
        assert_eq!(said.get(&peer.public_key), Some(&"b".to_string()));
    }
}
