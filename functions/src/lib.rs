//! The function kinds netfn knows. Each kind lives in its own module; `registry()` is the one
//! place that lists them.

mod address;
mod conntrack;
pub mod firewall;
mod forward;
pub mod lb;
mod maps;
#[cfg(test)]
mod test_support;
pub mod wireguard;

use netfn_core::function::Registry;

/// Every function kind of this build.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(forward::Forward);
    r.register(firewall::Firewall);
    r.register(lb::LoadBalancer);
    r.register(wireguard::WireGuard);
    r
}

#[cfg(test)]
mod tests {
    use super::registry;

    /// Every example chain file is valid with the kinds of this build.
    #[test]
    fn every_example_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut parsed = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("examples directory") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                match netfn_core::spec::load(&path, &registry()) {
                    Ok(file) => parsed.push(file),
                    Err(e) => panic!("{}: {e}", path.display()),
                }
            }
        }
        parsed.sort_by(|a, b| a.path.cmp(&b.path));
        let names: Vec<String> = parsed
            .iter()
            .filter_map(|f| f.path.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        for wanted in [
            "existing-namespaces.toml",
            "minimal.toml",
            "three-hops.toml",
            "two-chains.toml",
        ] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{wanted} missing: {names:?}"
            );
        }
        let two = parsed
            .iter()
            .find(|f| f.path.ends_with("two-chains.toml"))
            .expect("two-chains.toml");
        assert_eq!(two.chains.len(), 2);
        assert_eq!(two.chains[0].fastpath, netfn_core::spec::FastPath::Tc);
        let three = parsed
            .iter()
            .find(|f| f.path.ends_with("three-hops.toml"))
            .expect("three-hops.toml");
        assert_eq!(three.chains[0].functions.len(), 3);
        let existing = parsed
            .iter()
            .find(|f| f.path.ends_with("existing-namespaces.toml"))
            .expect("existing-namespaces.toml");
        assert!(existing.chains[0].ingress.namespace.is_some());
        assert!(existing.chains[0].egress.namespace.is_some());
    }
}
