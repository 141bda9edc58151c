//! The validated chain file: everything here has passed every check.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::function::FunctionConfig;

/// One chain file, validated.
#[derive(Debug, Clone)]
pub struct ChainFile {
    pub path: PathBuf,
    pub chains: Vec<ChainSpec>,
    /// Warnings about the file (a firewall rule another one shadows): worth printing, not wrong.
    pub warnings: super::diag::Diagnostics,
}

impl ChainFile {
    pub fn chain(&self, name: &str) -> Option<&ChainSpec> {
        self.chains.iter().find(|c| c.name == name)
    }
}

/// How packets move between the functions of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FastPath {
    /// Plain IP forwarding in every function namespace.
    #[default]
    Kernel,
    /// eBPF on TC ingress, `bpf_redirect_peer` from hop to hop.
    Tc,
    /// eBPF XDP, redirect through a devmap.
    Xdp,
}

impl fmt::Display for FastPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FastPath::Kernel => "kernel",
            FastPath::Tc => "tc",
            FastPath::Xdp => "xdp",
        })
    }
}

/// One chain: ingress endpoint → functions… → egress endpoint.
#[derive(Debug, Clone)]
pub struct ChainSpec {
    pub name: String,
    pub fastpath: FastPath,
    /// Pool of the /31 point-to-point links between consecutive functions.
    pub transit: Ipv4Net,
    pub ingress: EndpointSpec,
    pub egress: EndpointSpec,
    pub functions: Vec<FunctionSpec>,
}

/// Where traffic enters or leaves a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// The endpoint's address and subnet (e.g. 10.1.0.2/24).
    pub address: Ipv4Net,
    /// The address of the neighbouring function on the endpoint's subnet.
    pub gateway: Ipv4Addr,
    /// An existing namespace that the operator names; `None` means netfn creates one.
    pub namespace: Option<String>,
}

/// One function of a chain.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub name: String,
    pub kind: String,
    pub config: Arc<dyn FunctionConfig>,
}
