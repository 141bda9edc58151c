//! Chains for unit tests of the planning code (no kind registry needed).

use std::sync::Arc;

use crate::function::{FunctionConfig, RecordedSettings};
use crate::spec::{ChainSpec, EndpointSpec, FastPath, FunctionSpec};

#[derive(Debug)]
struct Forward;

impl FunctionConfig for Forward {
    fn kind(&self) -> &'static str {
        "forward"
    }
    fn record(&self) -> RecordedSettings {
        RecordedSettings::of(&serde_json::json!({}))
    }
}

/// A function that declares extra sources (a load balancer's VIPs, say).
#[derive(Debug)]
pub(crate) struct WithSources(pub Vec<crate::plan::ExtraSource>);

impl FunctionConfig for WithSources {
    fn kind(&self) -> &'static str {
        "lb"
    }
    fn record(&self) -> RecordedSettings {
        RecordedSettings::of(&serde_json::json!({}))
    }
    fn extra_sources(&self) -> Vec<crate::plan::ExtraSource> {
        self.0.clone()
    }
}

/// Chain `name`: 10.1.0.2/24 → forward functions `functions` → 10.2.0.2/24.
pub(crate) fn chain(
    name: &str,
    fastpath: FastPath,
    functions: &[&str],
    egress_namespace: Option<&str>,
) -> ChainSpec {
    let parse = |s: &str| s.parse().expect("test address");
    ChainSpec {
        name: name.into(),
        fastpath,
        transit: "100.64.0.0/16".parse().expect("test transit"),
        ingress: EndpointSpec {
            address: "10.1.0.2/24".parse().expect("test address"),
            gateway: parse("10.1.0.1"),
            namespace: None,
        },
        egress: EndpointSpec {
            address: "10.2.0.2/24".parse().expect("test address"),
            gateway: parse("10.2.0.1"),
            namespace: egress_namespace.map(str::to_string),
        },
        functions: functions
            .iter()
            .map(|f| FunctionSpec {
                name: f.to_string(),
                kind: "forward".into(),
                config: Arc::new(Forward),
            })
            .collect(),
    }
}

/// Chain `edge` in tc mode with forward functions `fn1`…`fnN`.
pub fn tc_chain(functions: usize, egress_namespace: Option<&str>) -> ChainSpec {
    let names: Vec<String> = (1..=functions).map(|i| format!("fn{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    chain("edge", FastPath::Tc, &names, egress_namespace)
}

/// An IPv4 address literal of a test.
pub fn a(s: &str) -> std::net::Ipv4Addr {
    s.parse().expect("test address")
}
