//! The endpoint's main loop on the batched device (NETFN_WG_BATCHED=1), with the duties it has
//! on GotaTun's device (see [`super::super::dataplane`]): handshakes with the peers it can reach
//! before it says it is ready, the UAPI socket and netfn's control socket served, where the peers
//! are saved every second and at the end, and an end with an error when the device stops moving
//! packets (so the agent starts it again).

use std::sync::Arc;
use std::time::{Duration, Instant};

use gotatun::x25519::StaticSecret;
use netfn_core::chain::processes;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::Signal;

use super::super::endpoint::io_file;
use super::super::remembered;
use super::super::tun_io::{Offloads, TunRecv, TunSend};
use super::super::udp_io::{SocketBuffers, UdpFactory};
use super::{Batched, PeerSpec, serve};

/// Everything the endpoint set up before the device starts.
pub struct Setup<'a> {
    pub chain: &'a str,
    pub function: &'a str,
    pub name: &'a str,
    pub private: [u8; 32],
    pub port: u16,
    pub peers: Vec<PeerSpec>,
    pub udp: UdpFactory,
    pub buffers: Arc<SocketBuffers>,
    pub tun: (TunSend, TunRecv, Offloads),
    pub uapi: UnixListener,
    pub control: Option<UnixListener>,
    /// SIGTERM.
    pub term: Signal,
    /// How long to wait for the handshakes with the peers it knows an endpoint of.
    pub handshake_wait: Duration,
}

/// What ended a wait of the main loop.
enum Event {
    Stop,
    Failed,
    Remember,
    Request(std::io::Result<UnixStream>),
}

/// Runs the device until SIGTERM or SIGINT (`Ok`) or until it fails (`Err`).
pub async fn run(setup: Setup<'_>) -> Result<(), String> {
    let Setup {
        chain,
        function,
        name,
        mut term,
        ..
    } = setup;
    let (tun_tx, tun_rx, offloads) = setup.tun;
    let mut dev = Batched::start(
        setup.udp,
        tun_tx,
        tun_rx,
        StaticSecret::from(setup.private),
        setup.port,
        setup.peers,
    )
    .await
    .map_err(|e| format!("start the batched WireGuard device {name}: {e}"))?;
    netfn_core::privilege::drop_all().map_err(|e| format!("endpoint {name}: {e}"))?;
    // A restarted endpoint has no sessions: handshake with every peer it can reach now, waiting
    // for a while at most (a peer that is away must not keep the endpoint from getting ready;
    // the timers send the initiation again).
    dev.handshake_all().await;
    let started = Instant::now();
    while !dev.all_up() && started.elapsed() < setup.handshake_wait {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let io = format!(
        "batched device; TUN offloads: {offloads}; UDP socket buffers: {}",
        setup.buffers
    );
    std::fs::write(io_file(chain, function), &io)
        .map_err(|e| format!("record the endpoint's I/O: {e}"))?;
    std::fs::write(processes::ready_file(chain, function), b"")
        .map_err(|e| format!("say it is ready: {e}"))?;
    tracing::info!("endpoint {name} up (batched device), {io}");
    let mut remember = tokio::time::interval(Duration::from_secs(1));
    let mut saved = String::new();
    let ended = loop {
        let event = tokio::select! {
            _ = term.recv() => Event::Stop,
            _ = tokio::signal::ctrl_c() => Event::Stop,
            () = dev.wait() => Event::Failed,
            _ = remember.tick() => Event::Remember,
            // Only the accept races the other branches; the request is then served to the end.
            accepted = setup.uapi.accept() => Event::Request(accepted.map(|(s, _)| s)),
            accepted = accept(setup.control.as_ref()) => {
                Event::Request(accepted.map(|(s, _)| s))
            }
        };
        match event {
            Event::Stop => break Ok(()),
            Event::Failed => {
                break Err(format!(
                    "endpoint {name}: the WireGuard device stopped (its TUN device or UDP socket \
                     failed; the log above says which)"
                ));
            }
            Event::Remember => {
                let text = remembered::text(dev.endpoints());
                remembered::save(chain, function, text, &mut saved).await;
            }
            Event::Request(Ok(stream)) => {
                if let Err(e) = serve(stream, &dev).await {
                    tracing::warn!("endpoint {name}: answer a UAPI request: {e}");
                }
            }
            Event::Request(Err(e)) => tracing::warn!("endpoint {name}: accept: {e}"),
        }
    };
    let text = remembered::text(dev.endpoints());
    remembered::save(chain, function, text, &mut saved).await;
    ended
}

/// The next client of `listener`; none ever without one.
async fn accept(
    listener: Option<&UnixListener>,
) -> std::io::Result<(UnixStream, tokio::net::unix::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}
