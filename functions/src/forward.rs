//! `kind = "forward"`: a function that only forwards. Chains work with it before the real kinds
//! land, and benchmarks use it to measure the cost of a hop.

use std::sync::Arc;

use netfn_core::function::{
    FunctionConfig, FunctionKind, Problems, RecordedSettings, SettingError, Settings,
};
use serde::Deserialize;

pub struct Forward;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardConfig {}

impl FunctionConfig for ForwardConfig {
    fn kind(&self) -> &'static str {
        "forward"
    }

    fn record(&self) -> RecordedSettings {
        RecordedSettings::of(&serde_json::json!({}))
    }
}

impl FunctionKind for Forward {
    fn name(&self) -> &'static str {
        "forward"
    }

    fn summary(&self) -> &'static str {
        "forwards every packet unchanged (no settings)"
    }

    fn parse(&self, settings: Settings<'_>) -> Result<Arc<dyn FunctionConfig>, Vec<SettingError>> {
        let mut out = Problems::default();
        settings.fields().finish(&mut out);
        out.result(Arc::new(ForwardConfig {}) as Arc<dyn FunctionConfig>)
    }

    fn load(&self, _recorded: &RecordedSettings) -> Result<Arc<dyn FunctionConfig>, String> {
        Ok(Arc::new(ForwardConfig {}))
    }
}
