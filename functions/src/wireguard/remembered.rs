//! Where the userspace endpoint's peers were last heard from, kept beside the chain's record
//! (`PUBLIC_KEY ADDRESS:PORT` lines, base64 keys): a restarted endpoint can reach them at once,
//! though they roamed from their configured endpoints. Written within a second of a change,
//! removed by `down`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use netfn_core::chain::processes;

use super::keys;

/// The file of `function` in `chain`.
fn path(chain: &str, function: &str) -> PathBuf {
    processes::state_file(chain, function, "endpoints")
}

/// Where the peers were, by base64 public key (none when the file is absent or unreadable).
pub fn read(chain: &str, function: &str) -> HashMap<String, SocketAddr> {
    std::fs::read_to_string(path(chain, function))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (key, addr) = l.split_once(' ')?;
            Some((key.to_string(), addr.parse().ok()?))
        })
        .collect()
}

/// The file's text for peers at `endpoints`.
pub fn text(endpoints: impl IntoIterator<Item = ([u8; 32], SocketAddr)>) -> String {
    endpoints
        .into_iter()
        .map(|(key, addr)| format!("{} {addr}\n", keys::encode(&key)))
        .collect()
}

/// Saves `text` (see [`text`]) when it differs from `saved` (what was saved last), on a blocking
/// thread (nothing here holds up the endpoint's runtime), replacing the file whole.
pub async fn save(chain: &str, function: &str, text: String, saved: &mut String) {
    if text == *saved {
        return;
    }
    let path = path(chain, function);
    let to_write = text.clone();
    let written = tokio::task::spawn_blocking(move || {
        let tmp = path.with_extension("endpoints.tmp");
        std::fs::write(&tmp, to_write).and_then(|()| std::fs::rename(&tmp, &path))
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        *saved = text;
    }
}
