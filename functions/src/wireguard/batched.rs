//! netfn's batched WireGuard device on GotaTun's protocol (`noise::Tunn`), the userspace data
//! plane's default (`userspace = "batched"`). Two tasks, each a whole direction: a received batch
//! (GRO, then whatever else the socket holds, up to [`DRAIN`]; while datagrams come a
//! batch to a tick, what queued in a tick: [`moderation`]) is decrypted and written to the TUN
//! coalesced; a read batch (a GSO read split) is encrypted and sent with GSO. A peer is
//! locked once per run of its packets, and a run of packets of one session, or to or from one
//! address, is looked up once. GotaTun's own device ([`super::gotatun_device`]) runs a task
//! and a channel per stage with a device lock and a peer lock per packet: on 2-CPU VMs this
//! device carried 1.36-1.5x its TCP with 28-35 % less CPU per gigabit (`cargo xtask bench vpn
//! --also-gotatun`). Handshakes, cookies, timers and roaming as GotaTun's device does them. Its
//! peers ([`table`]) change at run time over the UAPI socket and netfn's control socket
//! ([`requests`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gotatun::noise::handshake::parse_handshake_anon;
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::{Tunn, TunnResult};
use gotatun::packet::{Packet, PacketBufPool, WgKind};
use gotatun::tun::{IpRecv, MtuWatcher};
use gotatun::udp::{UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use gotatun::x25519::{PublicKey, StaticSecret};
use parking_lot::{Mutex, MutexGuard, RwLock};
use tokio::task::JoinHandle;

use super::dataplane::PeerSpec;
use super::peers::PeerChange;
use super::tun_io::{TunRecv, TunWriter};
use super::udp_io::{GsoSend, UdpFactory};
use super::udp_recv::GroRecv;

pub(super) mod moderation;
mod requests;
mod routes;
pub mod run;
mod table;

use moderation::{Moderation, Tick};
pub use requests::serve;
use table::{Keys, Peer, PeerSlot, Table};

/// Handshakes per second before cookies (GotaTun's device default).
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// Datagrams taken from the socket before they are decrypted, at most.
const DRAIN: usize = 512;

struct Shared {
    keys: Keys,
    public: PublicKey,
    port: u16,
    table: RwLock<Arc<Table>>,
    /// A session index (ours, in a peer's packets) -> the peer's key.
    by_idx: Mutex<HashMap<u32, [u8; 32]>>,
    /// Batches the outgoing direction has sent: while it sends, the incoming one does not wait
    /// for ticks (see [`Moderation::wait_due`]).
    sent: AtomicU64,
    /// The incoming direction's receive moderation tick.
    tick: Tick,
}

impl Shared {
    /// The peers now: taken once per batch.
    fn table(&self) -> Arc<Table> {
        self.table.read().clone()
    }

    fn register(&self, packet: &WgKind, peer: &Peer) {
        let idx = match packet {
            WgKind::HandshakeInit(p) => p.sender_idx.get(),
            WgKind::HandshakeResp(p) => p.sender_idx.get(),
            _ => return,
        };
        self.by_idx.lock().insert(idx, peer.key);
    }

    fn by_index<'t>(&self, table: &'t Table, idx: u32) -> Option<&'t Peer> {
        let key = *self.by_idx.lock().get(&idx)?;
        table.by_key(&key)
    }
}

/// The peer locked for a run of packets of its own: locked again only when the next packet is
/// another peer's.
fn hold<'t, 'h>(
    held: &'h mut Option<(&'t Peer, MutexGuard<'t, PeerSlot>)>,
    peer: &'t Peer,
) -> &'h mut PeerSlot {
    if held.as_ref().is_none_or(|(p, _)| !std::ptr::eq(*p, peer)) {
        held.take();
    }
    &mut held.get_or_insert_with(|| (peer, peer.lock())).1
}

/// What `find` gives for `key`, looked up again only when `key` is not the last one's (a run of
/// packets of one session, or to or from one address, is looked up once).
fn last_lookup<K: PartialEq + Copy, V: Copy>(
    last: &mut Option<(K, V)>,
    key: K,
    find: impl FnOnce() -> V,
) -> V {
    match *last {
        Some((k, v)) if k == key => v,
        _ => last.insert((key, find())).1,
    }
}

/// The running device: its tasks end when dropped.
pub struct Batched {
    /// Socket -> TUN and TUN -> socket: the device is dead when either ends.
    data: Vec<JoinHandle<()>>,
    timers: JoinHandle<()>,
    shared: Arc<Shared>,
    udp: GsoSend,
}

impl Drop for Batched {
    fn drop(&mut self) {
        for t in &self.data {
            t.abort();
        }
        self.timers.abort();
    }
}

impl Batched {
    /// Starts the device's tasks on the runtime; `moderation` is the incoming direction's
    /// receive tick (zero: woken for every datagram).
    pub async fn start(
        mut factory: UdpFactory,
        tun_tx: TunWriter,
        tun_rx: TunRecv,
        private: StaticSecret,
        port: u16,
        specs: Vec<PeerSpec>,
        moderation: Duration,
    ) -> std::io::Result<Self> {
        let public = PublicKey::from(&private);
        let keys = Keys {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            private,
            index_table: IndexTable::from_os_rng(),
        };
        let table = Table::new(&keys, specs);
        let params = UdpTransportFactoryParams {
            addr: None,
            port,
            fwmark: None,
        };
        let (udp_tx, udp_rx) = factory.bind(&params).await?;
        // The port bound (the one asked for, or the kernel's pick for 0).
        let port = UdpSend::local_addr(&udp_tx)
            .ok()
            .flatten()
            .map_or(port, |a| a.port());
        let shared = Arc::new(Shared {
            keys,
            public,
            port,
            table: RwLock::new(Arc::new(table)),
            by_idx: Mutex::new(HashMap::new()),
            sent: AtomicU64::new(0),
            tick: Tick::new(moderation),
        });
        let mtu = tun_rx.mtu();
        let data = vec![
            tokio::spawn(incoming(
                shared.clone(),
                GroRecv::new(udp_rx),
                udp_tx.clone(),
                tun_tx,
            )),
            tokio::spawn(outgoing(shared.clone(), tun_rx, udp_tx.clone(), mtu)),
        ];
        let timers = tokio::spawn(timers(shared.clone(), udp_tx.clone()));
        Ok(Batched {
            data,
            timers,
            shared,
            udp: udp_tx,
        })
    }

    /// Starts a handshake with every peer whose endpoint is known, sending from the calling
    /// thread (see [`GsoSend::send_now`]).
    pub fn handshake_all(&self) {
        let mut out = Vec::new();
        for p in &self.shared.table().peers {
            let mut slot = p.lock();
            let Some(to) = slot.endpoint else { continue };
            if let Some(init) = slot.tunn.format_handshake_initiation(false) {
                let kind: WgKind = init.into();
                self.shared.register(&kind, p);
                out.push((Packet::from(kind), to));
            }
        }
        for (packet, to) in out {
            if let Err(e) = self.udp.send_now(&packet, to) {
                // The timers send it again.
                tracing::debug!("a handshake initiation to {to}: {e}");
            }
        }
    }

    /// Whether every peer with a known endpoint has a session.
    pub fn all_up(&self) -> bool {
        self.shared.table().peers.iter().all(|p| {
            let slot = p.lock();
            slot.endpoint.is_none() || slot.tunn.time_since_last_handshake().is_some()
        })
    }

    /// Ends when a data task ends: its TUN device or its UDP socket failed (logged).
    pub async fn wait(&mut self) {
        if self.data.is_empty() {
            return std::future::pending().await;
        }
        let (ended, ..) = futures::future::select_all(self.data.iter_mut()).await;
        if let Err(e) = ended {
            tracing::error!("a data task of the device ended: {e}");
        }
    }

    /// Where each peer is (`(public key, endpoint)`), for those whose endpoint is known.
    pub fn endpoints(&self) -> Vec<([u8; 32], SocketAddr)> {
        self.shared
            .table()
            .peers
            .iter()
            .filter_map(|p| Some((p.key, p.lock().endpoint?)))
            .collect()
    }

    /// The receive moderation tick the incoming direction runs with.
    pub fn moderation(&self) -> Duration {
        self.shared.tick.get()
    }

    /// Changes the receive moderation tick (zero: off), in place: the incoming direction takes
    /// it at its next round.
    pub fn set_moderation(&self, tick: Duration) {
        self.shared.tick.set(tick);
    }

    /// Makes `changes` (see [`Table::changed`]); one change at a time (the caller serves one
    /// request at a time).
    pub fn change(&self, changes: Vec<PeerChange>) {
        let new = Arc::new(self.shared.table().changed(&self.shared.keys, changes));
        *self.shared.table.write() = new;
    }
}

/// Socket -> decrypt -> TUN, a received batch at a time.
async fn incoming(
    shared: Arc<Shared>,
    mut udp_rx: GroRecv,
    udp_tx: GsoSend,
    mut tun_tx: TunWriter,
) {
    let mut pool = PacketBufPool::new(4096);
    let mut received: Vec<(Packet, SocketAddr)> = Vec::with_capacity(128);
    let mut replies: Vec<(Packet, SocketAddr)> = Vec::new();
    let mut send_buf = Default::default();
    let mut mtu = MtuWatcher::new(1420);
    let mut to_tun = Vec::with_capacity(128);
    let mut moderation = Moderation::for_this_thread();
    // The last round left datagrams on the socket (it took DRAIN): the next takes them at once.
    let mut left_some = false;
    loop {
        // How this round came to its datagrams: a whole tick's wait, or woken by the socket
        // after waiting this long (neither: a look without waiting, or a tick cut short).
        let (mut ticked, mut woken_after) = (false, None);
        let taken = if moderation.ticking() {
            if !left_some && moderation.wait_due(shared.sent.load(Ordering::Relaxed)) {
                ticked = moderation.wait_tick(tun_tx.as_fd(), shared.tick.get());
            }
            udp_rx.take_queued(&mut pool, &mut received)
        } else {
            let waiting = Instant::now();
            let taken = udp_rx.recv(&mut pool, &mut received).await;
            woken_after = Some(waiting.elapsed());
            taken
        };
        match taken {
            Ok(_) => {}
            // Only a tick's look finds nothing (`recv` waits for datagrams).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                moderation.found_nothing();
                continue;
            }
            Err(e) => {
                tracing::error!("batched device: UDP receive: {e}");
                return;
            }
        }
        // Whatever else is already queued, without waiting: one decrypt pass and one TUN hand-over
        // per burst, not per receive call.
        while received.len() < DRAIN {
            match udp_rx.take_queued(&mut pool, &mut received) {
                Ok(got) if got > 0 => {}
                _ => break,
            }
        }
        left_some = received.len() >= DRAIN;
        match woken_after {
            Some(waited) => moderation.woken(waited, received.len(), shared.tick.get()),
            None if ticked => moderation.ticked(received.len(), shared.tick.get()),
            None => {}
        }
        {
            let table = shared.table();
            // The peer locked for the run of packets it sent.
            let mut held = None;
            // The last session looked up, and the last source checked: a run of one session's
            // packets takes the index map's lock and looks the allowed IPs up once.
            let mut session: Option<(u32, Option<&Peer>)> = None;
            let mut owner: Option<(IpAddr, Option<&Peer>)> = None;
            for (datagram, from) in received.drain(..) {
                let kind = match shared.keys.rate_limiter.verify_packet(from, datagram) {
                    Ok(kind) => kind,
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        replies.push((cookie.into(), from));
                        continue;
                    }
                    Err(_) => continue,
                };
                let peer = match &kind {
                    WgKind::HandshakeInit(p) => {
                        parse_handshake_anon(&shared.keys.private, &shared.public, p)
                            .ok()
                            .and_then(|h| table.by_key(&h.peer_static_public))
                    }
                    WgKind::HandshakeResp(p) => shared.by_index(&table, p.receiver_idx.get()),
                    WgKind::CookieReply(p) => shared.by_index(&table, p.receiver_idx.get()),
                    WgKind::Data(p) => {
                        let idx = p.header.receiver_idx.get();
                        last_lookup(&mut session, idx, || shared.by_index(&table, idx))
                    }
                };
                let Some(peer) = peer else { continue };
                let slot = hold(&mut held, peer);
                if slot.endpoint.is_none() {
                    clock_moved(&mut slot.tunn);
                }
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
                        let owned_by = last_lookup(&mut owner, source, || table.peer_for(source));
                        let allowed = owned_by.is_some_and(|o| std::ptr::eq(o, peer));
                        if allowed {
                            to_tun.push(ip);
                        }
                    }
                }
            }
        }
        // The whole batch at once, coalesced (the device is gone on `Err`: logged).
        if tun_tx.write(&mut to_tun).await.is_err() {
            return;
        }
        if !replies.is_empty() {
            let _ = udp_tx.send_many_to(&mut send_buf, &mut replies).await;
        }
        // The tick's sleep holds the worker: the other direction and the timers run now.
        if moderation.ticking() {
            tokio::task::yield_now().await;
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
                tracing::error!("batched device: TUN read: {e}");
                return;
            }
        };
        {
            let table = shared.table();
            let mut held = None;
            // The last destination looked up: a run of packets to one address is looked up
            // once.
            let mut route: Option<(IpAddr, Option<&Peer>)> = None;
            for packet in packets {
                let Some(to) = packet.destination() else {
                    continue;
                };
                let found = last_lookup(&mut route, to, || table.peer_for(to));
                let Some(peer) = found else { continue };
                let slot = hold(&mut held, peer);
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
            shared.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Moves the clock of the tunnel of a peer without an endpoint (its timers stopped, see
/// [`timers`]) to now, before a packet from it is handled: the session its first handshake makes
/// (a road-warrior client's) is dated by that clock. Left where the endpoint started, the
/// session read as old as the endpoint in `wg show` and status; once that was over 3 minutes
/// (REJECT_AFTER_TIME) the first run of its timers dropped it (the endpoint handshook again
/// when it next sent), and over 9 (× 3) expired the tunnel outright: the client was cut off
/// until it handshook again. What the timers want to send now (a keepalive's handshake) has
/// nowhere to go; the packet that follows starts the session.
fn clock_moved(tunn: &mut Tunn) {
    let _ = tunn.update_timers();
}

/// The timers of every peer with an endpoint, four times a second (as GotaTun's device). A peer
/// without one has nowhere to send what its timers want (a keepalive would start handshakes
/// that go nowhere, and give up after 90 s): they stay stopped, and its tunnel's clock, which
/// moves only when they run, is moved when a packet comes from it ([`clock_moved`]) or it is
/// given an endpoint ([`table`]'s reset).
async fn timers(shared: Arc<Shared>, udp_tx: GsoSend) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        shared
            .by_idx
            .lock()
            .retain(|idx, _| shared.keys.index_table.in_use(*idx));
        shared.keys.rate_limiter.try_reset_count();
        let mut out = Vec::new();
        for p in &shared.table().peers {
            let mut slot = p.lock();
            let Some(to) = slot.endpoint else { continue };
            if let Ok(Some(packet)) = slot.tunn.update_timers() {
                shared.register(&packet, p);
                out.push((Packet::from(packet), to));
            }
        }
        for (packet, to) in out {
            let _ = udp_tx.send_to(packet, to).await;
        }
    }
}
