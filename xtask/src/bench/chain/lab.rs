//! The bench's lab: the bare veth pair and the netfn chains it measures, built and removed as
//! one; and the namespace, CPU and clock helpers the measurements use.

use super::*;
use crate::util::netfn_netns;

/// What the bench created, removed by `teardown` (or on drop, if the bench fails).
pub(in crate::bench) struct Lab {
    pub(in crate::bench) netfn: PathBuf,
    pub(in crate::bench) chains: Vec<String>,
    pub(in crate::bench) bare: bool,
}

impl Lab {
    pub(in crate::bench) fn build(
        &mut self,
        dir: &Path,
        lengths: &[usize],
    ) -> Result<Vec<Topology>> {
        let mut topologies = vec![self.bare_pair()?];
        for mode in MODES {
            for &n in lengths {
                let chain = format!("b{}{n}", &mode[..1]);
                let file = dir.join(format!("{chain}.toml"));
                std::fs::write(&file, chain_file(&chain, n, mode))?;
                // A bench that died earlier may have left it.
                let _ = netfn_command(&self.netfn).args(["down", &chain]).output();
                super::super::timed_netfn(&self.netfn, &["up", &file.to_string_lossy()])?;
                self.chains.push(chain.clone());
                let src_ns = netfn_netns(&chain, "ingress");
                topologies.push(Topology {
                    name: format!("{mode}-{n}"),
                    mode,
                    functions: n,
                    src_mac: link_mac(&src_ns, "nf-out")?,
                    next_mac: link_mac(&netfn_netns(&chain, "f1"), "nf-in")?,
                    chain: Some(chain.clone()),
                    src_ns,
                    dst_ns: netfn_netns(&chain, "egress"),
                    src_if: "nf-out".into(),
                    src_addr: SRC_ADDR,
                    dst_addr: DST_ADDR,
                });
            }
        }
        Ok(topologies)
    }

    /// Two namespaces joined by one veth pair: the limit every chain is compared with.
    fn bare_pair(&mut self) -> Result<Topology> {
        for ns in [BARE_A, BARE_B] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        self.bare = true;
        for ns in [BARE_A, BARE_B] {
            add_netns(ns)?;
        }
        veth_between((BARE_A, "nfb0", BARE_SRC), (BARE_B, "nfb1", BARE_DST), 24)?;
        Ok(Topology {
            name: "bare".into(),
            mode: "bare",
            functions: 0,
            chain: None,
            src_ns: BARE_A.into(),
            dst_ns: BARE_B.into(),
            src_if: "nfb0".into(),
            src_addr: BARE_SRC,
            dst_addr: BARE_DST,
            src_mac: link_mac(BARE_A, "nfb0")?,
            next_mac: link_mac(BARE_B, "nfb1")?,
        })
    }

    pub(in crate::bench) fn teardown(&mut self) -> Result<()> {
        let mut errors = super::super::down_chains(&self.netfn, &mut self.chains);
        if std::mem::take(&mut self.bare) {
            for ns in [BARE_A, BARE_B] {
                if let Err(e) = ip(&["netns", "del", ns]) {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        crate::bench::cleanup_result(&errors)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("{e:#}");
        }
    }
}

/// `netfn` without starting the host agent (the bench measures the data path alone).
pub(crate) fn netfn_command(netfn: &Path) -> Command {
    let mut c = Command::new(netfn);
    c.env("NETFN_AGENT_AUTOSTART", "0");
    c
}

pub(in crate::bench) fn chain_file(name: &str, n: usize, mode: &str) -> String {
    let mut s = format!(
        "[[chain]]\nname = \"{name}\"\nfastpath = \"{mode}\"\n\n\
         [chain.ingress]\naddress = \"{SRC_ADDR}/24\"\n\n\
         [chain.egress]\naddress = \"{DST_ADDR}/24\"\n"
    );
    for i in 1..=n {
        s.push_str(&format!(
            "\n[[chain.function]]\nname = \"f{i}\"\nkind = \"forward\"\n"
        ));
    }
    s
}

/// A new namespace `ns` with IPv6 off (no router solicitations in the measurements) and `lo` up.
pub(in crate::bench) fn add_netns(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    in_netns(ns, || {
        for conf in ["all", "default"] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")?;
        }
        Ok(())
    })?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// A veth pair between two namespaces, each end (namespace, interface, address) addressed with
/// `prefix` and up.
pub(in crate::bench) fn veth_between(
    a: (&str, &str, Ipv4Addr),
    b: (&str, &str, Ipv4Addr),
    prefix: u8,
) -> Result<()> {
    ip(&[
        "link", "add", a.1, "netns", a.0, "type", "veth", "peer", "name", b.1, "netns", b.0,
    ])?;
    for (ns, dev, addr) in [a, b] {
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/{prefix}"),
            "dev",
            dev,
        ])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    Ok(())
}

pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The MAC address of `dev` in namespace `ns`.
pub(in crate::bench) fn link_mac(ns: &str, dev: &str) -> Result<[u8; 6]> {
    let json: serde_json::Value =
        serde_json::from_str(&ip(&["-n", ns, "-j", "link", "show", "dev", dev])?)?;
    let text = json[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC for {dev} in {ns}"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {text}");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)?;
    }
    Ok(mac)
}

// ---------------------------------------------------------------------------------------------
// Namespaces and CPUs
// ---------------------------------------------------------------------------------------------

/// Enters namespace `ns` on the calling thread (only call on threads made for it).
pub(crate) fn enter(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns with a valid namespace fd.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    Ok(())
}

/// Runs `f` on a new thread inside `ns`.
pub(crate) fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in {ns} panicked"))?
    })
}

/// CPUs online (not the calling thread's affinity, which pinning changes).
pub(in crate::bench) fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Pins the calling thread to `cpu` (if the machine has it).
pub(in crate::bench) fn pin_to(cpu: usize) {
    let cpus = online_cpus();
    if cpu >= cpus {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET on an index below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The jiffies of all CPUs (/proc/stat's `cpu` line): user nice system idle iowait irq softirq
/// steal …
pub(in crate::bench) fn cpu_stat_fields() -> Vec<u64> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect()
}

/// Busy and total jiffies of all CPUs (/proc/stat).
pub(in crate::bench) fn cpu_jiffies() -> (u64, u64) {
    let fields = cpu_stat_fields();
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy, busy + get(3) + get(4))
}

pub(in crate::bench) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}
