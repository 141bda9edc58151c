//! Semantic checks: names, addresses, subnets, kinds and each kind's settings, across a chain and
//! across the chains of a file. Every problem is reported; a [`ChainSpec`] is only built from
//! values that passed.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::Range;

use ipnet::Ipv4Net;

use super::model::{ChainSpec, EndpointSpec, FastPath, FunctionSpec};
use super::raw::{RawChain, RawEndpoint, RawFile, RawFunction, Str, did_you_mean};
use crate::function::{FunctionKind, HostNames, Registry, Settings};
use crate::plan::names::{self, CHAIN_NAME_MAX, IFNAME_MAX, NameError};
use crate::spec::diag::{Position, Reporter};

mod endpoints;
mod functions;
mod net;
#[cfg(test)]
pub(super) mod test_support;
#[cfg(test)]
mod tests;

use functions::suggest_name;
pub(in crate::spec) use net::default_gateway;
use net::*;

/// The transit pool of a chain that does not set `transit`.
pub const DEFAULT_TRANSIT: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 16);

const SEPARATE_RANGES: &str = "the ingress subnet, the egress subnet and the transit pool of a \
     chain must be separate address ranges; pick one that overlaps neither of the others";

/// Reserved for the namespaces netfn creates itself.
const OWN_NAMESPACE_PREFIX: &str = "nf-";
/// Linux keeps named namespaces as files under /run/netns: a name is one path component.
const NAMESPACE_NAME_MAX: usize = 255;

/// What the checks need besides the reporter (which also turns a span into a line number for
/// "first defined at line N"): the registry of kinds.
pub(super) struct Checker<'a, 'r> {
    pub registry: &'a Registry,
    /// Where the file's relative paths start (its directory).
    pub base_dir: &'a std::path::Path,
    /// How the functions' settings look host names up, if they do.
    pub host_names: &'a HostNames,
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
    /// The namespaces netfn would create for the chain (when its name is valid).
    namespaces: Vec<OwnNamespace>,
}

/// A namespace netfn creates for one hop of a chain: its name, the hop as messages name it
/// ("chain `a`, function `b-c`"), and where the file gives the name's last part.
struct OwnNamespace {
    name: String,
    hop: String,
    span: Range<usize>,
}

/// The TTL Linux gives the packets it sends (`net.ipv4.ip_default_ttl`).
const DEFAULT_TTL: usize = 64;

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
        self.namespace_collisions(&facts);
        specs
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        self.rep.position(span.start).line
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
        let name_span = raw.name.as_ref().map(|n| n.span());
        let name = raw.name.and_then(|n| self.chain_name(n));
        let namespaces = name
            .as_deref()
            .zip(name_span)
            .map(|(name, span)| {
                let endpoints = [&raw.ingress, &raw.egress];
                own_namespaces(name, &label, span, endpoints, &raw.functions)
            })
            .unwrap_or_default();
        let fastpath = self.fastpath(&label, raw.fastpath.as_ref());
        let transit = self.transit(&label, raw.transit.as_ref());
        let ingress = raw.ingress.and_then(|e| self.endpoint(&label, e));
        let egress = raw.egress.and_then(|e| self.endpoint(&label, e));
        let function_count = raw.functions.len();
        self.chain_length(&label, &raw.span, function_count);
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
                self.functions_in_chain(&label, &functions, &i.spec, &e.spec, transit);
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
        (
            spec,
            ChainFacts {
                label,
                endpoints,
                namespaces,
            },
        )
    }

    /// Every function decrements the TTL as a router does: a packet a host sends with TTL 64
    /// (Linux's default) is dropped at the 64th function, so a longer chain is valid but traffic
    /// from such hosts cannot cross it. Said as a warning, with what to do.
    fn chain_length(&mut self, label: &str, span: &Range<usize>, functions: usize) {
        if functions >= DEFAULT_TTL {
            self.rep.warning(
                span.clone(),
                format!(
                    "{label}: {functions} functions each decrement the TTL: a packet sent with \
                     TTL {DEFAULT_TTL} (Linux's default) is dropped at function {DEFAULT_TTL} and \
                     never reaches the far endpoint"
                ),
                Some(format!(
                    "keep chains under {DEFAULT_TTL} functions (split this one), or raise the \
                     endpoints' TTL (sysctl net.ipv4.ip_default_ttl, up to 255)"
                )),
            );
        }
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

    /// Namespaces are named `nf-<chain>-<hop>`, and `-` may be part of both names: chain `a`
    /// with function `b-c` and chain `a-b` with function `c` both need `nf-a-b-c`. Said at both
    /// places (the second `up` would fail, and nothing in either chain alone is wrong).
    fn namespace_collisions(&mut self, chains: &[ChainFacts]) {
        let mut first: HashMap<&str, (usize, &OwnNamespace)> = HashMap::new();
        for (c, chain) in chains.iter().enumerate() {
            for ns in &chain.namespaces {
                match first.get(ns.name.as_str()) {
                    // Within a chain, hop names are unique (a duplicate is its own error), and
                    // a chain name used twice is an error of its own too.
                    Some(&(o, _)) if o == c || chains[o].label == chain.label => {}
                    Some(&(_, other)) => {
                        self.namespace_collision(ns, other);
                        self.namespace_collision(other, ns);
                    }
                    None => {
                        first.insert(&ns.name, (c, ns));
                    }
                }
            }
        }
    }

    fn namespace_collision(&mut self, at: &OwnNamespace, other: &OwnNamespace) {
        let line = self.line_of(&other.span);
        self.rep.error(
            at.span.clone(),
            format!(
                "{}: its namespace `{}` is also the namespace of {} (line {line}); the second \
                 chain to come up would find it taken",
                at.hop, at.name, other.hop
            ),
            Some(
                "netfn names a namespace `nf-<chain>-<function>` (`nf-<chain>-ingress`, \
                 `-egress` for endpoints it creates), and `-` may be part of both names: rename \
                 one of the two chains or functions"
                    .into(),
            ),
        );
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

/// The namespaces netfn would create for chain `name` (as [`crate::plan::plan_chain`] names
/// them): one per function whose name is valid, one per endpoint without `namespace`. An
/// endpoint's is located at the chain's name (`name_span`), a function's at its name.
fn own_namespaces(
    name: &str,
    label: &str,
    name_span: Range<usize>,
    endpoints: [&Option<RawEndpoint>; 2],
    functions: &[RawFunction<'_>],
) -> Vec<OwnNamespace> {
    let endpoints = endpoints
        .into_iter()
        .flatten()
        .filter(|e| e.namespace.is_none())
        .map(|e| OwnNamespace {
            name: names::netns_name(name, e.role),
            hop: format!("{label}, {} endpoint", e.role),
            span: name_span.clone(),
        });
    let functions = functions
        .iter()
        .filter_map(|f| f.name.as_ref())
        .filter(|f| names::check_function_name(f.get_ref()).is_ok())
        .map(|f| OwnNamespace {
            name: names::netns_name(name, f.get_ref()),
            hop: format!("{label}, function `{}`", f.get_ref()),
            span: f.span(),
        });
    endpoints.chain(functions).collect()
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
