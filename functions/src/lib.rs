//! The function kinds netfn knows. Each kind lives in its own module; `registry()` is the one
//! place that lists them.

mod forward;
// Not registered yet: the kind (config, plan, eBPF module) comes next; its pure core is here.
#[allow(dead_code)]
mod firewall;

use netfn_core::function::Registry;

/// Every function kind of this build.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(forward::Forward);
    r
}
