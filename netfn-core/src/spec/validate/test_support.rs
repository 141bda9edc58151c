//! Function kinds for core's own tests (core cannot depend on the `functions` crate), and
//! helpers that parse a text and list its diagnostics.

use std::sync::Arc;

use serde::Deserialize;

use crate::function::{
    FunctionConfig, FunctionKind, Problems, RecordedSettings, Registry, SettingError, Settings,
    Want,
};

/// `kind = "forward"`: no settings.
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
        "forwards every packet (test kind)"
    }
    fn parse(&self, settings: Settings<'_>) -> Result<Arc<dyn FunctionConfig>, Vec<SettingError>> {
        let mut out = Problems::default();
        settings.fields().finish(&mut out);
        out.result(Arc::new(ForwardConfig {}) as Arc<dyn FunctionConfig>)
    }
    fn load(&self, _: &RecordedSettings) -> Result<Arc<dyn FunctionConfig>, String> {
        Ok(Arc::new(ForwardConfig {}))
    }
}

/// `kind = "counter"`: a required integer `limit` > 0.
pub struct Counter;

#[derive(Debug)]
pub struct CounterConfig {
    pub limit: u64,
}

impl FunctionConfig for CounterConfig {
    fn kind(&self) -> &'static str {
        "counter"
    }
    fn record(&self) -> RecordedSettings {
        RecordedSettings::of(&serde_json::json!({ "limit": self.limit }))
    }
}

impl FunctionKind for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn summary(&self) -> &'static str {
        "counts packets up to a limit (test kind)"
    }
    fn parse(&self, settings: Settings<'_>) -> Result<Arc<dyn FunctionConfig>, Vec<SettingError>> {
        const LIMIT: Want = Want {
            what: "a whole number above 0",
            example: "1000",
        };
        let mut t = settings.fields();
        let mut out = Problems::default();
        t.required(&[("limit", LIMIT)], &mut out);
        let limit = t.integer("limit", LIMIT, &mut out);
        t.finish(&mut out);
        let limit = limit.and_then(|l| match u64::try_from(*l.get_ref()) {
            Ok(limit) if limit > 0 => Some(limit),
            _ => {
                let message = format!("`limit` must be greater than 0, not {}", l.get_ref());
                out.error(l.span(), message, "e.g. `limit = 1000`".to_string());
                None
            }
        });
        match limit {
            Some(limit) if out.is_empty() => Ok(Arc::new(CounterConfig { limit })),
            _ => Err(out.0),
        }
    }
    fn load(&self, recorded: &RecordedSettings) -> Result<Arc<dyn FunctionConfig>, String> {
        let recorded: serde_json::Value = recorded.parse().map_err(|e| e.to_string())?;
        let limit = recorded["limit"].as_u64().ok_or("no limit")?;
        Ok(Arc::new(CounterConfig { limit }))
    }
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Forward).register(Counter);
    r
}

/// `(line, column, message, hint)` of every diagnostic of `text`, in order; empty if valid.
pub fn problems(text: &str) -> Vec<(usize, usize, String, String)> {
    match crate::spec::parse(std::path::Path::new("t.toml"), text, &registry()) {
        Ok(_) => Vec::new(),
        Err(found) => found
            .iter()
            .map(|d| {
                let hint = d.hint.clone().unwrap_or_default();
                (d.position.line, d.position.col, d.message.clone(), hint)
            })
            .collect(),
    }
}
