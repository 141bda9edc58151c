//! How host names written in a function's settings (a WireGuard peer's `endpoint`) become
//! addresses. netfn's commands read chain files with the host's resolver, as `wg` does when it
//! is given a name: `spec::load` (`validate`, `up`, `apply`) looks names up once, when the file
//! is read, and the record keeps the address found beside the name. Parsing text alone
//! (`spec::parse`: unit tests, the fuzzers) looks nothing up, so it never sends a query.

use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::rc::Rc;

type Lookup = dyn Fn(&str) -> Result<Vec<IpAddr>, String>;

/// Where a name's addresses come from, if anywhere.
#[derive(Clone)]
pub struct HostNames(Option<Rc<Lookup>>);

impl HostNames {
    /// The host's resolver (`getaddrinfo`: /etc/hosts, then DNS, as /etc/nsswitch.conf says).
    pub fn system() -> Self {
        HostNames(Some(Rc::new(|host: &str| {
            (host, 0)
                .to_socket_addrs()
                .map(|found| found.map(|a| a.ip()).collect())
                .map_err(|e| e.to_string())
        })))
    }

    /// No lookups: a name is reported as one that was not looked up.
    pub fn unresolved() -> Self {
        HostNames(None)
    }

    /// Names answered by `lookup` (a table in a unit test).
    pub fn from_fn(lookup: impl Fn(&str) -> Result<Vec<IpAddr>, String> + 'static) -> Self {
        HostNames(Some(Rc::new(lookup)))
    }

    /// The addresses of `host` in the resolver's order, the resolver's error, or `None` when
    /// names are not looked up here.
    pub fn lookup(&self, host: &str) -> Option<Result<Vec<IpAddr>, String>> {
        self.0.as_ref().map(|lookup| lookup(host))
    }
}

impl fmt::Debug for HostNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "HostNames(looked up)",
            None => "HostNames(not looked up)",
        })
    }
}

/// Whether `text` has the form of a host name (RFC 1123 labels of letters, digits and inner
/// hyphens, a final dot allowed) with a letter in it, so that no address reads as one.
pub fn is_host_name(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    !name.is_empty()
        && name.len() <= 253
        && name.chars().any(|c| c.is_ascii_alphabetic())
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_have_the_form_of_labels_with_a_letter() {
        for name in [
            "vpn.example.com",
            "vpn.example.com.",
            "localhost",
            "a-1.b2",
            "1a.example",
            &["a"; 127].join("."),
        ] {
            assert!(is_host_name(name), "{name}");
        }
        for not in [
            "",
            ".",
            "10.0.0.1",
            "10.0.0.1.",
            "-a.example",
            "a-.example",
            "a..example",
            "a_b.example",
            "[::1]",
            "fd00::1",
            &"a".repeat(64),
            &["a"; 128].join("."),
        ] {
            assert!(!is_host_name(not), "{not}");
        }
    }

    #[test]
    fn unresolved_names_are_not_looked_up() {
        assert!(HostNames::unresolved().lookup("localhost").is_none());
        let table = HostNames::from_fn(|h| match h {
            "peer.test" => Ok(vec![IpAddr::from([10, 1, 0, 2])]),
            _ => Err("Name or service not known".into()),
        });
        assert_eq!(
            table.lookup("peer.test"),
            Some(Ok(vec![IpAddr::from([10, 1, 0, 2])]))
        );
        assert!(matches!(table.lookup("other.test"), Some(Err(_))));
    }
}
