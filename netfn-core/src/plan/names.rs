//! Names of the kernel objects netfn creates. Every object carries the `nf` prefix, and names are
//! deterministic so that a crashed `up` can be finished by `down` from the recorded plan alone.

use std::path::PathBuf;

/// The prefix of every namespace and interface netfn creates.
pub const PREFIX: &str = "nf";
/// Linux limits interface names to 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// A chain name becomes the interface `nf-<chain>` inside an existing endpoint namespace.
pub const CHAIN_NAME_MAX: usize = IFNAME_MAX - PREFIX.len() - 1;
/// Names reserved for the endpoints in `status` and `exec`.
pub const RESERVED_FUNCTION_NAMES: [&str; 2] = ["ingress", "egress"];
/// The names `up` gives a function's interfaces (and an endpoint's, in a namespace netfn
/// creates): `nf-in` faces the ingress side, `nf-out` the egress side. A link that a later
/// `netfn apply` adds gets fresh names instead ([`crate::plan::replan`]: `nf-i<hex>` /
/// `nf-o<hex>`), so read an interface's name from the plan, never from these constants.
pub const UP_IF_IN: &str = "nf-in";
pub const UP_IF_OUT: &str = "nf-out";
/// First interface index netfn asks for in its own namespaces ("NF" in the high bytes). Indexes
/// are unique within a chain, so eBPF maps can be keyed by ifindex.
pub const IFINDEX_BASE: u32 = 0x4e46_0000;

/// Where iproute2 (and netfn) keep named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// netfn's state directory.
pub const STATE_DIR: &str = "/run/netfn";
/// The default UDP port of the host agent's chain probes (bound in a chain's egress endpoint
/// namespace only); kinds that filter let the probe through on it.
pub const DEFAULT_PROBE_PORT: u16 = 9848;
/// Where pinned eBPF objects live.
pub const BPFFS_DIR: &str = "/sys/fs/bpf/netfn";

/// Why a name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes long; at most {max} fit")]
    TooLong { len: usize, max: usize },
    #[error("contains {0:?}; use letters, digits, '-' and '_'")]
    BadChar(char),
    #[error("must start with a letter or a digit")]
    BadStart,
    #[error("is reserved for the chain's endpoints")]
    Reserved,
}

/// Checks a chain or function name: it must be usable inside interface names and paths.
pub fn check_name(name: &str, max: usize) -> Result<(), NameError> {
    let first = name.chars().next().ok_or(NameError::Empty)?;
    if name.len() > max {
        return Err(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(NameError::BadChar(c));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart);
    }
    Ok(())
}

pub fn check_function_name(name: &str) -> Result<(), NameError> {
    check_name(name, IFNAME_MAX)?;
    if RESERVED_FUNCTION_NAMES.contains(&name) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// The namespace of a function, or of an endpoint that netfn creates (`ingress`, `egress`).
pub fn netns_name(chain: &str, hop: &str) -> String {
    format!("{PREFIX}-{chain}-{hop}")
}

/// The interface netfn adds to an existing endpoint namespace.
pub fn endpoint_ifname(chain: &str) -> String {
    format!("{PREFIX}-{chain}")
}

pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_RUN_DIR).join(name)
}

pub fn chain_state_dir() -> PathBuf {
    PathBuf::from(STATE_DIR).join("chains")
}

pub fn chain_bpf_dir(chain: &str) -> PathBuf {
    PathBuf::from(BPFFS_DIR).join(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_become_interface_names_are_refused() {
        assert_eq!(check_name("", 15), Err(NameError::Empty));
        assert_eq!(check_name("fw 1", 15), Err(NameError::BadChar(' ')));
        assert_eq!(check_name("a/b", 15), Err(NameError::BadChar('/')));
        assert_eq!(check_name("-fw", 15), Err(NameError::BadStart));
        assert_eq!(
            check_name("a-very-long-function", 15),
            Err(NameError::TooLong { len: 20, max: 15 })
        );
        assert_eq!(check_function_name("ingress"), Err(NameError::Reserved));
        assert_eq!(check_name("fw_1-a", 15), Ok(()));
        assert!(endpoint_ifname(&"c".repeat(CHAIN_NAME_MAX)).len() <= IFNAME_MAX);
    }
}
