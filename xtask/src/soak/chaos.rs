//! The chaos loop's steps, chosen by a seeded generator (the same seed, the same sequence of
//! steps): insert, remove and reorder functions of the three streaming chains with
//! `netfn apply`; SIGKILL an apply of the fourth chain mid-way and recover it; SIGKILL the
//! chaos agent and start it again; take the fourth chain down and up again (in the next fast
//! path mode). Each step is an [`Event`] in the report; a step that fails adds an error.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::lab::{self, Chain};
use super::traffic;
use crate::bench::chain::netfn_command;

/// splitmix64: small, seedable, good enough to pick steps.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One step the loop took.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Seconds since the chaos began.
    pub at_seconds: f64,
    pub step: String,
    pub chain: String,
    pub detail: String,
    pub ok: bool,
    pub millis: f64,
}

/// The changes to a streaming chain's functions.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    Insert,
    Remove,
    Reorder,
}

/// Applies a change to `chain` (its functions and its file), with `netfn apply`. On failure
/// the chain keeps its functions (apply rolls back).
pub fn change(
    netfn: &Path,
    dir: &Path,
    chain: &mut Chain,
    what: Change,
    rng: &mut Rng,
) -> Result<String> {
    let before = chain.functions.clone();
    let forwards: Vec<usize> = (0..chain.functions.len())
        .filter(|&i| chain.functions[i].starts_with('f'))
        .collect();
    let detail = match what {
        Change::Insert if forwards.len() < 4 => {
            let name = format!("f{}", chain.next_forward);
            chain.next_forward += 1;
            let at = rng.below(chain.functions.len() + 1);
            chain.functions.insert(at, name.clone());
            format!("insert {name} at {at}")
        }
        Change::Remove if !forwards.is_empty() => {
            let i = forwards[rng.below(forwards.len())];
            format!("remove {}", chain.functions.remove(i))
        }
        _ => {
            // Reorder (also what an insert into a full chain or a removal from a chain without
            // forward functions becomes): a shuffle that changes the order.
            let n = chain.functions.len();
            for _ in 0..8 {
                for i in (1..n).rev() {
                    let j = rng.below(i + 1);
                    chain.functions.swap(i, j);
                }
                if chain.functions != before {
                    break;
                }
            }
            format!("reorder the middle to {}", chain.functions.join(","))
        }
    };
    let file = chain.write(dir)?;
    if let Err(e) = lab::netfn(netfn, &["apply", &file.to_string_lossy()]) {
        chain.functions = before;
        chain.write(dir)?;
        return Err(e.context(detail));
    }
    Ok(detail)
}

/// Starts `netfn apply` of `chain` with one function more, SIGKILLs it `delay_ms` after its
/// record says `applying`, then recovers: `netfn up` of the file finishes what the killed
/// apply left (an apply is refused on an interrupted record), and the chain must carry traffic
/// again. Returns what happened.
pub fn kill_apply(
    netfn: &Path,
    dir: &Path,
    chain: &mut Chain,
    delay_ms: u64,
    port: u16,
) -> Result<String> {
    // Insert a forward function at the middle's start, or (the chain has four) remove the last.
    let forwards = chain
        .functions
        .iter()
        .filter(|f| f.starts_with('f'))
        .count();
    let what = if forwards >= 4 {
        let i = chain
            .functions
            .iter()
            .rposition(|f| f.starts_with('f'))
            .context("no forward function")?;
        format!("removing {}", chain.functions.remove(i))
    } else {
        let name = format!("f{}", chain.next_forward);
        chain.next_forward += 1;
        chain.functions.insert(0, name.clone());
        format!("inserting {name}")
    };
    let file = chain.write(dir)?;
    let record = format!("/run/netfn/chains/{}.json", chain.name);
    let applying = || {
        std::fs::read_to_string(&record)
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
            .is_some_and(|r| r["phase"] == "applying")
    };
    let mut child = netfn_command(netfn)
        .args(["apply", &file.to_string_lossy()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn netfn apply")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !applying() && Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_millis(delay_ms));
    let _ = child.kill();
    let status = child.wait().context("wait for netfn apply")?;
    let mid_way = applying();
    let killed = std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL);
    if !mid_way && !killed && !status.success() {
        bail!("apply {what} failed on its own ({status}) before the kill");
    }
    let mut detail = format!(
        "apply {what} killed {delay_ms} ms into it: {}",
        if mid_way {
            "landed mid-way"
        } else if killed {
            "landed while the record said up (before or after the change)"
        } else {
            "apply had finished"
        }
    );
    if mid_way {
        // A second apply must refuse (the record is not `up`) and say what to do.
        match lab::netfn(netfn, &["apply", &file.to_string_lossy()]) {
            Ok(_) => bail!("{detail}; a second apply on the interrupted record succeeded"),
            Err(e) => detail.push_str(&format!(
                "; apply after it refused: {}",
                first_line(&format!("{e:#}"))
            )),
        }
        lab::netfn(netfn, &["up", &file.to_string_lossy()])
            .map_err(|e| e.context(format!("{detail}; recovery by up failed")))?;
        detail.push_str("; up finished it");
    }
    let (sent, arrived) = traffic::burst(&chain.forward_path(), port, 300)?;
    if arrived == 0 {
        bail!("{detail}; afterwards the chain carried none of {sent} datagrams");
    }
    detail.push_str(&format!("; then carried {arrived}/{sent}"));
    Ok(detail)
}

/// `netfn down` then `netfn up` of `chain` in its next fast path mode; checks it carries
/// traffic again.
pub fn down_up(netfn: &Path, dir: &Path, chain: &mut Chain, port: u16) -> Result<String> {
    lab::netfn(netfn, &["down", &chain.name])?;
    // The agents name the chain on their command lines: processes are checked at the end.
    let left = lab::leftovers(&chain.name, false);
    if !left.is_empty() {
        bail!("after down: left {}", left.join(", "));
    }
    chain.mode = match chain.mode.as_str() {
        "kernel" => "tc",
        "tc" => "xdp",
        _ => "kernel",
    }
    .to_string();
    let file = chain.write(dir)?;
    lab::netfn(netfn, &["up", &file.to_string_lossy()])?;
    let (sent, arrived) = traffic::burst(&chain.forward_path(), port, 300)?;
    if arrived == 0 {
        bail!(
            "up in {} mode, then none of {sent} datagrams crossed",
            chain.mode
        );
    }
    Ok(format!(
        "down, up in {} mode, then carried {arrived}/{sent}",
        chain.mode
    ))
}

/// The first line of a message.
pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_steps() {
        let (mut a, mut b, mut c) = (Rng::new(7), Rng::new(7), Rng::new(8));
        let xs: Vec<usize> = (0..32).map(|_| a.below(10)).collect();
        let ys: Vec<usize> = (0..32).map(|_| b.below(10)).collect();
        let zs: Vec<usize> = (0..32).map(|_| c.below(10)).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        assert!(xs.iter().all(|&x| x < 10));
    }
}
