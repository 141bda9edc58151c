//! The bench's lab: namespaces, veths, wireguard-go processes and netfn chains, built as one and
//! removed as one (by `teardown`, or on drop when the bench fails or is interrupted).
//!
//! Names carry the bench's pid (namespaces `nfbv<pid><x>`, chains `bv<pid><x>`, wireguard-go
//! interfaces `nfbv<pid><x>`), so nothing collides with another bench, a test or an operator's
//! objects. Addresses are in 10.88.0.0/16, inside those namespaces only; none of them has a
//! default route.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Endpoint, Tunnel};
use crate::bench::chain::{add_netns, ip, netfn_command, veth_between};
use crate::util::netfn_netns;

/// Every tunnel endpoint's UDP port (each in its own namespace).
pub(super) const PORT: u16 = 51820;

/// What the bench created.
pub(super) struct VpnLab {
    netfn: PathBuf,
    /// Key and chain files.
    dir: PathBuf,
    tag: String,
    peers: Vec<GoPeer>,
    chains: Vec<String>,
    namespaces: Vec<String>,
    /// Building the tunnels of GotaTun's own device (`userspace = "gotatun"`, for `--also-gotatun`):
    /// their subnets are 10 up and their names end in `g`.
    gotatun: bool,
    /// The batched device's `receive_moderation_us`, when not netfn's default.
    moderation: Option<u16>,
}

/// A wireguard-go process (`wireguard-go -f NAME` in a namespace), killed on drop.
pub(crate) struct GoPeer {
    child: Child,
    name: String,
}

impl GoPeer {
    /// The process id of wireguard-go.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for GoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.name));
    }
}

/// One wireguard-go peer to configure with `wg set`.
pub(crate) struct GoConf<'a> {
    pub(crate) ns: &'a str,
    pub(crate) name: String,
    pub(crate) key: &'a Path,
    pub(crate) listen_port: Option<u16>,
    pub(crate) peer_public: &'a str,
    pub(crate) endpoint: Option<String>,
    pub(crate) allowed: &'a str,
    pub(crate) address: &'a str,
}

impl VpnLab {
    pub(super) fn new(netfn: PathBuf, dir: PathBuf, moderation: Option<u16>) -> Self {
        VpnLab {
            netfn,
            dir,
            tag: std::process::id().to_string(),
            peers: Vec::new(),
            chains: Vec::new(),
            namespaces: Vec::new(),
            gotatun: false,
            moderation,
        }
    }

    /// The tunnels; with `also_gotatun`, netfn's two again on GotaTun's own device.
    pub(super) fn build(&mut self, fastpath: &str, also_gotatun: bool) -> Result<Vec<Tunnel>> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("create {}", self.dir.display()))?;
        let mut tunnels = vec![
            self.bare()?,
            self.go_pair()?,
            self.netfn_to_go(fastpath)?,
            self.netfn_to_netfn(fastpath)?,
        ];
        if also_gotatun {
            self.gotatun = true;
            tunnels.push(self.netfn_to_go(fastpath)?);
            tunnels.push(self.netfn_to_netfn(fastpath)?);
        }
        Ok(tunnels)
    }

    /// `text` with the subnets of netfn's tunnels (10.88.3 to 10.88.10) moved 10 up for GotaTun's
    /// device's tunnels.
    fn sh(&self, text: &str) -> String {
        let mut t = text.to_string();
        if self.gotatun {
            for n in (3..=10).rev() {
                t = t.replace(&format!("10.88.{n}."), &format!("10.88.{}.", n + 10));
            }
        }
        t
    }

    fn a(&self, n: u8, h: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, if self.gotatun { n + 10 } else { n }, h)
    }

    /// The suffix of the names of GotaTun's device's tunnels.
    fn px(&self) -> &'static str {
        if self.gotatun { "g" } else { "" }
    }

    /// A chain file's `vpn` function (without its peers), on the device being built.
    fn endpoint_function(&self, side: &str, key: &Path, address: &str) -> String {
        let mut f = endpoint_function(side, key, address);
        match (self.gotatun, self.moderation) {
            (true, _) => f.push_str("userspace = \"gotatun\"\n"),
            (false, Some(us)) => f.push_str(&format!("receive_moderation_us = {us}\n")),
            (false, None) => {}
        }
        f
    }

    fn netns(&mut self, x: &str) -> Result<String> {
        let x = format!("{x}{}", self.px());
        let ns = format!("nfbv{}{x}", self.tag);
        add_netns(&ns).with_context(|| format!("create namespace {ns}"))?;
        self.namespaces.push(ns.clone());
        Ok(ns)
    }

    fn bare(&mut self) -> Result<Tunnel> {
        let (a, b) = (self.netns("a")?, self.netns("b")?);
        let (src, dst) = (Ipv4Addr::new(10, 88, 0, 1), Ipv4Addr::new(10, 88, 0, 2));
        veth_between((&a, "nfbv0", src), (&b, "nfbv1", dst), 24)?;
        Ok(Tunnel {
            name: "bare",
            about: "one veth pair between two namespaces, no tunnel".into(),
            client_ns: a,
            client_addr: src,
            server_ns: b,
            server_addr: dst,
            endpoints: Vec::new(),
        })
    }

    fn go_pair(&mut self) -> Result<Tunnel> {
        let (a, b) = (self.netns("g")?, self.netns("h")?);
        let (ua, ub) = (Ipv4Addr::new(10, 88, 1, 1), Ipv4Addr::new(10, 88, 1, 2));
        veth_between((&a, "nfbv0", ua), (&b, "nfbv1", ub), 24)?;
        let (ka, pa) = self.keypair("g")?;
        let (kb, pb) = self.keypair("h")?;
        let tag = self.tag.clone();
        let pid_a = self.go_peer(&GoConf {
            ns: &a,
            name: format!("nfbv{tag}g"),
            key: &ka,
            listen_port: Some(PORT),
            peer_public: &pb,
            endpoint: Some(format!("{ub}:{PORT}")),
            allowed: "10.88.2.2/32",
            address: "10.88.2.1/24",
        })?;
        let pid_b = self.go_peer(&GoConf {
            ns: &b,
            name: format!("nfbv{tag}h"),
            key: &kb,
            listen_port: Some(PORT),
            peer_public: &pa,
            endpoint: Some(format!("{ua}:{PORT}")),
            allowed: "10.88.2.1/32",
            address: "10.88.2.2/24",
        })?;
        Ok(Tunnel {
            name: "wggo-pair",
            about: "wireguard-go to wireguard-go over one veth pair".into(),
            endpoints: vec![
                Endpoint::new("wireguard-go (client side)", pid_a, &a),
                Endpoint::new("wireguard-go (server side)", pid_b, &b),
            ],
            client_ns: a,
            client_addr: Ipv4Addr::new(10, 88, 2, 1),
            server_ns: b,
            server_addr: Ipv4Addr::new(10, 88, 2, 2),
        })
    }

    /// The chain of tests/tests/wireguard.rs without its firewall: wireguard-go in the ingress
    /// namespace is the endpoint's peer.
    fn netfn_to_go(&mut self, fastpath: &str) -> Result<Tunnel> {
        let chain = format!("bv{}w{}", self.tag, self.px());
        let (vpn_key, vpn_public) = self.keypair("w-vpn")?;
        let (go_key, go_public) = self.keypair("w-go")?;
        let file = format!(
            "[[chain]]\nname = \"{chain}\"\nfastpath = \"{fastpath}\"\n\n\
             [chain.ingress]\naddress = \"10.88.3.2/24\"\n\n\
             [chain.egress]\naddress = \"10.88.4.2/24\"\n\n\
             {}\n\
             [[chain.function.peer]]\npublic_key = \"{go_public}\"\n\
             allowed_ips = [\"10.88.5.2/32\"]\n",
            self.endpoint_function("ingress", &vpn_key, "10.88.5.1/24"),
        );
        let file = self.sh(&file);
        self.up(&chain, &file)?;
        let ingress = netfn_netns(&chain, "ingress");
        let pid = self.go_peer(&GoConf {
            ns: &ingress,
            name: format!("nfbv{}w{}", self.tag, self.px()),
            key: &go_key,
            // A port of its own namespace's (the function's is in another): for its drops.
            listen_port: Some(PORT),
            peer_public: &vpn_public,
            endpoint: Some(self.sh(&format!("10.88.3.1:{PORT}"))),
            allowed: &self.sh("10.88.4.0/24"),
            address: &self.sh("10.88.5.2/32"),
        })?;
        ip(&[
            "-n",
            &ingress,
            "route",
            "replace",
            &self.sh("10.88.4.0/24"),
            "dev",
            &format!("nfbv{}w{}", self.tag, self.px()),
        ])?;
        Ok(Tunnel {
            name: if self.gotatun {
                "netfn-wggo-gotatun"
            } else {
                "netfn-wggo"
            },
            about: format!(
                "wireguard-go to netfn's endpoint (chain {chain}, fastpath {fastpath}), \
                 client behind wireguard-go"
            ),
            endpoints: vec![
                Endpoint::new("wireguard-go (client side)", pid, &ingress),
                Endpoint::new(
                    "netfn endpoint (server side)",
                    endpoint_pid(&chain)?,
                    &function_netns(&chain),
                ),
            ],
            client_ns: ingress,
            client_addr: self.a(5, 2),
            server_ns: netfn_netns(&chain, "egress"),
            server_addr: self.a(4, 2),
        })
    }

    /// Chain A (client namespace -> endpoint, tunnel toward egress) and chain B (endpoint,
    /// tunnel toward ingress -> server namespace); A's egress and B's ingress are one namespace
    /// of ours, which forwards between them and NATs the tunnel's UDP: A's peer endpoint is that
    /// namespace's address, DNATed to B's endpoint and masqueraded, so each endpoint hears from
    /// its chain neighbour's address (the forwarder drops other sources as spoofed).
    fn netfn_to_netfn(&mut self, fastpath: &str) -> Result<Tunnel> {
        let (c, t, s) = (self.netns("c")?, self.netns("t")?, self.netns("s")?);
        let (a, b) = (
            format!("bv{}a{}", self.tag, self.px()),
            format!("bv{}b{}", self.tag, self.px()),
        );
        let (key_a, public_a) = self.keypair("a")?;
        let (key_b, public_b) = self.keypair("b")?;
        let file_a = format!(
            "[[chain]]\nname = \"{a}\"\nfastpath = \"{fastpath}\"\n\n\
             [chain.ingress]\naddress = \"10.88.6.2/24\"\nnamespace = \"{c}\"\n\n\
             [chain.egress]\naddress = \"10.88.7.2/24\"\nnamespace = \"{t}\"\n\n\
             {}\n\
             [[chain.function.peer]]\npublic_key = \"{public_b}\"\n\
             allowed_ips = [\"10.88.10.0/24\"]\nendpoint = \"10.88.7.2:{PORT}\"\n",
            self.endpoint_function("egress", &key_a, "10.88.8.1/24"),
        );
        let file_b = format!(
            "[[chain]]\nname = \"{b}\"\nfastpath = \"{fastpath}\"\n\n\
             [chain.ingress]\naddress = \"10.88.9.2/24\"\nnamespace = \"{t}\"\n\n\
             [chain.egress]\naddress = \"10.88.10.2/24\"\nnamespace = \"{s}\"\n\n\
             {}\n\
             [[chain.function.peer]]\npublic_key = \"{public_a}\"\n\
             allowed_ips = [\"10.88.6.0/24\"]\n",
            self.endpoint_function("ingress", &key_b, "10.88.8.2/24"),
        );
        // B first: A's endpoint handshakes as soon as it starts.
        let (file_a, file_b) = (self.sh(&file_a), self.sh(&file_b));
        self.up(&b, &file_b)?;
        sysctl_in(&t, "net/ipv4/ip_forward", "1")?;
        let rules = format!(
            "table ip nfbench_vpn {{\n\
             chain pre {{ type nat hook prerouting priority dstnat; policy accept; \
             ip daddr 10.88.7.2 udp dport {PORT} dnat to 10.88.9.1:{PORT}; }}\n\
             chain post {{ type nat hook postrouting priority srcnat; policy accept; \
             ip daddr 10.88.9.1 udp dport {PORT} masquerade; }}\n}}\n"
        );
        let rules = self
            .sh(&rules)
            .replace("nfbench_vpn", &format!("nfbench_vpn{}", self.px()));
        nft_in(&t, &rules)?;
        self.up(&a, &file_a)?;
        Ok(Tunnel {
            name: if self.gotatun {
                "netfn-netfn-gotatun"
            } else {
                "netfn-netfn"
            },
            about: format!(
                "netfn's endpoint to netfn's endpoint (chains {a} and {b}, fastpath {fastpath}), \
                 through a namespace that routes and NATs the tunnel"
            ),
            endpoints: vec![
                Endpoint::new(
                    "netfn endpoint (client side)",
                    endpoint_pid(&a)?,
                    &function_netns(&a),
                ),
                Endpoint::new(
                    "netfn endpoint (server side)",
                    endpoint_pid(&b)?,
                    &function_netns(&b),
                ),
            ],
            client_ns: c,
            client_addr: self.a(6, 2),
            server_ns: s,
            server_addr: self.a(10, 2),
        })
    }

    /// `netfn wg genkey` into DIR/NAME.key (mode 600); (path, public key).
    fn keypair(&self, name: &str) -> Result<(PathBuf, String)> {
        keypair(&self.netfn, &self.dir, &format!("{name}{}", self.px()))
    }

    fn up(&mut self, chain: &str, text: &str) -> Result<()> {
        let file = self.dir.join(format!("{chain}.toml"));
        std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
        self.chains.push(chain.to_string());
        crate::bench::timed_netfn(&self.netfn, &["up", &file.to_string_lossy()])?;
        Ok(())
    }

    /// Starts and configures wireguard-go; its pid.
    fn go_peer(&mut self, conf: &GoConf) -> Result<i32> {
        let peer = start_go_peer(conf)?;
        let pid = i32::try_from(peer.pid()).context("pid")?;
        self.peers.push(peer);
        Ok(pid)
    }

    /// Copies the endpoints' logs to target/bench/vpn-logs/ before `down` removes them (an
    /// endpoint that died mid-run says why there).
    fn keep_endpoint_logs(&self) {
        let Some(bench_dir) = self.dir.parent() else {
            return;
        };
        let logs = bench_dir.join("vpn-logs");
        for chain in &self.chains {
            let log = std::path::Path::new("/run/netfn/chains").join(format!("{chain}.vpn.log"));
            if log.exists() && std::fs::create_dir_all(&logs).is_ok() {
                let _ = std::fs::copy(&log, logs.join(format!("{chain}.vpn.log")));
            }
        }
    }

    pub(super) fn teardown(&mut self) -> Result<()> {
        // wireguard-go first (it lives in namespaces the chains own), then the chains, then our
        // namespaces, then the files.
        self.peers.clear();
        self.keep_endpoint_logs();
        let mut errors = crate::bench::down_chains(&self.netfn, &mut self.chains);
        for ns in std::mem::take(&mut self.namespaces) {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                errors.push(format!("{e:#}"));
            }
        }
        if self.dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            errors.push(format!("remove {}: {e}", self.dir.display()));
        }
        crate::bench::cleanup_result(&errors)
    }

    /// What the first of netfn's batched endpoints says of its receive moderation in its status
    /// line ("100 µs ticks while datagrams come 4 or more to a tick", "off"): the tick the run had, whether
    /// `--receive-moderation-us` gave it or netfn's default did. `None` before `build` and on
    /// GotaTun's device.
    pub(super) fn receive_moderation(&self) -> Option<String> {
        self.chains.iter().find_map(|chain| {
            let io = std::fs::read_to_string(format!("/run/netfn/chains/{chain}.vpn.io")).ok()?;
            let (_, said) = io.split_once("receive moderation: ")?;
            Some(said.trim().to_string())
        })
    }
}

impl Drop for VpnLab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("{e:#}");
        }
    }
}

/// A `[[chain.function]]` table: a WireGuard endpoint named `vpn` facing `side`.
pub(crate) fn endpoint_function(side: &str, key: &Path, address: &str) -> String {
    format!(
        "[[chain.function]]\nname = \"vpn\"\nkind = \"wireguard\"\nside = \"{side}\"\n\
         private_key_file = \"{}\"\nlisten_port = {PORT}\naddress = [\"{address}\"]\n",
        key.display()
    )
}

/// The namespace of function `vpn` in `chain` (netfn names a function's `nf-CHAIN-FUNCTION`).
fn function_netns(chain: &str) -> String {
    netfn_netns(chain, "vpn")
}

/// The pid of function `vpn`'s endpoint process in `chain` (netfn's record).
fn endpoint_pid(chain: &str) -> Result<i32> {
    let file = format!("/run/netfn/chains/{chain}.vpn.pid");
    std::fs::read_to_string(&file)
        .with_context(|| format!("read {file}"))?
        .trim()
        .parse()
        .with_context(|| format!("{file}: not a pid"))
}

/// Writes /proc/sys/KEY in namespace `ns`.
fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<()> {
    crate::bench::chain::in_netns(ns, || {
        std::fs::write(format!("/proc/sys/{key}"), value)
            .with_context(|| format!("set {key} in {ns}"))
    })
}

/// Loads an nftables ruleset in namespace `ns`.
fn nft_in(ns: &str, rules: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run nft")?;
    child
        .stdin
        .take()
        .context("nft: no stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `netfn wg genkey` into DIR/NAME.key (mode 600); (path, public key).
pub(crate) fn keypair(netfn: &Path, dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let out = netfn_command(netfn)
        .args(["wg", "genkey"])
        .output()
        .context("run netfn wg genkey")?;
    if !out.status.success() {
        bail!("netfn wg genkey: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = dir.join(format!("{name}.key"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(&out.stdout)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let mut child = netfn_command(netfn)
        .args(["wg", "pubkey"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run netfn wg pubkey")?;
    child
        .stdin
        .take()
        .context("netfn wg pubkey: no stdin")?
        .write_all(&out.stdout)?;
    let public = child.wait_with_output()?;
    if !public.status.success() {
        bail!("netfn wg pubkey failed");
    }
    Ok((
        path,
        String::from_utf8_lossy(&public.stdout).trim().to_string(),
    ))
}

/// Starts and configures wireguard-go (killed when the returned peer is dropped).
pub(crate) fn start_go_peer(conf: &GoConf) -> Result<GoPeer> {
    let child = Command::new("ip")
        .args(["netns", "exec", conf.ns, "wireguard-go", "-f", &conf.name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run wireguard-go")?;
    // `ip netns exec` execs the command: the child is wireguard-go itself.
    let peer = GoPeer {
        child,
        name: conf.name.clone(),
    };
    let socket = format!("/var/run/wireguard/{}.sock", conf.name);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&socket).exists() {
        if Instant::now() > deadline {
            bail!("wireguard-go {} made no UAPI socket in 10 s", conf.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let key = conf.key.to_string_lossy();
    let mut wg = vec!["netns", "exec", conf.ns, "wg", "set", &conf.name];
    let port = conf.listen_port.map(|p| p.to_string());
    if let Some(port) = &port {
        wg.extend(["listen-port", port]);
    }
    wg.extend(["private-key", &key, "peer", conf.peer_public]);
    if let Some(endpoint) = &conf.endpoint {
        wg.extend(["endpoint", endpoint]);
    }
    wg.extend(["allowed-ips", conf.allowed]);
    ip(&wg)?;
    ip(&[
        "-n",
        conf.ns,
        "addr",
        "add",
        conf.address,
        "dev",
        &conf.name,
    ])?;
    ip(&["-n", conf.ns, "link", "set", &conf.name, "up"])?;
    Ok(peer)
}
