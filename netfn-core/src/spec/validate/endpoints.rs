//! Checks of a chain's endpoints: addresses, gateways, namespaces, and the subnets of a chain
//! against each other and against its transit pool.

use super::*;

impl Checker<'_, '_> {
    pub(super) fn endpoint(&mut self, label: &str, raw: RawEndpoint) -> Option<Endpoint> {
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

    pub(super) fn endpoint_address(
        &mut self,
        label: &str,
        role: &str,
        value: &Str,
    ) -> Option<Ipv4Net> {
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

    pub(super) fn gateway(
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

    pub(super) fn namespace_name(&mut self, label: &str, role: &str, value: &Str) {
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

    pub(super) fn distinct_namespaces(
        &mut self,
        label: &str,
        ingress: &Endpoint,
        egress: &Endpoint,
    ) {
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
    pub(super) fn endpoint_overlap(&mut self, label: &str, endpoints: &[Endpoint]) {
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
    pub(super) fn transit_overlaps(
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
}
