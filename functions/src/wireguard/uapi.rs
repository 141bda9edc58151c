//! The userspace endpoint's UAPI socket (the cross-platform protocol `wg` speaks): reading its
//! peers (`get=1`: per peer the last handshake and the bytes each way, for status) and telling
//! it peer changes (`set=1`). Peers are
//! named by the first characters of their public key (a public key is no secret); private and
//! preshared keys are never read out.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::keys;
use super::peers::PeerChange;

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
}

impl PeerState {
    /// Whether the peer has a session that can carry data at Unix time `now`.
    pub fn session_fresh(&self, now: u64) -> bool {
        self.last_handshake_unix != 0
            && now.saturating_sub(self.last_handshake_unix) < SESSION_LIFETIME_S
    }
}

fn connect(name: &str) -> Result<UnixStream, String> {
    let path = format!("/var/run/wireguard/{name}.sock");
    let s = UnixStream::connect(&path).map_err(|e| format!("connect {path}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Sends a `set=1` request (its lines, without `set=1` and the blank line) to the endpoint
/// behind interface `name`; `Err` with the errno it answered otherwise.
fn set(name: &str, lines: &str) -> Result<(), String> {
    let mut s = connect(name)?;
    s.write_all(format!("set=1\n{lines}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    for line in BufReader::new(s).lines() {
        let line = line.map_err(|e| e.to_string())?;
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

/// Tells the endpoint behind interface `name` about `changes` (one `set=1` request).
pub fn apply(name: &str, changes: &[PeerChange]) -> Result<(), String> {
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
                if let Some(psk) = &p.preshared_key {
                    request.push_str(&format!("preshared_key={}\n", hex(psk)));
                }
            }
        }
    }
    set(name, &request)
}

/// A base64 key as the UAPI's hex.
pub fn hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asks the endpoint behind interface `name` for its peers.
pub fn peers(name: &str) -> Result<Vec<PeerState>, String> {
    let mut s = connect(name)?;
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
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    Some(keys::encode(&<[u8; 32]>::try_from(bytes.as_slice()).ok()?))
}
