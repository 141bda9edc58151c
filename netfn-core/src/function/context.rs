//! What a kind's parts that run in a chain (its kernel form, its stage) know about the function
//! they run for: its interfaces, the chain's subnets and the path of the agent's chain probe.
//! Pure data, from the plan.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The UDP datagrams of the host agent's chain probe: from the ingress endpoint's address to the
/// egress endpoint's address and the probe port (the reply comes back the same way). A kind that
/// filters traffic lets exactly these through (and shows that it does), so a filtering function
/// never makes a healthy chain look down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePath {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub port: u16,
}

/// One function of a chain, as its kind's running parts see it.
#[derive(Debug, Clone)]
pub struct FunctionContext {
    pub chain: String,
    pub function: String,
    /// The interfaces facing the ingress side (packets from ingress arrive on them): one, or
    /// while an apply replaces a link, the old and the new one.
    pub ingress_ifs: Vec<String>,
    /// The interfaces facing the egress side.
    pub egress_ifs: Vec<String>,
    pub ingress_subnet: Ipv4Net,
    pub egress_subnet: Ipv4Net,
    pub probe: ProbePath,
    /// The function's recorded settings before this change, when an apply changes it in place
    /// (a new stage instance carries the live one's counters over by them: a backend, a rule
    /// keeps its count); `None` when the function starts.
    pub previous: Option<super::RecordedSettings>,
}
