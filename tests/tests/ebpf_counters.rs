//! The eBPF counter program on real veths between two namespaces (run as root).
//!
//! The test creates its own namespaces (`nftest-ebpf-<pid>-a`/`-b`), a veth pair between them
//! with fixed ifindexes and MACs, IPv6 off and static neighbour entries (so no ARP, ND or MLD
//! packet can slip into the counts), attaches `nf_count` with `netfn_core::ebpf`, drops every
//! aya object, sends exactly N UDP datagrams from a to b, and checks the pinned counters to the
//! packet and the byte. All traffic stays inside the test's namespaces.
//!
//! `NETFN_TEST_KEEP=1` keeps namespaces and pins after the test (to look at them with `tc` or
//! `bpftool`; remove them by hand after).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netfn_core::ebpf::{self, IfCounters};
use netfn_tests::in_netns;

/// Datagrams sent.
const N: u64 = 100;
/// UDP payload bytes per datagram.
const PAYLOAD: usize = 64;
/// What TC ingress counts per datagram: Ethernet (14) + IPv4 (20) + UDP (8) + payload.
const WIRE_BYTES: u64 = 14 + 20 + 8 + PAYLOAD as u64;

const IF_A: &str = "nfa0";
const IF_B: &str = "nfb0";
const IFINDEX_A: u32 = 1_001;
const IFINDEX_B: u32 = 2_002;
const MAC_A: &str = "02:6e:66:00:00:0a";
const MAC_B: &str = "02:6e:66:00:00:0b";
const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
const PORT_B: u16 = 9_999;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test creates namespaces and loads eBPF: run it as root"
    );
}

/// Runs a command, panicking with its output unless it succeeds.
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

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Namespaces (and their veths) plus the bpffs directory of one test; removed on drop, also when
/// the test fails.
struct Lab {
    namespaces: Vec<String>,
    bpf_dir: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        Lab {
            namespaces: Vec::new(),
            bpf_dir: PathBuf::from(format!("/sys/fs/bpf/netfn/nftest-{tag}-{pid}")),
        }
    }

    /// Creates namespace `name`, with IPv6 off (no DAD, router solicitations or MLD reports).
    fn add_netns(&mut self, name: &str) {
        run("ip", &["netns", "add", name]);
        self.namespaces.push(name.to_string());
        in_netns(name, || {
            for conf in ["all", "default"] {
                let knob = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                std::fs::write(&knob, "1").unwrap_or_else(|e| panic!("write {knob}: {e}"));
            }
        });
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("NETFN_TEST_KEEP").is_some() {
            eprintln!(
                "NETFN_TEST_KEEP: leaving namespaces {:?} and pins {}",
                self.namespaces,
                self.bpf_dir.display()
            );
            return;
        }
        for ns in &self.namespaces {
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            if !out.as_ref().is_ok_and(|o| o.status.success()) {
                eprintln!("cleanup: ip netns del {ns} failed: {out:?}");
            }
        }
        if let Err(e) = ebpf::remove_pins(&self.bpf_dir) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Two namespaces joined by one veth pair, addressed, with static neighbours.
fn two_namespaces(lab: &mut Lab, pid: u32) -> (String, String) {
    let a = format!("nftest-ebpf-{pid}-a");
    let b = format!("nftest-ebpf-{pid}-b");
    lab.add_netns(&a);
    lab.add_netns(&b);
    let (index_a, index_b) = (IFINDEX_A.to_string(), IFINDEX_B.to_string());
    run(
        "ip",
        &[
            "link", "add", IF_A, "index", &index_a, "address", MAC_A, "netns", &a, "type", "veth",
            "peer", "name", IF_B, "index", &index_b, "address", MAC_B, "netns", &b,
        ],
    );
    for (ns, dev, addr, peer_addr, peer_mac) in [
        (&a, IF_A, ADDR_A, ADDR_B, MAC_B),
        (&b, IF_B, ADDR_B, ADDR_A, MAC_A),
    ] {
        run(
            "ip",
            &["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev],
        );
        run("ip", &["-n", ns, "link", "set", dev, "up"]);
        run(
            "ip",
            &[
                "-n",
                ns,
                "neigh",
                "replace",
                &peer_addr.to_string(),
                "lladdr",
                peer_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ],
        );
    }
    (a, b)
}

fn counters_of(bpf_dir: &Path, ifindex: u32) -> IfCounters {
    ebpf::read_counters(bpf_dir)
        .unwrap_or_else(|e| panic!("read counters: {e}"))
        .get(&ifindex)
        .copied()
        .unwrap_or_default()
}

/// Everything the eBPF programs logged so far (read through the pinned program), as formatted
/// by a `tracing` subscriber.
fn ebpf_log_lines(bpf_dir: &Path) -> Vec<String> {
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
    let mut logs = ebpf::EbpfLogs::from_pinned(bpf_dir).unwrap_or_else(|e| panic!("logs: {e}"));
    tracing::subscriber::with_default(subscriber, || logs.flush());
    let text = String::from_utf8_lossy(&captured.0.lock().expect("lock")).into_owned();
    text.lines().map(str::to_string).collect()
}

fn nf_count_filters(netns: &str, dev: &str) -> usize {
    run(
        "ip",
        &[
            "netns", "exec", netns, "tc", "filter", "show", "dev", dev, "ingress",
        ],
    )
    .lines()
    .filter(|l| l.contains("nf_count"))
    .count()
}

#[test]
fn counts_exact_packets_and_bytes_per_interface() {
    require_root();
    let pid = std::process::id();
    let mut lab = Lab::new("ebpf");
    let (a, b) = two_namespaces(&mut lab, pid);
    let targets = vec![
        (netns_path(&a), vec![IF_A.to_string()]),
        (netns_path(&b), vec![IF_B.to_string()]),
    ];

    // The first attach creates the filters; the second replaces their program in place.
    for round in 0..2 {
        let attach = ebpf::attach_counters(&lab.bpf_dir, &targets)
            .unwrap_or_else(|e| panic!("attach_counters (round {round}): {e}"));
        let mut found: Vec<(String, u32, bool)> = attach
            .interfaces
            .iter()
            .map(|i| (i.name.clone(), i.ifindex, i.replaced))
            .collect();
        found.sort();
        let replaced = round == 1;
        assert_eq!(
            found,
            vec![
                (IF_A.to_string(), IFINDEX_A, replaced),
                (IF_B.to_string(), IFINDEX_B, replaced)
            ]
        );
        // Dropping every aya object must not detach anything.
        drop(attach);
    }
    assert_eq!(
        nf_count_filters(&a, IF_A),
        1,
        "one counter filter on {IF_A}"
    );
    assert_eq!(
        nf_count_filters(&b, IF_B),
        1,
        "one counter filter on {IF_B}"
    );

    let before_a = counters_of(&lab.bpf_dir, IFINDEX_A);
    let before_b = counters_of(&lab.bpf_dir, IFINDEX_B);

    // Receiver bound in b before anything is sent; the sender lives in a.
    let receiver = in_netns(&b, || {
        let socket = UdpSocket::bind(SocketAddrV4::new(ADDR_B, PORT_B)).expect("bind in b");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        socket
    });
    let received = std::thread::scope(|scope| {
        let receiving = scope.spawn(|| {
            let mut buf = [0u8; 2048];
            let mut got = 0u64;
            while got < N {
                match receiver.recv_from(&mut buf) {
                    Ok((len, from)) => {
                        assert_eq!(len, PAYLOAD);
                        assert_eq!(from.ip(), ADDR_A);
                        got += 1;
                    }
                    Err(e) => panic!("received {got} of {N} datagrams, then: {e}"),
                }
            }
            got
        });
        in_netns(&a, || {
            let socket = UdpSocket::bind(SocketAddrV4::new(ADDR_A, 0)).expect("bind in a");
            let payload = [0x5au8; PAYLOAD];
            for _ in 0..N {
                socket
                    .send_to(&payload, SocketAddrV4::new(ADDR_B, PORT_B))
                    .expect("send");
            }
        });
        receiving.join().expect("receiver thread")
    });
    assert_eq!(received, N);

    let after_b = counters_of(&lab.bpf_dir, IFINDEX_B);
    let after_a = counters_of(&lab.bpf_dir, IFINDEX_A);
    assert_eq!(
        after_b.packets - before_b.packets,
        N,
        "packets counted on {IF_B} (before {before_b:?}, after {after_b:?})"
    );
    assert_eq!(
        after_b.bytes - before_b.bytes,
        N * WIRE_BYTES,
        "bytes counted on {IF_B}"
    );
    // Nothing went back from b to a: no reply, no ARP (static neighbours), no IPv6.
    assert_eq!(after_a, before_a, "nothing should arrive on {IF_A}");
    // Nothing else happened in the test's namespaces before the traffic either.
    assert_eq!(before_b, IfCounters::default());

    // The program logged the first packet on nfb0, once, and nothing for nfa0; the record
    // waited in the ring buffer for a reader attached by the pinned program (as the agent does).
    let lines = ebpf_log_lines(&lab.bpf_dir);
    let first_seen: Vec<&String> = lines.iter().filter(|l| l.contains("counting on")).collect();
    assert_eq!(
        first_seen.len(),
        1,
        "one first-packet log line expected, got {lines:#?}"
    );
    eprintln!("eBPF log: {}", first_seen[0]);
    assert!(
        first_seen[0].contains(&format!("ifindex {IFINDEX_B}")),
        "{lines:#?}"
    );

    // The pins are the chain's only bpffs objects, and go away with remove_pins.
    let mut pins: Vec<String> = std::fs::read_dir(&lab.bpf_dir)
        .expect("read bpf dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    pins.sort();
    assert_eq!(pins, vec![ebpf::IF_COUNTERS_PIN, ebpf::COUNTER_PROGRAM_PIN]);
}

#[test]
fn attach_reports_every_missing_interface_and_namespace() {
    require_root();
    let pid = std::process::id();
    let mut lab = Lab::new("ebpf-err");
    let ns = format!("nftest-ebpf-{pid}-e");
    lab.add_netns(&ns);
    let targets = vec![
        (
            netns_path(&ns),
            vec!["lo".to_string(), "nosuch0".to_string()],
        ),
        (
            netns_path(&format!("nftest-ebpf-{pid}-missing")),
            vec!["x".to_string()],
        ),
    ];
    match ebpf::attach_counters(&lab.bpf_dir, &targets) {
        Err(ebpf::EbpfError::Partial { attached, failures }) => {
            assert_eq!(attached, 1, "lo is attached");
            assert_eq!(failures.len(), 2, "{failures:?}");
            let text = failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n");
            assert!(text.contains("nosuch0"), "{text}");
            assert!(text.contains("-missing"), "{text}");
        }
        Err(other) => panic!("expected a partial failure, got: {other}"),
        Ok(attach) => panic!("expected a partial failure, got {:?}", attach.interfaces),
    }
}

/// Attach timing at chain scale: `NETFN_SCALE_NS` namespaces (default 1001) in a line, joined by
/// veth pairs, so 2 × (namespaces − 1) interfaces (2000 by default). Prints the timings.
/// Run with `cargo test -p netfn-tests --test ebpf_counters -- --ignored --nocapture`.
#[test]
#[ignore = "slow: creates 1001 namespaces; run by hand to measure attach time"]
fn attach_timing_at_chain_scale() {
    require_root();
    let pid = std::process::id();
    let count: usize = std::env::var("NETFN_SCALE_NS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1001);
    let mut lab = Lab::new("ebpf-scale");
    let names: Vec<String> = (0..count).map(|i| format!("nftest-sc-{pid}-{i}")).collect();

    let started = Instant::now();
    let mut batch = String::new();
    for name in &names {
        batch.push_str(&format!("netns add {name}\n"));
    }
    for (i, pair) in names.windows(2).enumerate() {
        // Unique ifindexes across the chain, as netfn assigns them.
        let (right, left) = (10_000 + 2 * i, 10_001 + 2 * i);
        batch.push_str(&format!(
            "link add r{i} index {right} netns {} type veth peer name l{i} index {left} netns {}\n",
            pair[0], pair[1]
        ));
    }
    let batch_file = std::env::temp_dir().join(format!("netfn-scale-{pid}.batch"));
    std::fs::write(&batch_file, batch).expect("write batch");
    lab.namespaces.extend(names.iter().cloned());
    run("ip", &["-batch", &batch_file.to_string_lossy()]);
    let _ = std::fs::remove_file(&batch_file);
    println!(
        "created {count} namespaces and {} veth pairs in {:.2?}",
        count - 1,
        started.elapsed()
    );

    let targets: Vec<(PathBuf, Vec<String>)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut ifaces = Vec::new();
            if i > 0 {
                ifaces.push(format!("l{}", i - 1));
            }
            if i + 1 < count {
                ifaces.push(format!("r{i}"));
            }
            (netns_path(name), ifaces)
        })
        .collect();
    let interfaces: usize = targets.iter().map(|(_, i)| i.len()).sum();

    for round in ["first attach", "re-attach (replace)"] {
        let started = Instant::now();
        let attach =
            ebpf::attach_counters(&lab.bpf_dir, &targets).unwrap_or_else(|e| panic!("{e}"));
        let total = started.elapsed();
        assert_eq!(attach.interfaces.len(), interfaces);
        println!(
            "{round}: {interfaces} interfaces in {count} namespaces, {} threads: total {total:.2?} \
             (load+pin {:.2?}, attach {:.2?}, {:.0} µs/interface)",
            ebpf::NETNS_THREADS,
            attach.load_time,
            attach.attach_time,
            attach.attach_time.as_secs_f64() * 1e6 / interfaces as f64
        );
    }
    let started = Instant::now();
    let counters = ebpf::read_counters(&lab.bpf_dir).expect("read");
    println!(
        "read_counters: {} entries in {:.2?}",
        counters.len(),
        started.elapsed()
    );

    let started = Instant::now();
    let mut batch = String::new();
    for name in &names {
        batch.push_str(&format!("netns del {name}\n"));
    }
    std::fs::write(&batch_file, batch).expect("write batch");
    run("ip", &["-batch", &batch_file.to_string_lossy()]);
    let _ = std::fs::remove_file(&batch_file);
    lab.namespaces.clear();
    println!("deleted {count} namespaces in {:.2?}", started.elapsed());
}
