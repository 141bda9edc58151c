//! The soak's chains: their files (written again for every change), `up`, `apply` and `down`,
//! the WireGuard peer of the VPN chain, and the search for anything left behind.
//!
//! Every name carries the soak's prefix `sk<pid in hex>` (chains `sk<pid>k`, `…t`, `…x`, `…d`;
//! the peer's interface `wgpsk<pid>t`), so the leftover search counts only what this soak made.
//! Addresses live in the chains' own namespaces only (10.7x.0.0/16, the tunnel in 10.99.x.0/24).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::traffic;
use crate::bench::chain::{ip, netfn_command};
use crate::bench::vpn::lab::{GoConf, GoPeer, endpoint_function, keypair, start_go_peer};
use crate::util::{NETFN_NETNS, netfn_netns, netfn_netns_prefix};

/// The load balancer's virtual address (TCP port [`VIP_PORT`]); its one backend is the egress
/// endpoint's address, port [`BACKEND_PORT`].
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);
pub const VIP_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
const WG_PORT: u16 = 51820;

/// One soak chain: its name, fast path, subnet byte, and the functions it has now: `vpn` (if
/// any), `fw` (firewall), the middle (the load balancer `lb` and forward functions `fN`, which
/// the chaos inserts, removes and reorders), and the forward function `end`. A live apply keeps
/// the functions next to the endpoints, so the first and the last never change.
#[derive(Debug, Clone)]
pub struct Chain {
    pub name: String,
    pub mode: String,
    pub net: u8,
    /// A WireGuard endpoint `vpn` (side ingress) in front: the chain's traffic crosses the
    /// tunnel from a wireguard-go peer in the ingress namespace.
    pub vpn: Option<Vpn>,
    /// The middle functions in order: `lb` and forward functions `fN`.
    pub functions: Vec<String>,
    /// Next number for a new forward function.
    pub next_forward: u32,
}

/// The VPN chain's keys and peer.
#[derive(Debug, Clone)]
pub struct Vpn {
    pub key: PathBuf,
    pub public: String,
    pub peer_key: PathBuf,
    pub peer_public: String,
}

impl Chain {
    pub fn new(name: String, mode: &str, net: u8) -> Chain {
        Chain {
            name,
            mode: mode.to_string(),
            net,
            vpn: None,
            functions: vec!["lb".into(), "f1".into()],
            next_forward: 2,
        }
    }

    pub fn ingress_ns(&self) -> String {
        netfn_netns(&self.name, "ingress")
    }

    pub fn egress_ns(&self) -> String {
        netfn_netns(&self.name, "egress")
    }

    pub fn ingress_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 1, 2)
    }

    pub fn egress_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 2, 2)
    }

    /// The peer's tunnel address (the VPN chain's traffic comes from there).
    pub fn peer_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, self.net, 2)
    }

    /// Where the chain's client sends from: the tunnel peer's address, or the ingress endpoint.
    pub fn client_addr(&self) -> Ipv4Addr {
        if self.vpn.is_some() {
            self.peer_addr()
        } else {
            self.ingress_addr()
        }
    }

    /// Ingress (client) to egress (server).
    pub fn forward_path(&self) -> traffic::Path {
        traffic::Path {
            from_ns: self.ingress_ns(),
            from: self.client_addr(),
            to_ns: self.egress_ns(),
            to: self.egress_addr(),
        }
    }

    /// Egress to ingress (the client's address).
    pub fn reverse_path(&self) -> traffic::Path {
        traffic::Path {
            from_ns: self.egress_ns(),
            from: self.egress_addr(),
            to_ns: self.ingress_ns(),
            to: self.client_addr(),
        }
    }

    /// The chain file for the chain's functions now.
    pub fn file_text(&self) -> String {
        let (net, name, mode) = (self.net, &self.name, &self.mode);
        let mut s = format!(
            "# cargo xtask soak: written for each change.\n[[chain]]\nname = \"{name}\"\n\
             fastpath = \"{mode}\"\n\n[chain.ingress]\naddress = \"10.{net}.1.2/24\"\n\n\
             [chain.egress]\naddress = \"10.{net}.2.2/24\"\n\n"
        );
        if let Some(vpn) = &self.vpn {
            s.push_str(&endpoint_function(
                "ingress",
                &vpn.key,
                &format!("10.99.{net}.1/24"),
            ));
            s.push_str(&format!(
                "backend = \"userspace\"\n\n[[chain.function.peer]]\npublic_key = \"{}\"\n\
                 allowed_ips = [\"{}/32\"]\n\n",
                vpn.peer_public,
                self.peer_addr()
            ));
        }
        let all = ["fw"]
            .into_iter()
            .chain(self.functions.iter().map(String::as_str))
            .chain(["end"]);
        for f in all {
            match f {
                "fw" => s.push_str(
                    "[[chain.function]]\nname = \"fw\"\nkind = \"firewall\"\ndefault = \"accept\"\n\n\
                     [[chain.function.rule]]\nname = \"no-telnet\"\nproto = \"tcp\"\ndport = 23\n\
                     action = \"reject\"\n\n",
                ),
                "lb" => s.push_str(&format!(
                    "[[chain.function]]\nname = \"lb\"\nkind = \"load-balancer\"\n\n\
                     [[chain.function.service]]\nvip = \"{VIP}\"\nproto = \"tcp\"\nport = {VIP_PORT}\n\
                     backends = [{{ address = \"{}\", port = {BACKEND_PORT} }}]\n\n",
                    self.egress_addr()
                )),
                other => s.push_str(&format!(
                    "[[chain.function]]\nname = \"{other}\"\nkind = \"forward\"\n\n"
                )),
            }
        }
        s
    }

    /// Every function in order, for people.
    pub fn describe(&self) -> String {
        let mut all: Vec<&str> = Vec::new();
        if self.vpn.is_some() {
            all.push("vpn");
        }
        all.push("fw");
        all.extend(self.functions.iter().map(String::as_str));
        all.push("end");
        all.join(" -> ")
    }

    /// Writes the chain file into `dir`; its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let file = dir.join(format!("{}.toml", self.name));
        std::fs::write(&file, self.file_text())
            .with_context(|| format!("write {}", file.display()))?;
        Ok(file)
    }
}

/// Runs `netfn ARGS…` (no agent autostart); Ok(stdout) or an error with its stderr.
pub fn netfn(netfn: &Path, args: &[&str]) -> Result<String> {
    let out = netfn_command(netfn)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", netfn.display()))?;
    if !out.status.success() {
        let command = format!("netfn {}", args.join(" "));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said = stderr.trim();
        let said = said.strip_prefix("netfn: error: ").unwrap_or(said);
        // The CLI's errors usually name the command already; say it once.
        if said.starts_with(&command) {
            bail!("{said}");
        }
        bail!("{command}: {said}");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Keys for the VPN chain (in `dir`, mode 600).
pub fn vpn_keys(netfn: &Path, dir: &Path, chain: &str) -> Result<Vpn> {
    let (key, public) = keypair(netfn, dir, &format!("{chain}-vpn"))?;
    let (peer_key, peer_public) = keypair(netfn, dir, &format!("{chain}-peer"))?;
    Ok(Vpn {
        key,
        public,
        peer_key,
        peer_public,
    })
}

/// wireguard-go in the chain's ingress namespace, the endpoint's peer: from the peer's tunnel
/// address (the soak's client) the egress subnet and the VIP are reached through the tunnel. Only
/// from there: the agent's chain probe leaves from the ingress endpoint's own address and crosses
/// the endpoint's function in the clear, as an operator's would; routed into the tunnel, with a
/// source outside the peer's allowed IPs, the endpoint would drop it and the prober would call
/// the chain down.
pub fn start_peer(chain: &Chain) -> Result<GoPeer> {
    let vpn = chain.vpn.as_ref().context("the chain has no VPN")?;
    let name = format!("wgp{}", chain.name);
    let ns = chain.ingress_ns();
    let net = chain.net;
    let allowed = format!("10.{net}.2.0/24,{VIP}/32");
    let address = format!("{}/32", chain.peer_addr());
    let peer = start_go_peer(&GoConf {
        ns: &ns,
        name: name.clone(),
        key: &vpn.peer_key,
        listen_port: None,
        peer_public: &vpn.public,
        endpoint: Some(format!("10.{net}.1.1:{WG_PORT}")),
        allowed: &allowed,
        address: &address,
    })?;
    let table = WG_PORT.to_string();
    let from = chain.peer_addr().to_string();
    ip(&["-n", &ns, "rule", "add", "from", &from, "lookup", &table])?;
    for dst in [format!("10.{net}.2.0/24"), format!("{VIP}/32")] {
        ip(&[
            "-n", &ns, "route", "replace", &dst, "dev", &name, "table", &table,
        ])?;
    }
    Ok(peer)
}

/// Waits until a burst crosses the chain's forward path (the tunnel's handshake done, the
/// neighbours known); fails after `limit`.
pub fn wait_carrying(chain: &Chain, port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let (_, arrived) = traffic::burst(&chain.forward_path(), port, 200)?;
        if arrived > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("chain {} carried nothing in {limit:?}", chain.name);
        }
    }
}

/// A file netfn keeps for function `function`'s process of `chain` (`pid`, `log`, ...).
fn process_file(chain: &str, function: &str, ext: &str) -> String {
    format!("/run/netfn/chains/{chain}.{function}.{ext}")
}

/// The pid the chain's record names for function `function`'s process, if any.
pub fn process_pid(chain: &str, function: &str) -> Option<i32> {
    std::fs::read_to_string(process_file(chain, function, "pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Copies the log of `chain`'s function `function` (its supervised process's output, which
/// `down` removes with the chain's records) to `to`; false if there was none to copy.
pub fn keep_process_log(chain: &str, function: &str, to: &std::path::Path) -> bool {
    std::fs::copy(process_file(chain, function, "log"), to).is_ok()
}

/// Everything with the soak's `prefix` left on the host: namespaces, links of the root
/// namespace, records and other files of the state directory, bpffs pins, mounts, wireguard-go
/// sockets, and (with `processes`) processes whose command line names it.
pub fn leftovers(prefix: &str, processes: bool) -> Vec<String> {
    let mut left = Vec::new();
    let ns_prefix = format!("{NETFN_NETNS}{prefix}");
    let mut list = |dir: &str, starts: &str| {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(starts) {
                    left.push(format!("{dir}/{name}"));
                }
            }
        }
    };
    list("/run/netns", &ns_prefix);
    list("/run/netfn/chains", prefix);
    list("/sys/fs/bpf/netfn", prefix);
    list("/var/run/wireguard", &format!("wgp{prefix}"));
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for l in links.lines().filter(|l| l.contains(prefix)) {
            left.push(format!("link: {}", l.trim()));
        }
    }
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        for l in mounts.lines().filter(|l| l.contains(&ns_prefix)) {
            left.push(format!("mount: {l}"));
        }
    }
    // Processes whose command line names a soak chain (the endpoints run as
    // `netfn … CHAIN …`; wireguard-go as `wireguard-go -f wgpCHAIN`).
    let me = std::process::id();
    if let Some(procs) = std::fs::read_dir("/proc").ok().filter(|_| processes) {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.split_whitespace().any(|w| w.contains(prefix)) {
                left.push(format!("process {pid}: {}", cmdline.trim()));
            }
        }
    }
    left
}

/// Resident memory (KiB) and open descriptors of process `pid`.
pub fn rss_and_fds(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("read /proc/{pid}/fd"))?
        .count() as u64;
    Ok((rss, fds))
}

/// [`rss_and_fds`] with the descriptors at rest: the RSS of the first sample, the least
/// descriptor count of 5 samples over a second. A descriptor count depends on the instant (a
/// health check's connection in flight, a prober reopening its sockets after a chain came back):
/// a leak raises the least value, a transient does not. The RSS is one sample, as before (a
/// least over samples would only lower the end value the growth goal compares).
pub fn settled_rss_and_fds(pid: u32) -> Result<(u64, u64)> {
    let (rss, mut fds) = rss_and_fds(pid)?;
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        fds = fds.min(rss_and_fds(pid)?.1);
    }
    Ok((rss, fds))
}

/// Drops counted in `chain`'s namespaces, only those above zero: every interface's receive and
/// transmit drops (`ip -s link`), each namespace's UDP receive-buffer and input errors
/// (/proc/net/snmp), and the fast path's drops by reason (`netfn status --json`).
pub fn chain_drops(netfn: &Path, chain: &str) -> BTreeMap<String, u64> {
    let mut drops = BTreeMap::new();
    let prefix = netfn_netns_prefix(chain);
    let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    for ns in &namespaces {
        let links: serde_json::Value = ip(&["-n", ns, "-j", "-s", "link"])
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        for link in links.as_array().into_iter().flatten() {
            let name = link["ifname"].as_str().unwrap_or("?");
            for dir in ["rx", "tx"] {
                let n = link["stats64"][dir]["dropped"].as_u64().unwrap_or(0);
                if n > 0 {
                    drops.insert(format!("{ns} {name} {dir} dropped"), n);
                }
            }
        }
        let snmp = ip(&["netns", "exec", ns, "cat", "/proc/net/snmp"]).unwrap_or_default();
        let udp: Vec<Vec<&str>> = snmp
            .lines()
            .filter(|l| l.starts_with("Udp:"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        if let [names, values] = udp.as_slice() {
            for (k, v) in names.iter().zip(values) {
                if ["InErrors", "RcvbufErrors", "SndbufErrors"].contains(k)
                    && let Ok(n) = v.parse::<u64>()
                    && n > 0
                {
                    drops.insert(format!("{ns} udp {k}"), n);
                }
            }
        }
    }
    if let Ok(text) = netfn_command(netfn)
        .args(["status", chain, "--json"])
        .output()
        .map(|o| o.stdout)
        && let Ok(status) = serde_json::from_slice::<serde_json::Value>(&text)
    {
        for hop in status[0]["hops"].as_array().into_iter().flatten() {
            for i in hop["interfaces"].as_array().into_iter().flatten() {
                for (reason, n) in i["fastpath"]["drops"].as_object().into_iter().flatten() {
                    let n = n.as_u64().unwrap_or(0);
                    if n > 0 {
                        *drops
                            .entry(format!(
                                "fast path {} {reason}",
                                hop["name"].as_str().unwrap_or("?")
                            ))
                            .or_default() += n;
                    }
                }
            }
        }
    }
    drops
}

/// Packets the host's CPU input backlogs dropped (/proc/net/softnet_stat, all CPUs).
pub fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_and_last_functions_never_move() {
        let mut c = Chain::new("skt".into(), "tc", 72);
        c.functions = vec!["f3".into(), "lb".into()];
        let text = c.file_text();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .map(|l| l.trim_end_matches('"'))
            .collect();
        assert_eq!(names, ["skt", "fw", "no-telnet", "f3", "lb", "end"]);
        assert_eq!(c.describe(), "fw -> f3 -> lb -> end");
        assert!(text.contains("vip = \"192.0.2.80\""));
    }
}
