//! Prometheus metrics of the host agent.
//!
//! Naming: every name starts with `netfn_`, values are in base units (seconds, bytes), counters
//! end in `_total`, and labels are bounded: `chain`, `function`, `kind`, `direction`, `reason`,
//! `task`, `result`, `fastpath`, `version`; never an address, a port or a flow.
//!
//! Two kinds of metrics live here:
//!
//! - values that live in the kernel (BPF maps) or in the chain records: read at scrape time by
//!   [`ChainCollector`], a custom collector, so they are exact, cost nothing on the packet path,
//!   and stay monotonic across agent restarts (the maps are pinned);
//! - the agent's own: build info, scrape duration and errors, task restarts, and the prober's
//!   results, held in [`AgentMetrics`].
//!
//! Function kinds add their own metrics through [`crate::function::FunctionKind::metrics`]
//! (see [`kind`]).

pub mod collector;
pub mod family;
pub mod kind;
pub mod records;

use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub use collector::{ChainCollector, ProbeView};
pub use family::Family;
pub use kind::{FunctionMetricsContext, KindMetricsError};
pub use records::Records;

/// The content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Round-trip time buckets of the prober, in seconds (50 µs … 1 s).
pub const PROBE_RTT_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Scrape duration buckets, in seconds.
pub const SCRAPE_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics registry: {0}")]
    Prometheus(#[from] prometheus::Error),
    #[error("encoding metrics: {0}")]
    Encode(String),
}

/// The agent's own metrics.
#[derive(Clone)]
pub struct AgentMetrics {
    pub scrape_duration: Histogram,
    pub scrape_errors: IntCounter,
    pub task_restarts: IntCounterVec,
    pub probe_success: IntGaugeVec,
    pub probe_rtt: HistogramVec,
    pub probes: IntCounterVec,
}

impl AgentMetrics {
    /// Creates the agent's metrics and registers them (and `netfn_build_info`) in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let build_info = IntGaugeVec::new(
            Opts::new(
                "netfn_build_info",
                "Always 1; the netfn version in a label.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let m = AgentMetrics {
            scrape_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "netfn_scrape_duration_seconds",
                    "Time the agent took to collect and encode one /metrics response.",
                )
                .buckets(SCRAPE_BUCKETS.to_vec()),
            )?,
            scrape_errors: IntCounter::new(
                "netfn_scrape_errors_total",
                "Chain records, BPF maps or kinds that could not be read during a scrape.",
            )?,
            task_restarts: IntCounterVec::new(
                Opts::new(
                    "netfn_task_restarts_total",
                    "Restarts of a chain's runtime task after it failed or panicked.",
                ),
                &["chain", "function", "task"],
            )?,
            probe_success: IntGaugeVec::new(
                Opts::new(
                    "netfn_chain_probe_success",
                    "1 if the last end-to-end probe through the chain came back, else 0.",
                ),
                &["chain"],
            )?,
            probe_rtt: HistogramVec::new(
                HistogramOpts::new(
                    "netfn_chain_probe_rtt_seconds",
                    "Round-trip time of successful end-to-end probes through the chain.",
                )
                .buckets(PROBE_RTT_BUCKETS.to_vec()),
                &["chain"],
            )?,
            probes: IntCounterVec::new(
                Opts::new(
                    "netfn_chain_probes_total",
                    "End-to-end probes sent through the chain, by result (success, timeout, error).",
                ),
                &["chain", "result"],
            )?,
        };
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(m.scrape_duration.clone()))?;
        registry.register(Box::new(m.scrape_errors.clone()))?;
        registry.register(Box::new(m.task_restarts.clone()))?;
        registry.register(Box::new(m.probe_success.clone()))?;
        registry.register(Box::new(m.probe_rtt.clone()))?;
        registry.register(Box::new(m.probes.clone()))?;
        Ok(m)
    }

    /// Forgets every series of `chain` (it went away), so label sets stay bounded.
    /// `tasks`: (function, task) of every task it ran (function "" for the chain's own).
    pub fn forget_chain(&self, chain: &str, tasks: &[(&str, &str)]) {
        let _ = self.probe_success.remove_label_values(&[chain]);
        let _ = self.probe_rtt.remove_label_values(&[chain]);
        for result in ProbeResult::ALL {
            let _ = self.probes.remove_label_values(&[chain, result.as_str()]);
        }
        for (function, task) in tasks {
            let _ = self
                .task_restarts
                .remove_label_values(&[chain, function, task]);
        }
    }
}

/// The result label of `netfn_chain_probes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    Timeout,
    Error,
}

impl ProbeResult {
    pub const ALL: [ProbeResult; 3] = [Self::Success, Self::Timeout, Self::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// The registry the agent serves: its own metrics and the chain collector.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub agent: AgentMetrics,
}

impl Metrics {
    /// Registers the agent's metrics and `collector` (built with `agent.scrape_errors`, see
    /// [`AgentMetrics::scrape_errors`]).
    pub fn new(
        registry: Registry,
        agent: AgentMetrics,
        collector: ChainCollector,
    ) -> Result<Self, MetricsError> {
        registry.register(Box::new(collector))?;
        Ok(Metrics { registry, agent })
    }

    /// A fresh registry with the agent's metrics, and the scrape error counter that the chain
    /// collector must share.
    pub fn agent_registry() -> Result<(Registry, AgentMetrics), MetricsError> {
        let registry = Registry::new();
        let agent = AgentMetrics::register(&registry)?;
        Ok((registry, agent))
    }

    /// Collects and encodes every metric (text format 0.0.4), and records how long it took.
    /// Blocking: it reads files and BPF maps.
    pub fn render(&self) -> Result<String, MetricsError> {
        let started = Instant::now();
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(64 * 1024);
        let result = TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(|e| MetricsError::Encode(e.to_string()))
            .and_then(|()| String::from_utf8(out).map_err(|e| MetricsError::Encode(e.to_string())));
        self.agent
            .scrape_duration
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.agent.scrape_errors.inc();
        }
        result
    }
}
