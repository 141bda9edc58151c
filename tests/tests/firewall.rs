//! The firewall kind, end to end, in tc, xdp and kernel mode: real chains, real TCP, UDP and
//! ICMP between the chain's endpoints, verdicts as a client sees them (connected, refused at once
//! by a TCP RST or an ICMP port-unreachable, or silently dropped), per-rule counters, connection
//! tracking (replies, timeouts, a full table), and a live rule swap under traffic.
//!
//! One table of cases ([`CASES`]) runs in every mode: kernel mode (nftables) must give the same
//! verdicts as the eBPF stage.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use netfn_tests::loss::{SenderRing, fastpath_drops};
use netfn_tests::raw::{raw_socket, send_icmp, send_raw};
use netfn_tests::traffic::{late_answer, sequenced_stream_during};
use netfn_tests::{
    ChainGuard, EGRESS_ADDR, INGRESS_ADDR, TempDir, alone, apply_fails_at, in_netns,
    interface_stats, leftovers, netfn, netfn_ok, shared, unique_chain,
};

/// A chain file with one firewall `fw1` (its settings are `settings`, TOML lines inside the
/// function's table, followed by its `[[chain.function.rule]]` tables) between the test
/// endpoints.
fn firewall_chain(name: &str, mode: &str, settings: &str) -> String {
    format!(
        "[[chain]]\nname = \"{name}\"\nfastpath = \"{mode}\"\n\n[chain.ingress]\naddress = \
         \"10.81.1.2/24\"\n\n[chain.egress]\naddress = \"10.81.2.2/24\"\n\n[[chain.function]]\n\
         name = \"fw1\"\nkind = \"firewall\"\n{settings}\n"
    )
}

/// The rule set of the shared cases.
const RULES: &str = r#"default = "drop"

[[chain.function.rule]]
name = "web"
proto = "tcp"
dport = 80
action = "accept"

[[chain.function.rule]]
name = "ssh-reject"
proto = "tcp"
dport = 22
action = "reject"

[[chain.function.rule]]
name = "dns"
proto = "udp"
src = ["10.81.1.0/24"]
dport = 53
action = "accept"

[[chain.function.rule]]
name = "udp-reject"
proto = "udp"
dport = "5000-5010"
action = "reject"

[[chain.function.rule]]
name = "ping"
icmp_type = "echo-request"
action = "accept"

[[chain.function.rule]]
name = "wrong-src"
proto = "tcp"
src = "10.99.0.0/16"
dport = 81
action = "accept"

[[chain.function.rule]]
name = "low-sport"
proto = "tcp"
sport = "1000-1999"
dport = 82
action = "accept"

[[chain.function.rule]]
name = "dst-list"
proto = "tcp"
dst = ["10.81.2.2", "10.81.7.0/24"]
dport = [83, 84]
action = "accept"

[[chain.function.rule]]
name = "back-door"
from = "egress"
proto = "tcp"
dport = 8080
action = "accept"
"#;

/// What a client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Connected (TCP) or got the echo back (UDP, ICMP).
    Passed,
    /// Told at once: a TCP RST or an ICMP port-unreachable.
    Refused,
    /// Nothing came back within the wait.
    Silence,
}

#[derive(Debug, Clone, Copy)]
enum Probe {
    /// TCP connect to `port`, from `sport` (0: any).
    Tcp {
        port: u16,
        sport: u16,
    },
    Udp {
        port: u16,
    },
    Ping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Ingress,
    Egress,
}

struct Case {
    what: &'static str,
    from: From,
    probe: Probe,
    expect: Seen,
    /// The rule that decides it (None: the default verdict).
    rule: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case {
        what: "tcp 80 accepted",
        from: From::Ingress,
        probe: Probe::Tcp { port: 80, sport: 0 },
        expect: Seen::Passed,
        rule: Some("web"),
    },
    Case {
        what: "tcp 22 rejected with a RST",
        from: From::Ingress,
        probe: Probe::Tcp { port: 22, sport: 0 },
        expect: Seen::Refused,
        rule: Some("ssh-reject"),
    },
    Case {
        what: "udp 53 from the ingress subnet accepted",
        from: From::Ingress,
        probe: Probe::Udp { port: 53 },
        expect: Seen::Passed,
        rule: Some("dns"),
    },
    Case {
        what: "udp 5005 rejected with ICMP port-unreachable",
        from: From::Ingress,
        probe: Probe::Udp { port: 5005 },
        expect: Seen::Refused,
        rule: Some("udp-reject"),
    },
    Case {
        what: "ping accepted",
        from: From::Ingress,
        probe: Probe::Ping,
        expect: Seen::Passed,
        rule: Some("ping"),
    },
    Case {
        what: "tcp 81 from a source outside the rule's prefix: default drop",
        from: From::Ingress,
        probe: Probe::Tcp { port: 81, sport: 0 },
        expect: Seen::Silence,
        rule: None,
    },
    Case {
        what: "tcp 82 from source port 1500 accepted",
        from: From::Ingress,
        probe: Probe::Tcp {
            port: 82,
            sport: 1500,
        },
        expect: Seen::Passed,
        rule: Some("low-sport"),
    },
    Case {
        what: "tcp 82 from source port 2500: default drop",
        from: From::Ingress,
        probe: Probe::Tcp {
            port: 82,
            sport: 2500,
        },
        expect: Seen::Silence,
        rule: None,
    },
    Case {
        what: "tcp 84 to a listed destination accepted",
        from: From::Ingress,
        probe: Probe::Tcp { port: 84, sport: 0 },
        expect: Seen::Passed,
        rule: Some("dst-list"),
    },
    Case {
        what: "tcp 8080 opened from the egress side accepted",
        from: From::Egress,
        probe: Probe::Tcp {
            port: 8080,
            sport: 0,
        },
        expect: Seen::Passed,
        rule: Some("back-door"),
    },
    Case {
        what: "tcp 80 opened from the egress side: default drop (web is for ingress)",
        from: From::Egress,
        probe: Probe::Tcp { port: 80, sport: 0 },
        expect: Seen::Silence,
        rule: None,
    },
    Case {
        what: "the agent's chain probe passes (netfn's own rule, before the configured ones)",
        from: From::Ingress,
        probe: Probe::Udp { port: 9848 },
        expect: Seen::Passed,
        rule: Some("netfn-probe"),
    },
    Case {
        what: "unsolicited udp from the egress side: default drop",
        from: From::Egress,
        probe: Probe::Udp { port: 53 },
        expect: Seen::Silence,
        rule: None,
    },
];

/// How long a "silence" is waited for.
const WAIT: Duration = Duration::from_millis(700);

/// TCP listeners and UDP echo servers on both endpoints, until dropped.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    fn start(chain: &str, tcp: &[u16], udp: &[u16]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (ns, addr) in [
            (format!("nf-{chain}-egress"), EGRESS_ADDR),
            (format!("nf-{chain}-ingress"), INGRESS_ADDR),
        ] {
            for &port in tcp {
                let l = in_netns(&ns, || TcpListener::bind(SocketAddrV4::new(addr, port)))
                    .unwrap_or_else(|e| panic!("listen {addr}:{port} in {ns}: {e}"));
                l.set_nonblocking(true).expect("nonblocking");
                let stop = stop.clone();
                threads.push(thread::spawn(move || serve_tcp(&l, &stop)));
            }
            for &port in udp {
                let s = in_netns(&ns, || UdpSocket::bind(SocketAddrV4::new(addr, port)))
                    .unwrap_or_else(|e| panic!("bind udp {addr}:{port} in {ns}: {e}"));
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("timeout");
                let stop = stop.clone();
                threads.push(thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((n, from)) = s.recv_from(&mut buf) {
                            let _ = s.send_to(&buf[..n], from);
                        }
                    }
                }));
            }
        }
        Servers { stop, threads }
    }
}

/// Accepts connections and echoes what they send until they close.
fn serve_tcp(l: &TcpListener, stop: &AtomicBool) {
    while let Some(mut c) = netfn_tests::accept_until(l, || stop.load(Ordering::Relaxed)) {
        thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A firewall chain of the tests (its settings as [`firewall_chain`] takes them) with servers on
/// both endpoints: servers stopped and the chain down when dropped (or closed).
struct Lab {
    chain: String,
    servers: Option<Servers>,
    guard: Option<ChainGuard>,
    dir: TempDir,
}

impl Lab {
    fn up(tag: &str, mode: &str, settings: &str, tcp: &[u16], udp: &[u16]) -> Lab {
        let chain = unique_chain(&format!("{tag}{}", &mode[..1]));
        let dir = TempDir::new(&chain);
        let file = dir.write("chain.toml", &firewall_chain(&chain, mode, settings));
        let guard = ChainGuard::up(&chain, &file);
        let servers = Servers::start(&chain, tcp, udp);
        Lab {
            chain,
            servers: Some(servers),
            guard: Some(guard),
            dir,
        }
    }

    /// Stops the servers and takes the chain down now.
    fn close(&mut self) {
        self.servers.take();
        self.guard.take();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.close();
    }
}

/// The namespace and address a probe starts from, and the address it goes to.
fn ends(chain: &str, from: From) -> (String, Ipv4Addr, Ipv4Addr) {
    match from {
        From::Ingress => (format!("nf-{chain}-ingress"), INGRESS_ADDR, EGRESS_ADDR),
        From::Egress => (format!("nf-{chain}-egress"), EGRESS_ADDR, INGRESS_ADDR),
    }
}

/// A TCP connect from `ns` (from `sport` unless 0), classified.
fn tcp_connect(ns: &str, src: Ipv4Addr, sport: u16, to: SocketAddrV4) -> (Seen, Option<TcpStream>) {
    in_netns(ns, || {
        // SAFETY: plain socket calls on a descriptor this function owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let stream = TcpStream::from_raw_fd(fd);
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: WAIT.as_micros() as libc::suseconds_t,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            let sa = |a: Ipv4Addr, p: u16| libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: p.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            let local = sa(src, sport);
            let rc = libc::bind(
                fd,
                (&local as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            assert_eq!(
                rc,
                0,
                "bind {src}:{sport}: {}",
                std::io::Error::last_os_error()
            );
            let remote = sa(*to.ip(), to.port());
            let rc = libc::connect(
                fd,
                (&remote as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            if rc == 0 {
                return (Seen::Passed, Some(stream));
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ECONNREFUSED) => (Seen::Refused, None),
                Some(libc::EINPROGRESS) | Some(libc::ETIMEDOUT) | Some(libc::EAGAIN) => {
                    (Seen::Silence, None)
                }
                _ => panic!("connect to {to} from {ns}: {err}"),
            }
        }
    })
}

/// One UDP datagram to an echo server, classified.
fn udp_probe(ns: &str, src: Ipv4Addr, to: SocketAddrV4) -> Seen {
    let s = in_netns(ns, || UdpSocket::bind(SocketAddrV4::new(src, 0))).expect("bind udp");
    udp_probe_from(&s, to)
}

/// One UDP datagram from socket `s` to an echo server, classified.
fn udp_probe_from(s: &UdpSocket, to: SocketAddrV4) -> Seen {
    s.connect(to).expect("connect udp");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.send(b"probe").expect("send");
    let mut buf = [0u8; 64];
    match s.recv(&mut buf) {
        Ok(_) => Seen::Passed,
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Seen::Refused,
        Err(_) => Seen::Silence,
    }
}

fn ping(ns: &str, to: Ipv4Addr) -> Seen {
    let ok = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-q"])
        .arg(to.to_string())
        .output()
        .expect("run ping")
        .status
        .success();
    if ok { Seen::Passed } else { Seen::Silence }
}

fn run_probe(chain: &str, from: From, probe: Probe) -> Seen {
    let (ns, src, dst) = ends(chain, from);
    match probe {
        Probe::Tcp { port, sport } => tcp_connect(&ns, src, sport, SocketAddrV4::new(dst, port)).0,
        Probe::Udp { port } => udp_probe(&ns, src, SocketAddrV4::new(dst, port)),
        Probe::Ping => ping(&ns, dst),
    }
}

/// The firewall's "by rule" counters from `netfn status --json` (fast-path chains).
fn rule_counts(chain: &str) -> BTreeMap<String, u64> {
    let status: serde_json::Value =
        serde_json::from_str(&netfn_ok(&["status", chain, "--json"])).expect("status json");
    let mut out = BTreeMap::new();
    for hop in status[0]["hops"].as_array().into_iter().flatten() {
        for d in hop["details"].as_array().into_iter().flatten() {
            if d[0] == "by rule" {
                for item in d[1].as_str().unwrap_or_default().split(", ") {
                    if let Some((rule, n)) = item.rsplit_once(' ') {
                        out.insert(rule.to_string(), n.parse().unwrap_or(0));
                    }
                }
            }
        }
    }
    out
}

fn every_case_in(mode: &str) {
    let _turn = shared();
    let mut lab = Lab::up(
        "fc",
        mode,
        RULES,
        &[22, 80, 81, 82, 84, 8080],
        &[53, 5005, 9848],
    );
    let chain = lab.chain.clone();

    let mut wrong = Vec::new();
    for case in CASES {
        let seen = run_probe(&chain, case.from, case.probe);
        if seen != case.expect {
            wrong.push(format!(
                "{}: expected {:?}, saw {:?}",
                case.what, case.expect, seen
            ));
        }
    }
    assert!(wrong.is_empty(), "{mode}: {}", wrong.join("\n"));

    // A connection the firewall accepted carries data both ways.
    let (ns, src, dst) = ends(&chain, From::Ingress);
    let (_, stream) = tcp_connect(&ns, src, 0, SocketAddrV4::new(dst, 80));
    let mut stream = stream.expect("tcp 80 connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut w = stream.try_clone().expect("clone");
        let p = payload.clone();
        thread::spawn(move || w.write_all(&p).expect("send"))
    };
    let mut back = vec![0u8; payload.len()];
    stream
        .read_exact(&mut back)
        .expect("echo of 256 KiB through the firewall");
    writer.join().expect("writer");
    assert_eq!(back, payload, "{mode}: the echo differs");

    if mode != "kernel" {
        // Exact per-rule counters for the cases that decide in one packet (an accepted
        // connection is classified once; a refused one once, since the client gives up at the
        // RST or ICMP error). Silent drops are retried by TCP, so they count at least once.
        let counts = rule_counts(&chain);
        let mut expect: BTreeMap<&str, u64> = BTreeMap::new();
        for case in CASES.iter().filter(|c| c.expect != Seen::Silence) {
            let rule = case.rule.expect("a decided case names its rule");
            *expect.entry(rule).or_default() += 1;
        }
        *expect.entry("web").or_default() += 1; // the echo connection
        for (rule, n) in expect {
            assert_eq!(
                counts.get(rule).copied(),
                Some(n),
                "{mode}: rule {rule}: {counts:?}"
            );
        }
        for case in CASES.iter().filter(|c| c.expect == Seen::Silence) {
            assert_eq!(
                case.rule, None,
                "{}: a silent case is the default's",
                case.what
            );
        }
        // Four silent cases, one SYN or datagram each within the wait (TCP retries after 1 s).
        assert!(
            counts.get("(default)").copied().unwrap_or(0) >= 4,
            "{counts:?}"
        );
        let drops = fastpath_drops(&chain);
        assert_eq!(drops.get("fw-reject").copied(), Some(2), "{drops:?}");
        assert!(drops.get("fw-rule").copied().unwrap_or(0) >= 4, "{drops:?}");
    }
    lab.close();
    assert!(leftovers(&chain).is_empty(), "{:?}", leftovers(&chain));
}

#[test]
fn every_case_in_tc() {
    every_case_in("tc");
}

#[test]
fn every_case_in_xdp() {
    every_case_in("xdp");
}

#[test]
fn every_case_in_kernel_mode_matches() {
    every_case_in("kernel");
}

/// A rule's rate limit: of a quick run of new connections, the burst passes and the rest is
/// dropped (and counted as such in the fast path).
fn rate_limit_in(mode: &str) {
    let _turn = shared();
    let settings = r#"default = "drop"

[[chain.function.rule]]
name = "slow"
proto = "tcp"
dport = 80
action = "accept"
rate = { pps = 1, burst = 3 }
"#;
    let lab = Lab::up("rl", mode, settings, &[80], &[]);
    let chain = lab.chain.clone();
    let (ns, src, dst) = ends(&chain, From::Ingress);
    let started = Instant::now();
    let seen: Vec<Seen> = (0..8)
        .map(|_| tcp_connect(&ns, src, 0, SocketAddrV4::new(dst, 80)).0)
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let passed = seen.iter().filter(|s| **s == Seen::Passed).count();
    // The burst passes at once, the next one right after it is over the limit, and over the
    // whole run no more pass than the burst plus one per second elapsed.
    assert_eq!(
        seen[..4],
        [Seen::Passed, Seen::Passed, Seen::Passed, Seen::Silence],
        "{mode}: {seen:?}"
    );
    assert!(
        passed as f64 <= 3.0 + elapsed.ceil(),
        "{mode}: {passed} of 8 connections passed a 1/s, burst 3 limit in {elapsed:.1} s: {seen:?}"
    );
    if mode != "kernel" {
        let drops = fastpath_drops(&chain);
        let dropped = seen.iter().filter(|s| **s == Seen::Silence).count() as u64;
        assert!(
            drops.get("fw-rate-limit").copied().unwrap_or(0) >= dropped,
            "{mode}: over-limit SYNs are counted as fw-rate-limit: {drops:?}"
        );
    }
}

#[test]
fn rate_limit_tc() {
    rate_limit_in("tc");
}

#[test]
fn rate_limit_xdp() {
    rate_limit_in("xdp");
}

#[test]
fn rate_limit_kernel() {
    rate_limit_in("kernel");
}

/// Connection tracking: a reply passes while the connection lives and not after its timeout; a
/// full table leaves the rules in charge of new connections.
fn conntrack_in(mode: &str) {
    let _turn = shared();
    let settings = r#"default = "drop"
conntrack = { size = 4, udp = 1, udp_stream = 1 }

[[chain.function.rule]]
proto = "udp"
dport = 53
action = "accept"

[[chain.function.rule]]
proto = "tcp"
dport = 80
action = "accept"
"#;
    let lab = Lab::up("ct", mode, settings, &[80, 81], &[]);
    let chain = lab.chain.clone();
    let (ns, src, dst) = ends(&chain, From::Ingress);
    let (egress_ns, ..) = ends(&chain, From::Egress);

    // A UDP "connection": the server answers from 53 twice, at once and after the timeout.
    let client = in_netns(&ns, || UdpSocket::bind(SocketAddrV4::new(src, 0))).expect("bind");
    client.set_read_timeout(Some(WAIT)).expect("timeout");
    let client_addr = match client.local_addr().expect("addr") {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let server =
        in_netns(&egress_ns, || UdpSocket::bind(SocketAddrV4::new(dst, 53))).expect("bind 53");
    server.set_read_timeout(Some(WAIT)).expect("timeout");
    client
        .send_to(b"q", SocketAddrV4::new(dst, 53))
        .expect("send");
    let mut buf = [0u8; 16];
    server.recv_from(&mut buf).expect("the query passes (rule)");
    server.send_to(b"a1", client_addr).expect("reply");
    assert!(
        client.recv(&mut buf).is_ok(),
        "{mode}: the reply passes (tracked)"
    );
    thread::sleep(Duration::from_millis(2200));
    server.send_to(b"a2", client_addr).expect("late reply");
    assert!(
        client.recv(&mut buf).is_err(),
        "{mode}: a reply after the 1 s timeout must be dropped (the connection expired)"
    );

    // Fill the table (4 entries) with TCP connections kept open, then more: the rules still
    // decide every new connection.
    let mut open = Vec::new();
    for _ in 0..8 {
        let (seen, s) = tcp_connect(&ns, src, 0, SocketAddrV4::new(dst, 80));
        assert_eq!(
            seen,
            Seen::Passed,
            "{mode}: tcp 80 with a full table is still accepted"
        );
        open.extend(s);
    }
    let (seen, _) = tcp_connect(&ns, src, 0, SocketAddrV4::new(dst, 81));
    assert_eq!(
        seen,
        Seen::Silence,
        "{mode}: tcp 81 with a full table is still dropped"
    );
    if mode != "kernel" {
        let status = netfn_ok(&["status", &chain]);
        assert!(status.contains("expired"), "{status}");
        assert!(
            !status.contains(" 0 expired"),
            "{mode}: the expired UDP connection is counted: {status}"
        );
        // 8 connections and 1 UDP flow through a table of 4: at least 4 were evicted.
        let evicted: u64 = status
            .split(", ")
            .find_map(|item| item.strip_suffix(" evicted"))
            .and_then(|n| n.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(evicted >= 4, "{mode}: evictions are counted: {status}");
    }
}

#[test]
fn conntrack_tc() {
    conntrack_in("tc");
}

#[test]
fn conntrack_xdp() {
    conntrack_in("xdp");
}

#[test]
fn conntrack_kernel() {
    conntrack_in("kernel");
}

/// A rule-set swap by `netfn apply` while a TCP transfer and a sequenced UDP stream run: both
/// complete with nothing lost; right after, the new rules hold for new connections.
fn swap_in(mode: &str) {
    let _turn = alone();
    let before = r#"default = "drop"

[[chain.function.rule]]
name = "stream"
proto = "udp"
dport = 7000
action = "accept"

[[chain.function.rule]]
name = "bulk"
proto = "tcp"
dport = 80
action = "accept"
"#;
    // After: neither the stream nor the transfer would be allowed anew; tcp 81 is.
    let after = r#"default = "drop"

[[chain.function.rule]]
name = "other"
proto = "tcp"
dport = 81
action = "accept"
"#;
    let lab = Lab::up("sw", mode, before, &[80, 81], &[]);
    let chain = lab.chain.clone();
    let v2 = lab
        .dir
        .write("v2.toml", &firewall_chain(&chain, mode, after));
    let (ns, src, dst) = ends(&chain, From::Ingress);

    // A TCP transfer that runs across the swap.
    let (_, stream) = tcp_connect(&ns, src, 0, SocketAddrV4::new(dst, 80));
    let mut stream = stream.expect("tcp 80 connects before the swap");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let transfer = thread::spawn(move || {
        let chunk = vec![7u8; 64 * 1024];
        let mut back = vec![0u8; chunk.len()];
        let started = Instant::now();
        let mut moved = 0usize;
        while started.elapsed() < Duration::from_millis(2500) {
            if let Err(e) = stream
                .write_all(&chunk)
                .and_then(|()| stream.read_exact(&mut back))
            {
                return Err(format!("after {moved} bytes: {e}"));
            }
            moved += chunk.len();
        }
        Ok(moved)
    });

    let mut applied = String::new();
    let sender = SenderRing::before(&chain, &ns, "nf-out");
    let stream = sequenced_stream_during(&chain, 20_000, 10_000, 7000, || {
        applied = netfn_ok(&["apply", &v2.to_string_lossy()]);
    });
    assert!(applied.contains("in place"), "{applied}");
    let moved = transfer.join().expect("transfer thread");
    let status = netfn_ok(&["status", &chain]);
    let moved = moved.unwrap_or_else(|e| {
        panic!("{mode}: the TCP transfer broke across the swap: {e}\n{status}")
    });
    assert!(moved > 0, "{mode}");
    let lost = stream.lost();
    let explained_in_vm = sender.explains(mode, lost.len(), &format!("{mode} swap"));
    assert!(
        lost.is_empty() || explained_in_vm,
        "{mode}: {} of {} datagrams of an established stream lost across the swap (first {:?})\napply: {applied}\n{}\n{}",
        lost.len(),
        stream.sent,
        &lost[..lost.len().min(10)],
        netfn_ok(&["status", &chain]),
        interface_stats(&chain)
    );
    // Right after: the new rules decide new connections.
    let (seen80, _) = tcp_connect(&ns, src, 0, SocketAddrV4::new(dst, 80));
    assert_eq!(
        seen80,
        Seen::Silence,
        "{mode}: tcp 80 is no longer allowed anew"
    );
    let (seen81, _) = tcp_connect(&ns, src, 0, SocketAddrV4::new(dst, 81));
    assert_eq!(
        seen81,
        Seen::Passed,
        "{mode}: tcp 81 is allowed right after the swap"
    );
}

#[test]
fn swap_under_traffic_tc() {
    swap_in("tc");
}

#[test]
fn swap_under_traffic_xdp() {
    swap_in("xdp");
}

#[test]
fn swap_under_traffic_kernel() {
    swap_in("kernel");
}

/// Bad rules are reported with their place and a hint; a shadowed rule is a warning.
/// Connections past their idle timeout are not live, though their entries wait in the table
/// until a packet of theirs comes (the stage removes them then): status counts them expired,
/// and not evicted. Before, every entry in the table counted as live, and a table full of
/// ended connections showed as full of live ones (fast path; kernel mode counts in nftables).
#[test]
fn expired_connections_are_not_live() {
    let _turn = shared();
    let settings = r#"default = "drop"
conntrack = { udp = 1, udp_stream = 1 }

[[chain.function.rule]]
proto = "udp"
dport = 53
action = "accept"
"#;
    let lab = Lab::up("ex", "tc", settings, &[], &[53]);
    let chain = lab.chain.clone();
    let connections = || {
        let status = netfn_ok(&["status", &chain]);
        status
            .lines()
            .find(|l| l.contains(" live, "))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no connections row: {status}"))
    };
    for _ in 0..3 {
        let (ns, src, dst) = ends(&chain, From::Ingress);
        assert_eq!(
            udp_probe(&ns, src, SocketAddrV4::new(dst, 53)),
            Seen::Passed
        );
    }
    let row = connections();
    assert!(
        row.contains("connections 3 live, 3 created, 0 expired"),
        "{row}"
    );
    thread::sleep(Duration::from_millis(2200));
    let row = connections();
    assert!(
        row.contains("connections 0 live, 3 created, 3 expired, 0 evicted"),
        "after the timeout: {row}"
    );
}

/// An ICMP error about a ping (time exceeded, as `traceroute -I` and `mtr` draw them; host
/// unreachable) belongs to the ping's connection, as conntrack relates it: it reaches the
/// pinging client through a default-drop firewall, in every mode. The quoted echo is known by
/// its identifier, as the ping itself is (before, the stage read the quoted echo's type and
/// checksum as its ports, matched no connection, and the rules dropped the error).
fn icmp_errors_about_pings_in(mode: &str) {
    let _turn = shared();
    let settings = r#"default = "drop"

[[chain.function.rule]]
icmp_type = "echo-request"
action = "accept"
"#;
    let lab = Lab::up("ie", mode, settings, &[], &[]);
    let (ns, client, server) = ends(&lab.chain, From::Ingress);
    let (egress_ns, ..) = ends(&lab.chain, From::Egress);
    let (pinger, router) = (
        raw_socket(&ns, libc::IPPROTO_ICMP, WAIT),
        raw_socket(&egress_ns, libc::IPPROTO_ICMP, WAIT),
    );
    let id: u16 = 0x4e46;
    let mut echo = vec![8, 0, 0, 0];
    echo.extend_from_slice(&id.to_be_bytes());
    echo.extend_from_slice(&[0, 1]);
    echo.extend_from_slice(b"netfn");
    send_icmp(&pinger, server, echo.clone());
    // The error a router on the way would send: its IPv4 header and the echo's first 8 bytes.
    let link = netfn_tests::frames::Link {
        src_mac: [0; 6],
        dst_mac: [0; 6],
        src: client,
        dst: server,
    };
    let mut quoted = netfn_tests::frames::ipv4(&link, netfn_tests::frames::ICMP, 5, echo.len(), 0);
    quoted[8] = 1; // TTL 1: it expired at the router
    netfn_tests::frames::set_ipv4_checksum(&mut quoted);
    quoted.extend_from_slice(&echo[..8]);
    let mut error = vec![11, 0, 0, 0, 0, 0, 0, 0];
    error.extend_from_slice(&quoted);
    send_icmp(&router, client, error);
    // The client sees the echo's reply, then the error (or nothing within the wait).
    let mut buf = [0u8; 256];
    let arrived = std::iter::from_fn(|| {
        // SAFETY: recv(2) into a buffer of its stated size.
        let n = unsafe { libc::recv(pinger.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 20).then(|| buf[usize::from(buf[0] & 0x0f) * 4])
    })
    .take(4)
    .any(|icmp_type| icmp_type == 11);
    assert!(
        arrived,
        "{mode}: the time-exceeded error about the ping did not reach the client"
    );
}

#[test]
fn icmp_errors_about_pings_tc() {
    icmp_errors_about_pings_in("tc");
}

#[test]
fn icmp_errors_about_pings_xdp() {
    icmp_errors_about_pings_in("xdp");
}

#[test]
fn icmp_errors_about_pings_kernel() {
    icmp_errors_about_pings_in("kernel");
}

/// An ICMP error about no connection the firewall passed is invalid and dropped before the
/// rules (`fw-invalid`), as conntrack and nftables' `ct state invalid drop` treat it, even where
/// the rules accept everything: a forged host-unreachable sent to the client about a UDP flow
/// that never was does not reach it, even after an accepted timestamp request from the same
/// host (its portless key was once the error's own), nor does an error about a tracked ping
/// sent to the host that did not send the quoted packet; the pings the rules accept pass.
/// Before, the fast path ran the rules on such an error and let it through (kernel mode
/// dropped it).
fn unrelated_icmp_errors_are_invalid_in(mode: &str) {
    let _turn = shared();
    let lab = Lab::up("iv", mode, "default = \"accept\"\n", &[], &[]);
    let (ns, client, server) = ends(&lab.chain, From::Ingress);
    let (egress_ns, ..) = ends(&lab.chain, From::Egress);
    let (pinger, forger) = (
        raw_socket(&ns, libc::IPPROTO_ICMP, WAIT),
        raw_socket(&egress_ns, libc::IPPROTO_ICMP, WAIT),
    );
    let mut echo = vec![8, 0, 0, 0, 0x4e, 0x47, 0, 1];
    echo.extend_from_slice(b"netfn");
    send_icmp(&pinger, server, echo.clone());
    // A timestamp request from the forger, which the rules accept: a portless ICMP connection
    // between the two hosts, whose key an error's own would match.
    send_icmp(&forger, client, vec![13, 0, 0, 0, 0, 0, 0, 0]);
    let link = netfn_tests::frames::Link {
        src_mac: [0; 6],
        dst_mac: [0; 6],
        src: client,
        dst: server,
    };
    let mut error = vec![3, 1, 0, 0, 0, 0, 0, 0];
    error.extend(netfn_tests::frames::ipv4(
        &link,
        netfn_tests::frames::UDP,
        5,
        8,
        0,
    ));
    error.extend(netfn_tests::frames::udp(&link, 4_321, 5_678, &[]));
    send_icmp(&forger, client, error);
    // A time-exceeded about the ping's reply (server to client), sent to the client: it quotes
    // a tracked connection, but not a packet the client sent (conntrack: invalid).
    let reply_link = netfn_tests::frames::Link {
        src: server,
        dst: client,
        ..link
    };
    let mut quoted =
        netfn_tests::frames::ipv4(&reply_link, netfn_tests::frames::ICMP, 5, echo.len(), 0);
    quoted.extend_from_slice(&[0, 0, 0, 0, 0x4e, 0x47, 0, 1]);
    let mut misdirected = vec![11, 0, 0, 0, 0, 0, 0, 0];
    misdirected.extend_from_slice(&quoted);
    send_icmp(&forger, client, misdirected);
    let arrived: Vec<u8> = std::iter::from_fn(|| netfn_tests::raw::recv_packet(&pinger))
        .take(6)
        .filter_map(|p| p.get(usize::from(p.first()? & 0x0f) * 4).copied())
        .collect();
    assert!(
        arrived.contains(&0),
        "{mode}: the echo reply did not arrive: {arrived:?}"
    );
    assert!(
        arrived.contains(&13),
        "{mode}: the timestamp request did not arrive: {arrived:?}"
    );
    assert!(
        !arrived.contains(&3),
        "{mode}: the unrelated host-unreachable reached the client"
    );
    assert!(
        !arrived.contains(&11),
        "{mode}: the error about the reply, sent to the reply's receiver, reached it"
    );
    if mode != "kernel" {
        let drops = fastpath_drops(&lab.chain);
        assert_eq!(drops.get("fw-invalid"), Some(&2), "{mode}: {drops:?}");
    }
}

#[test]
fn unrelated_icmp_errors_are_invalid_tc() {
    unrelated_icmp_errors_are_invalid_in("tc");
}

#[test]
fn unrelated_icmp_errors_are_invalid_xdp() {
    unrelated_icmp_errors_are_invalid_in("xdp");
}

#[test]
fn unrelated_icmp_errors_are_invalid_kernel() {
    unrelated_icmp_errors_are_invalid_in("kernel");
}

/// An ICMP error quoting an IPv4 header with options relates to its connection as any other: a
/// UDP datagram sent with IP options (four NOPs) to a closed port the rules accept is answered
/// by the server's kernel with a port-unreachable quoting that header, options and all, and the
/// client's socket sees it (connection refused) in every mode. Before, the fast path read only
/// quoted headers of 20 bytes (first byte 0x45), took this one for no connection's, and
/// dropped it as invalid (`fw-invalid`), while kernel mode's conntrack related it.
fn icmp_errors_quoting_ip_options_in(mode: &str) {
    let _turn = shared();
    let settings = r#"default = "drop"

[[chain.function.rule]]
proto = "udp"
dport = 9
action = "accept"
"#;
    let lab = Lab::up("io", mode, settings, &[], &[]);
    let (ns, client, server) = ends(&lab.chain, From::Ingress);
    let watcher = raw_socket(&ns, libc::IPPROTO_ICMP, WAIT);
    let s = in_netns(&ns, || UdpSocket::bind(SocketAddrV4::new(client, 0))).expect("bind udp");
    let nops: [u8; 4] = [1; 4];
    netfn_tests::set_socket_option(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_OPTIONS, &nops)
        .expect("IP_OPTIONS");
    let seen = udp_probe_from(&s, SocketAddrV4::new(server, 9));
    // The first byte of the quoted header of each port-unreachable that reached the client.
    let quoted: Vec<u8> = std::iter::from_fn(|| netfn_tests::raw::recv_packet(&watcher))
        .take(4)
        .filter_map(|p| {
            let icmp = usize::from(p.first()? & 0x0f) * 4;
            (p.get(icmp..icmp + 2)? == [3, 3]).then(|| p.get(icmp + 8).copied())?
        })
        .collect();
    let drops = fastpath_drops(&lab.chain);
    assert_eq!(
        seen,
        Seen::Refused,
        "{mode}: the port-unreachable quoting IP options did not reach the client's socket \
         (quoted headers that arrived: {quoted:x?}; drops: {drops:?})"
    );
    assert_eq!(
        quoted,
        [0x46],
        "{mode}: the error that arrived did not quote a header with options"
    );
    assert_eq!(drops.get("fw-invalid"), None, "{mode}: {drops:?}");
}

#[test]
fn icmp_errors_quoting_ip_options_tc() {
    icmp_errors_quoting_ip_options_in("tc");
}

#[test]
fn icmp_errors_quoting_ip_options_xdp() {
    icmp_errors_quoting_ip_options_in("xdp");
}

#[test]
fn icmp_errors_quoting_ip_options_kernel() {
    icmp_errors_quoting_ip_options_in("kernel");
}

/// A reject never answers an ICMP error with an ICMP error (RFC 1122 3.2.2; the kernel's
/// icmp_send never does): an unrelated destination-unreachable that the default verdict would
/// reject is dropped (as invalid, before the rules), while a UDP datagram it rejects is still
/// answered at once. Before, the fast path answered the error with a port-unreachable (kernel
/// mode rejects with the kernel's own reject, which has this rule).
fn reject_never_answers_an_icmp_error_in(mode: &str) {
    let _turn = shared();
    let settings = r#"default = "reject"

[[chain.function.rule]]
proto = "tcp"
dport = 80
action = "accept"
"#;
    let lab = Lab::up("rj", mode, settings, &[80], &[]);
    let (ns, client, server) = ends(&lab.chain, From::Ingress);
    assert_eq!(
        udp_probe(&ns, client, SocketAddrV4::new(server, 9)),
        Seen::Refused,
        "{mode}: a rejected datagram is answered"
    );
    let sender = raw_socket(&ns, libc::IPPROTO_ICMP, WAIT);
    // Host unreachable about a UDP datagram the server never sent: no connection has it.
    let link = netfn_tests::frames::Link {
        src_mac: [0; 6],
        dst_mac: [0; 6],
        src: server,
        dst: client,
    };
    let mut error = vec![3, 1, 0, 0, 0, 0, 0, 0];
    error.extend(netfn_tests::frames::ipv4(
        &link,
        netfn_tests::frames::UDP,
        5,
        8,
        0,
    ));
    error.extend(netfn_tests::frames::udp(&link, 4_321, 5_678, &[]));
    send_icmp(&sender, server, error);
    let mut buf = [0u8; 256];
    // SAFETY: recv(2) into a buffer of its stated size (the socket waits at most WAIT).
    let n = unsafe { libc::recv(sender.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(
        n < 0,
        "{mode}: the ICMP error was answered with ICMP type {}",
        buf[usize::from(buf[0] & 0x0f) * 4]
    );
}

#[test]
fn reject_never_answers_an_icmp_error_tc() {
    reject_never_answers_an_icmp_error_in("tc");
}

#[test]
fn reject_never_answers_an_icmp_error_xdp() {
    reject_never_answers_an_icmp_error_in("xdp");
}

/// Closes `s` with a reset (SO_LINGER 0): no TIME_WAIT, so its ports can open again at once.
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    netfn_tests::set_socket_option(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &linger)
        .unwrap_or_else(|e| panic!("SO_LINGER: {e}"));
}

/// The ports of a TCP connection that closed, opened again at once (a client that wrapped its
/// port range, or aborted with a reset): a new connection, which the rules decide and which
/// lives by the established timeout, not the old one's closing timeout. Before, the new SYN
/// only refreshed the closing entry: after `tcp_closing` (1 s here) of quiet its data was
/// dropped as not a SYN. In every mode (kernel: conntrack does this itself).
fn reused_ports_in(mode: &str) {
    let _turn = shared();
    let settings = r#"default = "drop"
conntrack = { tcp_closing = 1 }

[[chain.function.rule]]
proto = "tcp"
dport = 80
action = "accept"
"#;
    let lab = Lab::up("ru", mode, settings, &[80], &[]);
    let (ns, src, dst) = ends(&lab.chain, From::Ingress);
    let to = SocketAddrV4::new(dst, 80);
    let sport = 40_321;
    let (seen, first) = tcp_connect(&ns, src, sport, to);
    assert_eq!(seen, Seen::Passed, "{mode}: the first connection");
    reset(first.expect("a stream"));
    thread::sleep(Duration::from_millis(200));
    let (seen, again) = tcp_connect(&ns, src, sport, to);
    assert_eq!(seen, Seen::Passed, "{mode}: the same ports again");
    let mut again = again.expect("a stream");
    again
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    // Quiet for longer than the closing timeout, then data both ways.
    thread::sleep(Duration::from_millis(2500));
    again.write_all(b"still here").expect("send");
    let mut buf = [0u8; 10];
    again.read_exact(&mut buf).unwrap_or_else(|e| {
        panic!("{mode}: the reopened connection died after the closing timeout: {e}")
    });
    assert_eq!(&buf, b"still here");
}

#[test]
fn reused_ports_tc() {
    reused_ports_in("tc");
}

#[test]
fn reused_ports_xdp() {
    reused_ports_in("xdp");
}

#[test]
fn reused_ports_kernel() {
    reused_ports_in("kernel");
}

/// A connection half-closed by the side that opened it (a client that sent its whole request
/// and shut down its writing, as `nc -N` or `curl -T` do) lives while the other side takes its
/// time: an answer after 2.5 s of quiet, longer than `tcp_closing` (1 s here), still arrives.
/// Before, the client's FIN started the closing timeout and the late answer was dropped (as not
/// a SYN; kernel mode's FIN_WAIT and CLOSE_WAIT had the closing timeout too). And
/// `tcp_half_closed` (4 s here) still ends such a connection: an answer after 6 s is dropped.
fn half_closed_in(mode: &str) {
    let _turn = shared();
    let settings = r#"default = "drop"
conntrack = { tcp_closing = 1, tcp_half_closed = 4 }

[[chain.function.rule]]
proto = "tcp"
dport = [80, 81]
action = "accept"
"#;
    let lab = Lab::up("hc", mode, settings, &[], &[]);
    let (client_ns, _, dst) = ends(&lab.chain, From::Ingress);
    let (server_ns, _, _) = ends(&lab.chain, From::Egress);
    let exchange = |port: u16, delay_ms: u64| {
        let to = SocketAddrV4::new(dst, port);
        let (c, s) = (client_ns.clone(), server_ns.clone());
        thread::spawn(move || late_answer(&c, to, &s, to, Duration::from_millis(delay_ms)))
    };
    let (soon, too_late) = (exchange(80, 2_500), exchange(81, 6_000));
    let soon = soon.join().expect("the first exchange");
    assert_eq!(
        String::from_utf8_lossy(&soon),
        "late answer",
        "{mode}: the half-closed connection died after the closing timeout"
    );
    let too_late = too_late.join().expect("the second exchange");
    assert!(
        too_late.is_empty(),
        "{mode}: an answer after the half-closed timeout passed: {too_late:?}"
    );
    let drops = fastpath_drops(&lab.chain);
    if mode != "kernel" {
        assert!(
            drops.get("fw-not-syn").copied().unwrap_or(0) > 0,
            "{mode}: the answer after the half-closed timeout was not dropped as not a SYN: \
             {drops:?}"
        );
    }
}

#[test]
fn half_closed_tc() {
    half_closed_in("tc");
}

#[test]
fn half_closed_xdp() {
    half_closed_in("xdp");
}

#[test]
fn half_closed_kernel() {
    half_closed_in("kernel");
}

/// A segment with SYN and FIN together opens nothing (Linux's conntrack holds it invalid): the
/// fast path drops it as not a SYN (`fw-not-syn`), before the rules: no rule counts it, and no
/// connection is made of it. Before, it passed the SYN check and the rules accepted it.
fn syn_with_fin_in(mode: &str) {
    let _turn = shared();
    let lab = Lab::up("sf", mode, RULES, &[80], &[]);
    let chain = lab.chain.clone();
    let (ns, src, dst) = ends(&chain, From::Ingress);
    let rules_before = rule_counts(&chain);
    let link = netfn_tests::frames::Link {
        src_mac: [0; 6],
        dst_mac: [0; 6],
        src,
        dst,
    };
    let segment = netfn_tests::frames::tcp(&link, 40_400, 80, 0x03, 5); // SYN | FIN
    // The kernel writes the IPv4 header; the TCP header's checksum is over these addresses.
    send_raw(&raw_socket(&ns, libc::IPPROTO_TCP, WAIT), dst, &segment);
    thread::sleep(Duration::from_millis(300));
    let drops = fastpath_drops(&chain);
    assert_eq!(
        drops.get("fw-not-syn").copied(),
        Some(1),
        "{mode}: {drops:?}"
    );
    assert_eq!(
        rule_counts(&chain),
        rules_before,
        "{mode}: a rule counted it"
    );
}

#[test]
fn syn_with_fin_tc() {
    syn_with_fin_in("tc");
}

#[test]
fn syn_with_fin_xdp() {
    syn_with_fin_in("xdp");
}

#[test]
fn rule_counters_carry_over_an_apply_tc() {
    rule_counters_carry_over_an_apply("tc", &[]);
}

#[test]
fn rule_counters_carry_over_an_apply_xdp() {
    rule_counters_carry_over_an_apply("xdp", &[]);
}

/// The failed applies of [`rule_counters_carry_over_an_apply`]: one that failed before the new
/// stage instance went live, one after (the restored instance replaces the failed one).
const FAILED_APPLIES: [&str; 2] = ["apply-create", "apply-switch"];

#[test]
fn rule_counters_stay_when_an_apply_fails_tc() {
    rule_counters_carry_over_an_apply("tc", &FAILED_APPLIES);
}

#[test]
fn rule_counters_stay_when_an_apply_fails_xdp() {
    rule_counters_carry_over_an_apply("xdp", &FAILED_APPLIES);
}

/// The per-rule counters of the rules that persist (by name; the unnamed ones together, the
/// default verdict) go on counting across an `apply` that changes the rule set in place (here:
/// a rule inserted first, so every rule after it has another index), as Prometheus counters
/// must across a reload. Before, they started again from zero with the new stage instance.
/// The same apply failing first at each of `failing` (failpoints) leaves them where they were:
/// before, the old settings' restored instance started them from zero.
fn rule_counters_carry_over_an_apply(mode: &str, failing: &[&str]) {
    let _turn = shared();
    let rules = |extra: &str| {
        format!(
            "default = \"drop\"\n{extra}\n[[chain.function.rule]]\nname = \"web\"\nproto = \"tcp\"\n\
             dport = 80\naction = \"accept\"\n\n[[chain.function.rule]]\nproto = \"tcp\"\n\
             dport = 81\naction = \"accept\"\n"
        )
    };
    let lab = Lab::up("rk", mode, &rules(""), &[80, 81], &[]);
    let chain = lab.chain.clone();
    let (ns, src, dst) = ends(&chain, From::Ingress);
    let traffic = |web: usize, other: usize| {
        for (port, n) in [(80, web), (81, other)] {
            for _ in 0..n {
                let (seen, _) = tcp_connect(&ns, src, 0, SocketAddrV4::new(dst, port));
                assert_eq!(seen, Seen::Passed, "{mode}: tcp {port}");
            }
        }
        // One datagram to a port no rule accepts: the default verdict.
        assert_eq!(
            udp_probe(&ns, src, SocketAddrV4::new(dst, 5005)),
            Seen::Silence,
            "{mode}: udp 5005"
        );
    };
    // The rules this test sends to (a host agent's chain probe may come too).
    let counted = || {
        let mut c = rule_counts(&chain);
        c.remove("netfn-probe");
        c
    };
    traffic(3, 2);
    let expect = |(web, unnamed, default): (u64, u64, u64)| {
        BTreeMap::from([
            ("web".to_string(), web),
            ("(unnamed)".to_string(), unnamed),
            ("(default)".to_string(), default),
        ])
    };
    let mut sent = (3, 2, 1);
    assert_eq!(counted(), expect(sent), "{mode}: before");
    let mail = "\n[[chain.function.rule]]\nname = \"mail\"\nproto = \"tcp\"\ndport = 25\n\
                action = \"accept\"\n";
    let v2 = lab
        .dir
        .write("v2.toml", &firewall_chain(&chain, mode, &rules(mail)));
    for point in failing {
        apply_fails_at(point, &v2);
        assert_eq!(
            counted(),
            expect(sent),
            "{mode}: right after an apply that failed at {point}"
        );
        traffic(1, 1);
        sent = (sent.0 + 1, sent.1 + 1, sent.2 + 1);
        assert_eq!(
            counted(),
            expect(sent),
            "{mode}: counting on after an apply that failed at {point}"
        );
    }
    netfn_ok(&["apply", &v2.to_string_lossy()]);
    assert_eq!(counted(), expect(sent), "{mode}: right after the apply");
    traffic(2, 1);
    assert_eq!(
        counted(),
        expect((sent.0 + 2, sent.1 + 1, sent.2 + 1)),
        "{mode}: the counts before the apply and after, summed"
    );
}

/// A firewall without rules counts only its default verdict (and the probe); that count goes on
/// across an apply too. Its counter map was sized for one rule, so the readers never found the
/// carried half and the carry put the default verdict's total under the probe's label.
#[test]
fn the_default_verdicts_count_of_a_firewall_without_rules_carries_over_an_apply() {
    let _turn = shared();
    let mode = "tc";
    let settings = |udp: u32| format!("default = \"drop\"\nconntrack = {{ udp = {udp} }}\n");
    let lab = Lab::up("rz", mode, &settings(30), &[], &[]);
    let chain = lab.chain.clone();
    let (ns, src, dst) = ends(&chain, From::Ingress);
    let default = || rule_counts(&chain).get("(default)").copied().unwrap_or(0);
    let drop_one = || {
        assert_eq!(
            udp_probe(&ns, src, SocketAddrV4::new(dst, 5005)),
            Seen::Silence,
            "udp 5005"
        );
    };
    drop_one();
    assert_eq!(default(), 1, "before");
    let v2 = lab
        .dir
        .write("v2.toml", &firewall_chain(&chain, mode, &settings(40)));
    let applied = netfn_ok(&["apply", &v2.to_string_lossy()]);
    assert!(applied.contains("in place"), "{applied}");
    assert_eq!(
        default(),
        1,
        "right after the apply: {:?}",
        rule_counts(&chain)
    );
    drop_one();
    assert_eq!(
        default(),
        2,
        "the counts before the apply and after, summed"
    );
}

/// A datagram larger than the path's MTU leaves its sender in fragments, and only the first
/// carries the ports. The firewall judges the datagram by its first fragment, in every mode, as
/// nftables does once the kernel has reassembled it: a 3,000-byte UDP datagram to an accepted
/// port arrives whole, and so does its answer (its fragments follow the tracked connection);
/// a 2,000-byte ping under an echo-request rule is answered. A datagram to a port the rules
/// drop loses its first fragment to the rules, and its later fragments with it (`fw-fragment`).
fn fragments_in(mode: &str) {
    let _turn = shared();
    let settings = r#"default = "drop"

[[chain.function.rule]]
proto = "udp"
dport = 7001
action = "accept"

[[chain.function.rule]]
icmp_type = "echo-request"
action = "accept"
"#;
    let lab = Lab::up("fr", mode, settings, &[], &[7001, 7002]);
    let chain = lab.chain.clone();
    let (ns, src, dst) = ends(&chain, From::Ingress);
    let sent: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let echoed = |port: u16| {
        let s = in_netns(&ns, || UdpSocket::bind(SocketAddrV4::new(src, 0))).expect("bind");
        s.connect(SocketAddrV4::new(dst, port)).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s.send(&sent).expect("send");
        let mut buf = vec![0u8; 65536];
        match s.recv(&mut buf) {
            Ok(n) => buf[..n] == sent[..],
            Err(_) => false,
        }
    };
    assert!(
        echoed(7001),
        "{mode}: a 3,000-byte datagram to an accepted port, or its answer, did not arrive \
         whole"
    );
    assert!(
        !echoed(7002),
        "{mode}: a 3,000-byte datagram to a port the rules drop was answered"
    );
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &ns, "ping", "-c", "1", "-W", "2", "-q", "-s", "2000",
        ])
        .arg(dst.to_string())
        .output()
        .expect("run ping");
    assert!(
        ping.status.success(),
        "{mode}: a 2,000-byte ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    if mode != "kernel" {
        // 3,000 bytes at an MTU of 1,500: one first fragment and two later ones.
        let drops = fastpath_drops(&chain);
        assert_eq!(
            drops.get("fw-fragment").copied(),
            Some(2),
            "{mode}: {drops:?}"
        );
    }
}

#[test]
fn fragments_tc() {
    fragments_in("tc");
}

#[test]
fn fragments_xdp() {
    fragments_in("xdp");
}

#[test]
fn fragments_kernel() {
    fragments_in("kernel");
}

#[test]
fn validate_reports_bad_rules_and_warns_about_shadowed_ones() {
    let dir = TempDir::new("fwval");
    let bad = r#"default = "maybe"

[[chain.function.rule]]
proto = "udp"
src = "10.1.2.3/24"
dport = "90-80"
action = "accept"

[[chain.function.rule]]
proto = "icmp"
dport = 80
action = "accept"

[[chain.function.rule]]
src = "2001:db8::/32"
action = "drop"
"#;
    let file = dir.write("bad.toml", &firewall_chain("fwval", "tc", bad));
    let out = netfn(&["validate", &file.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for expected in [
        "unknown action `maybe`",
        "has host bits set",
        "is reversed",
        "`dport` needs proto = \"tcp\" or \"udp\"",
        "is IPv6: chains are IPv4 for now",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("bad.toml:12:1") || stderr.contains("bad.toml:"),
        "{stderr}"
    );

    // A rules file: its errors point into it, by line and column.
    dir.write(
        "broken.toml",
        "[[rule]]\nproto = \"tcp\"\naction = \"accept\"\n\n[[rule]]\nproto = \"sctp\"\naction = \"drop\"\n",
    );
    let with_file = dir.write(
        "file.toml",
        &firewall_chain("fwval", "tc", "rules_file = \"broken.toml\"\n"),
    );
    let out = netfn(&["validate", &with_file.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("broken.toml:6:9: error") && stderr.contains("unknown protocol `sctp`"),
        "an error in the rules file points into it:\n{stderr}"
    );

    // A rule that an earlier one shadows is a warning, at its place; the file is valid.
    dir.write(
        "shadow.toml",
        "[[rule]]\nproto = \"tcp\"\naction = \"accept\"\n\n[[rule]]\nname = \"late\"\nproto = \"tcp\"\ndport = 22\naction = \"drop\"\n",
    );
    let shadowed = dir.write(
        "shadowed.toml",
        &firewall_chain("fwval", "tc", "rules_file = \"shadow.toml\"\n"),
    );
    let out = netfn(&["validate", &shadowed.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("shadow.toml:5:1: warning") && stderr.contains("`late` can never match"),
        "the shadowed rule is a warning at its place:\n{stderr}"
    );

    // A rule on an ICMP error type never matches (connection tracking decides errors): a
    // warning at the rule.
    dir.write(
        "errors.toml",
        "[[rule]]\nproto = \"icmp\"\nicmp_type = \"echo-request\"\naction = \"accept\"\n\n\
         [[rule]]\nproto = \"icmp\"\nicmp_type = \"destination-unreachable\"\naction = \"accept\"\n",
    );
    let errors = dir.write(
        "errors-chain.toml",
        &firewall_chain("fwval", "tc", "rules_file = \"errors.toml\"\n"),
    );
    let out = netfn(&["validate", &errors.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("errors.toml:6:1: warning")
            && stderr.contains("ICMP type 3 never matches")
            && !stderr.contains("errors.toml:1:1"),
        "the rule on ICMP errors is a warning at its place, the echo rule none:\n{stderr}"
    );
}
