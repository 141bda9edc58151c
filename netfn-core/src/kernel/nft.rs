//! Loading an nftables ruleset (and its sysctls) inside a namespace, and reading its named
//! counters and sets: a kind's kernel-mode form ([`crate::function::FunctionConfig::kernel_form`]), or
//! what a kind counts with nftables in its namespace. `nft -f -` reads the ruleset from stdin
//! and applies it as one transaction, so a reload replaces the old rules atomically for every
//! packet. The `nft` binary (Debian: nftables) is an explicit dependency of kernel-mode chains
//! with such kinds; `cargo xtask setup` installs it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};

use super::netns;

/// Why a ruleset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(
        "cannot run `nft` ({0}): kernel-mode firewalls need nftables; install it (apt-get install nftables, or cargo xtask setup)"
    )]
    Spawn(std::io::Error),
    #[error("nft in namespace {netns}: {message}")]
    Refused { netns: String, message: String },
    #[error("cannot set {key} = {value} in namespace {netns}: {source}")]
    Sysctl {
        netns: String,
        key: String,
        value: String,
        source: std::io::Error,
    },
}

/// Writes `sysctls` (key under /proc/sys → value) inside namespace `netns`.
pub fn sysctls(netns: &str, sysctls: &[(String, String)]) -> Result<(), NftError> {
    if sysctls.is_empty() {
        return Ok(());
    }
    let ns = netns::open(netns)?;
    netns::run_in(&ns, netns, || {
        for (key, value) in sysctls {
            netns::write_sysctl(key, value).map_err(|source| NftError::Sysctl {
                netns: netns.to_string(),
                key: key.clone(),
                value: value.clone(),
                source,
            })?;
        }
        Ok(())
    })?
}

/// Loads `ruleset` (nft syntax) inside namespace `netns` (a name under /run/netns).
pub fn load(netns: &str, ruleset: &str) -> Result<(), NftError> {
    nft_in(netns, &["-f", "-"], Some(ruleset)).map(|_| ())
}

/// The named counters of table `family table` inside namespace `netns`: name → (packets,
/// bytes).
pub fn counters(
    netns: &str,
    family: &str,
    table: &str,
) -> Result<BTreeMap<String, (u64, u64)>, NftError> {
    let out = nft_in(
        netns,
        &["-j", "list", "counters", "table", family, table],
        None,
    )?;
    let json: serde_json::Value = serde_json::from_slice(&out).map_err(|e| NftError::Refused {
        netns: netns.to_string(),
        message: format!("nft printed JSON netfn cannot read: {e}"),
    })?;
    Ok(json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let c = item.get("counter")?;
            Some((
                c["name"].as_str()?.to_string(),
                (c["packets"].as_u64()?, c["bytes"].as_u64()?),
            ))
        })
        .collect())
}

/// The elements of set `set` of table `family table` inside namespace `netns`, as nft prints
/// them in JSON (a concatenation is `{"concat": [...]}`); `None` when the table or the set does
/// not exist (yet).
pub fn set_elements(
    netns: &str,
    family: &str,
    table: &str,
    set: &str,
) -> Result<Option<Vec<serde_json::Value>>, NftError> {
    let out = match nft_in(netns, &["-j", "list", "set", family, table, set], None) {
        Ok(out) => out,
        Err(NftError::Refused { message, .. }) if message.contains("No such file or directory") => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let json: serde_json::Value = serde_json::from_slice(&out).map_err(|e| NftError::Refused {
        netns: netns.to_string(),
        message: format!("nft printed JSON netfn cannot read: {e}"),
    })?;
    Ok(Some(
        json["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item.get("set"))
            .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
            .collect(),
    ))
}

/// Runs `nft ARGS…` inside namespace `netns` with `input` on its stdin; returns its stdout.
fn nft_in(netns: &str, args: &[&str], input: Option<&str>) -> Result<Vec<u8>, NftError> {
    let ns = netns::open(netns)?;
    let raw = ns.as_raw_fd();
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the child only calls setns(2), which is async-signal-safe,
    // on a descriptor the parent keeps open until the child has been waited for.
    unsafe {
        cmd.pre_exec(move || {
            let fd = std::os::fd::BorrowedFd::borrow_raw(raw);
            setns(fd, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(NftError::Spawn)?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        // A write error shows up as nft's own failure below.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    drop(ns);
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(NftError::Refused {
            netns: netns.to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
