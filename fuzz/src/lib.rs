//! What every fuzz target checks (issue #13, "hostile and broken input"): a chain file's text,
//! parsed and validated the way `netfn validate` does, is answered with success or with located
//! diagnostics, and never with a panic.
//!
//! The targets differ only in how they turn libFuzzer's bytes into a chain file: the whole file
//! (`chain_file`), the body of one function's table (`firewall_settings`,
//! `load_balancer_settings`, `wireguard_settings`), or a firewall's rules file
//! (`firewall_rules_file`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use netfn_core::function::{HostNames, Registry};
use netfn_core::spec::{self, diag::Diagnostics};

/// The kinds of this build, made once per process (the targets run thousands of inputs a
/// second).
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(netfn_functions::registry)
}

/// A chain file's beginning, up to the `kind` line of its one function: the targets that fuzz a
/// kind's settings append their text to it, so it becomes the body of that function's table.
pub fn chain_with_function(kind: &str) -> String {
    format!(
        "[[chain]]\nname = \"fuzz\"\n\n[chain.ingress]\naddress = \"10.1.0.2/24\"\n\n\
         [chain.egress]\naddress = \"10.2.0.2/24\"\n\n[[chain.function]]\nname = \"f1\"\n\
         kind = \"{kind}\"\n"
    )
}

/// A directory of this process's own (pid in the name) under the temp dir, for targets that
/// must put bytes in a file: `cargo xtask fuzz` points TMPDIR into fuzz/target.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("netfn-fuzz-{}", std::process::id()));
        // The harness cannot run without it: failing loudly is right here.
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    })
}

/// Host names as the fuzzers see them: answered from the name alone, never by a resolver (a
/// fuzzer must not send a query). By the name's length: an address (most), a temporary failure
/// (the warning path), a name that does not exist, only IPv6, or loopback.
pub fn host_names() -> HostNames {
    HostNames::from_fn(|host| match host.len() % 8 {
        0 => Err("Temporary failure in name resolution".into()),
        1 => Err("Name or service not known".into()),
        2 => Ok(vec![IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1])]),
        3 => Ok(vec![IpAddr::from([127, 0, 1, 1])]),
        n => Ok(vec![
            IpAddr::from([192, 0, 2, n as u8]),
            IpAddr::from([198, 51, 100, n as u8]),
        ]),
    })
}

/// Parses `text` as the chain file `path` and checks the answer:
/// - `Err`: at least one error, and every diagnostic located (line and column from 1 and, in the
///   chain file or in `other` (a file it names, with its text), inside that text);
/// - `Ok`: its warnings located the same way, and every function's settings survive the chain's
///   record (`up` records them, the agent and `down` load them back).
pub fn check_chain_text(path: &Path, text: &str, other: Option<(&Path, &str)>) {
    match spec::parse_with(path, text, registry(), &host_names()) {
        Ok(file) => {
            check_located(&file.warnings, path, text, other);
            for chain in &file.chains {
                for f in &chain.functions {
                    check_record(&f.kind, f.config.record());
                }
            }
        }
        Err(found) => {
            assert!(found.errors() > 0, "refused without an error:\n{found}");
            check_located(&found, path, text, other);
        }
    }
}

/// Every diagnostic has a position from 1:1, inside the text of its file when that is known.
fn check_located(found: &Diagnostics, path: &Path, text: &str, other: Option<(&Path, &str)>) {
    let chain_lines = line_widths(text);
    let other_lines = other.map(|(p, t)| (p, line_widths(t)));
    for d in found.iter() {
        let at = d.position;
        assert!(at.line >= 1 && at.col >= 1, "unlocated diagnostic: {d}");
        let lines = if d.file == path {
            Some(&chain_lines)
        } else {
            other_lines
                .as_ref()
                .and_then(|(p, lines)| (d.file == *p).then_some(lines))
        };
        if let Some(lines) = lines {
            let inside = lines.get(at.line - 1).is_some_and(|&w| at.col <= w + 1);
            assert!(inside, "diagnostic outside its file's text: {d}");
        }
        // `netfn validate` prints them.
        let _ = d.to_string();
    }
}

/// Characters of each line, lines as `Position` counts them (split at '\n').
fn line_widths(text: &str) -> Vec<usize> {
    text.split('\n').map(|l| l.chars().count()).collect()
}

/// A valid function's recorded settings load back into the same settings.
fn check_record(kind: &str, recorded: netfn_core::function::RecordedSettings) {
    let loaded = registry()
        .load(kind, &recorded)
        .unwrap_or_else(|e| panic!("a valid {kind}'s record does not load: {e}: {recorded:?}"));
    assert_eq!(
        loaded.record(),
        recorded,
        "a valid {kind}'s record changes when loaded back"
    );
}
