//! What a device is told about its peers. A new device gets all of them; a running one (`netfn
//! apply`) only the peers that are new, gone or changed, so the untouched ones keep their
//! sessions (no new handshake); the namespace's routes to the peers' allowed IPs follow. The
//! changes are the same for both backends; [`super::device`] says them in the backend's words.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use ipnet::Ipv4Net;
use netfn_core::plan::names;

use super::config::{PeerConf, Userspace, WgSettings};
use super::device::Device;
use super::keys::PresharedKey;
use super::uapi::PeerState;
use super::{endpoint, keys, link};

/// One peer added, changed or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    Remove([u8; 32]),
    /// The peer as it must be (its allowed IPs replace the ones it had).
    Set(PeerSet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSet {
    pub public_key: [u8; 32],
    pub allowed_ips: Vec<Ipv4Net>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; 0 is off.
    pub keepalive: u16,
    /// `None` removes one the device had.
    pub preshared_key: Option<PresharedKey>,
}

/// Every peer of `settings` (a new device).
pub fn all(settings: &WgSettings) -> Result<Vec<PeerChange>, String> {
    settings.peers.iter().map(set).collect()
}

/// The changes that make a device with peers `running` have the peers of `settings`.
pub fn diff(running: &[PeerState], settings: &WgSettings) -> Result<Vec<PeerChange>, String> {
    let wanted: BTreeSet<&str> = settings
        .peers
        .iter()
        .map(|p| p.public_key.as_str())
        .collect();
    let mut out = Vec::new();
    for p in running {
        if !wanted.contains(p.public_key.as_str()) {
            let key =
                keys::decode(&p.public_key).map_err(|why| format!("a running peer's key {why}"))?;
            out.push(PeerChange::Remove(key));
        }
    }
    for p in &settings.peers {
        let wanted = set(p)?;
        let PeerChange::Set(w) = &wanted else {
            continue;
        };
        let now = running.iter().find(|r| r.public_key == p.public_key);
        let unchanged = now.is_some_and(|r| {
            let nets: BTreeSet<String> = w.allowed_ips.iter().map(|n| n.to_string()).collect();
            r.allowed_ips.iter().cloned().collect::<BTreeSet<_>>() == nets
                && r.keepalive == w.keepalive
                && (w.endpoint.is_none() || r.endpoint == w.endpoint)
                && r.preshared_key == w.preshared_key
        });
        if !unchanged {
            out.push(wanted);
        }
    }
    Ok(out)
}

/// What a device must be told to have peer `p` as the settings say.
pub fn set(p: &PeerConf) -> Result<PeerChange, String> {
    Ok(PeerChange::Set(PeerSet {
        public_key: keys::decode(&p.public_key).map_err(|why| format!("a peer's key {why}"))?,
        allowed_ips: p.allowed_ips.clone(),
        endpoint: p.endpoint,
        keepalive: p.persistent_keepalive.unwrap_or(0),
        preshared_key: p
            .preshared_key_file
            .as_deref()
            .map(keys::read_file)
            .transpose()?
            .and_then(PresharedKey::new),
    }))
}

/// Gives the running device of `function` in `chain` the peers of `settings`, in place, and the
/// batched device its receive moderation tick. The tick is said every time (a change of
/// nothing else costs the device nothing): the device then has the tick of the settings `apply`
/// records, whatever an earlier apply, failed or undone, left it with. GotaTun's device has
/// none.
pub fn update(chain: &str, function: &str, settings: &WgSettings) -> Result<(), String> {
    let device = Device::of(chain, function);
    let running = device.peers()?;
    let changes = diff(&running, settings)?;
    let tick = (settings.userspace == Userspace::Batched).then_some(settings.receive_moderation_us);
    if !changes.is_empty() || tick.is_some() {
        device.apply(&changes, tick)?;
    }
    // Routes: the new peers' nets to the tunnel, the gone ones' away.
    let netns = names::netns_name(chain, function);
    let name = endpoint::interface_name(chain, function);
    let old_nets: BTreeSet<String> = running
        .iter()
        .flat_map(|p| p.allowed_ips.iter().cloned())
        .collect();
    let new_nets: BTreeSet<String> = settings
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().map(|n| n.to_string()))
        .collect();
    for net in &new_nets {
        link::ip(Some(&netns), &["route", "replace", net, "dev", &name])?;
    }
    for net in old_nets.difference(&new_nets) {
        link::ip(Some(&netns), &["route", "del", net, "dev", &name])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(key: u8, nets: &[&str]) -> PeerConf {
        PeerConf {
            public_key: keys::encode(&[key; 32]),
            preshared_key_file: None,
            preshared_key_fingerprint: None,
            allowed_ips: nets.iter().map(|n| n.parse().unwrap()).collect(),
            endpoint: None,
            endpoint_name: None,
            persistent_keepalive: None,
        }
    }

    fn state(p: &PeerConf) -> PeerState {
        PeerState {
            public_key: p.public_key.clone(),
            allowed_ips: p.allowed_ips.iter().map(|n| n.to_string()).collect(),
            ..PeerState::default()
        }
    }

    fn settings(peers: Vec<PeerConf>) -> WgSettings {
        WgSettings {
            side: super::super::config::Side::Ingress,
            private_key_file: "/k".into(),
            private_key_fingerprint: String::new(),
            listen_port: 51820,
            address: vec![],
            mtu: 1420,
            backend: super::super::config::Backend::Auto,
            userspace: super::super::config::Userspace::Batched,
            receive_moderation_us: super::super::config::RECEIVE_MODERATION_US,
            peers,
            spans: Default::default(),
        }
    }

    #[test]
    fn only_new_gone_and_changed_peers_are_named() {
        let (a, b, c) = (
            peer(1, &["10.0.0.1/32"]),
            peer(2, &["10.0.0.2/32"]),
            peer(3, &["10.0.0.3/32"]),
        );
        let b2 = peer(2, &["10.0.0.2/32", "10.0.1.0/24"]);
        let running = [state(&a), state(&b)];
        let changes = diff(&running, &settings(vec![a.clone(), b2, c])).unwrap();
        let named: Vec<(bool, u8)> = changes
            .iter()
            .map(|c| match c {
                PeerChange::Remove(k) => (false, k[0]),
                PeerChange::Set(s) => (true, s.public_key[0]),
            })
            .collect();
        assert_eq!(
            named,
            [(true, 2), (true, 3)],
            "a untouched, b changed, c new"
        );
        let gone = diff(&running, &settings(vec![b.clone()])).unwrap();
        assert_eq!(gone, [PeerChange::Remove([1; 32])]);
        assert!(
            diff(&running, &settings(vec![a, peer(2, &["10.0.0.2/32"])]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_preshared_key_is_compared_not_sent_again() {
        let dir = std::env::temp_dir().join(format!("netfn-psk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.psk");
        std::fs::write(&file, keys::encode(&[5; 32])).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let mut a = peer(1, &["10.0.0.1/32"]);
        a.preshared_key_file = Some(file.clone());
        let mut running = state(&a);
        running.preshared_key = PresharedKey::new([5; 32]);
        assert!(
            diff(&[running.clone()], &settings(vec![a.clone()]))
                .unwrap()
                .is_empty()
        );
        // Another key, or none in the file any more: said again, with zeros for none.
        running.preshared_key = PresharedKey::new([6; 32]);
        assert_eq!(
            diff(&[running.clone()], &settings(vec![a])).unwrap().len(),
            1
        );
        running.preshared_key = PresharedKey::new([5; 32]);
        let changes = diff(&[running], &settings(vec![peer(1, &["10.0.0.1/32"])])).unwrap();
        assert!(matches!(&changes[..], [PeerChange::Set(s)] if s.preshared_key.is_none()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
