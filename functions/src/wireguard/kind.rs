//! `kind = "wireguard"`: the kind's face to core. A stack kind: its packets cross the
//! function's own IP stack (the forwarder hands them over; IP forwarding is on there), where the
//! tunnel device decrypts and encrypts: the kernel's interface, made by `up` ([`super::kernel`]),
//! or the userspace data plane, a process of its own ([`super::endpoint`]) started by `up` and
//! restarted by the agent's task if it dies. The peers' allowed IPs are the sources its
//! neighbours on the far side accept from it.

use std::sync::Arc;
use std::time::Duration;

use netfn_core::chain::processes;
use netfn_core::chain::state::{self, ChainLock};
use netfn_core::function::{
    ChainAddresses, ExtraSource, FunctionConfig, FunctionContext, FunctionKind,
    FunctionMetricsContext, KindMetricsError, KindTask, MetricFamily, RecordedSettings,
    SettingError, Settings, TaskContext, TaskRun,
};
use netfn_core::plan::{Direction, names};

use super::config::{self, Backend, Side, USERSPACE_MAX_MTU, WgSettings};
use super::device::{self, Device};
use super::kernel::{self, CreateError};
use super::{endpoint, handshakes, link, reresolve};

pub struct WireGuard;

#[derive(Debug, Clone)]
pub struct WgConfig {
    pub settings: WgSettings,
}

impl FunctionConfig for WgConfig {
    fn kind(&self) -> &'static str {
        "wireguard"
    }

    fn record(&self) -> RecordedSettings {
        RecordedSettings::of(&self.settings)
    }

    fn uses_stack(&self) -> bool {
        true
    }

    /// The same but for the addresses names were looked up as ([`WgSettings::as_written`]).
    fn same_as_recorded(&self, old: &RecordedSettings) -> bool {
        old.parse::<WgSettings>().is_ok_and(|old| {
            RecordedSettings::of(&old.as_written())
                == RecordedSettings::of(&self.settings.as_written())
        })
    }

    /// The kernel backend's interface: made and configured here (`auto` falls back to the
    /// userspace endpoint when this kernel has no WireGuard); a running one's peers change in
    /// place. The userspace endpoint configures itself ([`Self::process`]).
    fn configure(&self, ctx: &FunctionContext, fresh: bool) -> Result<(), String> {
        let (chain, function) = (ctx.chain.as_str(), ctx.function.as_str());
        if !fresh {
            return match Device::of(chain, function) {
                Device::Kernel { .. } => super::peers::update(chain, function, &self.settings),
                Device::Userspace { .. } => Ok(()),
            };
        }
        let netns = names::netns_name(chain, function);
        // Counting is not worth refusing the function over (status says when it is missing).
        if let Err(why) = handshakes::install(&netns, self.settings.listen_port) {
            tracing::warn!("function {function}: {why}");
        }
        let name = endpoint::interface_name(chain, function);
        let kernel = match self.settings.backend {
            Backend::Userspace => false,
            Backend::Auto | Backend::Kernel => {
                match kernel::create(&netns, &name, &self.settings) {
                    Ok(()) => true,
                    Err(CreateError::NoModule(why)) if self.settings.backend == Backend::Auto => {
                        if self.settings.mtu > USERSPACE_MAX_MTU {
                            return Err(format!(
                                "this kernel has no WireGuard ({why}), and the userspace \
                                 endpoint carries an mtu of at most {USERSPACE_MAX_MTU}, not {}: \
                                 lower mtu, or load the module (`modprobe wireguard`)",
                                self.settings.mtu
                            ));
                        }
                        tracing::info!(
                            "function {function}: this kernel has no WireGuard ({why}); running \
                             the userspace endpoint"
                        );
                        false
                    }
                    Err(CreateError::NoModule(why)) => {
                        return Err(format!(
                            "backend = \"kernel\", but this kernel has no WireGuard ({why}); \
                             load the module (`modprobe wireguard`) or use backend = \"auto\" \
                             or \"userspace\""
                        ));
                    }
                    Err(CreateError::Other(why)) => return Err(why),
                }
            }
        };
        if kernel {
            return device::mark_kernel(chain, function);
        }
        // The userspace endpoint's TUN device is made here, persistent, with its addresses and
        // routes: a kernel object of the chain like the others (it goes with the namespace), not
        // of the process, which attaches to it; a restarted endpoint finds it as it was.
        link::add_tun(&netns, &name)?;
        link::configure(Some(&netns), &name, &self.settings)
    }

    /// The userspace endpoint, unless the kernel's interface runs the function.
    fn process(&self, ctx: &FunctionContext) -> Option<Vec<String>> {
        (!Device::of(&ctx.chain, &ctx.function).is_kernel())
            .then(|| endpoint::args(&ctx.chain, &ctx.function))
    }

    /// Peers (added, removed, changed) and the batched device's receive moderation change in
    /// place: the running endpoint gets them over its control socket and the untouched peers
    /// keep their sessions. The endpoint's own key, port, addresses, MTU, side, backend and
    /// userspace device change with down and up.
    fn change_in_place(&self, old: &dyn FunctionConfig) -> Result<(), String> {
        let Some(old) = old.downcast_ref::<WgConfig>() else {
            return Err("the function was not a WireGuard endpoint".into());
        };
        let (a, b) = (&old.settings, &self.settings);
        let same = a.side == b.side
            && a.private_key_file == b.private_key_file
            // A record from before fingerprints has none: not taken for a new key.
            && (a.private_key_fingerprint.is_empty()
                || a.private_key_fingerprint == b.private_key_fingerprint)
            && a.listen_port == b.listen_port
            && a.address == b.address
            && a.mtu == b.mtu
            && a.backend == b.backend
            && a.userspace == b.userspace;
        if same {
            Ok(())
        } else {
            Err(
                "only its peers and receive_moderation_us change in place; its key, port, \
                 addresses, MTU, side, backend and userspace device change with down and up"
                    .into(),
            )
        }
    }

    fn update_process(&self, ctx: &FunctionContext) -> Option<Result<(), String>> {
        Some(super::peers::update(
            &ctx.chain,
            &ctx.function,
            &self.settings,
        ))
    }

    fn check_in_chain(&self, chain: &ChainAddresses<'_>) -> Vec<SettingError> {
        self.settings.check_in_chain(chain)
    }

    /// Decrypted packets carry the peers' addresses, going away from the tunnel's side.
    fn extra_sources(&self) -> Vec<ExtraSource> {
        let direction = match self.settings.side {
            Side::Ingress => Direction::Forward,
            Side::Egress => Direction::Reverse,
        };
        self.settings
            .peers
            .iter()
            .flat_map(|p| p.allowed_ips.iter())
            .map(|&net| ExtraSource::sent(direction, net))
            .collect()
    }
}

impl FunctionKind for WireGuard {
    fn name(&self) -> &'static str {
        "wireguard"
    }

    fn summary(&self) -> &'static str {
        "WireGuard VPN endpoint (the kernel module where present, else a userspace data plane; works with wg and wireguard-go)"
    }

    fn parse(&self, settings: Settings<'_>) -> Result<Arc<dyn FunctionConfig>, Vec<SettingError>> {
        Ok(Arc::new(WgConfig {
            settings: config::parse(settings)?,
        }))
    }

    fn load(&self, recorded: &RecordedSettings) -> Result<Arc<dyn FunctionConfig>, String> {
        Ok(Arc::new(WgConfig {
            settings: recorded.parse().map_err(|e| e.to_string())?,
        }))
    }

    /// Per peer (labelled by the first 8 characters of its public key, bounded by the
    /// configuration): the last handshake, bytes each way; read from the endpoint's UAPI socket.
    fn metrics(
        &self,
        ctx: &FunctionMetricsContext<'_>,
    ) -> Result<Vec<MetricFamily>, KindMetricsError> {
        let mut up = ctx.gauge(
            "netfn_wireguard_endpoint_up",
            "1 if the function's WireGuard device answers (kernel interface, or the userspace \
             endpoint's UAPI socket), else 0.",
        );
        let peers = Device::of(ctx.chain, ctx.function).peers();
        up.sample_u64(&[], u64::from(peers.is_ok()));
        let mut out = vec![up.build()];
        let Ok(peers) = peers else {
            return Ok(out);
        };
        let mut handshake = ctx.gauge(
            "netfn_wireguard_peer_last_handshake_seconds",
            "Unix time of the peer's last handshake (0: none yet).",
        );
        let mut rx = ctx.counter(
            "netfn_wireguard_peer_receive_bytes_total",
            "Bytes received from the peer (since the endpoint started).",
        );
        let mut tx = ctx.counter(
            "netfn_wireguard_peer_transmit_bytes_total",
            "Bytes sent to the peer (since the endpoint started).",
        );
        let mut fresh = ctx.gauge(
            "netfn_wireguard_peer_session_fresh",
            "1 while the peer's last handshake is under 180 s old (its session can carry data), \
             else 0: the tunnel's own health, beside the chain probe that crosses the function \
             in the clear.",
        );
        let now = netfn_core::unix_time::now();
        for p in &peers {
            let label = [("peer", p.label())];
            handshake.sample_u64(&label, p.last_handshake_unix);
            rx.sample_u64(&label, p.rx_bytes);
            tx.sample_u64(&label, p.tx_bytes);
            fresh.sample_u64(&label, u64::from(p.session_fresh(now)));
        }
        out.extend([handshake.build(), rx.build(), tx.build(), fresh.build()]);
        let netns = names::netns_name(ctx.chain, ctx.function);
        // Per peer, the handshakes at its endpoint (a peer without one has none to count).
        if let Ok(Some(by_endpoint)) = handshakes::read_by_endpoint(&netns) {
            let mut attempts = ctx.counter(
                "netfn_wireguard_peer_handshake_initiations_total",
                "Handshake initiations either way with the peer's current endpoint (a roam to \
                 another endpoint counts that endpoint's, as a restart would; an endpoint idle \
                 for an hour starts again).",
            );
            let mut failures = ctx.gauge(
                "netfn_wireguard_peer_handshakes_unanswered",
                "Of those initiations, the ones without a response (a wrong key on either side, \
                 a peer that is away; one just sent counts until its answer comes).",
            );
            for p in &peers {
                let Some(e) = p.endpoint.filter(|e| e.is_ipv4()) else {
                    continue;
                };
                let h = by_endpoint.get(&e).copied().unwrap_or_default();
                let label = [("peer", p.label())];
                attempts.sample_u64(&label, h.initiations());
                failures.sample_u64(&label, h.unanswered());
            }
            out.extend([attempts.build(), failures.build()]);
        }
        if let Ok(h) = handshakes::read(&netns) {
            out.extend(ctx.counters(&[
                (
                    "netfn_wireguard_handshake_initiations_received_total",
                    "Handshake initiations the endpoint received.",
                    h.initiations_received,
                ),
                (
                    "netfn_wireguard_handshake_responses_sent_total",
                    "Handshake responses the endpoint sent (an initiation received and not \
                     answered is a failed handshake: an unknown or wrong peer key).",
                    h.responses_sent,
                ),
                (
                    "netfn_wireguard_handshake_initiations_sent_total",
                    "Handshake initiations the endpoint sent.",
                    h.initiations_sent,
                ),
                (
                    "netfn_wireguard_handshake_responses_received_total",
                    "Handshake responses the endpoint received.",
                    h.responses_received,
                ),
            ]));
        }
        Ok(out)
    }

    fn status(&self, ctx: &FunctionMetricsContext<'_>) -> Vec<(String, String)> {
        let device = Device::of(ctx.chain, ctx.function);
        let name = device.name().to_string();
        let process = match (&device, processes::running(ctx.chain, ctx.function)) {
            (Device::Kernel { .. }, _) => "kernel (wireguard module)".to_string(),
            // What the running endpoint wrote of itself: its device, TUN offloads and buffers.
            (_, Some(pid)) => format!(
                "userspace, pid {pid}, {}",
                std::fs::read_to_string(endpoint::io_file(ctx.chain, ctx.function)).unwrap_or_else(
                    |_| "device, TUN offloads and socket buffers not said yet".into()
                )
            ),
            (_, None) => "userspace, NOT running".into(),
        };
        let mut rows = vec![
            ("endpoint".to_string(), process),
            (
                "interface".to_string(),
                format!("{name} (`wg show {name}`)"),
            ),
        ];
        rows.push((
            "handshakes".to_string(),
            match handshakes::read(&names::netns_name(ctx.chain, ctx.function)) {
                Ok(h) => format!(
                    "{} initiations received, {} answered; {} sent, {} answered ({} unanswered)",
                    h.initiations_received,
                    h.responses_sent,
                    h.initiations_sent,
                    h.responses_received,
                    h.unanswered()
                ),
                Err(why) => format!("unknown ({why})"),
            },
        ));
        let by_endpoint = handshakes::read_by_endpoint(&names::netns_name(ctx.chain, ctx.function))
            .ok()
            .flatten();
        let settings: Option<WgSettings> = ctx.settings.parse().ok();
        let named = settings
            .iter()
            .flat_map(|s| &s.peers)
            .filter_map(|p| Some((p.public_key.as_str(), p.endpoint_name.as_ref()?.to_string())))
            .collect();
        rows.extend(device::peer_rows(
            device.peers(),
            by_endpoint.as_ref(),
            &named,
        ));
        rows
    }

    /// Keeps the endpoint process running: started again (within a second) when it died
    /// ([`keep_running`]); and where peers' endpoints were written as host names, looks them
    /// up again while those peers have no session ([`reresolve`]).
    fn tasks(&self, ctx: &TaskContext) -> Vec<KindTask> {
        let (chain, function) = (ctx.chain.clone(), ctx.function.clone());
        let reresolve = ctx
            .settings
            .parse::<WgSettings>()
            .ok()
            .and_then(|settings| reresolve::task(ctx, &settings));
        let keep = KindTask {
            name: "endpoint".into(),
            start: Arc::new(move || -> TaskRun {
                let (chain, function) = (chain.clone(), function.clone());
                Box::pin(async move {
                    loop {
                        let (c, f) = (chain.clone(), function.clone());
                        tokio::task::spawn_blocking(move || keep_running(&c, &f))
                            .await
                            .map_err(|e| e.to_string())??;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                })
            }),
        };
        std::iter::once(keep).chain(reresolve).collect()
    }
}

/// Starts the endpoint process of `function` again if it died, unless the chain is in the
/// middle of a change or gone: a CLI holding the chain's lock (`down` stops the process on
/// purpose, `apply` may remove the function) is left to finish, and a chain or function no
/// longer recorded gets no process (it would fail at once and leave its log behind).
fn keep_running(chain: &str, function: &str) -> Result<(), String> {
    // The kernel's interface has no process to keep running.
    if Device::of(chain, function).is_kernel() || processes::running(chain, function).is_some() {
        return Ok(());
    }
    let Some(_lock) = ChainLock::try_existing(chain).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let recorded = state::load(chain)
        .map_err(|e| e.to_string())?
        .is_some_and(|s| s.plan.hops.iter().any(|h| h.name == function));
    if !recorded || processes::running(chain, function).is_some() {
        return Ok(());
    }
    tracing::warn!(
        function = %function,
        "the WireGuard endpoint is not running; starting it again"
    );
    processes::start(chain, function, &endpoint::args(chain, function))
        .map(|_| ())
        .map_err(|e| e.to_string())
}
