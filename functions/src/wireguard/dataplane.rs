//! The userspace data plane: what runs in the endpoint process of a WireGuard function (its
//! contract: [`super::endpoint`]): GotaTun (a maintained fork of boringtun) on the persistent
//! TUN device `up` made in the function's namespace (with its addresses, MTU and the peers'
//! routes, see `super::kind`).
//!
//! It reads the function's recorded settings (key file paths, never keys) and its key files,
//! enters the function's namespace on the main thread before any other thread exists (so every
//! thread, socket and device it makes is there), attaches to the TUN with offloads
//! ([`super::tun_io`]: GSO reads split into packets, coalesced writes) and builds the device on a
//! UDP socket with batched I/O ([`super::udp_io`]: GSO sends, GRO receives) and with the
//! cross-platform UAPI socket `/var/run/wireguard/<interface>.sock` (so `wg show` works
//! against it) and netfn's own control socket (peer changes in place: [`super::control`]), drops every capability ([`netfn_core::privilege`]), says it is ready, and runs until
//! SIGTERM. With NETFN_WG_BATCHED=1 it runs the batched device instead ([`super::batched`]:
//! GotaTun's `noise::Tunn` without its device pipeline), with the same sockets and duties.

use std::net::IpAddr;

use gotatun::device::uapi::UapiServer;
use gotatun::device::{Device, DeviceBuilder, DeviceTransports, Peer};
use gotatun::x25519::{PublicKey, StaticSecret};
use netfn_core::chain::{processes, state};
use netfn_core::kernel::netns;
use netfn_core::plan::HopRole;

use super::config::WgSettings;
use super::endpoint::{interface_name, io_file};
use super::udp_io::{SocketBuffers, UdpFactory};
use super::{control, keys, remembered, uapi};

/// The UDP socket's receive and send buffer sizes asked for: room for bursts while the endpoint
/// waits for a CPU (wireguard-go asks for 7 MiB). Forced past net.core.rmem_max / wmem_max at
/// start (see super::udp_io).
const SOCKET_BUFFER: usize = 4 << 20;

/// How long a starting endpoint waits for the handshakes with the peers it knows an endpoint of.
const HANDSHAKE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the endpoint until SIGTERM or SIGINT.
pub fn run(chain: &str, function: &str) -> Result<(), String> {
    let record = state::load(chain)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("chain `{chain}` has no record: is it up?"))?;
    let (_, hop) = record
        .plan
        .hop(function)
        .ok_or_else(|| format!("chain `{chain}` has no function `{function}`"))?;
    let HopRole::Function { settings, .. } = &hop.role else {
        return Err(format!("`{function}` is not a function"));
    };
    let settings: WgSettings = settings
        .parse()
        .map_err(|e| format!("the recorded settings of `{function}`: {e}"))?;
    let private = keys::read_file(&settings.private_key_file)?;
    // Where peers were heard from before a restart: the new instance can reach them at once.
    let known = remembered::read(chain, function);
    let mut peers = Vec::new();
    let mut reachable = Vec::new();
    for p in &settings.peers {
        let key = keys::decode(&p.public_key).map_err(|why| format!("a peer's key {why}"))?;
        let mut peer =
            Peer::new(PublicKey::from(key)).with_allowed_ips(p.allowed_ips.iter().filter_map(
                |n| ipnetwork::IpNetwork::new(IpAddr::V4(n.network()), n.prefix_len()).ok(),
            ));
        // Where the peer was last heard from wins over where the file says it is: a peer that
        // roamed is no longer at its configured address (the file of where peers are is written
        // within a second of a change, and removed by `down`).
        if let Some(e) = known.get(&p.public_key).copied().or(p.endpoint) {
            peer = peer.with_endpoint(e);
            reachable.push(PublicKey::from(key));
        }
        peer.keepalive = p.persistent_keepalive;
        if let Some(f) = &p.preshared_key_file {
            peer.preshared_key = Some(keys::read_file(f)?);
        }
        peers.push(peer);
    }
    netns::enter(&hop.netns.name).map_err(|e| e.to_string())?;
    let name = interface_name(chain, function);
    // The runtime's threads never need a capability (see netfn_core::privilege); the main thread
    // keeps its own until setup is done. One worker: GotaTun runs each direction as one task
    // (socket -> decrypt -> TUN, TUN -> encrypt -> socket) with a channel between stages, and a
    // second worker mostly woke up to take over a stage a packet later (a futex wake and a
    // context switch per hand-over). `cargo xtask bench vpn`'s CPU per process, 60-byte UDP
    // from netfn's endpoint to wireguard-go: 7.9 µs of the endpoint's CPU per packet with two
    // workers, 5.1-6.0 with one (four runs); netfn to netfn 147 -> 172-194 kpps; TCP alike.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(|| {
            if let Err(e) = netfn_core::privilege::drop_all() {
                tracing::warn!("endpoint thread: {e}");
            }
        })
        .build()
        .map_err(|e| format!("start the runtime: {e}"))?;
    runtime.block_on(async {
        // A SIGTERM from here on (`down` while the endpoint starts) ends it cleanly at the main
        // loop, not with the default action, which would leave its sockets behind.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        let sockets = Sockets {
            uapi: uapi::socket_path(&name),
            control: control::socket_path(chain, function),
        };
        // `down` removes it even when it had to SIGKILL the endpoint.
        std::fs::write(
            processes::owned_files(chain, function),
            format!("{}\n", sockets.uapi.display()),
        )
        .map_err(|e| format!("record the UAPI socket as the endpoint's: {e}"))?;
        // `netfn apply`'s peer changes, made in place (see super::control). Without it the
        // tunnel still runs; `apply` then speaks the UAPI (changed peers handshake again).
        let control = control::bind(&sockets.control)
            .inspect_err(|e| tracing::warn!("endpoint {name}: no control socket: {e}"))
            .ok();
        let (tun_tx, tun_rx, offloads) = super::tun_io::open(&name).map_err(|e| {
            format!("attach to the TUN device {name} with offloads: {e} (is the chain up?)")
        })?;
        let buffers = std::sync::Arc::new(SocketBuffers::default());
        if std::env::var_os("NETFN_WG_BATCHED").is_some() {
            let mut peers = Vec::new();
            for p in &settings.peers {
                let key =
                    keys::decode(&p.public_key).map_err(|why| format!("a peer's key {why}"))?;
                let preshared = match &p.preshared_key_file {
                    Some(f) => Some(keys::read_file(f)?),
                    None => None,
                };
                peers.push(super::batched::PeerSpec {
                    key: PublicKey::from(key),
                    preshared,
                    keepalive: p.persistent_keepalive,
                    endpoint: known.get(&p.public_key).copied().or(p.endpoint),
                    allowed: p.allowed_ips.clone(),
                });
            }
            // Its `get=1` answer names the private key: root's only (control::bind).
            std::fs::create_dir_all(uapi::SOCKET_DIR)
                .map_err(|e| format!("make {}: {e}", uapi::SOCKET_DIR))?;
            let uapi = control::bind(&sockets.uapi)
                .map_err(|e| format!("serve the UAPI socket of {name}: {e}"))?;
            return super::batched::run::run(super::batched::run::Setup {
                chain,
                function,
                name: &name,
                private,
                port: settings.listen_port,
                peers,
                udp: UdpFactory {
                    buffer: SOCKET_BUFFER,
                    gso: true,
                    got: buffers.clone(),
                },
                buffers,
                tun: (tun_tx, tun_rx, offloads),
                uapi,
                control,
                term,
                handshake_wait: HANDSHAKE_WAIT,
            })
            .await;
        }
        // Its `get=1` answer names the private key (as every WireGuard UAPI's does), and
        // GotaTun binds it with whatever umask the endpoint was started under: root's only.
        let uapi = control::owner_only(&sockets.uapi, || {
            UapiServer::default_unix_socket(&name, None, None)
        })
        .map_err(|e| format!("serve the UAPI socket of {name}: {e}"))?;
        let mut device = DeviceBuilder::new()
            // Batched UDP: GSO sends, GRO receives (see super::udp_io).
            .with_udp(UdpFactory {
                buffer: SOCKET_BUFFER,
                gso: true,
                got: buffers.clone(),
            })
            .with_ip_pair(tun_tx, tun_rx)
            .with_uapi(uapi)
            .with_private_key(StaticSecret::from(private))
            .with_listen_port(settings.listen_port)
            .with_peers(peers)
            .build()
            .await
            .map_err(|e| format!("start the WireGuard device {name}: {e}"))?;
        // `up` gave the (persistent) TUN its addresses, MTU and routes; nothing left to set.
        netfn_core::privilege::drop_all().map_err(|e| format!("endpoint {name}: {e}"))?;
        // A restarted endpoint has no sessions; the peers' data would be dropped until their
        // timers made them handshake again (15 s and more). Handshake with every peer it can
        // reach now instead, all at once, waiting at most HANDSHAKE_WAIT: GotaTun's wait never
        // times out, and a peer that is away (its configured endpoint silent) must not keep
        // the endpoint from getting ready; GotaTun's timers send its initiation again.
        let (device_ref, name_ref) = (&device, name.as_str());
        let handshakes = reachable.iter().map(|key| async move {
            let (device, name) = (device_ref, name_ref);
            match tokio::time::timeout(HANDSHAKE_WAIT, device.force_handshake(key)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!("endpoint {name}: a handshake with a known peer failed: {e}");
                }
                Err(_) => tracing::info!(
                    "endpoint {name}: a known peer did not answer within {} ms; its timers \
                     try again",
                    HANDSHAKE_WAIT.as_millis()
                ),
            }
        });
        futures::future::join_all(handshakes).await;
        // GotaTun opens its socket and starts its tasks only for a device built with peers, or
        // when a write changes the key or the port or clears the peers; adding a peer is none of
        // those. A device that starts with none would take its first peers (from `apply` or
        // `wg set`) and carry nothing: clearing its no peers sets its connection up now.
        if settings.peers.is_empty() {
            device
                .write(async |d| {
                    d.clear_peers();
                })
                .await
                .map_err(|e| format!("start the WireGuard device {name} with no peer: {e}"))?;
        }
        // For `netfn status`: the offloads this run of the endpoint has on its TUN, and the
        // buffers its socket got.
        let io = format!("TUN offloads: {offloads}; UDP socket buffers: {buffers}");
        std::fs::write(io_file(chain, function), &io)
            .map_err(|e| format!("record the endpoint's I/O: {e}"))?;
        std::fs::write(processes::ready_file(chain, function), b"")
            .map_err(|e| format!("say it is ready: {e}"))?;
        tracing::info!(
            "endpoint {name} up: {} peer(s), listening on port {}, {io}",
            settings.peers.len(),
            settings.listen_port
        );
        let mut remember = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut remembered = String::new();
        let ended = loop {
            // The branches only say what happened; it is handled after the select, once no
            // branch borrows the device (waiting for its end takes it mutably).
            let event = tokio::select! {
                _ = term.recv() => Event::Stop,
                _ = tokio::signal::ctrl_c() => Event::Stop,
                () = device.wait() => Event::Failed,
                _ = remember.tick() => Event::Remember,
                // Only the accept races the other branches; the request is then served to the
                // end below.
                accepted = async {
                    match &control {
                        Some(listener) => listener.accept().await,
                        None => std::future::pending().await,
                    }
                } => Event::Control(accepted.map(|(stream, _)| stream)),
            };
            match event {
                Event::Stop => {
                    // Where peers were heard from since the last save (a peer that roamed in
                    // the last second): a restarted endpoint (`apply` after an upgrade) finds
                    // them there.
                    remember_endpoints(&device, chain, function, &mut remembered).await;
                    break Ok(());
                }
                // GotaTun stopped moving packets for good (its TUN or socket failed): end, so
                // that whoever watches the endpoint (the agent) starts it again, rather than
                // run on carrying nothing.
                Event::Failed => {
                    break Err(format!(
                        "endpoint {name}: the WireGuard device stopped (its TUN device or UDP \
                         socket failed; the log above says which)"
                    ));
                }
                Event::Remember => {
                    remember_endpoints(&device, chain, function, &mut remembered).await;
                }
                Event::Control(accepted) => {
                    let served = match accepted {
                        Ok(stream) => control::serve(stream, &device).await,
                        Err(e) => Err(format!("accept: {e}")),
                    };
                    if let Err(e) = served {
                        tracing::warn!("endpoint {name}: a control request failed: {e}");
                    }
                }
            }
        };
        device.stop().await;
        ended
    })
}

/// The endpoint's socket files, removed when it ends, however it ends short of SIGKILL (they
/// would outlive it otherwise: `wg show` would list a dead interface).
struct Sockets {
    uapi: std::path::PathBuf,
    control: std::path::PathBuf,
}

impl Drop for Sockets {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uapi);
        let _ = std::fs::remove_file(&self.control);
    }
}

/// What ended a wait of the endpoint's main loop.
enum Event {
    Stop,
    Failed,
    Remember,
    Control(std::io::Result<tokio::net::UnixStream>),
}

/// Saves where the peers are now (learned from their handshakes), for a restarted endpoint
/// ([`remembered`]). Read from the device itself under its read lock.
async fn remember_endpoints<T: DeviceTransports>(
    device: &Device<T>,
    chain: &str,
    function: &str,
    saved: &mut String,
) {
    let text = remembered::text(
        device
            .peers()
            .await
            .iter()
            .filter_map(|p| Some((*p.peer.public_key.as_bytes(), p.peer.endpoint?))),
    );
    remembered::save(chain, function, text, saved).await;
}
