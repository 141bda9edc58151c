//! Bytes (as lossy UTF-8) as the body of a load balancer's table in a valid chain: its settings
//! parser (functions/src/lb/config.rs) and its checks against the chain (VIPs, backends) see
//! arbitrary content.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static HEAD: OnceLock<String> = OnceLock::new();
    let head = HEAD.get_or_init(|| netfn_fuzz::chain_with_function("load-balancer"));
    let text = format!("{head}{}", String::from_utf8_lossy(data));
    netfn_fuzz::check_chain_text(Path::new("fuzz.toml"), &text, None);
});
