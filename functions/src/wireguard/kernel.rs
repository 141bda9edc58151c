//! The kernel backend: a WireGuard interface of the kernel's module in the function's
//! namespace, made with iproute2 (`ip link add … type wireguard`, which loads the module) and
//! configured over generic netlink ([`super::genl`]) from a thread inside that namespace. The
//! private key goes from its file to the kernel and nowhere else. The interface goes with the
//! namespace; there is no process to watch.

use std::net::IpAddr;

use netfn_core::kernel::netns;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardDeviceFlags, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};

use super::config::WgSettings;
use super::genl::Genl;
use super::peers::{self, PeerChange};
use super::uapi::PeerState;
use super::{keys, link};

/// Why the kernel backend could not start.
#[derive(Debug)]
pub enum CreateError {
    /// This kernel has no WireGuard (`auto` then runs the userspace endpoint).
    NoModule(String),
    Other(String),
}

/// Creates and configures the interface `name` in namespace `netns` with all of `s`.
pub fn create(netns: &str, name: &str, s: &WgSettings) -> Result<(), CreateError> {
    if let Err(e) = link::ip(
        Some(netns),
        &["link", "add", "name", name, "type", "wireguard"],
    ) {
        // iproute2 says "Unknown device type" (or "Not supported") when the kernel cannot make
        // one: no module, or none it may load.
        return Err(
            if e.contains("Unknown device type")
                || e.contains("not supported")
                || e.contains("Not supported")
            {
                CreateError::NoModule(e)
            } else {
                CreateError::Other(e)
            },
        );
    }
    let private = keys::read_file(&s.private_key_file).map_err(|e| CreateError::Other(e.into()))?;
    let all = peers::all(s).map_err(CreateError::Other)?;
    apply(netns, name, &all, Some((private, s.listen_port))).map_err(CreateError::Other)?;
    link::configure(Some(netns), name, s).map_err(CreateError::Other)
}

/// Sets `changes` on the interface (with `device`: its private key and listen port, and the
/// peers replace any it had).
pub fn apply(
    netns: &str,
    name: &str,
    changes: &[PeerChange],
    device: Option<([u8; 32], u16)>,
) -> Result<(), String> {
    let mut attributes = vec![WireguardAttribute::IfName(name.into())];
    if let Some((key, port)) = device {
        attributes.extend([
            WireguardAttribute::PrivateKey(key),
            WireguardAttribute::ListenPort(port),
            WireguardAttribute::Flags(WireguardDeviceFlags::ReplacePeers),
        ]);
    }
    attributes.push(WireguardAttribute::Peers(
        changes.iter().map(peer_attributes).collect(),
    ));
    in_netns(netns, move |genl| genl.set(attributes))
        .map_err(|e| format!("configure the WireGuard interface {name}: {e}"))
}

fn peer_attributes(change: &PeerChange) -> WireguardPeer {
    match change {
        PeerChange::Remove(key) => WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey(*key),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
        ]),
        PeerChange::Set(p) => {
            let mut attrs = vec![
                WireguardPeerAttribute::PublicKey(p.public_key),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
                WireguardPeerAttribute::PersistentKeepalive(p.keepalive),
                WireguardPeerAttribute::AllowedIps(
                    p.allowed_ips
                        .iter()
                        .map(|net| {
                            WireguardAllowedIp(vec![
                                WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                                WireguardAllowedIpAttr::IpAddr(IpAddr::V4(net.network())),
                                WireguardAllowedIpAttr::Cidr(net.prefix_len()),
                            ])
                        })
                        .collect(),
                ),
            ];
            if let Some(e) = p.endpoint {
                attrs.push(WireguardPeerAttribute::Endpoint(e));
            }
            // Always said: zeros remove a key the file no longer names.
            attrs.push(WireguardPeerAttribute::PresharedKey(keys::preshared_bytes(
                p.preshared_key.as_ref(),
            )));
            WireguardPeer(attrs)
        }
    }
}

/// The interface's peers (their preshared keys only to compare; never shown).
pub fn peers(netns: &str, name: &str) -> Result<Vec<PeerState>, String> {
    let name_owned = name.to_string();
    let parts = in_netns(netns, move |genl| genl.get(&name_owned))
        .map_err(|e| format!("read the WireGuard interface {name}: {e}"))?;
    let mut out: Vec<PeerState> = Vec::new();
    for attributes in parts {
        for a in attributes {
            let WireguardAttribute::Peers(list) = a else {
                continue;
            };
            for peer in list {
                let mut state = PeerState::default();
                for pa in peer.0 {
                    match pa {
                        WireguardPeerAttribute::PublicKey(k) => state.public_key = keys::encode(&k),
                        WireguardPeerAttribute::Endpoint(e) => state.endpoint = Some(e),
                        WireguardPeerAttribute::PersistentKeepalive(s) => state.keepalive = s,
                        WireguardPeerAttribute::LastHandshake(t) => {
                            state.last_handshake_unix = u64::try_from(t.seconds).unwrap_or(0);
                        }
                        WireguardPeerAttribute::PresharedKey(k) => {
                            state.preshared_key = keys::PresharedKey::new(k);
                        }
                        WireguardPeerAttribute::RxBytes(n) => state.rx_bytes = n,
                        WireguardPeerAttribute::TxBytes(n) => state.tx_bytes = n,
                        WireguardPeerAttribute::AllowedIps(ips) => {
                            state.allowed_ips.extend(ips.iter().filter_map(allowed_ip));
                        }
                        _ => {}
                    }
                }
                // A peer with many allowed IPs continues in the next message.
                match out.iter_mut().find(|p| p.public_key == state.public_key) {
                    Some(p) => p.allowed_ips.extend(state.allowed_ips),
                    None => out.push(state),
                }
            }
        }
    }
    Ok(out)
}

fn allowed_ip(ip: &WireguardAllowedIp) -> Option<String> {
    let addr = ip.0.iter().find_map(|a| match a {
        WireguardAllowedIpAttr::IpAddr(a) => Some(*a),
        _ => None,
    })?;
    let cidr = ip.0.iter().find_map(|a| match a {
        WireguardAllowedIpAttr::Cidr(c) => Some(*c),
        _ => None,
    })?;
    Some(format!("{addr}/{cidr}"))
}

/// Runs `f` with a generic netlink socket opened inside namespace `netns`.
fn in_netns<T: Send>(
    netns: &str,
    f: impl FnOnce(&mut Genl) -> Result<T, String> + Send,
) -> Result<T, String> {
    let fd = netns::open(netns).map_err(|e| e.to_string())?;
    netns::run_in(&fd, netns, || Genl::open().and_then(|mut g| f(&mut g)))
        .map_err(|e| e.to_string())?
}
