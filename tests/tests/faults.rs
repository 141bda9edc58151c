//! Faults at every step: each failpoint of `up`, `apply` and `down` (`netfn failpoints`, armed by
//! NETFN_FAILPOINT in the debug build under test) is injected in turn, in kernel, tc and xdp mode,
//! on a chain with a firewall and forward functions. After each failure the chain is whole: a
//! failed `up` left nothing, a failed `apply` left the chain as before (or, past the switch, as
//! requested), a failed `down` left a record that a second `down` finishes. Whole means what the
//! kernel has (namespaces, interfaces, pins, the record) and what real packets see (the hop count
//! and the firewall's verdict). Then each failpoint crashes netfn instead (`NAME:crash`, an
//! abort at that step), and `down` must still leave nothing.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;

use netfn_core::chain::state::Phase;
use netfn_core::spec::FastPath;
use netfn_tests::traffic::udp_echo;
use netfn_tests::{
    EGRESS_ADDR, TempDir, command, in_netns, leftovers, netfn_bin, netfn_ok, shared,
    tcp_listener_in, unique_chain,
};

/// The port the firewall rejects (TCP): a listener in the egress endpoint answers on it, so only
/// the firewall can refuse a connection.
const REJECTED_PORT: u16 = 7005;

/// A chain file: firewall `fw` (accepts all but TCP to [`REJECTED_PORT`], which it rejects) and
/// then forward functions `forwards`.
fn chain_file(name: &str, mode: &str, forwards: &[&str]) -> String {
    let mut s = format!(
        "[[chain]]\nname = \"{name}\"\nfastpath = \"{mode}\"\n\n\
         [chain.ingress]\naddress = \"10.81.1.2/24\"\n\n\
         [chain.egress]\naddress = \"10.81.2.2/24\"\n\n\
         [[chain.function]]\nname = \"fw\"\nkind = \"firewall\"\ndefault = \"accept\"\n\n\
         [[chain.function.rule]]\nname = \"no-{REJECTED_PORT}\"\nproto = \"tcp\"\n\
         dport = {REJECTED_PORT}\naction = \"reject\"\n"
    );
    for f in forwards {
        s.push_str(&format!(
            "\n[[chain.function]]\nname = \"{f}\"\nkind = \"forward\"\n"
        ));
    }
    s
}

/// `netfn ARGS…` with failpoint `point` armed; returns (success, stderr).
fn netfn_at(point: &str, args: &[&str]) -> (bool, String) {
    let out = command(&netfn_bin())
        .env(netfn_core::failpoint::ENV, point)
        .args(args)
        .output()
        .expect("run netfn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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

/// True if a TCP connection to [`REJECTED_PORT`] in the egress endpoint is refused at once (the
/// firewall's reject), false if it connects (no firewall on the path).
fn firewall_rejects(chain: &str) -> bool {
    let addr = SocketAddrV4::new(EGRESS_ADDR, REJECTED_PORT);
    let _listener = tcp_listener_in(&format!("nf-{chain}-egress"), addr);
    in_netns(
        &format!("nf-{chain}-ingress"),
        || match std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5)) {
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => true,
            Err(e) => panic!("connect to {addr} through chain {chain}: {e}"),
        },
    )
}

/// The namespaces named for `chain` that exist.
fn namespaces(chain: &str) -> BTreeSet<String> {
    let prefix = format!("nf-{chain}-");
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// The interfaces (but loopback) of namespace `netns`.
fn interfaces(netns: &str) -> BTreeSet<String> {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "-o", "link", "show"])
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n != "lo")
        .collect()
}

/// The interface indexes with a pinned TCX or XDP link in the chain's bpffs directory.
fn link_pins(chain: &str) -> BTreeSet<u32> {
    let dir = netfn_core::plan::names::chain_bpf_dir(chain);
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let index = name
                .strip_prefix(netfn_core::ebpf::TCX_LINK_PIN_PREFIX)
                .or_else(|| name.strip_prefix(netfn_core::ebpf::XDP_LINK_PIN_PREFIX))?;
            index.parse().ok()
        })
        .collect()
}

/// Asserts that chain `chain` is up exactly with `functions` (in order): its record, every
/// namespace and interface it should have and no other, its pins, and packets through it.
fn assert_chain_is(chain: &str, functions: &[&str], what: &str) {
    let record = netfn_core::chain::state::load(chain)
        .unwrap_or_else(|e| panic!("{what}: read the record: {e}"))
        .unwrap_or_else(|| panic!("{what}: chain {chain} has no record"));
    assert_eq!(record.phase, Phase::Up, "{what}: record phase");
    assert_eq!(
        record.previous, None,
        "{what}: the record keeps an old plan"
    );
    let plan = &record.plan;
    let hops: Vec<&str> = plan.hops.iter().map(|h| h.name.as_str()).collect();
    let mut expected = vec!["ingress"];
    expected.extend(functions);
    expected.push("egress");
    assert_eq!(hops, expected, "{what}: the recorded plan");
    let want: BTreeSet<String> = hops.iter().map(|h| format!("nf-{chain}-{h}")).collect();
    assert_eq!(namespaces(chain), want, "{what}: namespaces");
    for (h, hop) in plan.hops.iter().enumerate() {
        let want: BTreeSet<String> = plan.interfaces_of(h).map(|e| e.ifname.clone()).collect();
        assert_eq!(
            interfaces(&hop.netns.name),
            want,
            "{what}: interfaces of {}",
            hop.name
        );
    }
    let dir = netfn_core::plan::names::chain_bpf_dir(chain);
    assert!(dir.is_dir(), "{what}: {} is missing", dir.display());
    let tcx = netfn_core::chain::lifecycle::fastpath_options().tc_attach
        == netfn_core::ebpf::TcAttach::Tcx;
    let pinned: BTreeSet<u32> = match plan.fastpath {
        FastPath::Xdp => plan
            .links
            .iter()
            .flat_map(|l| [l.out.ifindex, l.inn.ifindex])
            .collect(),
        FastPath::Tc if tcx => (1..=plan.function_count())
            .flat_map(|h| plan.interfaces_of(h).map(|e| e.ifindex))
            .collect(),
        _ => BTreeSet::new(),
    };
    assert_eq!(link_pins(chain), pinned, "{what}: link pins");
    let hops_crossed = functions.len() as u8;
    let echo = udp_echo(
        &format!("nf-{chain}-ingress"),
        &format!("nf-{chain}-egress"),
        2,
    );
    assert_eq!(
        (echo.ttl_forward, echo.ttl_reverse),
        (64 - hops_crossed, 64 - hops_crossed),
        "{what}: hops crossed"
    );
    assert!(
        firewall_rejects(chain),
        "{what}: the firewall let TCP {REJECTED_PORT} through"
    );
}

fn assert_nothing_left(chain: &str, what: &str) {
    assert_eq!(
        leftovers(&chain),
        Vec::<String>::new(),
        "{what}: left behind"
    );
}

/// Takes the chain down (no failpoint), also when a test fails.
struct Down<'a>(&'a str);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = netfn_tests::netfn(&["down", self.0]);
    }
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

fn failure_at_every_step(mode: &str, tag: &str) {
    let _turn = shared();
    let points = failpoints();
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
        let _down = (Down(&chain), Down(&sibling));
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
                stderr.contains(&format!("the record of chain `{chain}` ({record}) is damaged"))
                    && stderr.contains(&format!("`netfn down --force {chain}`")),
                "{damage}: {args:?} said:\n{stderr}"
            );
        }
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
