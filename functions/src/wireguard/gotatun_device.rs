//! GotaTun's own device as the endpoint's (`userspace = "gotatun"`): its pipeline of tasks and
//! channels between the socket, the crypto and the TUN, with a device lock and a peer lock per
//! packet. Slower than netfn's batched device ([`super::batched`]; `cargo xtask bench vpn
//! --also-gotatun` measures both), and kept as a fallback and as the bench's yardstick. The
//! duties around it are the batched device's: handshakes before ready, the UAPI socket and
//! netfn's control socket served, where the peers are saved every second and at the end, and an
//! end with an error when the device stops moving packets (so the agent starts it again).

use std::net::IpAddr;

use gotatun::device::uapi::UapiServer;
use gotatun::device::{Device, DeviceBuilder, DeviceTransports, Peer};
use gotatun::x25519::StaticSecret;

use super::dataplane::{Event, Running, Setup, accept, device_stopped, say_ready};
use super::{control, remembered, uapi};

/// Runs GotaTun's device until SIGTERM or SIGINT (`Ok`) or until it fails (`Err`).
pub async fn run(setup: Setup<'_>) -> Result<(), String> {
    let (offloads, buffers) = (setup.tun.2, setup.buffers.clone());
    let name = setup.name;
    let reachable: Vec<_> = setup
        .peers
        .iter()
        .filter(|p| p.endpoint.is_some())
        .map(|p| p.key)
        .collect();
    let peers = setup.peers.iter().map(|p| {
        let mut peer = Peer::new(p.key).with_allowed_ips(p.allowed.iter().filter_map(|n| {
            ipnetwork::IpNetwork::new(IpAddr::V4(n.network()), n.prefix_len()).ok()
        }));
        if let Some(e) = p.endpoint {
            peer = peer.with_endpoint(e);
        }
        peer.keepalive = p.keepalive;
        peer.preshared_key = p.preshared;
        peer
    });
    let peers: Vec<_> = peers.collect();
    // Its `get=1` answer names the private key (as every WireGuard UAPI's does), and GotaTun
    // binds it with whatever umask the endpoint was started under: root's only.
    let uapi = control::owner_only(&uapi::socket_path(name), || {
        UapiServer::default_unix_socket(name, None, None)
    })
    .map_err(|e| format!("serve the UAPI socket of {name}: {e}"))?;
    let (tun_writer, tun_rx, _) = setup.tun;
    // GotaTun hands decrypted packets over one at a time: a writer task takes them in batches.
    let tun_tx = tun_writer.queued();
    let mut device = DeviceBuilder::new()
        .with_udp(setup.udp)
        .with_ip_pair(tun_tx, tun_rx)
        .with_uapi(uapi)
        .with_private_key(StaticSecret::from(setup.private))
        .with_listen_port(setup.port)
        .with_peers(peers)
        .build()
        .await
        .map_err(|e| format!("start the WireGuard device {name}: {e}"))?;
    // `up` gave the (persistent) TUN its addresses, MTU and routes; nothing left to set.
    netfn_core::privilege::drop_all().map_err(|e| format!("endpoint {name}: {e}"))?;
    // A restarted endpoint has no sessions; the peers' data would be dropped until their timers
    // made them handshake again (15 s and more). Handshake with every peer it can reach now
    // instead, all at once, waiting a while at most: GotaTun's wait never times out, and a peer
    // that is away (its configured endpoint silent) must not keep the endpoint from getting
    // ready; GotaTun's timers send its initiation again.
    let wait = setup.handshake_wait;
    let device_ref = &device;
    let handshakes = reachable.iter().map(|key| async move {
        match tokio::time::timeout(wait, device_ref.force_handshake(key)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!("endpoint {name}: a handshake with a known peer failed: {e}");
            }
            Err(_) => tracing::info!(
                "endpoint {name}: a known peer did not answer within {} ms; its timers try again",
                wait.as_millis()
            ),
        }
    });
    futures::future::join_all(handshakes).await;
    // GotaTun opens its socket and starts its tasks only for a device built with peers, or when
    // a write changes the key or the port or clears the peers; adding a peer is none of those.
    // A device that starts with none would take its first peers (from `apply` or `wg set`) and
    // carry nothing: clearing its no peers sets its connection up now.
    if setup.peers.is_empty() {
        device
            .write(async |d| {
                d.clear_peers();
            })
            .await
            .map_err(|e| format!("start the WireGuard device {name} with no peer: {e}"))?;
    }
    let Setup {
        chain,
        function,
        began,
        control,
        mut term,
        ..
    } = setup;
    say_ready(chain, function, Running::Gotatun, offloads, &buffers, began)?;
    let mut remember = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut remembered = String::new();
    let ended = loop {
        // The branches only say what happened; it is handled after the select, once no branch
        // borrows the device (waiting for its end takes it mutably).
        let event = tokio::select! {
            _ = term.recv() => Event::Stop,
            _ = tokio::signal::ctrl_c() => Event::Stop,
            () = device.wait() => Event::Failed,
            _ = remember.tick() => Event::Remember,
            // Only the accept races the other branches; the request is then served to the end
            // below.
            accepted = accept(control.as_ref()) => Event::Request(accepted),
        };
        match event {
            Event::Stop => {
                // Where peers were heard from since the last save (a peer that roamed in the
                // last second): a restarted endpoint (`apply` after an upgrade) finds them there.
                remember_endpoints(&device, chain, function, &mut remembered).await;
                break Ok(());
            }
            // GotaTun stopped moving packets for good (its TUN or socket failed): end, so that
            // whoever watches the endpoint (the agent) starts it again, rather than run on
            // carrying nothing.
            Event::Failed => break Err(device_stopped(name)),
            Event::Remember => {
                remember_endpoints(&device, chain, function, &mut remembered).await;
            }
            Event::Request(accepted) => {
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
