//! The firewall's settings as the chain file (and its rules file) write them, checked into a
//! [`RuleSet`] plus connection-table settings. Every problem is reported, located: in the chain
//! file by span, in a rules file by its own line and column. Nothing here compiles or loads
//! rules.
//!
//! ```toml
//! [[chain.function]]
//! name = "fw1"
//! kind = "firewall"
//! default = "drop"                 # accept | drop | reject, for new connections no rule matches
//! rules_file = "fw1-rules.toml"    # optional: `[[rule]]` tables, checked after the inline ones
//! conntrack = { size = 65536, udp = 30 }
//!
//! [[chain.function.rule]]
//! name = "web"                     # optional; named rules get their own counters
//! from = "ingress"                 # the side that opens the connection (default ingress)
//! proto = "tcp"                    # tcp | udp | icmp | any (default)
//! src = ["10.1.0.0/24"]            # prefixes, one or a list (default any)
//! dport = [80, 443, "8000-8080"]   # ports: a number, "lo-hi", or a list of them
//! action = "accept"                # accept | drop | reject
//! rate = { pps = 100, burst = 20 } # optional: over the limit counts as a drop
//! ```

use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;

use ipnet::IpNet;
use netfn_core::function::{Located, SettingError, Settings};
use netfn_core::spec::diag::LineIndex;
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::kind::PROBE_RULE;
use super::rules::{Action, PortRange, Proto, RateLimit, Rule, RuleSet, Side};

/// The connection table's size and timeouts (seconds), as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conntrack {
    /// Connections the table holds; when it is full the least recently used one is evicted.
    pub size: u32,
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_half_closed: u32,
    pub tcp_closing: u32,
    pub udp: u32,
    pub udp_stream: u32,
    pub icmp: u32,
}

impl Default for Conntrack {
    /// Linux conntrack's defaults (`nf_conntrack_*_timeout`), a smaller established timeout.
    fn default() -> Self {
        Conntrack {
            size: 65_536,
            tcp_syn: 120,
            tcp_established: 86_400,
            tcp_half_closed: 120,
            tcp_closing: 10,
            udp: 30,
            udp_stream: 120,
            icmp: 30,
        }
    }
}

/// Largest connection table a function may ask for.
pub const MAX_CONNTRACK: u32 = 16 << 20;

/// A checked firewall configuration: the rules in order (inline, then the rules file's) and the
/// connection-table settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallSettings {
    pub rules: RuleSet,
    pub conntrack: Conntrack,
}

/// Where a rule was written: in the chain file (a span) or in a rules file.
#[derive(Debug, Clone)]
pub enum Origin {
    Chain(Range<usize>),
    File(Located),
}

impl Origin {
    /// A diagnostic about the rule written here.
    pub fn diagnostic(&self, message: String, hint: Option<String>) -> SettingError {
        match self {
            Origin::Chain(span) => SettingError::new(span.clone(), message, hint),
            Origin::File(at) => SettingError {
                span: 0..0,
                message,
                hint,
                elsewhere: Some(at.clone()),
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirewall {
    default: Option<Spanned<String>>,
    rules_file: Option<Spanned<String>>,
    conntrack: Option<Spanned<Conntrack>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRulesFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    proto: Option<Spanned<String>>,
    src: Option<Spanned<OneOrMany<String>>>,
    dst: Option<Spanned<OneOrMany<String>>>,
    sport: Option<Spanned<OneOrMany<PortItem>>>,
    dport: Option<Spanned<OneOrMany<PortItem>>>,
    icmp_type: Option<Spanned<PortItem>>,
    action: Option<Spanned<String>>,
    rate: Option<Spanned<RawRate>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    pps: i64,
    burst: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortItem {
    Number(i64),
    Text(String),
}

/// Where the problems of one file go: the chain file (by span) or a rules file (by position).
struct Sink<'a> {
    /// `None`: the chain file; else the rules file's path and line index.
    file: Option<(&'a Path, &'a LineIndex<'a>)>,
    errors: Vec<SettingError>,
}

impl Sink<'_> {
    fn error(&mut self, span: Range<usize>, message: String, hint: Option<String>) {
        let elsewhere = self.file.map(|(path, lines)| {
            let at = lines.position(span.start);
            Located {
                file: path.to_path_buf(),
                line: at.line,
                col: at.col,
            }
        });
        self.errors.push(SettingError {
            span,
            message,
            hint,
            elsewhere,
        });
    }
}

/// Checks a firewall's settings; `Err` holds every problem found. With the settings come the
/// origins of the rules, in the same order.
pub fn parse(settings: Settings<'_>) -> Result<(FirewallSettings, Vec<Origin>), Vec<SettingError>> {
    let base_dir = settings.base_dir().to_path_buf();
    let table_span = settings.span();
    let raw: RawFirewall = settings.deserialize().map_err(|mut e| {
        e.hint = Some(
            "a firewall takes `default`, `rules_file`, `conntrack` and `[[chain.function.rule]]` \
             tables (see docs/chain-format.md)"
                .into(),
        );
        vec![e]
    })?;
    let mut chain = Sink {
        file: None,
        errors: Vec::new(),
    };
    let default = match &raw.default {
        None => Action::Drop,
        Some(d) => action(&mut chain, d).unwrap_or(Action::Drop),
    };
    let conntrack = match raw.conntrack {
        None => Conntrack::default(),
        Some(c) => {
            let span = c.span();
            let c = c.into_inner();
            check_conntrack(&mut chain, span, &c);
            c
        }
    };
    let mut rules = Vec::new();
    let mut origins = Vec::new();
    for r in raw.rule {
        let span = r.span();
        if let Some(rule) = rule(&mut chain, r.into_inner(), span.clone()) {
            rules.push(rule);
            origins.push(Origin::Chain(span));
        }
    }

    let mut file_errors = Vec::new();
    if let Some(path) = &raw.rules_file {
        let resolved = base_dir.join(path.get_ref());
        // At most the chain file's own limit: `/dev/zero` must not be read until memory ends.
        match netfn_core::spec::read_text(&resolved) {
            Err(e) => chain.error(
                path.span(),
                format!("cannot read rules file {}: {e}", resolved.display()),
                Some(unreadable_hint(e.kind()).into()),
            ),
            Ok(text) => {
                let (more, errors) = rules_file(&resolved, &text);
                file_errors = errors;
                for (rule, at) in more {
                    rules.push(rule);
                    origins.push(Origin::File(at));
                }
            }
        }
    }
    duplicate_names(&mut chain, &rules, table_span);
    let mut errors = chain.errors;
    errors.extend(file_errors);
    if errors.is_empty() {
        Ok((
            FirewallSettings {
                rules: RuleSet { rules, default },
                conntrack,
            },
            origins,
        ))
    } else {
        Err(errors)
    }
}

/// What to do about a rules file that cannot be read, by why: only a missing one may be a
/// wrong path.
fn unreadable_hint(kind: std::io::ErrorKind) -> &'static str {
    match kind {
        std::io::ErrorKind::NotFound => "rules_file is relative to the chain file's directory",
        std::io::ErrorKind::PermissionDenied => {
            "this user may not read it: run validate as a user who may (sudo netfn validate …), \
             or let this one read it"
        }
        _ => "rules_file names a TOML file of `[[rule]]` tables",
    }
}

/// The rules of a rules file (with where each starts), and its problems.
fn rules_file(path: &Path, text: &str) -> (Vec<(Rule, Located)>, Vec<SettingError>) {
    let lines = LineIndex::new(text);
    let mut sink = Sink {
        file: Some((path, &lines)),
        errors: Vec::new(),
    };
    let table = match DeTable::parse(text) {
        Ok(t) => t,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            sink.error(span, e.message().trim().to_string(), None);
            return (Vec::new(), sink.errors);
        }
    };
    let span = table.span();
    let value = Spanned::new(span.clone(), DeValue::Table(table.into_inner()));
    let raw = match RawRulesFile::deserialize(
        serde::de::IntoDeserializer::<toml::de::Error>::into_deserializer(value),
    ) {
        Ok(raw) => raw,
        Err(e) => {
            sink.error(
                e.span().unwrap_or(span),
                e.message().trim().to_string(),
                Some("a rules file holds `[[rule]]` tables".into()),
            );
            return (Vec::new(), sink.errors);
        }
    };
    let mut rules = Vec::new();
    for r in raw.rule {
        let span = r.span();
        let at = lines.position(span.start);
        let at = Located {
            file: path.to_path_buf(),
            line: at.line,
            col: at.col,
        };
        if let Some(rule) = rule(&mut sink, r.into_inner(), span) {
            rules.push((rule, at));
        }
    }
    (rules, sink.errors)
}

fn action(sink: &mut Sink, value: &Spanned<String>) -> Option<Action> {
    match value.get_ref().as_str() {
        "accept" => Some(Action::Accept),
        "drop" => Some(Action::Drop),
        "reject" => Some(Action::Reject),
        other => {
            sink.error(
                value.span(),
                format!("unknown action `{other}`"),
                Some("use accept, drop or reject".into()),
            );
            None
        }
    }
}

fn check_conntrack(sink: &mut Sink, span: Range<usize>, c: &Conntrack) {
    if c.size == 0 || c.size > MAX_CONNTRACK {
        sink.error(
            span.clone(),
            format!("conntrack size {} is out of range", c.size),
            Some(format!("use 1 to {MAX_CONNTRACK} connections")),
        );
    }
    let timeouts = [
        ("tcp_syn", c.tcp_syn),
        ("tcp_established", c.tcp_established),
        ("tcp_half_closed", c.tcp_half_closed),
        ("tcp_closing", c.tcp_closing),
        ("udp", c.udp),
        ("udp_stream", c.udp_stream),
        ("icmp", c.icmp),
    ];
    for (name, value) in timeouts {
        if let Some((message, hint)) = crate::conntrack::timeout_problem(name, value) {
            sink.error(span.clone(), message, Some(hint));
        }
    }
}

/// Checks one rule; `None` (with its problems reported) if it is not valid.
fn rule(sink: &mut Sink, raw: RawRule, span: Range<usize>) -> Option<Rule> {
    let before = sink.errors.len();
    let name = raw.name.as_ref().and_then(|n| rule_name(sink, n));
    let from = match &raw.from {
        None => Side::Ingress,
        Some(f) => match f.get_ref().as_str() {
            "ingress" => Side::Ingress,
            "egress" => Side::Egress,
            other => {
                sink.error(
                    f.span(),
                    format!("unknown side `{other}`"),
                    Some("`from` is the side that opens the connection: ingress or egress".into()),
                );
                Side::Ingress
            }
        },
    };
    let mut proto = match &raw.proto {
        None => Proto::Any,
        Some(p) => match p.get_ref().as_str() {
            "any" => Proto::Any,
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            other => {
                sink.error(
                    p.span(),
                    format!("unknown protocol `{other}`"),
                    Some("use tcp, udp, icmp or any".into()),
                );
                Proto::Any
            }
        },
    };
    let src = raw
        .src
        .map(|s| prefixes(sink, "src", s))
        .unwrap_or_default();
    let dst = raw
        .dst
        .map(|s| prefixes(sink, "dst", s))
        .unwrap_or_default();
    let mut ports_need_proto = |field: &str, value: &Option<Spanned<OneOrMany<PortItem>>>| {
        let v = value.as_ref()?;
        if !matches!(proto, Proto::Tcp | Proto::Udp) {
            sink.error(
                v.span(),
                format!("`{field}` needs proto = \"tcp\" or \"udp\""),
                Some(
                    "ports exist only for TCP and UDP; add `proto = \"tcp\"` or remove the ports"
                        .into(),
                ),
            );
            return None;
        }
        Some(())
    };
    let sport_ok = ports_need_proto("sport", &raw.sport);
    let dport_ok = ports_need_proto("dport", &raw.dport);
    let sport = match (raw.sport, sport_ok) {
        (Some(v), Some(())) => ports(sink, "sport", v),
        _ => Vec::new(),
    };
    let dport = match (raw.dport, dport_ok) {
        (Some(v), Some(())) => ports(sink, "dport", v),
        _ => Vec::new(),
    };
    let icmp_type = raw.icmp_type.as_ref().and_then(|t| {
        match proto {
            Proto::Icmp => {}
            Proto::Any => proto = Proto::Icmp,
            _ => {
                sink.error(
                    t.span(),
                    "`icmp_type` needs proto = \"icmp\"".into(),
                    Some("remove `proto` or set it to \"icmp\"".into()),
                );
                return None;
            }
        }
        icmp_type(sink, t)
    });
    let action = match &raw.action {
        Some(a) => action(sink, a),
        None => {
            sink.error(
                span.clone(),
                "a rule needs an `action`".into(),
                Some("add `action = \"accept\"`, \"drop\" or \"reject\"".into()),
            );
            None
        }
    };
    let rate = raw.rate.as_ref().and_then(|r| {
        let v = r.get_ref();
        let burst = v.burst.unwrap_or(v.pps);
        match (u32::try_from(v.pps), u32::try_from(burst)) {
            (Ok(pps), Ok(burst)) if pps > 0 && burst > 0 => Some(RateLimit { pps, burst }),
            _ => {
                sink.error(
                    r.span(),
                    format!("rate limit {} pps, burst {burst} is out of range", v.pps),
                    Some("use `rate = { pps = 100, burst = 20 }`: both at least 1".into()),
                );
                None
            }
        }
    });
    if sink.errors.len() > before {
        return None;
    }
    Some(Rule {
        name,
        src,
        dst,
        proto,
        sport,
        dport,
        icmp_type,
        from,
        action: action?,
        rate,
    })
}

fn rule_name(sink: &mut Sink, name: &Spanned<String>) -> Option<String> {
    let n = name.get_ref();
    let ok = !n.is_empty()
        && n.len() <= 40
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if n == PROBE_RULE {
        sink.error(
            name.span(),
            format!("rule name `{n}` is netfn's own"),
            Some(
                "netfn puts a rule of that name first to let the chain probe through (its \
                 counters are the probe's): choose another name"
                    .into(),
            ),
        );
        None
    } else if ok {
        Some(n.clone())
    } else {
        sink.error(
            name.span(),
            format!("rule name `{n}` is not usable as a label"),
            Some("use 1 to 40 letters, digits, '-' or '_' (it names the rule's counters)".into()),
        );
        None
    }
}

/// The items of a list key (or its one value), with its span; an empty list is refused: it
/// would read as "any" (no condition), which nftables refuses as an empty set.
fn items<T>(sink: &mut Sink, field: &str, value: Spanned<OneOrMany<T>>) -> (Range<usize>, Vec<T>) {
    let span = value.span();
    let items = value.into_inner().into_vec();
    if items.is_empty() {
        sink.error(
            span.clone(),
            format!("`{field}` is an empty list"),
            Some(format!(
                "omit `{field}` to match any, or list what it must match"
            )),
        );
    }
    (span, items)
}

fn prefixes(sink: &mut Sink, field: &str, value: Spanned<OneOrMany<String>>) -> Vec<IpNet> {
    let (span, texts) = items(sink, field, value);
    let mut out = Vec::new();
    for text in texts {
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(IpNet::V6(_)) => sink.error(
                span.clone(),
                format!("`{field}` {text} is IPv6: chains are IPv4 for now"),
                Some("IPv6 rules come with dual-stack chains; use IPv4 prefixes".into()),
            ),
            Ok(net) if net.addr() != net.network() => sink.error(
                span.clone(),
                format!("`{field}` {text} has host bits set"),
                Some(format!("did you mean {}?", net.trunc())),
            ),
            Ok(net) => out.push(net),
            Err(_) => sink.error(
                span.clone(),
                format!("`{field}` {text:?} is not an IPv4 address or prefix"),
                Some("e.g. \"10.1.0.0/24\" or \"10.1.0.7\"".into()),
            ),
        }
    }
    out
}

fn ports(sink: &mut Sink, field: &str, value: Spanned<OneOrMany<PortItem>>) -> Vec<PortRange> {
    let (span, list) = items(sink, field, value);
    let mut out = Vec::new();
    for item in list {
        match port_range(&item) {
            Ok(r) => out.push(r),
            Err(why) => sink.error(
                span.clone(),
                format!("`{field}`: {why}"),
                Some("a port is 0-65535; a range is \"lo-hi\" with lo <= hi".into()),
            ),
        }
    }
    out
}

fn port_range(item: &PortItem) -> Result<PortRange, String> {
    let port = |v: i64| u16::try_from(v).map_err(|_| format!("{v} is not a port"));
    match item {
        PortItem::Number(n) => Ok(PortRange::single(port(*n)?)),
        PortItem::Text(t) => {
            let parse = |s: &str| {
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{t:?} is not a port or a range"))
                    .and_then(port)
            };
            match t.split_once('-') {
                None => Ok(PortRange::single(parse(t)?)),
                Some((lo, hi)) => {
                    let (lo, hi) = (parse(lo)?, parse(hi)?);
                    if lo > hi {
                        Err(format!("range {t:?} is reversed (write \"{hi}-{lo}\")"))
                    } else {
                        Ok(PortRange { lo, hi })
                    }
                }
            }
        }
    }
}

fn icmp_type(sink: &mut Sink, value: &Spanned<PortItem>) -> Option<u8> {
    let parsed = match value.get_ref() {
        PortItem::Number(n) => u8::try_from(*n).ok(),
        PortItem::Text(t) => match t.as_str() {
            "echo-reply" => Some(0),
            "destination-unreachable" => Some(3),
            "echo-request" => Some(8),
            "time-exceeded" => Some(11),
            other => other.parse::<u8>().ok(),
        },
    };
    if parsed.is_none() {
        sink.error(
            value.span(),
            "`icmp_type` is not an ICMP type".into(),
            Some(
                "use 0-255 or echo-request, echo-reply, destination-unreachable, time-exceeded"
                    .into(),
            ),
        );
    }
    parsed
}

fn duplicate_names(sink: &mut Sink, rules: &[Rule], span: Range<usize>) {
    let mut seen = std::collections::BTreeSet::new();
    for name in rules.iter().filter_map(|r| r.name.as_deref()) {
        if !seen.insert(name) {
            sink.error(
                span.clone(),
                format!("two rules are named `{name}`"),
                Some("rule names name counters: make them unique".into()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The problems `netfn validate` reports for a chain whose one function is a firewall with
    /// `body`: (line, column, message).
    fn problems(body: &str) -> Vec<(usize, usize, String)> {
        crate::test_support::diagnostics(Path::new("c.toml"), "firewall", body)
            .into_iter()
            .map(|d| (d.position.line, d.position.col, d.message))
            .collect()
    }

    #[test]
    fn a_rules_file_without_end_is_refused_at_its_key() {
        // /dev/zero was read until memory ran out (found by hand while writing the fuzz
        // targets; firewall_settings runs out of memory on this input).
        let found = problems("rules_file = \"/dev/zero\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        let (line, col, message) = &found[0];
        assert_eq!((*line, *col), (10, 14), "{found:?}");
        assert!(
            message.contains("cannot read rules file /dev/zero: it holds more than"),
            "{message}"
        );
    }

    #[test]
    fn the_chain_probes_rule_name_is_refused() {
        // Its counters would merge with the probe's.
        let found =
            problems("[[chain.function.rule]]\nname = \"netfn-probe\"\naction = \"drop\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        let (line, col, message) = &found[0];
        assert_eq!((*line, *col), (11, 8), "{found:?}");
        assert!(
            message.ends_with("rule name `netfn-probe` is netfn's own"),
            "{message}"
        );
    }

    #[test]
    fn conntrack_timeouts_beyond_the_kernels_are_refused() {
        // nf_conntrack_*_timeout takes at most INT_MAX jiffies: 2,147,483 s at HZ 1000.
        assert!(problems("conntrack = { tcp_established = 2147483, udp = 1 }\n").is_empty());
        let found = problems("conntrack = { tcp_established = 4000000000, icmp = 2147484 }\n");
        let messages: Vec<&str> = found.iter().map(|(_, _, m)| m.as_str()).collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().all(|(line, col, _)| (*line, *col) == (10, 13)),
            "{found:?}"
        );
        assert!(
            messages[0].ends_with("conntrack tcp_established timeout 4000000000 s is too long")
        );
        assert!(messages[1].ends_with("conntrack icmp timeout 2147484 s is too long"));
    }

    #[test]
    fn a_rules_files_hint_follows_what_is_wrong_with_it() {
        let hint = |file: &str| {
            let body = format!("rules_file = \"{file}\"\n");
            let found = crate::test_support::diagnostics(Path::new("c.toml"), "firewall", &body);
            assert_eq!(found.len(), 1, "{found:?}");
            found[0].hint.clone().unwrap_or_default()
        };
        assert!(hint("no-such-rules.toml").contains("relative to the chain file's directory"));
        // The file is there: where relative paths start is not the problem.
        assert!(hint("/").starts_with("rules_file names a TOML file"));
        let denied = super::unreadable_hint(std::io::ErrorKind::PermissionDenied);
        assert!(denied.contains("sudo netfn validate"), "{denied}");
    }

    #[test]
    fn an_empty_list_is_refused_at_its_key() {
        // It would mean "any": a rule meant to allow a few sources would allow them all.
        let found = problems(
            "[[chain.function.rule]]\nproto = \"tcp\"\nsrc = []\ndst = []\nsport = []\n\
             dport = []\naction = \"accept\"\n",
        );
        let expected = [
            (12, 7, "src"),
            (13, 7, "dst"),
            (14, 9, "sport"),
            (15, 9, "dport"),
        ]
        .map(|(line, col, key)| (line, col, format!("`{key}` is an empty list")));
        assert_eq!(found.len(), expected.len(), "{found:?}");
        for (want, got) in expected.iter().zip(&found) {
            assert_eq!((want.0, want.1), (got.0, got.1), "{found:?}");
            assert!(got.2.ends_with(&want.2), "{found:?}");
        }
    }
}
