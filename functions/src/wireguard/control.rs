//! The userspace endpoint's own control socket, beside its other run-time files: how `netfn
//! apply` changes its peers in place. GotaTun's UAPI server (the one `wg set` talks to) changes
//! a peer by removing it and adding it again, which drops its session: the peer's data is then
//! lost until its own timers make it handshake again (15 s and more). Here a changed peer is
//! modified where it is, so it keeps its session as it does in the kernel's WireGuard and in
//! wireguard-go. The protocol is the UAPI's `set=1` subset that [`super::uapi::set_request`]
//! writes; the answer is `errno=0`, or `error=` and the reason.

use std::path::PathBuf;

use netfn_core::chain::processes;

/// The control socket of the endpoint of `function` in `chain`.
pub fn socket_path(chain: &str, function: &str) -> PathBuf {
    processes::state_file(chain, function, "ctl")
}

#[cfg(feature = "userspace-wireguard")]
pub use serve::{bind, owner_only, serve};

#[cfg(feature = "userspace-wireguard")]
mod serve {
    use std::net::IpAddr;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Duration;

    use gotatun::device::{Device, DeviceTransports, Peer};
    use gotatun::x25519::PublicKey;
    use ipnetwork::IpNetwork;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};

    use super::super::peers::{PeerChange, PeerSet};
    use super::super::uapi;

    /// How long a client may take to send its request.
    const READ_TIMEOUT: Duration = Duration::from_secs(2);

    /// Listens at `path` (a stale socket of an earlier run is replaced), for root only.
    pub fn bind(path: &Path) -> Result<UnixListener, String> {
        let _ = std::fs::remove_file(path);
        owner_only(path, || UnixListener::bind(path))
            .map_err(|e| format!("listen at {}: {e}", path.display()))
    }

    /// Runs `make`, which makes the socket at `path`, under umask 077 (so the socket is never
    /// open to others, not even before the chmod), then makes it mode 600. The process's umask
    /// is its own again after. Called while setup runs alone (no other thread makes files).
    pub fn owner_only<T, E: std::fmt::Display>(
        path: &Path,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, String> {
        use nix::sys::stat::{Mode, umask};
        let before = umask(Mode::from_bits_truncate(0o077));
        let made = make();
        umask(before);
        let made = made.map_err(|e| e.to_string())?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod 600 {}: {e}", path.display()))?;
        Ok(made)
    }

    /// Answers one client that `listener` accepted: reads its request (within 2 s), changes
    /// `device`'s peers in place, says how it went. Await it to the end (not as a branch of a
    /// `select!` that another branch may win: a change cut off half-way would be half made).
    pub async fn serve<T: DeviceTransports>(
        stream: UnixStream,
        device: &Device<T>,
    ) -> Result<(), String> {
        let (read, mut write) = stream.into_split();
        let answer = match tokio::time::timeout(READ_TIMEOUT, request(read)).await {
            Ok(Ok(changes)) => match apply(device, changes).await {
                Ok(()) => "errno=0\n\n".to_string(),
                Err(why) => format!("error={why}\n\n"),
            },
            Ok(Err(why)) => format!("error={why}\n\n"),
            Err(_) => "error=no whole request within 2 s\n\n".to_string(),
        };
        write
            .write_all(answer.as_bytes())
            .await
            .map_err(|e| e.to_string())
    }

    /// The changes a client asks for: `set=1`, its lines, a blank line.
    async fn request(read: tokio::net::unix::OwnedReadHalf) -> Result<Vec<PeerChange>, String> {
        let mut lines = BufReader::new(read).lines();
        let first = lines.next_line().await.map_err(|e| e.to_string())?;
        if first.as_deref() != Some("set=1") {
            return Err("the request does not start with set=1".into());
        }
        let mut body = String::new();
        while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
            if line.is_empty() {
                return uapi::parse_set(&body);
            }
            body.push_str(&line);
            body.push('\n');
        }
        Err("the request ended before its blank line".into())
    }

    /// Makes `changes` under one write lock of the device. A peer that exists is modified where
    /// it is (its session stays); an endpoint not given keeps the one it has (learned from the
    /// peer's handshakes).
    async fn apply<T: DeviceTransports>(
        device: &Device<T>,
        changes: Vec<PeerChange>,
    ) -> Result<(), String> {
        device
            .write(async |d| {
                for change in changes {
                    match change {
                        PeerChange::Remove(key) => {
                            d.remove_peer(&PublicKey::from(key)).await;
                        }
                        PeerChange::Set(p) => {
                            let key = PublicKey::from(p.public_key);
                            let nets = networks(&p);
                            let psk = p.preshared_key.as_ref().map(|k| *k.bytes());
                            let keepalive = (p.keepalive != 0).then_some(p.keepalive);
                            let modified = d
                                .modify_peer(&key, |m| {
                                    m.clear_allowed_ips();
                                    m.add_allowed_ips(nets.iter().copied());
                                    if let Some(e) = p.endpoint {
                                        m.set_endpoint(Some(e));
                                    }
                                    m.set_keepalive(keepalive);
                                    m.set_preshared_key(psk);
                                })
                                .await;
                            if !modified {
                                let mut peer = Peer::new(key);
                                peer.allowed_ips = nets;
                                peer.endpoint = p.endpoint;
                                peer.keepalive = keepalive;
                                peer.preshared_key = psk;
                                d.add_peer(peer);
                            }
                        }
                    }
                }
            })
            .await
            .map_err(|e| format!("change the device's peers: {e}"))
    }

    fn networks(p: &PeerSet) -> Vec<IpNetwork> {
        p.allowed_ips
            .iter()
            .filter_map(|n| IpNetwork::new(IpAddr::V4(n.network()), n.prefix_len()).ok())
            .collect()
    }
}
