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
use netfn_core::function::fields::{self, Value};
use netfn_core::function::{Fields, Located, Problems, SettingError, Settings, Want};
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
pub const MAX_CONNTRACK: u32 = crate::conntrack::MAX_SIZE;

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
    /// This place as a message standing at `from` names it: "line 17" in the same file, else
    /// with the file ("line 17 of the chain file", "line 3 of /etc/fw1-rules.toml").
    fn seen_from(&self, from: &Origin, chain_lines: &LineIndex<'_>) -> String {
        match (self, from) {
            (Origin::Chain(span), Origin::Chain(_)) => {
                format!("line {}", chain_lines.position(span.start).line)
            }
            (Origin::Chain(span), Origin::File(_)) => format!(
                "line {} of the chain file",
                chain_lines.position(span.start).line
            ),
            (Origin::File(at), Origin::File(other)) if at.file == other.file => {
                format!("line {}", at.line)
            }
            (Origin::File(at), _) => format!("line {} of {}", at.line, at.file.display()),
        }
    }

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

/// What each key takes, for the reports of a value of the wrong type.
const DEFAULT: Want = Want {
    what: "accept, drop or reject",
    example: "\"drop\"",
};
const RULES_FILE: Want = Want {
    what: "a path to a TOML file of [[rule]] tables",
    example: "\"fw1-rules.toml\"",
};
const RULES: Want = Want {
    what: "a list of rule tables",
    example: "[{ proto = \"tcp\", dport = 22, action = \"accept\" }]",
};
const NAME: Want = Want {
    what: "a name of letters, digits, '-' and '_'",
    example: "\"web\"",
};
const FROM: Want = Want {
    what: "ingress or egress",
    example: "\"ingress\"",
};
const PROTO: Want = Want {
    what: "tcp, udp, icmp or any",
    example: "\"tcp\"",
};
const PREFIXES: Want = Want {
    what: "a prefix or a list of prefixes",
    example: "[\"10.0.0.0/8\", \"192.0.2.1\"]",
};
const PORTS: Want = Want {
    what: "a port, a range \"lo-hi\" or a list of them",
    example: "[80, 443, \"8000-8080\"]",
};
const ICMP_TYPE: Want = Want {
    what: "an ICMP type: 0-255 or a name like echo-request",
    example: "\"echo-request\"",
};
const ACTION: Want = Want {
    what: "accept, drop or reject",
    example: "\"accept\"",
};
const RATE: Want = Want {
    what: "a table of pps and burst",
    example: "{ pps = 100, burst = 20 }",
};
const PPS: Want = Want {
    what: "a whole number",
    example: "100",
};
const BURST: Want = Want {
    what: "a whole number",
    example: "20",
};

enum PortItem {
    Number(i64),
    Text(String),
}

/// Checks a firewall's settings; `Err` holds every problem found. With the settings come the
/// origins of the rules, in the same order.
pub fn parse(settings: Settings<'_>) -> Result<(FirewallSettings, Vec<Origin>), Vec<SettingError>> {
    let base_dir = settings.base_dir().to_path_buf();
    let lines = settings.lines();
    let mut t = settings.fields();
    let mut out = Problems::default();
    let default = t
        .string("default", DEFAULT, &mut out)
        .and_then(|d| action(&mut out, &d))
        .unwrap_or(Action::Drop);
    let rules_file = t.string("rules_file", RULES_FILE, &mut out);
    let mut conntrack = Conntrack::default();
    if let Some(table) = t.table("conntrack", crate::conntrack::TABLE, &mut out) {
        let c = &mut conntrack;
        let timeouts = &mut [
            ("tcp_syn", &mut c.tcp_syn),
            ("tcp_established", &mut c.tcp_established),
            ("tcp_half_closed", &mut c.tcp_half_closed),
            ("tcp_closing", &mut c.tcp_closing),
            ("udp", &mut c.udp),
            ("udp_stream", &mut c.udp_stream),
            ("icmp", &mut c.icmp),
        ];
        crate::conntrack::read(table, &mut c.size, timeouts, &mut out);
    }
    let inline = t.tables("rule", "[[chain.function.rule]]", RULES, &mut out);
    t.finish(&mut out);
    let mut rules = Vec::new();
    let mut origins = Vec::new();
    // Where each rule's name is written (the rule itself when it has none).
    let mut names = Vec::new();
    for r in inline.map(Spanned::into_inner).unwrap_or_default() {
        let span = r.span();
        if let Some((rule, name)) = rule(&mut out, r) {
            rules.push(rule);
            names.push(Origin::Chain(name.unwrap_or_else(|| span.clone())));
            origins.push(Origin::Chain(span));
        }
    }

    let mut file_errors = Vec::new();
    if let Some(path) = &rules_file {
        let resolved = base_dir.join(path.get_ref());
        // At most the chain file's own limit: `/dev/zero` must not be read until memory ends.
        match netfn_core::spec::read_text(&resolved) {
            Err(e) => out.error(
                path.span(),
                format!("cannot read rules file {}: {e}", resolved.display()),
                Some(unreadable_hint(e.kind()).to_string()),
            ),
            Ok(text) => {
                let (more, errors) = rules_file_rules(&resolved, &text);
                file_errors = errors;
                for (rule, at, name) in more {
                    rules.push(rule);
                    origins.push(Origin::File(at));
                    names.push(Origin::File(name));
                }
            }
        }
    }
    duplicate_names(&mut out, &rules, &names, &lines);
    out.0.extend(file_errors);
    out.result((
        FirewallSettings {
            rules: RuleSet { rules, default },
            conntrack,
        },
        origins,
    ))
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

/// The rules of a rules file (with where each starts, and where its name is written), and its
/// problems, located in it.
fn rules_file_rules(path: &Path, text: &str) -> (Vec<(Rule, Located, Located)>, Vec<SettingError>) {
    let lines = LineIndex::new(text);
    let at = |offset: usize| {
        let at = lines.position(offset);
        Located {
            file: path.to_path_buf(),
            line: at.line,
            col: at.col,
        }
    };
    let mut out = Problems::default();
    let mut rules = Vec::new();
    match DeTable::parse(text) {
        Err(e) => out.error(
            e.span().unwrap_or(0..0),
            format!("invalid TOML: {}", e.message().trim()),
            None,
        ),
        Ok(table) => {
            let mut t = Fields::new(table, "the rules file");
            let found = t.tables("rule", "[[rule]]", RULES, &mut out);
            t.finish(&mut out);
            for r in found.map(Spanned::into_inner).unwrap_or_default() {
                let start = r.span().start;
                if let Some((rule, name)) = rule(&mut out, r) {
                    let name = name.map_or(start, |n| n.start);
                    rules.push((rule, at(start), at(name)));
                }
            }
        }
    }
    let errors = out
        .0
        .into_iter()
        .map(|e| SettingError {
            elsewhere: Some(at(e.span.start)),
            ..e
        })
        .collect();
    (rules, errors)
}

fn action(out: &mut Problems, value: &Spanned<String>) -> Option<Action> {
    match value.get_ref().as_str() {
        "accept" => Some(Action::Accept),
        "drop" => Some(Action::Drop),
        "reject" => Some(Action::Reject),
        other => {
            out.error(
                value.span(),
                format!("unknown action `{other}`"),
                Some("use accept, drop or reject".into()),
            );
            None
        }
    }
}

/// Checks one rule; `None` (with its problems reported) if it is not valid. With the rule, the
/// span of its name's value, if it has one.
fn rule(out: &mut Problems, mut t: Fields<'_>) -> Option<(Rule, Option<Range<usize>>)> {
    let span = t.span();
    let before = out.len();
    let written = t.string("name", NAME, out);
    let name_span = written.as_ref().map(Spanned::span);
    let name = written.and_then(|n| rule_name(out, &n));
    let from = match t.string("from", FROM, out) {
        None => Side::Ingress,
        Some(f) => match f.get_ref().as_str() {
            "ingress" => Side::Ingress,
            "egress" => Side::Egress,
            other => {
                out.error(
                    f.span(),
                    format!("unknown side `{other}`"),
                    Some("`from` is the side that opens the connection: ingress or egress".into()),
                );
                Side::Ingress
            }
        },
    };
    let mut proto = match t.string("proto", PROTO, out) {
        None => Proto::Any,
        Some(p) => match p.get_ref().as_str() {
            "any" => Proto::Any,
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            other => {
                out.error(
                    p.span(),
                    format!("unknown protocol `{other}`"),
                    Some("use tcp, udp, icmp or any".into()),
                );
                Proto::Any
            }
        },
    };
    let src = t
        .one_or_many("src", PREFIXES, out)
        .map(|s| prefixes(out, "src", s))
        .unwrap_or_default();
    let dst = t
        .one_or_many("dst", PREFIXES, out)
        .map(|s| prefixes(out, "dst", s))
        .unwrap_or_default();
    let mut ports_of = |out: &mut Problems, field: &'static str| {
        let v = t.one_or_many(field, PORTS, out)?;
        if !matches!(proto, Proto::Tcp | Proto::Udp) {
            out.error(
                v.span(),
                format!("`{field}` needs proto = \"tcp\" or \"udp\""),
                Some(
                    "ports exist only for TCP and UDP; add `proto = \"tcp\"` or remove the ports"
                        .into(),
                ),
            );
            return None;
        }
        Some(ports(out, field, v))
    };
    let sport = ports_of(out, "sport").unwrap_or_default();
    let dport = ports_of(out, "dport").unwrap_or_default();
    let icmp_type = t.get("icmp_type").and_then(|v| {
        match proto {
            Proto::Icmp => {}
            Proto::Any => proto = Proto::Icmp,
            _ => {
                out.error(
                    v.span(),
                    "`icmp_type` needs proto = \"icmp\"",
                    Some("remove `proto` or set it to \"icmp\"".into()),
                );
                return None;
            }
        }
        icmp_type(out, v)
    });
    let action = match t.get("action") {
        Some(a) => fields::string(a, "action", ACTION, out).and_then(|a| action(out, &a)),
        None => {
            out.error(
                span.clone(),
                "a rule needs an `action`",
                Some("add `action = \"accept\"`, \"drop\" or \"reject\"".into()),
            );
            None
        }
    };
    let rate = t.table("rate", RATE, out).and_then(|r| rate(out, r));
    t.finish(out);
    if out.len() > before {
        return None;
    }
    let rule = Rule {
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
    };
    Some((rule, name_span))
}

fn rate(out: &mut Problems, mut t: Fields<'_>) -> Option<RateLimit> {
    let span = t.span();
    t.required(&[("pps", PPS)], out);
    let pps = t.integer("pps", PPS, out);
    let burst = t.integer("burst", BURST, out);
    t.finish(out);
    let pps = *pps?.get_ref();
    let burst = burst.map_or(pps, |b| *b.get_ref());
    match (u32::try_from(pps), u32::try_from(burst)) {
        (Ok(pps), Ok(burst)) if pps > 0 && burst > 0 => Some(RateLimit { pps, burst }),
        _ => {
            out.error(
                span,
                format!("rate limit {pps} pps, burst {burst} is out of range"),
                Some("use `rate = { pps = 100, burst = 20 }`: both at least 1".into()),
            );
            None
        }
    }
}

fn rule_name(out: &mut Problems, name: &Spanned<String>) -> Option<String> {
    let n = name.get_ref();
    let ok = !n.is_empty()
        && n.len() <= 40
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if n == PROBE_RULE {
        out.error(
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
        out.error(
            name.span(),
            format!("rule name `{n}` is not usable as a label"),
            Some("use 1 to 40 letters, digits, '-' or '_' (it names the rule's counters)".into()),
        );
        None
    }
}

/// The items of a list key (or its one value); an empty list is refused: it would read as
/// "any" (no condition), which nftables refuses as an empty set.
fn items<'i>(out: &mut Problems, field: &str, value: Spanned<Vec<Value<'i>>>) -> Vec<Value<'i>> {
    if value.get_ref().is_empty() {
        out.error(
            value.span(),
            format!("`{field}` is an empty list"),
            Some(format!(
                "omit `{field}` to match any, or list what it must match"
            )),
        );
    }
    value.into_inner()
}

fn prefixes(out: &mut Problems, field: &str, value: Spanned<Vec<Value<'_>>>) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for item in items(out, field, value) {
        let Some(text) = fields::string(item, field, PREFIXES, out) else {
            continue;
        };
        let span = text.span();
        let text = text.into_inner();
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(IpNet::V6(_)) => out.error(
                span,
                format!("`{field}` {text} is IPv6: chains are IPv4 for now"),
                Some("IPv6 rules come with dual-stack chains; use IPv4 prefixes".into()),
            ),
            Ok(net) if net.addr() != net.network() => out.error(
                span,
                format!("`{field}` {text} has host bits set"),
                Some(format!("did you mean {}?", net.trunc())),
            ),
            Ok(net) => nets.push(net),
            Err(_) => out.error(
                span,
                format!("`{field}` {text:?} is not an IPv4 address or prefix"),
                Some("e.g. \"10.1.0.0/24\" or \"10.1.0.7\"".into()),
            ),
        }
    }
    nets
}

/// A port item as written: a number or a text ("8080", "8000-8080"); else reported.
fn port_item(out: &mut Problems, field: &str, want: Want, value: Value<'_>) -> Option<PortItem> {
    match value.get_ref() {
        DeValue::String(s) => Some(PortItem::Text(s.to_string())),
        DeValue::Integer(_) => {
            fields::integer(value, field, want, out).map(|n| PortItem::Number(n.into_inner()))
        }
        _ => out.wrong(&value, field, want),
    }
}

fn ports(out: &mut Problems, field: &str, value: Spanned<Vec<Value<'_>>>) -> Vec<PortRange> {
    let mut ranges = Vec::new();
    for item in items(out, field, value) {
        let span = item.span();
        let Some(item) = port_item(out, field, PORTS, item) else {
            continue;
        };
        match port_range(&item) {
            Ok(r) => ranges.push(r),
            Err(why) => out.error(
                span,
                format!("`{field}`: {why}"),
                Some("a port is 0-65535; a range is \"lo-hi\" with lo <= hi".into()),
            ),
        }
    }
    ranges
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

fn icmp_type(out: &mut Problems, value: Value<'_>) -> Option<u8> {
    let span = value.span();
    let parsed = match port_item(out, "icmp_type", ICMP_TYPE, value)? {
        PortItem::Number(n) => u8::try_from(n).ok(),
        PortItem::Text(t) => match t.as_str() {
            "echo-reply" => Some(0),
            "destination-unreachable" => Some(3),
            "echo-request" => Some(8),
            "time-exceeded" => Some(11),
            other => other.parse::<u8>().ok(),
        },
    };
    if parsed.is_none() {
        out.error(
            span,
            "`icmp_type` is not an ICMP type",
            Some(
                "use 0-255, echo-request or echo-reply (ICMP errors such as \
                 destination-unreachable never reach the rules: connection tracking decides them)"
                    .into(),
            ),
        );
    }
    parsed
}

/// Reports each rule named as an earlier one was, at its name, saying where the earlier one
/// is. `names` holds where each rule's name is written.
fn duplicate_names(out: &mut Problems, rules: &[Rule], names: &[Origin], lines: &LineIndex<'_>) {
    let mut first: std::collections::HashMap<&str, &Origin> = std::collections::HashMap::new();
    for (rule, at) in rules.iter().zip(names) {
        let Some(name) = rule.name.as_deref() else {
            continue;
        };
        match first.get(name) {
            Some(earlier) => out.0.push(at.diagnostic(
                format!(
                    "rule name `{name}` is already used by the rule at {}",
                    earlier.seen_from(at, lines)
                ),
                Some("rule names name the rules' counters: rename one of them".into()),
            )),
            None => {
                first.insert(name, at);
            }
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
        // Each at its own value, not at the `conntrack` table.
        let at: Vec<(usize, usize)> = found.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert_eq!(at, [(10, 33), (10, 52)], "{found:?}");
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

    #[test]
    fn a_second_rule_of_a_name_is_refused_at_its_name_saying_where_the_first_is() {
        // Both were reported at the function's header, without saying where either rule was.
        let dir = std::env::temp_dir().join(format!("netfn-fw-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let rules = dir.join("rules.toml");
        std::fs::write(
            &rules,
            "[[rule]]\nname = \"ssh\"\naction = \"accept\"\n\n\
             [[rule]]\nname = \"web\"\naction = \"accept\"\n\n\
             [[rule]]\naction = \"drop\"\nname = \"ssh\"\n",
        )
        .expect("rules file");
        let chain = dir.join("c.toml");
        let body = "rules_file = \"rules.toml\"\n\n[[chain.function.rule]]\nname = \"web\"\n\
                    action = \"accept\"\n";
        let found: Vec<_> = crate::test_support::diagnostics(&chain, "firewall", body)
            .into_iter()
            .map(|d| (d.file, d.position.line, d.position.col, d.message))
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!((&found[0].0, found[0].1, found[0].2), (&rules, 6, 8));
        assert!(
            found[0].3.ends_with(
                "rule name `web` is already used by the rule at line 13 of the chain file"
            ),
            "{found:?}"
        );
        assert_eq!((&found[1].0, found[1].1, found[1].2), (&rules, 11, 8));
        assert!(
            found[1]
                .3
                .ends_with("rule name `ssh` is already used by the rule at line 2"),
            "{found:?}"
        );
    }

    #[test]
    fn a_rules_files_problems_and_compile_errors_stand_at_their_place_in_it() {
        // Type errors used to be one serde error for the whole file; a rule the classifier
        // refuses was reported at the function's header in the chain file.
        let dir = std::env::temp_dir().join(format!("netfn-fw-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ports = |from: u32| {
            let list: Vec<String> = (0..200).map(|i| (from + 2 * i).to_string()).collect();
            list.join(", ")
        };
        let rules = dir.join("rules.toml");
        let text = format!(
            "[[rule]]\nproto = \"tcp\"\ndport = \"http\"\nactoin = \"drop\"\n\n\
             [[rule]]\nproto = \"tcp\"\nsport = [{}]\ndport = [{}]\naction = \"drop\"\n",
            ports(1),
            ports(1001)
        );
        std::fs::write(&rules, &text).expect("rules file");
        let chain = dir.join("c.toml");
        let found = |body: &str| {
            crate::test_support::diagnostics(&chain, "firewall", body)
                .into_iter()
                .map(|d| (d.file.clone(), d.position.line, d.position.col, d.message))
                .collect::<Vec<_>>()
        };
        let typed = found("rules_file = \"rules.toml\"\n");
        let at: Vec<(usize, usize)> = typed.iter().map(|d| (d.1, d.2)).collect();
        // `dport` "http" is not a port; `actoin` is unknown (and the rule has no action).
        assert_eq!(at, [(1, 1), (3, 9), (4, 1)], "{typed:?}");
        assert!(typed.iter().all(|d| d.0 == rules), "{typed:?}");
        assert!(
            typed[2].3.ends_with("unknown key `actoin` in [[rule]]"),
            "{typed:?}"
        );

        std::fs::write(
            &rules,
            text.replacen("dport = \"http\"\nactoin", "action", 1),
        )
        .expect("rules file");
        let wide = found("rules_file = \"rules.toml\"\n");
        assert_eq!(wide.len(), 1, "{wide:?}");
        assert_eq!(
            (&wide[0].0, wide[0].1, wide[0].2),
            (&rules, 5, 1),
            "{wide:?}"
        );
        assert!(
            wide[0].3.contains("rule 2 \"\": its lists combine"),
            "{wide:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
