//! How host names written in a function's settings (a WireGuard peer's `endpoint`) become
//! addresses. netfn's commands read chain files with the host's resolver, as `wg` does when it
//! is given a name: `spec::load` (`validate`, `up`, `apply`) looks names up once, when
//! the file is read, and the record keeps the address found beside the name. Parsing text alone
//! (`spec::parse`: unit tests, the fuzzers) looks nothing up, so it never sends a query; nor do
//! `netfn validate --no-lookup` and `netfn graph`, which check a name's form only
//! ([`HostNames::form_only`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

type Lookup = dyn Fn(&str) -> Result<Vec<IpAddr>, String>;

/// Where a name's addresses come from, if anywhere.
#[derive(Clone)]
pub struct HostNames(Source);

#[derive(Clone)]
enum Source {
    /// Names are refused: text parsed alone, where nobody asked for them to be looked up.
    Refused,
    /// Names are taken for their form alone, and counted.
    FormOnly(Rc<Cell<usize>>),
    /// Names are looked up.
    Resolver(Rc<Lookup>),
}

/// What [`HostNames::lookup`] found for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameAnswer {
    /// The name's addresses, in the resolver's order.
    Found(Vec<IpAddr>),
    /// The resolver's reason it found none.
    Failed(String),
    /// Not looked up, on purpose ([`HostNames::form_only`]): the name stands for no address yet.
    Skipped,
    /// Not looked up, and names are not taken here ([`HostNames::unresolved`]).
    Refused,
}

/// How long [`HostNames::system_patient`] keeps trying a name whose lookup failed for now
/// (the resolver's "temporary failure": no DNS server answered yet, at boot say), as `wg`
/// tries again before it gives up.
pub const PATIENCE: Duration = Duration::from_secs(8);

impl HostNames {
    /// The host's resolver (`getaddrinfo`: /etc/hosts, then DNS, as /etc/nsswitch.conf says),
    /// asked once per name.
    pub fn system() -> Self {
        HostNames(Source::Resolver(Rc::new(|host: &str| lookup(host))))
    }

    /// [`HostNames::system`], trying a name again while its lookup fails for now, for as long
    /// as [`PATIENCE`] allows (waits of 0.5, 1, 2 and 4 s); a name that does not exist fails at
    /// once. The patience is spent once: after one name waited it out, the others fail for now
    /// at once (a file with ten names does not wait ten times). Each name is asked once, so
    /// every peer that writes it gets the same answer.
    pub fn system_patient() -> Self {
        let answers: RefCell<HashMap<String, Result<Vec<IpAddr>, String>>> = RefCell::default();
        let spent = Cell::new(false);
        HostNames(Source::Resolver(Rc::new(move |host: &str| {
            if let Some(known) = answers.borrow().get(host) {
                return known.clone();
            }
            let began = Instant::now();
            let mut wait = Duration::from_millis(500);
            let found = loop {
                match lookup(host) {
                    Err(why)
                        if is_temporary(&why)
                            && !spent.get()
                            && began.elapsed() + wait <= PATIENCE =>
                    {
                        std::thread::sleep(wait);
                        wait *= 2;
                    }
                    Err(why) if is_temporary(&why) && !spent.get() => {
                        spent.set(true);
                        break Err(format!(
                            "{why}; tried for {:.1} s",
                            began.elapsed().as_secs_f64()
                        ));
                    }
                    done => break done,
                }
            };
            answers.borrow_mut().insert(host.to_string(), found.clone());
            found
        })))
    }

    /// No lookups: a name is reported as one that was not looked up.
    pub fn unresolved() -> Self {
        HostNames(Source::Refused)
    }

    /// No lookups, and a well-formed name is taken as it is, for an address nobody knows yet
    /// (`netfn validate --no-lookup`, say, in a pipeline with no DNS); [`HostNames::skipped`]
    /// counts them.
    pub fn form_only() -> Self {
        HostNames(Source::FormOnly(Rc::default()))
    }

    /// Names answered by `lookup` (a table in a unit test).
    pub fn from_fn(lookup: impl Fn(&str) -> Result<Vec<IpAddr>, String> + 'static) -> Self {
        HostNames(Source::Resolver(Rc::new(lookup)))
    }

    /// What the resolver says of `host`, or why it was not asked.
    pub fn lookup(&self, host: &str) -> NameAnswer {
        match &self.0 {
            Source::Refused => NameAnswer::Refused,
            Source::FormOnly(skipped) => {
                skipped.set(skipped.get() + 1);
                NameAnswer::Skipped
            }
            Source::Resolver(lookup) => match lookup(host) {
                Ok(found) => NameAnswer::Found(found),
                Err(why) => NameAnswer::Failed(why),
            },
        }
    }

    /// How many names [`HostNames::form_only`] took without looking them up (a name written
    /// twice counts twice); 0 for the others.
    pub fn skipped(&self) -> usize {
        match &self.0 {
            Source::FormOnly(skipped) => skipped.get(),
            Source::Refused | Source::Resolver(_) => 0,
        }
    }
}

/// One `getaddrinfo` of `host`: its addresses, or the resolver's reason.
fn lookup(host: &str) -> Result<Vec<IpAddr>, String> {
    (host, 0)
        .to_socket_addrs()
        .map(|found| found.map(|a| a.ip()).collect())
        .map_err(|e| {
            // std says what failed before getaddrinfo's reason; the caller says that.
            let e = e.to_string();
            e.strip_prefix("failed to lookup address information: ")
                .map_or_else(|| e.clone(), str::to_string)
        })
}

/// Whether the resolver's reason is its "try again later" (`EAI_AGAIN`: no DNS server
/// answered). std gives only the text, `gai_strerror`'s, which is glibc's English one: a Rust
/// program never calls `setlocale`, so it runs in the C locale.
pub fn is_temporary(why: &str) -> bool {
    why.contains("Temporary failure in name resolution")
}

impl fmt::Debug for HostNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Source::Resolver(_) => "HostNames(looked up)",
            Source::FormOnly(_) => "HostNames(form only)",
            Source::Refused => "HostNames(not looked up)",
        })
    }
}

/// Whether `text` has the form of a host name: RFC 1123 labels of letters, digits and inner
/// hyphens (a final dot allowed), the last one starting with a letter as top-level domains do,
/// so that no address, nor one mistyped (`10.0.0.1O`), reads as a name.
pub fn is_host_name(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    !name.is_empty()
        && name.len() <= 253
        && name
            .rsplit('.')
            .next()
            .is_some_and(|last| last.starts_with(|c: char| c.is_ascii_alphabetic()))
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
            "10.0.0.1.example",
            &["a"; 127].join("."),
        ] {
            assert!(is_host_name(name), "{name}");
        }
        for not in [
            "",
            ".",
            "10.0.0.1",
            "10.0.0.1.",
            "10.0.0.1O",
            "0xa000001",
            "vpn.example.2com",
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
    fn only_the_resolvers_try_again_later_is_temporary() {
        assert!(is_temporary("Temporary failure in name resolution"));
        assert!(!is_temporary("Name or service not known"));
        assert!(!is_temporary("No address associated with hostname"));
    }

    #[test]
    fn unresolved_names_are_not_looked_up() {
        let refused = HostNames::unresolved();
        assert_eq!(refused.lookup("localhost"), NameAnswer::Refused);
        assert_eq!(refused.skipped(), 0);
        let form_only = HostNames::form_only();
        assert_eq!(form_only.lookup("localhost"), NameAnswer::Skipped);
        assert_eq!(form_only.lookup("peer.test"), NameAnswer::Skipped);
        assert_eq!(form_only.skipped(), 2);
        // A clone counts into the same total (the checker hands clones to the kinds).
        assert_eq!(form_only.clone().lookup("peer.test"), NameAnswer::Skipped);
        assert_eq!(form_only.skipped(), 3);
        let table = HostNames::from_fn(|h| match h {
            "peer.test" => Ok(vec![IpAddr::from([10, 1, 0, 2])]),
            _ => Err("Name or service not known".into()),
        });
        assert_eq!(
            table.lookup("peer.test"),
            NameAnswer::Found(vec![IpAddr::from([10, 1, 0, 2])])
        );
        assert!(matches!(table.lookup("other.test"), NameAnswer::Failed(_)));
        assert_eq!(table.skipped(), 0);
    }
}
