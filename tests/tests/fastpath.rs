//! The eBPF fast path (`fastpath = "tc"` and `"xdp"`) with real packets, as root: the 3-function
//! scenario both ways, exact per-function counters, spoofed frames dropped and counted, and
//! nothing left after `down`.
//!
//! To prove that the packets skip the functions' IP stacks (kernel forwarding would give the same
//! TTLs), every test turns IP forwarding OFF in the function namespaces before sending: only the
//! forwarder can carry the traffic then. All traffic stays inside the chain's own namespaces.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netfn_core::chain::state;
use netfn_core::ebpf::{self, FastpathCounters, FnCounters};
use netfn_core::plan::names;
use netfn_core::plan::{ChainPlan, LinkEnd};
use netfn_tests::traffic::{recv_with_ttl, tcp_echo, udp_echo};
use netfn_tests::{
    ChainGuard, EGRESS_ADDR, INGRESS_ADDR, TempDir, enable_recv_ttl, forward_chain, in_netns,
    leftovers, udp_socket_in, unique_chain,
};

const DROP_SPOOFED_MAC: usize = 0;
const DROP_SPOOFED_IP: usize = 1;

/// Datagrams of the exact-count burst, and their UDP payload size.
const BURST: u64 = 100;
const PAYLOAD: usize = 32;
/// What the forwarder counts per datagram: Ethernet + IPv4 + UDP + payload.
const WIRE_BYTES: u64 = 14 + 20 + 8 + PAYLOAD as u64;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run the fast-path tests as root"
    );
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One chain of 3 forward functions, up in `mode`, with its plan.
struct Lab {
    chain: String,
    plan: ChainPlan,
    bpf_dir: PathBuf,
    // Dropped last: takes the chain down.
    _guard: ChainGuard,
    _dir: TempDir,
}

impl Lab {
    fn up(tag: &str, mode: &str) -> Lab {
        require_root();
        let chain = unique_chain(tag);
        let dir = TempDir::new(&chain);
        let file = dir.write("chain.toml", &forward_chain(&chain, 3, mode));
        let guard = ChainGuard::up(&chain, &file);
        let plan = state::load(&chain)
            .unwrap_or_else(|e| panic!("load state of {chain}: {e}"))
            .unwrap_or_else(|| panic!("chain {chain} has no state after up"))
            .plan;
        assert_eq!(plan.fastpath.to_string(), mode);
        let bpf_dir = names::chain_bpf_dir(&chain);
        let lab = Lab {
            chain,
            plan,
            bpf_dir,
            _guard: guard,
            _dir: dir,
        };
        lab.assert_up_attached();
        lab.forwarding_off();
        lab
    }

    /// `netfn up` attached the fast path, and exited: everything below runs with no netfn
    /// process alive.
    fn assert_up_attached(&self) {
        for pin in [
            ebpf::FWD_TABLE_PIN,
            ebpf::FN_COUNTERS_PIN,
            ebpf::FWD_UNKNOWN_PIN,
        ] {
            assert!(
                self.bpf_dir.join(pin).exists(),
                "netfn up did not pin {pin} under {}",
                self.bpf_dir.display()
            );
        }
    }

    fn netns(&self, hop: usize) -> String {
        self.plan.hops[hop].netns.name.clone()
    }

    fn ingress(&self) -> String {
        self.netns(0)
    }

    fn egress(&self) -> String {
        self.netns(4)
    }

    /// IP forwarding off in every function namespace (`up` turns it off in fast-path modes
    /// already; this makes the test independent of that): only the forwarder can move packets
    /// between the endpoints.
    fn forwarding_off(&self) {
        for hop in 1..=3 {
            in_netns(&self.netns(hop), || {
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").expect("ip_forward off");
            });
        }
    }

    fn counters(&self) -> FastpathCounters {
        ebpf::read_function_counters(&self.bpf_dir)
            .unwrap_or_else(|e| panic!("read_function_counters: {e}"))
    }

    /// `link`'s end on side `inn` (true: the `in` side, in hop `link + 1`).
    fn end(&self, link: usize, inn: bool) -> &LinkEnd {
        let l = &self.plan.links[link];
        if inn { &l.inn } else { &l.out }
    }
}

fn delta(after: &FnCounters, before: &FnCounters) -> FnCounters {
    let mut d = FnCounters {
        packets: after.packets - before.packets,
        bytes: after.bytes - before.bytes,
        to_stack: after.to_stack - before.to_stack,
        ..FnCounters::default()
    };
    for (i, slot) in d.drops.iter_mut().enumerate() {
        *slot = after.drops[i] - before.drops[i];
    }
    d
}

/// The programs are in place where they should be: TC filters at priority 2 after the counter,
/// or XDP on every veth of the chain (function interfaces: the forwarder; endpoints: pass).
fn assert_attached(lab: &Lab, mode: &str) {
    for hop in 0..=4 {
        let ns = lab.netns(hop);
        for end in lab.plan.interfaces_of(hop) {
            let function = (1..=3).contains(&hop);
            if mode == "tc" {
                let filters = run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &ns,
                        "tc",
                        "filter",
                        "show",
                        "dev",
                        &end.ifname,
                        "ingress",
                    ],
                );
                let fwd = filters
                    .lines()
                    .filter(|l| l.contains("nf_fwd_tc"))
                    .collect::<Vec<_>>();
                let tcx = netfn_core::chain::lifecycle::fastpath_options().tc_attach
                    == ebpf::TcAttach::Tcx;
                if function && tcx {
                    // TCX: a bpf_link pinned per interface, and no netlink filter.
                    let pin =
                        lab.bpf_dir
                            .join(format!("{}{}", ebpf::TCX_LINK_PIN_PREFIX, end.ifindex));
                    assert!(pin.exists(), "no TCX link pinned at {}", pin.display());
                    assert!(
                        fwd.is_empty(),
                        "a netlink forwarder besides TCX:\n{filters}"
                    );
                } else if function {
                    assert_eq!(fwd.len(), 1, "{ns}/{}:\n{filters}", end.ifname);
                    assert!(
                        fwd[0].contains("pref 2 "),
                        "{ns}/{}:\n{filters}",
                        end.ifname
                    );
                    assert!(fwd[0].contains("direct-action"), "{filters}");
                } else {
                    assert!(fwd.is_empty(), "no forwarder on endpoints:\n{filters}");
                }
            } else {
                let link = run("ip", &["-n", &ns, "-d", "link", "show", "dev", &end.ifname]);
                assert!(
                    link.contains("xdp") && link.contains("prog/xdp id"),
                    "{ns}/{} has no XDP program:\n{link}",
                    end.ifname
                );
            }
        }
    }
}

/// The whole scenario in one mode.
fn carries_traffic_counts_exactly_and_leaves_nothing(tag: &str, mode: &str) {
    let chain;
    {
        let lab = Lab::up(tag, mode);
        chain = lab.chain.clone();
        assert_attached(&lab, mode);

        // Both ways, every payload checked; TTL 61 means three decrements, as in kernel mode.
        let udp = udp_echo(&lab.ingress(), &lab.egress(), 20);
        assert_eq!(udp.ttl_forward, 61, "request TTL at the egress endpoint");
        assert_eq!(udp.ttl_reverse, 61, "reply TTL at the ingress endpoint");
        tcp_echo(&lab.ingress(), &lab.egress(), 1 << 20);

        // Exact counts: neighbours are resolved (the echo above), so the burst is all there is.
        let before = lab.counters();
        // One element per function slot (with room for a live apply to add functions); at `up`
        // function i has slot i.
        assert_eq!(before.functions.len(), lab.plan.capacity.functions as usize);
        assert!((1..=3).all(|h| lab.plan.function_slot(h) == Some(h as u32 - 1)));
        let server = udp_socket_in(&lab.egress(), SocketAddrV4::new(EGRESS_ADDR, 7201));
        let client = udp_socket_in(&lab.ingress(), SocketAddrV4::new(INGRESS_ADDR, 7202));
        let payload = [0x5au8; PAYLOAD];
        // At most IN_FLIGHT datagrams on their way: the counts must be exact, and inside the
        // test VM an unpaced burst can overflow an XDP veth's ring (the sender's veth drops
        // frames before any netfn program sees them, see tests/src/loss.rs).
        const IN_FLIGHT: u64 = 8;
        let received = AtomicU64::new(0);
        std::thread::scope(|s| {
            let receiver = s.spawn(|| {
                let mut buf = [0u8; 256];
                for i in 0..BURST {
                    match server.recv_from(&mut buf) {
                        Ok((n, _)) => assert_eq!(n, PAYLOAD),
                        Err(e) => panic!("burst: received {i} of {BURST}, then {e}"),
                    }
                    received.fetch_add(1, Ordering::Release);
                }
            });
            for sent in 0..BURST {
                let deadline = Instant::now() + Duration::from_secs(5);
                while sent - received.load(Ordering::Acquire) >= IN_FLIGHT
                    && Instant::now() < deadline
                    && !receiver.is_finished()
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                client
                    .send_to(&payload, SocketAddrV4::new(EGRESS_ADDR, 7201))
                    .expect("send");
            }
            receiver.join().expect("receiver");
        });
        let after = lab.counters();
        for f in 0..3 {
            let fwd = delta(&after.functions[f].forward, &before.functions[f].forward);
            let rev = delta(&after.functions[f].reverse, &before.functions[f].reverse);
            assert_eq!(fwd.packets, BURST, "fn{} forward packets: {fwd:?}", f + 1);
            assert_eq!(fwd.bytes, BURST * WIRE_BYTES, "fn{} forward bytes", f + 1);
            assert_eq!(fwd.dropped(), 0, "fn{} forward drops: {fwd:?}", f + 1);
            assert_eq!(rev.packets, 0, "fn{} reverse packets: {rev:?}", f + 1);
            assert_eq!(rev.dropped(), 0, "fn{} reverse drops: {rev:?}", f + 1);
        }
        assert_eq!(after.unattributed, FnCounters::default());

        // Attaching again (a repeated or restarted up) swaps programs in place, keeps the
        // pinned counters, and the chain keeps forwarding.
        let again = ebpf::attach_fastpath_with(
            &lab.plan,
            &lab.bpf_dir,
            &netfn_core::chain::lifecycle::fastpath_options(),
        )
        .unwrap_or_else(|e| panic!("second attach_fastpath: {e}"));
        let expected = if mode == "xdp" { 8 } else { 6 };
        assert_eq!(again.interfaces.len(), expected, "{:?}", again.interfaces);
        assert!(
            again.interfaces.iter().all(|i| i.replaced),
            "every program replaced in place: {:?}",
            again.interfaces
        );
        drop(again);
        if mode == "tc" {
            assert_attached(&lab, mode); // still one forwarder filter per interface
        }
        let kept = lab.counters();
        assert!(kept.functions[0].forward.packets >= after.functions[0].forward.packets);
        let udp = udp_echo(&lab.ingress(), &lab.egress(), 5);
        assert_eq!((udp.ttl_forward, udp.ttl_reverse), (61, 61));
        // The whole life of the chain so far: forwarded both ways, nothing dropped.
        for (f, c) in after.functions.iter().take(3).enumerate() {
            assert!(
                c.reverse.packets >= 20,
                "fn{} reverse: {:?}",
                f + 1,
                c.reverse
            );
            assert_eq!(c.forward.dropped() + c.reverse.dropped(), 0, "fn{}", f + 1);
        }
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

#[test]
fn tc_chain_carries_tcp_and_udp_counts_exactly_and_leaves_nothing() {
    carries_traffic_counts_exactly_and_leaves_nothing("ft", "tc");
}

#[test]
fn xdp_chain_carries_tcp_and_udp_counts_exactly_and_leaves_nothing() {
    carries_traffic_counts_exactly_and_leaves_nothing("fx", "xdp");
}

// ---------------------------------------------------------------------------------------------
// Spoofing: raw frames injected from fn1's namespace into fn2's nf-in.
// ---------------------------------------------------------------------------------------------

const BROADCAST: [u8; 6] = [0xff; 6];
const ROGUE_MAC: [u8; 6] = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];

/// Sends one Ethernet frame out of interface `ifindex` of namespace `netns` (AF_PACKET).
fn inject(netns: &str, ifindex: u32, frame: &[u8]) {
    in_netns(netns, || {
        // SAFETY: plain socket syscalls with valid arguments; the fd is closed below.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            );
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(sent, frame.len() as isize, "sendto: {err}");
        }
    });
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + UDP frame (UDP checksum 0: none, as IPv4 allows), TTL 64.
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 28 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let check = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// An ARP request frame: `eth_src` in the Ethernet header, `sha`/`spa` as the sender.
fn arp_request(eth_src: [u8; 6], sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

/// Waits until `done` holds (the veth delivers asynchronously), at most 2 s.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every datagram that reaches `sock` within `quiet` of the last one.
fn drain(sock: &UdpSocket, quiet: Duration) -> Vec<(Vec<u8>, u8)> {
    sock.set_read_timeout(Some(quiet)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let mut one = [0u8; 0];
        // A zero-length peek tells whether anything is queued without the recvmsg panic.
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(sock),
                one.as_mut_ptr().cast(),
                0,
                libc::MSG_PEEK,
            )
        };
        if n < 0 {
            break;
        }
        let (len, _, ttl) = recv_with_ttl(sock, &mut buf);
        got.push((buf[..len].to_vec(), ttl));
    }
    got
}

fn spoofed_frames_are_dropped_counted_and_never_delivered(tag: &str, mode: &str) {
    let lab = Lab::up(tag, mode);
    // Resolve neighbours end to end first.
    let udp = udp_echo(&lab.ingress(), &lab.egress(), 3);
    assert_eq!(udp.ttl_forward, 61);

    // fn1's nf-out (link 1, out side) is wired to fn2's nf-in (link 1, in side).
    let fn1 = lab.netns(1);
    let fn2 = lab.netns(2);
    let fn1_out = lab.end(1, false).clone();
    let fn2_in = lab.end(1, true).clone();
    let server = udp_socket_in(&lab.egress(), SocketAddrV4::new(EGRESS_ADDR, 7301));
    enable_recv_ttl(&server);
    let from = SocketAddrV4::new(INGRESS_ADDR, 7302);
    let to = SocketAddrV4::new(EGRESS_ADDR, 7301);
    let fn2_fwd = |lab: &Lab| lab.counters().functions[1].forward;

    // Control: a well-formed frame, as fn1's forwarder would send it, goes through (fn2 and fn3
    // decrement: 62 at the egress endpoint). This proves the injection itself works.
    let before = fn2_fwd(&lab);
    inject(
        &fn1,
        fn1_out.ifindex,
        &udp_frame(fn2_in.mac, fn1_out.mac, from, to, b"legit-1"),
    );
    let got = drain(&server, Duration::from_millis(500));
    assert_eq!(got, vec![(b"legit-1".to_vec(), 62)], "the control frame");
    assert_eq!(delta(&fn2_fwd(&lab), &before).packets, 1);

    // (what, frame, drop reason)
    let fn2_addr = fn2_in.address.addr();
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        (
            "IPv4 with a rogue source MAC",
            udp_frame(fn2_in.mac, ROGUE_MAC, from, to, b"spoof-mac"),
            DROP_SPOOFED_MAC,
        ),
        (
            "IPv4 from an address outside the ingress subnet",
            udp_frame(
                fn2_in.mac,
                fn1_out.mac,
                SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 7302),
                to,
                b"spoof-ip",
            ),
            DROP_SPOOFED_IP,
        ),
        (
            "IPv4 claiming the egress endpoint's address",
            udp_frame(
                fn2_in.mac,
                fn1_out.mac,
                SocketAddrV4::new(EGRESS_ADDR, 7302),
                to,
                b"spoof-egress",
            ),
            DROP_SPOOFED_IP,
        ),
        (
            "ARP whose sender MAC is not fn1's",
            arp_request(fn1_out.mac, ROGUE_MAC, fn1_out.address.addr(), fn2_addr),
            DROP_SPOOFED_MAC,
        ),
        (
            "ARP claiming the egress endpoint's address (poisoning)",
            arp_request(fn1_out.mac, fn1_out.mac, EGRESS_ADDR, fn2_addr),
            DROP_SPOOFED_IP,
        ),
    ];
    for (what, frame, reason) in &cases {
        let before = fn2_fwd(&lab);
        inject(&fn1, fn1_out.ifindex, frame);
        wait_for(what, || {
            fn2_fwd(&lab).drops[*reason] > before.drops[*reason]
        });
        std::thread::sleep(Duration::from_millis(50));
        let d = delta(&fn2_fwd(&lab), &before);
        let mut expected = FnCounters::default();
        expected.drops[*reason] = 1;
        assert_eq!(d, expected, "{what}: fn2 forward counters moved by {d:?}");
    }
    // None of it reached the egress endpoint, and fn2 learnt no poisoned neighbour.
    let got = drain(&server, Duration::from_millis(300));
    assert_eq!(
        got,
        Vec::<(Vec<u8>, u8)>::new(),
        "spoofed datagrams were delivered"
    );
    let neigh = run(
        "ip",
        &["-n", &fn2, "neigh", "show", &EGRESS_ADDR.to_string()],
    );
    assert_eq!(
        neigh.trim(),
        "",
        "fn2 learnt a neighbour from a spoofed ARP"
    );

    // A well-formed ARP request from fn1 still reaches fn2's stack, which answers it.
    let before = fn2_fwd(&lab);
    inject(
        &fn1,
        fn1_out.ifindex,
        &arp_request(fn1_out.mac, fn1_out.mac, fn1_out.address.addr(), fn2_addr),
    );
    wait_for("the ARP request to reach fn2's stack", || {
        fn2_fwd(&lab).to_stack > before.to_stack
    });
    assert_eq!(delta(&fn2_fwd(&lab), &before).dropped(), 0);

    // And the chain still carries traffic.
    let udp = udp_echo(&lab.ingress(), &lab.egress(), 3);
    assert_eq!((udp.ttl_forward, udp.ttl_reverse), (61, 61));
    let chain = lab.chain.clone();
    drop(lab);
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

#[test]
fn tc_spoofed_frames_are_dropped_counted_and_never_delivered() {
    spoofed_frames_are_dropped_counted_and_never_delivered("st", "tc");
}

#[test]
fn xdp_spoofed_frames_are_dropped_counted_and_never_delivered() {
    spoofed_frames_are_dropped_counted_and_never_delivered("sx", "xdp");
}

/// The TCX variant of the TC forwarder (`TcAttach::Tcx`, Linux 6.6+): pinned links that outlive
/// the process, program swapped in place on a second attach, exact counts, nothing left.
#[test]
fn tc_forwarder_attached_with_tcx_forwards_and_counts() {
    let tcx = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|r| {
            let mut parts = r.trim().split(['.', '-']);
            Some((
                parts.next()?.parse::<u32>().ok()?,
                parts.next()?.parse::<u32>().ok()?,
            ))
        })
        .is_some_and(|v| v >= (6, 6));
    if !tcx {
        netfn_tests::skipped(
            "tc_forwarder_attached_with_tcx_forwards_and_counts",
            &format!(
                "TCX needs Linux 6.6 and this kernel is {}; the host suite (cargo xtask test) \
                 runs it on a newer kernel",
                netfn_core::kernel::features::kernel_release()
            ),
        );
        return;
    }
    let lab = Lab::up("fk", "tc");
    let options = ebpf::FastpathOptions {
        tc_attach: ebpf::TcAttach::Tcx,
        ..Default::default()
    };
    for round in 0..2 {
        let attach = ebpf::attach_fastpath_with(&lab.plan, &lab.bpf_dir, &options)
            .unwrap_or_else(|e| panic!("attach with TCX (round {round}): {e}"));
        assert_eq!(attach.interfaces.len(), 6);
        // `up` attaches with TCX itself where the kernel has it: then round 0 replaces too.
        let up_used_tcx =
            netfn_core::chain::lifecycle::fastpath_options().tc_attach == ebpf::TcAttach::Tcx;
        assert!(
            attach
                .interfaces
                .iter()
                .all(|i| i.replaced == (round == 1 || up_used_tcx)),
            "round {round}: {:?}",
            attach.interfaces
        );
    }
    let links = std::fs::read_dir(&lab.bpf_dir)
        .expect("read bpf dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(ebpf::TCX_LINK_PIN_PREFIX)
        })
        .count();
    assert_eq!(links, 6, "one pinned TCX link per function interface");
    // Remove the netlink forwarder filters (if `up` made any): from now on only the TCX links
    // can forward.
    let up_used_tcx =
        netfn_core::chain::lifecycle::fastpath_options().tc_attach == ebpf::TcAttach::Tcx;
    for hop in (1..=3).filter(|_| !up_used_tcx) {
        let ns = lab.netns(hop);
        for end in lab.plan.interfaces_of(hop) {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "tc",
                    "filter",
                    "del",
                    "dev",
                    &end.ifname,
                    "ingress",
                    "pref",
                    "2",
                ],
            );
        }
    }

    let udp = udp_echo(&lab.ingress(), &lab.egress(), 5);
    assert_eq!((udp.ttl_forward, udp.ttl_reverse), (61, 61));
    let before = lab.counters();
    let server = udp_socket_in(&lab.egress(), SocketAddrV4::new(EGRESS_ADDR, 7401));
    let client = udp_socket_in(&lab.ingress(), SocketAddrV4::new(INGRESS_ADDR, 7402));
    for _ in 0..BURST {
        client
            .send_to(&[0u8; PAYLOAD], SocketAddrV4::new(EGRESS_ADDR, 7401))
            .expect("send");
        let mut buf = [0u8; 64];
        server.recv_from(&mut buf).expect("burst datagram");
    }
    let after = lab.counters();
    for f in 0..3 {
        let fwd = delta(&after.functions[f].forward, &before.functions[f].forward);
        assert_eq!(
            (fwd.packets, fwd.bytes),
            (BURST, BURST * WIRE_BYTES),
            "fn{}",
            f + 1
        );
    }
    let chain = lab.chain.clone();
    drop(lab);
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

/// Every line the forwarder logged so far, read through its pinned program (any process can).
fn fastpath_log_lines(lab: &Lab) -> Vec<String> {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let mut logs =
        ebpf::fastpath_logs(&lab.bpf_dir).unwrap_or_else(|e| panic!("fastpath logs: {e}"));
    tracing::subscriber::with_default(subscriber, || logs.flush());
    let text = String::from_utf8_lossy(&captured.0.lock().expect("lock")).into_owned();
    text.lines().map(str::to_string).collect()
}

/// The hot path logs nothing at the default level; at debug, drops are logged with their reason
/// and reach netfn's `tracing` log.
#[test]
fn drops_are_logged_at_debug_level_only() {
    let lab = Lab::up("fl", "tc");
    let fn1 = lab.netns(1);
    let fn1_out = lab.end(1, false).clone();
    let fn2_in = lab.end(1, true).clone();
    let from = SocketAddrV4::new(INGRESS_ADDR, 7502);
    let to = SocketAddrV4::new(EGRESS_ADDR, 7501);
    let spoofed = udp_frame(fn2_in.mac, ROGUE_MAC, from, to, b"log-me");
    let drops = |lab: &Lab| lab.counters().functions[1].forward.drops[DROP_SPOOFED_MAC];

    // Default level (info): traffic and a drop, and not one log line from the forwarder.
    let udp = udp_echo(&lab.ingress(), &lab.egress(), 3);
    assert_eq!(udp.ttl_forward, 61);
    let before = drops(&lab);
    inject(&fn1, fn1_out.ifindex, &spoofed);
    wait_for("the drop", || drops(&lab) > before);
    let lines = fastpath_log_lines(&lab);
    assert!(
        lines.iter().all(|l| !l.contains("nf_fwd")),
        "the forwarder logged at the default level: {lines:#?}"
    );

    // Debug level: the same drop is logged, with the interface and the reason.
    let options = ebpf::FastpathOptions {
        log_level: ebpf::EbpfLogLevel::Debug,
        ..netfn_core::chain::lifecycle::fastpath_options()
    };
    drop(
        ebpf::attach_fastpath_with(&lab.plan, &lab.bpf_dir, &options)
            .unwrap_or_else(|e| panic!("attach at debug level: {e}")),
    );
    let before = drops(&lab);
    inject(&fn1, fn1_out.ifindex, &spoofed);
    wait_for("the drop", || drops(&lab) > before);
    let lines = fastpath_log_lines(&lab);
    let expected = format!(
        "nf_fwd_tc: if {}: drop, reason {DROP_SPOOFED_MAC}",
        fn2_in.ifindex
    );
    assert!(
        lines.iter().any(|l| l.contains(&expected)),
        "no `{expected}` in {lines:#?}"
    );
    // Forwarded packets log at trace only: none at debug.
    let udp = udp_echo(&lab.ingress(), &lab.egress(), 3);
    assert_eq!(udp.ttl_forward, 61);
    let lines = fastpath_log_lines(&lab);
    assert!(
        lines.iter().all(|l| !l.contains("-> peer")),
        "forwarding logged at debug: {lines:#?}"
    );
}
