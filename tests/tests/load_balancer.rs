//! The load balancer with real traffic in tc, xdp and kernel mode: TCP connections to a VIP
//! spread over real servers in the egress namespace by weight, a live apply that adds a backend
//! and drains one while connections stay open, and a UDP service. A `forward` function in front
//! of the load balancer proves that its neighbours accept the VIP as the source of answers.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use netfn_tests::agent::{Agent, sample};
use netfn_tests::frames::{self, Link};
use netfn_tests::loss::function_drops;
use netfn_tests::raw::{raw_socket, recv_packet, send_icmp};
use netfn_tests::test_run::{self, Hook, Verdict};
use netfn_tests::traffic::late_answer;
use netfn_tests::{
    ChainGuard, TempDir, apply_fails_at, in_netns, ip_in, netfn_ok, shared, status_details,
    unique_chain,
};

/// Crafted ICMP errors through the load balancer's hop (`BPF_PROG_TEST_RUN`).
#[path = "load_balancer/icmp_quotes.rs"]
mod icmp_quotes;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// A second service's VIP, for the tests that need two.
const VIP2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 84, 1, 2);
/// The backends' addresses, added to the egress endpoint's interface.
const SERVERS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 84, 2, 10),
    Ipv4Addr::new(10, 84, 2, 11),
    Ipv4Addr::new(10, 84, 2, 12),
    Ipv4Addr::new(10, 84, 2, 13),
];
const SERVER_PORT: u16 = 8080;
/// What [`answers`] records for a refused connection.
const REFUSED: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

/// A chain `front` (forward) → `lb1` (load-balancer with `services`, TOML of its service
/// tables) between 10.84.1.2/24 and 10.84.2.2/24.
fn chain_file(name: &str, mode: &str, services: &str) -> String {
    format!(
        "[[chain]]\nname = \"{name}\"\nfastpath = \"{mode}\"\n\n[chain.ingress]\naddress = \
         \"10.84.1.2/24\"\n\n[chain.egress]\naddress = \"10.84.2.2/24\"\n\n[[chain.function]]\n\
         name = \"front\"\nkind = \"forward\"\n\n[[chain.function]]\nname = \"lb1\"\n\
         kind = \"load-balancer\"\nconntrack = {{ tcp_closing = 1, udp = 2 }}\n{services}"
    )
}

/// [`chain_file`] with a forward function `mid` between `front` and `lb1`.
fn chain_file_with_mid(name: &str, mode: &str, services: &str) -> String {
    chain_file(name, mode, services).replace(
        "[[chain.function]]\nname = \"lb1\"",
        "[[chain.function]]\nname = \"mid\"\nkind = \"forward\"\n\n\
         [[chain.function]]\nname = \"lb1\"",
    )
}

/// A service table: `vip:port/proto` to backends `(server index, weight)` on [`SERVER_PORT`].
fn service(port: u16, proto: &str, backends: &[(usize, u32)]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(i, w)| {
            format!(
                "{{ address = \"{}\", port = {SERVER_PORT}, weight = {w} }}",
                SERVERS[*i]
            )
        })
        .collect();
    format!(
        "\n[[chain.function.service]]\nvip = \"{VIP}\"\nproto = \"{proto}\"\nport = {port}\n\
         backends = [{}]\n",
        list.join(", ")
    )
}

/// TCP and UDP servers on every backend address in the egress namespace: each answers with its
/// own address (TCP: once per line read; UDP: to every datagram). A backend's TCP server can be
/// stopped (its listener closed: connections are refused) and started again.
struct Servers {
    egress_ns: String,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    tcp: Vec<Option<(Arc<AtomicBool>, thread::JoinHandle<()>)>>,
}

impl Servers {
    fn start(egress_ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut servers = Servers {
            egress_ns: egress_ns.to_string(),
            stop: stop.clone(),
            threads: Vec::new(),
            tcp: Vec::new(),
        };
        for addr in SERVERS {
            let add = std::process::Command::new("ip")
                .args(["-n", egress_ns, "addr", "add", &format!("{addr}/24"), "dev"])
                .arg("nf-in")
                .status()
                .expect("run ip");
            assert!(add.success(), "add {addr} in {egress_ns}");
            let udp = in_netns(egress_ns, || {
                UdpSocket::bind(SocketAddrV4::new(addr, SERVER_PORT)).expect("bind udp")
            });
            udp.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let s = stop.clone();
            servers
                .threads
                .push(thread::spawn(move || serve_udp(udp, addr, &s)));
            servers.tcp.push(None);
            servers.start_tcp(servers.tcp.len() - 1);
        }
        servers
    }

    /// Starts server `i`'s TCP listener.
    fn start_tcp(&mut self, i: usize) {
        let addr = SERVERS[i];
        let listener = in_netns(&self.egress_ns, || {
            TcpListener::bind(SocketAddrV4::new(addr, SERVER_PORT)).expect("listen")
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (s, all) = (stop.clone(), self.stop.clone());
        let handle = thread::spawn(move || serve_tcp(listener, addr, &s, &all));
        self.tcp[i] = Some((stop, handle));
    }

    /// Closes server `i`'s TCP listener: new connections to it are refused.
    fn stop_tcp(&mut self, i: usize) {
        if let Some((stop, handle)) = self.tcp[i].take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for i in 0..self.tcp.len() {
            self.stop_tcp(i);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(listener: TcpListener, me: Ipv4Addr, stop: &AtomicBool, all: &AtomicBool) {
    let stopped = || stop.load(Ordering::Relaxed) || all.load(Ordering::Relaxed);
    while let Some(mut conn) = netfn_tests::accept_until(&listener, stopped) {
        thread::spawn(move || {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
            let mut buf = [0u8; 64];
            // Every line read gets the server's address back, until the client closes.
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(me.to_string().as_bytes()).is_err() {
                    break;
                }
            }
        });
    }
}

/// Answers every datagram with the server's address; a datagram longer than 64 bytes gets an
/// answer as long as itself: the address, a newline, then the datagram's own bytes.
fn serve_udp(sock: UdpSocket, me: Ipv4Addr, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let mut answer = format!("{me}\n").into_bytes();
            if n <= 64 {
                answer.pop();
            } else {
                answer.extend_from_slice(&buf[answer.len()..n]);
            }
            let _ = sock.send_to(&answer, from);
        }
    }
}

/// A TCP connection to `VIP:port` from [`CLIENT`]`:sport` (made in the calling thread's
/// namespace), with a 5 s timeout for connecting and reading.
fn connect_from(sport: u16, port: u16) -> TcpStream {
    try_connect_from(sport, port)
        .unwrap_or_else(|e| panic!("connect from port {sport} to {VIP}:{port}: {e}"))
}

/// [`connect_from`], or why the connection failed.
fn try_connect_from(sport: u16, port: u16) -> nix::Result<TcpStream> {
    connect_within(sport, port, Duration::from_secs(5))
}

/// [`try_connect_from`], giving up after `timeout`.
fn connect_within(sport: u16, port: u16, timeout: Duration) -> nix::Result<TcpStream> {
    netfn_tests::tcp_connect_bound(
        SocketAddrV4::new(CLIENT, sport),
        SocketAddrV4::new(VIP, port),
        timeout,
    )
}

/// Which server answers on `stream`.
fn ask(stream: &mut TcpStream) -> Ipv4Addr {
    try_ask(stream).expect("answer")
}

/// [`ask`], or why the connection failed.
fn try_ask(stream: &mut TcpStream) -> std::io::Result<Ipv4Addr> {
    stream.write_all(b"who\n")?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf)?;
    String::from_utf8_lossy(&buf[..n])
        .parse()
        .map_err(|_| std::io::Error::other(format!("not an address: {:?}", &buf[..n])))
}

/// Long-lived connections to `VIP:80` from each source port in `sports` (made in namespace
/// `ingress`), each with the server that answered it.
fn open_connections(ingress: &str, sports: std::ops::Range<u16>) -> Vec<(TcpStream, Ipv4Addr)> {
    in_netns(ingress, || {
        sports
            .map(|sport| {
                let mut s = connect_from(sport, 80);
                let server = ask(&mut s);
                (s, server)
            })
            .collect()
    })
}

/// One short connection per source port in `sports` to `VIP:port`: which server answered each.
/// Each ends with a reset (no TIME_WAIT anywhere), so the same ports can connect again.
fn spread(ingress_ns: &str, port: u16, sports: std::ops::Range<u16>) -> BTreeMap<u16, Ipv4Addr> {
    answers(ingress_ns, port, sports, false)
}

/// [`spread`]; with `tolerate`, a refused connection is answered by [`REFUSED`].
fn answers(
    ingress_ns: &str,
    port: u16,
    sports: std::ops::Range<u16>,
    tolerate: bool,
) -> BTreeMap<u16, Ipv4Addr> {
    in_netns(ingress_ns, || {
        sports
            .map(|sport| {
                let mut s = match try_connect_from(sport, port) {
                    Ok(s) => s,
                    Err(e) if tolerate && e == nix::errno::Errno::ECONNREFUSED => {
                        return (sport, REFUSED);
                    }
                    Err(e) => panic!("connect from port {sport} to {VIP}:{port}: {e}"),
                };
                let server = ask(&mut s);
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: a valid socket and a `linger` of the right size.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
                (sport, server)
            })
            .collect()
    })
}

fn counts(answers: &BTreeMap<u16, Ipv4Addr>) -> BTreeMap<Ipv4Addr, usize> {
    let mut c = BTreeMap::new();
    for a in answers.values() {
        *c.entry(*a).or_default() += 1;
    }
    c
}

/// How close a share must be to its weight's.
#[derive(Clone, Copy)]
enum Bar {
    /// Within 10% of the share: netfn's own hash and tables (tc, xdp).
    TenPercent,
    /// Within three binomial standard deviations: kernel mode's nftables `jhash`, whose spread
    /// over a thousand flows is only as even as chance (one deviation is 7% of a 1/6 share).
    Chance,
}

/// Every server in `shares` got its share of `answers`, as close as `bar` asks.
fn assert_shares(what: &str, answers: &BTreeMap<u16, Ipv4Addr>, shares: &[(usize, f64)], bar: Bar) {
    let c = counts(answers);
    eprintln!("{what}: {c:?}");
    let total = answers.len() as f64;
    for &(i, share) in shares {
        let got = c.get(&SERVERS[i]).copied().unwrap_or(0) as f64 / total;
        let tolerance = match bar {
            Bar::TenPercent => 0.1 * share,
            Bar::Chance => 3.0 * (share * (1.0 - share) / total).sqrt(),
        };
        assert!(
            (got - share).abs() <= tolerance,
            "{what}: {} got {:.1}% of the connections, expected {:.1}% ± {:.1}%: {c:?}",
            SERVERS[i],
            got * 100.0,
            share * 100.0,
            tolerance * 100.0
        );
    }
    assert_eq!(
        c.keys()
            .filter(|k| !shares.iter().any(|(i, _)| SERVERS[*i] == **k))
            .count(),
        0,
        "{what}: a server outside the service answered: {c:?}"
    );
}

/// Runs the calling thread on `cpu` only (the CPU that also runs the veth's receive path for
/// what it sends).
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed `cpu_set_t` is an empty set; `CPU_SET` stays within it (cpu < 8 here),
    // and `sched_setaffinity` reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `netfn status --json` rows of function lb1.
fn lb_status(chain: &str) -> Vec<(String, String)> {
    status_details(chain, "lb1")
}

#[test]
fn tc_spreads_connections_by_weight() {
    spreads_connections_by_weight("tc", "bt");
}

#[test]
fn xdp_spreads_connections_by_weight() {
    spreads_connections_by_weight("xdp", "bx");
}

#[test]
fn kernel_spreads_connections_by_weight() {
    spreads_connections_by_weight("kernel", "bk");
}

fn spreads_connections_by_weight(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let services = service(80, "tcp", &[(0, 1), (1, 1), (2, 1)])
        + &service(81, "tcp", &[(0, 1), (1, 2), (2, 3)]);
    let file = dir.write("lb.toml", &chain_file(&chain, mode, &services));
    let _guard = ChainGuard::up(&chain, &file);
    let _servers = Servers::start(&format!("nf-{chain}-egress"));
    let ingress = format!("nf-{chain}-ingress");
    let agent = Agent::start(&dir.0, &chain, &["--no-probe"]);

    let bar = if mode == "kernel" {
        Bar::Chance
    } else {
        Bar::TenPercent
    };
    let equal = spread(&ingress, 80, 40_000..41_000);
    assert_shares(
        &format!("{mode}, equal weights"),
        &equal,
        &[(0, 1.0 / 3.0), (1, 1.0 / 3.0), (2, 1.0 / 3.0)],
        bar,
    );
    let weighted = spread(&ingress, 81, 41_000..42_000);
    assert_shares(
        &format!("{mode}, weights 1:2:3"),
        &weighted,
        &[(0, 1.0 / 6.0), (1, 2.0 / 6.0), (2, 3.0 / 6.0)],
        bar,
    );
    if mode != "kernel" {
        // The per-backend counters saw the connections each server answered: exactly, unless
        // the connection table evicted a live flow (then its next packet is balanced anew, to
        // the same backend, and counted as a flow again; the status says how many).
        let rows = lb_status(&chain);
        let untracked: u64 = rows
            .iter()
            .find(|(k, _)| k == "flows")
            .and_then(|(_, v)| v.split(", ").find_map(|p| p.strip_suffix(" evicted")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no flows row: {rows:?}"));
        for (i, n) in counts(&equal) {
            let row = rows
                .iter()
                .find(|(k, _)| k == &format!("{VIP}:80/tcp → {i}:{SERVER_PORT}"))
                .unwrap_or_else(|| panic!("no status row for {i}: {rows:?}"));
            let flows: u64 = row
                .1
                .split(": ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|f| f.parse().ok())
                .unwrap_or_else(|| panic!("{mode}: no flow count in {row:?}"));
            let n = n as u64;
            assert!(
                (n..=n + untracked).contains(&flows),
                "{mode}: {i} answered {n}: {row:?}, {untracked} flows untracked"
            );
        }
    }
    // /metrics says the same. Per service, the new flows: each connection once (kernel mode
    // counts a flow's first packet in its NAT rule; conntrack carries the rest). Per backend
    // (tc/xdp): the flows each server answered, and at least the SYN, the ACK, the question
    // and the reset of each, in bytes at least their IP and TCP headers.
    let metrics = agent.metrics();
    let untracked = if mode == "kernel" {
        0
    } else {
        sample(
            &metrics,
            "netfn_load_balancer_conntrack_evictions_total",
            &[],
        )
        .unwrap_or_else(|| panic!("{mode}: no evictions counter:\n{metrics}")) as u64
    };
    for port in [80, 81] {
        let service = format!("{VIP}:{port}/tcp");
        let flows = sample(
            &metrics,
            "netfn_load_balancer_service_new_flows_total",
            &[("service", &service)],
        )
        .unwrap_or_else(|| panic!("{mode}: no new flows of {service}:\n{metrics}"))
            as u64;
        assert!(
            (1000..=1000 + untracked).contains(&flows),
            "{mode}: {service}: {flows} new flows for 1000 connections ({untracked} evicted)"
        );
    }
    if mode != "kernel" {
        for (server, answered) in counts(&equal) {
            let labels = [
                ("service", format!("{VIP}:80/tcp")),
                ("backend", format!("{server}:{SERVER_PORT}")),
            ];
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let value = |name: &str| {
                sample(&metrics, name, &labels)
                    .unwrap_or_else(|| panic!("{mode}: no {name} of {server}:\n{metrics}"))
                    as u64
            };
            let answered = answered as u64;
            let flows = value("netfn_load_balancer_backend_new_flows_total");
            let packets = value("netfn_load_balancer_backend_packets_total");
            let bytes = value("netfn_load_balancer_backend_bytes_total");
            assert!(
                (answered..=answered + untracked).contains(&flows),
                "{mode}: {server} answered {answered}, its metric says {flows} new flows"
            );
            assert!(
                packets >= 4 * answered && bytes >= 40 * packets,
                "{mode}: {server}: {packets} packets, {bytes} bytes for {answered} connections"
            );
        }
        let replies = sample(&metrics, "netfn_load_balancer_reply_packets_total", &[])
            .unwrap_or_default() as u64;
        assert!(
            replies >= 2 * 2000,
            "{mode}: {replies} answers sent back from the VIPs for 2000 connections"
        );
    }
}

#[test]
fn tc_an_apply_that_drops_a_service_removes_its_routes() {
    dropped_service_routes("tc", "by");
}

#[test]
fn kernel_an_apply_that_drops_a_service_removes_its_routes() {
    dropped_service_routes("kernel", "bz");
}

/// The hops before a load balancer route its VIPs to it; an apply that drops a service takes its
/// VIP's route out of them (and keeps the other's), and one that brings it back routes it again.
fn dropped_service_routes(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let one = service(80, "tcp", &[(0, 1)]);
    let two = format!(
        "{one}{}",
        service(80, "tcp", &[(1, 1)]).replace(&VIP.to_string(), &VIP2.to_string())
    );
    let both = dir.write("both.toml", &chain_file(&chain, mode, &two));
    let first = dir.write("first.toml", &chain_file(&chain, mode, &one));
    let _guard = ChainGuard::up(&chain, &both);
    // Which of the two VIPs each hop before the load balancer has a route to.
    let routed = || -> Vec<(String, Vec<Ipv4Addr>)> {
        ["ingress", "front"]
            .iter()
            .map(|hop| {
                let table = ip_in(&chain, hop, &["route", "show"]);
                let vips = [VIP, VIP2]
                    .into_iter()
                    .filter(|v| table.lines().any(|l| l.starts_with(&format!("{v} "))))
                    .collect();
                (hop.to_string(), vips)
            })
            .collect()
    };
    let all = |vips: &[Ipv4Addr]| -> Vec<(String, Vec<Ipv4Addr>)> {
        ["ingress", "front"]
            .map(|hop| (hop.to_string(), vips.to_vec()))
            .to_vec()
    };
    assert_eq!(routed(), all(&[VIP, VIP2]), "{mode}: after up");
    let applied = netfn_ok(&["apply", &first.to_string_lossy()]);
    assert!(applied.contains("in place"), "{mode}: {applied}");
    assert_eq!(routed(), all(&[VIP]), "{mode}: after dropping {VIP2}");
    netfn_ok(&["apply", &both.to_string_lossy()]);
    assert_eq!(routed(), all(&[VIP, VIP2]), "{mode}: after adding it back");
}

#[test]
fn tc_apply_adds_and_drains_backends_keeping_connections() {
    apply_adds_and_drains("tc", "ba");
}

#[test]
fn xdp_apply_adds_and_drains_backends_keeping_connections() {
    apply_adds_and_drains("xdp", "bd");
}

#[test]
fn kernel_apply_adds_and_drains_backends_keeping_connections() {
    apply_adds_and_drains("kernel", "bn");
}

fn apply_adds_and_drains(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let three = dir.write(
        "v1.toml",
        &chain_file(&chain, mode, &service(80, "tcp", &[(0, 1), (1, 1), (2, 1)])),
    );
    let four = dir.write(
        "v2.toml",
        &chain_file(
            &chain,
            mode,
            &service(80, "tcp", &[(0, 1), (1, 1), (2, 1), (3, 1)]),
        ),
    );
    let drained = dir.write(
        "v3.toml",
        &chain_file(
            &chain,
            mode,
            &service(80, "tcp", &[(0, 1), (1, 0), (2, 1), (3, 1)]),
        ),
    );
    let _guard = ChainGuard::up(&chain, &three);
    let _servers = Servers::start(&format!("nf-{chain}-egress"));
    let ingress = format!("nf-{chain}-ingress");

    // Long-lived connections, some on every backend.
    let mut open = open_connections(&ingress, 50_000..50_030);
    let before = spread(&ingress, 80, 40_000..41_000);

    let applied = netfn_ok(&["apply", &four.to_string_lossy()]);
    assert!(applied.contains("in place"), "{applied}");
    for (s, server) in &mut open {
        assert_eq!(ask(s), *server, "{mode}: an open connection moved or broke");
    }
    // The closed probes' flows have expired (tcp_closing = 1 s): the same ports balance anew.
    thread::sleep(Duration::from_millis(1500));
    let after = spread(&ingress, 80, 40_000..41_000);
    let moved = before
        .iter()
        .filter(|(port, server)| after.get(port) != Some(server))
        .count();
    assert!(
        moved <= 300,
        "{mode}: {moved} of 1000 flows moved when a fourth backend came (at most 30%)"
    );
    assert!(
        counts(&after).get(&SERVERS[3]).copied().unwrap_or(0) > 150,
        "{mode}: the new backend took too few flows: {:?}",
        counts(&after)
    );

    // Weight 0: open connections to it keep working; new ones avoid it.
    let applied = netfn_ok(&["apply", &drained.to_string_lossy()]);
    assert!(applied.contains("in place"), "{applied}");
    let on_drained = open.iter().filter(|(_, s)| *s == SERVERS[1]).count();
    assert!(on_drained > 0, "{mode}: no open connection on backend 1");
    for (s, server) in &mut open {
        assert_eq!(ask(s), *server, "{mode}: an open connection broke on drain");
    }
    thread::sleep(Duration::from_millis(1500));
    let drained_spread = spread(&ingress, 80, 42_000..42_500);
    assert_eq!(
        counts(&drained_spread).get(&SERVERS[1]),
        None,
        "{mode}: a drained backend got new flows"
    );

    // Removed from the service: its open connections still go on (their answers still find
    // their flows and leave from the VIP).
    let removed = dir.write(
        "v4.toml",
        &chain_file(&chain, mode, &service(80, "tcp", &[(0, 1), (2, 1), (3, 1)])),
    );
    let applied = netfn_ok(&["apply", &removed.to_string_lossy()]);
    assert!(applied.contains("in place"), "{applied}");
    for (s, server) in &mut open {
        assert_eq!(
            ask(s),
            *server,
            "{mode}: an open connection broke when a backend was removed"
        );
    }
}

#[test]
fn tc_inserting_a_function_before_the_balancer_keeps_its_connections() {
    insert_before_balancer("tc", "bi");
}

#[test]
fn xdp_inserting_a_function_before_the_balancer_keeps_its_connections() {
    insert_before_balancer("xdp", "bj");
}

#[test]
fn kernel_inserting_a_function_before_the_balancer_keeps_its_connections() {
    insert_before_balancer("kernel", "bk");
}

/// A live apply that puts a new function in front of the load balancer: the new function
/// (and the ones before it, whose links change) must route the VIP toward the balancer, or
/// every connection to the VIP stalls (kernel mode lost that route once).
fn insert_before_balancer(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let services = service(80, "tcp", &[(0, 1), (1, 1)]);
    let before = dir.write("v1.toml", &chain_file(&chain, mode, &services));
    let after = dir.write("v2.toml", &chain_file_with_mid(&chain, mode, &services));
    let _guard = ChainGuard::up(&chain, &before);
    let _servers = Servers::start(&format!("nf-{chain}-egress"));
    let ingress = format!("nf-{chain}-ingress");
    let mut open = open_connections(&ingress, 51_000..51_010);
    let applied = netfn_ok(&["apply", &after.to_string_lossy()]);
    assert!(applied.contains("add function mid"), "{applied}");
    for (s, server) in &mut open {
        assert_eq!(
            ask(s),
            *server,
            "{mode}: an open connection broke when mid came in"
        );
    }
    let fresh = spread(&ingress, 80, 43_000..43_020);
    assert_eq!(
        fresh.len(),
        20,
        "{mode}: new connections after the insert: {fresh:?}"
    );
}

#[test]
fn tc_udp_service_answers_from_the_vip() {
    udp_service("tc", "bu");
}

#[test]
fn xdp_udp_service_answers_from_the_vip() {
    udp_service("xdp", "bv");
}

#[test]
fn kernel_udp_service_answers_from_the_vip() {
    udp_service("kernel", "bw");
}

/// A chain whose load balancer serves UDP `VIP:53` with backends 0 and 1, their servers up.
struct UdpService {
    chain: String,
    ingress: String,
    _servers: Servers,
    _guard: ChainGuard,
    _dir: TempDir,
}

impl UdpService {
    fn up(mode: &str, tag: &str) -> Self {
        Self::with(mode, tag, &service(53, "udp", &[(0, 1), (1, 1)]))
    }

    /// A chain whose load balancer serves `services` (TOML of its service tables), every
    /// backend's servers up.
    fn with(mode: &str, tag: &str, services: &str) -> Self {
        let chain = unique_chain(tag);
        let dir = TempDir::new(&chain);
        let file = dir.write("lb.toml", &chain_file(&chain, mode, services));
        let guard = ChainGuard::up(&chain, &file);
        UdpService {
            ingress: format!("nf-{chain}-ingress"),
            _servers: Servers::start(&format!("nf-{chain}-egress")),
            chain,
            _guard: guard,
            _dir: dir,
        }
    }
}

fn udp_service(mode: &str, tag: &str) {
    let _turn = shared();
    let lab = UdpService::up(mode, tag);
    let ingress = &lab.ingress;
    let answers: Vec<Ipv4Addr> = in_netns(ingress, || {
        (43_000..43_100)
            .map(|sport| {
                let s = UdpSocket::bind(SocketAddrV4::new(CLIENT, sport)).expect("bind");
                // Connected: only datagrams from the VIP reach this socket.
                s.connect(SocketAddrV4::new(VIP, 53)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                let mut buf = [0u8; 64];
                let mut answer = None;
                for _ in 0..3 {
                    s.send(b"who").expect("send");
                    if let Ok(n) = s.recv(&mut buf) {
                        answer = String::from_utf8_lossy(&buf[..n]).parse().ok();
                        break;
                    }
                }
                answer.unwrap_or_else(|| panic!("{mode}: no answer from {VIP}:53 to port {sport}"))
            })
            .collect()
    });
    for server in [SERVERS[0], SERVERS[1]] {
        let n = answers.iter().filter(|a| **a == server).count();
        assert!(n > 20, "{mode}: {server} answered {n} of 100 flows");
    }
}

/// The ports of a TCP flow that closed, opened again at once (a client that wrapped its port
/// range, or aborted with a reset) make a new connection, balanced by the live table: here its
/// backend was drained (weight 0) in between, so the new connection goes to the other one, as
/// Linux conntrack's new entry goes through the DNAT rule again. Before, the new SYN found the
/// closing flow and went on to the drained backend.
#[test]
fn tc_a_reused_client_port_is_balanced_anew() {
    reused_client_port("tc", "br");
}

#[test]
fn xdp_a_reused_client_port_is_balanced_anew() {
    reused_client_port("xdp", "bs");
}

#[test]
fn kernel_a_reused_client_port_is_balanced_anew() {
    reused_client_port("kernel", "bt");
}

fn reused_client_port(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    // A closing flow lives 30 s here: long enough that only a new connection, not its end,
    // can send the reused ports elsewhere.
    let text = |weights: &[(usize, u32)]| {
        chain_file(&chain, mode, &service(80, "tcp", weights))
            .replace("tcp_closing = 1,", "tcp_closing = 30,")
    };
    let both = dir.write("lb.toml", &text(&[(0, 1), (1, 1)]));
    assert!(std::fs::read_to_string(&both).is_ok_and(|t| t.contains("tcp_closing = 30")));
    let _guard = ChainGuard::up(&chain, &both);
    let _servers = Servers::start(&format!("nf-{chain}-egress"));
    let ingress = format!("nf-{chain}-ingress");
    let sport = 45_678;
    let first = in_netns(&ingress, || {
        let mut s = connect_from(sport, 80);
        let backend = ask(&mut s);
        // A reset: no TIME_WAIT on the client, so the ports open again at once.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        netfn_tests::set_socket_option(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &linger)
            .unwrap_or_else(|e| panic!("SO_LINGER: {e}"));
        backend
    });
    let drained = SERVERS.iter().position(|a| *a == first).expect("a backend");
    let other = 1 - drained;
    let weights = [(drained, 0), (other, 1)];
    let file = dir.write("drained.toml", &text(&weights));
    netfn_ok(&["apply", &file.to_string_lossy()]);
    let again = in_netns(&ingress, || ask(&mut connect_from(sport, 80)));
    assert_eq!(
        again, SERVERS[other],
        "{mode}: the reused ports went to the drained backend {first}"
    );
}

/// A flow half-closed by its client (a client that sent its whole request and shut down its
/// writing) lives while the backend takes its time: an answer after 2.5 s of quiet, longer than
/// `tcp_closing` (1 s here), still reaches the client. Before, the client's FIN started the
/// closing timeout and the late answer was dropped (`lb-reply-untracked`; kernel mode's
/// FIN_WAIT and CLOSE_WAIT had the closing timeout too, and the answer left un-NATed). And
/// `tcp_half_closed` (4 s here) still ends such a flow: an answer after 6 s is dropped.
#[test]
fn tc_a_half_closed_flow_lives_on() {
    half_closed("tc", "bh");
}

#[test]
fn xdp_a_half_closed_flow_lives_on() {
    half_closed("xdp", "bi");
}

#[test]
fn kernel_a_half_closed_flow_lives_on() {
    half_closed("kernel", "bj");
}

fn half_closed(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let backend = SERVERS[0];
    let services: String = [(80, 9001), (81, 9002)]
        .map(|(port, bport)| {
            format!(
                "\n[[chain.function.service]]\nvip = \"{VIP}\"\nproto = \"tcp\"\nport = {port}\n\
                 backends = [{{ address = \"{backend}\", port = {bport} }}]\n"
            )
        })
        .concat();
    let text = chain_file(&chain, mode, &services)
        .replace("tcp_closing = 1,", "tcp_closing = 1, tcp_half_closed = 4,");
    assert!(text.contains("tcp_half_closed = 4"));
    let file = dir.write("lb.toml", &text);
    let _guard = ChainGuard::up(&chain, &file);
    let egress = format!("nf-{chain}-egress");
    let _servers = Servers::start(&egress);
    let ingress = format!("nf-{chain}-ingress");
    let exchange = |port: u16, bport: u16, delay_ms: u64| {
        let (c, s) = (ingress.clone(), egress.clone());
        let (to, listen) = (
            SocketAddrV4::new(VIP, port),
            SocketAddrV4::new(backend, bport),
        );
        thread::spawn(move || late_answer(&c, to, &s, listen, Duration::from_millis(delay_ms)))
    };
    let (soon, too_late) = (exchange(80, 9001, 2_500), exchange(81, 9002, 6_000));
    let soon = soon.join().expect("the first exchange");
    assert_eq!(
        String::from_utf8_lossy(&soon),
        "late answer",
        "{mode}: the half-closed flow died after the closing timeout"
    );
    let too_late = too_late.join().expect("the second exchange");
    assert!(
        too_late.is_empty(),
        "{mode}: an answer after the half-closed timeout passed: {too_late:?}"
    );
    if mode != "kernel" {
        let drops = function_drops(&chain, "lb1");
        assert!(
            drops.get("lb-reply-untracked").copied().unwrap_or(0) > 0,
            "{mode}: the answer after the half-closed timeout was not dropped as untracked: \
             {drops:?}"
        );
    }
}

/// A TCP flow opened by a bare SYN is established by the backend's SYN-ACK only; until then it
/// lives by `tcp_syn` (2 s here), not by `tcp` (3,600 s), as the firewall's new connections do
/// and conntrack's SYN_SENT. That holds for a new flow and for a half-closed flow a stray SYN
/// from its client opens again on its backend (before, that SYN made the flow open at once:
/// a stray SYN, answered by nothing or by a server's challenge ACK, kept the flow for an hour).
///
/// A real TCP stack will not send such a SYN on demand, so the frames are crafted and run
/// through the load balancer's hop with `BPF_PROG_TEST_RUN`, as the malformed-frame tests run
/// theirs (the live maps: the flows and counters are the function's). Three flows to one
/// backend: `new` (a SYN, never answered); `stray` (SYN, SYN-ACK, ACK, the client's FIN, then a
/// stray SYN the backend answers with a bare ACK only); `reopened` (the same, its SYN answered
/// by a SYN-ACK). After 3.5 s of quiet the backend's packets of the first two are dropped as
/// untracked (`lb-reply-untracked`) and status counts one active flow, the third's, whose
/// packet is translated.
#[test]
fn tc_a_flow_opened_by_a_syn_is_established_by_the_backends_syn_ack() {
    syn_flows("tc", Hook::Tc, "sy");
}

#[test]
fn xdp_a_flow_opened_by_a_syn_is_established_by_the_backends_syn_ack() {
    syn_flows("xdp", Hook::Xdp, "sz");
}

fn syn_flows(mode: &str, hook: Hook, tag: &str) {
    const SYN: u8 = 0x02;
    const SYN_ACK: u8 = 0x12;
    const ACK: u8 = 0x10;
    const FIN_ACK: u8 = 0x11;
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let text = chain_file(&chain, mode, &service(80, "tcp", &[(0, 1)]))
        .replace("tcp_closing = 1,", "tcp_syn = 2, tcp_closing = 1,");
    assert!(text.contains("tcp_syn = 2"));
    let file = dir.write("lb.toml", &text);
    let _guard = ChainGuard::up(&chain, &file);
    let program = test_run::forwarder(&chain, hook);
    let hops = test_run::hops(&chain, CLIENT, SERVERS[0]);
    let hop = |interface: &str| {
        hops.iter()
            .find(|h| h.function == "lb1" && h.interface == interface)
            .unwrap_or_else(|| panic!("lb1 has no {interface}"))
    };
    let (client_side, backend_side) = (hop("nf-in"), hop("nf-out"));
    let backend = SERVERS[0];
    // One segment of flow `cport` through the hop: from the client (to the VIP) or from the
    // backend (to the client). What the hop did, and the frame's new address (the destination
    // toward the backend, the source back to the client).
    let segment = |cport: u16, from_client: bool, flags: u8| -> (Verdict, Ipv4Addr) {
        let (h, link, sport, dport) = if from_client {
            let link = Link {
                src: CLIENT,
                dst: VIP,
                ..client_side.link
            };
            (client_side, link, cport, 80)
        } else {
            let link = Link {
                src: backend,
                dst: CLIENT,
                ..backend_side.link
            };
            (backend_side, link, SERVER_PORT, cport)
        };
        let frame = frames::ipv4_frame(
            &link,
            frames::TCP,
            &frames::tcp(&link, sport, dport, flags, 5),
        );
        let (retval, out) = in_netns(&h.netns, || {
            test_run::run_once(&program, hook, h.ifindex, &frame)
        })
        .unwrap_or_else(|e| panic!("{mode}: test run: {e}"));
        let verdict = test_run::verdict(hook, retval)
            .unwrap_or_else(|| panic!("{mode}: return value {retval}"));
        let at = if from_client { 30 } else { 26 };
        let addr = Ipv4Addr::new(out[at], out[at + 1], out[at + 2], out[at + 3]);
        (verdict, addr)
    };
    let to_backend = (Verdict::Forward, backend);
    let to_client = (Verdict::Forward, VIP);
    let (new, stray, reopened) = (40_001, 40_002, 40_003);
    assert_eq!(segment(new, true, SYN), to_backend, "{mode}: new: SYN");
    for cport in [stray, reopened] {
        let what = format!("{mode}: client port {cport}");
        assert_eq!(segment(cport, true, SYN), to_backend, "{what}: SYN");
        assert_eq!(segment(cport, false, SYN_ACK), to_client, "{what}: SYN-ACK");
        assert_eq!(segment(cport, true, ACK), to_backend, "{what}: ACK");
        // Half-closed by the client; its stray SYN opens it again, on its backend.
        assert_eq!(segment(cport, true, FIN_ACK), to_backend, "{what}: FIN");
        assert_eq!(
            segment(cport, true, SYN),
            to_backend,
            "{what}: the stray SYN"
        );
    }
    // A server still in CLOSE_WAIT answers with a challenge ACK: translated while the flow
    // lives, establishing nothing.
    assert_eq!(
        segment(stray, false, ACK),
        to_client,
        "{mode}: challenge ACK"
    );
    assert_eq!(
        segment(reopened, false, SYN_ACK),
        to_client,
        "{mode}: SYN-ACK"
    );
    let untracked = || {
        function_drops(&chain, "lb1")
            .get("lb-reply-untracked")
            .copied()
            .unwrap_or(0)
    };
    let untracked_before = untracked();
    thread::sleep(Duration::from_millis(3_500));
    let active = row_count(&backend_row(&lb_status(&chain), 0), "active");
    for (cport, what) in [(new, "a SYN never answered"), (stray, "a stray SYN")] {
        assert_eq!(
            segment(cport, false, ACK).0,
            Verdict::Drop(""),
            "{mode}: the flow of {what} lived past tcp_syn"
        );
    }
    assert_eq!(
        segment(reopened, false, ACK),
        to_client,
        "{mode}: the flow its backend's SYN-ACK established ended"
    );
    assert_eq!(
        untracked() - untracked_before,
        2,
        "{mode}: the two answers dropped were not counted as lb-reply-untracked"
    );
    assert_eq!(active, 1, "{mode}: active flows after tcp_syn");
}

/// Kernel mode keeps the flows in Linux conntrack: the function's timeouts
/// (`conntrack = { tcp_closing = 1, udp = 2 }` here, TCP's handshake, established and
/// half-closed at their defaults, 120 s, 3,600 s and 120 s) are its namespace's conntrack sysctls, as the fast path's are its
/// flow table's. Before, they were ignored there (Linux's 5-day established timeout and 30 s UDP
/// applied).
#[test]
fn kernel_conntrack_timeouts_are_the_functions() {
    let _turn = shared();
    let chain = unique_chain("bk");
    let dir = TempDir::new(&chain);
    let file = dir.write(
        "lb.toml",
        &chain_file(&chain, "kernel", &service(53, "udp", &[(0, 1), (1, 1)])),
    );
    let _guard = ChainGuard::up(&chain, &file);
    let ns = format!("nf-{chain}-lb1");
    let sysctl = |name: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "cat"])
            .arg(format!("/proc/sys/net/netfilter/nf_conntrack_{name}"))
            .output()
            .expect("run cat");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for (name, want) in [
        // The handshake: `tcp_syn`, 120 s unless set.
        ("tcp_timeout_syn_sent", "120"),
        ("tcp_timeout_syn_recv", "120"),
        ("tcp_timeout_established", "3600"),
        ("tcp_timeout_close", "1"),
        ("tcp_timeout_time_wait", "1"),
        // The half-closed states: `tcp_half_closed`, 120 s unless set.
        ("tcp_timeout_fin_wait", "120"),
        ("tcp_timeout_close_wait", "120"),
        ("udp_timeout", "2"),
        ("udp_timeout_stream", "2"),
    ] {
        assert_eq!(sysctl(name), want, "nf_conntrack_{name} in {ns}");
    }
}

/// A datagram larger than the path's MTU crosses in fragments, and only the first carries the
/// ports: every fragment of a 3,000-byte datagram to the VIP reaches the backend its first was
/// balanced to, and the backend's 3,000-byte answer comes back whole from the VIP, in every mode
/// (kernel mode: conntrack reassembles before NAT).
#[test]
fn tc_fragmented_datagrams_reach_a_backend_and_come_back() {
    fragmented_datagrams("tc", "bf");
}

#[test]
fn xdp_fragmented_datagrams_reach_a_backend_and_come_back() {
    fragmented_datagrams("xdp", "bg");
}

#[test]
fn kernel_fragmented_datagrams_reach_a_backend_and_come_back() {
    fragmented_datagrams("kernel", "bh");
}

fn fragmented_datagrams(mode: &str, tag: &str) {
    let _turn = shared();
    let lab = UdpService::up(mode, tag);
    let ingress = &lab.ingress;
    let sent: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let answers: Vec<Ipv4Addr> = in_netns(ingress, || {
        (44_000..44_020)
            .map(|sport| {
                let s = UdpSocket::bind(SocketAddrV4::new(CLIENT, sport)).expect("bind");
                // Connected: only datagrams from the VIP reach this socket.
                s.connect(SocketAddrV4::new(VIP, 53)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                s.send(&sent).expect("send");
                let mut buf = vec![0u8; 65536];
                let n = s.recv(&mut buf).unwrap_or_else(|e| {
                    panic!("{mode}: no answer to a 3,000-byte datagram from port {sport}: {e}")
                });
                let answer = &buf[..n];
                let line = answer.iter().position(|&b| b == b'\n').unwrap_or(n);
                assert!(
                    n == sent.len() && answer[line + 1..] == sent[line + 1..],
                    "{mode}: port {sport}: a {n}-byte answer, not the 3,000 bytes sent"
                );
                String::from_utf8_lossy(&answer[..line])
                    .parse()
                    .unwrap_or_else(|e| panic!("{mode}: port {sport}: {e}"))
            })
            .collect()
    });
    for server in [SERVERS[0], SERVERS[1]] {
        let n = answers.iter().filter(|a| **a == server).count();
        assert!(
            n > 0,
            "{mode}: {server} answered none of 20 flows: {answers:?}"
        );
    }
}

#[test]
fn tc_health_checks_take_a_failed_backend_out_and_back() {
    health_checks("tc", "bh");
}

#[test]
fn xdp_health_checks_take_a_failed_backend_out_and_back() {
    health_checks("xdp", "bi");
}

#[test]
fn kernel_health_checks_take_a_failed_backend_out_and_back() {
    health_checks("kernel", "bj");
}

/// TCP health checks that take a stopped backend out within about a second.
const QUICK_CHECKS: &str =
    "health = { check = \"tcp\", interval = 0.5, timeout = 0.3, rise = 2, fall = 2 }\n";

/// Writes `name` in `dir`: chain `chain` whose service on port 80 has `backends` (as
/// [`service`]) and [`QUICK_CHECKS`].
fn checked_file(
    dir: &TempDir,
    name: &str,
    chain: &str,
    mode: &str,
    backends: &[(usize, u32)],
) -> std::path::PathBuf {
    let services = service(80, "tcp", backends) + QUICK_CHECKS;
    dir.write(name, &chain_file(chain, mode, &services))
}

/// A host agent that runs the health checks of `chain` (up, its servers started), returned
/// once backends 0, 1 and 2 all answer, with the next fresh source port. It reads the chain's
/// record at its start only (the CLI's changes notify another socket): after an apply, the
/// health task that began with the first settings goes on, and must write its verdicts with
/// the settings the apply left.
fn start_checks(dir: &TempDir, chain: &str, mode: &str, ingress: &str) -> (Agent, u16) {
    let agent = Agent::start(&dir.0, chain, &["--no-probe", "--rescan-interval", "1h"]);
    let mut next = 30_000u16;
    assert!(
        until_spread(ingress, &mut next, |c| c.len() == 3),
        "{mode}: the three backends never all answered"
    );
    (agent, next)
}

/// Connections from fresh source ports (starting at `next`) until `wanted` holds for the set of
/// servers that answered 30 of them, or 10 s pass; returns whether it held.
fn until_spread(
    ingress: &str,
    next: &mut u16,
    wanted: impl Fn(&BTreeMap<Ipv4Addr, usize>) -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let answers = answers(ingress, 80, *next..*next + 30, true);
        *next += 30;
        if wanted(&counts(&answers)) {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The open connections on server `down`, which the health checks declared down (its server
/// still serves them): tc/xdp balance such a flow again, and its new backend resets it at once
/// (the client learns now instead of retransmitting into a dead server), counted as
/// rebalanced; Linux conntrack keeps it on its backend.
fn assert_flows_of_down_backend_move(
    mode: &str,
    chain: &str,
    open: &mut [(TcpStream, Ipv4Addr)],
    down: usize,
) {
    let on_down = open.iter().filter(|(_, a)| *a == SERVERS[down]).count();
    assert!(on_down > 0, "{mode}: no open connection on backend {down}");
    for (s, _) in open.iter_mut().filter(|(_, a)| *a == SERVERS[down]) {
        let answer = try_ask(s);
        if mode == "kernel" {
            assert_eq!(
                answer.ok(),
                Some(SERVERS[down]),
                "{mode}: conntrack kept the flow"
            );
        } else {
            assert!(
                matches!(&answer, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                "{mode}: a flow of a down backend should be reset by its new one: {answer:?}"
            );
        }
    }
    if mode != "kernel" {
        let rows = lb_status(chain);
        let (_, flows) = rows
            .iter()
            .find(|(k, _)| k == "flows")
            .unwrap_or_else(|| panic!("{mode}: no flows row: {rows:?}"));
        let rebalanced = row_count(flows, "rebalanced");
        assert!(
            rebalanced >= on_down as u64,
            "{mode}: {rebalanced} rebalanced flows, {on_down} open on the down backend"
        );
    }
}

/// The `netfn status` row of server `i` as a backend of the service (`weight 1, up: 5 flows,
/// 20 packets, 3 active`).
fn backend_row(rows: &[(String, String)], i: usize) -> String {
    rows.iter()
        .find(|(k, _)| k.ends_with(&format!("→ {}:{SERVER_PORT}", SERVERS[i])))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no status row of backend {i}: {rows:?}"))
}

/// The count a status row gives as `N what` (`20 packets`, `3 active`, `2 rebalanced`).
fn row_count(row: &str, what: &str) -> u64 {
    row.split([',', ':'])
        .find_map(|part| part.trim().strip_suffix(what)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `N {what}` in {row:?}"))
}

fn health_checks(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let file = checked_file(&dir, "lb.toml", &chain, mode, &[(0, 1), (1, 1), (2, 1)]);
    let _guard = ChainGuard::up(&chain, &file);
    let mut servers = Servers::start(&format!("nf-{chain}-egress"));
    let ingress = format!("nf-{chain}-ingress");
    // After the apply below, the health task that began with the first settings is the one
    // that brings the backend back.
    let (agent, mut next) = start_checks(&dir, &chain, mode, &ingress);
    let mut open = open_connections(&ingress, 50_000..50_012);

    // Backend 1 stops accepting: the checks take it out, new flows avoid it.
    servers.stop_tcp(1);
    assert!(
        until_spread(&ingress, &mut next, |c| !c.contains_key(&SERVERS[1])
            && c.len() == 2),
        "{mode}: new flows still reach the stopped backend:\n{}",
        agent.log_text()
    );
    let answers = spread(&ingress, 80, next..next + 300);
    next += 300;
    assert_eq!(
        counts(&answers).get(&SERVERS[1]),
        None,
        "{mode}: a backend that is down got new flows"
    );
    // Connections to the other backends never noticed.
    for (s, server) in open.iter_mut().filter(|(_, a)| *a != SERVERS[1]) {
        assert_eq!(ask(s), *server, "{mode}: an open connection broke");
    }
    // Open connections to the backend that is down (its server still serves them).
    assert_flows_of_down_backend_move(mode, &chain, &mut open, 1);
    // Status and metrics say so, in every mode.
    let rows = lb_status(&chain);
    let row = backend_row(&rows, 1);
    assert!(row.contains(", down:"), "{mode}: {row:?}");
    let service_row = rows
        .iter()
        .find(|(k, _)| k == &format!("{VIP}:80/tcp"))
        .unwrap_or_else(|| panic!("{mode}: no status row of the service: {rows:?}"));
    assert!(
        service_row.1.starts_with("2 of 3 backends up: "),
        "{mode}: {service_row:?}"
    );
    let metrics = agent.metrics();
    let up = metrics
        .lines()
        .find(|l| {
            l.starts_with("netfn_load_balancer_backend_up{")
                && l.contains(&format!("backend=\"{}:{SERVER_PORT}\"", SERVERS[1]))
        })
        .unwrap_or_else(|| panic!("{mode}: no backend_up for backend 1:\n{metrics}"));
    assert!(up.ends_with(" 0"), "{mode}: {up}");
    let service_up = metrics
        .lines()
        .find(|l| l.starts_with("netfn_load_balancer_service_backends_up{"))
        .unwrap_or_else(|| panic!("{mode}: no service_backends_up:\n{metrics}"));
    assert!(service_up.ends_with(" 2"), "{mode}: {service_up}");

    // A live change (another backend's weight, a fourth backend) keeps the verdict: the
    // reloaded tables (or ruleset) leave the down backend out, with no check needed to take it
    // out again.
    let heavier = [(0, 1), (1, 1), (2, 2), (3, 1)];
    let reweighted = checked_file(&dir, "lb-reweighted.toml", &chain, mode, &heavier);
    let applied = netfn_ok(&["apply", &reweighted.to_string_lossy()]);
    assert!(applied.contains("in place"), "{mode}: {applied}");
    // Refused connections count (the stopped backend refuses): the message says what broke.
    let after = counts(&crate::answers(&ingress, 80, next..next + 300, true));
    next += 300;
    assert!(
        !after.contains_key(&SERVERS[1]) && !after.contains_key(&REFUSED),
        "{mode}: an apply brought a backend that is down back in: {after:?}"
    );

    // It comes back: the checks bring it in again, and the fourth backend stays in (the
    // verdict is written with the settings the chain has now, not those the task began with).
    servers.start_tcp(1);
    assert!(
        until_spread(&ingress, &mut next, |c| c.contains_key(&SERVERS[1])),
        "{mode}: the backend never came back:\n{}",
        agent.log_text()
    );
    let back = counts(&spread(&ingress, 80, next..next + 300));
    assert!(
        back.len() == 4 && !back.contains_key(&REFUSED),
        "{mode}: after the backend came back, new flows reached {back:?}, not the four backends"
    );
    let metrics = agent.metrics();
    let restarts = metrics
        .lines()
        .find(|l| {
            l.starts_with("netfn_task_restarts_total")
                && l.contains("function=\"lb1\"")
                && l.contains(&format!("task=\"health {VIP}:80/tcp\""))
        })
        .unwrap_or_else(|| panic!("{mode}: no restart counter of the health task:\n{metrics}"));
    assert!(restarts.ends_with(" 0"), "{mode}: {restarts}");
}

#[test]
fn tc_flows_from_before_an_apply_that_renumbers_keep_their_backend() {
    renumbered_flows("tc", "be");
}

#[test]
fn xdp_flows_from_before_an_apply_that_renumbers_keep_their_backend() {
    renumbered_flows("xdp", "bl");
}

#[test]
fn kernel_flows_from_before_an_apply_that_renumbers_keep_their_backend() {
    renumbered_flows("kernel", "bp");
}

/// An apply that removes the first backend gives the others new numbers (a backend's number is
/// its place in the list). Flows opened before it are still their own backend's: counted under
/// it (packets, active flows), and balanced again when the health checks take it down; flows of
/// the backend that left go on.
fn renumbered_flows(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let three = checked_file(&dir, "v1.toml", &chain, mode, &[(0, 1), (1, 1), (2, 1)]);
    let two = checked_file(&dir, "v2.toml", &chain, mode, &[(1, 1), (2, 1)]);
    let _guard = ChainGuard::up(&chain, &three);
    let mut servers = Servers::start(&format!("nf-{chain}-egress"));
    let ingress = format!("nf-{chain}-ingress");
    let (agent, mut next) = start_checks(&dir, &chain, mode, &ingress);
    let mut open = open_connections(&ingress, 50_000..50_030);
    let on = |open: &[(TcpStream, Ipv4Addr)], i: usize| {
        open.iter().filter(|(_, a)| *a == SERVERS[i]).count() as u64
    };
    let (on_1, on_2) = (on(&open, 1), on(&open, 2));
    assert!(
        on(&open, 0) > 0 && on_1 > 0 && on_2 > 0,
        "{mode}: not every backend has an open connection"
    );

    let applied = netfn_ok(&["apply", &two.to_string_lossy()]);
    assert!(applied.contains("in place"), "{mode}: {applied}");
    for (s, server) in &mut open {
        assert_eq!(ask(s), *server, "{mode}: an open connection moved or broke");
    }
    if mode != "kernel" {
        // The probes' flows have ended (tcp_closing = 1 s): the open connections are the
        // active flows, each under its own backend.
        thread::sleep(Duration::from_millis(1500));
        let rows = lb_status(&chain);
        let active = |i| row_count(&backend_row(&rows, i), "active");
        assert_eq!(
            (active(1), active(2)),
            (on_1, on_2),
            "{mode}: active flows of {} and {}: {rows:?}",
            SERVERS[1],
            SERVERS[2]
        );
        // Traffic on the connections to server 1 is counted under it, not under the backend
        // that has its old number now.
        let packets =
            |rows: &[(String, String)]| [1, 2].map(|i| row_count(&backend_row(rows, i), "packets"));
        let before = packets(&rows);
        for (s, server) in open.iter_mut().filter(|(_, a)| *a == SERVERS[1]) {
            assert_eq!(ask(s), *server, "{mode}: an open connection moved or broke");
        }
        let after = packets(&lb_status(&chain));
        assert!(
            after[0] >= before[0] + on_1 && after[1] == before[1],
            "{mode}: packets to {} and {} went from {before:?} to {after:?} over {on_1} \
             requests to the first",
            SERVERS[1],
            SERVERS[2]
        );
    }

    // Server 1 stops accepting: the checks take it out, and the flows it had from before the
    // apply are balanced again (tc/xdp), as a flow of a down backend is.
    servers.stop_tcp(1);
    assert!(
        until_spread(&ingress, &mut next, |c| c.len() == 1
            && c.contains_key(&SERVERS[2])),
        "{mode}: new flows still reach the stopped backend:\n{}",
        agent.log_text()
    );
    assert_flows_of_down_backend_move(mode, &chain, &mut open, 1);
    // The others go on: server 2's, and those of server 0, which left the settings (no
    // health verdict of another backend reaches its flows).
    for (s, server) in open.iter_mut().filter(|(_, a)| *a != SERVERS[1]) {
        assert_eq!(ask(s), *server, "{mode}: an open connection broke");
    }
}

#[test]
fn tc_firewall_and_two_load_balancers_share_a_chain() {
    firewall_and_two_load_balancers("tc", "b2");
}

#[test]
fn xdp_firewall_and_two_load_balancers_share_a_chain() {
    firewall_and_two_load_balancers("xdp", "b3");
}

#[test]
fn kernel_firewall_and_two_load_balancers_share_a_chain() {
    firewall_and_two_load_balancers("kernel", "b4");
}

/// A firewall that lets only the two services through, then two load balancers in a row, each
/// with its own VIP: the answers of the second one's VIP cross the first one and the firewall
/// (both accept it as a source toward ingress).
fn firewall_and_two_load_balancers(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let text = format!(
        "[[chain]]\nname = \"{chain}\"\nfastpath = \"{mode}\"\n\n[chain.ingress]\naddress = \
         \"10.84.1.2/24\"\n\n[chain.egress]\naddress = \"10.84.2.2/24\"\n\n\
         [[chain.function]]\nname = \"fw\"\nkind = \"firewall\"\ndefault = \"drop\"\n\n\
         [[chain.function.rule]]\nproto = \"tcp\"\ndst = \"{VIP}\"\ndport = 80\naction = \"accept\"\n\n\
         [[chain.function.rule]]\nproto = \"tcp\"\ndst = \"{VIP2}\"\ndport = 81\naction = \"accept\"\n\n\
         [[chain.function]]\nname = \"lb1\"\nkind = \"load-balancer\"\n{}\n\
         [[chain.function]]\nname = \"lb2\"\nkind = \"load-balancer\"\n\n\
         [[chain.function.service]]\nvip = \"{VIP2}\"\nproto = \"tcp\"\nport = 81\n\
         backends = [{{ address = \"{}\", port = {SERVER_PORT} }}]\n",
        service(80, "tcp", &[(0, 1), (1, 1)]),
        SERVERS[2]
    );
    let file = dir.write("lb.toml", &text);
    let _guard = ChainGuard::up(&chain, &file);
    let _servers = Servers::start(&format!("nf-{chain}-egress"));
    let ingress = format!("nf-{chain}-ingress");

    let first = spread(&ingress, 80, 44_000..44_050);
    let c = counts(&first);
    assert!(
        c.len() == 2 && c.contains_key(&SERVERS[0]) && c.contains_key(&SERVERS[1]),
        "{mode}: lb1 spread {c:?}"
    );
    let second: Vec<Ipv4Addr> = in_netns(&ingress, || {
        (44_100..44_110)
            .map(|sport| {
                let mut s = TcpStream::connect_timeout(
                    &SocketAddrV4::new(VIP2, 81).into(),
                    Duration::from_secs(5),
                )
                .unwrap_or_else(|e| panic!("{mode}: connect to {VIP2}:81 ({sport}): {e}"));
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                ask(&mut s)
            })
            .collect()
    });
    assert!(
        second.iter().all(|s| *s == SERVERS[2]),
        "{mode}: lb2 answered from {second:?}"
    );
    // The firewall still decides: port 82 of the VIP is no service it lets through.
    let blocked = in_netns(&ingress, || {
        TcpStream::connect_timeout(&SocketAddrV4::new(VIP, 82).into(), Duration::from_secs(1))
    });
    assert!(
        blocked.is_err(),
        "{mode}: the firewall let {VIP}:82 through"
    );
}

#[test]
fn tc_icmp_errors_reach_the_client_about_the_vip() {
    icmp_errors("tc", "b5");
}

#[test]
fn xdp_icmp_errors_reach_the_client_about_the_vip() {
    icmp_errors("xdp", "b6");
}

#[test]
fn kernel_icmp_errors_reach_the_client_about_the_vip() {
    icmp_errors("kernel", "b7");
}

/// A UDP service whose backend has nothing on its port: the backend answers with an ICMP port
/// unreachable about the packet the load balancer sent it (client → backend). The client's
/// socket, connected to the VIP, hears "connection refused" only if the load balancer turned
/// the quoted packet back into the one it sent (client → VIP).
fn icmp_errors(mode: &str, tag: &str) {
    let _turn = shared();
    let lab = UdpService::with(mode, tag, &closed_service());
    assert!(
        refused(&lab.ingress, false),
        "{mode}: the client never heard the backend's port unreachable about its VIP"
    );
}

#[test]
fn tc_icmp_errors_quoting_ip_options_reach_the_client_about_the_vip() {
    icmp_errors_quoting_ip_options("tc", "cq");
}

#[test]
fn xdp_icmp_errors_quoting_ip_options_reach_the_client_about_the_vip() {
    icmp_errors_quoting_ip_options("xdp", "cr");
}

#[test]
fn kernel_icmp_errors_quoting_ip_options_reach_the_client_about_the_vip() {
    icmp_errors_quoting_ip_options("kernel", "cs");
}

/// [`icmp_errors`] for a client that sends with IP options (four NOPs, `IP_OPTIONS`): the
/// backend's port unreachable quotes the header with its options (IHL 6, first byte 0x46), and
/// the client's socket hears "connection refused" only if the load balancer translated it
/// back to the VIP all the same, as kernel mode's conntrack does. The error the client's
/// namespace received quotes the client's packet as sent (client → VIP:54, options and all),
/// with its quoted IPv4 checksum and its ICMP checksum right. Before, tc and xdp read only
/// quoted headers of 20 bytes (first byte 0x45) and passed this one on untranslated: the
/// client's socket never heard it (with "fragmentation needed", a path MTU black hole).
fn icmp_errors_quoting_ip_options(mode: &str, tag: &str) {
    let _turn = shared();
    let lab = UdpService::with(mode, tag, &closed_service());
    let watcher = raw_socket(&lab.ingress, libc::IPPROTO_ICMP, Duration::from_millis(500));
    let refused = refused(&lab.ingress, true);
    // The port unreachables that reached the client's namespace (IPv4 header first).
    let errors: Vec<Vec<u8>> = std::iter::from_fn(|| recv_packet(&watcher))
        .take(8)
        .filter(|p| {
            let icmp = usize::from(p[0] & 0x0f) * 4;
            p.get(icmp..icmp + 2) == Some(&[3, 3])
        })
        .collect();
    let drops = function_drops(&lab.chain, "lb1");
    assert!(
        refused,
        "{mode}: the client never heard the backend's port unreachable quoting IP options \
         (errors that arrived: {errors:02x?}; drops: {drops:?})"
    );
    assert!(!errors.is_empty(), "{mode}: no port unreachable arrived");
    for error in &errors {
        assert_quotes_the_vip(mode, error);
    }
}

/// `packet` (IPv4 header first, as the client's namespace received it) is a port unreachable
/// from the VIP (the backend's own address translated too) about the client's datagram to
/// VIP:54 as the client sent it, with IP options (a quoted header of 24 bytes), and its
/// checksums are right: outer IPv4, ICMP, quoted IPv4.
fn assert_quotes_the_vip(mode: &str, packet: &[u8]) {
    use netfn_tests::frames::sum16;
    let hlen = usize::from(packet[0] & 0x0f) * 4;
    assert_eq!(
        (
            Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
            Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
        ),
        (VIP, CLIENT),
        "{mode}: the outer source and destination: {packet:02x?}"
    );
    assert_eq!(
        sum16(&packet[..hlen], 0),
        0xffff,
        "{mode}: outer IPv4 checksum"
    );
    let icmp = &packet[hlen..];
    assert!(icmp.len() >= 8 + 24 + 8, "{mode}: short: {packet:02x?}");
    let quoted = &icmp[8..];
    assert_eq!(quoted[0], 0x46, "{mode}: the quoted header: {packet:02x?}");
    let qhlen = 24;
    let l4 = &quoted[qhlen..];
    assert_eq!(
        (
            Ipv4Addr::new(quoted[12], quoted[13], quoted[14], quoted[15]),
            Ipv4Addr::new(quoted[16], quoted[17], quoted[18], quoted[19]),
            u16::from_be_bytes([l4[2], l4[3]])
        ),
        (CLIENT, VIP, 54),
        "{mode}: the quoted source, destination and destination port: {packet:02x?}"
    );
    assert_eq!(sum16(icmp, 0), 0xffff, "{mode}: ICMP checksum");
    assert_eq!(
        sum16(&quoted[..qhlen], 0),
        0xffff,
        "{mode}: quoted IPv4 checksum"
    );
}

/// A UDP service `VIP:54` whose backend (0, on port 9999) has nothing listening: every
/// datagram to the VIP is answered by the backend's port unreachable.
fn closed_service() -> String {
    format!(
        "\n[[chain.function.service]]\nvip = \"{VIP}\"\nproto = \"udp\"\nport = 54\n\
         backends = [{{ address = \"{}\", port = 9999 }}]\n",
        SERVERS[0]
    )
}

/// Whether a client socket in namespace `ingress` connected to VIP:54, sending with IP options
/// (four NOPs) if `with_options`, hears "connection refused" within three tries.
fn refused(ingress: &str, with_options: bool) -> bool {
    in_netns(ingress, || {
        let s = UdpSocket::bind(SocketAddrV4::new(CLIENT, 45_000)).expect("bind");
        if with_options {
            let nops: [u8; 4] = [1; 4];
            netfn_tests::set_socket_option(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_OPTIONS,
                &nops,
            )
            .expect("IP_OPTIONS");
        }
        s.connect(SocketAddrV4::new(VIP, 54)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        (0..3).any(|_| {
            let _ = s.send(b"anyone?");
            matches!(s.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
        })
    })
}

#[test]
fn tc_icmp_errors_from_the_client_side_reach_the_backend() {
    icmp_errors_from_the_client("tc", "ci", 5);
}

#[test]
fn xdp_icmp_errors_from_the_client_side_reach_the_backend() {
    icmp_errors_from_the_client("xdp", "cj", 5);
}

#[test]
fn kernel_icmp_errors_from_the_client_side_reach_the_backend() {
    icmp_errors_from_the_client("kernel", "ck", 5);
}

/// [`icmp_errors_from_the_client`] about an answer that carried the most IP options (40 bytes
/// of NOPs: the quoted header is 60 bytes, IHL 15): it reaches the backend translated, its
/// checksums right, as in kernel mode. Before, tc and xdp read only quoted headers of 20 bytes
/// (first byte 0x45) and passed this one on untranslated, toward the VIP: no backend got it.
#[test]
fn tc_icmp_errors_from_the_client_side_quoting_ip_options_reach_the_backend() {
    icmp_errors_from_the_client("tc", "ct", 15);
}

#[test]
fn xdp_icmp_errors_from_the_client_side_quoting_ip_options_reach_the_backend() {
    icmp_errors_from_the_client("xdp", "cu", 15);
}

#[test]
fn kernel_icmp_errors_from_the_client_side_quoting_ip_options_reach_the_backend() {
    icmp_errors_from_the_client("kernel", "cv", 15);
}

/// The client port of the flow [`icmp_errors_from_the_client`] sets up, and one of no flow.
const ICMP_CPORT: u16 = 45_100;
const UNTRACKED_CPORT: u16 = 45_101;

/// A UDP flow through the VIP, answered by its backend; then a router on the client's side
/// whose next hop has a smaller MTU (a raw socket in the client's namespace stands for it) says
/// "fragmentation needed, next-hop MTU 1200" about the answer (VIP:54 → client, its IPv4 header
/// quoted as `quoted_ihl` words: options are NOPs), to the VIP. The
/// backend must get it about the packet it sent (backend:8080 → client, to the backend's own
/// address): the backend's namespace receives it so translated, every checksum it can check
/// right (outer IPv4, ICMP, quoted IPv4), and its stack acts on it: its route to the client
/// learns MTU 1200 (path MTU discovery from a backend toward its clients; before, tc and xdp
/// passed the error on untranslated, toward the VIP: a black hole). An error about a flow the
/// load balancer does not track reaches no backend, and the fast path counts it as
/// `lb-icmp-untracked` (kernel mode: conntrack holds it invalid, and the DNAT never applies).
fn icmp_errors_from_the_client(mode: &str, tag: &str, quoted_ihl: u8) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let file = dir.write(
        "lb.toml",
        &chain_file(&chain, mode, &service(54, "udp", &[(0, 1)])),
    );
    let _guard = ChainGuard::up(&chain, &file);
    let egress = format!("nf-{chain}-egress");
    let _servers = Servers::start(&egress);
    let ingress = format!("nf-{chain}-ingress");
    let backend = raw_socket(&egress, libc::IPPROTO_ICMP, Duration::from_millis(500));
    let client = in_netns(&ingress, || {
        let s = UdpSocket::bind(SocketAddrV4::new(CLIENT, ICMP_CPORT)).expect("bind");
        s.connect(SocketAddrV4::new(VIP, 54)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s
    });
    client.send(b"who").expect("send");
    let mut buf = [0u8; 64];
    let n = client
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("{mode}: no answer from the VIP: {e}"));
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(answer, SERVERS[0].to_string(), "{mode}: the answer");
    let drops_before = untracked_icmp(&chain);

    let router = raw_socket(&ingress, libc::IPPROTO_ICMP, Duration::from_millis(100));
    for cport in [UNTRACKED_CPORT, ICMP_CPORT] {
        send_icmp(
            &router,
            VIP,
            frag_needed(cport, answer.as_bytes(), quoted_ihl),
        );
    }
    let errors: Vec<Vec<u8>> = std::iter::from_fn(|| recv_packet(&backend))
        .filter(|p| p.len() >= 20 && p[9] == netfn_tests::frames::ICMP)
        .take(4)
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{mode}: the backend's namespace should receive the error about the flow, and only it: \
         {errors:02x?}"
    );
    assert_translated(mode, &errors[0], answer.as_bytes(), quoted_ihl);
    // The backend's stack took it: its route toward the client has the path's MTU now.
    let learned = (0..20).any(|_| {
        let route = ip_route_get(&egress, CLIENT);
        route.contains("mtu 1200") || {
            thread::sleep(Duration::from_millis(50));
            false
        }
    });
    assert!(
        learned,
        "{mode}: the backend did not learn the path MTU toward the client: {}",
        ip_route_get(&egress, CLIENT)
    );
    if mode != "kernel" {
        assert_eq!(
            untracked_icmp(&chain),
            drops_before + 1,
            "{mode}: the error about no flow is counted as lb-icmp-untracked"
        );
    }
}

/// What a router on the client's path sends the VIP when the backend's answer `payload`
/// (VIP:54 → client:`cport`) meets a next hop of MTU 1200: ICMP "fragmentation needed" quoting
/// the answer's IPv4 header (of `ihl` words, options NOPs) and all of its UDP datagram (its
/// checksum is ICMP's, filled in as it is sent).
fn frag_needed(cport: u16, payload: &[u8], ihl: u8) -> Vec<u8> {
    let link = netfn_tests::frames::Link {
        src_mac: [0; 6],
        dst_mac: [0; 6],
        src: VIP,
        dst: CLIENT,
    };
    let datagram = netfn_tests::frames::udp(&link, 54, cport, payload);
    let mut error = vec![3, 4, 0, 0, 0, 0];
    error.extend_from_slice(&1200u16.to_be_bytes());
    error.extend(netfn_tests::frames::ipv4(
        &link,
        netfn_tests::frames::UDP,
        ihl,
        datagram.len(),
        0,
    ));
    error.extend(datagram);
    error
}

/// `packet` (IPv4 header first, as the backend's namespace received it) is the frag-needed of
/// [`frag_needed`] about the flow, translated for the backend: from the client to the backend,
/// about the answer as the backend sent it (backend:8080 → client), `payload`, the MTU and the
/// quoted header's length (`quoted_ihl` words, options and all) as they were, and the checksums
/// right (the outer IPv4 header's was checked by the kernel that delivered it, and is checked
/// again here).
fn assert_translated(mode: &str, packet: &[u8], payload: &[u8], quoted_ihl: u8) {
    use netfn_tests::frames::sum16;
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let hlen = usize::from(packet[0] & 0x0f) * 4;
    let icmp = &packet[hlen..];
    let qhlen = usize::from(quoted_ihl) * 4;
    assert!(icmp.len() >= 8 + qhlen + 8, "{mode}: short: {packet:02x?}");
    let quoted = &icmp[8..];
    assert_eq!(
        quoted[0],
        0x40 | quoted_ihl,
        "{mode}: the quoted header's length"
    );
    let l4 = &quoted[qhlen..];
    assert_eq!(
        (addr(&packet[12..]), addr(&packet[16..])),
        (CLIENT, SERVERS[0]),
        "{mode}: the outer source and destination"
    );
    assert_eq!(
        (icmp[0], icmp[1], port(&icmp[6..])),
        (3, 4, 1200),
        "{mode}: type, code and next-hop MTU"
    );
    assert_eq!(
        (
            addr(&quoted[12..]),
            port(l4),
            addr(&quoted[16..]),
            port(&l4[2..])
        ),
        (SERVERS[0], SERVER_PORT, CLIENT, ICMP_CPORT),
        "{mode}: the quoted answer's source and destination"
    );
    assert_eq!(&l4[8..], payload, "{mode}: the quoted payload");
    assert_eq!(
        sum16(&packet[..hlen], 0),
        0xffff,
        "{mode}: outer IPv4 checksum"
    );
    assert_eq!(sum16(icmp, 0), 0xffff, "{mode}: ICMP checksum");
    assert_eq!(
        sum16(&quoted[..qhlen], 0),
        0xffff,
        "{mode}: quoted IPv4 checksum"
    );
}

/// `ip route get ADDR` in namespace `ns`.
fn ip_route_get(ns: &str, addr: Ipv4Addr) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "route", "get", &addr.to_string()])
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Function lb1's `lb-icmp-untracked` drops, from `netfn status`.
fn untracked_icmp(chain: &str) -> u64 {
    function_drops(chain, "lb1")
        .get("lb-icmp-untracked")
        .copied()
        .unwrap_or(0)
}

#[test]
fn tc_answers_of_evicted_flows_are_dropped_and_counted() {
    evicted_flow_answers("tc", "b8");
}

#[test]
fn xdp_answers_of_evicted_flows_are_dropped_and_counted() {
    evicted_flow_answers("xdp", "b9");
}

/// A connection table of 16 flows: a UDP flow answered once, then pushed out of the table by
/// 1,000 new flows per CPU of two datagrams each to another service (whose backend never answers; a
/// flow seen twice is an active one to the kernel's LRU, as busy flows are: flows of one packet
/// only churn through its inactive list and never push an answered flow out). Its backend sends
/// again, unasked: that answer has no flow to go back from the VIP, and must neither reach the
/// client with the backend's address nor vanish uncounted; it is dropped as
/// `lb-reply-untracked` (status and metrics). The client's next datagram is balanced again, and
/// the flow goes on.
fn evicted_flow_answers(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let services = format!(
        "\n[[chain.function.service]]\nvip = \"{VIP}\"\nproto = \"udp\"\nport = 55\n\
         backends = [{{ address = \"{}\", port = 9100 }}]\n\
         \n[[chain.function.service]]\nvip = \"{VIP}\"\nproto = \"udp\"\nport = 56\n\
         backends = [{{ address = \"{}\", port = 9101 }}]\n",
        SERVERS[0], SERVERS[1]
    );
    let text = chain_file(&chain, mode, &services).replace(
        "conntrack = { tcp_closing = 1, udp = 2 }",
        "conntrack = { size = 16, udp = 60 }",
    );
    let file = dir.write("lb.toml", &text);
    let _guard = ChainGuard::up(&chain, &file);
    let egress = format!("nf-{chain}-egress");
    let _servers = Servers::start(&egress);
    let ingress = format!("nf-{chain}-ingress");
    let agent = Agent::start(&dir.0, &chain, &["--no-probe"]);
    let backend = in_netns(&egress, || {
        UdpSocket::bind(SocketAddrV4::new(SERVERS[0], 9100)).expect("bind backend")
    });
    backend
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    // Takes the datagrams of the 1,000 flows and never answers (no port unreachable either).
    let _silent = in_netns(&egress, || {
        UdpSocket::bind(SocketAddrV4::new(SERVERS[1], 9101)).expect("bind silent backend")
    });
    // Unconnected: it would show a datagram from the backend's own address too.
    let client = in_netns(&ingress, || {
        UdpSocket::bind(SocketAddrV4::new(CLIENT, 46_000)).expect("bind client")
    });
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let mut exchange = |word: &[u8]| {
        client
            .send_to(word, SocketAddrV4::new(VIP, 55))
            .expect("send");
        let (n, from) = backend
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{mode}: the backend got nothing: {e}"));
        assert_eq!(&buf[..n], word);
        backend.send_to(word, from).expect("answer");
        from
    };
    let from = exchange(b"one");
    let mut answer = [0u8; 64];
    let (n, source) = client.recv_from(&mut answer).expect("first answer");
    assert_eq!(
        (&answer[..n], source),
        (&b"one"[..], SocketAddrV4::new(VIP, 55).into()),
        "{mode}: the first answer"
    );

    // From every CPU: the LRU keeps a list of fresh entries per CPU, and only a CPU that runs
    // out of free ones moves its list (the answered flow may be on any) to where eviction works.
    let cpus = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    thread::scope(|scope| {
        for cpu in 0..cpus {
            let ingress = &ingress;
            scope.spawn(move || {
                in_netns(ingress, || {
                    pin_to(cpu);
                    let first = 47_000 + 1_000 * cpu as u16;
                    for port in first..first + 1_000 {
                        let s = UdpSocket::bind(SocketAddrV4::new(CLIENT, port)).expect("bind");
                        for _ in 0..2 {
                            s.send_to(b"x", SocketAddrV4::new(VIP, 56)).expect("send");
                        }
                    }
                })
            });
        }
    });
    let untracked = |text: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("netfn_function_drops_total{")
                    && l.contains(&format!("chain=\"{chain}\""))
                    && l.contains("function=\"lb1\"")
                    && l.contains("reason=\"lb-reply-untracked\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let status_before = function_drops(&chain, "lb1")
        .get("lb-reply-untracked")
        .copied()
        .unwrap_or(0);
    let metrics_before = untracked(&agent.metrics());

    // The backend speaks again, unasked: its flow is gone from the table.
    backend.send_to(b"unasked", from).expect("send unasked");
    if let Ok((n, source)) = client.recv_from(&mut answer) {
        panic!(
            "{mode}: the client got {:?} from {source} for a flow the table no longer holds",
            String::from_utf8_lossy(&answer[..n])
        );
    }
    let status_after = function_drops(&chain, "lb1")
        .get("lb-reply-untracked")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        status_after,
        status_before + 1,
        "{mode}: the answer without a flow is counted as lb-reply-untracked in status \
         ({status_before} before)"
    );
    assert_eq!(
        untracked(&agent.metrics()),
        metrics_before + 1,
        "{mode}: and in the metrics"
    );

    // The client speaks again: balanced anew (one backend), the flow goes on.
    exchange(b"two");
    let (n, source) = client
        .recv_from(&mut answer)
        .expect("answer after eviction");
    assert_eq!(
        (&answer[..n], source),
        (&b"two"[..], SocketAddrV4::new(VIP, 55).into()),
        "{mode}: the answer after the client spoke again"
    );
}

#[test]
fn tc_backends_routed_beyond_the_egress_endpoint() {
    routed_backends("tc", "br");
}

#[test]
fn xdp_backends_routed_beyond_the_egress_endpoint() {
    routed_backends("xdp", "bs");
}

#[test]
fn kernel_backends_routed_beyond_the_egress_endpoint() {
    routed_backends("kernel", "bq");
}

/// The routed backend of [`routed_backends`]: in a namespace behind the egress endpoint.
const FAR: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 5);

/// A backend outside the egress subnet, routed from the egress endpoint (which forwards to a
/// namespace of the test's own behind it), beside one in the subnet, with two functions after
/// the load balancer: connections reach both, the far one's answers cross those functions and
/// the load balancer (all accept its address as a source), and the health checks (from the load
/// balancer's transit address, three hops from the egress endpoint) reach both.
fn routed_backends(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let services = format!(
        "\n[[chain.function.service]]\nvip = \"{VIP}\"\nproto = \"tcp\"\nport = 80\n\
         backends = [{{ address = \"{}\", port = {SERVER_PORT} }}, \
         {{ address = \"{FAR}\", port = {SERVER_PORT} }}]\n\
         health = {{ check = \"tcp\", interval = 0.3, timeout = 0.2, rise = 1, fall = 2 }}\n\
         \n[[chain.function]]\nname = \"back\"\nkind = \"forward\"\n\
         \n[[chain.function]]\nname = \"back2\"\nkind = \"forward\"\n",
        SERVERS[0]
    );
    let file = dir.write("lb.toml", &chain_file(&chain, mode, &services));
    let _guard = ChainGuard::up(&chain, &file);
    let egress = format!("nf-{chain}-egress");
    let _servers = Servers::start(&egress);
    let far = FarSide::new(&chain, &egress, 1500);
    let listener = in_netns(&far.ns.0, || {
        TcpListener::bind(SocketAddrV4::new(FAR, SERVER_PORT)).expect("listen")
    });
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let far_server = {
        let (s, all) = (Arc::new(AtomicBool::new(false)), stop.clone());
        thread::spawn(move || serve_tcp(listener, FAR, &s, &all))
    };
    let agent = Agent::start(&dir.0, &chain, &["--no-probe"]);

    let ingress = format!("nf-{chain}-ingress");
    let answers = counts(&answers(&ingress, 80, 44_000..44_200, true));
    assert!(
        !answers.contains_key(&REFUSED),
        "{mode}: refused connections: {answers:?}"
    );
    for server in [SERVERS[0], FAR] {
        let n = answers.get(&server).copied().unwrap_or(0);
        assert!(n > 40, "{mode}: {server} answered {n} of 200: {answers:?}");
    }
    // The health checks reach it too (from the load balancer's namespace, by its route): up
    // after more than fall x interval while it serves, down once it stops (so they ran).
    let service_row = || {
        lb_status(&chain)
            .into_iter()
            .find(|(k, _)| k == &format!("{VIP}:80/tcp"))
            .map(|(_, v)| v)
            .unwrap_or_default()
    };
    thread::sleep(Duration::from_millis(1500));
    let row = service_row();
    assert!(
        row.starts_with("2 of 2 backends up"),
        "{mode}: while both serve: {row:?}\n{}",
        agent.log_text()
    );
    stop.store(true, Ordering::Relaxed);
    let _ = far_server.join();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !service_row().starts_with("1 of 2 backends up") {
        assert!(
            std::time::Instant::now() < deadline,
            "{mode}: the far backend stopped, the service says {:?}:\n{}",
            service_row(),
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// A namespace of the test's own behind the egress endpoint (which forwards to it): [`FAR`] on
/// its loopback, a /30 to the egress endpoint whose egress end has MTU `mtu` (the far end keeps
/// 1500: its backend advertises a full-sized MSS, so a smaller `mtu` makes the egress endpoint
/// a router that must say "fragmentation needed"), routes back to the
/// chain's subnets and its transit pool (health checks leave from the load balancer's own
/// address) only: nothing leaves the machine. Removed on drop (its veth goes with it).
struct FarSide {
    ns: netfn_tests::ForeignNetns,
}

impl FarSide {
    fn new(chain: &str, egress: &str, mtu: u32) -> Self {
        let far = FarSide {
            ns: netfn_tests::ForeignNetns::add(&format!("{chain}-far")),
        };
        let ns = far.ns.0.as_str();
        let mtu = mtu.to_string();
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&[
            "-n", ns, "link", "add", "far0", "type", "veth", "peer", "name", "far1", "mtu", &mtu,
            "netns", egress,
        ]);
        ip(&["-n", ns, "addr", "add", "10.200.9.2/30", "dev", "far0"]);
        ip(&["-n", ns, "addr", "add", &format!("{FAR}/32"), "dev", "lo"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "link", "set", "far0", "up"]);
        for net in ["10.84.1.0/24", "10.84.2.0/24", "100.64.0.0/16"] {
            ip(&["-n", ns, "route", "add", net, "via", "10.200.9.1"]);
        }
        ip(&["-n", egress, "addr", "add", "10.200.9.1/30", "dev", "far1"]);
        ip(&["-n", egress, "link", "set", "far1", "up"]);
        ip(&[
            "-n",
            egress,
            "route",
            "add",
            &format!("{FAR}/32"),
            "via",
            "10.200.9.2",
        ]);
        let forwarding = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                egress,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .expect("run sysctl");
        assert!(forwarding.success(), "forwarding on in {egress}");
        far
    }
}

#[test]
fn tc_path_mtu_discovery_through_the_load_balancer() {
    path_mtu("tc", "bm");
}

#[test]
fn xdp_path_mtu_discovery_through_the_load_balancer() {
    path_mtu("xdp", "bn");
}

#[test]
fn kernel_path_mtu_discovery_through_the_load_balancer() {
    path_mtu("kernel", "bo");
}

/// A router between the chain and the backend with a smaller MTU (the egress endpoint, 1280
/// toward [`FAR`]): its ICMP "fragmentation needed" about the client's full-sized segments
/// reaches the client about the VIP (the load balancer translates the quoted header), so the
/// client learns the path MTU and a 256 KB upload completes; without it the segments vanish
/// (a black hole) and the upload stalls.
fn path_mtu(mode: &str, tag: &str) {
    const SIZE: usize = 256 * 1024;
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let services = format!(
        "\n[[chain.function.service]]\nvip = \"{VIP}\"\nproto = \"tcp\"\nport = 80\n\
         backends = [{{ address = \"{FAR}\", port = {SERVER_PORT} }}]\n"
    );
    let file = dir.write("lb.toml", &chain_file(&chain, mode, &services));
    let _guard = ChainGuard::up(&chain, &file);
    let egress = format!("nf-{chain}-egress");
    let far = FarSide::new(&chain, &egress, 1280);
    // The backend: reads to the end, answers with the byte count.
    let listener = in_netns(&far.ns.0, || {
        TcpListener::bind(SocketAddrV4::new(FAR, SERVER_PORT)).expect("listen")
    });
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        let _ = conn.write_all(total.to_string().as_bytes());
    });
    let ingress = format!("nf-{chain}-ingress");
    let answer = in_netns(&ingress, || {
        let mut s = connect_from(45_000, 80);
        s.write_all(&vec![7u8; SIZE])
            .map_err(|e| format!("send: {e}"))?;
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .map_err(|e| format!("read the answer: {e}"))?;
        Ok::<_, String>(answer)
    });
    let _ = server.join();
    assert_eq!(
        answer.as_deref(),
        Ok(SIZE.to_string().as_str()),
        "{mode}: the upload through a 1280-byte hop"
    );
    // The client's stack learned the path MTU toward the VIP (from the translated ICMP).
    let route = std::process::Command::new("ip")
        .args(["-n", &ingress, "route", "get", &VIP.to_string()])
        .output()
        .expect("run ip");
    let route = String::from_utf8_lossy(&route.stdout).into_owned();
    assert!(route.contains("mtu 1280"), "{mode}: {route}");
}

#[test]
fn tc_health_check_settings_change_by_apply() {
    health_settings_change("tc", "bc");
}

#[test]
fn kernel_health_check_settings_change_by_apply() {
    health_settings_change("kernel", "bd");
}

/// The health checks follow an apply that changes them: the test's servers speak no HTTP, so a
/// switch from TCP connects to HTTP GETs takes every backend out; the switch back brings them
/// in again. Connections keep going to the backends while the checks pass, and to none while
/// all fail.
fn health_settings_change(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let tcp = service(80, "tcp", &[(0, 1), (1, 1)])
        + "health = { check = \"tcp\", interval = 0.3, timeout = 0.2, rise = 1, fall = 1 }\n";
    let http = tcp.replace("check = \"tcp\"", "check = \"http\", path = \"/healthz\"");
    assert_ne!(tcp, http);
    let v1 = dir.write("tcp.toml", &chain_file(&chain, mode, &tcp));
    let v2 = dir.write("http.toml", &chain_file(&chain, mode, &http));
    let _guard = ChainGuard::up(&chain, &v1);
    let _servers = Servers::start(&format!("nf-{chain}-egress"));
    let ingress = format!("nf-{chain}-ingress");
    let agent = Agent::start(
        &dir.0,
        &chain,
        &["--no-probe", "--rescan-interval", "200ms"],
    );
    let service_row = || {
        lb_status(&chain)
            .into_iter()
            .find(|(k, _)| k == &format!("{VIP}:80/tcp"))
            .map(|(_, v)| v)
            .unwrap_or_default()
    };
    let until = |wanted: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !service_row().starts_with(wanted) {
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: waiting for {wanted:?}, the service says {:?}:\n{}",
                service_row(),
                agent.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    };
    // TCP checks pass (two intervals after the start: fall is 1).
    thread::sleep(Duration::from_millis(600));
    until("2 of 2 backends up");
    assert_eq!(counts(&spread(&ingress, 80, 46_000..46_060)).len(), 2);

    let applied = netfn_ok(&["apply", &v2.to_string_lossy()]);
    assert!(applied.contains("in place"), "{mode}: {applied}");
    until("0 of 2 backends up");
    // 1 s: with every backend down the SYN is dropped, and the test need not wait 5.
    let none = in_netns(&ingress, || {
        connect_within(46_100, 80, Duration::from_secs(1)).map(|_| ())
    });
    assert!(
        none.is_err(),
        "{mode}: a connection went through with every backend down"
    );

    netfn_ok(&["apply", &v1.to_string_lossy()]);
    until("2 of 2 backends up");
    assert_eq!(counts(&spread(&ingress, 80, 46_200..46_260)).len(), 2);
}

#[test]
fn tc_removed_backends_without_flows_leave_room_for_ones_with_flows() {
    removed_backends_leave_room("tc", "ca");
}

#[test]
fn xdp_removed_backends_without_flows_leave_room_for_ones_with_flows() {
    removed_backends_leave_room("xdp", "cb");
}

#[test]
fn kernel_removed_backends_without_flows_leave_room_for_ones_with_flows() {
    removed_backends_leave_room("kernel", "cd");
}

/// Backends of the second service that [`removed_backends_leave_room`] removes first: none of
/// them ever gets a flow (no server listens on their ports).
const IDLE_BACKENDS: u16 = 300;

/// The reverse map carries the way back of removed backends whose flows may still run, in a
/// room of its own (4,096 backends; `NETFN_LB_CARRY_ROOM` lowers it in debug builds). Many
/// backends without flows are removed, then one with an open connection, with a room of one:
/// the connection keeps its answers through that apply and the ones after (each carries it
/// again while it runs), and once it has ended, the next apply carries nothing. Before, removed
/// backends were carried until the room was full, whether flows needed them or not: the
/// connection's backend competed with the 300 idle ones for the one place and lost (with no
/// entry, its answers passed untranslated and the client reset them: no drop counter showed
/// it, see [`beyond_the_carry_room`]). Kernel mode (conntrack) is unaffected.
fn removed_backends_leave_room(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let write = |name: &str, web: &[usize], other: &[usize], idle: bool| {
        let list =
            |servers: &[usize], idle: bool| {
                let mut b: Vec<String> = servers
                    .iter()
                    .map(|i| format!("{{ address = \"{}\", port = {SERVER_PORT} }}", SERVERS[*i]))
                    .collect();
                if idle {
                    b.extend((0..IDLE_BACKENDS).map(|p| {
                        format!("{{ address = \"{}\", port = {} }}", SERVERS[3], 20_000 + p)
                    }));
                }
                b.join(", ")
            };
        let services = format!(
            "\n[[chain.function.service]]\nvip = \"{VIP}\"\nproto = \"tcp\"\nport = 80\n\
             backends = [{}]\n\n[[chain.function.service]]\nvip = \"{VIP}\"\nproto = \"tcp\"\n\
             port = 81\nbackends = [{}]\n",
            list(web, false),
            list(other, idle)
        );
        let path = dir.0.join(name);
        std::fs::write(&path, chain_file(&chain, mode, &services)).expect("write chain file");
        path
    };
    let idle = write("idle.toml", &[0], &[1], true);
    let without_idle = write("without-idle.toml", &[0], &[1], false);
    let without_0 = write("without-0.toml", &[1], &[1], false);
    // A change that removes no backend (a second one for :81).
    let with_2 = write("with-2.toml", &[1], &[1, 2], false);
    // The same backends, numbered otherwise.
    let with_2_first = write("with-2-first.toml", &[1], &[2, 1], false);
    let _guard = ChainGuard::up(&chain, &idle);
    let _servers = Servers::start(&format!("nf-{chain}-egress"));
    let ingress = format!("nf-{chain}-ingress");
    let mut open = in_netns(&ingress, || connect_from(40_000, 80));
    open.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    assert_eq!(
        ask(&mut open),
        SERVERS[0],
        "{mode}: the only backend of :80"
    );

    // The idle backends leave, with the default room: all carried.
    netfn_ok(&["apply", &without_idle.to_string_lossy()]);
    // Server 0 leaves with a room of one, then the chain changes again and again.
    let apply_in_room_of_one = |file: &std::path::Path| {
        let out = netfn_tests::command(&netfn_tests::netfn_bin())
            .env("NETFN_LB_CARRY_ROOM", "1")
            .args(["apply", &file.to_string_lossy()])
            .output()
            .expect("run netfn");
        assert!(
            out.status.success(),
            "{mode}: apply {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (i, file) in [&without_0, &with_2, &with_2_first, &with_2]
        .into_iter()
        .enumerate()
    {
        apply_in_room_of_one(file);
        let answer = try_ask(&mut open);
        assert!(
            matches!(answer, Ok(a) if a == SERVERS[0]),
            "{mode}: after apply {} the connection to the removed backend got {answer:?} \
             (fast path drops: {:?})",
            i + 1,
            netfn_tests::loss::fastpath_drops(&chain)
        );
    }
    if mode == "kernel" {
        return;
    }
    let carried = |what: &str| {
        let reverse = reverse_keys(&chain);
        assert!(
            reverse.contains(&SERVERS[0]),
            "{mode}: {what}: server 0 not carried: {reverse:?}"
        );
        reverse
    };
    // Carried: server 0 and the configured 1 and 2; the idle ones went with no flow.
    let reverse = carried("while its connection runs");
    assert_eq!(reverse.len(), 3, "{mode}: {reverse:?}");
    // The connection ends (tcp_closing = 1 s): the next apply carries nothing.
    drop(open);
    thread::sleep(Duration::from_millis(2500));
    apply_in_room_of_one(&with_2_first);
    let reverse = reverse_keys(&chain);
    assert_eq!(
        reverse,
        vec![SERVERS[1], SERVERS[2]],
        "{mode}: after the connection ended, only the configured backends"
    );
}

#[test]
fn tc_a_removed_backend_beyond_the_carry_room_is_told_at_apply() {
    beyond_the_carry_room("tc", "cm");
}

#[test]
fn xdp_a_removed_backend_beyond_the_carry_room_is_told_at_apply() {
    beyond_the_carry_room("xdp", "cn");
}

/// A removed backend whose flow still runs but finds no room in the reverse map (here a room of
/// none) has no entry there: the stage cannot tell its answers from any other packet of the
/// backends' side, so they pass with the backend's address (the client resets them) and no
/// counter shows them (`lb-reply-untracked` counts answers of backends the map knows). The
/// apply that leaves it out says so. Before, it said nothing, and the lost answers showed
/// nowhere (helper-27 saw no drops in `netfn status` while its connection starved).
fn beyond_the_carry_room(mode: &str, tag: &str) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let write = |name: &str, backends: &[(usize, u32)]| {
        let path = dir.0.join(name);
        let services = service(80, "tcp", backends);
        std::fs::write(&path, chain_file(&chain, mode, &services)).expect("write chain file");
        path
    };
    let first = write("first.toml", &[(0, 1)]);
    let second = write("second.toml", &[(1, 1)]);
    let third = write("third.toml", &[(1, 1), (2, 1)]);
    let _guard = ChainGuard::up(&chain, &first);
    let _servers = Servers::start(&format!("nf-{chain}-egress"));
    let ingress = format!("nf-{chain}-ingress");
    let mut open = in_netns(&ingress, || connect_from(40_100, 80));
    open.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    assert_eq!(ask(&mut open), SERVERS[0], "{mode}: the only backend");
    let apply = |file: &std::path::Path, room: Option<&str>| {
        let mut cmd = netfn_tests::command(&netfn_tests::netfn_bin());
        if let Some(room) = room {
            cmd.env("NETFN_LB_CARRY_ROOM", room);
        }
        let out = cmd
            .args(["apply", &file.to_string_lossy()])
            .output()
            .expect("run netfn");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "{mode}: apply {}: {stderr}",
            file.display()
        );
        stderr
    };
    const TOLD: &str = "1 backend(s) that left the settings find no room for their way back";
    // Server 0 leaves with the default room: carried, its connection goes on, nothing to tell.
    let stderr = apply(&second, None);
    assert!(!stderr.contains("no room"), "{mode}: {stderr}");
    assert_eq!(ask(&mut open), SERVERS[0], "{mode}: carried");
    // The next change, in a room of none: server 0 (its flow runs) is left out, and told.
    let stderr = apply(&third, Some("0"));
    assert!(
        stderr.contains(TOLD),
        "{mode}: the apply does not tell that server 0's way back was left out: {stderr:?}"
    );
    assert!(
        !reverse_keys(&chain).contains(&SERVERS[0]),
        "{mode}: server 0 still carried"
    );
    let answer = try_ask(&mut open);
    assert!(
        answer.is_err(),
        "{mode}: the answer came back through a way back that was left out: {answer:?}"
    );
}

#[test]
fn tc_backend_and_service_counters_carry_over_an_apply() {
    counters_carry_over_an_apply("tc", "co", &[]);
}

#[test]
fn xdp_backend_and_service_counters_carry_over_an_apply() {
    counters_carry_over_an_apply("xdp", "cp", &[]);
}

/// The failed applies of [`counters_carry_over_an_apply`]: one that failed before the new stage
/// instance went live, one after (the restored instance replaces the failed one).
const FAILED_APPLIES: [&str; 2] = ["apply-create", "apply-switch"];

#[test]
fn tc_backend_and_service_counters_stay_when_an_apply_fails() {
    counters_carry_over_an_apply("tc", "cf", &FAILED_APPLIES);
}

#[test]
fn xdp_backend_and_service_counters_stay_when_an_apply_fails() {
    counters_carry_over_an_apply("xdp", "cg", &FAILED_APPLIES);
}

/// The per-backend and per-service counters of the backends and services that persist go on
/// counting across an `apply` that changes the settings in place, as Prometheus counters must
/// across a reload: here a service is added first (every backend of :80 gets another number)
/// and a backend of :80 is removed (the service still counts what it took). Before, they
/// started again from zero with the new stage instance. The same apply failing first at each of
/// `failing` (failpoints) leaves them where they were: before, the old settings' restored
/// instance started them from zero.
fn counters_carry_over_an_apply(mode: &str, tag: &str, failing: &[&str]) {
    let _turn = shared();
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let before = dir.write(
        "before.toml",
        &chain_file(&chain, mode, &service(80, "tcp", &[(0, 1), (1, 1)])),
    );
    let after = dir.write(
        "after.toml",
        &chain_file(
            &chain,
            mode,
            &(service(81, "tcp", &[(2, 1)]) + &service(80, "tcp", &[(0, 1)])),
        ),
    );
    let _guard = ChainGuard::up(&chain, &before);
    let _servers = Servers::start(&format!("nf-{chain}-egress"));
    let ingress = format!("nf-{chain}-ingress");
    // Per backend of :80 and for the service: new flows, and packets.
    let seen = || {
        let rows = lb_status(&chain);
        let number = |row: &str, what: &str| -> u64 {
            let (_, v) = rows
                .iter()
                .find(|(k, _)| k == row)
                .unwrap_or_else(|| panic!("{mode}: no row {row}: {rows:?}"));
            v.split(": ")
                .nth(1)
                .and_then(|r| r.split(", ").find_map(|p| p.strip_suffix(what)))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{mode}: no{what} in {row}: {v}"))
        };
        let service = format!("{VIP}:80/tcp");
        let backend = format!("{service} → {}:{SERVER_PORT}", SERVERS[0]);
        (
            number(&backend, " flows"),
            number(&backend, " packets"),
            number(&service, " flows"),
            number(&service, " packets"),
        )
    };
    let first = counts(&spread(&ingress, 80, 46_300..46_340));
    let to_0 = first.get(&SERVERS[0]).copied().unwrap_or(0) as u64;
    let (mut flows_0, mut packets_0, mut flows, mut packets) = seen();
    assert_eq!((flows_0, flows), (to_0, 40), "{mode}: before the apply");
    for (round, point) in (0u16..).zip(failing) {
        apply_fails_at(point, &after);
        let (flows_0_now, packets_0_now, flows_now, packets_now) = seen();
        assert!(
            (flows_0_now, flows_now) == (flows_0, flows)
                && packets_0_now >= packets_0
                && packets_now >= packets,
            "{mode}: right after an apply that failed at {point}, what was counted before it: \
             {:?} then {:?}",
            (flows_0, packets_0, flows, packets),
            (flows_0_now, packets_0_now, flows_now, packets_now)
        );
        let first = 46_400 + 10 * round;
        let sent = counts(&spread(&ingress, 80, first..first + 10));
        let to_0 = sent.get(&SERVERS[0]).copied().unwrap_or(0) as u64;
        (flows_0, packets_0, flows, packets) = seen();
        assert_eq!(
            (flows_0, flows),
            (flows_0_now + to_0, flows_now + 10),
            "{mode}: counting on after an apply that failed at {point}"
        );
    }
    netfn_ok(&["apply", &after.to_string_lossy()]);
    // (A closing connection's last packets may still come: packets only grow.)
    let (flows_0_now, packets_0_now, flows_now, packets_now) = seen();
    assert!(
        (flows_0_now, flows_now) == (flows_0, flows)
            && packets_0_now >= packets_0
            && packets_now >= packets,
        "{mode}: right after the apply, what was counted before it: {:?} then {:?}",
        (flows_0, packets_0, flows, packets),
        (flows_0_now, packets_0_now, flows_now, packets_now)
    );
    let second = counts(&spread(&ingress, 80, 46_340..46_350));
    assert_eq!(second.get(&SERVERS[0]), Some(&10), "{mode}: {second:?}");
    let (flows_0_after, packets_0_after, flows_after, packets_after) = seen();
    assert_eq!(
        (flows_0_after, flows_after),
        (flows_0 + 10, flows + 10),
        "{mode}: the counts before the apply and after, summed"
    );
    assert!(
        packets_0_after >= packets_0 + 30 && packets_after >= packets + 30,
        "{mode}: packets {packets_0} then {packets_0_after} (backend), {packets} then \
         {packets_after} (service)"
    );
}

/// The backend addresses in the load balancer's live reverse map (one per entry, from
/// `bpftool`'s dump of the pinned map).
fn reverse_keys(chain: &str) -> Vec<Ipv4Addr> {
    let base = std::path::PathBuf::from(format!("/sys/fs/bpf/netfn/{chain}"));
    let pin = std::fs::read_dir(&base)
        .expect("chain pins")
        .filter_map(Result::ok)
        .map(|e| e.path().join("NF_LB_REVERSE"))
        .find(|p| p.exists())
        .expect("the load balancer's reverse map");
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool: {out:?}");
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    let mut keys: Vec<Ipv4Addr> = dump
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            // The key's first 4 bytes (hex strings) are the IPv4 address.
            let bytes: Vec<u8> = e["key"]
                .as_array()
                .expect("key bytes")
                .iter()
                .take(4)
                .map(|b| {
                    u8::from_str_radix(b.as_str().expect("hex").trim_start_matches("0x"), 16)
                        .expect("byte")
                })
                .collect();
            Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
        })
        .collect();
    keys.sort();
    keys
}
