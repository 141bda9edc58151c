//! The load balancer's settings as the chain file writes them, checked into [`LbSettings`].
//! Every problem is reported at its place in the chain file; what needs the rest of the chain
//! (a VIP equal to a chain address, a backend in the ingress subnet) is checked by
//! [`LbSettings::check_in_chain`] with the spans kept here.
//!
//! ```toml
//! [[chain.function]]
//! name = "lb1"
//! kind = "load-balancer"
//! table_size = 65537                 # optional: Maglev table entries per service (a prime)
//! conntrack = { size = 65536, tcp = 3600, tcp_half_closed = 120, tcp_closing = 10, udp = 60 }
//!
//! [[chain.function.service]]
//! vip = "192.0.2.10"                 # clients send here; need not be in any chain subnet
//! proto = "tcp"                      # tcp | udp
//! port = 80
//! backends = [
//!   { address = "10.2.0.10", port = 8080, weight = 2 },   # port: default the service's
//!   { address = "10.2.0.11" },                            # weight: default 1; 0 drains
//! ]
//! health = { check = "http", path = "/healthz", interval = 2, timeout = 1, rise = 2, fall = 3 }
//! ```

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::Range;

use netfn_common::lb::{LB_FLOWS_MAP, LB_TABLE_MAP, REVERSE_SERVICES};
use netfn_core::function::{ChainAddresses, SettingError, Settings};
use netfn_core::spec::FunctionSpec;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::kind::LbConfig;
use super::{maglev, stage};

/// Largest weight a backend may have.
pub const MAX_WEIGHT: u32 = 10_000;
/// Largest connection table, and largest Maglev table, a function may ask for.
pub const MAX_CONNTRACK: u32 = 16 << 20;
pub const MAX_TABLE_SIZE: u32 = 1 << 24;
/// Most bytes a load balancer's maps may take ([`stage::map_bytes`]), well below what a host
/// has. It also keeps the Maglev tables' indexes (u32) in range: 2 GiB of 4-byte entries.
pub const MAX_MAP_BYTES: u64 = 2 << 30;
const _: () = assert!(MAX_MAP_BYTES / 4 <= u32::MAX as u64);

/// A checked load balancer configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbSettings {
    pub services: Vec<ServiceConf>,
    /// Maglev table entries per service (a prime).
    pub table_size: u32,
    pub conntrack: LbConntrack,
    /// Where each service was written (not recorded: only `validate` reports at them).
    #[serde(skip)]
    pub spans: Vec<ServiceSpans>,
}

/// Spans of one service's parts in the chain file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceSpans {
    pub vip: Range<usize>,
    pub backends: Vec<Range<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    pub fn number(self) -> u8 {
        match self {
            L4::Tcp => 6,
            L4::Udp => 17,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

/// One virtual service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceConf {
    pub vip: IpAddr,
    pub proto: L4,
    pub port: u16,
    pub backends: Vec<BackendConf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

impl ServiceConf {
    /// `vip:port/proto`, for messages, status and metric labels.
    pub fn label(&self) -> String {
        format!("{}:{}/{}", self.vip, self.port, self.proto.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackendConf {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
}

impl BackendConf {
    /// `address:port`: the backend's identity (Maglev, status, metric labels).
    pub fn id(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }
}

/// How a service's backends are checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub check: Probe,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    /// Successes in a row that bring a down backend up, failures in a row that take it down.
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum Probe {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` answers 2xx.
    Http { path: String },
}

/// The connection table's size and idle timeouts (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LbConntrack {
    pub size: u32,
    pub tcp: u32,
    pub tcp_half_closed: u32,
    pub tcp_closing: u32,
    pub udp: u32,
}

impl Default for LbConntrack {
    fn default() -> Self {
        LbConntrack {
            size: 65_536,
            tcp: 3_600,
            tcp_half_closed: 120,
            tcp_closing: 10,
            udp: 60,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLb {
    table_size: Option<Spanned<u32>>,
    conntrack: Option<Spanned<LbConntrack>>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    vip: Spanned<String>,
    proto: Spanned<String>,
    port: Spanned<i64>,
    backends: Spanned<Vec<Spanned<RawBackend>>>,
    health: Option<Spanned<RawHealth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    port: Option<Spanned<i64>>,
    weight: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    check: Spanned<String>,
    path: Option<Spanned<String>>,
    interval: Option<Spanned<f64>>,
    timeout: Option<Spanned<f64>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
}

/// Collects problems.
#[derive(Default)]
struct Sink(Vec<SettingError>);

impl Sink {
    fn error(&mut self, span: Range<usize>, message: String, hint: impl Into<Option<String>>) {
        self.0.push(SettingError::new(span, message, hint.into()));
    }
}

/// Checks a load balancer's settings; `Err` holds every problem found.
pub fn parse(settings: Settings<'_>) -> Result<LbSettings, Vec<SettingError>> {
    let table_span = settings.span();
    let warnings = settings.warnings();
    let raw: RawLb = settings.deserialize().map_err(|mut e| {
        e.hint = Some(
            "a load balancer takes `table_size`, `conntrack` and `[[chain.function.service]]` \
             tables (see docs/chain-format.md)"
                .into(),
        );
        vec![e]
    })?;
    let mut sink = Sink::default();
    let table_size = match &raw.table_size {
        None => maglev::DEFAULT_SIZE,
        Some(t) => {
            let n = *t.get_ref();
            if !maglev::is_prime(n) || n > MAX_TABLE_SIZE {
                sink.error(
                    t.span(),
                    format!("table_size {n} is not a prime up to {MAX_TABLE_SIZE}"),
                    "Maglev needs a prime table size; e.g. 65537 (default), 131071 or 1048573"
                        .to_string(),
                );
            }
            n
        }
    };
    let conntrack = match raw.conntrack {
        None => LbConntrack::default(),
        Some(c) => {
            let span = c.span();
            let c = c.into_inner();
            if c.size == 0 || c.size > MAX_CONNTRACK {
                sink.error(
                    span.clone(),
                    format!("conntrack size {} is out of range", c.size),
                    format!("use 1 to {MAX_CONNTRACK} flows"),
                );
            }
            for (name, v) in [
                ("tcp", c.tcp),
                ("tcp_half_closed", c.tcp_half_closed),
                ("tcp_closing", c.tcp_closing),
                ("udp", c.udp),
            ] {
                // Kernel mode writes them to the nf_conntrack_* sysctls (see super::nft).
                if let Some((message, hint)) = crate::conntrack::timeout_problem(name, v) {
                    sink.error(span.clone(), message, hint);
                }
            }
            c
        }
    };
    if raw.service.is_empty() {
        sink.error(
            table_span.clone(),
            "a load balancer needs at least one service".into(),
            "add a `[[chain.function.service]]` table with vip, proto, port and backends"
                .to_string(),
        );
    }
    let mut services = Vec::new();
    let mut spans = Vec::new();
    let mut seen: HashSet<(IpAddr, u16, L4)> = HashSet::new();
    for s in raw.service {
        let span = s.span();
        if let Some((service, at)) = service(&mut sink, s.into_inner()) {
            let key = (service.vip, service.port, service.proto);
            if !seen.insert(key) {
                sink.error(
                    at.vip.clone(),
                    format!("service {} is defined twice", service.label()),
                    "each VIP, port and protocol is one service; merge their backends".to_string(),
                );
            }
            if table_size < service.backends.len() as u32 {
                sink.error(
                    span,
                    format!(
                        "service {} has {} backends, more than table_size {table_size}",
                        service.label(),
                        service.backends.len()
                    ),
                    "make table_size a prime at least 100 times the backend count".to_string(),
                );
            }
            if service.backends.iter().all(|b| b.weight == 0) {
                warnings.warn(SettingError::new(
                    at.vip.clone(),
                    format!(
                        "every backend of service {} has weight 0: it takes no new flows",
                        service.label()
                    ),
                    Some("give at least one backend a weight above 0".into()),
                ));
            }
            services.push(service);
            spans.push(at);
        }
    }
    shared_backends(&mut sink, &services, &spans);
    let settings = LbSettings {
        services,
        table_size,
        conntrack,
        spans,
    };
    let size_span = raw.table_size.as_ref().map(Spanned::span);
    memory_bound(&mut sink, &settings, size_span.unwrap_or(table_span));
    if sink.0.is_empty() {
        Ok(settings)
    } else {
        Err(sink.0)
    }
}

/// Refuses (at `span`) settings whose maps would take more than [`MAX_MAP_BYTES`].
fn memory_bound(sink: &mut Sink, s: &LbSettings, span: Range<usize>) {
    let bytes = stage::map_bytes(s, stage::counter_cpus().unwrap_or(1));
    let total = bytes
        .iter()
        .fold(0u64, |sum, (_, b)| sum.saturating_add(*b));
    if total <= MAX_MAP_BYTES {
        return;
    }
    let of = |map: &str| {
        bytes
            .iter()
            .find(|(name, _)| *name == map)
            .map_or(0, |(_, b)| *b)
    };
    sink.error(
        span,
        format!(
            "the load balancer's maps would take about {} (at most {}): {} of Maglev tables \
             ({} services × 2 × table_size {}), {} of connection table (conntrack.size {})",
            gib(total),
            gib(MAX_MAP_BYTES),
            gib(of(LB_TABLE_MAP)),
            s.services.len(),
            s.table_size,
            gib(of(LB_FLOWS_MAP)),
            s.conntrack.size
        ),
        "lower table_size (a prime 100 times a service's backends spreads them within 1%; \
         65537 is the default), conntrack.size or the number of services"
            .to_string(),
    );
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// A backend's answers find their flow by trying each service the backend serves (the stage's
/// reverse map holds at most [`REVERSE_SERVICES`] per backend `address:port:proto`): more
/// services on one backend are refused at the first backend beyond that.
fn shared_backends(sink: &mut Sink, services: &[ServiceConf], spans: &[ServiceSpans]) {
    let mut serving: HashMap<(IpAddr, u16, L4), Vec<String>> = HashMap::new();
    for (service, at) in services.iter().zip(spans) {
        for (b, span) in service.backends.iter().zip(&at.backends) {
            let of = serving
                .entry((b.address, b.port, service.proto))
                .or_default();
            of.push(service.label());
            if of.len() == REVERSE_SERVICES + 1 {
                sink.error(
                    span.clone(),
                    format!(
                        "backend {}/{} serves {} services ({}); one backend serves at most \
                         {REVERSE_SERVICES}",
                        b.id(),
                        service.proto.name(),
                        of.len(),
                        of.join(", ")
                    ),
                    "give the extra services another backend port (answers are matched to \
                     their service by the backend's address and port)"
                        .to_string(),
                );
            }
        }
    }
}

fn service(sink: &mut Sink, raw: RawService) -> Option<(ServiceConf, ServiceSpans)> {
    let vip = address(sink, "vip", &raw.vip);
    let proto = match raw.proto.get_ref().as_str() {
        "tcp" => Some(L4::Tcp),
        "udp" => Some(L4::Udp),
        other => {
            sink.error(
                raw.proto.span(),
                format!("unknown protocol `{other}`"),
                "a service balances tcp or udp".to_string(),
            );
            None
        }
    };
    let port = check_port(sink, "port", &raw.port);
    let mut backends = Vec::new();
    let mut backend_spans = Vec::new();
    let mut seen: HashSet<(IpAddr, u16)> = HashSet::new();
    if raw.backends.get_ref().is_empty() {
        sink.error(
            raw.backends.span(),
            "a service needs at least one backend".into(),
            "e.g. backends = [{ address = \"10.2.0.10\", port = 8080 }]".to_string(),
        );
    }
    for b in raw.backends.into_inner() {
        let b = b.into_inner();
        let address = address(sink, "backend address", &b.address);
        let bport = match &b.port {
            Some(p) => check_port(sink, "backend port", p),
            None => port,
        };
        let weight = match &b.weight {
            None => Some(1),
            Some(w) => match u32::try_from(*w.get_ref()) {
                Ok(w) if w <= MAX_WEIGHT => Some(w),
                _ => {
                    sink.error(
                        w.span(),
                        format!("weight {} is out of range", w.get_ref()),
                        format!("use 0 (drain: no new flows) to {MAX_WEIGHT}"),
                    );
                    None
                }
            },
        };
        if let (Some(address), Some(port), Some(weight)) = (address, bport, weight) {
            if !seen.insert((address, port)) {
                sink.error(
                    b.address.span(),
                    format!("backend {address}:{port} is listed twice"),
                    "list each backend once; use its weight to give it more flows".to_string(),
                );
            }
            backends.push(BackendConf {
                address,
                port,
                weight,
            });
            backend_spans.push(b.address.span());
        }
    }
    let health = raw.health.and_then(|h| health(sink, h, proto));
    // A service whose own fields are fine goes on to the checks across services, even when one
    // of its backends was not (every problem is reported in one run).
    Some((
        ServiceConf {
            vip: vip?,
            proto: proto?,
            port: port?,
            backends,
            health,
        },
        ServiceSpans {
            vip: raw.vip.span(),
            backends: backend_spans,
        },
    ))
}

fn health(sink: &mut Sink, raw: Spanned<RawHealth>, proto: Option<L4>) -> Option<HealthCheck> {
    let span = raw.span();
    let h = raw.into_inner();
    let check = match (h.check.get_ref().as_str(), &h.path) {
        ("tcp", None) => Probe::Tcp,
        ("http", path) => {
            let path = path
                .as_ref()
                .map_or("/".to_string(), |p| p.get_ref().clone());
            if !path.starts_with('/') {
                sink.error(
                    h.path.as_ref().map_or(span.clone(), Spanned::span),
                    format!("health check path `{path}` does not start with /"),
                    "e.g. path = \"/healthz\"".to_string(),
                );
            }
            Probe::Http { path }
        }
        ("tcp", Some(p)) => {
            sink.error(
                p.span(),
                "a tcp health check takes no path".into(),
                "use check = \"http\" to GET a path".to_string(),
            );
            Probe::Tcp
        }
        (other, _) => {
            sink.error(
                h.check.span(),
                format!("unknown health check `{other}`"),
                "use check = \"tcp\" (connect) or \"http\" (GET a path, expect 2xx)".to_string(),
            );
            return None;
        }
    };
    if proto == Some(L4::Udp) {
        sink.error(
            h.check.span(),
            "health checks connect over TCP; this service is udp".into(),
            "remove `health`, or check a TCP port of the backends from a tcp service".to_string(),
        );
    }
    let seconds = |sink: &mut Sink, name: &str, v: &Option<Spanned<f64>>, default: f64| {
        let Some(v) = v else {
            return Some((default * 1000.0) as u32);
        };
        let s = *v.get_ref();
        if !(0.05..=3600.0).contains(&s) {
            sink.error(
                v.span(),
                format!("health check {name} {s} s is out of range"),
                "use 0.05 to 3600 seconds".to_string(),
            );
            return None;
        }
        Some((s * 1000.0).round() as u32)
    };
    let interval = seconds(sink, "interval", &h.interval, 2.0);
    let timeout = seconds(sink, "timeout", &h.timeout, 1.0);
    if let (Some(i), Some(t)) = (interval, timeout)
        && t >= i
    {
        sink.error(
            h.timeout.as_ref().map_or(span.clone(), Spanned::span),
            format!(
                "health check timeout {} s is not shorter than its interval {} s",
                f64::from(t) / 1000.0,
                f64::from(i) / 1000.0
            ),
            "a check must end before the next one starts: make the timeout shorter".to_string(),
        );
    }
    let count = |sink: &mut Sink, name: &str, v: &Option<Spanned<i64>>, default: u32| match v {
        None => Some(default),
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(n) if (1..=100).contains(&n) => Some(n),
            _ => {
                sink.error(
                    v.span(),
                    format!("health check {name} {} is out of range", v.get_ref()),
                    "use 1 to 100 checks in a row".to_string(),
                );
                None
            }
        },
    };
    let rise = count(sink, "rise", &h.rise, 2);
    let fall = count(sink, "fall", &h.fall, 3);
    Some(HealthCheck {
        check,
        interval_ms: interval?,
        timeout_ms: timeout?,
        rise: rise?,
        fall: fall?,
    })
}

fn address(sink: &mut Sink, what: &str, value: &Spanned<String>) -> Option<IpAddr> {
    match value.get_ref().parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => match crate::address::unusable(a) {
            None => Some(IpAddr::V4(a)),
            Some(why) => {
                sink.error(
                    value.span(),
                    format!("{what} {a} is {why}"),
                    "use an address one host can have (unicast), e.g. \"192.0.2.10\"".to_string(),
                );
                None
            }
        },
        Ok(IpAddr::V6(_)) => {
            sink.error(
                value.span(),
                format!("{what} {} is IPv6: not yet", value.get_ref()),
                "chains are IPv4 today; use an IPv4 address".to_string(),
            );
            None
        }
        Err(_) => {
            sink.error(
                value.span(),
                format!("{what} `{}` is not an IP address", value.get_ref()),
                "e.g. \"192.0.2.10\"".to_string(),
            );
            None
        }
    }
}

fn check_port(sink: &mut Sink, what: &str, value: &Spanned<i64>) -> Option<u16> {
    match u16::try_from(*value.get_ref()) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            sink.error(
                value.span(),
                format!("{what} {} is out of range", value.get_ref()),
                "use a port from 1 to 65535".to_string(),
            );
            None
        }
    }
}

impl LbSettings {
    /// Problems only the chain shows: a VIP equal to a chain address or inside its transit pool,
    /// a backend inside the ingress subnet (its answers would never come back through the load
    /// balancer), on a gateway address, inside the transit pool, or on the egress subnet's
    /// network or broadcast address.
    pub fn check_in_chain(&self, chain: &ChainAddresses<'_>) -> Vec<SettingError> {
        let mut sink = Sink::default();
        self.served_earlier(&mut sink, chain.earlier);
        for (service, spans) in self.services.iter().zip(&self.spans) {
            if let IpAddr::V4(vip) = service.vip {
                if chain.endpoints.contains(&vip) || chain.gateways.contains(&vip) {
                    sink.error(
                        spans.vip.clone(),
                        format!("VIP {vip} is an address of the chain itself"),
                        "pick a VIP no endpoint or gateway of the chain uses, e.g. from \
                         192.0.2.0/24"
                            .to_string(),
                    );
                } else if chain.transit.contains(&vip) {
                    sink.error(
                        spans.vip.clone(),
                        format!(
                            "VIP {vip} is inside the chain's transit pool {}",
                            chain.transit
                        ),
                        "the links between functions take their addresses from it: pick a VIP \
                         outside it, e.g. from 192.0.2.0/24 (or move the pool with `transit`)"
                            .to_string(),
                    );
                }
            }
            for (b, span) in service.backends.iter().zip(&spans.backends) {
                let IpAddr::V4(a) = b.address else { continue };
                let egress = chain.egress_subnet;
                // A /31 has no network or broadcast address (RFC 3021).
                let edge = [
                    (egress.network(), "network"),
                    (egress.broadcast(), "broadcast"),
                ]
                .into_iter()
                .find(|(edge, _)| egress.prefix_len() <= 30 && *edge == a);
                if let Some((_, which)) = edge {
                    sink.error(
                        span.clone(),
                        format!("backend {a} is the {which} address of the egress subnet {egress}"),
                        "no host has it: use the address of a server in the subnet".to_string(),
                    );
                } else if chain.ingress_subnet.contains(&a) {
                    sink.error(
                        span.clone(),
                        format!(
                            "backend {a} is inside the ingress subnet {}",
                            chain.ingress_subnet
                        ),
                        "backends live beyond the egress endpoint: use addresses of the egress \
                         side"
                            .to_string(),
                    );
                } else if chain.gateways.contains(&a) {
                    sink.error(
                        span.clone(),
                        format!("backend {a} is a gateway address of the chain itself"),
                        "point backends at servers beyond the egress endpoint".to_string(),
                    );
                } else if chain.transit.contains(&a) {
                    sink.error(
                        span.clone(),
                        format!(
                            "backend {a} is inside the chain's transit pool {}",
                            chain.transit
                        ),
                        "point backends at servers beyond the egress endpoint (or move the \
                         pool with `transit`)"
                            .to_string(),
                    );
                }
            }
        }
        sink.0
    }

    /// Services an earlier load balancer of the chain serves: it takes (and rewrites) every
    /// flow to them, so this one would never get one.
    fn served_earlier(&self, sink: &mut Sink, earlier: &[FunctionSpec]) {
        for (service, spans) in self.services.iter().zip(&self.spans) {
            let key = (service.vip, service.port, service.proto);
            let first = earlier.iter().find(|f| {
                f.config.downcast_ref::<LbConfig>().is_some_and(|lb| {
                    lb.settings
                        .services
                        .iter()
                        .any(|s| (s.vip, s.port, s.proto) == key)
                })
            });
            if let Some(first) = first {
                sink.error(
                    spans.vip.clone(),
                    format!(
                        "service {} is already served by function `{}`, earlier in the chain: \
                         this one would never get a flow",
                        service.label(),
                        first.name
                    ),
                    format!(
                        "`{}` balances every flow to it first: remove the service here, or give \
                         it another VIP or port",
                        first.name
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn conntrack_timeouts_beyond_the_kernels_are_refused() {
        // Kernel mode writes them to nf_conntrack_*_timeout: at most INT_MAX jiffies, 2,147,483 s
        // at HZ 1000.
        let service = "[[chain.function.service]]\nvip = \"192.0.2.10\"\nproto = \"udp\"\n\
                       port = 53\nbackends = [{ address = \"10.2.0.10\" }]\n";
        let found = |conntrack: &str| -> Vec<String> {
            let body = format!("conntrack = {conntrack}\n{service}");
            crate::test_support::diagnostics(Path::new("c.toml"), "load-balancer", &body)
                .into_iter()
                .map(|d| d.message)
                .collect()
        };
        assert_eq!(found("{ tcp = 2147483, udp = 1 }"), Vec::<String>::new());
        let messages = found("{ tcp = 4000000000, tcp_closing = 2147484 }");
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].ends_with("conntrack tcp timeout 4000000000 s is too long"));
        assert!(messages[1].ends_with("conntrack tcp_closing timeout 2147484 s is too long"));
    }
}
