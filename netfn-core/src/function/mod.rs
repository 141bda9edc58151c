//! The seam between core and the function kinds (forward, firewall, load balancer, WireGuard…).
//!
//! A kind is registered once in a [`Registry`]. Core hands it the function's table from the chain
//! file ([`Settings`], without `name` and `kind`) and gets back a validated [`FunctionConfig`];
//! from a chain record it gets the same typed config back with [`FunctionKind::load`]. Everything
//! else a kind adds is optional and asked of the config:
//!
//! - a per-packet [`Stage`] at the function's hop in tc/xdp chains (its eBPF program, its maps and
//!   their sizes, how to fill them), run by the forwarder through a tail call;
//! - its kernel-mode form ([`FunctionConfig::kernel_form`]): an nftables ruleset that core loads
//!   inside the function's namespace when the chain runs `fastpath = "kernel"`;
//! - kernel objects of its own in its namespace ([`FunctionConfig::configure`]: a kernel
//!   WireGuard device) and a process of its own ([`FunctionConfig::process`]: a userspace one);
//! - whether a settings change can happen in place ([`FunctionConfig::change_in_place`]);
//! - which sources its neighbours must accept from it beyond the chain's subnets;
//! - its drop reasons ([`FunctionKind::drop_reasons`]), rows in `netfn status` and metric
//!   families ([`FunctionKind::metrics`]);
//! - control tasks the host agent runs for each of its functions ([`FunctionKind::tasks`]).
//!
//! Core never names a kind: adding one means implementing these traits in `functions/`, its eBPF
//! module, and one registration line.

mod context;
pub mod fields;
mod host_names;
mod recorded;
mod settings;
mod stage;
mod task;

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub use crate::plan::ExtraSource;

pub use crate::metrics::kind::{FunctionMetricsContext, KindMetricsError};
pub use context::{FunctionContext, ProbePath};
pub use fields::{Fields, Problems, Want};
pub use host_names::{HostNames, NameAnswer, is_host_name, is_temporary};
pub use prometheus::proto::MetricFamily;
pub use recorded::RecordedSettings;
pub use settings::{Located, SettingError, Settings, Warnings};
pub use stage::{Stage, StageContent, StageError, StageMaps, StagePrograms};
pub use task::{KindTask, TaskContext, TaskRun};

/// A kind of network function.
pub trait FunctionKind: Send + Sync + 'static {
    /// The `kind = "…"` value in chain files.
    fn name(&self) -> &'static str;
    /// One line for `netfn kinds` and error hints.
    fn summary(&self) -> &'static str;
    /// Validates this kind's settings; reports every problem it finds (and warnings through
    /// [`Settings::warn`]).
    fn parse(&self, settings: Settings<'_>) -> Result<Arc<dyn FunctionConfig>, Vec<SettingError>>;
    /// The typed config back from a chain record: the settings [`FunctionConfig::record`] wrote.
    fn load(&self, recorded: &RecordedSettings) -> Result<Arc<dyn FunctionConfig>, String>;

    /// Names of the kind's own drop reasons, by index: its stage counts reason `i` in the
    /// function's drop slot `netfn_common::KIND_DROP_BASE + i` (at most 8 reasons).
    fn drop_reasons(&self) -> &'static [&'static str] {
        &[]
    }

    /// The kind's own metrics for one function, read by the host agent at scrape time (from the
    /// chain's record, so `ctx.settings` is the recorded JSON): per firewall rule, per backend,
    /// per peer. Build them with `ctx.counter(…)` / `ctx.gauge(…)`; names start with
    /// `netfn_<kind>_` (see [`crate::metrics::kind`] for the rules). The generic per-function
    /// packets, bytes and drops are exported for every kind already; the default adds nothing.
    fn metrics(
        &self,
        ctx: &FunctionMetricsContext<'_>,
    ) -> Result<Vec<MetricFamily>, KindMetricsError> {
        let _ = ctx;
        Ok(Vec::new())
    }

    /// The control tasks the host agent runs for one function of this kind while its chain is
    /// up (see [`KindTask`]); the default has none.
    fn tasks(&self, ctx: &TaskContext) -> Vec<KindTask> {
        let _ = ctx;
        Vec::new()
    }

    /// Extra rows for `netfn status` (label, value), read like [`FunctionKind::metrics`].
    fn status(&self, ctx: &FunctionMetricsContext<'_>) -> Vec<(String, String)> {
        let _ = ctx;
        Vec::new()
    }
}

/// A validated function configuration of some kind.
pub trait FunctionConfig: fmt::Debug + Send + Sync + Any {
    fn kind(&self) -> &'static str;
    /// The settings as the chain's record keeps them (read back by [`FunctionKind::load`]),
    /// compared to tell whether a function changed: [`RecordedSettings::of`] the settings type.
    fn record(&self) -> RecordedSettings;

    /// The per-packet stage this function runs at its hop in tc/xdp chains; `None` (the
    /// default) forwards every packet unchanged and costs the fast path nothing.
    fn stage(&self) -> Option<&dyn Stage> {
        None
    }

    /// Kernel mode: what to install inside the function's namespace ([`KernelForm`]), or `None`
    /// for plain forwarding.
    fn kernel_form(&self, ctx: &FunctionContext) -> Option<KernelForm> {
        let _ = ctx;
        None
    }

    /// Whether these settings are the ones recorded as `old`, as the chain file writes them:
    /// `netfn up` of a chain already up leaves it alone when they are. A kind whose settings
    /// hold what was looked up when the file was read (a WireGuard peer's endpoint written as
    /// a name) compares what was written, so that a second `up` of the same file does not
    /// call it changed because a name's address moved. The default: the records are equal.
    fn same_as_recorded(&self, old: &RecordedSettings) -> bool {
        self.record() == *old
    }

    /// Whether a running function with the settings `old` can take these settings in place
    /// (`netfn apply`): `Ok` when it can, keeping its state (connections) and counters, or the
    /// reason it cannot. The default refuses: the kind has no live settings change.
    fn change_in_place(&self, old: &dyn FunctionConfig) -> Result<(), String> {
        let _ = old;
        Err(format!(
            "a {} function cannot change its settings while it runs",
            self.kind()
        ))
    }

    /// Kernel objects of the kind's own in the function's namespace that netfn configures
    /// itself (a kernel WireGuard device): called by `up` and by an apply that adds the function
    /// with `fresh`, by an apply that changes its settings in place without, before its process
    /// (if any) starts. They go with the namespace. `Err` is the reason, said to the operator.
    /// The default has none.
    fn configure(&self, ctx: &FunctionContext, fresh: bool) -> Result<(), String> {
        let _ = (ctx, fresh);
        Ok(())
    }

    /// A process of the kind's own that runs for the function while its chain is up (a
    /// userspace VPN data plane): the arguments of the netfn binary that runs it. `up` starts it
    /// in a session of its own (it outlives netfn and the agent) and waits until it creates its
    /// ready file (`netfn_core::chain::processes::ready_file`); `down` stops it; the agent starts
    /// it again if it dies (through the kind's task). `None` (the default): no process.
    fn process(&self, ctx: &FunctionContext) -> Option<Vec<String>> {
        let _ = ctx;
        None
    }

    /// A settings change for the function's running process (see [`FunctionConfig::process`]):
    /// `Some(Ok)` when the kind gave it the new settings in place (a VPN endpoint's peers: the
    /// untouched ones keep their sessions), `Some(Err)` when that failed (core then restarts the
    /// process), `None` (the default) when the kind restarts it with the new settings.
    fn update_process(&self, ctx: &FunctionContext) -> Option<Result<(), String>> {
        let _ = ctx;
        None
    }

    /// The function's packets must cross its own IP stack (a VPN endpoint, a program an
    /// operator brings): in tc/xdp chains the forwarder hands them to the stack, which forwards
    /// with IP forwarding on. The default (false) keeps them on the fast path.
    fn uses_stack(&self) -> bool {
        false
    }

    /// Problems of the settings that only the rest of the chain shows (a load balancer's VIP
    /// equal to a chain address, or served by an earlier load balancer), reported by `netfn
    /// validate` at the spans the kind kept.
    fn check_in_chain(&self, chain: &ChainAddresses<'_>) -> Vec<SettingError> {
        let _ = chain;
        Vec::new()
    }

    /// Sources besides the chain's subnets on packets going one way ([`ExtraSource`]): those
    /// this function puts on its packets (a load balancer's VIPs toward ingress, a VPN's
    /// decapsulated clients toward egress), which the functions they cross next accept; and
    /// those of hosts beyond an endpoint that send to this function (a load balancer's
    /// backends routed beyond the egress endpoint), which every function from that endpoint up
    /// to this one accepts and routes toward it. The default has none.
    fn extra_sources(&self) -> Vec<ExtraSource> {
        Vec::new()
    }
}

/// The addresses of a chain, and the functions before the one checked, for
/// [`FunctionConfig::check_in_chain`].
#[derive(Debug, Clone, Copy)]
pub struct ChainAddresses<'a> {
    /// The chain's functions before this one, in order from ingress (a load balancer's service
    /// that an earlier one serves never gets a flow).
    pub earlier: &'a [crate::spec::FunctionSpec],
    pub ingress_subnet: ipnet::Ipv4Net,
    pub egress_subnet: ipnet::Ipv4Net,
    /// The endpoints' own addresses.
    pub endpoints: &'a [std::net::Ipv4Addr],
    /// The addresses the chain's functions answer on at the endpoints (their gateways).
    pub gateways: &'a [std::net::Ipv4Addr],
    /// The pool the links between functions take their /31s from.
    pub transit: ipnet::Ipv4Net,
}

/// A kind's kernel-mode form, installed in its function's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelForm {
    /// An nftables ruleset (`nft -f` syntax), loaded in one transaction, so a changed ruleset
    /// replaces the old one atomically: it must create its own table and start by deleting it
    /// (`table inet NAME` then `delete table inet NAME`) so a reload replaces it whole.
    pub nftables: String,
    /// Sysctls of the namespace (`net/netfilter/nf_conntrack_udp_timeout` → `30`), written
    /// after the ruleset (which loads the modules they belong to).
    pub sysctls: Vec<(String, String)>,
}

impl dyn FunctionConfig {
    /// The kind's own config type, for the kind's code (`None` for another kind's config).
    pub fn downcast_ref<T: FunctionConfig>(&self) -> Option<&T> {
        (self as &dyn Any).downcast_ref::<T>()
    }
}

/// All function kinds this build knows.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Box<dyn FunctionKind>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, kind: impl FunctionKind) -> &mut Self {
        self.kinds.insert(kind.name(), Box::new(kind));
        self
    }

    pub fn get(&self, name: &str) -> Option<&dyn FunctionKind> {
        self.kinds.get(name).map(|k| k.as_ref())
    }

    /// The registered kind names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    /// The typed config of a recorded function of kind `kind`.
    pub fn load(
        &self,
        kind: &str,
        recorded: &RecordedSettings,
    ) -> Result<Arc<dyn FunctionConfig>, String> {
        let k = self
            .get(kind)
            .ok_or_else(|| format!("this build of netfn has no function kind `{kind}`"))?;
        k.load(recorded)
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
