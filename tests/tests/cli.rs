//! The read-only verbs: graph, kinds, features.

use std::path::Path;

use netfn_tests::netfn_ok;

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
