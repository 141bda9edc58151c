//! The batched device's peers: a table the data tasks take once per batch (an `Arc`, cloned
//! under a read lock held for no longer than the clone) and that a change replaces whole. A peer
//! is shared between the old table and the new one, so a peer changed in place keeps its session
//! (its `Tunn`), as in the kernel's WireGuard; only a new peer gets a new one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use gotatun::noise::Tunn;
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::x25519::{PublicKey, StaticSecret};
use ipnet::Ipv4Net;

use super::super::dataplane::PeerSpec;
use super::super::peers::PeerChange;
use super::routes::Routes;

/// One peer: its key, and its session and settings under a lock taken once per run of its
/// packets.
pub struct Peer {
    pub key: [u8; 32],
    slot: Mutex<PeerSlot>,
}

pub struct PeerSlot {
    pub tunn: Tunn,
    /// Where its packets go: configured, or where it was last heard from.
    pub endpoint: Option<SocketAddr>,
    pub allowed: Vec<Ipv4Net>,
}

impl Peer {
    /// The peer's slot. parking_lot's lock is eventually fair: a thread that waits for it more
    /// than about half a millisecond gets it at the next unlock. With std's, the main thread
    /// (`wg show`, `apply`'s changes, the handshakes at start) lost the race for a busy peer's
    /// lock to the data task that had just dropped it, again and again: on one CPU under load
    /// (Debian 6.1 under TCG, two VMs on two CPUs) a restarted endpoint's start handshake waited
    /// 10 s for it.
    pub fn lock(&self) -> MutexGuard<'_, PeerSlot> {
        self.slot.lock()
    }
}

/// What a new peer's session is made with.
pub struct Keys {
    pub private: StaticSecret,
    pub rate_limiter: Arc<RateLimiter>,
    pub index_table: IndexTable,
}

impl Keys {
    fn peer(&self, spec: PeerSpec) -> Arc<Peer> {
        let tunn = Tunn::new(
            self.private.clone(),
            spec.key,
            spec.preshared,
            spec.keepalive,
            self.index_table.clone(),
            self.rate_limiter.clone(),
        );
        Arc::new(Peer {
            key: *spec.key.as_bytes(),
            slot: Mutex::new(PeerSlot {
                tunn,
                endpoint: spec.endpoint,
                allowed: spec.allowed,
            }),
        })
    }
}

/// The peers, in the order they were added, found by key and by the addresses they carry.
#[derive(Default)]
pub struct Table {
    pub peers: Vec<Arc<Peer>>,
    by_key: HashMap<[u8; 32], usize>,
    /// The peers' allowed IPs to their index in `peers`.
    routes: Routes,
}

impl Table {
    pub fn new(keys: &Keys, specs: Vec<PeerSpec>) -> Self {
        Self::of(specs.into_iter().map(|s| keys.peer(s)).collect())
    }

    fn of(peers: Vec<Arc<Peer>>) -> Self {
        let mut by_key = HashMap::new();
        let mut nets = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            by_key.insert(p.key, i);
            nets.extend(p.lock().allowed.iter().map(|n| (*n, i)));
        }
        Table {
            peers,
            by_key,
            routes: Routes::new(nets),
        }
    }

    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Peer> {
        self.by_key.get(key).map(|i| &*self.peers[*i])
    }

    /// The peer whose allowed IPs hold `addr` (the longest prefix that does).
    pub fn peer_for(&self, addr: IpAddr) -> Option<&Peer> {
        let IpAddr::V4(v4) = addr else { return None };
        self.routes.lookup(v4).map(|i| &*self.peers[i])
    }

    /// The table with `changes` made: a peer removed, a peer there changed in place (its
    /// session stays; an endpoint not given keeps the one it has), a new one added. A network
    /// given to a peer is taken from any other that had it (as the kernel's WireGuard does).
    pub fn changed(&self, keys: &Keys, changes: Vec<PeerChange>) -> Self {
        let mut peers = self.peers.clone();
        for change in changes {
            match change {
                PeerChange::Remove(key) => peers.retain(|p| p.key != key),
                PeerChange::Set(set) => {
                    for other in peers.iter().filter(|p| p.key != set.public_key) {
                        other
                            .lock()
                            .allowed
                            .retain(|n| !set.allowed_ips.contains(n));
                    }
                    let keepalive = (set.keepalive != 0).then_some(set.keepalive);
                    let preshared = set.preshared_key.as_ref().map(|k| *k.bytes());
                    match peers.iter().find(|p| p.key == set.public_key) {
                        Some(p) => {
                            let mut slot = p.lock();
                            slot.allowed = set.allowed_ips;
                            // A peer given its first endpoint had its timers stopped (see
                            // `timers`): its tunnel starts afresh, its clock now, so that its
                            // keepalive (if any) starts a handshake there at once rather than
                            // a stale clock expiring the tunnel (REJECT_AFTER_TIME × 3).
                            if let Some(to) = set.endpoint {
                                if slot.endpoint.is_none()
                                    && slot.tunn.time_since_last_handshake().is_none()
                                {
                                    slot.tunn.reset();
                                }
                                slot.endpoint = Some(to);
                            }
                            if slot.tunn.persistent_keepalive() != keepalive {
                                slot.tunn.set_persistent_keepalive(keepalive);
                            }
                            if slot.tunn.preshared_key() != preshared {
                                slot.tunn.set_preshared_key(preshared);
                            }
                        }
                        None => peers.push(keys.peer(PeerSpec {
                            key: PublicKey::from(set.public_key),
                            preshared,
                            keepalive,
                            endpoint: set.endpoint,
                            allowed: set.allowed_ips,
                        })),
                    }
                }
            }
        }
        Self::of(peers)
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::peers::PeerSet;
    use super::*;

    fn keys() -> Keys {
        let private = StaticSecret::from([1; 32]);
        Keys {
            rate_limiter: Arc::new(RateLimiter::new(&PublicKey::from(&private), 10)),
            private,
            index_table: IndexTable::from_os_rng(),
        }
    }

    fn set(key: u8, nets: &[&str]) -> PeerChange {
        PeerChange::Set(PeerSet {
            public_key: *PublicKey::from(&StaticSecret::from([key; 32])).as_bytes(),
            allowed_ips: nets.iter().map(|n| n.parse().unwrap()).collect(),
            endpoint: None,
            keepalive: 0,
            preshared_key: None,
        })
    }

    #[test]
    fn a_changed_peer_is_the_same_peer_and_routes_follow() {
        let keys = keys();
        let t = Table::default().changed(&keys, vec![set(2, &["10.0.0.0/24"]), set(3, &[])]);
        let first = Arc::as_ptr(&t.peers[0]);
        let t = t.changed(
            &keys,
            vec![set(2, &["10.1.0.0/16"]), set(3, &["10.0.0.0/24"])],
        );
        assert_eq!(Arc::as_ptr(&t.peers[0]), first, "changed in place");
        let at = |a: &str| t.peer_for(a.parse().unwrap()).map(|p| p.key);
        assert_eq!(at("10.1.2.3"), Some(t.peers[0].key));
        assert_eq!(at("10.0.0.9"), Some(t.peers[1].key));
        let PeerChange::Set(gone) = set(2, &[]) else {
            unreachable!()
        };
        let t = t.changed(&keys, vec![PeerChange::Remove(gone.public_key)]);
        assert_eq!(t.peers.len(), 1);
        assert!(t.by_key(&gone.public_key).is_none());
        assert_eq!(t.peer_for("10.1.2.3".parse().unwrap()).map(|p| p.key), None);
    }

    #[test]
    fn a_network_given_to_another_peer_leaves_the_first() {
        let keys = keys();
        let t = Table::default().changed(&keys, vec![set(2, &["10.0.0.0/24"])]);
        let t = t.changed(&keys, vec![set(3, &["10.0.0.0/24"])]);
        assert!(t.peers[0].lock().allowed.is_empty());
        assert_eq!(
            t.peer_for("10.0.0.1".parse().unwrap()).map(|p| p.key),
            Some(t.peers[1].key)
        );
    }
}
