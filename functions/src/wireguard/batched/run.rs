//! The endpoint's main loop on the batched device (`userspace = "batched"`, the default), with
//! the duties it has on GotaTun's device too (see [`super::super::gotatun_device`]): handshakes
//! with the peers it can reach before it says it is ready, the UAPI socket and netfn's control
//! socket served, where the peers are saved every second and at the end, and an end with an
//! error when the device stops moving packets (so the agent starts it again).

use std::path::Path;
use std::time::{Duration, Instant};

use gotatun::x25519::StaticSecret;

use super::super::control;
use super::super::dataplane::{
    Event, Running, Setup, accept, device_stopped, record_io, say_ready,
};
use super::super::remembered;
use super::super::uapi;
use super::{Batched, serve};

/// Runs the device until SIGTERM or SIGINT (`Ok`) or until it fails (`Err`), serving the UAPI
/// at `uapi_path`.
pub async fn run(setup: Setup<'_>, uapi_path: &Path) -> Result<(), String> {
    let (offloads, buffers) = (setup.tun.2, setup.buffers.clone());
    let Setup {
        chain,
        function,
        began,
        name,
        mut term,
        control,
        handshake_wait,
        moderation,
        ..
    } = setup;
    // Its `get=1` answer names the private key: root's only (control::bind).
    std::fs::create_dir_all(uapi::SOCKET_DIR)
        .map_err(|e| format!("make {}: {e}", uapi::SOCKET_DIR))?;
    let uapi =
        control::bind(uapi_path).map_err(|e| format!("serve the UAPI socket of {name}: {e}"))?;
    let (tun_tx, tun_rx, _) = setup.tun;
    let mut dev = Batched::start(
        setup.udp,
        tun_tx,
        tun_rx,
        StaticSecret::from(setup.private),
        setup.port,
        setup.peers,
        moderation,
    )
    .await
    .map_err(|e| format!("start the batched WireGuard device {name}: {e}"))?;
    tracing::info!(
        "endpoint {name}: device started {} ms after the process",
        began.elapsed().as_millis()
    );
    netfn_core::privilege::drop_all().map_err(|e| format!("endpoint {name}: {e}"))?;
    // A restarted endpoint has no sessions: handshake with every peer it can reach now, waiting
    // for a while at most (a peer that is away must not keep the endpoint from getting ready;
    // the timers send the initiation again).
    dev.handshake_all();
    // A blocking sleep: this thread has nothing else to do meanwhile, and tokio's timers are
    // driven by the worker, which a backlog of datagrams (queued while the endpoint restarted)
    // can keep busy for long on a slow CPU: on Debian 6.1 under TCG, two VMs on two CPUs, one
    // 5 ms `tokio::time::sleep` here took 18 s, and `apply` gave up on the endpoint (10 s).
    let started = Instant::now();
    while !dev.all_up() && started.elapsed() < handshake_wait {
        std::thread::sleep(Duration::from_millis(5));
    }
    say_ready(
        chain,
        function,
        Running::Batched { moderation },
        offloads,
        &buffers,
        began,
    )?;
    // The tick the status line says.
    let mut shown = moderation;
    let mut remember = tokio::time::interval(Duration::from_secs(1));
    let mut saved = String::new();
    let ended = loop {
        let event = tokio::select! {
            _ = term.recv() => Event::Stop,
            _ = tokio::signal::ctrl_c() => Event::Stop,
            () = dev.wait() => Event::Failed,
            _ = remember.tick() => Event::Remember,
            // Only the accept races the other branches; the request is then served to the end.
            accepted = accept(Some(&uapi)) => Event::Request(accepted),
            accepted = accept(control.as_ref()) => Event::Request(accepted),
        };
        match event {
            Event::Stop => break Ok(()),
            Event::Failed => break Err(device_stopped(name)),
            Event::Remember => {
                let text = remembered::text(dev.endpoints());
                remembered::save(chain, function, text, &mut saved).await;
            }
            Event::Request(Ok(stream)) => {
                // `apply` says the receive moderation tick each time: when the device's changed,
                // status says the new one.
                let moderated = |tick| {
                    if tick == shown {
                        return;
                    }
                    let running = Running::Batched { moderation: tick };
                    match record_io(chain, function, running, offloads, &buffers) {
                        Ok(io) => {
                            shown = tick;
                            tracing::info!("endpoint {name}: now {io}");
                        }
                        Err(e) => tracing::warn!("endpoint {name}: {e}"),
                    }
                };
                if let Err(e) = serve(stream, &dev, moderated).await {
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
