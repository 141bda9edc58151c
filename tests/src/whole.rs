//! Is a chain whole? The checks that fault and race tests run after every failure: a chain file
//! with a firewall and forward functions, and assertions over what the kernel has for a chain
//! (record, namespaces, interfaces, pins) and what real packets see through it.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::time::Duration;

use netfn_core::chain::state::Phase;
use netfn_core::spec::FastPath;

use crate::traffic::udp_echo;
use crate::{EGRESS_ADDR, in_netns, leftovers, tcp_listener_in};

/// The port the firewall rejects (TCP): a listener in the egress endpoint answers on it, so only
/// the firewall can refuse a connection.
pub const REJECTED_PORT: u16 = 7005;

/// A chain file: firewall `fw` (accepts all but TCP to [`REJECTED_PORT`], which it rejects) and
/// then forward functions `forwards`.
pub fn chain_file(name: &str, mode: &str, forwards: &[&str]) -> String {
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

/// True if a TCP connection to [`REJECTED_PORT`] in the egress endpoint is refused at once (the
/// firewall's reject), false if it connects (no firewall on the path).
pub fn firewall_rejects(chain: &str) -> bool {
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
pub fn namespaces(chain: &str) -> BTreeSet<String> {
    let prefix = format!("nf-{chain}-");
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// The interfaces (but loopback) of namespace `netns`.
pub fn interfaces(netns: &str) -> BTreeSet<String> {
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
pub fn link_pins(chain: &str) -> BTreeSet<u32> {
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
pub fn assert_chain_is(chain: &str, functions: &[&str], what: &str) {
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

pub fn assert_nothing_left(chain: &str, what: &str) {
    assert_eq!(
        leftovers(chain),
        Vec::<String>::new(),
        "{what}: left behind"
    );
}

/// Takes the chain down (no failpoint), also when a test fails.
pub struct Down<'a>(pub &'a str);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = crate::netfn(&["down", self.0]);
    }
}
