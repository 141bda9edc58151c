//! The two commands of the README: `cargo xtask demo` and `cargo xtask test`. Both set up
//! everything first, so they work on a fresh machine.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::demo_vpn::VpnDemo;
use crate::{ebpf, setup, util};

/// The cargo profile of the `netfn` an xtask builds to install, package or soak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Optimized: what operators run.
    #[default]
    Release,
    /// Unoptimized, as `cargo build` makes it. The test suite's choice: it already has this
    /// build, and a release build as well would cost CI about four minutes and prove nothing
    /// more about installing, packaging or surviving chaos.
    Dev,
}

impl Profile {
    /// The directory under target/ cargo puts this profile's binaries in.
    pub fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "debug",
        }
    }
}

/// Builds the eBPF object, then the `netfn` binary that embeds it; returns its path.
pub fn ensure_built(profile: Profile) -> Result<PathBuf> {
    ebpf::build(true)?;
    let root = util::workspace_root();
    let mut cargo = util::cargo();
    cargo.current_dir(&root).args(["build", "-p", "netfn-cli"]);
    if profile == Profile::Release {
        cargo.arg("--release");
    }
    util::run(&mut cargo)?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target.join(profile.dir()).join("netfn"))
}

pub(crate) fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{what} creates network namespaces and loads eBPF: run it as root (sudo -E cargo xtask …)"
        );
    }
    Ok(())
}

/// `cargo xtask test`: setup, build, then every unit and integration test.
pub fn test(args: &[String]) -> Result<()> {
    require_root("cargo xtask test")?;
    setup::run()?;
    // The tests run this build; tests/install.rs installs and packages it too
    // (`cargo xtask install --profile dev`, `cargo xtask deb --profile dev`).
    ensure_built(Profile::Dev)?;
    let mut cargo = util::cargo();
    cargo
        .current_dir(util::workspace_root())
        .args(["test", "--workspace", "--no-fail-fast"]);
    if !args.is_empty() {
        cargo.arg("--").args(args);
    }
    util::run(&mut cargo)
}

/// The demo chain: every function kind that has landed, between two endpoints netfn creates.
const DEMO_CHAIN: &str = "demo";
const DEMO_FILE: &str = "examples/demo.toml";

/// `cargo xtask demo`: setup, build, bring up the demo chain, send real traffic through it,
/// show status and counters, take it down.
pub fn demo() -> Result<()> {
    require_root("cargo xtask demo")?;
    setup::run()?;
    let netfn = ensure_built(Profile::Release)?;
    let root = util::workspace_root();
    let base = std::fs::read_to_string(root.join(DEMO_FILE)).context("read examples/demo.toml")?;
    let vpn = VpnDemo::prepare(&netfn, &base)?;
    let file = vpn.file.clone();
    let file_arg = file.to_string_lossy().into_owned();
    let step = |title: &str| println!("\n\x1b[1m== {title}\x1b[0m");
    let netfn_run = |args: &[&str]| -> Result<()> {
        println!("$ netfn {}", args.join(" "));
        util::run(Command::new(&netfn).args(args))
    };

    step("the chain file");
    println!(
        "(examples/demo.toml with a WireGuard endpoint `vpn` in front, keys made for this run)"
    );
    netfn_run(&["validate", &file_arg])?;
    netfn_run(&["graph", &file_arg, "--format", "mermaid"])?;

    step("bring it up");
    // A demo left over from an interrupted run is taken down first.
    let _ = Command::new(&netfn).args(["down", DEMO_CHAIN]).output();
    // The demo runs its own agent (below) instead of the host agent `up` would start.
    println!("$ netfn up {file_arg}");
    util::run(
        Command::new(&netfn)
            .args(["up", &file_arg])
            .env("NETFN_AGENT_AUTOSTART", "0"),
    )?;
    println!("$ netfn agent --listen {DEMO_METRICS} --chain {DEMO_CHAIN} --probe-interval 250ms &");
    let mut agent = Command::new(&netfn)
        .args([
            "agent",
            "--listen",
            DEMO_METRICS,
            "--chain",
            DEMO_CHAIN,
            "--probe-interval",
            "250ms",
        ])
        .args(["--socket", "/run/netfn/demo-agent.sock"])
        .env("NETFN_AGENT_SOCKET", "/run/netfn/demo-agent.sock")
        .spawn()
        .context("start the netfn agent")?;
    let result = demo_traffic(&netfn, &vpn);
    // SIGTERM: the agent removes its socket on the way out.
    let pid = i32::try_from(agent.id()).unwrap_or(0);
    // SAFETY: kill(2) with a child's pid and a valid signal has no memory effects.
    if pid > 0 && unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let _ = agent.kill();
    }
    let _ = agent.wait();

    step("take it down");
    netfn_run(&["down", DEMO_CHAIN])?;
    result
}

/// The demo chain with one more function, `audit`, between `edge` and `middle`.
fn demo_with_audit(demo: &str) -> Result<String> {
    let at = demo
        .find("[[chain.function]]\nname = \"middle\"")
        .context("examples/demo.toml has no function `middle` to insert `audit` before")?;
    let mut text = demo.to_string();
    text.insert_str(
        at,
        "[[chain.function]]\nname = \"audit\"\nkind = \"forward\"\n\n",
    );
    Ok(text)
}

/// Inserts a function into the running demo chain while a UDP stream runs through it; iperf3
/// reports the datagrams lost.
fn live_apply(netfn: &std::path::Path, chain_file: &std::path::Path) -> Result<()> {
    println!(
        "\n\x1b[1m== live change: insert function `audit` after `edge` while a UDP stream runs (iperf3, 3 s)\x1b[0m"
    );
    let demo = std::fs::read_to_string(chain_file).context("read the demo's chain file")?;
    // Beside the chain file: its key file names are relative to it.
    let file = chain_file.with_file_name("demo-audit.toml");
    std::fs::write(&file, demo_with_audit(&demo)?).context("write the changed chain file")?;
    let file_arg = file.to_string_lossy().into_owned();
    let iperf = |hop: &str, args: &[&str]| {
        let mut c = Command::new(netfn);
        c.args(["exec", DEMO_CHAIN, hop, "--", "iperf3"]).args(args);
        c
    };
    let result = (|| -> Result<()> {
        println!("$ netfn apply {file_arg} --dry-run");
        util::run(Command::new(netfn).args(["apply", &file_arg, "--dry-run"]))?;
        let mut server = iperf("egress", &["-s", "-1", "-B", "10.20.2.2"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("start iperf3 server in the egress namespace")?;
        std::thread::sleep(Duration::from_millis(300));
        println!("$ netfn exec {DEMO_CHAIN} ingress -- iperf3 -c 10.20.2.2 -u -b 50M -t 3 &");
        let client = iperf(
            "ingress",
            &["-c", "10.20.2.2", "-u", "-b", "50M", "-t", "3"],
        )
        .spawn()
        .context("start iperf3 client in the ingress namespace")?;
        std::thread::sleep(Duration::from_millis(1000));
        println!("$ netfn apply {file_arg}");
        let applied = util::run(
            Command::new(netfn)
                .args(["apply", &file_arg])
                .env("NETFN_AGENT_SOCKET", "/run/netfn/demo-agent.sock"),
        );
        let client = client.wait_with_output();
        let _ = server.kill();
        let _ = server.wait();
        applied?;
        anyhow::ensure!(client?.status.success(), "iperf3 UDP client failed");
        println!("(iperf3's receiver line above: lost/total datagrams while the chain changed)");
        Ok(())
    })();
    let _ = std::fs::remove_file(&file);
    result
}

/// The demo's web servers behind the load balancer `front` (examples/demo.toml).
const WEB_SERVERS: [&str; 3] = ["10.20.2.11", "10.20.2.12", "10.20.2.13"];

/// The demo's web servers (python3 processes in the egress namespace) and their web roots:
/// stopped and removed on drop, so the rest of the demo (the final status and metrics) still
/// has the two that stay up.
struct WebServers {
    children: Vec<std::process::Child>,
    dir: PathBuf,
}

impl Drop for WebServers {
    fn drop(&mut self) {
        for s in &mut self.children {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The load balancer `front`: three web servers in the egress namespace, nine requests to the
/// VIP spread over them, then one server stops and the health checks take it out. The two
/// others serve until the returned servers are dropped.
fn load_balancer(netfn: &std::path::Path, vpn: &VpnDemo) -> Result<WebServers> {
    println!(
        "\n\x1b[1m== the load balancer `front`: requests to 192.0.2.80:80 spread over three web servers\x1b[0m"
    );
    let exec = |hop: &str, cmd: &[&str]| {
        let mut c = Command::new(netfn);
        c.args(["exec", DEMO_CHAIN, hop, "--"]).args(cmd);
        c
    };
    let mut web = WebServers {
        children: Vec::new(),
        dir: std::env::temp_dir().join(format!("netfn-demo-web-{}", std::process::id())),
    };
    let (dir, servers) = (web.dir.clone(), &mut web.children);
    (|| -> Result<()> {
        for (i, addr) in WEB_SERVERS.iter().enumerate() {
            let root = dir.join(addr);
            std::fs::create_dir_all(&root).context("make a web root")?;
            std::fs::write(root.join("index.html"), format!("web server {}\n", i + 1))?;
            println!("$ netfn exec {DEMO_CHAIN} egress -- ip addr add {addr}/24 dev nf-in");
            util::run(&mut exec(
                "egress",
                &["ip", "addr", "add", &format!("{addr}/24"), "dev", "nf-in"],
            ))?;
            println!(
                "$ netfn exec {DEMO_CHAIN} egress -- python3 -m http.server 8080 --bind {addr} &"
            );
            let root = root.to_string_lossy().into_owned();
            servers.push(
                exec(
                    "egress",
                    &[
                        "python3",
                        "-m",
                        "http.server",
                        "8080",
                        "--bind",
                        addr,
                        "--directory",
                        &root,
                    ],
                )
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("start a web server (python3) in the egress namespace")?,
            );
        }
        // The servers listen, and the health checks (every 0.5 s, two in a row) have seen
        // them: wait for it (a request before would find no backend up).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !front_status(netfn)?
            .iter()
            .any(|l| l.contains("3 of 3 backends up"))
        {
            if std::time::Instant::now() > deadline {
                bail!("the health checks never found the three web servers up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let requests = |n: usize| -> Result<()> {
            let script = format!(
                "for i in $(seq {n}); do exec 3<>/dev/tcp/192.0.2.80/80; \
                 printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; tail -n 1 <&3; exec 3<&-; done"
            );
            println!("$ netfn exec {DEMO_CHAIN} ingress -- bash -c '{script}'");
            util::run(&mut exec("ingress", &["bash", "-c", &script]))
        };
        requests(9)?;
        println!("(each request is a new connection, balanced by Maglev over its 5-tuple)");
        println!("\n$ kill <web server 3>   # it stops answering; two failed checks take it out");
        if let Some(mut third) = servers.pop() {
            let _ = third.kill();
            let _ = third.wait();
        }
        std::thread::sleep(Duration::from_millis(2000));
        requests(6)?;
        for line in front_status(netfn)? {
            println!("{line}");
        }
        println!(
            "\n\x1b[1m== a WireGuard client in front: its requests cross the tunnel, the firewall and the load balancer\x1b[0m"
        );
        vpn.client(netfn, &requests)
    })()?;
    Ok(web)
}

/// The lines of `netfn status` about the demo's service 192.0.2.80:80/tcp.
fn front_status(netfn: &std::path::Path) -> Result<Vec<String>> {
    let out = Command::new(netfn)
        .args(["status", DEMO_CHAIN])
        .env("NETFN_AGENT_SOCKET", "/run/netfn/demo-agent.sock")
        .output()
        .context("run netfn status")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("192.0.2.80:80/tcp"))
        .map(str::to_string)
        .collect())
}

/// Where the demo's agent serves /metrics (loopback only).
const DEMO_METRICS: &str = "127.0.0.1:9857";

/// GET http://DEMO_METRICS/metrics with a plain HTTP/1.0 request.
fn scrape() -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(DEMO_METRICS).context("connect to the demo agent")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(body))
}

fn demo_traffic(netfn: &std::path::Path, vpn: &VpnDemo) -> Result<()> {
    let step = |title: &str| println!("\n\x1b[1m== {title}\x1b[0m");
    let exec = |hop: &str, cmd: &[&str]| -> Result<()> {
        println!("$ netfn exec {DEMO_CHAIN} {hop} -- {}", cmd.join(" "));
        let mut c = Command::new(netfn);
        c.args(["exec", DEMO_CHAIN, hop, "--"]).args(cmd);
        util::run(&mut c)
    };
    step("ping from the ingress endpoint to the egress endpoint, through every function");
    exec("ingress", &["ping", "-c", "5", "-i", "0.2", "10.20.2.2"])?;

    // Give the agent a moment to start and probe the chain.
    std::thread::sleep(Duration::from_millis(800));
    step("TCP throughput through the chain (iperf3, 3 s)");
    let mut server = Command::new(netfn)
        .args([
            "exec",
            DEMO_CHAIN,
            "egress",
            "--",
            "iperf3",
            "-s",
            "-1",
            "-B",
            "10.20.2.2",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("start iperf3 server in the egress namespace")?;
    std::thread::sleep(Duration::from_millis(300));
    let client = exec(
        "ingress",
        &["iperf3", "-c", "10.20.2.2", "-t", "3", "-f", "m"],
    );
    let _ = server.kill();
    let _ = server.wait();
    client?;

    step("the firewall `middle`: telnet is rejected at once, anything unlisted is dropped");
    let try_connect = |port: u16, limit: &str| {
        let script = format!("echo > /dev/tcp/10.20.2.2/{port}");
        println!("$ netfn exec {DEMO_CHAIN} ingress -- timeout {limit} bash -c '{script}'");
        Command::new(netfn)
            .args([
                "exec", DEMO_CHAIN, "ingress", "--", "timeout", limit, "bash", "-c",
            ])
            .arg(&script)
            .status()
            .context("run bash in the ingress namespace")
    };
    let refused = try_connect(23, "5")?;
    println!(
        "(exit {:?}: refused by the firewall's TCP RST)",
        refused.code()
    );
    let dropped = try_connect(8080, "1")?;
    println!("(exit {:?}: no answer at all, dropped)", dropped.code());

    // Two web servers serve on: the final status shows them up, the stopped one down.
    let _web = load_balancer(netfn, vpn)?;

    live_apply(netfn, &vpn.file)?;

    step("status, with per-interface eBPF counters and the agent's probe");
    let mut status = Command::new(netfn);
    status
        .args(["status", DEMO_CHAIN])
        .env("NETFN_AGENT_SOCKET", "/run/netfn/demo-agent.sock");
    util::run(&mut status)?;

    step(&format!(
        "Prometheus metrics from the agent (GET http://{DEMO_METRICS}/metrics), per function"
    ));
    let metrics = scrape()?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("netfn_function_packets_total")
            || l.starts_with("netfn_function_bytes_total")
            || l.starts_with("netfn_chain_up")
            || l.starts_with("netfn_chain_probe_success")
            || l.starts_with("netfn_firewall_rule_connections_total")
            || l.starts_with("netfn_load_balancer_backend_new_flows_total")
            || l.starts_with("netfn_load_balancer_backend_up")
            || l.starts_with("netfn_load_balancer_service_new_flows_total")
            || l.starts_with("netfn_wireguard_peer_")
            || l.starts_with("netfn_function_drops_total") && !l.ends_with(" 0")
    }) {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::demo_with_audit;

    #[test]
    fn audit_goes_between_edge_and_middle() {
        let demo = include_str!("../../examples/demo.toml");
        let changed = demo_with_audit(demo).expect("demo.toml has `middle`");
        let at = |name: &str| changed.find(&format!("name = \"{name}\"")).expect(name);
        assert!(at("edge") < at("audit") && at("audit") < at("middle"));
        assert!(demo_with_audit("[[chain]]\nname = \"x\"\n").is_err());
    }
}
