//! The agent's control protocol: one JSON object per line over the Unix socket, one reply line
//! per request line.
//!
//! ```text
//! → {"cmd":"ping"}     ← {"reply":"pong","pid":4242,"version":"0.1.0","http":"127.0.0.1:9847"}
//! → {"cmd":"status"}   ← {"reply":"status","chains":[{"chain":"edge","up":true,"probe":{…},…}]}
//! → {"cmd":"rescan"}   ← {"reply":"rescanned","chains":2}
//! ```
//!
//! A line the agent cannot parse gets `{"reply":"error","message":"…"}`.

use serde::{Deserialize, Serialize};

use crate::chain::state::Phase;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Is an agent there, and who is it?
    Ping,
    /// Per-chain prober results and runtime tasks.
    Status,
    /// Read the state directory now (after `up`, `down` or `apply`), not at the next rescan.
    Rescan,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Pong(Pong),
    Status { chains: Vec<ChainReport> },
    Rescanned { chains: usize },
    Error { message: String },
}

/// Who answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub pid: u32,
    pub version: String,
    /// The address /metrics is served on.
    pub http: String,
}

/// What the agent knows of one chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainReport {
    pub chain: String,
    pub phase: Phase,
    pub fastpath: String,
    /// Recorded as up and, once probed, the last probe succeeded (as `netfn_chain_up`).
    pub up: bool,
    /// `None` while probing is off or before the first probe.
    pub probe: Option<ProbeReport>,
    pub tasks: Vec<TaskReport>,
}

/// The prober's view of one chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The last probe came back.
    pub success: bool,
    /// Round-trip time of the last successful probe.
    pub rtt_seconds: Option<f64>,
    /// Probes sent since the agent adopted the chain.
    pub sent: u64,
    pub failed: u64,
    /// Failed probes since the last success.
    pub consecutive_failures: u64,
    /// Unix time (seconds) of the last probe.
    pub last_probe_unix: u64,
    /// Why the last probe failed.
    pub error: Option<String>,
}

/// One runtime task of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task: String,
    pub restarts: u64,
    /// Why it last failed, if it did.
    pub last_error: Option<String>,
}
