//! The host agent with real parts: `netfn agent` over real chains, /metrics checked against the
//! packets the test sent and by `promtool`, a real Prometheus server scraping it, the prober
//! seeing a broken chain, and a SIGKILLed agent replaced while a stream runs. Runs as root.
//!
//! Every agent here serves one chain (`--chain`) on its own socket and a free loopback port, and
//! is killed by its guard; `netfn up` runs with NETFN_AGENT_AUTOSTART=0 so that it never starts
//! the host's agent.

use std::io::Write;
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netfn_core::agent::{self, AgentStart, AutostartOptions};
use netfn_core::ebpf;
use netfn_core::plan::names;
use netfn_tests::agent::{Agent, http_get, sample};
use netfn_tests::traffic::{sequenced_stream_during, udp_echo};
use netfn_tests::{
    ChainGuard, EGRESS_ADDR, INGRESS_ADDR, TempDir, forward_chain, leftovers, netfn_bin, netfn_ok,
    skipped, udp_socket_in, unique_chain,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Per-function packets in one direction.
fn packets(text: &str, chain: &str, function: &str, direction: &str) -> f64 {
    sample(
        text,
        "netfn_function_packets_total",
        &[
            ("chain", chain),
            ("function", function),
            ("direction", direction),
        ],
    )
    .unwrap_or_else(|| panic!("no packets of {function}/{direction} in:\n{text}"))
}

/// Polls `f` every 100 ms until it is true or `limit` passes.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn netns_inode(name: &str) -> u64 {
    std::fs::metadata(format!("/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("stat /run/netns/{name}: {e}"))
        .ino()
}

/// Whether Debian's `prometheus` package (promtool, the server) can be used. On the host it must
/// be there (`cargo xtask setup` installs it). `cargo xtask vm-test` ships both into the VM when
/// the host has them; only a VM built on a host without them skips the checks, and says so.
fn have_prometheus_tool(bin: &str, test: &str) -> bool {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
    if on_path {
        return true;
    }
    assert!(
        netfn_tests::in_test_vm(),
        "{bin} is missing: run `cargo xtask setup` (it installs Debian's prometheus package)"
    );
    skipped(
        &format!("{test}: the checks that need {bin}"),
        &format!(
            "{bin} is not in this VM (vm-test ships it only when the host that builds the VM \
             has it: install Debian's prometheus there)"
        ),
    );
    false
}

const FUNCTIONS: [&str; 3] = ["fn1", "fn2", "fn3"];

// ---------------------------------------------------------------------------------------------
// (a) exact counters, promtool
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_count_exactly_the_packets_sent_and_pass_promtool() {
    let chain = unique_chain("ag");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 3, "kernel"));
    {
        let _chain = ChainGuard::up(&chain, &file);
        // No prober: its packets would be counted too.
        let agent = Agent::start(&dir.0, &chain, &["--no-probe"]);
        let (ingress, egress) = (format!("nf-{chain}-ingress"), format!("nf-{chain}-egress"));
        udp_echo(&ingress, &egress, 3); // neighbours resolved before counting

        // 50 echoed datagrams (both directions) and 20 one-way ones (forward only).
        let rx = udp_socket_in(&egress, SocketAddrV4::new(EGRESS_ADDR, 7401));
        let tx = udp_socket_in(&ingress, SocketAddrV4::new(INGRESS_ADDR, 7402));
        let before = agent.metrics();
        udp_echo(&ingress, &egress, 50);
        for i in 0..20u8 {
            tx.send_to(&[i], SocketAddrV4::new(EGRESS_ADDR, 7401))
                .expect("send");
            let mut buf = [0u8; 4];
            assert_eq!(rx.recv(&mut buf).expect("one-way datagram arrived"), 1);
        }
        let after = agent.metrics();
        for f in FUNCTIONS {
            for (direction, sent) in [("forward", 70.0), ("reverse", 50.0)] {
                let delta =
                    packets(&after, &chain, f, direction) - packets(&before, &chain, f, direction);
                assert_eq!(delta, sent, "{f} {direction}: {sent} datagrams crossed it");
            }
            let bytes = sample(
                &after,
                "netfn_function_bytes_total",
                &[("chain", &chain), ("function", f), ("direction", "forward")],
            );
            assert!(bytes.is_some_and(|b| b > 0.0), "{f}: bytes {bytes:?}");
        }
        assert_eq!(
            sample(
                &after,
                "netfn_chain_up",
                &[("chain", &chain), ("fastpath", "kernel")]
            ),
            Some(1.0)
        );
        assert_eq!(sample(&after, "netfn_build_info", &[]), Some(1.0));
        assert_eq!(
            sample(
                &after,
                "netfn_task_restarts_total",
                &[("chain", &chain), ("task", "ebpf-logs")]
            ),
            Some(0.0)
        );
        assert!(sample(&after, "netfn_scrape_duration_seconds_count", &[]).is_some());
        assert_eq!(sample(&after, "netfn_scrape_errors_total", &[]), Some(0.0));
        // Kernel mode has no drop counters: nothing is exported rather than made-up zeros.
        assert!(
            !after.contains("netfn_function_drops_total{"),
            "kernel mode exported drops:\n{after}"
        );
        for line in after.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("netfn_"), "unprefixed metric: {line}");
        }

        if have_prometheus_tool(
            "promtool",
            "metrics_count_exactly_the_packets_sent_and_pass_promtool",
        ) {
            let mut promtool = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run promtool (cargo xtask setup installs Debian's prometheus)");
            promtool
                .stdin
                .take()
                .expect("stdin")
                .write_all(after.as_bytes())
                .expect("feed promtool");
            let out = promtool.wait_with_output().expect("promtool");
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && report.trim().is_empty(),
                "promtool check metrics found problems:\n{report}"
            );
        }

        let (status, body) = http_get(&agent.http, "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert_eq!(http_get(&agent.http, "/nope").0, 404);
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// (a') fast path chains: counters from the forwarder, drops by reason
// ---------------------------------------------------------------------------------------------

/// `netfn up` attached the fast path of `chain` itself: its forwarding table is pinned. (The
/// test never attaches anything: an `up` that forgot the forwarder must fail here, and the exact
/// per-function counts below prove the programs run on every hop.)
fn assert_up_attached_the_fastpath(chain: &str) {
    let table = names::chain_bpf_dir(chain).join(ebpf::FWD_TABLE_PIN);
    assert!(
        table.exists(),
        "netfn up did not attach the fast path of {chain}: no {}",
        table.display()
    );
}

fn set_ttl(sock: &UdpSocket, ttl: libc::c_int) {
    // SAFETY: valid fd and a c_int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_TTL,
            (&ttl as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_TTL: {}", std::io::Error::last_os_error());
}

fn fast_path_counts_and_drops(tag: &str, mode: &str) {
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 3, mode));
    {
        let _chain = ChainGuard::up(&chain, &file);
        assert_up_attached_the_fastpath(&chain);
        let agent = Agent::start(&dir.0, &chain, &["--no-probe"]);
        let (ingress, egress) = (format!("nf-{chain}-ingress"), format!("nf-{chain}-egress"));
        udp_echo(&ingress, &egress, 3);
        let rx = udp_socket_in(&egress, SocketAddrV4::new(EGRESS_ADDR, 7501));
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let tx = udp_socket_in(&ingress, SocketAddrV4::new(INGRESS_ADDR, 7502));
        let to = SocketAddrV4::new(EGRESS_ADDR, 7501);

        let before = agent.metrics();
        let mut buf = [0u8; 8];
        for i in 0..100u8 {
            tx.send_to(&[i], to).expect("send");
            assert_eq!(rx.recv(&mut buf).expect("datagram arrived"), 1);
        }
        // TTL 2: fn1 forwards it with TTL 1, fn2 drops it (ttl-exceeded).
        set_ttl(&tx, 2);
        for i in 0..10u8 {
            tx.send_to(&[i], to).expect("send");
        }
        let drops = |text: &str, f: &str, direction: &str, reason: &str| {
            sample(
                text,
                "netfn_function_drops_total",
                &[
                    ("chain", &chain),
                    ("function", f),
                    ("direction", direction),
                    ("reason", reason),
                ],
            )
            .unwrap_or_else(|| panic!("no drops of {f}/{direction}/{reason} in:\n{text}"))
        };
        // The TTL-2 datagrams are never delivered: wait until fn2 has counted all ten drops.
        let ttl_drops = |text: &str| drops(text, "fn2", "forward", "ttl-exceeded");
        let mut after = agent.metrics();
        wait_until(Duration::from_secs(10), || {
            after = agent.metrics();
            ttl_drops(&after) - ttl_drops(&before) >= 10.0
        });
        for (f, received, ttl_drops) in [
            ("fn1", 110.0, 0.0),
            ("fn2", 110.0, 10.0),
            ("fn3", 100.0, 0.0),
        ] {
            let delta =
                packets(&after, &chain, f, "forward") - packets(&before, &chain, f, "forward");
            assert_eq!(delta, received, "{mode}: {f} received");
            let delta = drops(&after, f, "forward", "ttl-exceeded")
                - drops(&before, f, "forward", "ttl-exceeded");
            assert_eq!(delta, ttl_drops, "{mode}: {f} ttl-exceeded drops");
            for reason in ebpf::DROP_REASON_NAMES {
                for direction in ["forward", "reverse"] {
                    drops(&after, f, direction, reason); // every reason is exported
                }
            }
        }
        assert_eq!(
            sample(
                &after,
                "netfn_chain_up",
                &[("chain", &chain), ("fastpath", mode)]
            ),
            Some(1.0)
        );
        // Fast-path chains have no per-interface counter program: the forwarder's log buffer is
        // forwarded, and that task never failed.
        assert_eq!(
            sample(
                &after,
                "netfn_task_restarts_total",
                &[("chain", &chain), ("task", "ebpf-logs")]
            ),
            None,
            "a fast-path chain has no counter program to read logs from"
        );
        assert_eq!(
            sample(
                &after,
                "netfn_task_restarts_total",
                &[("chain", &chain), ("task", "fastpath-logs")]
            ),
            Some(0.0),
            "fastpath-logs:\n{}",
            agent.log_text()
        );
        assert_eq!(sample(&after, "netfn_scrape_errors_total", &[]), Some(0.0));
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

#[test]
fn tc_fast_path_counts_and_drops_by_reason() {
    fast_path_counts_and_drops("at", "tc");
}

#[test]
fn xdp_fast_path_counts_and_drops_by_reason() {
    fast_path_counts_and_drops("ax", "xdp");
}

// ---------------------------------------------------------------------------------------------
// (b) a real Prometheus server
// ---------------------------------------------------------------------------------------------

/// Debian's `prometheus`, scraping one target every second; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: TempDir,
}

impl Prometheus {
    fn start(tag: &str, target: &str) -> Prometheus {
        let dir = TempDir::new(&format!("{tag}-prom"));
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: netfn\n    scrape_interval: 1s\n    \
                 scrape_timeout: 900ms\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        );
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run prometheus (cargo xtask setup installs Debian's prometheus)");
        let mut p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let ready = wait_until(Duration::from_secs(30), || {
            TcpStream::connect(&p.addr).is_ok() && http_get(&p.addr, "/-/ready").0 == 200
        });
        if !ready {
            let _ = p.child.kill();
            panic!("prometheus did not become ready on {}", p.addr);
        }
        p
    }

    /// An instant query; (function label, value) of every series.
    fn query(&self, promql: &str) -> Vec<(String, f64)> {
        let (status, body) = http_get(
            &self.addr,
            &format!("/api/v1/query?query={}", urlencode(promql)),
        );
        assert_eq!(status, 200, "query {promql}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("query json");
        json["data"]["result"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .filter_map(|r| {
                        let f = r["metric"]["function"].as_str()?.to_string();
                        let v = r["value"][1].as_str()?.parse().ok()?;
                        Some((f, v))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_sees_a_positive_rate_for_every_function() {
    let chain = unique_chain("ap");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 3, "kernel"));
    {
        if !have_prometheus_tool(
            "prometheus",
            "a_real_prometheus_sees_a_positive_rate_for_every_function",
        ) {
            return;
        }
        let _chain = ChainGuard::up(&chain, &file);
        // No prober: the rate must come from the test's own traffic.
        let agent = Agent::start(&dir.0, &chain, &["--no-probe"]);
        let prometheus = Prometheus::start(&chain, &agent.http);

        let rx = udp_socket_in(
            &format!("nf-{chain}-egress"),
            SocketAddrV4::new(EGRESS_ADDR, 7201),
        );
        let tx = udp_socket_in(
            &format!("nf-{chain}-ingress"),
            SocketAddrV4::new(INGRESS_ADDR, 7202),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while !stop.load(Ordering::Relaxed) {
                    let _ = tx.send_to(b"netfn-rate", SocketAddrV4::new(EGRESS_ADDR, 7201));
                    let _ = rx.recv(&mut buf);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let promql = format!(
            "rate(netfn_function_packets_total{{chain=\"{chain}\",direction=\"forward\"}}[10s])"
        );
        let mut last = Vec::new();
        let positive = wait_until(Duration::from_secs(60), || {
            last = prometheus.query(&promql);
            FUNCTIONS
                .iter()
                .all(|f| last.iter().any(|(g, v)| g == f && *v > 0.0))
        });
        stop.store(true, Ordering::Relaxed);
        let _ = sender.join();
        assert!(
            positive,
            "Prometheus never saw a positive rate for every function: {last:?}"
        );
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// (c) the prober
// ---------------------------------------------------------------------------------------------

#[test]
fn the_prober_sees_a_broken_chain_as_down() {
    let chain = unique_chain("pr");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 3, "kernel"));
    {
        let _chain = ChainGuard::up(&chain, &file);
        let agent = Agent::start(
            &dir.0,
            &chain,
            &["--probe-interval", "200ms", "--probe-timeout", "150ms"],
        );
        let probe = |text: &str| sample(text, "netfn_chain_probe_success", &[("chain", &chain)]);
        let up = |text: &str| sample(text, "netfn_chain_up", &[("chain", &chain)]);

        let mut text = String::new();
        assert!(
            wait_until(Duration::from_secs(10), || {
                text = agent.metrics();
                probe(&text) == Some(1.0)
            }),
            "the probe never succeeded:\n{text}\nagent log:\n{}",
            agent.log_text()
        );
        assert_eq!(up(&text), Some(1.0));
        assert!(
            sample(
                &text,
                "netfn_chain_probe_rtt_seconds_count",
                &[("chain", &chain)]
            )
            .is_some_and(|n| n >= 1.0)
        );
        assert!(
            sample(
                &text,
                "netfn_chain_probes_total",
                &[("chain", &chain), ("result", "success")]
            )
            .is_some_and(|n| n >= 1.0)
        );
        // The CLI's view (what `netfn status` shows when an agent runs).
        let reports = agent::chain_reports(&agent.socket)
            .expect("status over the socket")
            .expect("an agent runs");
        let report = reports
            .iter()
            .find(|r| r.chain == chain)
            .expect("the chain is adopted");
        assert!(report.up && report.probe.as_ref().is_some_and(|p| p.success));
        assert!(report.tasks.iter().any(|t| t.task == "prober"));
        // What `netfn status` prints of it.
        let status = || {
            let out = netfn_tests::command(&netfn_tests::netfn_bin())
                .args(["status", &chain])
                .env("NETFN_AGENT_SOCKET", &agent.socket)
                .output()
                .expect("run netfn status");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let shown = status();
        assert!(
            shown.contains("agent: probe: ok, round trip ") && shown.contains(", healthy)"),
            "{shown}"
        );

        // Break the chain in the middle.
        netfn_ok(&[
            "exec", &chain, "fn2", "--", "ip", "link", "set", "nf-in", "down",
        ]);
        assert!(
            wait_until(Duration::from_secs(5), || {
                text = agent.metrics();
                probe(&text) == Some(0.0) && up(&text) == Some(0.0)
            }),
            "the chain still looks up:\n{text}"
        );
        assert!(
            sample(
                &text,
                "netfn_chain_probes_total",
                &[("chain", &chain), ("result", "timeout")]
            )
            .is_some_and(|n| n >= 1.0)
        );
        let reports = agent::chain_reports(&agent.socket)
            .expect("status over the socket")
            .expect("an agent runs");
        let report = reports.iter().find(|r| r.chain == chain).expect("adopted");
        assert!(!report.up, "{report:?}");
        // Status says why the chain is not healthy.
        let shown = status();
        assert!(
            shown.contains("NOT healthy") && shown.contains("agent: probe: FAILING, "),
            "{shown}"
        );
        assert!(
            report
                .probe
                .as_ref()
                .is_some_and(|p| !p.success && p.consecutive_failures >= 1 && p.error.is_some()),
            "{report:?}"
        );
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// (d) SIGKILL and restart during a stream
// ---------------------------------------------------------------------------------------------

#[test]
fn sigkill_and_restart_of_the_agent_lose_nothing_and_adopt_the_chain() {
    sigkill_and_restart_scenario("ak", "kernel");
}

#[test]
fn sigkill_and_restart_of_the_agent_lose_nothing_on_a_tc_chain() {
    sigkill_and_restart_scenario("at", "tc");
}

#[test]
fn sigkill_and_restart_of_the_agent_lose_nothing_on_an_xdp_chain() {
    sigkill_and_restart_scenario("ax", "xdp");
}

/// SIGKILL the agent while a sequenced stream crosses a chain in `mode`: nothing lost, the
/// restarted agent adopts the chain (same namespaces), counters never go back.
fn sigkill_and_restart_scenario(tag: &str, mode: &str) {
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 3, mode));
    let namespaces: Vec<String> = ["ingress", "fn1", "fn2", "fn3", "egress"]
        .iter()
        .map(|h| format!("nf-{chain}-{h}"))
        .collect();
    {
        let _chain = ChainGuard::up(&chain, &file);
        let (ingress, egress) = (format!("nf-{chain}-ingress"), format!("nf-{chain}-egress"));
        udp_echo(&ingress, &egress, 3);
        let inodes: Vec<u64> = namespaces.iter().map(|n| netns_inode(n)).collect();
        let args = ["--probe-interval", "200ms", "--probe-timeout", "150ms"];
        let mut first = Agent::start(&dir.0, &chain, &args);
        let probed = |a: &Agent| {
            let text = a.metrics();
            sample(&text, "netfn_chain_probe_success", &[("chain", &chain)]) == Some(1.0)
                && sample(&text, "netfn_chain_up", &[("chain", &chain)]) == Some(1.0)
        };
        assert!(
            wait_until(Duration::from_secs(10), || probed(&first)),
            "first agent never probed the chain:\n{}",
            first.log_text()
        );

        let count = 8_000; // 4 s at 2,000 datagrams per second, longer if the restart is slow
        let at_start = first.metrics();
        let mut at_kill = String::new();
        let mut at_restart = String::new();
        let mut second = None;
        // The stream checks that datagrams arrived before the kill and, sent after the restarted
        // agent probed the chain, after it: the kill lands mid-stream.
        let stream = sequenced_stream_during(&chain, count, 2_000, 7301, || {
            at_kill = first.metrics();
            first.kill9();
            let agent = Agent::start(&dir.0, &chain, &args);
            assert!(
                wait_until(Duration::from_secs(10), || probed(&agent)),
                "restarted agent never probed the chain:\n{}",
                agent.log_text()
            );
            at_restart = agent.metrics();
            second = Some(agent);
        });
        let second = second.expect("second agent");

        let lost = stream.lost();
        assert!(
            lost.is_empty(),
            "{} of {} datagrams lost across the agent's SIGKILL, first {:?}",
            lost.len(),
            stream.sent,
            &lost[..lost.len().min(10)]
        );
        let after = second.metrics();
        let arrived = stream.seen.len() as f64;
        for f in FUNCTIONS {
            let forward = |text: &str| packets(text, &chain, f, "forward");
            let (start, kill, restart, end) = (
                forward(&at_start),
                forward(&at_kill),
                forward(&at_restart),
                forward(&after),
            );
            let counts = format!(
                "{f} forward: {start} at the start, {kill} at the kill, {restart} after the \
                 restart, {end} at the end; {arrived} datagrams arrived"
            );
            // Counting before the kill, after the restart, and never back.
            assert!(start < kill && kill <= restart && restart < end, "{counts}");
            // Every datagram of the stream crossed every function and was counted, those that
            // crossed while no agent ran too (plus the probes').
            assert!(end - start >= arrived, "{counts}");
            let (b, a) = (
                packets(&at_kill, &chain, f, "reverse"),
                packets(&after, &chain, f, "reverse"),
            );
            assert!(a >= b, "{f} reverse: counter went back from {b} to {a}");
        }
        let now: Vec<u64> = namespaces.iter().map(|n| netns_inode(n)).collect();
        assert_eq!(inodes, now, "a namespace was re-created");
        let reports = agent::chain_reports(&second.socket)
            .expect("status")
            .expect("the restarted agent answers");
        assert!(
            reports.iter().any(|r| r.chain == chain && r.up),
            "{reports:?}"
        );
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// ensure_agent_running (what `netfn up` calls)
// ---------------------------------------------------------------------------------------------

/// Options that start an agent of `exe` on a socket in `dir`, serving no chain.
fn autostart_in(dir: &TempDir, exe: &std::path::Path) -> AutostartOptions {
    let mut opts = AutostartOptions::new(exe);
    opts.socket = dir.0.join("agent.sock");
    opts.log = dir.0.join("agent.log");
    // These tests start an agent whatever the shell's NETFN_AGENT_AUTOSTART says (helpers and
    // people running tests by hand export NETFN_AGENT_AUTOSTART=0, and it failed then).
    opts.enabled = true;
    // A chain that does not exist: this agent must not touch anyone's chains.
    opts.args = ["--listen", "127.0.0.1:0", "--chain", "no-such-chain"]
        .map(String::from)
        .to_vec();
    opts
}

/// SIGKILLs and reaps an agent these tests started (their child), unless it is taken out.
struct KillPid(Option<u32>);

impl Drop for KillPid {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

#[test]
fn ensure_agent_running_starts_one_agent_and_then_finds_it() {
    let dir = TempDir::new(&unique_chain("as"));
    let opts = autostart_in(&dir, &netfn_bin());
    let started = agent::ensure_agent_running(&opts).expect("start the agent");
    let AgentStart::Started { pid, .. } = started else {
        panic!("expected a new agent, got {started:?}");
    };
    let mut guard = KillPid(Some(pid));
    assert_eq!(
        agent::ensure_agent_running(&opts).expect("find the agent"),
        AgentStart::Running { pid }
    );
    // It runs in its own session, detached from ours.
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).expect("getsid");
    assert_eq!(
        sid.as_raw(),
        pid as i32,
        "the agent is not a session leader"
    );
    // It runs itself again (same pid) without glibc's per-thread caches, whose filling made
    // its resident size creep (netfn-cli/src/agent.rs, `tune_allocator`).
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read the agent's environ");
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v == b"GLIBC_TUNABLES=glibc.malloc.tcache_count=0"),
        "the agent runs with glibc's thread caches"
    );

    // SIGTERM: it stops and removes its socket.
    let p = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let _ = nix::sys::wait::waitpid(p, None);
    guard.0 = None;
    assert!(!opts.socket.exists(), "the socket outlived the agent");
    assert_eq!(agent::ping(&opts.socket).expect("ping"), None);
}

/// An upgrade replaces the file an agent was started from: the next `up` or `apply` stops that
/// agent and starts it again on the new file, with the arguments it ran with.
#[test]
fn ensure_agent_running_moves_an_agent_onto_its_replaced_binary() {
    let dir = TempDir::new(&unique_chain("au"));
    // The installed netfn: a copy of the one under test, which the "upgrade" below replaces.
    let exe = dir.0.join("netfn");
    netfn_tests::copy_of_netfn(&exe);
    let opts = autostart_in(&dir, &exe);
    let started = agent::ensure_agent_running(&opts).expect("start the agent");
    let AgentStart::Started { pid: old, .. } = started else {
        panic!("expected a new agent, got {started:?}");
    };
    let _old_guard = KillPid(Some(old));

    // The upgrade, as a package manager makes it: another file renamed over the old one (here
    // the one under test itself, linked where it can be: the VMs' /tmp is in their memory).
    let next = dir.0.join("netfn.new");
    std::fs::hard_link(netfn_bin(), &next)
        .or_else(|_| std::fs::copy(netfn_bin(), &next).map(drop))
        .expect("link or copy the netfn binary");
    std::fs::rename(&next, &exe).expect("replace the binary");

    let moved = agent::ensure_agent_running(&opts).expect("move the agent");
    let AgentStart::Replaced {
        old_pid,
        old_binary,
        pid,
        ..
    } = moved
    else {
        panic!("expected the agent replaced, got {moved:?}");
    };
    let _guard = KillPid(Some(pid));
    assert_eq!(old_pid, old);
    assert_ne!(pid, old, "the agent was not started again");
    assert_eq!(old_binary, format!("{} (deleted)", exe.display()));
    // The old agent has exited (a zombie until the guard reaps it: it is this test's child).
    let state = std::fs::read_to_string(format!("/proc/{old}/stat")).unwrap_or_default();
    assert!(
        state.is_empty()
            || state
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        "the old agent still runs: {state}"
    );
    // The one that answers now runs the new file, with the old one's arguments.
    let pong = agent::ping(&opts.socket)
        .expect("ping")
        .expect("an agent answers");
    assert_eq!(pong.pid, pid);
    let file = |p: &std::path::Path| {
        let m = std::fs::metadata(p).expect("stat");
        (m.dev(), m.ino())
    };
    assert_eq!(
        file(std::path::Path::new(&format!("/proc/{pid}/exe"))),
        file(&exe),
        "the new agent does not run the new binary"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("read its command line");
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    for arg in [
        "agent",
        "--socket",
        "--chain",
        "no-such-chain",
        "127.0.0.1:0",
    ] {
        assert!(
            args.contains(&arg.as_bytes()),
            "the new agent lost argument {arg}: {:?}",
            String::from_utf8_lossy(&cmdline)
        );
    }
    // On the binary it runs now: found, left alone.
    assert_eq!(
        agent::ensure_agent_running(&opts).expect("find the agent"),
        AgentStart::Running { pid }
    );
}
