//! WireGuard for tests: keys made by the binary under test (`netfn wg genkey | netfn wg
//! pubkey`), and the userspace endpoint's process (its pid file, SIGKILL).

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

/// The pid of the userspace endpoint of `function` in `chain`, from the pid file `up` (or the
/// agent) wrote; `None` while there is none.
pub fn endpoint_pid(chain: &str, function: &str) -> Option<i32> {
    netfn_core::chain::processes::recorded_pid(chain, function)
}

/// SIGKILLs the running userspace endpoint of `function` in `chain`; returns the pid it had.
pub fn kill_endpoint(chain: &str, function: &str) -> i32 {
    let pid = endpoint_pid(chain, function)
        .unwrap_or_else(|| panic!("no pid of {chain}'s endpoint {function}"));
    // SAFETY: SIGKILL of the endpoint the calling test's chain started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    pid
}

/// What a failed tunnel test shows of the tunnel: the handshakes and transfer that both sides
/// report (`wg show`; never the keys), netfn's status of the chain, and the endpoint's log
/// (`function`'s process log under /run/netfn/chains).
pub fn tunnel_report(chain: &str, function: &str, peer_ns: &str, peer: &str) -> String {
    let show = |out: std::io::Result<std::process::Output>| match out {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("({e})\n"),
    };
    let mut report = String::new();
    for what in ["latest-handshakes", "transfer", "endpoints"] {
        report += &format!(
            "peer {peer} {what}: {}",
            show(
                std::process::Command::new("ip")
                    .args(["netns", "exec", peer_ns, "wg", "show", peer, what])
                    .output()
            )
        );
    }
    report += &show(command(&netfn_bin()).args(["status", chain]).output());
    let log = format!("/run/netfn/chains/{chain}.{function}.log");
    report += &format!(
        "{log}:\n{}",
        std::fs::read_to_string(&log).unwrap_or_else(|e| format!("({e})"))
    );
    report
}
