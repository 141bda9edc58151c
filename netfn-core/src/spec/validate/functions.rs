//! Checks of a chain's functions: names, duplicates, kinds, and each kind's own settings.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::function::{ChainAddresses, SettingError};
use crate::spec::diag::Severity;

impl ChainAddresses<'_> {
    /// The chain's own prefixes that `net` overlaps (inside them or around them), each with
    /// what it is: the ingress and egress subnets and the transit pool. A function's addresses
    /// of its own (a VPN's tunnel, its peers' allowed IPs) must stay clear of them.
    pub fn overlapping(&self, net: &ipnet::Ipv4Net) -> Vec<(&'static str, ipnet::Ipv4Net)> {
        [
            ("ingress subnet", self.ingress_subnet),
            ("egress subnet", self.egress_subnet),
            ("transit pool", self.transit),
        ]
        .into_iter()
        .filter(|(_, own)| overlap(own, net))
        .collect()
    }
}

impl<'a> Checker<'a, '_> {
    pub(super) fn functions(
        &mut self,
        label: &str,
        raws: Vec<RawFunction<'_>>,
    ) -> Option<Vec<FunctionSpec>> {
        let mut first: HashMap<String, Range<usize>> = HashMap::new();
        let mut specs = Vec::new();
        let mut all_ok = true;
        for raw in raws {
            if let Some(name) = &raw.name {
                self.duplicate_function(label, name, &mut first);
            }
            match self.function(label, raw) {
                Some(spec) => specs.push(spec),
                None => all_ok = false,
            }
        }
        (all_ok && !specs.is_empty()).then_some(specs)
    }

    pub(super) fn duplicate_function(
        &mut self,
        label: &str,
        name: &Str,
        first: &mut HashMap<String, Range<usize>>,
    ) {
        match first.get(name.get_ref()) {
            Some(earlier) => {
                let line = self.line_of(earlier);
                self.rep.error(
                    name.span(),
                    format!(
                        "{label}: function name `{}` is already used by the function at line \
                         {line}",
                        name.get_ref()
                    ),
                    Some("function names must be unique within a chain; rename one".into()),
                );
            }
            None => {
                first.insert(name.get_ref().clone(), name.span());
            }
        }
    }

    pub(super) fn function(
        &mut self,
        chain_label: &str,
        raw: RawFunction<'_>,
    ) -> Option<FunctionSpec> {
        let label = raw.label;
        let name = raw.name.and_then(|n| self.function_name(chain_label, n));
        let kind = raw.kind.as_ref().and_then(|k| self.kind(&label, k));
        let kind_name = kind.map(|k| k.name());
        let config = match kind {
            Some(kind) => {
                let warnings = Rc::new(RefCell::new(Vec::new()));
                let settings = Settings::new(
                    raw.settings,
                    self.base_dir,
                    warnings.clone(),
                    self.rep.lines(),
                    self.host_names.clone(),
                );
                let parsed = kind.parse(settings);
                for w in warnings.take() {
                    self.setting_diagnostic(Severity::Warning, &label, w);
                }
                match parsed {
                    Ok(config) => Some(config),
                    Err(errors) => {
                        for e in errors {
                            self.setting_diagnostic(Severity::Error, &label, e);
                        }
                        None
                    }
                }
            }
            None => None,
        };
        Some(FunctionSpec {
            name: name?,
            kind: kind_name?.to_string(),
            config: config?,
        })
    }

    /// Each function's own checks against the rest of its chain (its endpoints' addresses, its
    /// transit pool and the functions before it).
    pub(super) fn functions_in_chain(
        &mut self,
        chain_label: &str,
        functions: &[FunctionSpec],
        ingress: &EndpointSpec,
        egress: &EndpointSpec,
        transit: ipnet::Ipv4Net,
    ) {
        let endpoints = [ingress.address.addr(), egress.address.addr()];
        let gateways = [ingress.gateway, egress.gateway];
        for (i, f) in functions.iter().enumerate() {
            let chain = ChainAddresses {
                earlier: &functions[..i],
                ingress_subnet: ingress.address.trunc(),
                egress_subnet: egress.address.trunc(),
                endpoints: &endpoints,
                gateways: &gateways,
                transit,
            };
            let label = format!("{chain_label}, function `{}`", f.name);
            for e in f.config.check_in_chain(&chain) {
                self.setting_diagnostic(Severity::Error, &label, e);
            }
        }
    }

    /// Reports a kind's problem with a function's settings: in the chain file at its span, or in
    /// the file the settings name.
    fn setting_diagnostic(&mut self, severity: Severity, label: &str, e: SettingError) {
        let message = format!("{label}: {}", e.message);
        match e.elsewhere {
            Some(at) => self.rep.elsewhere(
                severity,
                &at.file,
                Position {
                    line: at.line,
                    col: at.col,
                },
                message,
                e.hint,
            ),
            None if severity == Severity::Warning => self.rep.warning(e.span, message, e.hint),
            None => self.rep.error(e.span, message, e.hint),
        }
    }

    pub(super) fn function_name(&mut self, chain_label: &str, name: Str) -> Option<String> {
        let span = name.span();
        let name = name.into_inner();
        let Err(err) = names::check_function_name(&name) else {
            return Some(name);
        };
        let hint = match err {
            NameError::Reserved => format!(
                "`ingress` and `egress` name the chain's endpoints; pick another name, e.g. \
                 `{}`",
                suggest_name(&name, IFNAME_MAX, &err)
            ),
            _ => format!(
                "a function name becomes part of interface and namespace names: at most \
                 {IFNAME_MAX} bytes of letters, digits, '-' and '_', starting with a letter or \
                 digit; e.g. `{}`",
                suggest_name(&name, IFNAME_MAX, &err)
            ),
        };
        self.rep.error(
            span,
            format!("{chain_label}: function name `{name}` {err}"),
            Some(hint),
        );
        None
    }

    pub(super) fn kind(&mut self, label: &str, value: &Str) -> Option<&'a dyn FunctionKind> {
        let registry = self.registry;
        let name = value.get_ref();
        if let Some(kind) = registry.get(name) {
            return Some(kind);
        }
        let known: Vec<&str> = registry.names().collect();
        let mut hint = String::new();
        if let Some(near) = did_you_mean(name, known.iter().copied()) {
            hint.push_str(&format!("did you mean `{near}`? "));
        }
        if known.is_empty() {
            hint.push_str("this build registers no function kinds");
        } else {
            hint.push_str(&format!("registered kinds: {}", known.join(", ")));
        }
        self.rep.error(
            value.span(),
            format!("{label}: unknown kind `{name}`"),
            Some(hint),
        );
        None
    }
}

/// A name close to `name` that passes the check, for hints.
pub(super) fn suggest_name(name: &str, max: usize, err: &NameError) -> String {
    let mut cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    cleaned = cleaned
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if matches!(err, NameError::Reserved) {
        cleaned.push_str("-fn");
    }
    cleaned.truncate(max);
    if cleaned.is_empty() {
        cleaned = if max == CHAIN_NAME_MAX { "edge" } else { "fw1" }.to_string();
    }
    cleaned
}
