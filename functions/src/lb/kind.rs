//! `kind = "load-balancer"`: the kind's face to core. Parsing checks the settings
//! ([`super::config`]); the config offers the seam's parts: the eBPF stage ([`super::stage`]),
//! the nftables DNAT form for kernel mode ([`super::nft`]), a live settings change (tables
//! rebuilt over the live ones, flows kept), the VIPs as sources its neighbours toward ingress
//! accept, drop reasons, metrics and status rows ([`super::observe`]).

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use netfn_common::lb::LB_DROP_REASON_NAMES;
use netfn_core::function::{
    ChainAddresses, ExtraSource, FunctionConfig, FunctionContext, FunctionKind,
    FunctionMetricsContext, KernelForm, KindMetricsError, KindTask, MetricFamily, RecordedSettings,
    SettingError, Settings, Stage, TaskContext,
};
use netfn_core::plan::{Direction, names};

use super::config::{self, LbSettings};

pub struct LoadBalancer;

/// A checked load balancer.
#[derive(Debug)]
pub struct LbConfig {
    pub settings: LbSettings,
}

impl FunctionConfig for LbConfig {
    fn kind(&self) -> &'static str {
        "load-balancer"
    }

    fn record(&self) -> RecordedSettings {
        RecordedSettings::of(&self.settings)
    }

    fn stage(&self) -> Option<&dyn Stage> {
        Some(self)
    }

    /// The ruleset keeps the backends the health checks took out of the live one (a reload by
    /// `apply` must not bring them back before they rise).
    fn kernel_form(&self, ctx: &FunctionContext) -> Option<KernelForm> {
        let netns = names::netns_name(&ctx.chain, &ctx.function);
        let down = super::nft::down_backends(&netns).unwrap_or_else(|e| {
            tracing::warn!(
                "function {}: {e}; reloading with every backend in until the checks fail",
                ctx.function
            );
            Default::default()
        });
        Some(KernelForm {
            nftables: super::nft::ruleset(&self.settings, &down),
            sysctls: super::nft::sysctls(&self.settings.conntrack),
        })
    }

    /// Backends, weights, health checks and services change in place: new tables are built
    /// over the live ones and switched in, tracked flows stay on their backends. The connection
    /// table's size cannot change under the flows it holds.
    fn change_in_place(&self, old: &dyn FunctionConfig) -> Result<(), String> {
        let Some(old) = old.downcast_ref::<LbConfig>() else {
            return Err("the function was not a load balancer".into());
        };
        let (was, now) = (old.settings.conntrack.size, self.settings.conntrack.size);
        if was != now {
            return Err(format!(
                "its connection table holds the flows that must stay on their backends; its \
                 size ({was} → {now}) changes only with down and up"
            ));
        }
        Ok(())
    }

    fn check_in_chain(&self, chain: &ChainAddresses<'_>) -> Vec<SettingError> {
        self.settings.check_in_chain(chain)
    }

    /// Answers leave from the VIPs, toward the clients on the ingress side; backends routed
    /// beyond the egress endpoint (outside its subnet; the plan drops the others) answer from
    /// their own addresses toward it.
    fn extra_sources(&self) -> Vec<ExtraSource> {
        let v4 = |a: IpAddr| match a {
            IpAddr::V4(v4) => Some(Ipv4Net::from(v4)),
            IpAddr::V6(_) => None,
        };
        let services = &self.settings.services;
        let vips = services
            .iter()
            .filter_map(|s| v4(s.vip))
            .map(|net| ExtraSource::sent(Direction::Reverse, net));
        let backends = services
            .iter()
            .flat_map(|s| &s.backends)
            .filter_map(|b| v4(b.address))
            .map(|net| ExtraSource::beyond(Direction::Reverse, net));
        let mut out: Vec<ExtraSource> = vips.chain(backends).collect();
        out.sort();
        out.dedup();
        out
    }
}

impl FunctionKind for LoadBalancer {
    fn name(&self) -> &'static str {
        "load-balancer"
    }

    fn summary(&self) -> &'static str {
        "L4 load balancer: VIPs to backends by Maglev hashing, connection tracking, NAT, drain"
    }

    fn parse(&self, settings: Settings<'_>) -> Result<Arc<dyn FunctionConfig>, Vec<SettingError>> {
        Ok(Arc::new(LbConfig {
            settings: config::parse(settings)?,
        }))
    }

    fn load(&self, recorded: &RecordedSettings) -> Result<Arc<dyn FunctionConfig>, String> {
        Ok(Arc::new(LbConfig {
            settings: recorded.parse().map_err(|e| e.to_string())?,
        }))
    }

    fn drop_reasons(&self) -> &'static [&'static str] {
        &LB_DROP_REASON_NAMES
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

    /// Health checks, when a service asks for them.
    fn tasks(&self, ctx: &TaskContext) -> Vec<KindTask> {
        super::health::tasks(ctx)
    }
}
