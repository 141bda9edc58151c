//! `kind = "firewall"`: the kind's face to core. Parsing checks the settings ([`super::config`])
//! and compiles the rules at once ([`super::classifier`]), so `netfn validate` reports rule sets
//! the fast path cannot hold and warns about rules that can never match; the config then offers
//! the seam's parts: the eBPF stage ([`super::stage`]), the nftables form for kernel mode
//! ([`super::nft`]), a live settings change, drop reasons, metrics and status rows
//! ([`super::observe`]).

use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use netfn_common::firewall::FW_DROP_REASON_NAMES;
use netfn_core::function::{
    FunctionConfig, FunctionContext, FunctionKind, FunctionMetricsContext, KernelForm,
    KindMetricsError, MetricFamily, RecordedSettings, SettingError, Settings, Stage,
};

use std::sync::OnceLock;

use super::classifier::{self, Compiled};
use super::config::{self, FirewallSettings};
use super::rules::{Action, PortRange, Proto, Rule, RuleSet, Side};

/// The name of the rule netfn puts first in every firewall: it lets the host agent's chain probe
/// through (UDP from the ingress endpoint to the egress endpoint's probe port), so a firewall
/// never makes a healthy chain look down. `netfn status` and the metrics show it like any rule.
/// (The eBPF stage checks it before the compiled rules, from its settings; the nftables form
/// writes it as its first rule.)
pub const PROBE_RULE: &str = "netfn-probe";

/// `rules` with the chain probe's rule first (see [`PROBE_RULE`]).
pub fn with_probe(rules: &RuleSet, ctx: &FunctionContext) -> RuleSet {
    let host = |a| IpNet::V4(Ipv4Net::from(a));
    let probe = Rule {
        name: Some(PROBE_RULE.into()),
        src: vec![host(ctx.probe.src)],
        dst: vec![host(ctx.probe.dst)],
        proto: Proto::Udp,
        sport: Vec::new(),
        dport: vec![PortRange::single(ctx.probe.port)],
        icmp_type: None,
        from: Side::Ingress,
        action: Action::Accept,
        rate: None,
    };
    RuleSet {
        rules: std::iter::once(probe)
            .chain(rules.rules.iter().cloned())
            .collect(),
        default: rules.default,
    }
}

pub struct Firewall;

/// A checked firewall (its rules compile: `parse` made sure) and its compiled rules, made once
/// (at parse, or when a recorded config first needs them).
#[derive(Debug)]
pub struct FirewallConfig {
    pub settings: FirewallSettings,
    compiled: OnceLock<Result<Arc<Compiled>, String>>,
}

impl FirewallConfig {
    fn new(settings: FirewallSettings, compiled: Option<Compiled>) -> Self {
        let cell = OnceLock::new();
        if let Some(c) = compiled {
            let _ = cell.set(Ok(Arc::new(c)));
        }
        FirewallConfig {
            settings,
            compiled: cell,
        }
    }

    /// The compiled rules.
    pub fn compiled(&self) -> Result<Arc<Compiled>, String> {
        self.compiled
            .get_or_init(|| {
                classifier::compile(&self.settings.rules)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }
}

impl FunctionConfig for FirewallConfig {
    fn kind(&self) -> &'static str {
        "firewall"
    }

    fn record(&self) -> RecordedSettings {
        RecordedSettings::of(&self.settings)
    }

    fn stage(&self) -> Option<&dyn Stage> {
        Some(self)
    }

    fn kernel_form(&self, ctx: &FunctionContext) -> Option<KernelForm> {
        Some(KernelForm {
            nftables: super::nft::ruleset(&with_probe(&self.settings.rules, ctx), ctx),
            sysctls: super::nft::sysctls(&self.settings.conntrack),
        })
    }

    fn change_in_place(&self, old: &dyn FunctionConfig) -> Result<(), String> {
        let Some(old) = old.downcast_ref::<FirewallConfig>() else {
            return Err("the function was not a firewall".into());
        };
        if old.settings.conntrack.size != self.settings.conntrack.size {
            return Err(format!(
                "its connection table holds the connections that must survive the change; its \
                 size ({} → {}) changes only with down and up",
                old.settings.conntrack.size, self.settings.conntrack.size
            ));
        }
        Ok(())
    }
}

/// ICMP types that are errors (destination unreachable, source quench, redirect, time exceeded,
/// parameter problem): connection tracking decides them, never the rules.
const ICMP_ERRORS: [u8; 5] = [3, 4, 5, 11, 12];

impl FunctionKind for Firewall {
    fn name(&self) -> &'static str {
        "firewall"
    }

    fn summary(&self) -> &'static str {
        "stateful firewall: ordered rules (first match wins), connection tracking, accept/drop/reject"
    }

    fn parse(&self, settings: Settings<'_>) -> Result<Arc<dyn FunctionConfig>, Vec<SettingError>> {
        let span = settings.span();
        let warnings = settings.warnings();
        let (parsed, origins) = config::parse(settings)?;
        let compiled = classifier::compile(&parsed.rules).map_err(|why| {
            let message = format!("the rules cannot be compiled for the fast path: {why}");
            let hint = Some("split or simplify the rules it names".into());
            // At the rule it names (in the chain file or the rules file), else at the function.
            vec![match why.rule().and_then(|r| origins.get(r as usize)) {
                Some(origin) => origin.diagnostic(message, hint),
                None => SettingError::new(span, message, hint),
            }]
        })?;
        let unreachable = compiled.unreachable_rules();
        let config = FirewallConfig::new(parsed, Some(compiled));
        for rule in unreachable {
            let Some(origin) = origins.get(rule as usize) else {
                continue;
            };
            let name = config.settings.rules.rules[rule as usize]
                .name
                .as_deref()
                .map(|n| format!(" `{n}`"))
                .unwrap_or_default();
            warnings.warn(origin.diagnostic(
                format!(
                    "rule {}{name} can never match: earlier rules take every packet it would",
                    rule + 1
                ),
                Some("move it before the rules that shadow it, or remove it".into()),
            ));
        }
        for (rule, origin) in config.settings.rules.rules.iter().zip(&origins) {
            if let Some(t) = rule.icmp_type.filter(|t| ICMP_ERRORS.contains(t)) {
                warnings.warn(origin.diagnostic(
                    format!(
                        "a rule on ICMP type {t} never matches: ICMP errors never reach the rules \
                         (one about a connection passes with it, any other is dropped as \
                         fw-invalid, as conntrack holds it invalid)"
                    ),
                    Some("remove the rule; errors about accepted connections pass already".into()),
                ));
            }
        }
        Ok(Arc::new(config))
    }

    fn load(&self, recorded: &RecordedSettings) -> Result<Arc<dyn FunctionConfig>, String> {
        let settings: FirewallSettings = recorded.parse().map_err(|e| e.to_string())?;
        Ok(Arc::new(FirewallConfig::new(settings, None)))
    }

    fn drop_reasons(&self) -> &'static [&'static str] {
        &FW_DROP_REASON_NAMES
    }

    fn metrics(
        &self,
        ctx: &FunctionMetricsContext<'_>,
    ) -> Result<Vec<MetricFamily>, KindMetricsError> {
        super::observe::metrics(ctx)
    }

    fn status(&self, ctx: &FunctionMetricsContext<'_>) -> Vec<(String, String)> {
        super::observe::status(ctx)
    }
}
