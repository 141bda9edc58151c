//! The WireGuard endpoint's settings, in the spirit of a wg-quick file, checked into
//! [`WgSettings`]. Keys are files (never inline), refused when group or others can read them;
//! the record keeps their paths, never their content.
//!
//! ```toml
//! [[chain.function]]
//! name = "vpn"
//! kind = "wireguard"
//! side = "ingress"                   # the side of the chain the tunnel faces
//! private_key_file = "vpn.key"       # relative to the chain file; mode 600
//! listen_port = 51820
//! address = ["10.99.0.1/24"]         # the endpoint's tunnel addresses
//! mtu = 1420
//! backend = "auto"                   # auto | kernel | userspace
//! userspace = "batched"              # batched | gotatun: which userspace device, where it runs
//! receive_moderation_us = 100        # the batched device's receive tick; 0 = off
//!
//! [[chain.function.peer]]
//! public_key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
//! preshared_key_file = "peer1.psk"   # optional
//! allowed_ips = ["10.99.0.2/32"]
//! endpoint = "10.1.0.2:51820"        # optional: the peer's address or NAME:PORT (looked up
//!                                    # when netfn reads the file), else learned from it
//! persistent_keepalive = 25          # optional, seconds
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use netfn_core::function::{
    ChainAddresses, HostNames, Problems, SettingError, Settings, Want, Warnings, is_host_name,
};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::keys;
use super::named_endpoint::{self, NameError, NamedEndpoint};

/// Which side of the chain the tunnel faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Ingress,
    Egress,
}

/// Which data plane runs the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The kernel module where the kernel has it, else userspace.
    Auto,
    Kernel,
    Userspace,
}

/// Which device runs the endpoint where the userspace data plane does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Userspace {
    /// netfn's own device on GotaTun's WireGuard protocol (`noise::Tunn`): a whole direction
    /// per task, a received or read batch at a time (`super::batched`).
    #[default]
    Batched,
    /// GotaTun's own device (its pipeline of per-packet tasks and channels); slower, kept as a
    /// fallback and as the bench's yardstick.
    Gotatun,
}

impl Userspace {
    /// How `netfn status` names it.
    pub fn describe(self) -> &'static str {
        match self {
            Userspace::Batched => "netfn's batched device on GotaTun's protocol",
            Userspace::Gotatun => "GotaTun's device",
        }
    }
}

/// The largest MTU the userspace data plane carries: GotaTun's packet buffers are 4,096 bytes,
/// and a larger packet is dropped on its way (4,096-byte pings cross a tunnel with a larger MTU
/// both ways, 4,100-byte ones do not; `tests/tests/wireguard.rs` checks the first).
pub const USERSPACE_MAX_MTU: u16 = 4096;

/// The batched device's receive moderation by default, in microseconds (see
/// `super::batched::moderation`, which says why 100).
pub const RECEIVE_MODERATION_US: u16 = 100;

/// The longest receive moderation tick allowed, in microseconds: a datagram waits a tick at
/// most, and a millisecond is already more than a LAN's round trip.
pub const RECEIVE_MODERATION_MAX_US: u16 = 1000;

/// A checked WireGuard endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WgSettings {
    pub side: Side,
    /// Absolute path of the private key file.
    pub private_key_file: PathBuf,
    /// [`keys::fingerprint`] of the private key: a new key in the same file is a change.
    #[serde(default)]
    pub private_key_fingerprint: String,
    pub listen_port: u16,
    pub address: Vec<Ipv4Net>,
    pub mtu: u16,
    pub backend: Backend,
    /// A record from before the choice has none: the batched device.
    #[serde(default)]
    pub userspace: Userspace,
    /// The batched device's receive moderation tick in microseconds, 0 for none. A record from
    /// before the setting has none: the default.
    #[serde(default = "default_receive_moderation")]
    pub receive_moderation_us: u16,
    pub peers: Vec<PeerConf>,
    /// Where the addresses were written (not recorded: only `validate` reports at them).
    #[serde(skip)]
    pub spans: WgSpans,
}

impl WgSettings {
    /// These settings as the chain file wrote them: a peer's endpoint written as a name has
    /// no address (what a name was looked up as is no part of what was written).
    pub fn as_written(&self) -> WgSettings {
        let mut written = self.clone();
        for p in &mut written.peers {
            if p.endpoint_name.is_some() {
                p.endpoint = None;
            }
        }
        written
    }
}

fn default_receive_moderation() -> u16 {
    RECEIVE_MODERATION_US
}

/// Where a WireGuard endpoint's addresses were written in the chain file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WgSpans {
    /// Each tunnel address.
    pub address: Vec<Range<usize>>,
    /// Each allowed IP of each peer.
    pub allowed_ips: Vec<Vec<Range<usize>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConf {
    /// Base64, as `wg` shows it (a public key is no secret).
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key_file: Option<PathBuf>,
    /// [`keys::fingerprint`] of the preshared key: a new key in the same file is a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key_fingerprint: Option<String>,
    pub allowed_ips: Vec<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    /// The `NAME:PORT` the endpoint was written as, if it was: `endpoint` is the address the
    /// name had when the file was read, or none if the resolver could not answer then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_name: Option<NamedEndpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
}

/// What each key takes, for the reports of a value of the wrong type.
const SIDE: Want = Want {
    what: "ingress or egress",
    example: "\"ingress\"",
};
const PRIVATE_KEY_FILE: Want = Want {
    what: "a path to the private key's file",
    example: "\"vpn.key\"",
};
const LISTEN_PORT: Want = Want {
    what: "a port from 1 to 65535",
    example: "51820",
};
const ADDRESSES: Want = Want {
    what: "a list of IPv4 prefixes",
    example: "[\"10.99.0.1/24\"]",
};
const MTU: Want = Want {
    what: "a whole number from 1280 to 9000",
    example: "1420",
};
const BACKEND: Want = Want {
    what: "auto, kernel or userspace",
    example: "\"auto\"",
};
const USERSPACE: Want = Want {
    what: "batched or gotatun",
    example: "\"batched\"",
};
const RECEIVE_MODERATION: Want = Want {
    what: "a whole number of microseconds from 0 (off) to 1000",
    example: "100",
};
const PEERS: Want = Want {
    what: "a list of peer tables",
    example: "[{ public_key = \"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\", allowed_ips = [\"10.99.0.2/32\"] }]",
};
const PUBLIC_KEY: Want = Want {
    what: "a base64 public key",
    example: "\"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\"",
};
const PRESHARED_KEY_FILE: Want = Want {
    what: "a path to the preshared key's file",
    example: "\"peer1.psk\"",
};
const ALLOWED_IPS: Want = Want {
    what: "a list of IPv4 prefixes",
    example: "[\"10.99.0.2/32\"]",
};
const ENDPOINT: Want = Want {
    what: "an IPv4 address or a host name, and a port",
    example: "\"192.0.2.7:51820\"",
};
const KEEPALIVE: Want = Want {
    what: "a whole number of seconds from 0 to 65535",
    example: "25",
};

/// Checks a WireGuard endpoint's settings; `Err` holds every problem found.
pub fn parse(settings: Settings<'_>) -> Result<WgSettings, Vec<SettingError>> {
    let base = settings.base_dir().to_path_buf();
    let host_names = settings.host_names();
    let warnings = settings.warnings();
    let mut t = settings.fields();
    let mut out = Problems::default();
    t.required(
        &[
            ("side", SIDE),
            ("private_key_file", PRIVATE_KEY_FILE),
            ("address", ADDRESSES),
        ],
        &mut out,
    );
    let side = match t.string("side", SIDE, &mut out) {
        None => Side::Ingress,
        Some(s) => match s.get_ref().as_str() {
            "ingress" => Side::Ingress,
            "egress" => Side::Egress,
            other => {
                out.error(
                    s.span(),
                    format!("unknown side `{other}`"),
                    "`side` is the side of the chain the tunnel faces: ingress or egress"
                        .to_string(),
                );
                Side::Ingress
            }
        },
    };
    let (private_key_file, private_key_fingerprint) = t
        .string("private_key_file", PRIVATE_KEY_FILE, &mut out)
        .and_then(|f| key_file(&mut out, &base, &f))
        .unzip();
    let listen_port = match t.integer("listen_port", LISTEN_PORT, &mut out) {
        None => 51820,
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(p) if p > 0 => p,
            _ => {
                out.error(
                    p.span(),
                    format!("listen_port {} is out of range", p.get_ref()),
                    "use a port from 1 to 65535 (WireGuard's is 51820)".to_string(),
                );
                0
            }
        },
    };
    let mut address = Vec::new();
    let mut spans = WgSpans::default();
    if let Some(list) = t.strings("address", ADDRESSES, &mut out) {
        for a in list.get_ref() {
            if let Some(net) = prefix(&mut out, "address", a) {
                address.push(net);
                spans.address.push(a.span());
            }
        }
        if list.get_ref().is_empty() {
            out.error(
                list.span(),
                "the endpoint needs a tunnel address",
                "e.g. address = [\"10.99.0.1/24\"]".to_string(),
            );
        }
    }
    let mtu_value = t.integer("mtu", MTU, &mut out);
    let mtu = match &mtu_value {
        None => 1420,
        Some(m) => match u16::try_from(*m.get_ref()) {
            Ok(m) if (1280..=9000).contains(&m) => m,
            _ => {
                out.error(
                    m.span(),
                    format!("mtu {} is out of range", m.get_ref()),
                    "use 1280 to 9000 (1420 fits a 1500-byte path)".to_string(),
                );
                1420
            }
        },
    };
    let backend_value = t.string("backend", BACKEND, &mut out);
    let backend = match backend_value.as_ref().map(|b| (b, b.get_ref().as_str())) {
        None | Some((_, "auto")) => Backend::Auto,
        Some((_, "userspace")) => Backend::Userspace,
        Some((_, "kernel")) => Backend::Kernel,
        Some((b, other)) => {
            out.error(
                b.span(),
                format!("unknown backend `{other}`"),
                "use auto, kernel or userspace".to_string(),
            );
            Backend::Auto
        }
    };
    let userspace = match t.string("userspace", USERSPACE, &mut out) {
        None => Userspace::Batched,
        Some(u) => match u.get_ref().as_str() {
            "batched" => Userspace::Batched,
            "gotatun" => Userspace::Gotatun,
            other => {
                out.error(
                    u.span(),
                    format!("unknown userspace device `{other}`"),
                    "use batched (netfn's, the default) or gotatun (GotaTun's own, slower)"
                        .to_string(),
                );
                Userspace::Batched
            }
        },
    };
    let moderation_value = t.integer("receive_moderation_us", RECEIVE_MODERATION, &mut out);
    let receive_moderation_us = receive_moderation(&mut out, moderation_value, backend, userspace);
    if let Some(m) = &mtu_value
        && backend == Backend::Userspace
        && mtu > USERSPACE_MAX_MTU
    {
        out.error(
            m.span(),
            format!(
                "mtu {mtu} is more than the userspace data plane carries ({USERSPACE_MAX_MTU})"
            ),
            format!(
                "use at most {USERSPACE_MAX_MTU}, or backend = \"kernel\" where the kernel has \
                 WireGuard"
            ),
        );
    }
    let raw_peers = t.tables("peer", "[[chain.function.peer]]", PEERS, &mut out);
    t.finish(&mut out);
    let mut peers = Vec::new();
    let mut keys_seen = HashSet::new();
    // Every peer's allowed IPs so far, with the peer's index.
    let mut claimed: Vec<(Ipv4Net, usize)> = Vec::new();
    let raw_peers = raw_peers.map(Spanned::into_inner).unwrap_or_default();
    for (index, mut p) in raw_peers.into_iter().enumerate() {
        p.required(
            &[("public_key", PUBLIC_KEY), ("allowed_ips", ALLOWED_IPS)],
            &mut out,
        );
        let public_key = p.string("public_key", PUBLIC_KEY, &mut out);
        let preshared_key_file = p.string("preshared_key_file", PRESHARED_KEY_FILE, &mut out);
        let allowed = p.strings("allowed_ips", ALLOWED_IPS, &mut out);
        let endpoint = p.string("endpoint", ENDPOINT, &mut out);
        let keepalive = p.integer("persistent_keepalive", KEEPALIVE, &mut out);
        p.finish(&mut out);
        if let Some(key) = &public_key {
            if let Err(why) = keys::decode(key.get_ref()) {
                out.error(
                    key.span(),
                    format!("public_key {why}"),
                    "a public key is 44 characters of base64, as `wg pubkey` prints it".to_string(),
                );
            } else if !keys_seen.insert(key.get_ref().trim().to_string()) {
                out.error(
                    key.span(),
                    "this public key is already a peer",
                    "list each peer once; give it several allowed_ips".to_string(),
                );
            }
        }
        let (preshared_key_file, preshared_key_fingerprint) = preshared_key_file
            .and_then(|f| key_file(&mut out, &base, &f))
            .unzip();
        let mut allowed_ips = Vec::new();
        let mut allowed_spans = Vec::new();
        for a in allowed.as_ref().map(Spanned::get_ref).into_iter().flatten() {
            let Some(net) = prefix(&mut out, "allowed_ips", a) else {
                continue;
            };
            if net != net.trunc() {
                // `ip route` refuses such a prefix; `wg` would quietly drop the host bits.
                out.error(
                    a.span(),
                    format!("allowed IP {net} has host bits set"),
                    format!("write the network: \"{}\"", net.trunc()),
                );
                continue;
            }
            // A peer's own prefixes may nest (the wider one covers the other, as in `wg`).
            if let Some((other, _)) = claimed.iter().find(|(o, peer)| {
                *peer != index && (o.contains(&net.network()) || net.contains(&o.network()))
            }) {
                out.error(
                    a.span(),
                    format!("allowed IP {net} overlaps {other}, another peer's"),
                    "a packet must have one peer to go to: make the peers' allowed_ips disjoint"
                        .to_string(),
                );
            }
            claimed.push((net, index));
            allowed_ips.push(net);
            allowed_spans.push(a.span());
        }
        if let Some(list) = &allowed
            && list.get_ref().is_empty()
        {
            out.error(
                list.span(),
                "a peer needs allowed_ips",
                "the addresses the peer sends from and is sent to, e.g. [\"10.99.0.2/32\"]"
                    .to_string(),
            );
        }
        let (endpoint, endpoint_name) = endpoint
            .as_ref()
            .and_then(|e| peer_endpoint(&mut out, &warnings, e, &host_names))
            .unzip();
        let persistent_keepalive = keepalive.as_ref().and_then(|k| {
            u16::try_from(*k.get_ref())
                .map_err(|_| {
                    out.error(
                        k.span(),
                        format!("persistent_keepalive {} is out of range", k.get_ref()),
                        "seconds from 0 (off) to 65535; 25 keeps most NATs open".to_string(),
                    )
                })
                .ok()
                .filter(|&k| k > 0)
        });
        spans.allowed_ips.push(allowed_spans);
        peers.push(PeerConf {
            public_key: public_key.map_or_else(String::new, |k| k.into_inner().trim().to_string()),
            preshared_key_file,
            preshared_key_fingerprint,
            allowed_ips,
            endpoint: endpoint.flatten(),
            endpoint_name: endpoint_name.flatten(),
            persistent_keepalive,
        });
    }
    out.result(WgSettings {
        side,
        private_key_file: private_key_file.unwrap_or_default(),
        private_key_fingerprint: private_key_fingerprint.unwrap_or_default(),
        listen_port,
        address,
        mtu,
        backend,
        userspace,
        receive_moderation_us,
        peers,
        spans,
    })
}

/// `receive_moderation_us`: in range, and only where the batched device may run (a kernel
/// interface has the kernel's NAPI; GotaTun's device wakes for every datagram).
fn receive_moderation(
    out: &mut Problems,
    value: Option<Spanned<i64>>,
    backend: Backend,
    userspace: Userspace,
) -> u16 {
    let Some(value) = value else {
        return RECEIVE_MODERATION_US;
    };
    let elsewhere = match (backend, userspace) {
        (Backend::Kernel, _) => {
            Some("backend = \"kernel\" (the kernel's WireGuard has its own NAPI)")
        }
        (_, Userspace::Gotatun) => Some("userspace = \"gotatun\" (GotaTun's device has none)"),
        _ => None,
    };
    if let Some(elsewhere) = elsewhere {
        out.error(
            value.span(),
            format!(
                "receive_moderation_us is a setting of netfn's batched device, not of {elsewhere}"
            ),
            "remove it, or use the batched userspace device (backend = \"auto\" or \"userspace\", \
             userspace = \"batched\")"
                .to_string(),
        );
        return RECEIVE_MODERATION_US;
    }
    match u16::try_from(*value.get_ref()) {
        Ok(us) if us <= RECEIVE_MODERATION_MAX_US => us,
        _ => {
            out.error(
                value.span(),
                format!("receive_moderation_us {} is out of range", value.get_ref()),
                format!(
                    "use 0 (off: woken for every datagram) to {RECEIVE_MODERATION_MAX_US}; the \
                     default is {RECEIVE_MODERATION_US}"
                ),
            );
            RECEIVE_MODERATION_US
        }
    }
}

/// A key file: resolved against the chain file's directory, readable by its owner only, a key;
/// its path and the key's fingerprint.
fn key_file(out: &mut Problems, base: &Path, value: &Spanned<String>) -> Option<(PathBuf, String)> {
    let path = base.join(value.get_ref());
    match keys::read_file(&path) {
        Ok(key) => Some((path, keys::fingerprint(&key))),
        Err(e) => {
            out.error(value.span(), e.to_string(), e.hint().to_string());
            None
        }
    }
}

/// A peer's endpoint: an IPv4 address a host can have and a port, or a host name and a port.
/// A name is looked up by `names` (the host's resolver where netfn reads the file), and the
/// lowest of the addresses it stands for is the endpoint ([`named_endpoint::lowest`]); if the
/// resolver cannot answer now, a warning says so and the peer has no endpoint until the agent
/// or the next `apply` finds one. `Some((address, name))`.
fn peer_endpoint(
    out: &mut Problems,
    warnings: &Warnings,
    value: &Spanned<String>,
    names: &HostNames,
) -> Option<(Option<SocketAddr>, Option<NamedEndpoint>)> {
    let text = value.get_ref();
    let example = "e.g. \"192.0.2.7:51820\" or \"vpn.example.com:51820\"";
    let port_zero = |shown: &dyn std::fmt::Display| {
        (
            format!("endpoint {shown} has port 0, which no peer listens on"),
            format!("write the port the peer listens on (wg's usual is 51820), {example}"),
        )
    };
    let (message, hint) = match text.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) if a.port() == 0 => port_zero(&a),
        Ok(SocketAddr::V4(a)) => match crate::address::unusable(*a.ip()) {
            None => return Some((Some(SocketAddr::V4(a)), None)),
            Some(why) => (
                format!("endpoint {a} is {why}"),
                format!("write the address the peer is reached at, {example}"),
            ),
        },
        Ok(SocketAddr::V6(_)) => (
            format!("endpoint `{text}` is IPv6: not yet"),
            "chains are IPv4 today: write the peer's IPv4 address or a name with an IPv4 \
             (A) record"
                .to_string(),
        ),
        Err(_) => match text.rsplit_once(':') {
            Some((host, port)) if is_host_name(host) => {
                match port
                    .parse::<u16>()
                    .ok()
                    .filter(|_| port.bytes().all(|b| b.is_ascii_digit()))
                {
                    Some(0) => port_zero(&format!("`{text}`")),
                    Some(port) => {
                        let name = NamedEndpoint {
                            host: host.to_string(),
                            port,
                        };
                        match named_endpoint::lowest(host, port, names) {
                            Ok(at) => return Some((Some(at), Some(name))),
                            // Taken for its form alone (`validate --no-lookup`).
                            Err(NameError::Skipped) => return Some((None, Some(name))),
                            Err(e @ NameError::Unavailable(_)) => {
                                warnings.warn(SettingError::new(
                                    value.span(),
                                    format!("endpoint `{text}`: {e}"),
                                    Some(e.hint()),
                                ));
                                return Some((None, Some(name)));
                            }
                            Err(e) => (format!("endpoint `{text}`: {e}"), e.hint()),
                        }
                    }
                    None => (
                        format!("endpoint `{text}` has no port a peer can listen on"),
                        format!("a port is 1 to 65535, {example}"),
                    ),
                }
            }
            _ if is_host_name(text) => (
                format!("endpoint `{text}` has no port"),
                format!("write NAME:PORT, e.g. \"{text}:51820\" (wg's usual port)"),
            ),
            _ => (
                format!("endpoint `{text}` is not ADDRESS:PORT or NAME:PORT"),
                example.to_string(),
            ),
        },
    };
    out.error(value.span(), message, hint);
    None
}

fn prefix(out: &mut Problems, what: &str, value: &Spanned<String>) -> Option<Ipv4Net> {
    match value.get_ref().parse::<IpNet>() {
        Ok(IpNet::V4(n)) => Some(n),
        Ok(IpNet::V6(_)) => {
            out.error(
                value.span(),
                format!("{what} {} is IPv6: not yet", value.get_ref()),
                "chains are IPv4 today".to_string(),
            );
            None
        }
        Err(_) => {
            out.error(
                value.span(),
                format!("{what} `{}` is not a prefix", value.get_ref()),
                "e.g. \"10.99.0.2/32\"".to_string(),
            );
            None
        }
    }
}

impl WgSettings {
    /// Tunnel addresses and allowed IPs that clash with the chain's own subnets or its transit
    /// pool (their packets would be taken for the chain's), each at its entry.
    pub fn check_in_chain(&self, chain: &ChainAddresses<'_>) -> Vec<SettingError> {
        let mut out = Vec::new();
        let mut check = |what: &str, net: &Ipv4Net, span: &Range<usize>, hint: &str| {
            for (own, subnet) in chain.overlapping(&net.trunc()) {
                out.push(SettingError::new(
                    span.clone(),
                    format!("{what} {net} overlaps the chain's {own} {subnet}"),
                    Some(hint.into()),
                ));
            }
        };
        for (net, span) in self.address.iter().zip(&self.spans.address) {
            check(
                "tunnel address",
                net,
                span,
                "the tunnel's addresses must be their own: pick a tunnel subnet outside the \
                 endpoints' subnets and the transit pool, e.g. \"10.99.0.1/24\"",
            );
        }
        for (peer, spans) in self.peers.iter().zip(&self.spans.allowed_ips) {
            for (net, span) in peer.allowed_ips.iter().zip(spans) {
                check(
                    "allowed IP",
                    net,
                    span,
                    "the tunnel's addresses must be their own: pick allowed_ips outside the \
                     endpoints' subnets",
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use netfn_core::function::RecordedSettings;

    use super::*;

    /// The problems of a wireguard function with `body`, in a chain file whose directory has
    /// a private key `k` (mode 600): (line, column, message).
    fn with_key_file(tag: &str, body: &str) -> Vec<(usize, usize, String)> {
        let dir = std::env::temp_dir().join(format!("netfn-wg-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), keys::generate().unwrap()).unwrap();
        std::fs::set_permissions(dir.join("k"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let found = crate::test_support::diagnostics(&dir.join("c.toml"), "wireguard", body)
            .into_iter()
            .map(|d| (d.position.line, d.position.col, d.message))
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        found
    }

    /// `found` is `expected`: the same positions, each message ending as expected.
    fn assert_problems(found: &[(usize, usize, String)], expected: &[(usize, usize, &str)]) {
        assert_eq!(found.len(), expected.len(), "{found:?}");
        for ((line, col, message), got) in expected.iter().zip(found) {
            assert_eq!((*line, *col), (got.0, got.1), "{found:?}");
            assert!(got.2.ends_with(message), "{found:?}");
        }
    }

    #[test]
    fn tunnel_addresses_and_allowed_ips_in_the_chains_subnets_are_refused_each_at_its_entry() {
        // Line 10 on: the function's settings.
        let body = "side = \"ingress\"\nprivate_key_file = \"k\"\n\
                    address = [\"10.99.0.1/24\", \"10.1.0.1/24\"]\n\
                    [[chain.function.peer]]\n\
                    public_key = \"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\"\n\
                    allowed_ips = [\"10.99.0.2/32\", \"100.64.0.0/24\"]\n";
        let found = with_key_file("chain", body);
        let expected = [
            (
                12,
                28,
                "tunnel address 10.1.0.1/24 overlaps the chain's ingress subnet 10.1.0.0/24",
            ),
            (
                15,
                32,
                "allowed IP 100.64.0.0/24 overlaps the chain's transit pool 100.64.0.0/16",
            ),
        ];
        assert_problems(&found, &expected);
    }

    #[test]
    fn a_key_files_hint_follows_what_is_wrong_with_it() {
        // A new key is the fix for a missing file only: one this user may not read, or a
        // shared one, holds a key that the hint must not make anyone overwrite.
        let dir = std::env::temp_dir().join(format!("netfn-wg-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            std::fs::write(dir.join(name), text).unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        };
        write("garbage.key", "garbage", 0o600);
        write("shared.key", &keys::generate().unwrap(), 0o644);
        let hint = |file: &str| {
            let body = format!(
                "side = \"ingress\"\nprivate_key_file = \"{file}\"\naddress = [\"10.99.0.1/24\"]\n"
            );
            let found = crate::test_support::diagnostics(&dir.join("c.toml"), "wireguard", &body);
            assert_eq!(found.len(), 1, "{found:?}");
            found[0].hint.clone().unwrap_or_default()
        };
        assert!(hint("missing.key").starts_with("make one with `netfn wg genkey"));
        assert!(hint("garbage.key").starts_with("a key file holds one base64 32-byte key"));
        assert!(hint("shared.key").starts_with("keys must be readable by their owner only"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn settings(allowed: &[&str]) -> WgSettings {
        WgSettings {
            side: Side::Ingress,
            private_key_file: "/k".into(),
            private_key_fingerprint: String::new(),
            listen_port: 51820,
            address: vec![],
            mtu: 1420,
            backend: Backend::Auto,
            userspace: Userspace::Batched,
            receive_moderation_us: RECEIVE_MODERATION_US,
            peers: vec![PeerConf {
                public_key: "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=".into(),
                preshared_key_file: None,
                preshared_key_fingerprint: None,
                allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
                endpoint: None,
                endpoint_name: None,
                persistent_keepalive: None,
            }],
            spans: WgSpans {
                address: Vec::new(),
                allowed_ips: vec![vec![0..1; allowed.len()]],
            },
        }
    }

    fn clashes(allowed: &[&str]) -> Vec<String> {
        let chain = ChainAddresses {
            earlier: &[],
            ingress_subnet: "10.1.0.0/24".parse().unwrap(),
            egress_subnet: "10.2.0.0/24".parse().unwrap(),
            endpoints: &[],
            gateways: &[],
            transit: "100.64.0.0/16".parse().unwrap(),
        };
        settings(allowed)
            .check_in_chain(&chain)
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn allowed_ips_inside_or_around_a_chain_subnet_are_refused() {
        assert!(clashes(&["10.99.0.2/32", "10.3.0.0/16"]).is_empty());
        assert_eq!(
            clashes(&["10.1.0.7/32"]),
            ["allowed IP 10.1.0.7/32 overlaps the chain's ingress subnet 10.1.0.0/24"]
        );
        assert_eq!(
            clashes(&["100.64.3.0/24"]),
            ["allowed IP 100.64.3.0/24 overlaps the chain's transit pool 100.64.0.0/16"]
        );
        // A prefix that covers a subnet clashes too (here both).
        assert_eq!(clashes(&["10.0.0.0/8"]).len(), 2);
        assert_eq!(
            clashes(&["0.0.0.0/0"]),
            [
                "allowed IP 0.0.0.0/0 overlaps the chain's ingress subnet 10.1.0.0/24",
                "allowed IP 0.0.0.0/0 overlaps the chain's egress subnet 10.2.0.0/24",
                "allowed IP 0.0.0.0/0 overlaps the chain's transit pool 100.64.0.0/16"
            ]
        );
    }

    #[test]
    fn a_peers_wrong_items_and_missing_keys_are_each_reported_at_their_place() {
        // Serde reported the first of these alone, in its words ("expected a string").
        // Line 10 on: the function's settings.
        let body = "side = \"ingress\"\nprivate_key_file = \"k\"\naddress = [\"10.99.0.1/24\"]\n\
                    [[chain.function.peer]]\nallowed_ips = [\"10.99.0.2/32\", 32]\n\
                    persistent_keepalive = 25\n";
        let found = with_key_file("walk", body);
        let expected = [
            (13, 1, "[[chain.function.peer]] has no `public_key`"),
            (
                14,
                32,
                "`allowed_ips` must be a list of IPv4 prefixes, found 32",
            ),
        ];
        assert_problems(&found, &expected);
    }

    #[test]
    fn a_named_endpoint_is_the_lowest_usable_ipv4_address_the_name_resolves_to() {
        let names = HostNames::from_fn(|host| match host {
            "peer.test" | "peer.test." => {
                Ok(vec!["fd00::7".parse().unwrap(), [10, 9, 0, 7].into()])
            }
            "two.test" => Ok(vec![[127, 0, 1, 1].into(), [10, 9, 0, 8].into()]),
            "loop.test" => Ok(vec![[127, 0, 1, 1].into()]),
            "six.test" => Ok(vec!["fd00::8".parse().unwrap()]),
            "none.test" => Ok(vec![]),
            "down.test" => Err("Temporary failure in name resolution".into()),
            _ => Err("Name or service not known".into()),
        });
        let dir = std::env::temp_dir().join(format!("netfn-wg-named-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), keys::generate().unwrap()).unwrap();
        std::fs::set_permissions(dir.join("k"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let body = |endpoint: &str| {
            format!(
                "side = \"ingress\"\nprivate_key_file = \"k\"\naddress = [\"10.99.0.1/24\"]\n\
                 [[chain.function.peer]]\n\
                 public_key = \"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\"\n\
                 allowed_ips = [\"10.99.0.2/32\"]\nendpoint = \"{endpoint}\"\n"
            )
        };
        let peer = |endpoint: &str, names: &HostNames| {
            crate::test_support::config_with::<super::super::kind::WgConfig>(
                &dir.join("c.toml"),
                "wireguard",
                &body(endpoint),
                names,
            )
            .map(|c| {
                let p = &c.settings.peers[0];
                (
                    p.endpoint.map(|e| e.to_string()),
                    p.endpoint_name.as_ref().map(|n| n.to_string()),
                )
            })
        };
        let problem = |endpoint: &str, names: &HostNames| {
            let found = crate::test_support::diagnostics_with(
                &dir.join("c.toml"),
                "wireguard",
                &body(endpoint),
                names,
            );
            assert_eq!(found.len(), 1, "{endpoint}: {found:?}");
            // The endpoint's value, on the peer's fourth line (the function's table is at 10).
            assert_eq!((found[0].position.line, found[0].position.col), (16, 12));
            (
                found[0].message.clone(),
                found[0].hint.clone().unwrap_or_default(),
            )
        };
        let named = |addr: &str, host: &str| Some((Some(addr.to_string()), Some(host.to_string())));
        assert_eq!(
            peer("peer.test:51820", &names),
            named("10.9.0.7:51820", "peer.test:51820")
        );
        assert_eq!(
            peer("peer.test.:7", &names),
            named("10.9.0.7:7", "peer.test.:7")
        );
        assert_eq!(
            peer("two.test:51820", &names),
            named("10.9.0.8:51820", "two.test:51820")
        );
        // A resolver that cannot answer now: a warning, and the peer starts without an
        // endpoint (the agent and the next apply look the name up again).
        assert_eq!(
            peer("down.test:51820", &names),
            Some((None, Some("down.test:51820".into())))
        );
        let warned = crate::test_support::warnings_with(
            &dir.join("c.toml"),
            "wireguard",
            &body("down.test:51820"),
            &names,
        );
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].message.ends_with(
                "endpoint `down.test:51820`: the name could not be looked up now (Temporary \
                 failure in name resolution)"
            ),
            "{warned:?}"
        );
        assert!(
            warned[0]
                .hint
                .as_deref()
                .is_some_and(|h| h.starts_with("a new peer starts without an endpoint")),
            "{warned:?}"
        );
        // An address is taken as it is, with no name.
        assert_eq!(
            peer("10.9.0.9:51820", &names),
            Some((Some("10.9.0.9:51820".into()), None))
        );
        let (message, hint) = problem("loop.test:51820", &names);
        assert!(
            message.ends_with("loop.test resolves to 127.0.1.1, a loopback address (127.0.0.0/8)"),
            "{message}"
        );
        assert!(hint.contains("write the peer's IPv4 address"), "{hint}");
        let (message, hint) = problem("six.test:51820", &names);
        assert!(
            message.ends_with("resolves to IPv6 addresses only (fd00::8): not yet"),
            "{message}"
        );
        assert!(hint.starts_with("chains are IPv4 today"), "{hint}");
        let (message, _) = problem("none.test:51820", &names);
        assert!(
            message.ends_with("none.test resolves to no address"),
            "{message}"
        );
        let (message, hint) = problem("gone.test:51820", &names);
        assert!(
            message.ends_with(
                "`gone.test:51820`: the name does not resolve (Name or service not known)"
            ),
            "{message}"
        );
        assert!(hint.contains("/etc/resolv.conf"), "{hint}");
        let (message, _) = problem("peer.test:0", &names);
        assert!(message.ends_with("endpoint `peer.test:0` has port 0, which no peer listens on"));
        let (message, _) = problem("peer.test:65536", &names);
        assert!(message.ends_with("`peer.test:65536` has no port a peer can listen on"));
        let (message, _) = problem("peer_test:51820", &names);
        assert!(
            message.ends_with("is not ADDRESS:PORT or NAME:PORT"),
            "{message}"
        );
        // `validate --no-lookup`: a name is taken for its form alone, with no address and no
        // warning, whatever a resolver would say of it; its form is still checked.
        let form_only = HostNames::form_only();
        for name in ["gone.test:51820", "loop.test:7", "down.test:51820"] {
            assert_eq!(peer(name, &form_only), Some((None, Some(name.into()))));
        }
        assert_eq!(form_only.skipped(), 3);
        let quiet = crate::test_support::warnings_with(
            &dir.join("c.toml"),
            "wireguard",
            &body("down.test:51820"),
            &form_only,
        );
        assert!(quiet.is_empty(), "{quiet:?}");
        let (message, _) = problem("peer.test:0", &form_only);
        assert!(message.ends_with("has port 0, which no peer listens on"));
        // Parsing text alone looks nothing up, and says where names are looked up.
        let (message, hint) = problem("peer.test:51820", &HostNames::unresolved());
        assert!(
            message.ends_with("names are not looked up here"),
            "{message}"
        );
        assert!(
            hint.starts_with("netfn looks names up when it reads the chain file"),
            "{hint}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn as_written_a_named_endpoint_has_no_address_and_a_literal_one_keeps_it() {
        let with = |endpoint: &str, named: bool| {
            let mut s = settings(&["10.99.0.2/32"]);
            s.peers[0].endpoint = endpoint.parse().ok();
            s.peers[0].endpoint_name = named.then(|| NamedEndpoint {
                host: "site.test".into(),
                port: 51820,
            });
            RecordedSettings::of(&s.as_written())
        };
        assert_eq!(with("10.9.0.1:51820", true), with("10.9.0.2:51820", true));
        assert_eq!(with("10.9.0.1:51820", true), with("", true));
        assert_ne!(with("10.9.0.1:51820", false), with("10.9.0.2:51820", false));
    }

    #[test]
    fn the_userspace_device_is_batched_unless_gotatun_is_asked_for() {
        let parse = |extra: &str| {
            let dir = std::env::temp_dir().join(format!("netfn-wg-dev-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("k"), keys::generate().unwrap()).unwrap();
            std::fs::set_permissions(dir.join("k"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
            let body = format!(
                "side = \"ingress\"\nprivate_key_file = \"k\"\naddress = [\"10.99.0.1/24\"]\n{extra}"
            );
            let found = crate::test_support::diagnostics(&dir.join("c.toml"), "wireguard", &body);
            let settings = crate::test_support::config::<super::super::kind::WgConfig>(
                &dir.join("c.toml"),
                "wireguard",
                &body,
            )
            .map(|c| c.settings);
            std::fs::remove_dir_all(&dir).unwrap();
            (found, settings)
        };
        let (found, settings) = parse("");
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(settings.map(|s| s.userspace), Some(Userspace::Batched));
        // Receive moderation: 100 µs unless set; 0 turns it off; only the batched device has it.
        let moderation = |extra: &str| {
            let (found, settings) = parse(extra);
            (
                settings.map(|s| s.receive_moderation_us),
                found.iter().map(|f| f.message.clone()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(moderation(""), (Some(100), vec![]));
        assert_eq!(moderation("receive_moderation_us = 0\n"), (Some(0), vec![]));
        assert_eq!(
            moderation("receive_moderation_us = 1000\nbackend = \"userspace\"\n"),
            (Some(1000), vec![])
        );
        let (_, refused) = moderation("receive_moderation_us = 1001\n");
        assert!(
            refused.len() == 1
                && refused[0].ends_with("receive_moderation_us 1001 is out of range"),
            "{refused:?}"
        );
        for other in ["userspace = \"gotatun\"", "backend = \"kernel\""] {
            let (_, refused) = moderation(&format!("receive_moderation_us = 20\n{other}\n"));
            assert!(
                refused.len() == 1
                    && refused[0].contains("a setting of netfn's batched device, not of")
                    && refused[0].contains(other),
                "{other}: {refused:?}"
            );
        }
        let (_, settings) = parse("userspace = \"gotatun\"\n");
        assert_eq!(settings.map(|s| s.userspace), Some(Userspace::Gotatun));
        let (found, _) = parse("userspace = \"boringtun\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].position.line, 13, "{found:?}");
        assert!(
            found[0]
                .message
                .ends_with("unknown userspace device `boringtun`"),
            "{found:?}"
        );
        // A record from before the choice names no device: the batched one.
        let mut recorded = serde_json::to_value(self::settings(&["10.99.0.2/32"])).unwrap();
        recorded.as_object_mut().unwrap().remove("userspace");
        recorded
            .as_object_mut()
            .unwrap()
            .remove("receive_moderation_us");
        let old: WgSettings = serde_json::from_value(recorded).unwrap();
        assert_eq!(old.userspace, Userspace::Batched);
        assert_eq!(old.receive_moderation_us, RECEIVE_MODERATION_US);
    }
}
