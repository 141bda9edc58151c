//! `netfn apply` on a running kernel-mode chain: insert, reorder and remove functions while a
//! sequenced UDP stream runs, with no datagram lost; unchanged files change nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use netfn_tests::traffic::{sequenced_stream_during, udp_echo};
use netfn_tests::{
    ChainGuard, TempDir, kill_netfn_mid_way, leftovers, netfn, netfn_ok, unique_chain,
};

fn chain_file(name: &str, functions: &[&str]) -> String {
    let mut s = format!(
        "[[chain]]\nname = \"{name}\"\n\n[chain.ingress]\naddress = \"10.81.1.2/24\"\n\n[chain.egress]\naddress = \"10.81.2.2/24\"\n"
    );
    for f in functions {
        s.push_str(&format!(
            "\n[[chain.function]]\nname = \"{f}\"\nkind = \"forward\"\n"
        ));
    }
    s
}

/// Packets function `function` received toward egress, over every interface it ever had (the
/// counters of interfaces a live apply replaced stay in the pinned map; the record lists them).
fn forward_total(chain: &str, function: &str) -> u64 {
    let record = netfn_core::state::load(chain)
        .expect("read the chain record")
        .expect("chain is recorded");
    let (h, hop) = record.plan.hop(function).expect("function in the plan");
    let current = record.plan.links[h - 1].inn.ifindex;
    let counters = netfn_core::ebpf::read_counters(&netfn_core::names::chain_bpf_dir(chain))
        .expect("read counters");
    std::iter::once(current)
        .chain(hop.retired_in.iter().copied())
        .filter_map(|i| counters.get(&i))
        .map(|c| c.packets)
        .sum()
}

fn assert_none_lost(seen: &BTreeSet<u32>, count: u32, what: &str) {
    let lost: Vec<u32> = (0..count).filter(|s| !seen.contains(s)).collect();
    assert!(
        lost.is_empty(),
        "{what}: {} of {count} datagrams lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

#[test]
fn insert_reorder_and_remove_while_a_stream_runs_lose_nothing() {
    let chain = unique_chain("la");
    let dir = TempDir::new(&chain);
    let v1 = dir.write("v1.toml", &chain_file(&chain, &["a", "b", "c"]));
    let v2 = dir.write("v2.toml", &chain_file(&chain, &["a", "x", "b", "c"]));
    let v3 = dir.write("v3.toml", &chain_file(&chain, &["a", "b", "x", "c"]));
    let (ingress, egress) = (format!("nf-{chain}-ingress"), format!("nf-{chain}-egress"));
    {
        let _guard = ChainGuard::up(&chain, &v1);
        udp_echo(&ingress, &egress, 3); // neighbours resolved before the stream starts
        let untouched = std::fs::metadata(format!("/run/netns/nf-{chain}-c")).expect("netns c");

        // Dry run: prints the plan, changes nothing.
        let plan = netfn_ok(&["apply", &v2.to_string_lossy(), "--dry-run"]);
        assert!(
            plan.contains("+ add function x (forward) after a"),
            "dry run said: {plan}"
        );
        assert_eq!(
            udp_echo(&ingress, &egress, 1).ttl_forward,
            64 - 3,
            "dry run changed the chain"
        );

        for (file, what, hops) in [
            (&v2, "insert", 4u8),
            (&v3, "reorder", 4),
            (&v1, "remove", 3),
        ] {
            let count = 20_000;
            let b_before = forward_total(&chain, "b");
            let mut out = None;
            let seen = sequenced_stream_during(&chain, count, 20_000, 7101, || {
                out = Some(netfn(&["apply", &file.to_string_lossy()]));
            });
            let out = out.expect("apply ran");
            assert!(
                out.status.success(),
                "{what}: apply failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("applied 1 change(s)"));
            assert_none_lost(&seen, count, what);
            // b's forward counter covers its old and new interfaces: monotonic, and it saw the
            // whole stream (plus at most a few ARP frames on a new link). A reorder is the
            // exception: while routes switch, a few datagrams take the new route of one hop and
            // the old of another and skip the function that moves (b here); none is lost. (Known
            // limit, see README: a reorder is not atomic for every packet.)
            let b_delta = forward_total(&chain, "b") - b_before;
            let least = if what == "reorder" {
                u64::from(count) * 99 / 100
            } else {
                u64::from(count)
            };
            assert!(
                (least..=u64::from(count) + 4).contains(&b_delta),
                "{what}: b counted {b_delta} of {count} datagrams"
            );
            let echo = udp_echo(&ingress, &egress, 2);
            assert_eq!(
                (echo.ttl_forward, echo.ttl_reverse),
                (64 - hops, 64 - hops),
                "after {what}"
            );
        }
        // The function no change touched kept its namespace (same inode: not re-created).
        let after = std::fs::metadata(format!("/run/netns/nf-{chain}-c")).expect("netns c");
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&untouched),
            std::os::unix::fs::MetadataExt::ino(&after)
        );
        assert!(
            !std::path::Path::new(&format!("/run/netns/nf-{chain}-x")).exists(),
            "removed function's namespace remains"
        );

        // Unchanged file: nothing to do, for apply and for up.
        assert!(netfn_ok(&["apply", &v1.to_string_lossy()]).contains("unchanged"));
        assert!(netfn_ok(&["up", &v1.to_string_lossy()]).contains("unchanged"));
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

#[test]
fn apply_refuses_what_it_cannot_do_live_and_leaves_the_chain_running() {
    let chain = unique_chain("lr");
    let dir = TempDir::new(&chain);
    let v1 = dir.write("v1.toml", &chain_file(&chain, &["a", "b"]));
    let front = dir.write("front.toml", &chain_file(&chain, &["z", "a", "b"]));
    {
        let _guard = ChainGuard::up(&chain, &v1);
        let out = netfn(&["apply", &front.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("first or last function")
                && stderr.contains(&format!("netfn down {chain}")),
            "{stderr}"
        );
        let echo = udp_echo(
            &format!("nf-{chain}-ingress"),
            &format!("nf-{chain}-egress"),
            2,
        );
        assert_eq!(echo.ttl_forward, 62, "the refused apply changed the chain");
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

#[test]
fn down_finishes_after_apply_was_killed_mid_way() {
    let mut mid_way = 0;
    for delay_ms in [0u64, 1, 3, 10, 40] {
        let chain = unique_chain("lk");
        let dir = TempDir::new(&chain);
        let names: Vec<String> = (1..=20).map(|i| format!("f{i}")).collect();
        let mut with_new: Vec<&str> = names.iter().map(String::as_str).collect();
        let v1 = dir.write("v1.toml", &chain_file(&chain, &with_new));
        with_new.insert(10, "new");
        let v2 = dir.write("v2.toml", &chain_file(&chain, &with_new));
        netfn_ok(&["up", &v1.to_string_lossy()]);
        if kill_netfn_mid_way(
            &["apply", &v2.to_string_lossy()],
            &chain,
            Some(Duration::from_millis(delay_ms)),
        ) {
            mid_way += 1;
        }
        let out = netfn(&["down", &chain]);
        assert!(
            out.status.success(),
            "down after killing apply at {delay_ms} ms: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            leftovers(&chain),
            Vec::<String>::new(),
            "after killing apply at {delay_ms} ms"
        );
    }
    assert!(
        mid_way >= 2,
        "only {mid_way} kills landed mid-apply; the test proved too little"
    );
}
