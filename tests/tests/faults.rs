//! Faults at every step: each failpoint of `up`, `apply` and `down` (`netfn failpoints`, armed by
//! NETFN_FAILPOINT in the debug build under test) is injected in turn, in kernel, tc and xdp mode,
//! on a chain with a firewall and forward functions. After each failure the chain is whole: a
//! failed `up` left nothing, a failed `apply` left the chain as before (or, past its commit, as
//! requested), a failed `down` left a record that a second `down` finishes. Whole means what the
//! kernel has (namespaces, interfaces, pins, the record) and what real packets see (the hop count
//! and the firewall's verdict). Then each failpoint crashes netfn instead (`NAME:crash`, an
//! abort at that step), and `down` must still leave nothing.

use std::path::Path;

use netfn_tests::whole::{Down, assert_chain_is, assert_nothing_left, chain_file, namespaces};
use netfn_tests::{TempDir, leftovers, netfn_at, netfn_ok, shared, unique_chain};

/// The failpoints the binary under test lists, with their verbs.
fn failpoints() -> Vec<(String, String)> {
    let listed = netfn_ok(&["failpoints"]);
    let points: Vec<(String, String)> = listed
        .lines()
        .filter_map(|l| {
            let name = l.split('\t').next()?.to_string();
            let verb = name.split('-').next()?.to_string();
            Some((verb, name))
        })
        .collect();
    for verb in ["up", "apply", "down"] {
        assert!(
            points.iter().filter(|(v, _)| v == verb).count() >= 3,
            "`netfn failpoints` lists too few {verb} steps:\n{listed}"
        );
    }
    points
}

#[test]
fn kernel_failure_at_every_step_leaves_the_chain_whole() {
    failure_at_every_step("kernel", "fk");
}

#[test]
fn tc_failure_at_every_step_leaves_the_chain_whole() {
    failure_at_every_step("tc", "ft");
}

#[test]
fn xdp_failure_at_every_step_leaves_the_chain_whole() {
    failure_at_every_step("xdp", "fx");
}

/// The functions of a chain: the firewall, then `forwards`.
fn with(forwards: &[&'static str]) -> Vec<&'static str> {
    let mut all = vec!["fw"];
    all.extend(forwards);
    all
}

const V1: [&str; 2] = ["a", "b"];
const V2: [&str; 2] = ["x", "b"];

/// Failpoints (by their ending) of the steps whose kernel work differs by kernel version: the
/// ones that attach, switch or remove eBPF programs (netlink clsact before 6.6, TCX links
/// from 6.6).
const EBPF_STEPS: [&str; 7] = [
    "up-ebpf",
    "up-kinds",
    "apply-prepare",
    "apply-kinds",
    "apply-switch",
    "apply-remove",
    "down-objects",
];

fn failure_at_every_step(mode: &str, tag: &str) {
    // How the tc forwarder attaches differs by kernel (netlink clsact before 6.6, TCX links
    // from 6.6): its steps and rollbacks are worth a second kernel. Kernel and xdp mode take
    // the same paths on every kernel, and each takes minutes under the VM's TCG.
    if mode != "tc" && netfn_tests::in_test_vm() {
        netfn_tests::skipped(
            &format!("{mode} failure at every step in the VM"),
            "kernel and xdp mode take the same steps on every kernel; the host runs them, \
             the VM runs tc mode, whose attach differs by kernel",
        );
        return;
    }
    let _turn = shared();
    let mut points = failpoints();
    if netfn_tests::in_test_vm() {
        // The steps that attach, switch or remove eBPF programs; the others (records,
        // namespaces, veths, addresses, routes, processes) do the same on every kernel, and
        // each step costs about 10 s under the VM's TCG.
        let (by_kernel, same): (Vec<_>, Vec<_>) = points
            .into_iter()
            .partition(|(_, p)| EBPF_STEPS.iter().any(|s| p.ends_with(s)));
        netfn_tests::skipped(
            &format!("{mode} failures at {} in the VM", same.len()),
            &format!(
                "{} do the same on every kernel and run on the host",
                same.iter()
                    .map(|(_, p)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        assert_eq!(
            by_kernel.len(),
            EBPF_STEPS.len(),
            "a failpoint of EBPF_STEPS is gone or renamed: {by_kernel:?}"
        );
        points = by_kernel;
    }
    let chain = unique_chain(tag);
    let _down = Down(&chain);
    let dir = TempDir::new(&chain);
    // v2 removes `a` and inserts `x` in one apply: new and old objects both.
    let v1 = dir.write("v1.toml", &chain_file(&chain, mode, &V1));
    let v2 = dir.write("v2.toml", &chain_file(&chain, mode, &V2));
    let (v1, v2) = (v1.to_string_lossy(), v2.to_string_lossy());
    let up = |file: &str| netfn_ok(&["up", file]);
    let mut injected = 0;
    for (verb, point) in &points {
        let what = format!("{mode}: failure at {point}");
        let says_so = |stderr: &str| {
            assert!(
                stderr.contains(&format!("failure injected at failpoint `{point}`")),
                "{what}: the failure was not injected or not reported:\n{stderr}"
            );
        };
        match verb.as_str() {
            "up" => {
                let (ok, stderr) = netfn_at(point, &["up", &v1]);
                assert!(!ok, "{what}: up succeeded");
                says_so(&stderr);
                assert_nothing_left(&chain, &what);
            }
            "apply" => {
                up(&v1);
                let (ok, stderr) = netfn_at(point, &["apply", &v2]);
                says_so(&stderr);
                // Before the switch: restored. Past it (removing the old objects), the change
                // stands and what is left of the old path goes with the next apply.
                if ok {
                    netfn_ok(&["apply", &v2]);
                    assert_chain_is(&chain, &with(&V2), &what);
                } else {
                    assert_chain_is(&chain, &with(&V1), &what);
                }
                netfn_ok(&["down", &chain]);
                assert_nothing_left(&chain, &what);
            }
            "down" => {
                up(&v1);
                let (ok, stderr) = netfn_at(point, &["down", &chain]);
                assert!(!ok, "{what}: down succeeded");
                says_so(&stderr);
                netfn_ok(&["down", &chain]);
                assert_nothing_left(&chain, &what);
            }
            other => panic!("failpoint {point} of an unknown verb {other}"),
        }
        injected += 1;
    }
    // A crash at each step: whatever it left, `down` removes (from the record, or with no record
    // at all when the crash came before it was written).
    for (verb, point) in &points {
        let what = format!("{mode}: crash at {point}");
        let crash = format!("{point}:crash");
        let args: Vec<&str> = match verb.as_str() {
            "up" => vec!["up", &v1],
            "apply" => vec!["apply", &v2],
            _ => vec!["down", &chain],
        };
        if verb != "up" {
            up(&v1);
        }
        let (ok, stderr) = netfn_at(&crash, &args);
        assert!(
            !ok && stderr.contains(&format!("failpoint `{point}`: crashing here")),
            "{what}: netfn did not crash there:\n{stderr}"
        );
        netfn_ok(&["down", &chain]);
        assert_nothing_left(&chain, &what);
        injected += 1;
    }
    // The chain still comes up whole after all that, and the file unchanged.
    up(&v1);
    assert_chain_is(&chain, &with(&V1), &format!("{mode}: after the failures"));
    netfn_ok(&["down", &chain]);
    assert_nothing_left(&chain, mode);
    assert_eq!(injected, 2 * points.len());
}

/// Takes a chain with a damaged record down (`down --force`), also when a test fails.
struct ForceDown<'a>(&'a str);

impl Drop for ForceDown<'_> {
    fn drop(&mut self) {
        let _ = netfn_tests::netfn(&["down", "--force", self.0]);
    }
}

/// A chain's record, damaged three ways (cut short, overwritten with bytes that are not JSON,
/// replaced by another chain's record): every verb says what is wrong, where, and that
/// `netfn down --force CHAIN` removes the chain; that removes everything netfn made for it, by
/// its names, and nothing of a chain whose name extends it (`CHAIN-s`).
#[test]
fn damaged_record_is_reported_and_down_force_removes_the_chain() {
    let _turn = shared();
    for damage in ["truncated", "garbage", "other chain"] {
        let chain = unique_chain("d");
        let sibling = format!("{chain}-s");
        let _down = (ForceDown(&chain), Down(&sibling));
        let dir = TempDir::new(&chain);
        let file = dir.write("c.toml", &chain_file(&chain, "tc", &V1));
        let sibling_file = dir.write("s.toml", &chain_file(&sibling, "kernel", &["a"]));
        netfn_ok(&["up", &file.to_string_lossy()]);
        netfn_ok(&["up", &sibling_file.to_string_lossy()]);
        let record = format!("/run/netfn/chains/{chain}.json");
        let text = std::fs::read(&record).expect("read the record");
        let damaged = match damage {
            "truncated" => text[..text.len() / 2].to_vec(),
            "garbage" => vec![0x00, 0xff, 0x7b, 0x13, 0x37],
            _ => std::fs::read(format!("/run/netfn/chains/{sibling}.json")).expect("read"),
        };
        std::fs::write(&record, damaged).expect("damage the record");
        for args in [
            vec!["down", chain.as_str()],
            vec!["status", chain.as_str()],
            vec!["up", &file.to_string_lossy()],
            vec!["apply", &file.to_string_lossy()],
        ] {
            let out = netfn_tests::netfn(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{damage}: {args:?} succeeded");
            assert!(
                stderr.contains(&format!(
                    "the record of chain `{chain}` ({record}) is damaged"
                )) && stderr.contains(&format!("`netfn down --force {chain}`")),
                "{damage}: {args:?} said:\n{stderr}"
            );
        }
        // `netfn status` of every chain reports the damage and still shows the others.
        let out = netfn_tests::netfn(&["status", "--json"]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            !out.status.success()
                && stderr.contains(&format!("the record of chain `{chain}`"))
                && stdout.contains(&format!("\"{sibling}\"")),
            "{damage}: netfn status said:\n{stdout}\n{stderr}"
        );
        assert!(
            !namespaces(&chain).is_empty(),
            "{damage}: something removed the chain"
        );
        let out = netfn_ok(&["down", "--force", &chain]);
        assert!(out.contains(&format!("namespace nf-{chain}-fw")), "{out}");
        let sibling_prefix = format!("nf-{sibling}-");
        let left: Vec<String> = leftovers(&chain)
            .into_iter()
            .filter(|l| !l.contains(&sibling_prefix))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "{damage}: down --force left");
        // The chain whose name extends this one is untouched, and still whole.
        let kept = netfn_core::chain::state::load(&sibling)
            .expect("sibling record")
            .expect("sibling recorded");
        for hop in &kept.plan.hops {
            assert!(
                Path::new(&format!("/run/netns/{}", hop.netns.name)).exists(),
                "{damage}: down --force {chain} removed {}",
                hop.netns.name
            );
        }
        netfn_ok(&["down", &sibling]);
        assert_nothing_left(&sibling, damage);
        assert_nothing_left(&chain, damage);
        // Nothing to remove: says so, succeeds.
        assert!(netfn_ok(&["down", "--force", &chain]).contains("nothing to do"));
    }
}

/// `down --force A-b` spares a namespace that another chain's record lists: chain `A`'s function
/// `b-c` lives in `nf-A-b-c`, which `nf-A-b-*` also matches. Before, `down --force` of the chain
/// `A-b` removed it, and chain `A` lost a function.
#[test]
fn down_force_spares_the_namespace_of_another_chain_that_matches_its_prefix() {
    let _turn = shared();
    let chain = unique_chain("df");
    let short = format!("{chain}-b");
    let _down = (Down(&chain), ForceDown(&short));
    let dir = TempDir::new(&chain);
    let file = dir.write("a.toml", &chain_file(&chain, "kernel", &["b-c"]));
    let short_file = dir.write("ab.toml", &chain_file(&short, "kernel", &["x"]));
    netfn_ok(&["up", &file.to_string_lossy()]);
    netfn_ok(&["up", &short_file.to_string_lossy()]);
    let kept = format!("nf-{chain}-b-c");
    assert!(namespaces(&chain).contains(&kept));
    let out = netfn_ok(&["down", "--force", &short]);
    assert!(out.contains(&format!("namespace nf-{short}-x")), "{out}");
    assert!(
        Path::new(&format!("/run/netns/{kept}")).exists(),
        "down --force {short} removed chain {chain}'s {kept}:\n{out}"
    );
    assert_chain_is(
        &chain,
        &["fw", "b-c"],
        "after down --force of the other chain",
    );
    netfn_ok(&["down", &chain]);
    assert_nothing_left(&chain, "the chain");
    assert_nothing_left(&short, "the other chain");
}
