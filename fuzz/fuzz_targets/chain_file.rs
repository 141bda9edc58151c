//! Raw bytes as a whole chain file: TOML syntax, the file's shape, every chain's checks and each
//! function's kind (all three kinds' settings parsers are reachable from here).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use netfn_core::spec::{self, LoadError};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.toml");
    match std::str::from_utf8(data) {
        Ok(text) => netfn_fuzz::check_chain_text(path, text, None),
        Err(_) => {
            // `spec::load` reads the file with read_to_string, so bytes that are not UTF-8 end
            // there, as a read error naming the file; check that on a real file. (Only such
            // bytes may reach `load`: it looks host names up, which a fuzzer must never do;
            // text goes to `check_chain_text`, whose names a table answers.)
            let file = netfn_fuzz::scratch_dir().join("fuzz.toml");
            std::fs::write(&file, data).unwrap_or_else(|e| panic!("cannot write {file:?}: {e}"));
            let loaded = spec::load(&file, netfn_fuzz::registry());
            assert!(
                matches!(loaded, Err(LoadError::Read { .. })),
                "a file that is not UTF-8 was not refused as unreadable: {loaded:?}"
            );
            // What an editor would show of it still parses without a panic.
            netfn_fuzz::check_chain_text(path, &String::from_utf8_lossy(data), None);
        }
    }
});
