//! The batched device's UAPI: `get=1` answered as wireguard-go does (so `wg show` and netfn's
//! status read it: [`super::super::uapi::peers`]) and `set=1` with the peer changes netfn makes
//! ([`super::super::uapi::set_request`]), on the UAPI socket and on netfn's control socket
//! alike. A changed peer keeps its session. A `set=1` may start with netfn's own
//! `receive_moderation_us=` line ([`uapi::RECEIVE_MODERATION_KEY`]): the receive moderation
//! tick changes in place.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::super::config::RECEIVE_MODERATION_MAX_US;
use super::super::uapi;
use super::Batched;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// EINVAL, the errno of a refused `set=1` (as wireguard-go's).
const EINVAL: i32 = 22;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("read the request: {0}")]
    Read(#[from] std::io::Error),
    #[error("no whole request within {} s", READ_TIMEOUT.as_secs())]
    Timeout,
    #[error("the request ended before its blank line")]
    Unended,
    #[error("`{0}` is neither get=1 nor set=1")]
    Unknown(String),
    #[error("{0}")]
    Set(String),
    #[error("{key} {0}: {1}", key = uapi::RECEIVE_MODERATION_KEY)]
    Moderation(String, String),
    #[error(
        "a peer change must give the whole peer (replace_allowed_ips=true, \
         persistent_keepalive_interval, preshared_key), as `netfn apply` does: a partial one \
         (`wg set`) would clear what it does not name"
    )]
    Partial,
}

enum Request {
    Get,
    Set(String),
}

/// Answers one client: reads its request (within 2 s), answers it. The device's receive
/// moderation tick, when the request set it, is given to `moderated` before the answer (what
/// the client reads after it, `netfn status`, is then up to date). Await it to the end (a
/// change cut off half-way would be half made). `Err` only when the answer could not be sent.
pub async fn serve(
    stream: UnixStream,
    device: &Batched,
    moderated: impl FnOnce(Duration),
) -> Result<(), std::io::Error> {
    let (read, mut write) = stream.into_split();
    let request = tokio::time::timeout(READ_TIMEOUT, request(read))
        .await
        .unwrap_or(Err(RequestError::Timeout));
    let answer = match request {
        Ok(Request::Get) => get(device),
        Ok(Request::Set(body)) => match set(device, &body) {
            Ok(tick) => {
                if let Some(tick) = tick {
                    moderated(tick);
                }
                "errno=0\n\n".to_string()
            }
            Err(e) => refused(&e),
        },
        Err(e) => refused(&e),
    };
    write.write_all(answer.as_bytes()).await
}

/// Makes a `set=1` request's changes, all of them or (refused) none; the device's tick after
/// it, if the request gave one.
fn set(device: &Batched, body: &str) -> Result<Option<Duration>, RequestError> {
    let (tick, peers) = moderation(body)?;
    if !whole_peers(peers) {
        return Err(RequestError::Partial);
    }
    let changes = uapi::parse_set(peers).map_err(RequestError::Set)?;
    if let Some(tick) = tick {
        device.set_moderation(tick);
    }
    if !changes.is_empty() {
        device.change(changes);
    }
    Ok(tick.map(|_| device.moderation()))
}

/// The tick a body's leading `receive_moderation_us=` line gives (in range, as the chain file
/// allows), and the body's peer lines after it.
fn moderation(body: &str) -> Result<(Option<Duration>, &str), RequestError> {
    let prefix = format!("{}=", uapi::RECEIVE_MODERATION_KEY);
    let Some(rest) = body.strip_prefix(&prefix) else {
        return Ok((None, body));
    };
    let (value, peers) = rest.split_once('\n').unwrap_or((rest, ""));
    let refused = |why: &str| RequestError::Moderation(value.to_string(), why.to_string());
    let us: u16 = value.parse().map_err(|_| refused("not microseconds"))?;
    if us > RECEIVE_MODERATION_MAX_US {
        return Err(refused(&format!(
            "out of range (0 to {RECEIVE_MODERATION_MAX_US})"
        )));
    }
    Ok((Some(Duration::from_micros(us.into())), peers))
}

/// netfn's client reads the reason (`error=`), `wg` the errno.
fn refused(why: &RequestError) -> String {
    format!("error={why}\nerrno={EINVAL}\n\n")
}

/// Whether every peer a `set=1` body names is removed or given whole (as
/// [`uapi::set_request`] writes it): [`uapi::parse_set`] takes what a line does not say as
/// "none", which would clear it from a partial change.
fn whole_peers(body: &str) -> bool {
    body.split("public_key=").skip(1).all(|peer| {
        let has = |line: &str| peer.lines().any(|l| l.starts_with(line));
        has("remove=true")
            || (has("replace_allowed_ips=true")
                && has("persistent_keepalive_interval=")
                && has("preshared_key="))
    })
}

async fn request(read: tokio::net::unix::OwnedReadHalf) -> Result<Request, RequestError> {
    let mut lines = BufReader::new(read).lines();
    let first = lines.next_line().await?.unwrap_or_default();
    let mut body = String::new();
    while let Some(line) = lines.next_line().await? {
        if line.is_empty() {
            return match first.as_str() {
                "get=1" => Ok(Request::Get),
                "set=1" => Ok(Request::Set(body)),
                _ => Err(RequestError::Unknown(first)),
            };
        }
        body.push_str(&line);
        body.push('\n');
    }
    Err(RequestError::Unended)
}

/// The `get=1` answer, in wireguard-go's order and words (keys in hex).
fn get(device: &Batched) -> String {
    let shared = &device.shared;
    let mut out = format!(
        "private_key={}\nlisten_port={}\n",
        uapi::hex(&shared.keys.private.to_bytes()),
        shared.port
    );
    let now = SystemTime::now();
    for p in &shared.table().peers {
        let slot = p.lock();
        let (since, tx, rx, ..) = slot.tunn.stats();
        let _ = writeln!(out, "public_key={}", uapi::hex(&p.key));
        if let Some(psk) = slot.tunn.preshared_key() {
            let _ = writeln!(out, "preshared_key={}", uapi::hex(&psk));
        }
        out.push_str("protocol_version=1\n");
        if let Some(e) = slot.endpoint {
            let _ = writeln!(out, "endpoint={e}");
        }
        let handshake = since
            .and_then(|d| {
                now.checked_sub(d)?
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
            })
            .unwrap_or_default();
        let _ = write!(
            out,
            "last_handshake_time_sec={}\nlast_handshake_time_nsec={}\ntx_bytes={tx}\n\
             rx_bytes={rx}\npersistent_keepalive_interval={}\n",
            handshake.as_secs(),
            handshake.subsec_nanos(),
            slot.tunn.persistent_keepalive().unwrap_or(0),
        );
        for net in &slot.allowed {
            let _ = writeln!(out, "allowed_ip={net}");
        }
    }
    out.push_str("errno=0\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::super::peers::{PeerChange, PeerSet};
    use super::*;

    #[test]
    fn netfns_changes_are_whole_and_a_partial_one_is_not() {
        let changes = [
            PeerChange::Remove([9; 32]),
            PeerChange::Set(PeerSet {
                public_key: [1; 32],
                allowed_ips: vec![],
                endpoint: None,
                keepalive: 0,
                preshared_key: None,
            }),
        ];
        assert!(whole_peers(&uapi::set_request(&changes)));
        let endpoint_only = format!("public_key={}\nendpoint=192.0.2.1:1\n", uapi::hex(&[1; 32]));
        assert!(!whole_peers(&endpoint_only));
    }

    #[test]
    fn a_leading_moderation_line_gives_the_tick_and_leaves_the_peers() {
        let peers = uapi::set_request(&[PeerChange::Remove([9; 32])]);
        let body = format!("receive_moderation_us=120\n{peers}");
        let (tick, rest) = moderation(&body).unwrap();
        assert_eq!(tick, Some(Duration::from_micros(120)));
        assert_eq!(rest, peers);
        assert_eq!(
            moderation("receive_moderation_us=0\n").unwrap(),
            (Some(Duration::ZERO), "")
        );
        assert_eq!(moderation(&peers).unwrap(), (None, peers.as_str()));
        for bad in ["receive_moderation_us=1001\n", "receive_moderation_us=-1\n"] {
            let refused = moderation(bad).unwrap_err().to_string();
            assert!(
                refused.starts_with("receive_moderation_us "),
                "{bad}: {refused}"
            );
        }
        // Only before the peers: after a public_key it is not a peer change netfn makes.
        let late = format!("{peers}receive_moderation_us=5\n");
        assert_eq!(moderation(&late).unwrap().0, None);
        assert!(uapi::parse_set(&late).is_err());
    }
}
