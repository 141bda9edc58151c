//! The read-only verbs (graph, kinds, features), and arguments refused before anything is touched.

use std::path::Path;

use netfn_tests::{netfn, netfn_ok};

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn graph_draws_every_hop_and_link_in_dot_and_mermaid() {
    let dot = netfn_ok(&["graph", &example("minimal.toml"), "--format", "dot"]);
    assert!(dot.starts_with("digraph netfn {"), "{dot}");
    for node in [
        "minimal_ingress",
        "minimal_fw1",
        "minimal_fw2",
        "minimal_egress",
    ] {
        assert!(
            dot.contains(&format!("{node} [label=")),
            "no node {node} in:\n{dot}"
        );
    }
    assert_eq!(
        dot.matches(" -> ").count(),
        3,
        "three links expected:\n{dot}"
    );

    let mermaid = netfn_ok(&["graph", &example("minimal.toml"), "--format", "mermaid"]);
    assert!(mermaid.starts_with("flowchart LR"), "{mermaid}");
    assert_eq!(mermaid.matches(" <-->").count(), 3, "{mermaid}");
}

#[test]
fn kinds_lists_forward() {
    let kinds = netfn_ok(&["kinds"]);
    assert!(kinds.lines().any(|l| l.starts_with("forward ")), "{kinds}");
}

#[test]
fn features_reports_the_running_kernel() {
    let json: serde_json::Value =
        serde_json::from_str(&netfn_ok(&["features", "--json"])).expect("json");
    let names: Vec<&str> = json
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    for f in [
        "btf",
        "tc-redirect-peer",
        "tcx",
        "xdp-veth",
        "wireguard-kernel",
    ] {
        assert!(names.contains(&f), "no feature {f} in {names:?}");
    }
}

/// A chain name is checked before it becomes part of a path under /run/netfn: `../x` and `a/b`
/// are refused with the reason, for every command that takes one.
#[test]
fn chain_names_that_are_paths_are_refused() {
    for args in [
        &["down", "../x"][..],
        &["down", "a/b"],
        &["status", "../../etc"],
        &["logs", "../x"],
        &["exec", "../x", "f", "--", "true"],
    ] {
        let out = netfn(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains("is not a chain name: it contains"),
            "{args:?}: {stderr}"
        );
    }
}

/// A chain file that is a directory, missing, or huge: one clear line, the OS error once.
#[test]
fn unreadable_chain_files_get_one_clear_line() {
    let dir = std::env::temp_dir();
    let out = netfn(&["validate", &dir.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("it is a directory"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let out = netfn(&["validate", "/nonexistent/netfn-chain.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );

    let huge = netfn_tests::TempDir::new("huge");
    let path = huge.0.join("huge.toml");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(netfn_core::spec::MAX_FILE_BYTES + 1)
        .expect("grow");
    let out = netfn(&["validate", &path.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chain files are at most"), "{stderr}");
}
