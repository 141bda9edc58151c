//! The chain prober: every interval, one UDP datagram from the ingress endpoint through every
//! function to the egress endpoint, echoed back the same way.
//!
//! A responder socket is bound in the egress endpoint's namespace to the egress address and the
//! probe port; the sender is bound in the ingress endpoint's namespace to the ingress address (an
//! ephemeral port). Both are created on a fresh std thread that enters the namespace
//! ([`crate::kernel::netns::run_in`], called from the blocking pool so no tokio worker ever changes
//! namespace), then used from tokio. If the probe port is taken in the egress namespace (another
//! agent probes the same chain), that responder answers our probes as well, and this prober only
//! sends.
//!
//! A probe is `MAGIC | nonce | seq` (24 bytes); the responder echoes only datagrams that start
//! with the magic, and the sender only counts the echo of its current probe.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{Instant, MissedTickBehavior};

use super::TaskError;
use super::board::{Board, ProbeOutcome};
use crate::kernel::netns;
use crate::metrics::{AgentMetrics, ProbeResult, ProbeView};
use crate::plan::ChainPlan;
use crate::plan::names;
pub use crate::plan::names::DEFAULT_PROBE_PORT;

const MAGIC: &[u8; 8] = b"NFPROBE1";
const PROBE_LEN: usize = 24;

/// How to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeConfig {
    pub interval: Duration,
    /// How long to wait for the echo (at most the interval).
    pub timeout: Duration,
    pub port: u16,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            port: DEFAULT_PROBE_PORT,
        }
    }
}

/// Where a chain's probes start and end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub chain: String,
    pub ingress_netns: String,
    pub ingress_addr: Ipv4Addr,
    pub egress_netns: String,
    pub egress_addr: Ipv4Addr,
}

impl ProbeTarget {
    /// From a chain's plan: hop 0 and the last hop, at their addresses on the first and last link.
    pub fn of(plan: &ChainPlan) -> Option<Self> {
        let (first, last) = (plan.links.first()?, plan.links.last()?);
        Some(ProbeTarget {
            chain: plan.chain.clone(),
            ingress_netns: plan.hops.first()?.netns.name.clone(),
            ingress_addr: first.out.address.addr(),
            egress_netns: plan.hops.last()?.netns.name.clone(),
            egress_addr: last.inn.address.addr(),
        })
    }
}

/// The inode of a named namespace (changes when the chain is taken down and brought up again).
fn netns_inode(name: &str) -> Option<u64> {
    std::fs::metadata(names::netns_path(name))
        .ok()
        .map(|m| m.ino())
}

struct Sockets {
    sender: UdpSocket,
    responder: Option<UdpSocket>,
    /// Namespace inodes (ingress, egress) when the sockets were made.
    inodes: (Option<u64>, Option<u64>),
}

/// Creates the sockets in the endpoint namespaces, on threads made for it.
/// How long a new prober waits for the probe port to be released (retries × pause) before it
/// concludes another responder holds it.
const RESPONDER_RETRIES: usize = 20;
const RESPONDER_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

async fn open(target: &ProbeTarget, port: u16) -> Result<Sockets, TaskError> {
    let t = target.clone();
    let (sender, responder, inodes) = tokio::task::spawn_blocking(move || {
        let bind_in =
            |ns: &str, addr: SocketAddrV4| -> Result<io::Result<std::net::UdpSocket>, TaskError> {
                let fd = netns::open(ns)?;
                Ok(netns::run_in(&fd, ns, || {
                    let s = std::net::UdpSocket::bind(addr)?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })?)
            };
        let inodes = (netns_inode(&t.ingress_netns), netns_inode(&t.egress_netns));
        // A prober this agent is letting go of (the chain's record changed, the chain is adopted
        // again) may still hold the port for a moment: its task is cancelled asynchronously.
        let mut bound = bind_in(&t.egress_netns, SocketAddrV4::new(t.egress_addr, port))?;
        for _ in 0..RESPONDER_RETRIES {
            match &bound {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    std::thread::sleep(RESPONDER_RETRY_PAUSE);
                    bound = bind_in(&t.egress_netns, SocketAddrV4::new(t.egress_addr, port))?;
                }
                _ => break,
            }
        }
        let responder = match bound {
            Ok(s) => Some(s),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                tracing::warn!(
                    "probe port {port} is taken in {}; another responder (another agent?) will \
                     echo the probes",
                    t.egress_netns
                );
                None
            }
            Err(source) => {
                return Err(TaskError::Io {
                    what: format!("bind the probe responder in {}", t.egress_netns),
                    source,
                });
            }
        };
        let sender =
            bind_in(&t.ingress_netns, SocketAddrV4::new(t.ingress_addr, 0))?.map_err(|source| {
                TaskError::Io {
                    what: format!("bind the probe sender in {}", t.ingress_netns),
                    source,
                }
            })?;
        Ok::<_, TaskError>((sender, responder, inodes))
    })
    .await
    .map_err(|e| TaskError::Other(format!("probe socket thread: {e}")))??;
    let tokio_socket = |s: std::net::UdpSocket| {
        UdpSocket::from_std(s).map_err(|source| TaskError::Io {
            what: "register a probe socket".into(),
            source,
        })
    };
    Ok(Sockets {
        sender: tokio_socket(sender)?,
        responder: responder.map(tokio_socket).transpose()?,
        inodes,
    })
}

/// Echoes probes back to where they came from, until an error.
async fn respond(socket: UdpSocket) -> Result<(), TaskError> {
    let mut buf = [0u8; 64];
    loop {
        let (n, from) = socket
            .recv_from(&mut buf)
            .await
            .map_err(|source| TaskError::Io {
                what: "receive a probe".into(),
                source,
            })?;
        if n == PROBE_LEN && buf.starts_with(MAGIC) {
            // A lost echo is a failed probe on the sender's side; nothing to do here.
            let _ = socket.send_to(&buf[..n], from).await;
        }
    }
}

fn probe_payload(nonce: u64, seq: u64) -> [u8; PROBE_LEN] {
    let mut p = [0u8; PROBE_LEN];
    p[..8].copy_from_slice(MAGIC);
    p[8..16].copy_from_slice(&nonce.to_be_bytes());
    p[16..].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Sends one probe and waits for its echo.
async fn probe_once(
    sender: &UdpSocket,
    to: SocketAddrV4,
    payload: &[u8; PROBE_LEN],
    timeout: Duration,
) -> (ProbeResult, ProbeOutcome) {
    let sent = Instant::now();
    if let Err(e) = sender.send_to(payload, to).await {
        return (
            ProbeResult::Error,
            ProbeOutcome::Failure(format!("send to {to}: {e}")),
        );
    }
    let deadline = sent + timeout;
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout_at(deadline, sender.recv_from(&mut buf)).await {
            Err(_) => {
                return (
                    ProbeResult::Timeout,
                    ProbeOutcome::Failure(format!("no echo within {} ms", timeout.as_millis())),
                );
            }
            Ok(Err(e)) => {
                return (
                    ProbeResult::Error,
                    ProbeOutcome::Failure(format!("receive: {e}")),
                );
            }
            Ok(Ok((n, _))) if buf[..n] == payload[..] => {
                return (ProbeResult::Success, ProbeOutcome::Success(sent.elapsed()));
            }
            Ok(Ok(_)) => continue, // a late echo of an earlier probe
        }
    }
}

/// The prober task of one chain. Fails (and is restarted by its supervisor) when its sockets
/// break or the chain's endpoint namespaces were replaced.
pub async fn run(
    target: ProbeTarget,
    config: ProbeConfig,
    board: Arc<Board>,
    metrics: AgentMetrics,
) -> Result<(), TaskError> {
    let sockets = open(&target, config.port).await?;
    tracing::info!(
        "probing {} → {}:{} every {} ms",
        target.ingress_addr,
        target.egress_addr,
        config.port,
        config.interval.as_millis()
    );
    let to = SocketAddrV4::new(target.egress_addr, config.port);
    let timeout = config.timeout.min(config.interval);
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    let chain = target.chain.as_str();
    let sender = async {
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for seq in 0u64.. {
            tick.tick().await;
            let payload = probe_payload(nonce, seq);
            let (result, outcome) = probe_once(&sockets.sender, to, &payload, timeout).await;
            metrics
                .probes
                .with_label_values(&[chain, result.as_str()])
                .inc();
            match &outcome {
                ProbeOutcome::Success(rtt) => {
                    // The RTT first: a scrape that sees the success also sees its RTT (one in
                    // between saw success 1 with no RTT sample, on the VM suite's single CPU).
                    metrics
                        .probe_rtt
                        .with_label_values(&[chain])
                        .observe(rtt.as_secs_f64());
                    metrics.probe_success.with_label_values(&[chain]).set(1);
                }
                ProbeOutcome::Failure(why) => {
                    metrics.probe_success.with_label_values(&[chain]).set(0);
                    tracing::debug!("probe {seq} failed: {why}");
                }
            }
            let was_ok = board.probe_ok(chain);
            board.probed(chain, &outcome);
            log_transition(was_ok, &outcome);
            if matches!(outcome, ProbeOutcome::Failure(_)) {
                let now = (
                    netns_inode(&target.ingress_netns),
                    netns_inode(&target.egress_netns),
                );
                if now != sockets.inodes {
                    return Err(TaskError::Other(
                        "the chain's endpoint namespaces were replaced; opening new sockets".into(),
                    ));
                }
            }
        }
        Ok(())
    };
    match sockets.responder {
        Some(responder) => tokio::select! {
            r = sender => r,
            r = respond(responder) => r,
        },
        None => sender.await,
    }
}

fn log_transition(was_ok: Option<bool>, outcome: &ProbeOutcome) {
    match (was_ok, outcome) {
        (Some(true) | None, ProbeOutcome::Failure(why)) => {
            tracing::warn!("chain probe failed: {why}; the chain is down")
        }
        (Some(false), ProbeOutcome::Success(rtt)) => {
            tracing::info!("chain probe succeeded again ({} µs)", rtt.as_micros())
        }
        (None, ProbeOutcome::Success(rtt)) => {
            tracing::info!("first chain probe succeeded ({} µs)", rtt.as_micros())
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_payload_layout() {
        let p = probe_payload(0x0102, 7);
        assert_eq!(&p[..8], MAGIC);
        assert_eq!(u64::from_be_bytes(p[8..16].try_into().unwrap()), 0x0102);
        assert_eq!(u64::from_be_bytes(p[16..].try_into().unwrap()), 7);
    }
}
