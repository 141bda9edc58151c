//! What a function kind sees when it contributes metrics ([`crate::function::FunctionKind::metrics`]).
//!
//! The host agent calls the kind once per function of that kind and scrape, from the chain's
//! record, so a kind can read its own pinned maps (per firewall rule, per load-balancer backend)
//! or its runtime task's shared state. The kind adds metrics without touching the agent: it
//! builds [`Family`]s with [`FunctionMetricsContext::counter`] / [`FunctionMetricsContext::gauge`],
//! which carry the `chain`, `function` and `kind` labels already.
//!
//! Rules the collector enforces (a family that breaks one is dropped, logged, and counted in
//! `netfn_scrape_errors_total`): names start with `netfn_<kind>_`, counters end in `_total`,
//! every sample has the `chain`, `function` and `kind` labels. Extra labels must be bounded (a
//! rule index, a backend name, a peer's public key): never per flow or per IP.

use std::path::Path;

use prometheus::proto::MetricFamily;

use super::family::{Family, PREFIX};
use crate::function::RecordedSettings;
use crate::plan::{ChainPlan, HopRole};
use crate::spec::FastPath;

/// Why a kind could not produce its metrics for one scrape.
pub type KindMetricsError = Box<dyn std::error::Error + Send + Sync>;

/// One function, as recorded by `netfn up`, at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct FunctionMetricsContext<'a> {
    pub chain: &'a str,
    pub function: &'a str,
    pub kind: &'a str,
    /// The function's settings as recorded (`FunctionConfig::record` at `up` or `apply`).
    pub settings: &'a RecordedSettings,
    /// The function's network namespace (a name under /run/netns).
    pub netns: &'a str,
    /// The chain's pinned eBPF objects (`/sys/fs/bpf/netfn/<chain>`).
    pub bpf_dir: &'a Path,
    pub fastpath: FastPath,
    /// The function's slot (its stage's maps are pinned under `bpf_dir/fn<slot>`).
    pub slot: Option<u32>,
}

impl<'a> FunctionMetricsContext<'a> {
    /// The context of hop `h` of `plan` (`None` unless it is a function), whose pins are under
    /// `bpf_dir`.
    pub fn of(plan: &'a ChainPlan, h: usize, bpf_dir: &'a Path) -> Option<Self> {
        let hop = plan.hops.get(h)?;
        let HopRole::Function { kind, settings } = &hop.role else {
            return None;
        };
        Some(FunctionMetricsContext {
            chain: &plan.chain,
            function: &hop.name,
            kind,
            settings,
            netns: &hop.netns.name,
            bpf_dir,
            fastpath: plan.fastpath,
            slot: plan.function_slot(h),
        })
    }
}

impl FunctionMetricsContext<'_> {
    /// The labels every sample of a function carries.
    pub fn base_labels(&self) -> [(&str, &str); 3] {
        [
            ("chain", self.chain),
            ("function", self.function),
            ("kind", self.kind),
        ]
    }

    /// The prefix this kind's metric names must start with: `netfn_<kind>_`.
    pub fn name_prefix(&self) -> String {
        format!("{PREFIX}{}_", self.kind.replace('-', "_"))
    }

    /// A counter family whose samples carry the function's labels.
    pub fn counter(&self, name: &str, help: &str) -> Family {
        Family::counter(name, help).with_base_labels(&self.base_labels())
    }

    /// A gauge family whose samples carry the function's labels.
    pub fn gauge(&self, name: &str, help: &str) -> Family {
        Family::gauge(name, help).with_base_labels(&self.base_labels())
    }

    /// Counter families of one sample each (the function's labels only): one per
    /// `(name, help, value)`, in order.
    pub fn counters(&self, rows: &[(&str, &str, u64)]) -> Vec<MetricFamily> {
        rows.iter()
            .map(|&(name, help, value)| {
                let mut f = self.counter(name, help);
                f.sample_u64(&[], value);
                f.build()
            })
            .collect()
    }
}

/// Checks a kind's family against the rules in the module docs.
pub(crate) fn check_kind_family(
    ctx: &FunctionMetricsContext<'_>,
    family: &MetricFamily,
) -> Result<(), String> {
    let prefix = ctx.name_prefix();
    if !family.name().starts_with(&prefix) {
        return Err(format!(
            "kind `{}` exported `{}`; its metrics must start with `{prefix}`",
            ctx.kind,
            family.name()
        ));
    }
    super::family::valid_metric_name(family.name(), family.get_field_type())?;
    if !super::family::has_labels(family, &["chain", "function", "kind"]) {
        return Err(format!(
            "`{}` has samples without the chain, function and kind labels; build it with \
             FunctionMetricsContext::counter or ::gauge",
            family.name()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_families_must_follow_the_rules() {
        let settings = RecordedSettings::of(&serde_json::json!({}));
        let ctx = FunctionMetricsContext {
            chain: "edge",
            function: "fw1",
            kind: "firewall",
            settings: &settings,
            netns: "nf-edge-fw1",
            bpf_dir: Path::new("/sys/fs/bpf/netfn/edge"),
            fastpath: FastPath::Tc,
            slot: Some(0),
        };
        let mut good = ctx.counter("netfn_firewall_rule_hits_total", "Hits per rule.");
        good.sample_u64(&[("rule", "0")], 3);
        assert_eq!(check_kind_family(&ctx, &good.build()), Ok(()));

        let mut foreign = ctx.counter("netfn_lb_hits_total", "Hits.");
        foreign.sample_u64(&[], 1);
        assert!(check_kind_family(&ctx, &foreign.build()).is_err());

        let mut bare = Family::counter("netfn_firewall_x_total", "No labels.");
        bare.sample_u64(&[], 1);
        assert!(check_kind_family(&ctx, &bare.build()).is_err());

        let mut no_total = ctx.counter("netfn_firewall_hits", "Bad name.");
        no_total.sample_u64(&[], 1);
        assert!(check_kind_family(&ctx, &no_total.build()).is_err());
    }
}
