//! The function kinds netfn knows. Each kind lives in its own module; `registry()` is the one
//! place that lists them.

pub mod firewall;
mod forward;

use netfn_core::function::Registry;

/// Every function kind of this build.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(forward::Forward);
    r.register(firewall::Firewall);
    r
}
