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
fn chain_and_function_names_that_make_one_namespace_are_refused_at_both() {
    // `file` puts the chain's name on line 2 (its value at column 8) and its functions on
    // line 5 (the first name's value at column 22).
    let chain = |name: &str, function: &str, ingress: &str| {
        file(ingress, "address = \"10.2.0.2/24\"")
            .replace("\"edge\"", &format!("\"{name}\""))
            .replace("\"fw1\"", &format!("\"{function}\""))
    };
    let created = "address = \"10.1.0.2/24\"";
    // nf-a-b-c: chain `a`'s function `b-c`, chain `a-b`'s function `c`.
    let text = format!(
        "{}{}",
        chain("a", "b-c", created),
        chain("a-b", "c", created)
    );
    let found = problems(&text);
    assert_eq!(
        found
            .iter()
            .map(|(l, c, m, _)| (*l, *c, m.as_str()))
            .collect::<Vec<_>>(),
        [
            (
                5,
                22,
                "chain `a`, function `b-c`: its namespace `nf-a-b-c` is also the namespace of \
                 chain `a-b`, function `c` (line 10); the second chain to come up would find it \
                 taken"
            ),
            (
                10,
                22,
                "chain `a-b`, function `c`: its namespace `nf-a-b-c` is also the namespace of \
                 chain `a`, function `b-c` (line 5); the second chain to come up would find it \
                 taken"
            ),
        ],
        "{found:#?}"
    );
    assert!(
        found[0]
            .3
            .contains("rename one of the two chains or functions")
    );
    // An endpoint netfn creates, nf-a-b-ingress: said at the chain's name.
    let text = format!(
        "{}{}",
        chain("a", "b-ingress", created),
        chain("a-b", "c", created)
    );
    let at: Vec<(usize, usize)> = problems(&text).iter().map(|p| (p.0, p.1)).collect();
    assert_eq!(at, [(5, 22), (7, 8)], "{text}");
    // The operator's own namespace for that endpoint: nothing is created, nothing collides.
    let existing = "address = \"10.1.0.2/24\", namespace = \"client\"";
    let text = format!(
        "{}{}",
        chain("a", "b-ingress", created),
        chain("a-b", "c", existing)
    );
    assert_eq!(problems(&text), []);
    // `_` and `-` are different characters in a namespace name.
    let text = format!(
        "{}{}",
        chain("a_b", "c", created),
        chain("a-b", "c", created)
    );
    assert_eq!(problems(&text), []);
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
                "chain `edge`, function `c1`: `limit` must be greater than 0, not -3".to_string()
            ),
            (
                9,
                1,
                "chain `edge`, function `c2`: [[chain.function]] has no `limit`".to_string()
            ),
            (
                15,
                1,
                "chain `edge`, function `f`: unknown key `limit` in [[chain.function]]".to_string()
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
            format!("chain `edge`: ingress namespace `{long}` is 256 bytes long; at most 255 fit"),
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

/// A chain of `n` forward functions.
fn chain_of(n: usize) -> String {
    let mut text = String::from(
        "[[chain]]\nname = \"long\"\ntransit = \"100.64.0.0/16\"\n\n[chain.ingress]\naddress = \
         \"10.1.0.2/24\"\n\n[chain.egress]\naddress = \"10.2.0.2/24\"\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "\n[[chain.function]]\nname = \"f{i}\"\nkind = \"forward\"\n"
        ));
    }
    text
}

#[test]
fn a_chain_longer_than_a_ttl_of_64_can_cross_is_valid_but_warned_about() {
    let registry = super::test_support::registry();
    let parse = |n| crate::spec::parse(std::path::Path::new("t.toml"), &chain_of(n), &registry);
    let short = parse(63).expect("63 functions are valid");
    assert!(short.warnings.is_empty(), "{}", short.warnings);
    let long = parse(64).expect("64 functions are valid");
    let warnings = long.warnings.to_string();
    assert!(
        warnings.contains("64 functions each decrement the TTL")
            && warnings.contains("net.ipv4.ip_default_ttl"),
        "{warnings}"
    );
}
