//! `kind = "firewall"`: the kind's face to core. Parsing checks the settings ([`super::config`])
//! and compiles the rules at once ([`super::classifier`]), so `netfn validate` reports rule sets
//! the fast path cannot hold and warns about rules that can never match; the config then offers
//! the seam's parts: the eBPF stage ([`super::stage`]), the nftables form for kernel mode
//! ([`super::nft`]), a live settings change, drop reasons, metrics and status rows
//! ([`super::observe`]).

use std::sync::Arc;

use netfn_common::firewall::FW_DROP_REASON_NAMES;
use netfn_core::function::{
    FunctionConfig, FunctionKind, FunctionMetricsContext, KernelContext, KindMetricsError,
    MetricFamily, SettingError, Settings, Stage,
};

use super::classifier::{self, Compiled};
use super::config::{self, FirewallSettings};

pub struct Firewall;

/// A checked firewall with its compiled rules.
#[derive(Debug)]
pub struct FirewallConfig {
    pub settings: FirewallSettings,
    pub compiled: Arc<Compiled>,
}

impl FirewallConfig {
    fn new(settings: FirewallSettings) -> Result<Self, String> {
        let compiled = classifier::compile(&settings.rules).map_err(|e| e.to_string())?;
        Ok(FirewallConfig {
            settings,
            compiled: Arc::new(compiled),
        })
    }
}

impl FunctionConfig for FirewallConfig {
    fn kind(&self) -> &'static str {
        "firewall"
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.settings).unwrap_or_default()
    }

    fn stage(&self) -> Option<&dyn Stage> {
        Some(self)
    }

    fn kernel_form(&self, ctx: &KernelContext<'_>) -> Option<String> {
        Some(super::nft::ruleset(&self.settings, ctx))
    }

    fn change_in_place(&self, old: &dyn FunctionConfig) -> Result<(), String> {
        let Some(old) = old.downcast_ref::<FirewallConfig>() else {
            return Err("the function was not a firewall".into());
        };
        if old.settings.conntrack.size != self.settings.conntrack.size {
            return Err(format!(
                "its connection table holds the connections that must survive the change; its                  size ({} → {}) changes only with down and up",
                old.settings.conntrack.size, self.settings.conntrack.size
            ));
        }
        Ok(())
    }
}

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
        let config = FirewallConfig::new(parsed).map_err(|why| {
            vec![SettingError::new(
                span,
                format!("the rules cannot be compiled for the fast path: {why}"),
                Some("split or simplify the rules it names".into()),
            )]
        })?;
        for rule in config.compiled.unreachable_rules() {
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
        Ok(Arc::new(config))
    }

    fn load(&self, recorded: &serde_json::Value) -> Result<Arc<dyn FunctionConfig>, String> {
        let settings: FirewallSettings =
            serde_json::from_value(recorded.clone()).map_err(|e| e.to_string())?;
        Ok(Arc::new(FirewallConfig::new(settings)?))
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
