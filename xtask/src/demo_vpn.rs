//! The demo's WireGuard part: a VPN endpoint `vpn` in front of examples/demo.toml, and a client
//! (wireguard-go, configured with `wg`, in the chain's ingress namespace) whose requests to the
//! web VIP cross the tunnel, the firewall and the load balancer.
//!
//! Keys are made for each run (`netfn wg genkey`, files of mode 600 in a directory of mode 700
//! that the demo removes), never committed: the chain file the demo brings up is written there
//! too, since it names the client's public key.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util;

/// The client's interface (in the ingress namespace; unique on the host: wireguard-go's UAPI
/// socket lives in the shared /var/run/wireguard).
const CLIENT_IF: &str = "nfdemo-wg";
const CLIENT_ADDR: &str = "10.99.0.2";
/// netfn's endpoint, as the client reaches it: the address `vpn` answers on at the ingress.
const ENDPOINT: &str = "10.20.1.1:51820";
const WEB_VIP: &str = "192.0.2.80";

/// The demo's keys and chain file, removed on drop.
pub struct VpnDemo {
    dir: PathBuf,
    /// The chain file the demo brings up: examples/demo.toml with `vpn` in front.
    pub file: PathBuf,
    vpn_public: String,
}

impl VpnDemo {
    /// Makes the keys and writes the chain file (`base` is examples/demo.toml's text).
    pub fn prepare(netfn: &Path, base: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("netfn-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("make {}", dir.display()))?;
        let mut demo = VpnDemo {
            file: dir.join("demo.toml"),
            dir,
            vpn_public: String::new(),
        };
        demo.vpn_public = demo.keypair(netfn, "vpn.key")?;
        let client_public = demo.keypair(netfn, "client.key")?;
        std::fs::write(&demo.file, with_vpn(base, &client_public)?)
            .with_context(|| format!("write {}", demo.file.display()))?;
        Ok(demo)
    }

    /// `netfn wg genkey` into `name` (mode 600); returns the public key.
    fn keypair(&self, netfn: &Path, name: &str) -> Result<String> {
        let out = Command::new(netfn)
            .args(["wg", "genkey"])
            .output()
            .context("run netfn wg genkey")?;
        if !out.status.success() {
            bail!(
                "netfn wg genkey failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let path = self.dir.join(name);
        std::fs::write(&path, &out.stdout).with_context(|| format!("write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", path.display()))?;
        let mut pubkey = Command::new(netfn)
            .args(["wg", "pubkey"])
            .stdin(std::fs::File::open(&path).context("read the key back")?)
            .output()
            .context("run netfn wg pubkey")?;
        if !pubkey.status.success() {
            bail!(
                "netfn wg pubkey failed: {}",
                String::from_utf8_lossy(&pubkey.stderr)
            );
        }
        pubkey.stdout.retain(|b| !b.is_ascii_whitespace());
        String::from_utf8(pubkey.stdout).context("netfn wg pubkey printed no text")
    }

    /// The client: wireguard-go in the ingress namespace, routed to the web VIP through the
    /// tunnel; `requests(n)` sends n requests to the VIP; then `wg show` on both ends.
    pub fn client(&self, netfn: &Path, requests: &dyn Fn(usize) -> Result<()>) -> Result<()> {
        let exec = |hop: &str, cmd: &[&str]| -> Result<()> {
            println!("$ netfn exec demo {hop} -- {}", cmd.join(" "));
            util::run(
                Command::new(netfn)
                    .args(["exec", "demo", hop, "--"])
                    .args(cmd),
            )
        };
        println!("$ netfn exec demo ingress -- wireguard-go -f {CLIENT_IF} &");
        let mut go = Command::new(netfn)
            .args([
                "exec",
                "demo",
                "ingress",
                "--",
                "wireguard-go",
                "-f",
                CLIENT_IF,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start wireguard-go in the ingress namespace (setup installs it)")?;
        let socket = PathBuf::from(format!("/var/run/wireguard/{CLIENT_IF}.sock"));
        let clear_route = Command::new(netfn)
            .args(["exec", "demo", "ingress", "--", "ip", "route", "show"])
            .arg(format!("{WEB_VIP}/32"))
            .output()
            .context("read the ingress namespace's route to the VIP")?;
        let clear_route = String::from_utf8_lossy(&clear_route.stdout)
            .trim()
            .to_string();
        let result = (|| -> Result<()> {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !socket.exists() {
                if Instant::now() > deadline {
                    bail!("wireguard-go made no socket {}", socket.display());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let key = self.dir.join("client.key").to_string_lossy().into_owned();
            exec(
                "ingress",
                &[
                    "wg",
                    "set",
                    CLIENT_IF,
                    "private-key",
                    &key,
                    "peer",
                    &self.vpn_public,
                    "endpoint",
                    ENDPOINT,
                    "allowed-ips",
                    &format!("{WEB_VIP}/32"),
                ],
            )?;
            exec(
                "ingress",
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{CLIENT_ADDR}/32"),
                    "dev",
                    CLIENT_IF,
                ],
            )?;
            exec("ingress", &["ip", "link", "set", CLIENT_IF, "up"])?;
            // The chain routes the VIP from here already (to `vpn`'s address, in the clear):
            // the tunnel takes it over while the client runs.
            exec(
                "ingress",
                &[
                    "ip",
                    "route",
                    "replace",
                    &format!("{WEB_VIP}/32"),
                    "dev",
                    CLIENT_IF,
                ],
            )?;
            requests(4)?;
            println!(
                "(the same requests, now from {CLIENT_ADDR} inside the tunnel: decrypted by `vpn`, then the firewall and the load balancer)"
            );
            exec("ingress", &["wg", "show", CLIENT_IF])?;
            // By name: `wg show` alone lists every userspace endpoint on the host (their UAPI
            // sockets share /var/run/wireguard).
            exec("vpn", &["wg", "show", &vpn_interface(netfn)?])
        })();
        let _ = go.kill();
        let _ = go.wait();
        let _ = std::fs::remove_file(&socket);
        // The VIP in the clear again (the tunnel's route went with its interface).
        if !clear_route.is_empty() {
            let _ = Command::new(netfn)
                .args(["exec", "demo", "ingress", "--", "ip", "route", "replace"])
                .args(clear_route.split_whitespace())
                .output();
        }
        result
    }
}

/// The interface of the demo's `vpn` function (`netfn status demo --json`).
fn vpn_interface(netfn: &Path) -> Result<String> {
    let out = Command::new(netfn)
        .args(["status", "demo", "--json"])
        .output()
        .context("run netfn status")?;
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("netfn status --json printed no JSON")?;
    status[0]["hops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["name"] == "vpn")
        .flat_map(|h| h["details"].as_array().cloned().unwrap_or_default())
        .find(|d| d[0] == "interface")
        .and_then(|d| d[1].as_str()?.split(' ').next().map(String::from))
        .context("netfn status shows no interface of `vpn`")
}

impl Drop for VpnDemo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `base` (examples/demo.toml) with the WireGuard endpoint `vpn` in front of `edge`, the client
/// with `client_public` its one peer.
fn with_vpn(base: &str, client_public: &str) -> Result<String> {
    let at = base
        .find("[[chain.function]]\nname = \"edge\"")
        .context("examples/demo.toml has no function `edge` to put `vpn` before")?;
    let mut text = base.to_string();
    text.insert_str(
        at,
        &format!(
            "# Added by `cargo xtask demo`, with keys made for this run: remote clients reach the\n\
             # chain through this WireGuard endpoint (the kernel's module where present).\n\
             [[chain.function]]\nname = \"vpn\"\nkind = \"wireguard\"\nside = \"ingress\"\n\
             private_key_file = \"vpn.key\"\nlisten_port = 51820\naddress = [\"10.99.0.1/24\"]\n\n\
             [[chain.function.peer]]\npublic_key = \"{client_public}\"\n\
             allowed_ips = [\"{CLIENT_ADDR}/32\"]\n\n"
        ),
    );
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::with_vpn;

    #[test]
    fn vpn_goes_in_front_of_edge() {
        let demo = include_str!("../../examples/demo.toml");
        let key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        let changed = with_vpn(demo, key).expect("demo.toml has `edge`");
        let at = |name: &str| changed.find(&format!("name = \"{name}\"")).expect(name);
        assert!(at("vpn") < at("edge") && at("edge") < at("middle"));
        assert!(changed.contains(key));
        assert!(with_vpn("[[chain]]\nname = \"x\"\n", key).is_err());
    }
}
