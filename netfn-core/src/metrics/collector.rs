//! The custom collector: at every scrape, the recorded chains and their pinned BPF maps.
//!
//! Nothing is polled in the background and nothing runs on the packet path: a scrape reads the
//! chain records (parsed again only when they changed), then each chain's pinned per-interface
//! counters (a per-CPU map, summed here), then asks each function's kind for its own metrics.
//!
//! Per function, `direction="forward"` counts what the function received on its `nf-in` (from
//! the ingress side) and `direction="reverse"` what it received on its `nf-out` (from the egress
//! side); see [`received`] for how each fast path mode is counted. Drops by reason come from the
//! fast path's per-function counters; a kernel-mode chain has none, and then no drop series is
//! exported at all (never zeros that nobody measured).

use std::path::PathBuf;
use std::sync::Arc;

use prometheus::IntCounter;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::MetricsError;
use super::family::Family;
use super::kind::{FunctionMetricsContext, check_kind_family};
use super::records::Records;
use crate::chain::state::{ChainState, Phase};
use crate::ebpf::{self, DROP_REASON_NAMES, FastpathCounters, FnCounters, IfCounters};
use crate::function::Registry;
use crate::plan::{ChainPlan, HopRole};
use crate::spec::FastPath;

pub const FUNCTION_PACKETS: &str = "netfn_function_packets_total";
pub const FUNCTION_BYTES: &str = "netfn_function_bytes_total";
pub const FUNCTION_DROPS: &str = "netfn_function_drops_total";
pub const CHAIN_UP: &str = "netfn_chain_up";

const PACKETS_HELP: &str = "Packets a function received, by direction (forward: on its nf-in from \
                            the ingress side; reverse: on its nf-out from the egress side).";
const BYTES_HELP: &str =
    "Bytes (Ethernet frames) a function received, by direction; see netfn_function_packets_total.";
const DROPS_HELP: &str = "Packets the fast path dropped at a function, by direction and reason.";
const UP_HELP: &str = "1 if the chain is up: recorded as up and, once the agent's prober has run, \
                       its last end-to-end probe succeeded.";

/// What the prober last saw of a chain: `Some(true)` for a successful probe, `None` before the
/// first probe (or with probing off).
pub trait ProbeView: Send + Sync {
    fn probe_ok(&self, chain: &str) -> Option<bool>;
}

/// The collector of per-chain and per-function metrics.
pub struct ChainCollector {
    records: Arc<Records>,
    kinds: Arc<Registry>,
    probes: Arc<dyn ProbeView>,
    bpf_root: PathBuf,
    scrape_errors: IntCounter,
    descs: Vec<Desc>,
}

impl ChainCollector {
    /// `bpf_root` is where chains pin their objects (`/sys/fs/bpf/netfn`); `scrape_errors` counts
    /// every chain or kind that could not be read in a scrape.
    pub fn new(
        records: Arc<Records>,
        kinds: Arc<Registry>,
        probes: Arc<dyn ProbeView>,
        bpf_root: PathBuf,
        scrape_errors: IntCounter,
    ) -> Result<Self, MetricsError> {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.to_string(),
                help.to_string(),
                labels.iter().map(|l| l.to_string()).collect(),
                Default::default(),
            )
            .map_err(MetricsError::from)
        };
        let fn_labels = ["chain", "function", "kind", "direction"];
        let descs = vec![
            desc(FUNCTION_PACKETS, PACKETS_HELP, &fn_labels)?,
            desc(FUNCTION_BYTES, BYTES_HELP, &fn_labels)?,
            desc(
                FUNCTION_DROPS,
                DROPS_HELP,
                &["chain", "function", "kind", "direction", "reason"],
            )?,
            desc(CHAIN_UP, UP_HELP, &["chain", "fastpath"])?,
        ];
        Ok(ChainCollector {
            records,
            kinds,
            probes,
            bpf_root,
            scrape_errors,
            descs,
        })
    }

    fn error(&self, chain: &str, what: &str, error: &dyn std::fmt::Display) {
        self.scrape_errors.inc();
        tracing::warn!(chain, "scrape: {what}: {error}");
    }

    /// Builds every family of one scrape.
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut out = Families::default();
        let loaded = match self.records.load() {
            Ok(l) => l,
            Err(e) => {
                self.error("-", "cannot read the chain records", &e);
                return Vec::new();
            }
        };
        for (chain, e) in &loaded.errors {
            self.error(chain, "cannot read the chain's record", e);
        }
        for record in &loaded.records {
            self.chain(record, &mut out);
        }
        out.finish()
    }

    fn chain(&self, record: &ChainState, out: &mut Families) {
        let plan = &record.plan;
        let chain = plan.chain.as_str();
        let recorded_up = record.phase == Phase::Up;
        let up = recorded_up && self.probes.probe_ok(chain).unwrap_or(true);
        let fastpath = plan.fastpath.to_string();
        out.up.sample(
            &[("chain", chain), ("fastpath", &fastpath)],
            f64::from(u8::from(up)),
        );
        if !recorded_up {
            return;
        }
        let bpf_dir = self.bpf_root.join(chain);
        let counters = if record.interface_counters {
            match ebpf::read_counters(&bpf_dir) {
                Ok(c) => Some(c),
                Err(e) => {
                    self.error(chain, "cannot read the interface counters", &e);
                    None
                }
            }
        } else {
            None
        };
        let fast = match read_fastpath(record, &bpf_dir) {
            Ok(f) => f,
            Err(e) => {
                self.error(chain, "cannot read the fast path's counters", &e);
                None
            }
        };
        for (h, hop) in plan.hops.iter().enumerate() {
            let HopRole::Function { kind, .. } = &hop.role else {
                continue;
            };
            let labels = |direction| {
                [
                    ("chain", chain),
                    ("function", hop.name.as_str()),
                    ("kind", kind.as_str()),
                    ("direction", direction),
                ]
            };
            let function = fast.as_ref().and_then(|f| f.function(plan, h));
            for (d, (direction, ifindex)) in directions(plan, h).into_iter().enumerate() {
                // In tc/xdp mode `nf_count` runs on the endpoints only: the forwarder counts
                // what the functions receive.
                // Interfaces a live apply replaced keep their counts: they are part of the total.
                let retired = if d == 0 {
                    &hop.retired_in
                } else {
                    &hop.retired_out
                };
                let stack = counters
                    .as_ref()
                    .filter(|_| plan.fastpath == FastPath::Kernel)
                    .map(|c| {
                        ifindex.iter().chain(retired).filter_map(|i| c.get(i)).fold(
                            IfCounters::default(),
                            |sum, x| IfCounters {
                                packets: sum.packets.wrapping_add(x.packets),
                                bytes: sum.bytes.wrapping_add(x.bytes),
                            },
                        )
                    });
                let fwd = function.map(|f| if d == 0 { &f.forward } else { &f.reverse });
                if let Some((packets, bytes)) = received(plan.fastpath, stack, fwd) {
                    out.packets.sample_u64(&labels(direction), packets);
                    out.bytes.sample_u64(&labels(direction), bytes);
                }
                if let Some(fwd) = fwd {
                    let kind_reasons = self.kinds.get(kind).map_or(&[][..], |k| k.drop_reasons());
                    let kind_drops = fwd.drops.iter().skip(netfn_common::KIND_DROP_BASE);
                    let reasons = DROP_REASON_NAMES
                        .iter()
                        .zip(fwd.drops.iter())
                        .chain(kind_reasons.iter().zip(kind_drops));
                    for (reason, n) in reasons {
                        let l = labels(direction);
                        out.drops
                            .sample_u64(&[l[0], l[1], l[2], l[3], ("reason", reason)], *n);
                    }
                }
            }
            if let Some(ctx) = FunctionMetricsContext::of(plan, h, &bpf_dir) {
                self.kind_metrics(&ctx, out);
            }
        }
    }

    fn kind_metrics(&self, ctx: &FunctionMetricsContext<'_>, out: &mut Families) {
        let Some(kind) = self.kinds.get(ctx.kind) else {
            // A kind this build does not know (a record from a newer netfn): its generic
            // counters are exported, it just adds nothing of its own.
            return;
        };
        match kind.metrics(ctx) {
            Ok(families) => {
                for family in families {
                    match check_kind_family(ctx, &family) {
                        Ok(()) => out.kinds.push(family),
                        Err(why) => self.error(ctx.chain, "a kind's metrics were dropped", &why),
                    }
                }
            }
            Err(e) => self.error(
                ctx.chain,
                &format!("kind `{}` of function `{}`", ctx.kind, ctx.function),
                &e,
            ),
        }
    }
}

impl Collector for ChainCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families()
    }
}

/// The (direction, ifindex) pairs of function hop `h`: forward on its nf-in, reverse on nf-out.
pub fn directions(plan: &ChainPlan, h: usize) -> [(&'static str, Option<u32>); 2] {
    let inn = h
        .checked_sub(1)
        .and_then(|l| plan.links.get(l))
        .map(|l| l.inn.ifindex);
    let out = plan.links.get(h).map(|l| l.out.ifindex);
    [("forward", inn), ("reverse", out)]
}

/// The fast path's per-function counters; `None` for kernel-mode chains and for chains whose
/// fast path is not attached (nothing pinned).
fn read_fastpath(
    record: &ChainState,
    bpf_dir: &std::path::Path,
) -> Result<Option<FastpathCounters>, ebpf::EbpfError> {
    if record.plan.fastpath == FastPath::Kernel {
        return Ok(None);
    }
    match ebpf::read_function_counters(bpf_dir) {
        Ok(c) => Ok(Some(c)),
        Err(ebpf::EbpfError::NotPinned { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Packets and bytes a function received on one interface, from what is there:
///
/// - `stack`: the interface counter (`nf_count`, TC ingress, priority 1), when attached;
/// - `fwd`: the fast path forwarder's counters of that function and direction, when attached.
///
/// In kernel mode `nf_count` sees every frame. In tc/xdp mode netfn attaches `nf_count` to the
/// endpoints only (a second program per hop costs the fast path about a tenth of its rate), so
/// functions are counted by the forwarder. (If both are there in XDP mode, frames the forwarder
/// redirects or drops never reach TC: received = what reached TC + forwarded + dropped.)
/// Without `nf_count`, the forwarder's view: forwarded + to the stack + dropped (bytes:
/// forwarded only). Nothing at all: `None`, and no series.
pub fn received(
    mode: FastPath,
    stack: Option<IfCounters>,
    fwd: Option<&FnCounters>,
) -> Option<(u64, u64)> {
    match (mode, stack, fwd) {
        (FastPath::Xdp, Some(s), Some(f)) => Some((
            s.packets.wrapping_add(f.packets).wrapping_add(f.dropped()),
            s.bytes.wrapping_add(f.bytes),
        )),
        (_, Some(s), _) => Some((s.packets, s.bytes)),
        (_, None, Some(f)) => Some((
            f.packets.wrapping_add(f.to_stack).wrapping_add(f.dropped()),
            f.bytes,
        )),
        (_, None, None) => None,
    }
}

/// The families of one scrape.
struct Families {
    packets: Family,
    bytes: Family,
    drops: Family,
    up: Family,
    kinds: Vec<MetricFamily>,
}

impl Default for Families {
    fn default() -> Self {
        Families {
            packets: Family::counter(FUNCTION_PACKETS, PACKETS_HELP),
            bytes: Family::counter(FUNCTION_BYTES, BYTES_HELP),
            drops: Family::counter(FUNCTION_DROPS, DROPS_HELP),
            up: Family::gauge(CHAIN_UP, UP_HELP),
            kinds: Vec::new(),
        }
    }
}

impl Families {
    fn finish(self) -> Vec<MetricFamily> {
        let mut v: Vec<MetricFamily> = [self.packets, self.bytes, self.drops, self.up]
            .into_iter()
            .filter(|f| !f.is_empty())
            .map(Family::build)
            .collect();
        v.extend(self.kinds);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_per_mode() {
        let stack = IfCounters {
            packets: 3,
            bytes: 300,
        };
        let mut fwd = FnCounters {
            packets: 10,
            bytes: 1000,
            to_stack: 3,
            drops: [0; netfn_common::DROP_SLOTS],
        };
        fwd.drops[1] = 2;
        assert_eq!(
            received(FastPath::Kernel, Some(stack), None),
            Some((3, 300))
        );
        // TC: nf_count runs first and sees everything.
        assert_eq!(
            received(FastPath::Tc, Some(stack), Some(&fwd)),
            Some((3, 300))
        );
        // XDP: TC sees only what was passed to the stack.
        assert_eq!(
            received(FastPath::Xdp, Some(stack), Some(&fwd)),
            Some((15, 1300))
        );
        assert_eq!(received(FastPath::Tc, None, Some(&fwd)), Some((15, 1000)));
        assert_eq!(received(FastPath::Kernel, None, None), None);
    }
}
