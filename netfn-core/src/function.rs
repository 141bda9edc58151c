//! The seam between core and the function kinds (forward, firewall, load balancer, WireGuard…).
//!
//! A kind is registered once in a [`Registry`]; core hands it the function's table from the chain
//! file (without `name` and `kind`) and gets back a validated [`FunctionConfig`]. Adding a kind
//! means implementing these traits in `functions/` and adding one registration line there.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::Spanned;
use toml::de::DeTable;

pub use crate::metrics::kind::{FunctionMetricsContext, KindMetricsError};
pub use prometheus::proto::MetricFamily;

/// One problem in a function's settings, at a byte span of the chain file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
}

/// A function's settings as written in the chain file, with spans into the file.
pub struct Settings<'i> {
    table: Spanned<DeTable<'i>>,
}

impl<'i> Settings<'i> {
    pub fn new(table: Spanned<DeTable<'i>>) -> Self {
        Settings { table }
    }

    /// Where the function's table starts in the file.
    pub fn span(&self) -> Range<usize> {
        self.table.span()
    }

    pub fn is_empty(&self) -> bool {
        self.table.get_ref().is_empty()
    }

    /// Deserializes the settings into a kind's own type (which should `deny_unknown_fields` and
    /// may use `toml::Spanned` fields to point at values in its own checks).
    pub fn deserialize<T: DeserializeOwned>(self) -> Result<T, SettingError> {
        let span = self.table.span();
        let value = Spanned::new(
            span.clone(),
            toml::de::DeValue::Table(self.table.into_inner()),
        );
        T::deserialize(value.into_deserializer()).map_err(|e| SettingError {
            span: e.span().unwrap_or(span),
            message: e.message().trim().to_string(),
            hint: None,
        })
    }
}

/// A kind of network function.
pub trait FunctionKind: Send + Sync + 'static {
    /// The `kind = "…"` value in chain files.
    fn name(&self) -> &'static str;
    /// One line for `netfn kinds` and error hints.
    fn summary(&self) -> &'static str;
    /// Validates this kind's settings; reports every problem it finds.
    fn parse(&self, settings: Settings<'_>) -> Result<Arc<dyn FunctionConfig>, Vec<SettingError>>;

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
}

/// A validated function configuration of some kind.
pub trait FunctionConfig: fmt::Debug + Send + Sync {
    fn kind(&self) -> &'static str;
    /// The settings as JSON: recorded in the state, and compared to tell whether a chain changed.
    fn to_json(&self) -> serde_json::Value;
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
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
