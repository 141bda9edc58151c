//! `netfn status`: the record of each chain, checked against the kernel.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::chain::state::{self, ChainState, Phase, StateError};
use crate::function::{FunctionMetricsContext, Registry};
use crate::kernel::netlink::{LinkInfo, Netlink, fmt_mac};
use crate::kernel::netns;
use crate::plan::{ChainPlan, HopRole};

#[derive(Debug, Clone, Serialize)]
pub struct ChainStatus {
    pub chain: String,
    pub phase: Phase,
    pub fastpath: String,
    pub source: String,
    /// True when every hop's namespace and interfaces exist and are up.
    pub healthy: bool,
    pub hops: Vec<HopStatus>,
    /// The build of the eBPF programs that run the chain (see [`crate::ebpf::object_build`]),
    /// when its record names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub programs: Option<String>,
    /// Whether those are this netfn's programs (false after an upgrade, until `netfn apply`).
    pub programs_current: bool,
    /// The functions' processes (a userspace VPN endpoint) that run another netfn binary than
    /// this one (after an upgrade, until `netfn apply` starts them again on it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_binaries: Vec<crate::chain::processes::OtherBinary>,
    /// What the host agent knows (prober, runtime tasks), when an agent runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<crate::agent::ChainReport>,
}

impl ChainStatus {
    /// Adds the agent's report: a chain whose probe fails is not healthy.
    pub fn attach_agent_report(&mut self, report: Option<crate::agent::ChainReport>) {
        if let Some(r) = &report
            && !r.up
        {
            self.healthy = false;
        }
        self.agent = report;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HopStatus {
    pub name: String,
    pub kind: String,
    pub netns: String,
    /// Whether the namespace is there (its name under /run/netns).
    pub netns_present: bool,
    /// Why its interfaces could not be read although it is there: it could not be entered (the
    /// name no longer holds a namespace, or setns failed), or netlink failed in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_error: Option<String>,
    pub interfaces: Vec<InterfaceStatus>,
    /// What the function's kind reports (rules, connections…), as label and value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub mac: String,
    pub planned_address: Ipv4Net,
    pub addresses: Vec<Ipv4Net>,
    pub present: bool,
    pub up: bool,
    pub carrier: bool,
    /// Packets and bytes received, from the per-interface eBPF counter (kernel-mode chains).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_packets: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    /// What the fast path did with the packets that arrived here (tc/xdp chains, function hops).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fastpath: Option<PathCounters>,
}

/// Fast-path counters of one function in one direction.
#[derive(Debug, Clone, Serialize)]
pub struct PathCounters {
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub to_stack_packets: u64,
    /// Dropped packets by reason (only reasons that occurred).
    pub drops: BTreeMap<&'static str, u64>,
}

impl PathCounters {
    /// The counters of one direction, drop reasons named by the forwarder and by the function's
    /// kind (`kind_reasons`, for the slots from `KIND_DROP_BASE` on).
    fn new(c: &crate::ebpf::FnCounters, kind_reasons: &'static [&'static str]) -> Self {
        let kind_drops = c.drops.iter().skip(netfn_common::KIND_DROP_BASE);
        PathCounters {
            forwarded_packets: c.packets,
            forwarded_bytes: c.bytes,
            to_stack_packets: c.to_stack,
            drops: crate::ebpf::DROP_REASON_NAMES
                .iter()
                .zip(c.drops.iter())
                .chain(kind_reasons.iter().zip(kind_drops))
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| (*r, *n))
                .collect(),
        }
    }
}

/// A chain's eBPF counters: per interface (packets, bytes received, by ifindex), and the fast
/// path's per-function counters for tc/xdp chains.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub interfaces: BTreeMap<u32, (u64, u64)>,
    pub fastpath: Option<crate::ebpf::FastpathCounters>,
}

/// Reads a chain's counters from its pinned eBPF maps (empty if it has none).
pub fn counters(record: &ChainState) -> Result<Counters, crate::ebpf::EbpfError> {
    let dir = crate::plan::names::chain_bpf_dir(record.chain());
    let interfaces = if record.interface_counters {
        crate::ebpf::read_counters(&dir)?
            .into_iter()
            .map(|(k, v)| (k, (v.packets, v.bytes)))
            .collect()
    } else {
        BTreeMap::new()
    };
    let fastpath = match record.plan.fastpath {
        crate::spec::FastPath::Kernel => None,
        _ => Some(crate::ebpf::read_function_counters(&dir)?),
    };
    Ok(Counters {
        interfaces,
        fastpath,
    })
}

/// The status of one recorded chain.
pub fn chain_status(
    record: &ChainState,
    rt: &tokio::runtime::Handle,
    counters: &Counters,
    kinds: &Registry,
) -> ChainStatus {
    let plan = &record.plan;
    let hops: Vec<HopStatus> = (0..plan.hops.len())
        .map(|h| hop_status(plan, h, rt, counters, kinds))
        .collect();
    let healthy = record.phase == Phase::Up
        && hops.iter().all(|h| {
            h.netns_present
                && h.netns_error.is_none()
                && h.interfaces.iter().all(|i| i.present && i.up && i.carrier)
        });
    ChainStatus {
        chain: plan.chain.clone(),
        phase: record.phase,
        fastpath: plan.fastpath.to_string(),
        source: record.source.display().to_string(),
        healthy,
        hops,
        programs: record.programs.clone(),
        programs_current: record.programs.is_some()
            && record.programs == crate::ebpf::object_build().ok(),
        other_binaries: plan
            .hops
            .iter()
            .filter(|h| matches!(h.role, HopRole::Function { .. }))
            .filter_map(|h| crate::chain::processes::other_binary(&plan.chain, &h.name))
            .collect(),
        agent: None,
    }
}

fn hop_status(
    plan: &ChainPlan,
    h: usize,
    rt: &tokio::runtime::Handle,
    counters: &Counters,
    kinds: &Registry,
) -> HopStatus {
    let hop = &plan.hops[h];
    let (kind, details) = match &hop.role {
        HopRole::Ingress => ("ingress".to_string(), Vec::new()),
        HopRole::Egress => ("egress".to_string(), Vec::new()),
        HopRole::Function { kind, .. } => {
            let bpf_dir = crate::plan::names::chain_bpf_dir(&plan.chain);
            let details = FunctionMetricsContext::of(plan, h, &bpf_dir)
                .zip(kinds.get(kind))
                .map(|(ctx, k)| k.status(&ctx))
                .unwrap_or_default();
            (kind.clone(), details)
        }
    };
    let kind_reasons = kinds.get(&kind).map_or(&[][..], |k| k.drop_reasons());
    let (netns_present, netns_error, (links, addrs)) = match read_netns(&hop.netns.name, rt) {
        Ok(Some(live)) => (true, None, live),
        Ok(None) => (false, None, Default::default()),
        Err(why) => (true, Some(why), Default::default()),
    };
    let interfaces = plan
        .interfaces_of(h)
        .map(|end| {
            let link: Option<&LinkInfo> = links.iter().find(|l| l.name == end.ifname);
            let index = link.map(|l| l.index);
            InterfaceStatus {
                name: end.ifname.clone(),
                ifindex: end.ifindex,
                mac: fmt_mac(&end.mac),
                planned_address: end.address,
                addresses: addrs
                    .iter()
                    .filter(|(i, _)| Some(*i) == index)
                    .map(|(_, a)| *a)
                    .collect(),
                present: link.is_some(),
                up: link.is_some_and(|l| l.up),
                carrier: link.is_some_and(|l| l.lower_up),
                rx_packets: counters.interfaces.get(&end.ifindex).map(|c| c.0),
                rx_bytes: counters.interfaces.get(&end.ifindex).map(|c| c.1),
                fastpath: fastpath_of(plan, h, end, counters, kind_reasons),
            }
        })
        .collect();
    HopStatus {
        name: hop.name.clone(),
        kind,
        netns: hop.netns.name.clone(),
        netns_present,
        netns_error,
        interfaces,
        details,
    }
}

/// The links and addresses netlink reports in a namespace.
type Live = (Vec<LinkInfo>, Vec<(u32, Ipv4Net)>);

/// Reads what namespace `name` holds: `Ok(None)` when it is not there, `Err(why)` when it is
/// there but could not be entered or read (a missing namespace and an unreadable one call for
/// different repairs).
fn read_netns(name: &str, rt: &tokio::runtime::Handle) -> Result<Option<Live>, String> {
    let fd = match netns::open(name) {
        Ok(fd) => fd,
        Err(netns::NetnsError::Missing { .. }) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let read = netns::run_in(&fd, name, || {
        let nl = Netlink::here(rt).map_err(|e| e.to_string())?;
        rt.block_on(async {
            let links = nl.links().await.map_err(|e| e.to_string())?;
            Ok((links, nl.addresses().await.map_err(|e| e.to_string())?))
        })
    });
    match read {
        Ok(live) => live.map(Some),
        Err(e) => Err(e.to_string()),
    }
}

/// The fast-path counters of function hop `h` for the direction that arrives on `end`.
fn fastpath_of(
    plan: &ChainPlan,
    h: usize,
    end: &crate::plan::LinkEnd,
    counters: &Counters,
    kind_reasons: &'static [&'static str],
) -> Option<PathCounters> {
    if !matches!(plan.hops[h].role, HopRole::Function { .. }) {
        return None;
    }
    let f = counters.fastpath.as_ref()?.function(plan, h)?;
    // Packets arriving on the side facing ingress travel toward egress (forward).
    let forward = end.hop > 0
        && plan
            .links
            .get(h - 1)
            .is_some_and(|l| l.inn.ifindex == end.ifindex);
    Some(PathCounters::new(
        if forward { &f.forward } else { &f.reverse },
        kind_reasons,
    ))
}

/// Every recorded chain, or just `only`, with the records that could not be read: when every
/// chain is asked for, one chain's damaged record hides none of the others.
pub fn records(only: Option<&str>) -> Result<(Vec<ChainState>, Vec<StateError>), StateError> {
    if let Some(c) = only {
        return Ok((state::load(c)?.into_iter().collect(), Vec::new()));
    }
    let mut out = Vec::new();
    let mut damaged = Vec::new();
    for name in state::list()? {
        match state::load(&name) {
            Ok(r) => out.extend(r),
            Err(e) => damaged.push(e),
        }
    }
    Ok((out, damaged))
}
