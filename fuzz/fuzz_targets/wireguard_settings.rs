//! Bytes (as lossy UTF-8) as the body of a WireGuard endpoint's table in a valid chain: its
//! settings parser (functions/src/wireguard/config.rs) sees arbitrary content. The chain file
//! lives in the scratch dir beside a private key `vpn.key` and a preshared key `peer1.psk`
//! (mode 600, as the kind demands), so inputs that name them get past the key checks.

#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// RFC 7748's example private keys: valid WireGuard keys that guard nothing.
const KEYS: [(&str, &str); 2] = [
    ("vpn.key", "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n"),
    (
        "peer1.psk",
        "XasIfmJKikt54X+Lg4AO5m87sSkmGLb9HC+LJ/+I4Os=\n",
    ),
];

/// The chain file's path and its text up to the function's `kind` line.
struct Chain {
    path: PathBuf,
    head: String,
}

fuzz_target!(|data: &[u8]| {
    static CHAIN: OnceLock<Chain> = OnceLock::new();
    let chain = CHAIN.get_or_init(|| {
        let dir = netfn_fuzz::scratch_dir();
        for (name, key) in KEYS {
            let path = dir.join(name);
            std::fs::write(&path, key)
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                })
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        Chain {
            path: dir.join("fuzz.toml"),
            head: netfn_fuzz::chain_with_function("wireguard"),
        }
    });
    let text = format!("{}{}", chain.head, String::from_utf8_lossy(data));
    netfn_fuzz::check_chain_text(&chain.path, &text, None);
});
