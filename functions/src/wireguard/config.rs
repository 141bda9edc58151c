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
//!
//! [[chain.function.peer]]
//! public_key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
//! preshared_key_file = "peer1.psk"   # optional
//! allowed_ips = ["10.99.0.2/32"]
//! endpoint = "10.1.0.2:51820"        # optional: the peer's address, else learned from it
//! persistent_keepalive = 25          # optional, seconds
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use netfn_core::function::{ChainAddresses, SettingError, Settings};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::keys;

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

/// The largest MTU the userspace data plane carries: GotaTun's packet buffers are 4,096 bytes,
/// and a larger packet is dropped on its way (4,096-byte pings cross a tunnel with a larger MTU
/// both ways, 4,100-byte ones do not; `tests/tests/wireguard.rs` checks the first).
pub const USERSPACE_MAX_MTU: u16 = 4096;

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
    pub peers: Vec<PeerConf>,
    /// Where the addresses were written (not recorded: only `validate` reports at them).
    #[serde(skip)]
    pub spans: WgSpans,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWg {
    side: Spanned<String>,
    private_key_file: Spanned<String>,
    listen_port: Option<Spanned<i64>>,
    address: Spanned<Vec<Spanned<String>>>,
    mtu: Option<Spanned<i64>>,
    backend: Option<Spanned<String>>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    public_key: Spanned<String>,
    preshared_key_file: Option<Spanned<String>>,
    allowed_ips: Spanned<Vec<Spanned<String>>>,
    endpoint: Option<Spanned<String>>,
    persistent_keepalive: Option<Spanned<i64>>,
}

#[derive(Default)]
struct Sink(Vec<SettingError>);

impl Sink {
    fn error(&mut self, span: Range<usize>, message: String, hint: impl Into<Option<String>>) {
        self.0.push(SettingError::new(span, message, hint.into()));
    }
}

/// Checks a WireGuard endpoint's settings; `Err` holds every problem found.
pub fn parse(settings: Settings<'_>) -> Result<WgSettings, Vec<SettingError>> {
    let base = settings.base_dir().to_path_buf();
    let raw: RawWg = settings.deserialize().map_err(|mut e| {
        e.hint = Some(
            "a wireguard function takes side, private_key_file, listen_port, address, mtu, \
             backend and [[chain.function.peer]] tables (see docs/chain-format.md)"
                .into(),
        );
        vec![e]
    })?;
    let mut sink = Sink::default();
    let side = match raw.side.get_ref().as_str() {
        "ingress" => Side::Ingress,
        "egress" => Side::Egress,
        other => {
            sink.error(
                raw.side.span(),
                format!("unknown side `{other}`"),
                "`side` is the side of the chain the tunnel faces: ingress or egress".to_string(),
            );
            Side::Ingress
        }
    };
    let (private_key_file, private_key_fingerprint) =
        key_file(&mut sink, &base, &raw.private_key_file).unzip();
    let listen_port = match &raw.listen_port {
        None => 51820,
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(p) if p > 0 => p,
            _ => {
                sink.error(
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
    for a in raw.address.get_ref() {
        if let Some(net) = prefix(&mut sink, "address", a) {
            address.push(net);
            spans.address.push(a.span());
        }
    }
    if raw.address.get_ref().is_empty() {
        sink.error(
            raw.address.span(),
            "the endpoint needs a tunnel address".into(),
            "e.g. address = [\"10.99.0.1/24\"]".to_string(),
        );
    }
    let mtu = match &raw.mtu {
        None => 1420,
        Some(m) => match u16::try_from(*m.get_ref()) {
            Ok(m) if (1280..=9000).contains(&m) => m,
            _ => {
                sink.error(
                    m.span(),
                    format!("mtu {} is out of range", m.get_ref()),
                    "use 1280 to 9000 (1420 fits a 1500-byte path)".to_string(),
                );
                1420
            }
        },
    };
    let backend = match raw.backend.as_ref().map(|b| (b, b.get_ref().as_str())) {
        None | Some((_, "auto")) => Backend::Auto,
        Some((_, "userspace")) => Backend::Userspace,
        Some((_, "kernel")) => Backend::Kernel,
        Some((b, other)) => {
            sink.error(
                b.span(),
                format!("unknown backend `{other}`"),
                "use auto, kernel or userspace".to_string(),
            );
            Backend::Auto
        }
    };
    if let Some(m) = &raw.mtu
        && backend == Backend::Userspace
        && mtu > USERSPACE_MAX_MTU
    {
        sink.error(
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
    let mut peers = Vec::new();
    let mut keys_seen = HashSet::new();
    // Every peer's allowed IPs so far, with the peer's index.
    let mut claimed: Vec<(Ipv4Net, usize)> = Vec::new();
    for (index, p) in raw.peer.into_iter().enumerate() {
        let p = p.into_inner();
        if let Err(why) = keys::decode(p.public_key.get_ref()) {
            sink.error(
                p.public_key.span(),
                format!("public_key {why}"),
                "a public key is 44 characters of base64, as `wg pubkey` prints it".to_string(),
            );
        } else if !keys_seen.insert(p.public_key.get_ref().trim().to_string()) {
            sink.error(
                p.public_key.span(),
                "this public key is already a peer".into(),
                "list each peer once; give it several allowed_ips".to_string(),
            );
        }
        let preshared_key_file = p
            .preshared_key_file
            .as_ref()
            .and_then(|f| key_file(&mut sink, &base, f));
        let (preshared_key_file, preshared_key_fingerprint) = preshared_key_file.unzip();
        let mut allowed_ips = Vec::new();
        let mut allowed_spans = Vec::new();
        for a in p.allowed_ips.get_ref() {
            let Some(net) = prefix(&mut sink, "allowed_ips", a) else {
                continue;
            };
            if net != net.trunc() {
                // `ip route` refuses such a prefix; `wg` would quietly drop the host bits.
                sink.error(
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
                sink.error(
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
        if allowed_ips.is_empty() && p.allowed_ips.get_ref().is_empty() {
            sink.error(
                p.allowed_ips.span(),
                "a peer needs allowed_ips".into(),
                "the addresses the peer sends from and is sent to, e.g. [\"10.99.0.2/32\"]"
                    .to_string(),
            );
        }
        let endpoint = p.endpoint.as_ref().and_then(|e| endpoint(&mut sink, e));
        let persistent_keepalive = p.persistent_keepalive.as_ref().and_then(|k| {
            u16::try_from(*k.get_ref())
                .map_err(|_| {
                    sink.error(
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
            public_key: p.public_key.into_inner().trim().to_string(),
            preshared_key_file,
            preshared_key_fingerprint,
            allowed_ips,
            endpoint,
            persistent_keepalive,
        });
    }
    if !sink.0.is_empty() {
        return Err(sink.0);
    }
    Ok(WgSettings {
        side,
        private_key_file: private_key_file.unwrap_or_default(),
        private_key_fingerprint: private_key_fingerprint.unwrap_or_default(),
        listen_port,
        address,
        mtu,
        backend,
        peers,
        spans,
    })
}

/// A key file: resolved against the chain file's directory, readable by its owner only, a key;
/// its path and the key's fingerprint.
fn key_file(sink: &mut Sink, base: &Path, value: &Spanned<String>) -> Option<(PathBuf, String)> {
    let path = base.join(value.get_ref());
    match keys::read_file(&path) {
        Ok(key) => Some((path, keys::fingerprint(&key))),
        Err(e) => {
            sink.error(value.span(), e.to_string(), e.hint().to_string());
            None
        }
    }
}

/// A peer's endpoint: an IPv4 address a host can have, and a port (host names are not
/// resolved: the device takes addresses).
fn endpoint(sink: &mut Sink, value: &Spanned<String>) -> Option<SocketAddr> {
    let text = value.get_ref();
    let example = "e.g. \"192.0.2.7:51820\"";
    let host = text
        .rsplit_once(':')
        .map_or(text.as_str(), |(host, _)| host);
    let (message, hint) = match text.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) if a.port() == 0 => (
            format!("endpoint {a} has port 0, which no peer listens on"),
            format!("write the port the peer listens on (wg's usual is 51820), {example}"),
        ),
        Ok(SocketAddr::V4(a)) => match crate::address::unusable(*a.ip()) {
            None => return Some(SocketAddr::V4(a)),
            Some(why) => (
                format!("endpoint {a} is {why}"),
                format!("write the address the peer is reached at, {example}"),
            ),
        },
        Ok(SocketAddr::V6(_)) => (
            format!("endpoint `{text}` is IPv6: not yet"),
            format!("chains are IPv4 today: write the peer's IPv4 address, {example}"),
        ),
        Err(_)
            if host.chars().any(|c| c.is_ascii_alphabetic())
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') =>
        {
            (
                format!("endpoint `{text}` is a host name: netfn does not resolve names"),
                format!("write the peer's IPv4 address and port, {example}"),
            )
        }
        Err(_) => (
            format!("endpoint `{text}` is not ADDRESS:PORT"),
            example.to_string(),
        ),
    };
    sink.error(value.span(), message, hint);
    None
}

fn prefix(sink: &mut Sink, what: &str, value: &Spanned<String>) -> Option<Ipv4Net> {
    match value.get_ref().parse::<IpNet>() {
        Ok(IpNet::V4(n)) => Some(n),
        Ok(IpNet::V6(_)) => {
            sink.error(
                value.span(),
                format!("{what} {} is IPv6: not yet", value.get_ref()),
                "chains are IPv4 today".to_string(),
            );
            None
        }
        Err(_) => {
            sink.error(
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

    use super::*;

    #[test]
    fn tunnel_addresses_and_allowed_ips_in_the_chains_subnets_are_refused_each_at_its_entry() {
        let dir = std::env::temp_dir().join(format!("netfn-wg-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), keys::generate().unwrap()).unwrap();
        std::fs::set_permissions(dir.join("k"), std::fs::Permissions::from_mode(0o600)).unwrap();
        // Line 10 on: the function's settings.
        let body = "side = \"ingress\"\nprivate_key_file = \"k\"\n\
                    address = [\"10.99.0.1/24\", \"10.1.0.1/24\"]\n\
                    [[chain.function.peer]]\n\
                    public_key = \"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\"\n\
                    allowed_ips = [\"10.99.0.2/32\", \"100.64.0.0/24\"]\n";
        let found: Vec<(usize, usize, String)> =
            crate::test_support::diagnostics(&dir.join("c.toml"), "wireguard", body)
                .into_iter()
                .map(|d| (d.position.line, d.position.col, d.message))
                .collect();
        std::fs::remove_dir_all(&dir).unwrap();
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
        assert_eq!(found.len(), expected.len(), "{found:?}");
        for ((line, col, message), got) in expected.iter().zip(&found) {
            assert_eq!((*line, *col), (got.0, got.1), "{found:?}");
            assert!(got.2.ends_with(message), "{found:?}");
        }
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
            peers: vec![PeerConf {
                public_key: "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=".into(),
                preshared_key_file: None,
                preshared_key_fingerprint: None,
                allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
                endpoint: None,
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
}
