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
//! conntrack = { size = 65536, tcp_syn = 120, tcp = 3600, tcp_half_closed = 120, tcp_closing = 10, udp = 60 }
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
use netfn_core::function::{ChainAddresses, Fields, Problems, SettingError, Settings, Want};
use netfn_core::spec::FunctionSpec;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::kind::LbConfig;
use super::{maglev, stage};

/// Largest weight a backend may have.
pub const MAX_WEIGHT: u32 = 10_000;
/// Largest connection table, and largest Maglev table, a function may ask for.
pub const MAX_CONNTRACK: u32 = crate::conntrack::MAX_SIZE;
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
    /// A TCP flow opened by a SYN until the backend's SYN-ACK (conntrack's SYN_SENT).
    pub tcp_syn: u32,
    pub tcp: u32,
    pub tcp_half_closed: u32,
    pub tcp_closing: u32,
    pub udp: u32,
}

impl Default for LbConntrack {
    fn default() -> Self {
        LbConntrack {
            size: 65_536,
            tcp_syn: 120,
            tcp: 3_600,
            tcp_half_closed: 120,
            tcp_closing: 10,
            udp: 60,
        }
    }
}

/// What each key takes, for the reports of a value of the wrong type.
const TABLE_SIZE: Want = Want {
    what: "a prime number up to 16777216",
    example: "65537",
};
const SERVICES: Want = Want {
    what: "a list of service tables",
    example: "[{ vip = \"192.0.2.10\", proto = \"tcp\", port = 80, backends = [{ address = \"10.2.0.10\" }] }]",
};
const VIP: Want = Want {
    what: "an IPv4 address",
    example: "\"192.0.2.10\"",
};
const L4_PROTO: Want = Want {
    what: "tcp or udp",
    example: "\"tcp\"",
};
const PORT: Want = Want {
    what: "a port from 1 to 65535",
    example: "80",
};
const BACKENDS: Want = Want {
    what: "a list of backends",
    example: "[{ address = \"10.2.0.10\", port = 8080 }]",
};
const ADDRESS: Want = Want {
    what: "an IPv4 address",
    example: "\"10.2.0.10\"",
};
const BACKEND_PORT: Want = Want {
    what: "a port from 1 to 65535",
    example: "8080",
};
const WEIGHT: Want = Want {
    what: "a whole number from 0 to 10000",
    example: "2",
};
const HEALTH: Want = Want {
    what: "a table of the health check's settings",
    example: "{ check = \"http\", path = \"/healthz\", interval = 2, timeout = 1 }",
};
const CHECK: Want = Want {
    what: "tcp or http",
    example: "\"http\"",
};
const PATH: Want = Want {
    what: "a URL path",
    example: "\"/healthz\"",
};
const INTERVAL: Want = Want {
    what: "a number of seconds",
    example: "2",
};
const TIMEOUT: Want = Want {
    what: "a number of seconds",
    example: "1",
};
const COUNT: Want = Want {
    what: "a whole number from 1 to 100",
    example: "3",
};

/// Checks a load balancer's settings; `Err` holds every problem found.
pub fn parse(settings: Settings<'_>) -> Result<LbSettings, Vec<SettingError>> {
    let table_span = settings.span();
    let warnings = settings.warnings();
    let mut t = settings.fields();
    let mut out = Problems::default();
    let size = t.integer("table_size", TABLE_SIZE, &mut out);
    let table_size = match &size {
        None => maglev::DEFAULT_SIZE,
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(n) if maglev::is_prime(n) && n <= MAX_TABLE_SIZE => n,
            _ => {
                out.error(
                    v.span(),
                    format!(
                        "table_size {} is not a prime up to {MAX_TABLE_SIZE}",
                        v.get_ref()
                    ),
                    "Maglev needs a prime table size; e.g. 65537 (default), 131071 or 1048573"
                        .to_string(),
                );
                maglev::DEFAULT_SIZE
            }
        },
    };
    let mut conntrack = LbConntrack::default();
    if let Some(table) = t.table("conntrack", crate::conntrack::TABLE, &mut out) {
        let c = &mut conntrack;
        // Kernel mode writes the timeouts to the nf_conntrack_* sysctls (see super::nft).
        let timeouts = &mut [
            ("tcp_syn", &mut c.tcp_syn),
            ("tcp", &mut c.tcp),
            ("tcp_half_closed", &mut c.tcp_half_closed),
            ("tcp_closing", &mut c.tcp_closing),
            ("udp", &mut c.udp),
        ];
        crate::conntrack::read(table, &mut c.size, timeouts, &mut out);
    }
    let before = out.len();
    let raw_services = t.tables("service", "[[chain.function.service]]", SERVICES, &mut out);
    let raw_services = raw_services.map(Spanned::into_inner).unwrap_or_default();
    if raw_services.is_empty() && out.len() == before {
        out.error(
            table_span.clone(),
            "a load balancer needs at least one service",
            "add a `[[chain.function.service]]` table with vip, proto, port and backends"
                .to_string(),
        );
    }
    t.finish(&mut out);
    let mut services = Vec::new();
    let mut spans = Vec::new();
    let mut seen: HashSet<(IpAddr, u16, L4)> = HashSet::new();
    for s in raw_services {
        let span = s.span();
        if let Some((service, at)) = service(&mut out, s) {
            let key = (service.vip, service.port, service.proto);
            if !seen.insert(key) {
                out.error(
                    at.vip.clone(),
                    format!("service {} is defined twice", service.label()),
                    "each VIP, port and protocol is one service; merge their backends".to_string(),
                );
            }
            if table_size < service.backends.len() as u32 {
                out.error(
                    span,
                    format!(
                        "service {} has {} backends, more than table_size {table_size}",
                        service.label(),
                        service.backends.len()
                    ),
                    "make table_size a prime at least 100 times the backend count".to_string(),
                );
            }
            if !service.backends.is_empty() && service.backends.iter().all(|b| b.weight == 0) {
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
    shared_backends(&mut out, &services, &spans);
    let settings = LbSettings {
        services,
        table_size,
        conntrack,
        spans,
    };
    memory_bound(&mut out, &settings, size.map_or(table_span, |s| s.span()));
    out.result(settings)
}

/// Refuses (at `span`) settings whose maps would take more than [`MAX_MAP_BYTES`].
fn memory_bound(out: &mut Problems, s: &LbSettings, span: Range<usize>) {
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
    out.error(
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
fn shared_backends(out: &mut Problems, services: &[ServiceConf], spans: &[ServiceSpans]) {
    let mut serving: HashMap<(IpAddr, u16, L4), Vec<String>> = HashMap::new();
    for (service, at) in services.iter().zip(spans) {
        for (b, span) in service.backends.iter().zip(&at.backends) {
            let of = serving
                .entry((b.address, b.port, service.proto))
                .or_default();
            of.push(service.label());
            if of.len() == REVERSE_SERVICES + 1 {
                out.error(
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

fn service(out: &mut Problems, mut t: Fields<'_>) -> Option<(ServiceConf, ServiceSpans)> {
    t.required(
        &[
            ("vip", VIP),
            ("proto", L4_PROTO),
            ("port", PORT),
            ("backends", BACKENDS),
        ],
        out,
    );
    let vip_text = t.string("vip", VIP, out);
    let vip = vip_text.as_ref().and_then(|v| address(out, "vip", v));
    let proto = t
        .string("proto", L4_PROTO, out)
        .and_then(|p| match p.get_ref().as_str() {
            "tcp" => Some(L4::Tcp),
            "udp" => Some(L4::Udp),
            other => {
                out.error(
                    p.span(),
                    format!("unknown protocol `{other}`"),
                    "a service balances tcp or udp".to_string(),
                );
                None
            }
        });
    let port = t
        .integer("port", PORT, out)
        .and_then(|p| check_port(out, "port", &p));
    let raw_backends = t.tables("backends", "a backend", BACKENDS, out);
    let health = t.table("health", HEALTH, out);
    t.finish(out);
    let mut backends = Vec::new();
    let mut backend_spans = Vec::new();
    let mut seen: HashSet<(IpAddr, u16)> = HashSet::new();
    if let Some(b) = &raw_backends
        && b.get_ref().is_empty()
    {
        out.error(
            b.span(),
            "a service needs at least one backend",
            "e.g. backends = [{ address = \"10.2.0.10\", port = 8080 }]".to_string(),
        );
    }
    for mut b in raw_backends.map(Spanned::into_inner).unwrap_or_default() {
        b.required(&[("address", ADDRESS)], out);
        let text = b.string("address", ADDRESS, out);
        let address = text
            .as_ref()
            .and_then(|a| address(out, "backend address", a));
        let bport = match b.integer("port", BACKEND_PORT, out) {
            Some(p) => check_port(out, "backend port", &p),
            None => port,
        };
        let weight = match b.integer("weight", WEIGHT, out) {
            None => Some(1),
            Some(w) => match u32::try_from(*w.get_ref()) {
                Ok(w) if w <= MAX_WEIGHT => Some(w),
                _ => {
                    out.error(
                        w.span(),
                        format!("weight {} is out of range", w.get_ref()),
                        format!("use 0 (drain: no new flows) to {MAX_WEIGHT}"),
                    );
                    None
                }
            },
        };
        b.finish(out);
        if let (Some(text), Some(address), Some(port), Some(weight)) =
            (text, address, bport, weight)
        {
            if !seen.insert((address, port)) {
                out.error(
                    text.span(),
                    format!("backend {address}:{port} is listed twice"),
                    "list each backend once; use its weight to give it more flows".to_string(),
                );
            }
            backends.push(BackendConf {
                address,
                port,
                weight,
            });
            backend_spans.push(text.span());
        }
    }
    let health = health.and_then(|h| health_check(out, h, proto));
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
            vip: vip_text?.span(),
            backends: backend_spans,
        },
    ))
}

fn health_check(out: &mut Problems, mut h: Fields<'_>, proto: Option<L4>) -> Option<HealthCheck> {
    let span = h.span();
    h.required(&[("check", CHECK)], out);
    let kind = h.string("check", CHECK, out);
    let path = h.string("path", PATH, out);
    let interval = h.number("interval", INTERVAL, out);
    let timeout = h.number("timeout", TIMEOUT, out);
    let rise = h.integer("rise", COUNT, out);
    let fall = h.integer("fall", COUNT, out);
    h.finish(out);
    let kind = kind?;
    let at_path = path.as_ref().map(Spanned::span);
    let check = match (kind.get_ref().as_str(), &path) {
        ("tcp", None) => Probe::Tcp,
        ("http", path) => {
            let path = path
                .as_ref()
                .map_or("/".to_string(), |p| p.get_ref().clone());
            if !path.starts_with('/') {
                out.error(
                    at_path.unwrap_or_else(|| span.clone()),
                    format!("health check path `{path}` does not start with /"),
                    "e.g. path = \"/healthz\"".to_string(),
                );
            }
            Probe::Http { path }
        }
        ("tcp", Some(p)) => {
            out.error(
                p.span(),
                "a tcp health check takes no path",
                "use check = \"http\" to GET a path".to_string(),
            );
            Probe::Tcp
        }
        (other, _) => {
            out.error(
                kind.span(),
                format!("unknown health check `{other}`"),
                "use check = \"tcp\" (connect) or \"http\" (GET a path, expect 2xx)".to_string(),
            );
            return None;
        }
    };
    if proto == Some(L4::Udp) {
        out.error(
            kind.span(),
            "health checks connect over TCP; this service is udp",
            "remove `health`, or check a TCP port of the backends from a tcp service".to_string(),
        );
    }
    let seconds = |out: &mut Problems, name: &str, v: &Option<Spanned<f64>>, default: f64| {
        let Some(v) = v else {
            return Some((default * 1000.0) as u32);
        };
        let s = *v.get_ref();
        if !(0.05..=3600.0).contains(&s) {
            out.error(
                v.span(),
                format!("health check {name} {s} s is out of range"),
                "use 0.05 to 3600 seconds".to_string(),
            );
            return None;
        }
        Some((s * 1000.0).round() as u32)
    };
    let interval_ms = seconds(out, "interval", &interval, 2.0);
    let timeout_ms = seconds(out, "timeout", &timeout, 1.0);
    if let (Some(i), Some(t)) = (interval_ms, timeout_ms)
        && t >= i
    {
        out.error(
            timeout.as_ref().map_or(span.clone(), Spanned::span),
            format!(
                "health check timeout {} s is not shorter than its interval {} s",
                f64::from(t) / 1000.0,
                f64::from(i) / 1000.0
            ),
            "a check must end before the next one starts: make the timeout shorter".to_string(),
        );
    }
    let count = |out: &mut Problems, name: &str, v: &Option<Spanned<i64>>, default: u32| match v {
        None => Some(default),
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(n) if (1..=100).contains(&n) => Some(n),
            _ => {
                out.error(
                    v.span(),
                    format!("health check {name} {} is out of range", v.get_ref()),
                    "use 1 to 100 checks in a row".to_string(),
                );
                None
            }
        },
    };
    let rise = count(out, "rise", &rise, 2);
    let fall = count(out, "fall", &fall, 3);
    Some(HealthCheck {
        check,
        interval_ms: interval_ms?,
        timeout_ms: timeout_ms?,
        rise: rise?,
        fall: fall?,
    })
}

fn address(out: &mut Problems, what: &str, value: &Spanned<String>) -> Option<IpAddr> {
    match value.get_ref().parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => match crate::address::unusable(a) {
            None => Some(IpAddr::V4(a)),
            Some(why) => {
                out.error(
                    value.span(),
                    format!("{what} {a} is {why}"),
                    "use an address one host can have (unicast), e.g. \"192.0.2.10\"".to_string(),
                );
                None
            }
        },
        Ok(IpAddr::V6(_)) => {
            out.error(
                value.span(),
                format!("{what} {} is IPv6: not yet", value.get_ref()),
                "chains are IPv4 today; use an IPv4 address".to_string(),
            );
            None
        }
        Err(_) => {
            out.error(
                value.span(),
                format!("{what} `{}` is not an IP address", value.get_ref()),
                "e.g. \"192.0.2.10\"".to_string(),
            );
            None
        }
    }
}

fn check_port(out: &mut Problems, what: &str, value: &Spanned<i64>) -> Option<u16> {
    match u16::try_from(*value.get_ref()) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            out.error(
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
        let mut out = Problems::default();
        self.served_earlier(&mut out, chain.earlier);
        for (service, spans) in self.services.iter().zip(&self.spans) {
            if let IpAddr::V4(vip) = service.vip {
                if chain.endpoints.contains(&vip) || chain.gateways.contains(&vip) {
                    out.error(
                        spans.vip.clone(),
                        format!("VIP {vip} is an address of the chain itself"),
                        "pick a VIP no endpoint or gateway of the chain uses, e.g. from \
                         192.0.2.0/24"
                            .to_string(),
                    );
                } else if chain.transit.contains(&vip) {
                    out.error(
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
                    out.error(
                        span.clone(),
                        format!("backend {a} is the {which} address of the egress subnet {egress}"),
                        "no host has it: use the address of a server in the subnet".to_string(),
                    );
                } else if chain.ingress_subnet.contains(&a) {
                    out.error(
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
                    out.error(
                        span.clone(),
                        format!("backend {a} is a gateway address of the chain itself"),
                        "point backends at servers beyond the egress endpoint".to_string(),
                    );
                } else if chain.transit.contains(&a) {
                    out.error(
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
        out.0
    }

    /// Services an earlier load balancer of the chain serves: it takes (and rewrites) every
    /// flow to them, so this one would never get one.
    fn served_earlier(&self, out: &mut Problems, earlier: &[FunctionSpec]) {
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
                out.error(
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
        // `tcp_syn` is checked as the others (kernel mode writes SYN_SENT and SYN_RECV).
        let messages = found("{ tcp_syn = 0 }");
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].ends_with("conntrack tcp_syn timeout is 0"));
    }

    #[test]
    fn every_wrong_conntrack_key_is_reported_at_itself() {
        // Serde stopped at the -1 (in its words, "expected u32"): the 0 timeout went unseen.
        let body = "conntrack = { size = -1, tcp = 0, udp = \"60\", tcp_close = 5 }\n\
                    [[chain.function.service]]\nvip = \"192.0.2.10\"\nproto = \"udp\"\n\
                    port = 53\nbackends = [{ address = \"10.2.0.10\" }]\n";
        let found: Vec<(usize, usize, String)> =
            crate::test_support::diagnostics(Path::new("c.toml"), "load-balancer", body)
                .into_iter()
                .map(|d| (d.position.line, d.position.col, d.message))
                .collect();
        let expected = [
            (
                22,
                "`size` must be a whole number from 1 to 16777216, found -1",
            ),
            (32, "conntrack tcp timeout is 0"),
            (41, "`udp` must be a whole number of seconds, found \"60\""),
            (47, "unknown key `tcp_close` in `conntrack`"),
        ];
        assert_eq!(found.len(), expected.len(), "{found:?}");
        for ((col, message), got) in expected.iter().zip(&found) {
            assert_eq!((10, *col), (got.0, got.1), "{found:?}");
            assert!(got.2.ends_with(message), "{found:?}");
        }
    }
}
