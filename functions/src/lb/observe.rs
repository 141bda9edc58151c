//! What a load balancer shows in `netfn status` and exports as metrics, read at scrape time.
//! Fast path, from its pinned maps: per backend (packets, bytes, new flows, health, active
//! flows), per service (the sums of its backends) and for the function (flows balanced,
//! rebalanced, evicted; packets answered from a VIP). Kernel mode, from its nftables table:
//! per backend its health (the set of backends taken out), per service the flows its rule
//! balanced (Linux conntrack carries the rest of a flow's packets unseen by the rules).

use std::collections::HashMap;

use aya::maps::{Array, MapData};
use netfn_common::lb::{
    BACKEND_DOWN, Backend, BackendCounters, BackendKey, LB_BACKENDS_MAP, LB_FLOWS_MAP,
    LB_STATS_MAP, LbConf, LbFlowSet, LbStats, VipPort,
};
use netfn_core::function::{FunctionMetricsContext, KindMetricsError, MetricFamily};
use netfn_core::spec::FastPath;

use super::config::LbSettings;
use super::counters;
use super::stage::{backend_key, timeouts, vip_port};
use crate::maps::{map, monotonic_ns, read_per_cpu, stage_dir};

/// Largest connection table whose flows a scrape counts per backend.
const COUNT_LIMIT: u32 = 1 << 20;

/// One backend as a scrape sees it.
struct BackendView {
    service: String,
    id: String,
    weight: u32,
    up: bool,
    /// What the fast path counted (none in kernel mode).
    counters: Option<BackendCounters>,
    active: Option<u64>,
}

fn settings(ctx: &FunctionMetricsContext<'_>) -> Option<LbSettings> {
    ctx.settings.parse().ok()
}

/// Every backend of the recorded settings, with what the live instance counted (fast path) or
/// the live ruleset holds (kernel mode); and per service, what its backends that left counted
/// ([`counters`]).
fn backends(
    ctx: &FunctionMetricsContext<'_>,
    s: &LbSettings,
) -> (Vec<BackendView>, Vec<BackendCounters>) {
    if ctx.fastpath == FastPath::Kernel {
        let down = super::nft::down_backends(ctx.netns).unwrap_or_default();
        let views = s
            .services
            .iter()
            .flat_map(|service| {
                service.backends.iter().map(|b| BackendView {
                    service: service.label(),
                    id: b.id(),
                    weight: b.weight,
                    up: !down.contains(&b.id()),
                    counters: None,
                    active: None,
                })
            })
            .collect();
        return (views, Vec::new());
    }
    let dir = stage_dir(ctx);
    let totals = dir
        .as_ref()
        .and_then(|d| counters::read(d).ok())
        .unwrap_or_default();
    let counters = totals.backends;
    let flags: Vec<u32> = dir
        .as_ref()
        .and_then(|d| map(&d.join(LB_BACKENDS_MAP)).ok())
        .and_then(|m| Array::<MapData, Backend>::try_from(m).ok())
        .map(|a| {
            (0..a.len())
                .map(|i| a.get(&i, 0).map_or(0, |b| b.flags))
                .collect()
        })
        .unwrap_or_default();
    let active = dir
        .as_ref()
        .and_then(|d| active_flows(&d.join(LB_FLOWS_MAP), &timeouts(s)).ok());
    let mut out = Vec::new();
    let mut number = 0usize;
    for service in &s.services {
        for b in &service.backends {
            out.push(BackendView {
                service: service.label(),
                id: b.id(),
                weight: b.weight,
                up: flags.get(number).is_none_or(|f| f & BACKEND_DOWN == 0),
                counters: Some(counters.get(number).copied().unwrap_or_default()),
                active: active.as_ref().map(|a| {
                    a.get(&(backend_key(service, b), vip_port(service)))
                        .copied()
                        .unwrap_or_default()
                }),
            });
            number += 1;
        }
    }
    (out, totals.services)
}

/// One service as a scrape sees it.
struct ServiceView {
    label: String,
    /// Its backends up, of all.
    up: usize,
    backends: usize,
    /// Packets and bytes to its backends (fast path only) and the flows it balanced.
    packets: Option<u64>,
    bytes: Option<u64>,
    flows: u64,
}

/// Per service, in the settings' order: the sums of its backends' counters and its own
/// (`own`: what its backends that left counted) on the fast path, or its rule's counter
/// (kernel mode).
fn services(
    ctx: &FunctionMetricsContext<'_>,
    s: &LbSettings,
    (backends, own): &(Vec<BackendView>, Vec<BackendCounters>),
) -> Vec<ServiceView> {
    let kernel_flows = (ctx.fastpath == FastPath::Kernel)
        .then(|| super::nft::service_flows(ctx.netns, s).unwrap_or_default());
    let mut rest = backends.as_slice();
    s.services
        .iter()
        .enumerate()
        .map(|(i, service)| {
            let (mine, after) = rest.split_at(service.backends.len().min(rest.len()));
            rest = after;
            let sum = |f: fn(&BackendCounters) -> u64| {
                mine.iter()
                    .map(|b| b.counters.as_ref().map(f))
                    .sum::<Option<u64>>()
                    .map(|n| n + own.get(i).map_or(0, f))
            };
            ServiceView {
                label: service.label(),
                up: mine.iter().filter(|b| b.up).count(),
                backends: mine.len(),
                packets: sum(|c| c.packets),
                bytes: sum(|c| c.bytes),
                flows: match &kernel_flows {
                    Some(flows) => flows.get(i).copied().unwrap_or_default(),
                    None => sum(|c| c.new_flows).unwrap_or_default(),
                },
            }
        })
        .collect()
}

/// Tracked flows per backend and service (by identity: a flow's backend number may be of an
/// earlier numbering), unless the table is larger than [`COUNT_LIMIT`]. Whole slots only, and
/// not ones idle past their timeout in `conf` ([`timeouts`]; the stage's clock is
/// `CLOCK_MONOTONIC`): a slot holds its ended flow until a new flow takes its place.
fn active_flows(
    path: &std::path::Path,
    conf: &LbConf,
) -> Result<HashMap<(BackendKey, VipPort), u64>, KindMetricsError> {
    let table: Array<MapData, LbFlowSet> = Array::try_from(map(path)?)?;
    if table.len() > COUNT_LIMIT / netfn_common::lb::LB_FLOW_WAYS as u32 {
        return Err("connection table too large to count".into());
    }
    let now = monotonic_ns()?;
    let mut per = HashMap::new();
    for set in table.iter().filter_map(Result::ok) {
        for flow in set.flows.iter() {
            if !flow.is_whole() || flow.ended(conf, now) {
                continue;
            }
            *per.entry((flow.backend_key(), flow.service())).or_default() += 1;
        }
    }
    Ok(per)
}

fn stats(ctx: &FunctionMetricsContext<'_>) -> Option<LbStats> {
    let dir = stage_dir(ctx)?;
    read_per_cpu::<LbStats>(&dir.join(LB_STATS_MAP), |t, v| {
        t.balanced += v.balanced;
        t.ct_hits += v.ct_hits;
        t.evicted += v.evicted;
        t.rebalanced += v.rebalanced;
        t.replies += v.replies;
    })
    .ok()?
    .into_iter()
    .next()
}

pub fn metrics(ctx: &FunctionMetricsContext<'_>) -> Result<Vec<MetricFamily>, KindMetricsError> {
    let Some(s) = settings(ctx) else {
        return Ok(Vec::new());
    };
    let mut up = ctx.gauge(
        "netfn_load_balancer_backend_up",
        "1 if the backend takes new flows' share (health checks pass), else 0.",
    );
    let mut weight = ctx.gauge(
        "netfn_load_balancer_backend_weight",
        "The backend's configured weight.",
    );
    let mut packets = ctx.counter(
        "netfn_load_balancer_backend_packets_total",
        "Packets sent to the backend.",
    );
    let mut bytes = ctx.counter(
        "netfn_load_balancer_backend_bytes_total",
        "Bytes sent to the backend.",
    );
    let mut flows = ctx.counter(
        "netfn_load_balancer_backend_new_flows_total",
        "Flows balanced to the backend.",
    );
    let mut active = ctx.gauge(
        "netfn_load_balancer_backend_active_flows",
        "Tracked flows on the backend, not idle past their timeout (not exported for tables \
         above 1,048,576 flows).",
    );
    let backends = backends(ctx, &s);
    for b in &backends.0 {
        let labels = [("service", b.service.as_str()), ("backend", b.id.as_str())];
        up.sample_u64(&labels, u64::from(b.up));
        weight.sample_u64(&labels, u64::from(b.weight));
        if let Some(c) = &b.counters {
            packets.sample_u64(&labels, c.packets);
            bytes.sample_u64(&labels, c.bytes);
            flows.sample_u64(&labels, c.new_flows);
        }
        if let Some(a) = b.active {
            active.sample_u64(&labels, a);
        }
    }
    let mut service_up = ctx.gauge(
        "netfn_load_balancer_service_backends_up",
        "The service's backends that take new flows' share (health checks pass).",
    );
    let mut service_packets = ctx.counter(
        "netfn_load_balancer_service_packets_total",
        "Packets sent to the service's backends (fast path).",
    );
    let mut service_bytes = ctx.counter(
        "netfn_load_balancer_service_bytes_total",
        "Bytes sent to the service's backends (fast path).",
    );
    let mut service_flows = ctx.counter(
        "netfn_load_balancer_service_new_flows_total",
        "Flows balanced to the service's backends (kernel mode: also those dropped for want of \
         a backend).",
    );
    for v in services(ctx, &s, &backends) {
        let labels = [("service", v.label.as_str())];
        service_up.sample_u64(&labels, v.up as u64);
        if let (Some(p), Some(b)) = (v.packets, v.bytes) {
            service_packets.sample_u64(&labels, p);
            service_bytes.sample_u64(&labels, b);
        }
        service_flows.sample_u64(&labels, v.flows);
    }
    let mut out = vec![
        up.build(),
        weight.build(),
        packets.build(),
        bytes.build(),
        flows.build(),
        active.build(),
        service_up.build(),
        service_packets.build(),
        service_bytes.build(),
        service_flows.build(),
    ];
    if let Some(st) = stats(ctx) {
        out.extend(ctx.counters(&[
            (
                "netfn_load_balancer_flows_balanced_total",
                "Flows a table lookup balanced.",
                st.balanced,
            ),
            (
                "netfn_load_balancer_flows_rebalanced_total",
                "Tracked flows balanced again because their backend was down.",
                st.rebalanced,
            ),
            (
                "netfn_load_balancer_tracked_packets_total",
                "Packets of tracked flows toward backends.",
                st.ct_hits,
            ),
            (
                "netfn_load_balancer_reply_packets_total",
                "Backend answers sent back from a VIP.",
                st.replies,
            ),
            (
                "netfn_load_balancer_conntrack_evictions_total",
                "Flows pushed out of the connection table by new ones before they ended (the \
                 next packet of each was balanced again).",
                st.evicted,
            ),
        ]));
    }
    Ok(out)
}

pub fn status(ctx: &FunctionMetricsContext<'_>) -> Vec<(String, String)> {
    let Some(s) = settings(ctx) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    let backends = backends(ctx, &s);
    for v in services(ctx, &s, &backends) {
        let traffic = match (v.packets, v.bytes) {
            (Some(p), Some(b)) => format!(", {p} packets, {b} bytes"),
            _ => String::new(),
        };
        rows.push((
            v.label,
            format!(
                "{} of {} backends up: {} flows{traffic}",
                v.up, v.backends, v.flows
            ),
        ));
    }
    for b in &backends.0 {
        let state = if b.up { "up" } else { "down" };
        let counted = match &b.counters {
            Some(c) => format!(
                "{} flows, {} packets{}",
                c.new_flows,
                c.packets,
                b.active
                    .map(|a| format!(", {a} active"))
                    .unwrap_or_default()
            ),
            None => "kernel mode counts per service".to_string(),
        };
        rows.push((
            format!("{} → {}", b.service, b.id),
            format!("weight {}, {state}: {counted}", b.weight),
        ));
    }
    if let Some(st) = stats(ctx) {
        rows.push((
            "flows".into(),
            format!(
                "{} balanced, {} rebalanced, {} evicted, {} replies",
                st.balanced, st.rebalanced, st.evicted, st.replies
            ),
        ));
    }
    rows
}
