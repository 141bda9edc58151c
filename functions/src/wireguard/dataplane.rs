//! The userspace data plane: what runs in the endpoint process of a WireGuard function (its
//! contract: [`super::endpoint`]), on the persistent TUN device `up` made in the function's
//! namespace (with its addresses, MTU and the peers' routes, see `super::kind`).
//!
//! It reads the function's recorded settings (key file paths, never keys) and its key files,
//! enters the function's namespace on the main thread before any other thread exists (so every
//! thread, socket and device it makes is there), attaches to the TUN with offloads
//! ([`super::tun_io`]: GSO reads split into packets, coalesced writes), binds netfn's control
//! socket (peer changes in place: [`super::control`]) and runs the device the setting
//! `userspace` names on a UDP socket with batched I/O ([`super::udp_io`]: GSO sends, GRO
//! receives): netfn's batched device by default ([`super::batched`]: GotaTun's `noise::Tunn`
//! without GotaTun's device pipeline) or GotaTun's own ([`super::gotatun_device`]). Either
//! serves the cross-platform UAPI socket `/var/run/wireguard/<interface>.sock` (so `wg show`
//! works against it), drops every capability ([`netfn_core::privilege`]), handshakes with the
//! peers it can reach, says it is ready, saves where the peers are, and runs until SIGTERM.

use netfn_core::chain::{function_record, processes};
use netfn_core::kernel::netns;
use tokio::net::UnixListener;
use tokio::signal::unix::{Signal, SignalKind};

use super::config::{Userspace, WgSettings};
use super::endpoint::interface_name;
use super::tun_io::{Offloads, TunRecv, TunWriter};
use super::udp_io::{SocketBuffers, UdpFactory};
use super::{control, keys, remembered, uapi};

/// The UDP socket's receive and send buffer sizes asked for: room for bursts while the endpoint
/// waits for a CPU (wireguard-go asks for 7 MiB). Forced past net.core.rmem_max / wmem_max at
/// start (see super::udp_io).
const SOCKET_BUFFER: usize = 4 << 20;

/// How long a starting endpoint waits for the handshakes with the peers it knows an endpoint of.
const HANDSHAKE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A peer as the endpoint starts with it.
pub struct PeerSpec {
    pub key: gotatun::x25519::PublicKey,
    pub preshared: Option<[u8; 32]>,
    pub keepalive: Option<u16>,
    /// Where it was last heard from (before a restart), else where the file says it is.
    pub endpoint: Option<std::net::SocketAddr>,
    pub allowed: Vec<ipnet::Ipv4Net>,
}

/// Everything the endpoint set up before its device starts.
pub struct Setup<'a> {
    pub chain: &'a str,
    pub function: &'a str,
    /// The interface name (`wg show NAME`).
    pub name: &'a str,
    pub private: [u8; 32],
    pub port: u16,
    pub peers: Vec<PeerSpec>,
    pub udp: UdpFactory,
    pub buffers: std::sync::Arc<SocketBuffers>,
    pub tun: (TunWriter, TunRecv, Offloads),
    /// netfn's control socket; without it the tunnel still runs, and `apply` speaks the UAPI.
    pub control: Option<UnixListener>,
    /// SIGTERM.
    pub term: Signal,
    /// How long to wait for the handshakes with the peers it knows an endpoint of.
    pub handshake_wait: std::time::Duration,
    /// The batched device's receive moderation tick (zero: none).
    pub moderation: std::time::Duration,
    /// When the process started, for the log's timings.
    pub began: std::time::Instant,
}

/// Runs the endpoint until SIGTERM or SIGINT.
pub fn run(chain: &str, function: &str) -> Result<(), String> {
    let began = std::time::Instant::now();
    tracing::info!("endpoint {chain}/{function} starting");
    let (hop, settings): (_, WgSettings) =
        function_record::load(chain, function).map_err(|e| e.to_string())?;
    let private = keys::read_file(&settings.private_key_file)?;
    let peers = peer_specs(&settings, &remembered::read(chain, function))?;
    netns::enter(&hop.netns.name).map_err(|e| e.to_string())?;
    let name = interface_name(chain, function);
    // The runtime's threads never need a capability (see netfn_core::privilege); the main thread
    // keeps its own until setup is done. One worker: each device runs a direction as one task,
    // and a second worker mostly woke up to take over a task a packet later (a futex wake and a
    // context switch per hand-over). `cargo xtask bench vpn`'s CPU per process, 60-byte UDP
    // from netfn's endpoint to wireguard-go on GotaTun's device: 7.9 µs of the endpoint's CPU
    // per packet with two workers, 5.1-6.0 with one (four runs); netfn to netfn 147 -> 172-194
    // kpps; TCP alike.
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
        let term =
            tokio::signal::unix::signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
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
        // tunnel still runs; `apply` then speaks the UAPI.
        let control = control::bind(&sockets.control)
            .inspect_err(|e| tracing::warn!("endpoint {name}: no control socket: {e}"))
            .ok();
        let tun = super::tun_io::open(&name).map_err(|e| {
            format!("attach to the TUN device {name} with offloads: {e} (is the chain up?)")
        })?;
        let buffers = std::sync::Arc::new(SocketBuffers::default());
        let setup = Setup {
            chain,
            function,
            name: &name,
            private,
            port: settings.listen_port,
            peers,
            // Batched UDP: GSO sends, GRO receives (see super::udp_io).
            udp: UdpFactory {
                buffer: SOCKET_BUFFER,
                gso: true,
                got: buffers.clone(),
            },
            buffers,
            tun,
            control,
            term,
            handshake_wait: HANDSHAKE_WAIT,
            moderation: std::time::Duration::from_micros(settings.receive_moderation_us.into()),
            began,
        };
        match settings.userspace {
            Userspace::Batched => super::batched::run::run(setup, &sockets.uapi).await,
            Userspace::Gotatun => super::gotatun_device::run(setup).await,
        }
    })
}

/// The peers of `settings`, each at where it was last heard from (`known`, saved before a
/// restart) or else where the file says it is: a peer that roamed is no longer at its
/// configured address.
fn peer_specs(
    settings: &WgSettings,
    known: &std::collections::HashMap<String, std::net::SocketAddr>,
) -> Result<Vec<PeerSpec>, String> {
    settings
        .peers
        .iter()
        .map(|p| {
            let key = keys::decode(&p.public_key).map_err(|why| format!("a peer's key {why}"))?;
            let preshared = match &p.preshared_key_file {
                Some(f) => Some(keys::read_file(f)?),
                None => None,
            };
            Ok(PeerSpec {
                key: key.into(),
                preshared,
                keepalive: p.persistent_keepalive,
                endpoint: known.get(&p.public_key).copied().or(p.endpoint),
                allowed: p.allowed_ips.clone(),
            })
        })
        .collect()
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

/// The device an endpoint runs, as `netfn status` tells it.
#[derive(Debug, Clone, Copy)]
pub enum Running {
    /// netfn's batched device, with its receive moderation's tick (zero: off).
    Batched {
        moderation: std::time::Duration,
    },
    Gotatun,
}

impl Running {
    fn userspace(self) -> Userspace {
        match self {
            Running::Batched { .. } => Userspace::Batched,
            Running::Gotatun => Userspace::Gotatun,
        }
    }

    /// What the device does that the operator should know of: the batched device's receive
    /// moderation is a latency.
    fn moderation(self) -> String {
        match self {
            Running::Batched { moderation } if moderation.is_zero() => {
                "; receive moderation: off".to_string()
            }
            Running::Batched { moderation } => format!(
                "; receive moderation: {} µs ticks while datagrams come {} or more to a tick",
                moderation.as_micros(),
                super::batched::moderation::MIN_BATCH
            ),
            Running::Gotatun => String::new(),
        }
    }
}

/// Records what runs (for `netfn status`: see [`record_io`]) and says the endpoint is ready
/// (`up` waits for it).
pub fn say_ready(
    chain: &str,
    function: &str,
    device: Running,
    offloads: Offloads,
    buffers: &SocketBuffers,
    began: std::time::Instant,
) -> Result<(), String> {
    let io = record_io(chain, function, device, offloads, buffers)?;
    std::fs::write(processes::ready_file(chain, function), b"")
        .map_err(|e| format!("say it is ready: {e}"))?;
    tracing::info!(
        "endpoint {chain}/{function} up {} ms after it started: {io}",
        began.elapsed().as_millis()
    );
    Ok(())
}

/// Records what runs, for `netfn status`: the device, its TUN offloads, the buffers its socket
/// got (so after the socket is bound) and the batched device's receive moderation (again when
/// `apply` changes it). Returns the text.
pub fn record_io(
    chain: &str,
    function: &str,
    device: Running,
    offloads: Offloads,
    buffers: &SocketBuffers,
) -> Result<String, String> {
    let io = format!(
        "{}; TUN offloads: {offloads}; UDP socket buffers: {buffers}{}",
        device.userspace().describe(),
        device.moderation()
    );
    // Whole or not at all for a `netfn status` reading it meanwhile.
    let path = super::endpoint::io_file(chain, function);
    let tmp = path.with_extension("io.tmp");
    std::fs::write(&tmp, &io)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("record the endpoint's I/O in {}: {e}", path.display()))?;
    Ok(io)
}

/// What ended a wait of an endpoint's main loop (either device's).
pub enum Event {
    Stop,
    Failed,
    Remember,
    /// A client of the UAPI or control socket.
    Request(std::io::Result<tokio::net::UnixStream>),
}

/// The next client of `listener`; none ever without one (no control socket).
pub async fn accept(listener: Option<&UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match listener {
        Some(l) => l.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// The error an endpoint ends with when its device stopped moving packets for good (so that
/// whoever watches it, the agent, starts it again rather than it run on carrying nothing).
pub fn device_stopped(name: &str) -> String {
    format!(
        "endpoint {name}: the WireGuard device stopped (its TUN device or UDP socket failed; the \
         log above says which)"
    )
}
