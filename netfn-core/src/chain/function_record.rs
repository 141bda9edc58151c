//! One function's part of a chain's record: its hop and its settings as its kind's type, for
//! what starts from the record rather than from the chain file (a WireGuard endpoint's process,
//! a load balancer's health checks, the agent's other tasks of a kind).

use serde::de::DeserializeOwned;
use thiserror::Error;

use super::state::{self, StateError};
use crate::plan::{HopPlan, HopRole};

#[derive(Debug, Error)]
pub enum FunctionRecordError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("chain `{0}` has no record: is it up?")]
    NoChain(String),
    #[error("chain `{chain}` has no function `{function}`")]
    NoFunction { chain: String, function: String },
    #[error("`{0}` is not a function")]
    NotAFunction(String),
    #[error("the recorded settings of `{function}`: {source}")]
    Settings {
        function: String,
        source: serde_json::Error,
    },
}

/// The hop of `function` in `chain`'s record and its settings as `T` (its kind's type).
pub fn load<T: DeserializeOwned>(
    chain: &str,
    function: &str,
) -> Result<(HopPlan, T), FunctionRecordError> {
    let record = state::load(chain)?.ok_or_else(|| FunctionRecordError::NoChain(chain.into()))?;
    let (_, hop) = record
        .plan
        .hop(function)
        .ok_or_else(|| FunctionRecordError::NoFunction {
            chain: chain.into(),
            function: function.into(),
        })?;
    let HopRole::Function { settings, .. } = &hop.role else {
        return Err(FunctionRecordError::NotAFunction(function.into()));
    };
    let settings = settings
        .parse()
        .map_err(|source| FunctionRecordError::Settings {
            function: function.into(),
            source,
        })?;
    Ok((hop.clone(), settings))
}
