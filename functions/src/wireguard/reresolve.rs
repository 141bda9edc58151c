//! The agent's task `reresolve` for an endpoint whose peers' endpoints are host names: what
//! WireGuard's `reresolve-dns.sh` does from cron, built in. Every [`EVERY`], a named peer
//! without a session (no handshake in the last 180 s, or none yet) has its name looked up
//! again; when the name now stands for another address than the one the device sends to, the
//! device is moved there, in place (its other settings as recorded). A peer with a session is
//! left alone: it is where its handshakes say (it may have roamed), and a name looked up then
//! would only pull it back. The record keeps the address the name had when the chain file was
//! read; the next `netfn apply` looks the name up itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use netfn_core::chain::state::{self, ChainLock};
use netfn_core::function::{HostNames, KindTask, TaskContext, TaskRun};
use netfn_core::plan::HopRole;

use super::config::{self, PeerConf, WgSettings};
use super::device::Device;
use super::peers;
use super::uapi::PeerState;

/// How often named peers without a session are looked up again.
pub const EVERY: Duration = Duration::from_secs(15);

/// The task, if any peer's endpoint was written as a name.
pub fn task(ctx: &TaskContext, settings: &WgSettings) -> Option<KindTask> {
    if !settings.peers.iter().any(|p| p.endpoint_host.is_some()) {
        return None;
    }
    let (chain, function) = (ctx.chain.clone(), ctx.function.clone());
    Some(KindTask {
        name: "reresolve".into(),
        start: Arc::new(move || -> TaskRun {
            let (chain, function) = (chain.clone(), function.clone());
            Box::pin(async move {
                // What was last said of each name, so a failing one is logged when it changes.
                let mut said = BTreeMap::new();
                loop {
                    let (c, f) = (chain.clone(), function.clone());
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

/// One look at the named peers of `function`; `said` holds what was last logged per name.
fn round(chain: &str, function: &str, names: &HostNames, said: &mut BTreeMap<String, String>) {
    let device = Device::of(chain, function);
    // An endpoint being restarted answers nothing for a moment: the next round looks again.
    let Ok(running) = device.peers() else {
        return;
    };
    let Some(settings) = recorded(chain, function) else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut moves = Vec::new();
    for (peer, host, port) in named(&settings) {
        let Some(state) = running.iter().find(|r| r.public_key == peer.public_key) else {
            continue;
        };
        match moved(state, host, port, names, now) {
            Ok(None) => {
                said.remove(host);
            }
            Ok(Some(to)) => moves.push((peer, host, state.endpoint, to)),
            Err(why) => {
                if said.get(host) != Some(&why) {
                    tracing::warn!("function {function}: peer endpoint {why}");
                    said.insert(host.to_string(), why);
                }
            }
        }
    }
    if moves.is_empty() {
        return;
    }
    // A CLI changing the chain holds its lock: its settings win, and the next round looks
    // again. Under the lock, the peers are the record's as of now.
    let Ok(Some(_lock)) = ChainLock::try_existing(chain) else {
        return;
    };
    let Some(now_recorded) = recorded(chain, function) else {
        return;
    };
    for (peer, host, from, to) in moves {
        if !now_recorded.peers.contains(peer) {
            continue;
        }
        let moved = PeerConf {
            endpoint: Some(to),
            ..peer.clone()
        };
        let applied = peers::set(&moved).and_then(|change| device.apply(&[change], None));
        let from = from.map_or_else(|| "none".to_string(), |a| a.to_string());
        match applied {
            Ok(()) => {
                tracing::info!(
                    "function {function}: peer endpoint {host} now resolves to {to}: moved \
                     there from {from}"
                );
                said.remove(host);
            }
            Err(why) => tracing::warn!(
                "function {function}: peer endpoint {host} now resolves to {to}, but the device \
                 was not moved there: {why}"
            ),
        }
    }
}

/// The peers of `settings` whose endpoint was written as a name, with the name and the port.
fn named(settings: &WgSettings) -> impl Iterator<Item = (&PeerConf, &str, u16)> {
    settings.peers.iter().filter_map(|p| {
        let host = p.endpoint_host.as_deref()?;
        Some((p, host, p.endpoint?.port()))
    })
}

/// Where a peer without a session at Unix time `now` must be sent now, if not where the device
/// sends: `Ok(None)` when it has a session or the name still stands for its endpoint; `Err`
/// when the name does not resolve to an address it can have.
fn moved(
    state: &PeerState,
    host: &str,
    port: u16,
    names: &HostNames,
    now: u64,
) -> Result<Option<SocketAddr>, String> {
    if state.session_fresh(now) {
        return Ok(None);
    }
    let to = config::named_endpoint(host, port, names).map_err(|(message, _)| {
        message
            .strip_prefix("endpoint ")
            .unwrap_or(&message)
            .to_string()
    })?;
    Ok((state.endpoint != Some(to)).then_some(to))
}

/// The recorded settings of `function` in `chain`, if it is a recorded WireGuard function.
fn recorded(chain: &str, function: &str) -> Option<WgSettings> {
    let record = state::load(chain).ok()??;
    record.plan.hops.iter().find_map(|hop| match &hop.role {
        HopRole::Function { settings, .. } if hop.name == function => settings.parse().ok(),
        _ => None,
    })
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
    fn only_a_peer_without_a_session_is_moved_to_where_its_name_now_points() {
        let names = HostNames::from_fn(|host| match host {
            "site.test" => Ok(vec![IpAddr::from([10, 9, 0, 2])]),
            "loop.test" => Ok(vec![IpAddr::from([127, 0, 0, 1])]),
            _ => Err("Name or service not known".into()),
        });
        let now = 1_000_000;
        let to: SocketAddr = "10.9.0.2:51820".parse().unwrap();
        // No handshake yet, or a stale one: moved, unless already there.
        for ago in [None, Some(181), Some(3600)] {
            let peer = state("10.9.0.1:51820", ago, now);
            assert_eq!(moved(&peer, "site.test", 51820, &names, now), Ok(Some(to)));
            let there = state("10.9.0.2:51820", ago, now);
            assert_eq!(moved(&there, "site.test", 51820, &names, now), Ok(None));
        }
        // A session (the peer may have roamed): left alone, and the name is not looked up.
        let roamed = state("192.0.2.9:4000", Some(30), now);
        assert_eq!(moved(&roamed, "gone.test", 51820, &names, now), Ok(None));
        // What the name does not give is said, without the key word of the chain file.
        let stale = state("10.9.0.1:51820", None, now);
        let why = moved(&stale, "gone.test", 51820, &names, now).unwrap_err();
        assert!(
            why.starts_with("`gone.test:51820`: the name does not resolve"),
            "{why}"
        );
        let why = moved(&stale, "loop.test", 51820, &names, now).unwrap_err();
        assert!(
            why.contains("loop.test resolves to 127.0.0.1, a loopback address"),
            "{why}"
        );
    }
}
