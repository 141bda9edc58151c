//! Semantic checks: names, addresses, subnets, kinds and each kind's settings, across a chain and
//! across the chains of a file. Every problem is reported; a [`ChainSpec`] is only built from
//! values that passed.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::Range;

use ipnet::Ipv4Net;

use super::model::{ChainSpec, EndpointSpec, FastPath, FunctionSpec};
use super::raw::{RawChain, RawEndpoint, RawFile, RawFunction, Str, did_you_mean};
use crate::diag::{Position, Reporter};
use crate::function::{FunctionKind, Registry, Settings};
use crate::names::{self, CHAIN_NAME_MAX, IFNAME_MAX, NameError};

/// The transit pool of a chain that does not set `transit`.
pub const DEFAULT_TRANSIT: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 16);

const SEPARATE_RANGES: &str = "the ingress subnet, the egress subnet and the transit pool of a \
     chain must be separate address ranges; pick one that overlaps neither of the others";

/// Reserved for the namespaces netfn creates itself.
const OWN_NAMESPACE_PREFIX: &str = "nf-";
/// Linux keeps named namespaces as files under /run/netns: a name is one path component.
const NAMESPACE_NAME_MAX: usize = 255;

/// What the checks need besides the reporter: the text (to turn a span into a line number for
/// "first defined at line N") and the registry of kinds.
pub(super) struct Checker<'a, 'r> {
    pub text: &'a str,
    pub registry: &'a Registry,
    pub rep: &'r mut Reporter<'a>,
}

/// An endpoint whose address passed: enough to build the spec and to compare subnets.
struct Endpoint {
    spec: EndpointSpec,
    role: &'static str,
    address_span: Range<usize>,
    namespace_span: Option<Range<usize>>,
}

/// What the file-level checks need to know about one chain.
struct ChainFacts {
    label: String,
    endpoints: Vec<Endpoint>,
}

impl<'a> Checker<'a, '_> {
    /// Checks every chain, then the file as a whole. Returns the chains that passed.
    pub(super) fn file(&mut self, file: RawFile<'_>) -> Vec<ChainSpec> {
        self.duplicate_chain_names(&file.chains);
        let mut specs = Vec::new();
        let mut facts = Vec::new();
        for raw in file.chains {
            let (spec, chain_facts) = self.chain(raw);
            specs.extend(spec);
            facts.push(chain_facts);
        }
        self.shared_namespaces(&facts);
        specs
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        Position::of(self.text, span.start).line
    }

    fn duplicate_chain_names(&mut self, chains: &[RawChain<'_>]) {
        let mut first: HashMap<&str, Range<usize>> = HashMap::new();
        for name in chains.iter().filter_map(|c| c.name.as_ref()) {
            match first.get(name.get_ref().as_str()) {
                Some(earlier) => {
                    let line = self.line_of(earlier);
                    self.rep.error(
                        name.span(),
                        format!(
                            "chain name `{}` is already used by the chain at line {line}",
                            name.get_ref()
                        ),
                        Some("chain names must be unique in a file; rename one of them".into()),
                    );
                }
                None => {
                    first.insert(name.get_ref(), name.span());
                }
            }
        }
    }

    fn chain(&mut self, raw: RawChain<'_>) -> (Option<ChainSpec>, ChainFacts) {
        let label = raw.label;
        let name = raw.name.and_then(|n| self.chain_name(n));
        let fastpath = self.fastpath(&label, raw.fastpath.as_ref());
        let transit = self.transit(&label, raw.transit.as_ref());
        let ingress = raw.ingress.and_then(|e| self.endpoint(&label, e));
        let egress = raw.egress.and_then(|e| self.endpoint(&label, e));
        let function_count = raw.functions.len();
        let functions = self.functions(&label, raw.functions);

        if let (Some(i), Some(e)) = (&ingress, &egress) {
            self.distinct_namespaces(&label, i, e);
        }
        let endpoints: Vec<Endpoint> = ingress.into_iter().chain(egress).collect();
        if let Some(pool) = &transit {
            self.transit_size(
                &label,
                pool,
                raw.transit.as_ref(),
                &raw.span,
                function_count,
            );
            self.transit_overlaps(&label, &endpoints, pool, raw.transit.as_ref());
        }
        self.endpoint_overlap(&label, &endpoints);

        let spec = match (name, fastpath, transit, functions, endpoints.as_slice()) {
            (Some(name), Some(fastpath), Some(transit), Some(functions), [i, e]) => {
                Some(ChainSpec {
                    name,
                    fastpath,
                    transit,
                    ingress: i.spec.clone(),
                    egress: e.spec.clone(),
                    functions,
                })
            }
            _ => None,
        };
        (spec, ChainFacts { label, endpoints })
    }

    fn chain_name(&mut self, name: Str) -> Option<String> {
        let span = name.span();
        let name = name.into_inner();
        match names::check_name(&name, CHAIN_NAME_MAX) {
            Ok(()) => Some(name),
            Err(err) => {
                let hint = format!(
                    "a chain name becomes the interface name `nf-<chain>`: at most \
                     {CHAIN_NAME_MAX} bytes of letters, digits, '-' and '_', starting with a \
                     letter or digit; e.g. `{}`",
                    suggest_name(&name, CHAIN_NAME_MAX, &err)
                );
                self.rep
                    .error(span, format!("chain name `{name}` {err}"), Some(hint));
                None
            }
        }
    }

    fn fastpath(&mut self, label: &str, value: Option<&Str>) -> Option<FastPath> {
        let Some(value) = value else {
            return Some(FastPath::default());
        };
        match value.get_ref().as_str() {
            "kernel" => Some(FastPath::Kernel),
            "tc" => Some(FastPath::Tc),
            "xdp" => Some(FastPath::Xdp),
            other => {
                let mut hint = String::new();
                if let Some(near) = did_you_mean(other, ["kernel", "tc", "xdp"]) {
                    hint.push_str(&format!("did you mean `{near}`? "));
                }
                hint.push_str("use \"kernel\" (the default), \"tc\" or \"xdp\"");
                self.rep.error(
                    value.span(),
                    format!("{label}: unknown fastpath `{other}`"),
                    Some(hint),
                );
                None
            }
        }
    }

    fn transit(&mut self, label: &str, value: Option<&Str>) -> Option<Ipv4Net> {
        let Some(value) = value else {
            return Some(DEFAULT_TRANSIT);
        };
        let text = value.get_ref();
        let example = "transit = \"100.64.0.0/16\"";
        let net = match parse_net(text) {
            Ok(net) => net,
            Err(problem) => {
                self.rep.error(
                    value.span(),
                    format!("{label}: transit pool `{text}` {problem}"),
                    Some(format!(
                        "write an IPv4 network with its prefix length, e.g. `{example}`"
                    )),
                );
                return None;
            }
        };
        if net.addr() != net.network() {
            self.rep.error(
                value.span(),
                format!("{label}: transit pool `{text}` has host bits set"),
                Some(format!(
                    "write the network address: `transit = \"{}\"`",
                    net.trunc()
                )),
            );
            return None;
        }
        Some(net)
    }

    fn transit_size(
        &mut self,
        label: &str,
        transit: &Ipv4Net,
        written: Option<&Str>,
        chain_span: &Range<usize>,
        functions: usize,
    ) {
        let links = functions.saturating_sub(1) as u64;
        let room = link_capacity(transit);
        if links <= room {
            return;
        }
        let prefix = prefix_for_links(links);
        let suggestion = Ipv4Net::new(transit.network(), prefix).map_or(*transit, |n| n.trunc());
        let span = written.map_or(chain_span.clone(), |w| w.span());
        self.rep.error(
            span,
            format!(
                "{label}: transit pool {transit} has room for {room} /31 {}, but {functions} \
                 functions need {links}",
                if room == 1 { "link" } else { "links" }
            ),
            Some(format!(
                "use a /{prefix} or a shorter prefix, e.g. `transit = \"{suggestion}\"`"
            )),
        );
    }

    fn endpoint(&mut self, label: &str, raw: RawEndpoint) -> Option<Endpoint> {
        let role = raw.role;
        if let Some(ns) = &raw.namespace {
            self.namespace_name(label, role, ns);
        }
        let address_value = raw.address?;
        let address = self.endpoint_address(label, role, &address_value)?;
        let default_gateway = default_gateway(&address)?;
        let gateway = match &raw.gateway {
            Some(g) => self
                .gateway(label, role, &address, g)
                .unwrap_or(default_gateway),
            None => default_gateway,
        };
        Some(Endpoint {
            spec: EndpointSpec {
                address,
                gateway,
                namespace: raw.namespace.as_ref().map(|n| n.get_ref().clone()),
            },
            role,
            address_span: address_value.span(),
            namespace_span: raw.namespace.map(|n| n.span()),
        })
    }

    fn endpoint_address(&mut self, label: &str, role: &str, value: &Str) -> Option<Ipv4Net> {
        let text = value.get_ref();
        let what = format!("{label}: {role} address `{text}`");
        let net = match parse_net(text) {
            Ok(net) => net,
            Err(problem) => {
                let hint = format!(
                    "write the endpoint's IPv4 address with the prefix length of its subnet, \
                     e.g. `address = \"{}\"`",
                    example_address(role)
                );
                self.rep
                    .error(value.span(), format!("{what} {problem}"), Some(hint));
                return None;
            }
        };
        let subnet = net.trunc();
        let problem = if net.prefix_len() == 32 {
            Some("is a /32, which leaves no address for the gateway".to_string())
        } else if net.prefix_len() < 31 && net.addr() == net.network() {
            Some(format!("is the network address of {subnet}"))
        } else if net.prefix_len() < 31 && net.addr() == net.broadcast() {
            Some(format!("is the broadcast address of {subnet}"))
        } else {
            None
        };
        let Some(problem) = problem else {
            return Some(net);
        };
        let hint = if net.prefix_len() == 32 {
            format!(
                "use a /31 or a shorter prefix, e.g. `address = \"{}/24\"`",
                net.addr()
            )
        } else {
            format!(
                "use a host address of the subnet, e.g. `address = \"{}/{}\"`",
                nth_address(subnet.network(), 2),
                net.prefix_len()
            )
        };
        self.rep
            .error(value.span(), format!("{what} {problem}"), Some(hint));
        None
    }

    fn gateway(
        &mut self,
        label: &str,
        role: &str,
        address: &Ipv4Net,
        value: &Str,
    ) -> Option<Ipv4Addr> {
        let text = value.get_ref();
        let subnet = address.trunc();
        let example = default_gateway(address).unwrap_or(subnet.network());
        let what = format!("{label}: {role} gateway `{text}`");
        let Ok(gateway) = text.parse::<Ipv4Addr>() else {
            let hint = if text.contains('/') {
                format!("the gateway takes no prefix length: write `gateway = \"{example}\"`")
            } else {
                format!("write a plain IPv4 address, e.g. `gateway = \"{example}\"`")
            };
            self.rep.error(
                value.span(),
                format!("{what} is not an IPv4 address"),
                Some(hint),
            );
            return None;
        };
        let small = address.prefix_len() >= 31;
        let problem = if !subnet.contains(&gateway) {
            format!("is outside the {role} subnet {subnet}")
        } else if gateway == address.addr() {
            format!("is the {role} address itself")
        } else if !small && gateway == subnet.network() {
            format!("is the network address of {subnet}")
        } else if !small && gateway == subnet.broadcast() {
            format!("is the broadcast address of {subnet}")
        } else {
            return Some(gateway);
        };
        let hint = format!(
            "the gateway is the neighbouring function's address on {subnet}: use another host \
             address of it, e.g. `gateway = \"{example}\"`, or remove `gateway` to get that \
             default"
        );
        self.rep
            .error(value.span(), format!("{what} {problem}"), Some(hint));
        None
    }

    fn namespace_name(&mut self, label: &str, role: &str, value: &Str) {
        let name = value.get_ref();
        let what = format!("{label}: {role} namespace `{name}`");
        let create_hint = "or remove `namespace` to let netfn create the endpoint's namespace";
        let (message, hint) = if name.is_empty() {
            (
                format!("{label}: {role} namespace name is empty"),
                format!("name a namespace listed by `ip netns list`, {create_hint}"),
            )
        } else if name.contains('/') || name.contains('\0') {
            let bad = if name.contains('/') {
                "'/'"
            } else {
                "a NUL byte"
            };
            (
                format!("{what} contains {bad}"),
                format!(
                    "a namespace name is one file name under /run/netns; name the namespace \
                     as `ip netns list` shows it, {create_hint}"
                ),
            )
        } else if name == "." || name == ".." {
            (
                format!("{what} is not a valid namespace name"),
                format!("name a namespace listed by `ip netns list`, {create_hint}"),
            )
        } else if name.len() > NAMESPACE_NAME_MAX {
            (
                format!(
                    "{what} is {} bytes long; at most {NAMESPACE_NAME_MAX} fit",
                    name.len()
                ),
                format!("use a shorter name, {create_hint}"),
            )
        } else if name.starts_with(OWN_NAMESPACE_PREFIX) {
            (
                format!(
                    "{what} starts with `{OWN_NAMESPACE_PREFIX}`, which is reserved for the \
                     namespaces netfn creates"
                ),
                format!(
                    "create your namespace under another name (e.g. `ip netns add {}`), \
                     {create_hint}",
                    name.trim_start_matches(OWN_NAMESPACE_PREFIX)
                ),
            )
        } else {
            return;
        };
        self.rep.error(value.span(), message, Some(hint));
    }

    fn distinct_namespaces(&mut self, label: &str, ingress: &Endpoint, egress: &Endpoint) {
        let (Some(a), Some(b)) = (&ingress.spec.namespace, &egress.spec.namespace) else {
            return;
        };
        if a != b {
            return;
        }
        let span = egress
            .namespace_span
            .clone()
            .unwrap_or(egress.address_span.clone());
        self.rep.error(
            span,
            format!("{label}: ingress and egress are both in namespace `{a}`"),
            Some(
                "a chain joins two different namespaces: name another existing namespace for \
                 the egress, or remove its `namespace` to let netfn create one"
                    .into(),
            ),
        );
    }

    /// Within a chain, the ingress and the egress subnet must not overlap.
    fn endpoint_overlap(&mut self, label: &str, endpoints: &[Endpoint]) {
        let [a, b] = endpoints else {
            return;
        };
        let (na, nb) = (a.spec.address.trunc(), b.spec.address.trunc());
        if overlap(&na, &nb) {
            self.rep.error(
                b.address_span.clone(),
                format!(
                    "{label}: {} subnet {nb} overlaps the {} subnet {na}",
                    b.role, a.role
                ),
                Some(SEPARATE_RANGES.into()),
            );
        }
    }

    /// Within a chain, the transit pool (`written` if the file sets it) must not overlap either
    /// endpoint subnet.
    fn transit_overlaps(
        &mut self,
        label: &str,
        endpoints: &[Endpoint],
        pool: &Ipv4Net,
        written: Option<&Str>,
    ) {
        for e in endpoints {
            let net = e.spec.address.trunc();
            if !overlap(&net, pool) {
                continue;
            }
            let (span, message, hint) = match written {
                Some(w) => (
                    w.span(),
                    format!(
                        "{label}: transit pool {pool} overlaps the {} subnet {net}",
                        e.role
                    ),
                    SEPARATE_RANGES.to_string(),
                ),
                None => (
                    e.address_span.clone(),
                    format!(
                        "{label}: {} subnet {net} overlaps the default transit pool {pool}",
                        e.role
                    ),
                    "set `transit` in the [[chain]] table to a pool that neither endpoint \
                     subnet touches, e.g. `transit = \"172.31.0.0/24\"`"
                        .to_string(),
                ),
            };
            self.rep.error(span, message, Some(hint));
        }
    }

    fn functions(&mut self, label: &str, raws: Vec<RawFunction<'_>>) -> Option<Vec<FunctionSpec>> {
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

    fn duplicate_function(
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

    fn function(&mut self, chain_label: &str, raw: RawFunction<'_>) -> Option<FunctionSpec> {
        let label = raw.label;
        let name = raw.name.and_then(|n| self.function_name(chain_label, n));
        let kind = raw.kind.as_ref().and_then(|k| self.kind(&label, k));
        let kind_name = kind.map(|k| k.name());
        let config = match kind {
            Some(kind) => match kind.parse(Settings::new(raw.settings)) {
                Ok(config) => Some(config),
                Err(errors) => {
                    for e in errors {
                        self.rep
                            .error(e.span, format!("{label}: {}", e.message), e.hint);
                    }
                    None
                }
            },
            None => None,
        };
        Some(FunctionSpec {
            name: name?,
            kind: kind_name?.to_string(),
            config: config?,
        })
    }

    fn function_name(&mut self, chain_label: &str, name: Str) -> Option<String> {
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

    fn kind(&mut self, label: &str, value: &Str) -> Option<&'a dyn FunctionKind> {
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

    /// Two chains may put endpoints into the same existing namespace, but their subnets must not
    /// overlap there: each adds a route for its subnet.
    fn shared_namespaces(&mut self, chains: &[ChainFacts]) {
        for (j, later) in chains.iter().enumerate() {
            for e in &later.endpoints {
                if let Some((chain, other)) = find_clash(&chains[..j], e) {
                    self.namespace_clash(&later.label, e, &chain.label, other);
                }
            }
        }
    }

    fn namespace_clash(&mut self, label: &str, e: &Endpoint, other_label: &str, other: &Endpoint) {
        let namespace = e.spec.namespace.as_deref().unwrap_or_default();
        let line = self.line_of(&other.address_span);
        self.rep.error(
            e.address_span.clone(),
            format!(
                "{label}: {} subnet {} overlaps the {} subnet {} of {other_label} (line \
                 {line}) in namespace `{namespace}`",
                e.role,
                e.spec.address.trunc(),
                other.role,
                other.spec.address.trunc()
            ),
            Some(format!(
                "both chains route their subnet in namespace `{namespace}`; give one endpoint a \
                 subnet that does not overlap the other, or another namespace"
            )),
        );
    }
}

/// The first endpoint of an earlier chain in the same existing namespace with an overlapping
/// subnet.
fn find_clash<'c>(
    earlier: &'c [ChainFacts],
    e: &Endpoint,
) -> Option<(&'c ChainFacts, &'c Endpoint)> {
    let namespace = e.spec.namespace.as_ref()?;
    earlier.iter().find_map(|chain| {
        chain
            .endpoints
            .iter()
            .find(|o| {
                o.spec.namespace.as_ref() == Some(namespace)
                    && overlap(&o.spec.address.trunc(), &e.spec.address.trunc())
            })
            .map(|o| (chain, o))
    })
}

/// Parses `a.b.c.d/len`; the error completes a sentence about the value.
fn parse_net(text: &str) -> Result<Ipv4Net, String> {
    if let Ok(net) = text.parse::<Ipv4Net>() {
        return Ok(net);
    }
    if text.parse::<Ipv4Addr>().is_ok() {
        return Err("has no prefix length".into());
    }
    if text.parse::<ipnet::IpNet>().is_ok() || text.parse::<std::net::IpAddr>().is_ok() {
        return Err("is IPv6; netfn supports IPv4 only for now".into());
    }
    Err("is not an IPv4 address with a prefix length".into())
}

fn example_address(role: &str) -> &'static str {
    if role == "egress" {
        "10.2.0.2/24"
    } else {
        "10.1.0.2/24"
    }
}

/// The default gateway of an endpoint: for a /31 the other address, otherwise the first host
/// address of the subnet that is not the endpoint's own. `None` for a /32.
pub(super) fn default_gateway(address: &Ipv4Net) -> Option<Ipv4Addr> {
    match address.prefix_len() {
        32 => None,
        31 => address.hosts().find(|a| *a != address.addr()),
        _ => address.trunc().hosts().find(|a| *a != address.addr()),
    }
}

fn nth_address(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).saturating_add(n))
}

fn overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// How many /31 links fit in a pool.
fn link_capacity(pool: &Ipv4Net) -> u64 {
    match pool.prefix_len() {
        len @ 0..=31 => 1u64 << (31 - len),
        _ => 0,
    }
}

/// The longest prefix whose pool holds `links` /31 links.
fn prefix_for_links(links: u64) -> u8 {
    let bits = u64::BITS - links.saturating_sub(1).leading_zeros();
    31u8.saturating_sub(u8::try_from(bits).unwrap_or(31))
}

/// A name close to `name` that passes the check, for hints.
fn suggest_name(name: &str, max: usize, err: &NameError) -> String {
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

#[cfg(test)]
pub(super) mod test_support {
    //! Function kinds for core's own tests (core cannot depend on the `functions` crate), and
    //! helpers that parse a text and list its diagnostics.

    use std::sync::Arc;

    use serde::Deserialize;
    use toml::Spanned;

    use crate::function::{FunctionConfig, FunctionKind, Registry, SettingError, Settings};

    /// `kind = "forward"`: no settings.
    pub struct Forward;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ForwardConfig {}

    impl FunctionConfig for ForwardConfig {
        fn kind(&self) -> &'static str {
            "forward"
        }
        fn to_json(&self) -> serde_json::Value {
            serde_json::json!({})
        }
    }

    impl FunctionKind for Forward {
        fn name(&self) -> &'static str {
            "forward"
        }
        fn summary(&self) -> &'static str {
            "forwards every packet (test kind)"
        }
        fn parse(
            &self,
            settings: Settings<'_>,
        ) -> Result<Arc<dyn FunctionConfig>, Vec<SettingError>> {
            let config: ForwardConfig = settings.deserialize().map_err(|mut e| {
                e.hint = Some("a forward function takes no settings".into());
                vec![e]
            })?;
            Ok(Arc::new(config))
        }
    }

    /// `kind = "counter"`: a required integer `limit` > 0.
    pub struct Counter;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CounterSettings {
        limit: Spanned<i64>,
    }

    #[derive(Debug)]
    pub struct CounterConfig {
        pub limit: u64,
    }

    impl FunctionConfig for CounterConfig {
        fn kind(&self) -> &'static str {
            "counter"
        }
        fn to_json(&self) -> serde_json::Value {
            serde_json::json!({ "limit": self.limit })
        }
    }

    impl FunctionKind for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn summary(&self) -> &'static str {
            "counts packets up to a limit (test kind)"
        }
        fn parse(
            &self,
            settings: Settings<'_>,
        ) -> Result<Arc<dyn FunctionConfig>, Vec<SettingError>> {
            let raw: CounterSettings = settings.deserialize().map_err(|e| vec![e])?;
            match u64::try_from(*raw.limit.get_ref()) {
                Ok(limit) if limit > 0 => Ok(Arc::new(CounterConfig { limit })),
                _ => Err(vec![SettingError {
                    span: raw.limit.span(),
                    message: format!(
                        "`limit` must be greater than 0, not {}",
                        raw.limit.get_ref()
                    ),
                    hint: Some("e.g. `limit = 1000`".into()),
                }]),
            }
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
}

#[cfg(test)]
mod tests {
    use super::test_support::problems;
    use super::*;

    // Line 3 holds the ingress (its address value starts at column 23), line 4 the egress
    // (address at column 22), line 5 the functions.
    fn file(ingress: &str, egress: &str) -> String {
        format!(
            "[[chain]]\nname = \"edge\"\ningress = {{ {ingress} }}\negress = {{ {egress} }}\n\
             function = [{{ name = \"fw1\", kind = \"forward\" }}]\n"
        )
    }

    fn endpoints(ingress_address: &str, egress_address: &str) -> String {
        file(
            &format!("address = \"{ingress_address}\""),
            &format!("address = \"{egress_address}\""),
        )
    }

    /// The only diagnostic of `text`.
    fn only(text: &str) -> (usize, usize, String, String) {
        let mut found = problems(text);
        assert_eq!(
            found.len(),
            1,
            "expected one diagnostic for\n{text}\ngot {found:#?}"
        );
        found.remove(0)
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test network")
    }

    #[test]
    fn the_template_is_valid() {
        assert_eq!(problems(&endpoints("10.1.0.2/24", "10.2.0.2/24")), []);
    }

    #[test]
    fn default_gateways() {
        let gw = |s: &str| default_gateway(&net(s)).map(|a| a.to_string());
        assert_eq!(gw("10.1.0.2/24").as_deref(), Some("10.1.0.1"));
        assert_eq!(gw("10.1.0.1/24").as_deref(), Some("10.1.0.2"));
        assert_eq!(gw("10.1.0.1/30").as_deref(), Some("10.1.0.2"));
        assert_eq!(gw("10.1.0.4/31").as_deref(), Some("10.1.0.5"));
        assert_eq!(gw("10.1.0.5/31").as_deref(), Some("10.1.0.4"));
        assert_eq!(gw("10.1.0.5/32"), None);
    }

    #[test]
    fn transit_arithmetic() {
        assert_eq!(link_capacity(&net("100.64.0.0/16")), 32768);
        assert_eq!(link_capacity(&net("100.64.0.0/30")), 2);
        assert_eq!(link_capacity(&net("100.64.0.0/31")), 1);
        assert_eq!(link_capacity(&net("100.64.0.1/32")), 0);
        let prefixes: Vec<u8> = [1, 2, 3, 4, 5, 8, 9].map(prefix_for_links).to_vec();
        assert_eq!(prefixes, [31, 30, 29, 29, 28, 28, 27]);
    }

    #[test]
    fn duplicate_chain_names_point_at_the_second_and_name_the_first_line() {
        let one = endpoints("10.1.0.2/24", "10.2.0.2/24");
        let text = format!("{one}{one}");
        let (line, col, message, hint) = only(&text);
        assert_eq!((line, col), (7, 8));
        assert_eq!(
            message,
            "chain name `edge` is already used by the chain at line 2"
        );
        assert!(hint.contains("unique in a file"), "{hint}");
    }

    #[test]
    fn duplicate_function_names_within_a_chain() {
        let text = endpoints("10.1.0.2/24", "10.2.0.2/24").replace(
            "function = [{ name = \"fw1\", kind = \"forward\" }]",
            "function = [{ name = \"fw1\", kind = \"forward\" },\n  { name = \"fw1\", kind = \"forward\" }]",
        );
        let (line, col, message, _) = only(&text);
        assert_eq!((line, col), (6, 12));
        assert_eq!(
            message,
            "chain `edge`: function name `fw1` is already used by the function at line 5"
        );
    }

    #[test]
    fn the_same_function_name_in_two_chains_is_fine() {
        let a = endpoints("10.1.0.2/24", "10.2.0.2/24");
        let b = a.replace("\"edge\"", "\"core\"");
        assert_eq!(problems(&format!("{a}{b}")), []);
    }

    #[test]
    fn unknown_kinds_list_the_registered_ones() {
        let text = endpoints("10.1.0.2/24", "10.2.0.2/24").replace("\"forward\"", "\"countr\"");
        let (line, col, message, hint) = only(&text);
        assert_eq!((line, col), (5, 36));
        assert_eq!(
            message,
            "chain `edge`, function `fw1`: unknown kind `countr`"
        );
        assert_eq!(
            hint,
            "did you mean `counter`? registered kinds: counter, forward"
        );
        let text = endpoints("10.1.0.2/24", "10.2.0.2/24").replace("\"forward\"", "\"nat\"");
        assert_eq!(only(&text).3, "registered kinds: counter, forward");
    }

    #[test]
    fn kind_errors_are_collected_with_their_spans() {
        let text = endpoints("10.1.0.2/24", "10.2.0.2/24").replace(
            "function = [{ name = \"fw1\", kind = \"forward\" }]\n",
            "[[chain.function]]\nname = \"c1\"\nkind = \"counter\"\nlimit = -3\n\
             [[chain.function]]\nname = \"c2\"\nkind = \"counter\"\n\
             [[chain.function]]\nname = \"f\"\nkind = \"forward\"\nlimit = 1\n",
        );
        let found: Vec<(usize, usize, String)> = problems(&text)
            .into_iter()
            .map(|p| (p.0, p.1, p.2))
            .collect();
        assert_eq!(
            found,
            [
                (
                    8,
                    9,
                    "chain `edge`, function `c1`: `limit` must be greater than 0, not -3"
                        .to_string()
                ),
                (
                    9,
                    1,
                    "chain `edge`, function `c2`: missing field `limit`".to_string()
                ),
                (
                    15,
                    1,
                    "chain `edge`, function `f`: unknown field `limit`, there are no fields"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn bad_addresses_show_an_example() {
        let cases = [
            ("10.1.0.2", "has no prefix length"),
            ("10.1.0.2/33", "is not an IPv4 address with a prefix length"),
            ("ten/24", "is not an IPv4 address with a prefix length"),
            ("fd00::2/64", "is IPv6; netfn supports IPv4 only for now"),
        ];
        for (address, problem) in cases {
            let (line, col, message, hint) = only(&endpoints(address, "10.2.0.2/24"));
            assert_eq!((line, col), (3, 23), "{address}");
            assert_eq!(
                message,
                format!("chain `edge`: ingress address `{address}` {problem}")
            );
            assert!(hint.contains("`address = \"10.1.0.2/24\"`"), "{hint}");
        }
    }

    #[test]
    fn network_broadcast_and_host_route_addresses_are_refused() {
        let (_, col, message, hint) = only(&endpoints("10.1.0.2/24", "10.2.0.0/24"));
        assert_eq!(col, 22);
        assert_eq!(
            message,
            "chain `edge`: egress address `10.2.0.0/24` is the network address of 10.2.0.0/24"
        );
        assert_eq!(
            hint,
            "use a host address of the subnet, e.g. `address = \"10.2.0.2/24\"`"
        );
        let (_, _, message, _) = only(&endpoints("10.1.0.255/24", "10.2.0.2/24"));
        assert_eq!(
            message,
            "chain `edge`: ingress address `10.1.0.255/24` is the broadcast address of \
             10.1.0.0/24"
        );
        let (_, _, message, hint) = only(&endpoints("10.1.0.2/32", "10.2.0.2/24"));
        assert_eq!(
            message,
            "chain `edge`: ingress address `10.1.0.2/32` is a /32, which leaves no address for \
             the gateway"
        );
        assert_eq!(
            hint,
            "use a /31 or a shorter prefix, e.g. `address = \"10.1.0.2/24\"`"
        );
        // In a /31 both addresses are hosts.
        assert_eq!(problems(&endpoints("10.1.0.0/31", "10.2.0.1/31")), []);
    }

    #[test]
    fn gateways_must_be_other_hosts_of_the_subnet() {
        let cases = [
            ("10.9.0.1", "is outside the ingress subnet 10.1.0.0/24"),
            ("10.1.0.2", "is the ingress address itself"),
            ("10.1.0.0", "is the network address of 10.1.0.0/24"),
            ("10.1.0.255", "is the broadcast address of 10.1.0.0/24"),
            ("10.1.0.1/24", "is not an IPv4 address"),
        ];
        for (gateway, problem) in cases {
            let text = file(
                &format!("address = \"10.1.0.2/24\", gateway = \"{gateway}\""),
                "address = \"10.2.0.2/24\"",
            );
            let (line, col, message, hint) = only(&text);
            assert_eq!((line, col), (3, 48), "{gateway}");
            assert_eq!(
                message,
                format!("chain `edge`: ingress gateway `{gateway}` {problem}")
            );
            assert!(hint.contains("`gateway = \"10.1.0.1\"`"), "{hint}");
        }
    }

    #[test]
    fn ingress_and_egress_subnets_must_not_overlap() {
        let (line, col, message, hint) = only(&endpoints("10.1.0.2/24", "10.1.200.2/16"));
        assert_eq!((line, col), (4, 22));
        assert_eq!(
            message,
            "chain `edge`: egress subnet 10.1.0.0/16 overlaps the ingress subnet 10.1.0.0/24"
        );
        assert!(hint.contains("separate address ranges"), "{hint}");
    }

    #[test]
    fn the_transit_pool_must_not_overlap_an_endpoint() {
        let text = endpoints("10.1.0.2/24", "10.2.0.2/24").replace(
            "name = \"edge\"\n",
            "name = \"edge\"\ntransit = \"10.0.0.0/8\"\n",
        );
        let found: Vec<(usize, usize, String)> = problems(&text)
            .into_iter()
            .map(|p| (p.0, p.1, p.2))
            .collect();
        assert_eq!(
            found,
            [
                (
                    3,
                    11,
                    "chain `edge`: transit pool 10.0.0.0/8 overlaps the ingress subnet \
                     10.1.0.0/24"
                        .to_string()
                ),
                (
                    3,
                    11,
                    "chain `edge`: transit pool 10.0.0.0/8 overlaps the egress subnet \
                     10.2.0.0/24"
                        .to_string()
                ),
            ]
        );
        // Not written: the endpoint is blamed, and told how to move the pool.
        let (line, col, message, hint) = only(&endpoints("100.64.3.2/24", "10.2.0.2/24"));
        assert_eq!((line, col), (3, 23));
        assert_eq!(
            message,
            "chain `edge`: ingress subnet 100.64.3.0/24 overlaps the default transit pool \
             100.64.0.0/16"
        );
        assert!(hint.starts_with("set `transit`"), "{hint}");
    }

    #[test]
    fn a_transit_pool_too_small_says_how_much_is_needed() {
        let text = endpoints("10.1.0.2/24", "10.2.0.2/24")
            .replace(
                "name = \"edge\"\n",
                "name = \"edge\"\ntransit = \"100.64.0.0/30\"\n",
            )
            .replace(
                "function = [{ name = \"fw1\", kind = \"forward\" }]",
                "function = [{ name = \"a\", kind = \"forward\" }, { name = \"b\", kind = \
                 \"forward\" }, { name = \"c\", kind = \"forward\" }, { name = \"d\", kind = \
                 \"forward\" }]",
            );
        let (line, col, message, hint) = only(&text);
        assert_eq!((line, col), (3, 11));
        assert_eq!(
            message,
            "chain `edge`: transit pool 100.64.0.0/30 has room for 2 /31 links, but 4 \
             functions need 3"
        );
        assert_eq!(
            hint,
            "use a /29 or a shorter prefix, e.g. `transit = \"100.64.0.0/29\"`"
        );
        // One function needs no link at all.
        let text = endpoints("10.1.0.2/24", "10.2.0.2/24").replace(
            "name = \"edge\"\n",
            "name = \"edge\"\ntransit = \"100.64.0.7/32\"\n",
        );
        assert_eq!(problems(&text), []);
    }

    #[test]
    fn transit_pools_must_be_networks() {
        let with = |pool: &str| {
            endpoints("10.1.0.2/24", "10.2.0.2/24").replace(
                "name = \"edge\"\n",
                &format!("name = \"edge\"\ntransit = \"{pool}\"\n"),
            )
        };
        let (line, col, message, hint) = only(&with("100.64.0.1/24"));
        assert_eq!((line, col), (3, 11));
        assert_eq!(
            message,
            "chain `edge`: transit pool `100.64.0.1/24` has host bits set"
        );
        assert_eq!(
            hint,
            "write the network address: `transit = \"100.64.0.0/24\"`"
        );
        let (_, _, message, _) = only(&with("100.64.0.0"));
        assert_eq!(
            message,
            "chain `edge`: transit pool `100.64.0.0` has no prefix length"
        );
    }

    #[test]
    fn fastpath_values() {
        let with = |fp: &str| {
            endpoints("10.1.0.2/24", "10.2.0.2/24").replace(
                "name = \"edge\"\n",
                &format!("name = \"edge\"\nfastpath = \"{fp}\"\n"),
            )
        };
        for ok in ["kernel", "tc", "xdp"] {
            assert_eq!(problems(&with(ok)), [], "{ok}");
        }
        let (line, col, message, hint) = only(&with("TC"));
        assert_eq!((line, col), (3, 12));
        assert_eq!(message, "chain `edge`: unknown fastpath `TC`");
        assert_eq!(
            hint,
            "did you mean `tc`? use \"kernel\" (the default), \"tc\" or \"xdp\""
        );
    }

    #[test]
    fn bad_chain_and_function_names() {
        let text = endpoints("10.1.0.2/24", "10.2.0.2/24")
            .replace("\"edge\"", "\"edge-of-the-lab\"")
            .replace("\"fw1\"", "\"a/b\"");
        let found = problems(&text);
        let summary: Vec<(usize, usize, &str)> =
            found.iter().map(|p| (p.0, p.1, p.2.as_str())).collect();
        assert_eq!(
            summary,
            [
                (
                    2,
                    8,
                    "chain name `edge-of-the-lab` is 15 bytes long; at most 12 fit"
                ),
                (
                    5,
                    22,
                    "chain `edge-of-the-lab`: function name `a/b` contains '/'; use letters, \
                     digits, '-' and '_'"
                ),
            ]
        );
        assert!(
            found[0].3.ends_with("e.g. `edge-of-the-`"),
            "{}",
            found[0].3
        );
        assert!(found[1].3.ends_with("e.g. `a-b`"), "{}", found[1].3);

        let text = endpoints("10.1.0.2/24", "10.2.0.2/24").replace("\"fw1\"", "\"ingress\"");
        let (_, _, message, hint) = only(&text);
        assert_eq!(
            message,
            "chain `edge`: function name `ingress` is reserved for the chain's endpoints"
        );
        assert!(hint.ends_with("e.g. `ingress-fn`"), "{hint}");
        let text = endpoints("10.1.0.2/24", "10.2.0.2/24").replace("\"edge\"", "\"_edge\"");
        assert_eq!(
            only(&text).2,
            "chain name `_edge` must start with a letter or a digit"
        );
    }

    #[test]
    fn ingress_and_egress_cannot_share_a_namespace() {
        let text = file(
            "address = \"10.1.0.2/24\", namespace = \"lab\"",
            "address = \"10.2.0.2/24\", namespace = \"lab\"",
        );
        let (line, col, message, hint) = only(&text);
        assert_eq!((line, col), (4, 49));
        assert_eq!(
            message,
            "chain `edge`: ingress and egress are both in namespace `lab`"
        );
        assert!(hint.contains("remove its `namespace`"), "{hint}");
    }

    #[test]
    fn existing_namespace_names_are_checked() {
        let long = "n".repeat(256);
        let cases = [
            (
                "",
                "chain `edge`: ingress namespace name is empty".to_string(),
            ),
            (
                "a/b",
                "chain `edge`: ingress namespace `a/b` contains '/'".to_string(),
            ),
            (
                "..",
                "chain `edge`: ingress namespace `..` is not a valid namespace name".into(),
            ),
            (
                long.as_str(),
                format!(
                    "chain `edge`: ingress namespace `{long}` is 256 bytes long; at most 255 fit"
                ),
            ),
            (
                "nf-client",
                "chain `edge`: ingress namespace `nf-client` starts with `nf-`, which is \
                 reserved for the namespaces netfn creates"
                    .to_string(),
            ),
        ];
        for (namespace, expected) in cases {
            let text = file(
                &format!("address = \"10.1.0.2/24\", namespace = \"{namespace}\""),
                "address = \"10.2.0.2/24\"",
            );
            let (line, col, message, hint) = only(&text);
            assert_eq!((line, col), (3, 50), "{namespace}");
            assert_eq!(message, expected);
            assert!(hint.contains("remove `namespace`"), "{hint}");
        }
    }

    #[test]
    fn chains_sharing_a_namespace_need_disjoint_subnets() {
        let a = file(
            "address = \"10.1.0.2/24\", namespace = \"client\"",
            "address = \"10.2.0.2/24\"",
        );
        let b = |egress: &str| {
            file(
                "address = \"10.7.0.2/24\"",
                &format!("address = \"{egress}\", namespace = \"client\""),
            )
            .replace("\"edge\"", "\"core\"")
        };
        let clash = b("10.1.0.9/16");
        let (line, col, message, hint) = only(&format!("{a}{clash}"));
        assert_eq!((line, col), (9, 22));
        assert_eq!(
            message,
            "chain `core`: egress subnet 10.1.0.0/16 overlaps the ingress subnet 10.1.0.0/24 \
             of chain `edge` (line 3) in namespace `client`"
        );
        assert!(hint.contains("namespace `client`"), "{hint}");
        // Disjoint subnets in the same namespace, or overlapping ones in namespaces netfn
        // creates, are fine.
        let disjoint = b("10.9.0.2/24");
        assert_eq!(problems(&format!("{a}{disjoint}")), []);
        let created = endpoints("10.1.0.2/24", "10.2.0.2/24");
        let twin = created.replace("\"edge\"", "\"core\"");
        assert_eq!(problems(&format!("{created}{twin}")), []);
    }

    #[test]
    fn a_chain_needs_functions() {
        let text = endpoints("10.1.0.2/24", "10.2.0.2/24")
            .replace("[{ name = \"fw1\", kind = \"forward\" }]", "[]");
        let (line, col, message, hint) = only(&text);
        assert_eq!((line, col), (5, 12));
        assert_eq!(message, "chain `edge` has no functions");
        assert!(hint.contains("[[chain.function]]"), "{hint}");
    }
}
