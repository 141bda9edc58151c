//! Failpoints: the named steps of `up`, `apply` and `down` where a test makes netfn fail on
//! purpose, to prove that a failure at any step leaves a chain whole (as before, as requested,
//! or, for `down`, a record that a second `down` finishes).
//!
//! `NETFN_FAILPOINT=NAME` makes step NAME fail with [`Injected`] as if the kernel or the disk
//! had refused it; `NETFN_FAILPOINT=NAME:crash` aborts the process there instead (no rollback,
//! no destructors: a crash at exactly that step). [`POINTS`] lists every step, so a test can
//! go through all of them (`netfn failpoints` prints them).
//!
//! Only debug builds and builds with the `failpoints` feature read the variable: in a release
//! build [`hit`] is an empty function that always returns `Ok`, and costs nothing.

/// One step that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failpoint {
    pub name: &'static str,
    /// The verb the step belongs to: `up`, `apply` or `down`.
    pub verb: &'static str,
    /// What has happened when it fires.
    pub after: &'static str,
}

const fn point(verb: &'static str, name: &'static str, after: &'static str) -> Failpoint {
    Failpoint { name, verb, after }
}

/// Every failpoint, in the order its verb reaches them.
pub const POINTS: &[Failpoint] = &[
    point(
        "up",
        "up-record",
        "writing the record (phase applying) fails",
    ),
    point("up", "up-namespaces", "the namespaces were created"),
    point("up", "up-links", "the veth pairs were created"),
    point("up", "up-addresses", "addresses and routes were set"),
    point(
        "up",
        "up-ebpf",
        "the counters (kernel) or the forwarder (tc/xdp) were attached, pinned",
    ),
    point(
        "up",
        "up-kinds",
        "the functions' stages, rules and processes were started",
    ),
    point("up", "up-record-up", "writing the record (phase up) fails"),
    point(
        "apply",
        "apply-record",
        "writing the record (phase applying) fails",
    ),
    point(
        "apply",
        "apply-create",
        "the new namespaces and links were created",
    ),
    point(
        "apply",
        "apply-prepare",
        "the new path was prepared (forwarder rows, programs; kernel: steering)",
    ),
    point(
        "apply",
        "apply-kinds",
        "the new functions' stages and rules were started",
    ),
    point("apply", "apply-routes", "the routes were switched"),
    point(
        "apply",
        "apply-switch",
        "the forwarder's entries were switched (tc/xdp; kernel: routes)",
    ),
    point(
        "apply",
        "apply-record-up",
        "writing the record (phase up: the commit) fails",
    ),
    point(
        "apply",
        "apply-remove",
        "removing the old links and namespaces fails (after the commit)",
    ),
    point(
        "down",
        "down-record",
        "writing the record (phase tearing-down) fails",
    ),
    point(
        "down",
        "down-processes",
        "the functions' processes were stopped",
    ),
    point(
        "down",
        "down-objects",
        "removing the namespaces, links and pins fails",
    ),
    point("down", "down-forget", "removing the record fails"),
];

/// The variable that arms a failpoint.
pub const ENV: &str = "NETFN_FAILPOINT";

/// The failure a failpoint injects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failure injected at failpoint `{0}` ({ENV} is set; unset it to run normally)")]
pub struct Injected(pub &'static str);

/// True if this build reads [`ENV`].
pub const ENABLED: bool = cfg!(any(debug_assertions, feature = "failpoints"));

/// Fails if failpoint `name` is armed (see the module's comment); `Ok` in release builds.
#[inline(always)]
pub fn hit(name: &'static str) -> Result<(), Injected> {
    #[cfg(any(debug_assertions, feature = "failpoints"))]
    if let Some(armed) = std::env::var_os(ENV) {
        debug_assert!(
            POINTS.iter().any(|p| p.name == name),
            "unlisted failpoint {name}"
        );
        let armed = armed.to_string_lossy();
        let (point, action) = armed.split_once(':').unwrap_or((&armed, "error"));
        if point == name {
            if action == "crash" {
                eprintln!("netfn: failpoint `{name}`: crashing here ({ENV})");
                std::process::abort();
            }
            return Err(Injected(name));
        }
    }
    let _ = name;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_start_with_their_verb() {
        let mut names: Vec<&str> = POINTS.iter().map(|p| p.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), POINTS.len());
        for p in POINTS {
            assert!(p.name.starts_with(&format!("{}-", p.verb)), "{p:?}");
        }
    }
}
