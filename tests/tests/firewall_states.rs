//! The firewall's TCP connection states, packet by packet: crafted segments run through the
//! forwarder of a tc or xdp chain at the firewall's interfaces with `BPF_PROG_TEST_RUN` (the
//! stage is reached by the forwarder's tail call and works on its live connection table), and
//! after each one the connection's entry read back from the pinned table: which of the
//! configured timeouts it lives by, and the rule that accepted it.
//!
//! The state step itself has unit tests (netfn-common's teardown.rs); this shows the stage
//! applies it to packets as the docs say.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use aya::maps::{HashMap, Map, MapData};
use netfn_common::firewall::{CtEntry, CtKey, FW_CT_MAP, FwConf, PROTO_TCP};
use netfn_tests::frames::{self, TCP};
use netfn_tests::test_run::{self, Hook, Verdict, hops, verdict};
use netfn_tests::{ChainGuard, EGRESS_ADDR, INGRESS_ADDR, TempDir, in_netns, shared, unique_chain};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

const CLIENT_PORT: u16 = 40_123;
const SERVER_PORT: u16 = 80;
/// The index of the rule that accepts the connection (`web`, the second rule).
const WEB_RULE: u32 = 1;

fn chain_file(name: &str, fastpath: &str) -> String {
    format!(
        "[[chain]]\nname = \"{name}\"\nfastpath = \"{fastpath}\"\n\n\
         [chain.ingress]\naddress = \"{INGRESS_ADDR}/24\"\n\n\
         [chain.egress]\naddress = \"{EGRESS_ADDR}/24\"\n\n\
         [[chain.function]]\nname = \"fw1\"\nkind = \"firewall\"\ndefault = \"drop\"\n\n\
         [[chain.function.rule]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = 22\naction = \"accept\"\n\n\
         [[chain.function.rule]]\nname = \"web\"\nproto = \"tcp\"\ndport = {SERVER_PORT}\n\
         action = \"accept\"\n"
    )
}

/// Which timeout an entry lives by, as the stage chooses it (`FwConf::idle_timeout_ns`, with
/// each TCP timeout set to a number that names it).
fn timeout_class(ct: &CtEntry) -> &'static str {
    let named = FwConf {
        tcp_syn_ns: 1,
        tcp_established_ns: 2,
        tcp_half_closed_ns: 3,
        tcp_closing_ns: 4,
        ..FwConf::default()
    };
    match named.idle_timeout_ns(PROTO_TCP, ct.state) {
        1 => "syn",
        2 => "established",
        3 => "half-closed",
        4 => "closing",
        _ => "none of TCP's",
    }
}

/// The connection's key in the table: the lower (address, port) end first, as the stage keys it.
fn key(client: Ipv4Addr, server: Ipv4Addr) -> CtKey {
    let ends = [
        (u64::from(u32::from(client)), CLIENT_PORT),
        (u64::from(u32::from(server)), SERVER_PORT),
    ];
    let (a, b) = (ends[0].min(ends[1]), ends[0].max(ends[1]));
    CtKey {
        a: [0, a.0],
        b: [0, b.0],
        a_port: a.1,
        b_port: b.1,
        proto: PROTO_TCP,
        _pad: [0; 3],
    }
}

/// The firewall's connection table, pinned by `netfn up` in its function's directory.
fn connection_table(chain: &str) -> HashMap<MapData, CtKey, CtEntry> {
    let base = PathBuf::from(format!("/sys/fs/bpf/netfn/{chain}"));
    let pin = std::fs::read_dir(&base)
        .expect("chain pins")
        .filter_map(Result::ok)
        .map(|e| e.path().join(FW_CT_MAP))
        .find(|p| p.exists())
        .expect("the firewall's connection table");
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let map = Map::from_map_data(data).expect("map");
    HashMap::try_from(map).expect("a hash map of connections")
}

/// Who sends a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sender {
    Client,
    Server,
}

/// A connection opened, established, half-closed by its client, opened again by the client's
/// bare SYN on the same ports (new, under the rule that accepted it: the syn timeout), which
/// the server's bare ACK (the challenge ACK of a server still in CLOSE_WAIT) does not establish
/// and its SYN-ACK does (else a SYN the server never accepted would live by the day-long
/// established timeout).
fn reopened_half_closed_connection(fastpath: &str, hook: Hook) {
    let _shared = shared();
    let chain = unique_chain(&format!("fs{}", &fastpath[..1]));
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &chain_file(&chain, fastpath));
    let _guard = ChainGuard::up(&chain, &file);
    let program = test_run::forwarder(&chain, hook);
    let hops = hops(&chain, INGRESS_ADDR, EGRESS_ADDR);
    let at = |interface: &str| {
        hops.iter()
            .find(|h| h.function == "fw1" && h.interface == interface)
            .unwrap_or_else(|| panic!("fw1's {interface}"))
    };
    // The client's segments arrive on nf-in, the server's on nf-out.
    let (client_side, server_side) = (at("nf-in"), at("nf-out"));
    let table = connection_table(&chain);
    let key = key(INGRESS_ADDR, EGRESS_ADDR);
    let steps = [
        ("the client's SYN", Sender::Client, SYN, "syn"),
        (
            "the server's SYN-ACK",
            Sender::Server,
            SYN | ACK,
            "established",
        ),
        ("the client's FIN", Sender::Client, FIN | ACK, "half-closed"),
        (
            "the client's SYN on the same ports",
            Sender::Client,
            SYN,
            "syn",
        ),
        ("the server's challenge ACK", Sender::Server, ACK, "syn"),
        (
            "the server's SYN-ACK",
            Sender::Server,
            SYN | ACK,
            "established",
        ),
    ];
    let mut seen = Vec::new();
    let mut wrong = false;
    for (what, from, flags, want) in steps {
        let (hop, sport, dport) = match from {
            Sender::Client => (client_side, CLIENT_PORT, SERVER_PORT),
            Sender::Server => (server_side, SERVER_PORT, CLIENT_PORT),
        };
        let segment = frames::tcp(&hop.link, sport, dport, flags, 5);
        let frame = frames::ipv4_frame(&hop.link, TCP, &segment);
        let (retval, _) = in_netns(&hop.netns, || {
            test_run::run_once(&program, hook, hop.ifindex, &frame)
        })
        .unwrap_or_else(|e| panic!("{fastpath}: test run of {what}: {e}"));
        let got = verdict(hook, retval);
        let entry = table.get(&key, 0).ok();
        let class = entry.as_ref().map(timeout_class);
        let rule = entry.map(|e| e.rule);
        wrong |= got != Some(Verdict::Forward) || class != Some(want) || rule != Some(WEB_RULE);
        seen.push(format!(
            "{what}: {got:?}, entry {class:?} under rule {rule:?} (expected Forward, \"{want}\" \
             under rule {WEB_RULE})"
        ));
    }
    assert!(!wrong, "{fastpath}:\n{}", seen.join("\n"));
}

#[test]
fn tc_a_reopened_half_closed_connection_is_established_by_the_syn_ack_only() {
    reopened_half_closed_connection("tc", Hook::Tc);
}

#[test]
fn xdp_a_reopened_half_closed_connection_is_established_by_the_syn_ack_only() {
    reopened_half_closed_connection("xdp", Hook::Xdp);
}
