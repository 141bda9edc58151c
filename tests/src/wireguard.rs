//! WireGuard keys for tests, made by the binary under test (`netfn wg genkey | netfn wg pubkey`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use crate::{TempDir, command, netfn_bin, netfn_ok};

/// `netfn wg genkey` into `dir/name` (mode 600, as key files must be); returns (private,
/// public) base64.
pub fn keypair(dir: &TempDir, name: &str) -> (String, String) {
    let private = netfn_ok(&["wg", "genkey"]).trim().to_string();
    let path = dir.0.join(name);
    std::fs::write(&path, format!("{private}\n")).expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut pubkey = command(&netfn_bin())
        .args(["wg", "pubkey"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("netfn wg pubkey");
    pubkey
        .stdin
        .take()
        .expect("stdin")
        .write_all(private.as_bytes())
        .expect("write");
    let out = pubkey.wait_with_output().expect("pubkey");
    assert!(out.status.success(), "netfn wg pubkey");
    (
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}
