//! A WireGuard function's running device, whichever backend runs it: a kernel interface in the
//! function's namespace (configured over generic netlink, [`super::kernel`]) or the userspace
//! endpoint's TUN (read over its UAPI socket, [`super::uapi`], changed over its control socket,
//! [`super::control`]). Which one runs is decided once, when the function starts, and kept in a
//! file beside its other run-time files (so `status`, metrics and `apply` ask the device that
//! runs, not the one `auto` would pick now).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use netfn_core::chain::processes;
use netfn_core::plan::names;

use super::handshakes::Handshakes;
use super::peers::PeerChange;
use super::uapi::PeerState;
use super::{control, endpoint, kernel, uapi};

/// The function's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Kernel {
        netns: String,
        name: String,
    },
    Userspace {
        name: String,
        /// The endpoint's control socket ([`control`]).
        control: std::path::PathBuf,
    },
}

/// The file that says a function runs the kernel backend (absent: userspace).
fn kernel_marker(chain: &str, function: &str) -> std::path::PathBuf {
    processes::state_file(chain, function, "kernel")
}

/// Records that `function` of `chain` runs the kernel backend.
pub fn mark_kernel(chain: &str, function: &str) -> Result<(), String> {
    let path = kernel_marker(chain, function);
    std::fs::write(&path, b"wireguard module\n")
        .map_err(|e| format!("record the backend in {}: {e}", path.display()))
}

impl Device {
    /// The device of `function` in `chain` (its chain is up).
    pub fn of(chain: &str, function: &str) -> Self {
        let name = endpoint::interface_name(chain, function);
        if kernel_marker(chain, function).exists() {
            Device::Kernel {
                netns: names::netns_name(chain, function),
                name,
            }
        } else {
            Device::Userspace {
                name,
                control: control::socket_path(chain, function),
            }
        }
    }

    pub fn is_kernel(&self) -> bool {
        matches!(self, Device::Kernel { .. })
    }

    /// The interface's name (the same in both backends).
    pub fn name(&self) -> &str {
        match self {
            Device::Kernel { name, .. } | Device::Userspace { name, .. } => name,
        }
    }

    /// The peers as the device reports them.
    pub fn peers(&self) -> Result<Vec<PeerState>, String> {
        match self {
            Device::Kernel { netns, name } => kernel::peers(netns, name),
            Device::Userspace { name, .. } => uapi::peers(name),
        }
    }

    /// Tells the running device `changes`, and the batched device its receive moderation tick
    /// `tick_us` (the kernel's device has none: NAPI moderates its receives).
    pub fn apply(&self, changes: &[PeerChange], tick_us: Option<u16>) -> Result<(), String> {
        match self {
            Device::Kernel { .. } if changes.is_empty() => Ok(()),
            Device::Kernel { netns, name } => kernel::apply(netns, name, changes, None),
            Device::Userspace { name, control } => {
                // In place over netfn's control socket; an endpoint an older netfn started has
                // only the UAPI's (which re-creates changed peers: they handshake again), and so
                // has one whose control socket is gone or answers no more (a file left behind).
                // The batched device serves both with one handler, the tick included.
                match uapi::apply_at(control, changes, tick_us) {
                    Err(e) if e.starts_with(uapi::CONNECT_FAILED) => {
                        uapi::apply(name, changes, tick_us)
                    }
                    done => done,
                }
            }
        }
    }
}

/// `netfn status` rows, one per peer, from what a device answered, with the handshakes counted
/// at each peer's endpoint ([`super::handshakes::read_by_endpoint`]) and the `NAME:PORT` its
/// endpoint was written as in the chain file, if it was (`named`, by public key).
pub fn peer_rows(
    peers: Result<Vec<PeerState>, String>,
    by_endpoint: Option<&BTreeMap<SocketAddr, Handshakes>>,
    named: &BTreeMap<&str, String>,
) -> Vec<(String, String)> {
    match peers {
        Err(e) => vec![("peers".into(), format!("unknown ({e})"))],
        Ok(peers) => peers
            .into_iter()
            .map(|p| {
                let now = netfn_core::unix_time::now();
                let handshake = if p.last_handshake_unix == 0 {
                    "no handshake yet".to_string()
                } else {
                    format!(
                        "handshake {} s ago{}",
                        now.saturating_sub(p.last_handshake_unix),
                        if p.session_fresh(now) {
                            ""
                        } else {
                            " (stale: no session)"
                        }
                    )
                };
                // Counted for IPv4 endpoints, by a netfn that has the sets.
                let at_endpoint = p
                    .endpoint
                    .filter(|e| e.is_ipv4())
                    .zip(by_endpoint)
                    .map(|(e, by_endpoint)| {
                        let h = by_endpoint.get(&e).copied().unwrap_or_default();
                        format!(
                            "; at {e}: {} handshake initiations, {} unanswered",
                            h.initiations(),
                            h.unanswered()
                        )
                    })
                    .unwrap_or_default();
                let named = named
                    .get(p.public_key.as_str())
                    .map(|name| match p.endpoint {
                        Some(_) => format!("; endpoint written as {name}"),
                        None => format!("; endpoint written as {name}, not found yet"),
                    })
                    .unwrap_or_default();
                (
                    format!("peer {}…", p.label()),
                    format!(
                        "{handshake}, {} B received, {} B sent{at_endpoint}{named}",
                        p.rx_bytes, p.tx_bytes
                    ),
                )
            })
            .collect(),
    }
}
