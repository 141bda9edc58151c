//! The tunnel interface's place in its namespace, with iproute2: the userspace endpoint's
//! persistent TUN device, and for both backends the addresses, MTU and the routes to the peers'
//! allowed IPs. The same for both backends; `netns` `None` is the namespace
//! the process is in (the userspace endpoint has entered it), `Some` names it (`up`, `apply`).

use super::config::WgSettings;

/// Runs `ip [-n NETNS] ARGS…`; `Err` carries its complaint.
pub fn ip(netns: Option<&str>, args: &[&str]) -> Result<(), String> {
    let mut cmd = std::process::Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}{}: {}",
            netns.map(|n| format!("-n {n} ")).unwrap_or_default(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Packets the TUN device queues for the endpoint (its `txqueuelen`, the kernel's default 500).
/// The queue fills only while the endpoint does not read: when it waits for a CPU on a busy host
/// (the soak measured its threads waiting up to 0.4 s; an earlier soak lost 1,628 datagrams to
/// a stall of about 1.8 s at ~1,700 packets a second through the tunnel, with 500). 4,096 covers
/// such a stall at that rate; a packet the endpoint reads never waits behind more.
pub const TUN_QUEUE: u32 = 4096;

/// A persistent TUN device `name` (no packet information, as the userspace endpoint opens it)
/// in namespace `netns`, with a queue of [`TUN_QUEUE`] packets. The endpoint attaches with a
/// virtio-net header and sets the offloads itself (both are per attach: the kernel takes the
/// flags of whoever attaches), so a device made before offloads existed serves as well.
pub fn add_tun(netns: &str, name: &str) -> Result<(), String> {
    ip(Some(netns), &["tuntap", "add", "mode", "tun", "name", name])?;
    ip(
        Some(netns),
        &[
            "link",
            "set",
            "dev",
            name,
            "txqueuelen",
            &TUN_QUEUE.to_string(),
        ],
    )
}

/// Addresses, MTU (and up), and a route to every peer's allowed IPs through interface `name`.
pub fn configure(netns: Option<&str>, name: &str, s: &WgSettings) -> Result<(), String> {
    for a in &s.address {
        ip(netns, &["addr", "replace", &a.to_string(), "dev", name])?;
    }
    ip(
        netns,
        &["link", "set", "dev", name, "mtu", &s.mtu.to_string(), "up"],
    )?;
    for p in &s.peers {
        for net in &p.allowed_ips {
            ip(netns, &["route", "replace", &net.to_string(), "dev", name])?;
        }
    }
    Ok(())
}
