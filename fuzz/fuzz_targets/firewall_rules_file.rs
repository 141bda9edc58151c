//! Raw bytes as a firewall's rules file (`rules_file = "rules.toml"`, read relative to the chain
//! file's directory): written to a scratch file for each input, so the real read (which refuses
//! bytes that are not UTF-8) and the rules-file parser, with its own lines and columns, run.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// The chain file (its path and text) that names the rules file, and the rules file's path.
struct Files {
    chain: PathBuf,
    text: String,
    rules: PathBuf,
}

fuzz_target!(|data: &[u8]| {
    static FILES: OnceLock<Files> = OnceLock::new();
    let files = FILES.get_or_init(|| {
        let dir = netfn_fuzz::scratch_dir();
        Files {
            chain: dir.join("fuzz.toml"),
            text: netfn_fuzz::chain_with_function("firewall") + "rules_file = \"rules.toml\"\n",
            rules: dir.join("rules.toml"),
        }
    });
    std::fs::write(&files.rules, data)
        .unwrap_or_else(|e| panic!("cannot write {:?}: {e}", files.rules));
    let rules_text = std::str::from_utf8(data).ok();
    netfn_fuzz::check_chain_text(
        &files.chain,
        &files.text,
        rules_text.map(|t| (files.rules.as_path(), t)),
    );
});
