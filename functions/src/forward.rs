//! `kind = "forward"`: a function that only forwards. Chains work with it before the real kinds
//! land, and benchmarks use it to measure the cost of a hop.

use std::sync::Arc;

use netfn_core::function::{
    FunctionConfig, FunctionKind, RecordedSettings, SettingError, Settings,
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
        let config: ForwardConfig = settings.deserialize().map_err(|mut e| {
            e.hint = Some("a forward function takes no settings besides name and kind".into());
            vec![e]
        })?;
        Ok(Arc::new(config))
    }

    fn load(&self, _recorded: &RecordedSettings) -> Result<Arc<dyn FunctionConfig>, String> {
        Ok(Arc::new(ForwardConfig {}))
    }
}
