//! The backends' way back: for each backend `addr:port:proto`, the services (VIP and port) it
//! answers for, and its backend number in each, as the stage's reverse map holds them
//! (`NF_LB_REVERSE`). A backend's answer finds its flow's one connection-table entry by trying
//! these as the flow key's VIP side; a flow tracked under another numbering finds its backend's
//! number now by its backend and service.
//!
//! A settings change builds the map anew from the services, and carries over what the live
//! instance had for backends (and services) that left: their tracked flows go on until they end
//! (as the connection table promises), so their answers must still find them. A backend (or
//! service) this change removes is always carried, once; one that had left before is carried
//! again only while the connection table holds a flow of it ([`super::carry`]), so the carried
//! ways back are those of flows still running, not every backend ever removed. At most
//! [`CARRY_ROOM`] backends that left are carried, the ones this change removes first. Beyond
//! that, a backend that left has no entry, so the stage cannot tell its answers from any other
//! packet of the backend's side: they pass with the backend's address, uncounted (the client
//! resets them; no netfn counter shows them), and the apply warns with their number
//! ([`WaysBack::left_out`]). Within one
//! backend, the configured services come first and ones it left fill the rest of its
//! [`REVERSE_SERVICES`] slots, with no number ([`NO_BACKEND`]: their flows are counted under
//! no backend and checked by no health check).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use netfn_common::lb::{BackendKey, NO_BACKEND, REVERSE_SERVICES, Reverse, VipPort};

use super::carry::Carried;
use super::config::LbSettings;
use super::stage::{backend_key, numbered, vip_port};

/// Backends that left the settings whose way back a change keeps.
pub const CARRY_ROOM: u32 = 4096;

/// [`CARRY_ROOM`], or in debug builds `NETFN_LB_CARRY_ROOM` if set (so that a test reaches it
/// without thousands of backends; release builds read no such variable).
pub fn carry_room() -> u32 {
    #[cfg(debug_assertions)]
    if let Some(room) = std::env::var("NETFN_LB_CARRY_ROOM")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return room;
    }
    CARRY_ROOM
}

/// What [`entries`] gives.
pub struct WaysBack {
    /// The map's entries.
    pub entries: Vec<(BackendKey, Reverse)>,
    /// Backends that left, whose way back would have been carried but found no room: the
    /// answers of their flows still running will pass untranslated.
    pub left_out: usize,
}

/// The map's entries for `settings`, over what the live instance holds (`live`), at most
/// `capacity` of them (the configured backends always fit: the map is sized for them).
/// `still_needed`: of the services `live` carries with no number already (left at an earlier
/// change), those a flow may still need ([`super::carry::still_needed`]; `None`: all of them).
pub fn entries(
    settings: &LbSettings,
    live: &[(BackendKey, Reverse)],
    still_needed: Option<&HashSet<Carried>>,
    capacity: usize,
) -> WaysBack {
    // Per backend, its services and its number in each.
    let mut map: BTreeMap<Key, Vec<(VipPort, u32)>> = BTreeMap::new();
    for (number, service, b) in numbered(settings) {
        let to = vip_port(service);
        let services = map.entry(Key(backend_key(service, b))).or_default();
        // Validation refuses a backend listed twice in one service.
        if !services.iter().any(|(s, _)| *s == to) {
            services.push((to, number));
        }
    }
    let room = capacity.max(map.len());
    // In a deterministic order (the kernel's hash order is random per map).
    let mut live: Vec<&(BackendKey, Reverse)> = live.iter().collect();
    live.sort_by_key(|(key, _)| Key(*key));
    let mut left_out = BTreeSet::new();
    // First what this change removes (numbered in the live instance: its flows surely run),
    // then what left before and still has a flow.
    for left_now in [true, false] {
        for (key, reverse) in &live {
            let count = (reverse.count as usize).min(REVERSE_SERVICES);
            let mut kept = reverse.services[..count]
                .iter()
                .zip(&reverse.numbers[..count])
                .filter(|(s, number)| {
                    if left_now {
                        **number != NO_BACKEND
                    } else {
                        **number == NO_BACKEND
                            && still_needed.is_none_or(|needed| needed.contains(&(*key, **s)))
                    }
                })
                .map(|(s, _)| *s)
                .peekable();
            if kept.peek().is_none() {
                continue;
            }
            if !map.contains_key(&Key(*key)) && map.len() >= room {
                left_out.insert(Key(*key));
                continue;
            }
            let services = map.entry(Key(*key)).or_default();
            for s in kept {
                if services.len() < REVERSE_SERVICES && !services.iter().any(|(t, _)| *t == s) {
                    services.push((s, NO_BACKEND));
                }
            }
        }
    }
    let entries = map
        .into_iter()
        .map(|(Key(key), services)| {
            let mut r = Reverse::default();
            for ((slot, number), (s, n)) in r
                .services
                .iter_mut()
                .zip(r.numbers.iter_mut())
                .zip(&services)
            {
                *slot = *s;
                *number = *n;
            }
            r.count = services.len().min(REVERSE_SERVICES) as u32;
            (key, r)
        })
        .collect();
    WaysBack {
        entries,
        left_out: left_out.len(),
    }
}

/// Distinct backends `addr:port:proto` of `settings` (the map's size is this plus
/// [`CARRY_ROOM`]).
pub fn configured(settings: &LbSettings) -> usize {
    let keys: BTreeSet<Key> = numbered(settings)
        .map(|(_, service, b)| Key(backend_key(service, b)))
        .collect();
    keys.len()
}

/// [`BackendKey`] ordered (for a deterministic map).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key(BackendKey);

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let k = |k: &BackendKey| (k.family, k.addr, k.port, k.proto);
        k(&self.0).cmp(&k(&other.0))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::lb::config::{BackendConf, L4, LbConntrack, ServiceConf};

    /// A service of `backends` (`address`, `port`), each of weight 1.
    pub(in crate::lb) fn service(
        vip: [u8; 4],
        port: u16,
        proto: L4,
        backends: &[([u8; 4], u16)],
    ) -> ServiceConf {
        ServiceConf {
            vip: IpAddr::V4(Ipv4Addr::from(vip)),
            proto,
            port,
            backends: backends
                .iter()
                .map(|&(a, p)| BackendConf {
                    address: IpAddr::V4(Ipv4Addr::from(a)),
                    port: p,
                    weight: 1,
                })
                .collect(),
            health: None,
        }
    }

    pub(in crate::lb) fn settings(services: Vec<ServiceConf>) -> LbSettings {
        LbSettings {
            services,
            table_size: 7,
            conntrack: LbConntrack::default(),
            spans: Vec::new(),
        }
    }

    fn key(a: [u8; 4], port: u16, proto: L4) -> BackendKey {
        BackendKey {
            addr: [u32::from_ne_bytes(a), 0, 0, 0],
            port: port.to_be(),
            proto: proto.number(),
            family: 4,
        }
    }

    fn to(vip: [u8; 4], port: u16) -> VipPort {
        VipPort {
            vip: [u32::from_ne_bytes(vip), 0, 0, 0],
            port: port.to_be(),
            _pad: 0,
        }
    }

    /// [`entries`]' map entries.
    fn ways(
        s: &LbSettings,
        live: &[(BackendKey, Reverse)],
        needed: Option<&HashSet<Carried>>,
        capacity: usize,
    ) -> Vec<(BackendKey, Reverse)> {
        entries(s, live, needed, capacity).entries
    }

    /// The services of backend `k` in `entries`, each with the backend's number in it.
    fn services_of(entries: &[(BackendKey, Reverse)], k: BackendKey) -> Vec<(VipPort, u32)> {
        let (_, r) = entries
            .iter()
            .find(|(e, _)| *e == k)
            .unwrap_or_else(|| panic!("no entry for {k:?}"));
        let n = r.count as usize;
        r.services[..n]
            .iter()
            .copied()
            .zip(r.numbers[..n].iter().copied())
            .collect()
    }

    #[test]
    fn each_backend_answers_for_every_service_it_serves_with_its_number_in_each() {
        let s = settings(vec![
            service([192, 0, 2, 10], 80, L4::Tcp, &[([10, 2, 0, 1], 8080)]),
            service(
                [192, 0, 2, 10],
                81,
                L4::Tcp,
                &[([10, 2, 0, 1], 8080), ([10, 2, 0, 2], 8080)],
            ),
            // The same address and port over UDP is another backend.
            service([192, 0, 2, 11], 53, L4::Udp, &[([10, 2, 0, 1], 8080)]),
        ]);
        let e = ways(&s, &[], None, 100);
        assert_eq!(e.len(), 3);
        assert_eq!(configured(&s), 3);
        // Numbers run across the services: 80's backend is 0, 81's are 1 and 2, 53's is 3.
        assert_eq!(
            services_of(&e, key([10, 2, 0, 1], 8080, L4::Tcp)),
            vec![(to([192, 0, 2, 10], 80), 0), (to([192, 0, 2, 10], 81), 1)]
        );
        assert_eq!(
            services_of(&e, key([10, 2, 0, 2], 8080, L4::Tcp)),
            vec![(to([192, 0, 2, 10], 81), 2)]
        );
        assert_eq!(
            services_of(&e, key([10, 2, 0, 1], 8080, L4::Udp)),
            vec![(to([192, 0, 2, 11], 53), 3)]
        );
    }

    #[test]
    fn a_change_keeps_the_way_back_of_backends_and_services_that_left() {
        let before = settings(vec![service(
            [192, 0, 2, 10],
            80,
            L4::Tcp,
            &[([10, 2, 0, 1], 8080), ([10, 2, 0, 2], 8080)],
        )]);
        let live = ways(&before, &[], None, 100);
        // Backend 2 leaves; backend 1 moves to another service.
        let after = settings(vec![service(
            [192, 0, 2, 20],
            80,
            L4::Tcp,
            &[([10, 2, 0, 1], 8080)],
        )]);
        let e = ways(&after, &live, None, 100);
        assert_eq!(
            services_of(&e, key([10, 2, 0, 1], 8080, L4::Tcp)),
            vec![
                (to([192, 0, 2, 20], 80), 0),
                (to([192, 0, 2, 10], 80), NO_BACKEND)
            ],
            "the configured service first, the one it left after, with no number"
        );
        assert_eq!(
            services_of(&e, key([10, 2, 0, 2], 8080, L4::Tcp)),
            vec![(to([192, 0, 2, 10], 80), NO_BACKEND)]
        );
        // Applying the same settings again changes nothing.
        assert_eq!(ways(&after, &e, None, 100), e);
    }

    #[test]
    fn a_backend_that_left_before_is_carried_again_only_while_a_flow_needs_it() {
        let (a, b, c, d) = ([10, 2, 0, 1], [10, 2, 0, 2], [10, 2, 0, 3], [10, 2, 0, 4]);
        let web = to([192, 0, 2, 10], 80);
        let dns = to([192, 0, 2, 10], 53);
        let web_of = |backends: &[([u8; 4], u16)]| service([192, 0, 2, 10], 80, L4::Tcp, backends);
        // Backends b and c left at an earlier change (carried, unnumbered); d serves dns and
        // left web before; a is configured.
        let v1 = settings(vec![
            web_of(&[(a, 80), (b, 80), (c, 80), (d, 80)]),
            service([192, 0, 2, 10], 53, L4::Tcp, &[(d, 80)]),
        ]);
        let v2 = settings(vec![
            web_of(&[(a, 80)]),
            service([192, 0, 2, 10], 53, L4::Tcp, &[(d, 80)]),
        ]);
        let live = ways(&v2, &ways(&v1, &[], None, 100), None, 100);
        assert_eq!(
            services_of(&live, key(d, 80, L4::Tcp)),
            vec![(dns, 1), (web, NO_BACKEND)]
        );
        let carried = super::super::carry::carried(&live);
        assert_eq!(carried.len(), 3, "b, c and d's web: {carried:?}");
        // Only c has a flow left (of web); and a leaves now (a change that removes it).
        let needed = HashSet::from([(key(c, 80, L4::Tcp), web)]);
        let v3 = settings(vec![service([192, 0, 2, 10], 53, L4::Tcp, &[(d, 80)])]);
        let e = ways(&v3, &live, Some(&needed), 100);
        let keys: Vec<BackendKey> = e.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            vec![
                key(a, 80, L4::Tcp),
                key(c, 80, L4::Tcp),
                key(d, 80, L4::Tcp)
            ],
            "a (removed now) and c (a flow) carried, b (no flow) gone"
        );
        assert_eq!(
            services_of(&e, key(a, 80, L4::Tcp)),
            vec![(web, NO_BACKEND)]
        );
        assert_eq!(
            services_of(&e, key(c, 80, L4::Tcp)),
            vec![(web, NO_BACKEND)]
        );
        assert_eq!(
            services_of(&e, key(d, 80, L4::Tcp)),
            vec![(dns, 0)],
            "d's web, without a flow, goes; its configured service stays"
        );
        // Unknown (the table could not be read): everything is carried, as before.
        assert_eq!(ways(&v3, &live, None, 100).len(), 4);
        // No room for all: the backend this change removes first, then ones with flows.
        let tight = ways(&v3, &live, None, 2);
        let keys: Vec<BackendKey> = tight.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![key(a, 80, L4::Tcp), key(d, 80, L4::Tcp)]);
        assert_eq!(
            entries(&v3, &live, None, 2).left_out,
            2,
            "b and c found no room (told at the apply)"
        );
        assert_eq!(entries(&v3, &live, None, 100).left_out, 0);
        // Once a's flows are gone too, the next change carries only what still runs.
        let after = ways(&v3, &e, Some(&HashSet::new()), 100);
        assert_eq!(after.len(), 1, "{after:?}");
    }

    #[test]
    fn carried_backends_stop_at_the_capacity_and_services_at_the_slots() {
        let live: Vec<(BackendKey, Reverse)> = (0..10u8)
            .map(|i| {
                let mut r = Reverse {
                    count: REVERSE_SERVICES as u32,
                    ..Reverse::default()
                };
                for (j, s) in r.services.iter_mut().enumerate() {
                    *s = to([192, 0, 2, 100 + j as u8], 80);
                }
                (key([10, 2, 1, i], 8080, L4::Tcp), r)
            })
            .collect();
        let s = settings(vec![service(
            [192, 0, 2, 10],
            80,
            L4::Tcp,
            &[([10, 2, 1, 0], 8080), ([10, 2, 0, 9], 8080)],
        )]);
        let e = ways(&s, &live, None, 5);
        assert_eq!(e.len(), 5, "capacity 5: the 2 configured and 3 carried");
        assert_eq!(
            entries(&s, &live, None, 5).left_out,
            6,
            "10.2.1.4 to 10.2.1.9"
        );
        let first = services_of(&e, key([10, 2, 1, 0], 8080, L4::Tcp));
        assert_eq!(first.len(), REVERSE_SERVICES);
        assert_eq!(first[0], (to([192, 0, 2, 10], 80), 0), "configured first");
        assert!(
            first[1..].iter().all(|&(_, n)| n == NO_BACKEND),
            "{first:?}"
        );
        // A capacity below the configured count still keeps every configured backend.
        assert_eq!(ways(&s, &live, None, 0).len(), 2);
    }

    #[test]
    fn removing_a_backend_gives_the_ones_after_it_their_new_numbers() {
        let (a, b, c) = ([10, 2, 0, 10], [10, 2, 0, 11], [10, 2, 0, 12]);
        let web = |backends: &[([u8; 4], u16)]| service([192, 0, 2, 10], 80, L4::Tcp, backends);
        let dns = |backends: &[([u8; 4], u16)]| service([192, 0, 2, 10], 53, L4::Udp, backends);
        let before = settings(vec![
            web(&[(a, 8080), (b, 8080), (c, 8080)]),
            dns(&[(a, 53), (c, 53)]),
        ]);
        let live = ways(&before, &[], None, 100);
        assert_eq!(
            services_of(&live, key(b, 8080, L4::Tcp)),
            vec![(to([192, 0, 2, 10], 80), 1)]
        );
        assert_eq!(
            services_of(&live, key(c, 53, L4::Udp)),
            vec![(to([192, 0, 2, 10], 53), 4)]
        );
        // The first backend leaves the first service: every number after it moves down one,
        // the second service's too; the backend that left keeps its way back, unnumbered.
        let after = settings(vec![web(&[(b, 8080), (c, 8080)]), dns(&[(a, 53), (c, 53)])]);
        let e = ways(&after, &live, None, 100);
        let web_vip = to([192, 0, 2, 10], 80);
        assert_eq!(services_of(&e, key(b, 8080, L4::Tcp)), vec![(web_vip, 0)]);
        assert_eq!(services_of(&e, key(c, 8080, L4::Tcp)), vec![(web_vip, 1)]);
        assert_eq!(
            services_of(&e, key(a, 8080, L4::Tcp)),
            vec![(web_vip, NO_BACKEND)]
        );
        let dns_vip = to([192, 0, 2, 10], 53);
        assert_eq!(services_of(&e, key(a, 53, L4::Udp)), vec![(dns_vip, 2)]);
        assert_eq!(services_of(&e, key(c, 53, L4::Udp)), vec![(dns_vip, 3)]);
        // The numbers are the stage's: the backend list the same settings number.
        let listed: Vec<(u32, String)> = numbered(&after)
            .map(|(n, s, b)| (n, format!("{} {}", s.label(), b.id())))
            .collect();
        assert_eq!(listed[1], (1, "192.0.2.10:80/tcp 10.2.0.12:8080".into()));
        assert_eq!(listed[3], (3, "192.0.2.10:53/udp 10.2.0.12:53".into()));
    }
}
