//! The userspace endpoint's UAPI socket (the cross-platform protocol `wg` speaks): reading its
//! peers (`get=1`: per peer the last handshake and the bytes each way, for status) and telling
//! it peer changes (`set=1`). Peers are
//! named by the first characters of their public key (a public key is no secret); private keys
//! are never read out, preshared ones only to compare with the configured ones (never shown).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::keys;
use super::peers::{PeerChange, PeerSet};

/// How long a session lives after its handshake (WireGuard's REJECT_AFTER_TIME): a peer whose
/// last handshake is older can send nothing until it handshakes again.
pub const SESSION_LIFETIME_S: u64 = 180;

/// One peer as the endpoint reports it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// Base64, as `wg` prints it.
    pub public_key: String,
    pub last_handshake_unix: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Where the peer was last heard from (or configured).
    pub endpoint: Option<std::net::SocketAddr>,
    pub allowed_ips: Vec<String>,
    pub keepalive: u16,
    /// Compared with the configured one on `netfn apply`; never shown.
    pub preshared_key: Option<keys::PresharedKey>,
}

impl PeerState {
    /// Whether the peer has a session that can carry data at Unix time `now`.
    pub fn session_fresh(&self, now: u64) -> bool {
        self.last_handshake_unix != 0
            && now.saturating_sub(self.last_handshake_unix) < SESSION_LIFETIME_S
    }

    /// The first 8 characters of its public key: how status, metrics and logs name a peer
    /// (bounded labels; a public key is no secret).
    pub fn label(&self) -> &str {
        self.public_key.get(..8).unwrap_or("?")
    }
}

/// Where the UAPI sockets are (one per interface, as every WireGuard UAPI's).
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The UAPI socket of interface `name`.
pub fn socket_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{SOCKET_DIR}/{name}.sock"))
}

/// How an error of a socket nobody answers at (absent, or refusing) starts.
pub const CONNECT_FAILED: &str = "connect ";

fn connect(path: &Path) -> Result<UnixStream, String> {
    let s = UnixStream::connect(path)
        .map_err(|e| format!("{CONNECT_FAILED}{}: {e}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Sends a `set=1` request (its lines, without `set=1` and the blank line) to the socket at
/// `path`; `Err` with the errno it answered (or the reason, from netfn's own endpoint) otherwise.
fn set(path: &Path, lines: &str) -> Result<(), String> {
    let mut s = connect(path)?;
    s.write_all(format!("set=1\n{lines}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    for line in BufReader::new(s).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(why) = line.strip_prefix("error=") {
            return Err(format!("the endpoint refused the change: {why}"));
        }
        if let Some(errno) = line.strip_prefix("errno=") {
            return if errno == "0" {
                Ok(())
            } else {
                Err(format!("the endpoint refused the change (errno {errno})"))
            };
        }
    }
    Err("the endpoint did not answer".into())
}

/// Tells the endpoint behind interface `name` about `changes` and `tick_us` (one `set=1`
/// request on its UAPI socket; see [`apply_at`]).
pub fn apply(name: &str, changes: &[PeerChange], tick_us: Option<u16>) -> Result<(), String> {
    apply_at(&socket_path(name), changes, tick_us)
}

/// Tells the endpoint serving the socket at `path` (the UAPI's, or netfn's own control socket:
/// [`super::control`]) about `changes` and, netfn's batched device only (others refuse it),
/// its receive moderation tick `tick_us`: one request, made whole or refused whole.
pub fn apply_at(path: &Path, changes: &[PeerChange], tick_us: Option<u16>) -> Result<(), String> {
    let tick = tick_us
        .map(|us| format!("{RECEIVE_MODERATION_KEY}={us}\n"))
        .unwrap_or_default();
    set(path, &format!("{tick}{}", set_request(changes)))
}

/// netfn's own `set=1` key, for the batched device's receive moderation tick in microseconds
/// (not the UAPI's: only netfn's batched device takes it, before any peer).
pub const RECEIVE_MODERATION_KEY: &str = "receive_moderation_us";

/// The lines of a `set=1` request that makes `changes`.
pub fn set_request(changes: &[PeerChange]) -> String {
    let mut request = String::new();
    for change in changes {
        match change {
            PeerChange::Remove(key) => {
                request.push_str(&format!("public_key={}\nremove=true\n", hex(key)));
            }
            PeerChange::Set(p) => {
                request.push_str(&format!(
                    "public_key={}\nreplace_allowed_ips=true\n",
                    hex(&p.public_key)
                ));
                for net in &p.allowed_ips {
                    request.push_str(&format!("allowed_ip={net}\n"));
                }
                if let Some(e) = p.endpoint {
                    request.push_str(&format!("endpoint={e}\n"));
                }
                request.push_str(&format!("persistent_keepalive_interval={}\n", p.keepalive));
                // Always said: zeros remove a key the file no longer names.
                request.push_str(&format!(
                    "preshared_key={}\n",
                    hex(&keys::preshared_bytes(p.preshared_key.as_ref()))
                ));
            }
        }
    }
    request
}

/// The changes a `set=1` request made by [`set_request`] says (its lines after `set=1`); other
/// keys are refused: netfn's control socket takes peer changes only.
pub fn parse_set(lines: &str) -> Result<Vec<PeerChange>, String> {
    let mut out: Vec<PeerChange> = Vec::new();
    for line in lines.lines().filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("`{line}` is not KEY=VALUE"))?;
        let bad = |what: &str| format!("{k}: {what}");
        if k == "public_key" {
            let key = hex_bytes(v).ok_or_else(|| bad("not a key in hex"))?;
            out.push(PeerChange::Set(PeerSet {
                public_key: key,
                allowed_ips: Vec::new(),
                endpoint: None,
                keepalive: 0,
                preshared_key: None,
            }));
            continue;
        }
        let Some(last) = out.last_mut() else {
            return Err(format!("{k} before any public_key"));
        };
        match (k, last) {
            ("remove", last) if v == "true" => {
                let key = match last {
                    PeerChange::Set(p) => p.public_key,
                    PeerChange::Remove(key) => *key,
                };
                *last = PeerChange::Remove(key);
            }
            ("replace_allowed_ips", PeerChange::Set(_)) if v == "true" => {}
            ("allowed_ip", PeerChange::Set(p)) => p
                .allowed_ips
                .push(v.parse().map_err(|_| bad("not an IPv4 network"))?),
            ("endpoint", PeerChange::Set(p)) => {
                p.endpoint = Some(v.parse().map_err(|_| bad("not ADDRESS:PORT"))?);
            }
            ("persistent_keepalive_interval", PeerChange::Set(p)) => {
                p.keepalive = v.parse().map_err(|_| bad("not seconds"))?;
            }
            ("preshared_key", PeerChange::Set(p)) => {
                p.preshared_key =
                    keys::PresharedKey::new(hex_bytes(v).ok_or_else(|| bad("not a key in hex"))?);
            }
            _ => return Err(format!("`{k}` is not a peer change netfn makes")),
        }
    }
    Ok(out)
}

/// A base64 key as the UAPI's hex.
pub fn hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asks the endpoint behind interface `name` for its peers.
pub fn peers(name: &str) -> Result<Vec<PeerState>, String> {
    let mut s = connect(&socket_path(name))?;
    s.write_all(b"get=1\n\n").map_err(|e| e.to_string())?;
    let mut out: Vec<PeerState> = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.is_empty() {
            break;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "public_key" => out.push(PeerState {
                public_key: hex_key(v).unwrap_or_default(),
                ..PeerState::default()
            }),
            "last_handshake_time_sec" => {
                if let Some(p) = out.last_mut() {
                    p.last_handshake_unix = v.parse().unwrap_or(0);
                }
            }
            "allowed_ip" => {
                if let Some(p) = out.last_mut() {
                    p.allowed_ips.push(v.to_string());
                }
            }
            "preshared_key" => {
                if let Some(p) = out.last_mut() {
                    p.preshared_key = hex_bytes(v).and_then(keys::PresharedKey::new);
                }
            }
            "persistent_keepalive_interval" => {
                if let Some(p) = out.last_mut() {
                    p.keepalive = v.parse().unwrap_or(0);
                }
            }
            "endpoint" => {
                if let Some(p) = out.last_mut() {
                    p.endpoint = v.parse().ok();
                }
            }
            "rx_bytes" => {
                if let Some(p) = out.last_mut() {
                    p.rx_bytes = v.parse().unwrap_or(0);
                }
            }
            "tx_bytes" => {
                if let Some(p) = out.last_mut() {
                    p.tx_bytes = v.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A key in the UAPI's hex, as base64.
fn hex_key(hex: &str) -> Option<String> {
    Some(keys::encode(&hex_bytes(hex)?))
}

/// A key in the UAPI's hex.
fn hex_bytes(hex: &str) -> Option<[u8; 32]> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_request_reads_back_as_its_changes() {
        let changes = vec![
            PeerChange::Remove([9; 32]),
            PeerChange::Set(PeerSet {
                public_key: [1; 32],
                allowed_ips: vec![
                    "10.0.0.1/32".parse().unwrap(),
                    "10.1.0.0/16".parse().unwrap(),
                ],
                endpoint: Some("192.0.2.1:51820".parse().unwrap()),
                keepalive: 25,
                preshared_key: keys::PresharedKey::new([7; 32]),
            }),
            PeerChange::Set(PeerSet {
                public_key: [2; 32],
                allowed_ips: vec![],
                endpoint: None,
                keepalive: 0,
                preshared_key: None,
            }),
        ];
        let request = set_request(&changes);
        assert!(request.contains(&format!("preshared_key={}\n", "0".repeat(64))));
        assert_eq!(parse_set(&request).unwrap(), changes);
    }

    #[test]
    fn a_request_beyond_peer_changes_is_refused() {
        for bad in [
            "private_key=00\n",
            &format!("public_key={}\nlisten_port=1\n", hex(&[1; 32])),
            "public_key=zz\n",
            &format!("public_key={}\nallowed_ip=fe80::/64\n", hex(&[1; 32])),
        ] {
            assert!(parse_set(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_preshared_key_never_shows_in_debug() {
        let key = keys::PresharedKey::new([0xab; 32]).unwrap();
        assert!(!format!("{key:?}").contains("ab"));
        assert_eq!(keys::PresharedKey::new([0; 32]), None);
    }
}
