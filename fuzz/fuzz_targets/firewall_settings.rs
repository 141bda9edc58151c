//! Bytes (as lossy UTF-8) as the body of a firewall's table in a valid chain: the firewall's
//! settings parser (functions/src/firewall/config.rs) and its rule compiler (classifier) see
//! arbitrary content; whatever else the text adds (tables, chains) is checked as usual.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static HEAD: OnceLock<String> = OnceLock::new();
    let head = HEAD.get_or_init(|| netfn_fuzz::chain_with_function("firewall"));
    let text = format!("{head}{}", String::from_utf8_lossy(data));
    netfn_fuzz::check_chain_text(Path::new("fuzz.toml"), &text, None);
});
