//! A running endpoint's peers changed in place (`netfn apply`): over its UAPI socket, only the
//! peers that are new, gone or changed are named, so the untouched ones keep their sessions (no
//! new handshake); the namespace's routes to the peers' allowed IPs follow.

use std::collections::BTreeSet;

use netfn_core::plan::names;

use super::config::WgSettings;
use super::{endpoint, keys, uapi};

/// Gives the endpoint of `function` in `chain` the peers of `settings`.
pub fn update(chain: &str, function: &str, settings: &WgSettings) -> Result<(), String> {
    let name = endpoint::interface_name(chain, function);
    let running = uapi::peers(&name)?;
    let mut request = String::new();
    let wanted: BTreeSet<&str> = settings
        .peers
        .iter()
        .map(|p| p.public_key.as_str())
        .collect();
    let mut old_nets: BTreeSet<String> = BTreeSet::new();
    for p in &running {
        old_nets.extend(p.allowed_ips.iter().cloned());
        if !wanted.contains(p.public_key.as_str()) {
            let key =
                keys::decode(&p.public_key).map_err(|why| format!("a running peer's key {why}"))?;
            request.push_str(&format!("public_key={}\nremove=true\n", uapi::hex(&key)));
        }
    }
    for p in &settings.peers {
        let nets: BTreeSet<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
        let now = running.iter().find(|r| r.public_key == p.public_key);
        let unchanged = now.is_some_and(|r| {
            r.allowed_ips.iter().cloned().collect::<BTreeSet<_>>() == nets
                && r.keepalive == p.persistent_keepalive.unwrap_or(0)
                && (p.endpoint.is_none() || r.endpoint == p.endpoint)
        }) && p.preshared_key_file.is_none();
        if unchanged {
            continue;
        }
        let key = keys::decode(&p.public_key).map_err(|why| format!("a peer's key {why}"))?;
        request.push_str(&format!(
            "public_key={}\nreplace_allowed_ips=true\n",
            uapi::hex(&key)
        ));
        for net in &nets {
            request.push_str(&format!("allowed_ip={net}\n"));
        }
        if let Some(e) = p.endpoint {
            request.push_str(&format!("endpoint={e}\n"));
        }
        request.push_str(&format!(
            "persistent_keepalive_interval={}\n",
            p.persistent_keepalive.unwrap_or(0)
        ));
        if let Some(f) = &p.preshared_key_file {
            request.push_str(&format!(
                "preshared_key={}\n",
                uapi::hex(&keys::read_file(f)?)
            ));
        }
    }
    if !request.is_empty() {
        uapi::set(&name, &request)?;
    }
    // Routes: the new peers' nets to the tunnel, the gone ones' away.
    let netns = names::netns_name(chain, function);
    let new_nets: BTreeSet<String> = settings
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().map(|n| n.to_string()))
        .collect();
    for net in &new_nets {
        ip(&netns, &["route", "replace", net, "dev", &name])?;
    }
    for net in old_nets.difference(&new_nets) {
        ip(&netns, &["route", "del", net, "dev", &name])?;
    }
    Ok(())
}

fn ip(netns: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .output()
        .map_err(|e| format!("run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip -n {netns} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
