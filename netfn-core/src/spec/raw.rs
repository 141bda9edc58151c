//! The shape of a chain file: a walk over the spanned TOML tree that reports unknown keys,
//! missing keys and tables, wrong value types and wrong shapes, and keeps every value with its
//! span for the semantic checks in `validate`.
//!
//! Nothing here stops at the first problem: a value that is wrong is reported and left out
//! (`None`), and the walk goes on.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use crate::spec::diag::Reporter;

/// The keys of the top level, of a `[[chain]]`, of `[chain.ingress]` / `[chain.egress]`, and the
/// keys of `[[chain.function]]` that core reads (all others belong to the function's kind).
pub(super) const TOP_KEYS: &[&str] = &["chain"];
pub(super) const CHAIN_KEYS: &[&str] = &[
    "name", "fastpath", "transit", "ingress", "egress", "function",
];
pub(super) const ENDPOINT_KEYS: &[&str] = &["address", "gateway", "namespace"];

/// A string value with its span in the file.
pub(super) type Str = Spanned<String>;

/// A chain file whose shape has been checked.
pub(super) struct RawFile<'i> {
    pub chains: Vec<RawChain<'i>>,
}

pub(super) struct RawChain<'i> {
    /// How messages name this chain: "chain `edge`", or "chain #2" when it has no usable name.
    pub label: String,
    /// The `[[chain]]` header.
    pub span: Range<usize>,
    pub name: Option<Str>,
    pub fastpath: Option<Str>,
    pub transit: Option<Str>,
    pub ingress: Option<RawEndpoint>,
    pub egress: Option<RawEndpoint>,
    pub functions: Vec<RawFunction<'i>>,
}

pub(super) struct RawEndpoint {
    /// "ingress" or "egress".
    pub role: &'static str,
    pub address: Option<Str>,
    pub gateway: Option<Str>,
    pub namespace: Option<Str>,
}

pub(super) struct RawFunction<'i> {
    /// How messages name this function: "chain `edge`, function `fw1`" (or "function #2").
    pub label: String,
    pub name: Option<Str>,
    pub kind: Option<Str>,
    /// Every key of the function's table except `name` and `kind`: the kind's settings.
    pub settings: Spanned<DeTable<'i>>,
}

/// Walks the document; every problem of shape is reported to `rep`.
pub(super) fn read<'i>(root: Spanned<DeTable<'i>>, rep: &mut Reporter) -> RawFile<'i> {
    let span = root.span();
    let mut top = root.into_inner();
    let chains = match top.remove("chain") {
        Some(value) => read_chains(value, rep),
        None => {
            rep.error(span, "the file defines no chain", Some(no_chain_hint()));
            Vec::new()
        }
    };
    report_unknown_keys(top, "", "at the top level", TOP_KEYS, rep);
    RawFile { chains }
}

fn no_chain_hint() -> String {
    "add a `[[chain]]` table with `name`, `[chain.ingress]`, `[chain.egress]` and at least one \
     `[[chain.function]]`"
        .to_string()
}

fn read_chains<'i>(value: Spanned<DeValue<'i>>, rep: &mut Reporter) -> Vec<RawChain<'i>> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(items) if items.is_empty() => {
            rep.error(
                span,
                "the file defines no chain: `chain` is empty",
                Some(no_chain_hint()),
            );
            Vec::new()
        }
        DeValue::Array(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let number = i + 1;
                let label = format!("chain #{number}");
                let table = table_value(item, &label, "[[chain]]", rep)?;
                Some(read_chain(number, table, rep))
            })
            .collect(),
        DeValue::Table(table) => {
            rep.error(
                span.clone(),
                "`chain` must be an array of tables, not a single table",
                Some("write each chain as `[[chain]]` (double brackets)".into()),
            );
            vec![read_chain(1, Spanned::new(span, table), rep)]
        }
        other => {
            rep.error(
                span,
                format!("`chain` must be an array of tables, not {}", a_type(&other)),
                Some("write each chain as a `[[chain]]` section".into()),
            );
            Vec::new()
        }
    }
}

fn read_chain<'i>(number: usize, table: Spanned<DeTable<'i>>, rep: &mut Reporter) -> RawChain<'i> {
    let span = table.span();
    let mut t = table.into_inner();
    let name_value = t.remove("name");
    let label = match name_value.as_ref().and_then(|v| v.get_ref().as_str()) {
        Some(name) => format!("chain `{name}`"),
        None => format!("chain #{number}"),
    };
    let name = match name_value {
        Some(v) => string_value(v, &label, "name", "name = \"edge\"", rep),
        None => {
            rep.error(
                span.clone(),
                format!("{label} has no `name`"),
                Some(
                    "add e.g. `name = \"edge\"` (at most 12 bytes: letters, digits, '-' and '_')"
                        .into(),
                ),
            );
            None
        }
    };
    let fastpath = t
        .remove("fastpath")
        .and_then(|v| string_value(v, &label, "fastpath", "fastpath = \"tc\"", rep));
    let transit = t
        .remove("transit")
        .and_then(|v| string_value(v, &label, "transit", "transit = \"100.64.0.0/16\"", rep));
    let ingress = read_endpoint(&mut t, &label, &span, "ingress", "10.1.0.2/24", rep);
    let egress = read_endpoint(&mut t, &label, &span, "egress", "10.2.0.2/24", rep);
    let functions = read_functions(t.remove("function"), &label, &span, rep);
    report_unknown_keys(t, &format!("{label}: "), "in [[chain]]", CHAIN_KEYS, rep);
    RawChain {
        label,
        span,
        name,
        fastpath,
        transit,
        ingress,
        egress,
        functions,
    }
}

fn read_endpoint(
    chain: &mut DeTable<'_>,
    label: &str,
    chain_span: &Range<usize>,
    role: &'static str,
    example: &str,
    rep: &mut Reporter,
) -> Option<RawEndpoint> {
    let section = format!("[chain.{role}]");
    let Some(value) = chain.remove(role) else {
        rep.error(
            chain_span.clone(),
            format!("{label} has no `{role}` table"),
            Some(format!(
                "add `{section}` with e.g. `address = \"{example}\"`"
            )),
        );
        return None;
    };
    let table = table_value(value, &format!("{label}: `{role}`"), &section, rep)?;
    let span = table.span();
    let mut t = table.into_inner();
    let what = format!("{label}, {role}");
    let address = match t.remove("address") {
        Some(v) => string_value(
            v,
            &what,
            "address",
            &format!("address = \"{example}\""),
            rep,
        ),
        None => {
            rep.error(
                span,
                format!("{label}: {section} has no `address`"),
                Some(format!(
                    "add the endpoint's IPv4 address with its prefix length, e.g. \
                     `address = \"{example}\"`"
                )),
            );
            None
        }
    };
    let gateway = t
        .remove("gateway")
        .and_then(|v| string_value(v, &what, "gateway", "gateway = \"10.1.0.1\"", rep));
    let namespace = t
        .remove("namespace")
        .and_then(|v| string_value(v, &what, "namespace", "namespace = \"client\"", rep));
    report_unknown_keys(
        t,
        &format!("{label}: "),
        &format!("in {section}"),
        ENDPOINT_KEYS,
        rep,
    );
    Some(RawEndpoint {
        role,
        address,
        gateway,
        namespace,
    })
}

fn read_functions<'i>(
    value: Option<Spanned<DeValue<'i>>>,
    label: &str,
    chain_span: &Range<usize>,
    rep: &mut Reporter,
) -> Vec<RawFunction<'i>> {
    let no_functions = |rep: &mut Reporter, span: Range<usize>| {
        rep.error(
            span,
            format!("{label} has no functions"),
            Some(
                "add at least one `[[chain.function]]` with e.g. `name = \"fw1\"` and \
                 `kind = \"forward\"`"
                    .into(),
            ),
        );
    };
    let Some(value) = value else {
        no_functions(rep, chain_span.clone());
        return Vec::new();
    };
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(items) if items.is_empty() => {
            no_functions(rep, span);
            Vec::new()
        }
        DeValue::Array(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let what = format!("{label}, function #{}", i + 1);
                let table = table_value(item, &what, "[[chain.function]]", rep)?;
                Some(read_function(label, i + 1, table, rep))
            })
            .collect(),
        DeValue::Table(table) => {
            rep.error(
                span.clone(),
                format!("{label}: `function` must be an array of tables, not a single table"),
                Some("write each function as `[[chain.function]]` (double brackets)".into()),
            );
            vec![read_function(label, 1, Spanned::new(span, table), rep)]
        }
        other => {
            rep.error(
                span,
                format!(
                    "{label}: `function` must be an array of tables, not {}",
                    a_type(&other)
                ),
                Some("write each function as a `[[chain.function]]` section".into()),
            );
            Vec::new()
        }
    }
}

fn read_function<'i>(
    chain_label: &str,
    number: usize,
    table: Spanned<DeTable<'i>>,
    rep: &mut Reporter,
) -> RawFunction<'i> {
    let span = table.span();
    let mut t = table.into_inner();
    let name_value = t.remove("name");
    let label = match name_value.as_ref().and_then(|v| v.get_ref().as_str()) {
        Some(name) => format!("{chain_label}, function `{name}`"),
        None => format!("{chain_label}, function #{number}"),
    };
    let name = match name_value {
        Some(v) => string_value(v, &label, "name", "name = \"fw1\"", rep),
        None => {
            rep.error(
                span.clone(),
                format!("{label} has no `name`"),
                Some("add e.g. `name = \"fw1\"` (unique within the chain)".into()),
            );
            None
        }
    };
    let kind = match t.remove("kind") {
        Some(v) => string_value(v, &label, "kind", "kind = \"forward\"", rep),
        None => {
            rep.error(
                span.clone(),
                format!("{label} has no `kind`"),
                Some("add e.g. `kind = \"forward\"`; `netfn kinds` lists the kinds".into()),
            );
            None
        }
    };
    RawFunction {
        label,
        name,
        kind,
        settings: Spanned::new(span, t),
    }
}

/// A value that must be a table; `what` names it in the message, `section` shows how to write it.
fn table_value<'i>(
    value: Spanned<DeValue<'i>>,
    what: &str,
    section: &str,
    rep: &mut Reporter,
) -> Option<Spanned<DeTable<'i>>> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Table(t) => Some(Spanned::new(span, t)),
        other => {
            rep.error(
                span,
                format!("{what} must be a table, not {}", a_type(&other)),
                Some(format!("write it as a `{section}` section")),
            );
            None
        }
    }
}

/// A value that must be a string; `label` and `key` name it, `example` shows a correct line.
fn string_value(
    value: Spanned<DeValue<'_>>,
    label: &str,
    key: &str,
    example: &str,
    rep: &mut Reporter,
) -> Option<Str> {
    let span = value.span();
    match value.into_inner() {
        DeValue::String(s) => Some(Spanned::new(span, s.into_owned())),
        other => {
            rep.error(
                span,
                format!("{label}: `{key}` must be a string, not {}", a_type(&other)),
                Some(format!("write it in double quotes, e.g. `{example}`")),
            );
            None
        }
    }
}

/// Reports every key left in `table` (the known keys have been taken out of it).
fn report_unknown_keys(
    table: DeTable<'_>,
    prefix: &str,
    place: &str,
    allowed: &[&str],
    rep: &mut Reporter,
) {
    for (key, _) in table {
        let span = key.span();
        let key: DeString<'_> = key.into_inner();
        rep.error(
            span,
            format!("{prefix}unknown key `{key}` {place}"),
            Some(unknown_key_hint(&key, allowed)),
        );
    }
}

/// The hint for an unknown key: the allowed key it is closest to, if any, and all of them.
pub(crate) fn unknown_key_hint(key: &str, allowed: &[&str]) -> String {
    let mut hint = String::new();
    if let Some(near) = did_you_mean(key, allowed.iter().copied()) {
        hint.push_str(&format!("did you mean `{near}`? "));
    }
    if allowed.is_empty() {
        hint.push_str("no keys are allowed here");
    } else {
        hint.push_str(&format!("allowed keys: {}", allowed.join(", ")));
    }
    hint
}

/// "a string", "an integer", … for messages.
pub(crate) fn a_type(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub(super) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("address", "address"), 0);
        assert_eq!(edit_distance("adress", "address"), 1);
        assert_eq!(edit_distance("forwrad", "forward"), 2);
        assert_eq!(edit_distance("", "tc"), 2);
    }

    #[test]
    fn did_you_mean_suggests_only_close_words() {
        assert_eq!(
            did_you_mean("adress", ENDPOINT_KEYS.iter().copied()),
            Some("address")
        );
        assert_eq!(
            did_you_mean("fastpth", CHAIN_KEYS.iter().copied()),
            Some("fastpath")
        );
        assert_eq!(did_you_mean("TC", ["kernel", "tc", "xdp"]), Some("tc"));
        assert_eq!(did_you_mean("ebpf", ["kernel", "tc", "xdp"]), None);
        assert_eq!(did_you_mean("color", ENDPOINT_KEYS.iter().copied()), None);
    }
}
