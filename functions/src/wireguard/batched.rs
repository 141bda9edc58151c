//! PROBE (not for merge as it is): a batched WireGuard device on GotaTun's `noise::Tunn`, to
//! measure what GotaTun's per-packet device pipeline costs (its tasks and channels between the
//! socket, the crypto and the TUN, a device lock and a peer lock per packet). Two tasks, each a
//! whole direction: a received batch is decrypted and written to the TUN coalesced, a read batch
//! is encrypted and sent with GSO, each peer locked once per run of its packets. Handshakes,
//! cookies, timers and roaming as GotaTun's device does them; no UAPI, no control socket, no
//! peer changes. Selected with NETFN_WG_BATCHED=1.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt as _;
use gotatun::noise::handshake::parse_handshake_anon;
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::{Tunn, TunnResult};
use gotatun::packet::{Packet, PacketBufPool, WgKind};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use gotatun::udp::{UdpRecv, UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use gotatun::x25519::{PublicKey, StaticSecret};
use ipnet::Ipv4Net;

use super::tun_io::{TunRecv, TunSend};
use super::udp_io::{GsoSend, UdpFactory};

/// Handshakes per second before cookies (GotaTun's device default).
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// Datagrams taken from the socket before they are decrypted, at most.
const DRAIN: usize = 512;

pub struct PeerSpec {
    pub key: PublicKey,
    pub preshared: Option<[u8; 32]>,
    pub keepalive: Option<u16>,
    pub endpoint: Option<SocketAddr>,
    pub allowed: Vec<Ipv4Net>,
}

struct PeerSlot {
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
}

struct Shared {
    private: StaticSecret,
    public: PublicKey,
    peers: Vec<Mutex<PeerSlot>>,
    by_key: HashMap<[u8; 32], usize>,
    by_idx: Mutex<HashMap<u32, usize>>,
    /// (network, peer), longest prefix first.
    routes: Vec<(Ipv4Net, usize)>,
    rate_limiter: Arc<RateLimiter>,
    index_table: IndexTable,
}

fn lock(m: &Mutex<PeerSlot>) -> MutexGuard<'_, PeerSlot> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn peer_for(&self, addr: IpAddr) -> Option<usize> {
        let IpAddr::V4(v4) = addr else { return None };
        self.routes
            .iter()
            .find(|(net, _)| net.contains(&v4))
            .map(|(_, p)| *p)
    }

    fn register(&self, packet: &WgKind, peer: usize) {
        let idx = match packet {
            WgKind::HandshakeInit(p) => p.sender_idx.get(),
            WgKind::HandshakeResp(p) => p.sender_idx.get(),
            _ => return,
        };
        if let Ok(mut m) = self.by_idx.lock() {
            m.insert(idx, peer);
        }
    }

    fn by_index(&self, idx: u32) -> Option<usize> {
        self.by_idx.lock().ok()?.get(&idx).copied()
    }
}

/// The running probe device: its tasks end when dropped.
pub struct Batched {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
    udp: GsoSend,
}

impl Drop for Batched {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Batched {
    pub async fn start(
        mut factory: UdpFactory,
        tun_tx: TunSend,
        tun_rx: TunRecv,
        private: StaticSecret,
        port: u16,
        specs: Vec<PeerSpec>,
    ) -> std::io::Result<Self> {
        let public = PublicKey::from(&private);
        let rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        let index_table = IndexTable::from_os_rng();
        let mut peers = Vec::new();
        let mut by_key = HashMap::new();
        let mut routes = Vec::new();
        for (i, s) in specs.into_iter().enumerate() {
            let tunn = Tunn::new(
                private.clone(),
                s.key,
                s.preshared,
                s.keepalive,
                index_table.clone(),
                rate_limiter.clone(),
            );
            by_key.insert(*s.key.as_bytes(), i);
            routes.extend(s.allowed.iter().map(|n| (*n, i)));
            peers.push(Mutex::new(PeerSlot {
                tunn,
                endpoint: s.endpoint,
            }));
        }
        routes.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        let shared = Arc::new(Shared {
            private,
            public,
            peers,
            by_key,
            by_idx: Mutex::new(HashMap::new()),
            routes,
            rate_limiter,
            index_table,
        });
        let params = UdpTransportFactoryParams {
            addr: None,
            port,
            fwmark: None,
        };
        let (udp_tx, udp_rx) = factory.bind(&params).await?;
        let mtu = tun_rx.mtu();
        let tasks = vec![
            tokio::spawn(incoming(shared.clone(), udp_rx, udp_tx.clone(), tun_tx)),
            tokio::spawn(outgoing(shared.clone(), tun_rx, udp_tx.clone(), mtu)),
            tokio::spawn(timers(shared.clone(), udp_tx.clone())),
        ];
        Ok(Batched {
            tasks,
            shared,
            udp: udp_tx,
        })
    }

    /// Starts a handshake with every peer whose endpoint is known.
    pub async fn handshake_all(&self) {
        let mut out = Vec::new();
        for (i, p) in self.shared.peers.iter().enumerate() {
            let mut p = lock(p);
            let Some(to) = p.endpoint else { continue };
            if let Some(init) = p.tunn.format_handshake_initiation(false) {
                let kind: WgKind = init.into();
                self.shared.register(&kind, i);
                out.push((Packet::from(kind), to));
            }
        }
        for (packet, to) in out {
            let _ = self.udp.send_to(packet, to).await;
        }
    }

    /// Whether every peer with a known endpoint has a session.
    pub fn all_up(&self) -> bool {
        self.shared.peers.iter().all(|p| {
            let p = lock(p);
            p.endpoint.is_none() || p.tunn.time_since_last_handshake().is_some()
        })
    }
}

/// Socket -> decrypt -> TUN, a received batch at a time.
async fn incoming(
    shared: Arc<Shared>,
    mut udp_rx: gotatun::udp::socket::UdpSocket,
    udp_tx: GsoSend,
    mut tun_tx: TunSend,
) {
    let mut pool = PacketBufPool::new(4096);
    let mut recv_buf = Default::default();
    let mut received: Vec<(Packet, SocketAddr)> = Vec::with_capacity(128);
    let mut replies: Vec<(Packet, SocketAddr)> = Vec::new();
    let mut send_buf = Default::default();
    let mut mtu = MtuWatcher::new(1420);
    let mut to_tun = Vec::with_capacity(128);
    loop {
        if let Err(e) = udp_rx
            .recv_many_from(&mut recv_buf, &mut pool, &mut received)
            .await
        {
            tracing::error!("probe: UDP receive: {e}");
            return;
        }
        // Whatever else is already queued, without waiting: one decrypt pass and one TUN hand-over
        // per burst, not per receive call.
        while received.len() < DRAIN {
            let before = received.len();
            match udp_rx
                .recv_many_from(&mut recv_buf, &mut pool, &mut received)
                .now_or_never()
            {
                Some(Ok(())) if received.len() > before => {}
                _ => break,
            }
        }
        {
            // The peer locked for the run of packets it sent.
            let mut held: Option<(usize, MutexGuard<'_, PeerSlot>)> = None;
            for (datagram, from) in received.drain(..) {
                let kind = match shared.rate_limiter.verify_packet(from, datagram) {
                    Ok(kind) => kind,
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        replies.push((cookie.into(), from));
                        continue;
                    }
                    Err(_) => continue,
                };
                let peer = match &kind {
                    WgKind::HandshakeInit(p) => {
                        parse_handshake_anon(&shared.private, &shared.public, p)
                            .ok()
                            .and_then(|h| shared.by_key.get(&h.peer_static_public).copied())
                    }
                    WgKind::HandshakeResp(p) => shared.by_index(p.receiver_idx.get()),
                    WgKind::CookieReply(p) => shared.by_index(p.receiver_idx.get()),
                    WgKind::Data(p) => shared.by_index(p.header.receiver_idx.get()),
                };
                let Some(peer) = peer else { continue };
                if held.as_ref().is_none_or(|(i, _)| *i != peer) {
                    held.take();
                    held = Some((peer, lock(&shared.peers[peer])));
                }
                let Some((_, slot)) = held.as_mut() else {
                    continue;
                };
                match slot.tunn.handle_incoming_packet(kind) {
                    TunnResult::Done | TunnResult::Err(_) => {}
                    TunnResult::WriteToNetwork(packet) => {
                        slot.endpoint = Some(from);
                        shared.register(&packet, peer);
                        replies.push((packet.into(), from));
                        for queued in slot.tunn.get_queued_packets(&mut mtu) {
                            replies.push((queued.into(), from));
                        }
                    }
                    TunnResult::WriteToTunnel(packet) => {
                        slot.endpoint = Some(from);
                        if packet.is_empty() {
                            continue;
                        }
                        // Cut to the IP length (the sender padded it to 16 bytes): a padded packet
                        // is never coalesced on the TUN.
                        let Ok(ip) = packet.try_into_ipvx() else {
                            continue;
                        };
                        let (source, ip): (IpAddr, Packet<gotatun::packet::Ip>) = ip.either(
                            |v4| (v4.header.source().into(), v4.into()),
                            |v6| (v6.header.source().into(), v6.into()),
                        );
                        let allowed = shared.peer_for(source).is_some_and(|owner| owner == peer);
                        if allowed {
                            to_tun.push(ip);
                        }
                    }
                }
            }
        }
        for ip in to_tun.drain(..) {
            if tun_tx.send(ip).await.is_err() {
                return;
            }
        }
        if !replies.is_empty() {
            let _ = udp_tx.send_many_to(&mut send_buf, &mut replies).await;
        }
    }
}

/// TUN -> encrypt -> socket, a read batch at a time.
async fn outgoing(shared: Arc<Shared>, mut tun_rx: TunRecv, udp_tx: GsoSend, mut mtu: MtuWatcher) {
    let mut pool = PacketBufPool::new(4096);
    let mut out: Vec<(Packet, SocketAddr)> = Vec::with_capacity(256);
    let mut send_buf = Default::default();
    loop {
        let packets = match tun_rx.recv(&mut pool).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("probe: TUN read: {e}");
                return;
            }
        };
        {
            let mut held: Option<(usize, MutexGuard<'_, PeerSlot>)> = None;
            for packet in packets {
                let Some(peer) = packet.destination().and_then(|d| shared.peer_for(d)) else {
                    continue;
                };
                if held.as_ref().is_none_or(|(i, _)| *i != peer) {
                    held.take();
                    held = Some((peer, lock(&shared.peers[peer])));
                }
                let Some((_, slot)) = held.as_mut() else {
                    continue;
                };
                let Some(to) = slot.endpoint else { continue };
                let Some(wire) = slot
                    .tunn
                    .handle_outgoing_packet(packet.into(), Some(&mut mtu))
                else {
                    continue;
                };
                shared.register(&wire, peer);
                out.push((wire.into(), to));
            }
        }
        if !out.is_empty() {
            let _ = udp_tx.send_many_to(&mut send_buf, &mut out).await;
            out.clear();
        }
    }
}

/// Every peer's timers, four times a second (as GotaTun's device).
async fn timers(shared: Arc<Shared>, udp_tx: GsoSend) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if let Ok(mut m) = shared.by_idx.lock() {
            m.retain(|idx, _| shared.index_table.in_use(*idx));
        }
        shared.rate_limiter.try_reset_count();
        let mut out = Vec::new();
        for (i, p) in shared.peers.iter().enumerate() {
            let mut p = lock(p);
            let Some(to) = p.endpoint else { continue };
            if let Ok(Some(packet)) = p.tunn.update_timers() {
                shared.register(&packet, i);
                out.push((Packet::from(packet), to));
            }
        }
        for (packet, to) in out {
            let _ = udp_tx.send_to(packet, to).await;
        }
    }
}
