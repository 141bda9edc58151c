//! The load balancer the bench measures, as the chain file writes it: one UDP service on the VIP
//! with `n` backends, every backend an address of the range the egress namespace owns; and the
//! static neighbour entries a kernel-mode chain gets for them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::super::chain::PPS_PORT;

/// Where the bench's clients send: the service's virtual address (never an address of a chain).
pub(super) const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The backends' range inside the egress subnet (10.84.0.0/16): backend `i` is the `i`-th
/// address of 10.84.16.0/20, so 4,096 backends fit. The egress namespace owns the whole range
/// through one `local` route (see `Lab::up`).
pub(super) const BACKEND_NET: &str = "10.84.16.0/20";
const BACKEND_BASE: Ipv4Addr = Ipv4Addr::new(10, 84, 16, 0);
/// Most backends the range holds.
pub(super) const MAX_BACKENDS: usize = 4096;
/// Maglev table entries of the service (the default, written out so the bench measures what
/// its report says whatever the default becomes).
pub(super) const TABLE_SIZE: u32 = 65_537;

/// The address of backend `i` (below [`MAX_BACKENDS`]).
pub(super) fn backend(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i % MAX_BACKENDS).unwrap_or(0);
    Ipv4Addr::from(u32::from(BACKEND_BASE) + i)
}

/// The function's settings (what follows `name = "f1"` in its `[[chain.function]]` table): a
/// load balancer of one UDP service, VIP:PPS_PORT, over `n` backends on the same port.
/// `changed`: the last backend weighs 2 instead of 1 (the swap the bench times: the Maglev
/// table is rebuilt and switched, the backends stay).
pub(super) fn function(n: usize, changed: bool) -> String {
    let mut s = format!(
        "kind = \"load-balancer\"\ntable_size = {TABLE_SIZE}\n\
         conntrack = {{ size = 65536, udp = 2 }}\n\n\
         [[chain.function.service]]\nvip = \"{VIP}\"\nproto = \"udp\"\nport = {PPS_PORT}\n\
         backends = [\n"
    );
    for i in 0..n {
        let weight = if changed && i + 1 == n { 2 } else { 1 };
        let _ = writeln!(
            s,
            "  {{ address = \"{}\", port = {PPS_PORT}, weight = {weight} }},",
            backend(i)
        );
    }
    s.push_str("]\n");
    s
}

/// `ip -batch` lines that give `dev` permanent neighbour entries for the first `n` backends,
/// all at `mac` (the egress endpoint's interface). Kernel mode routes to each backend on the
/// link, and the kernel's neighbour table holds 1,024 resolved entries for the whole machine by
/// default (gc_thresh3): 4,096 backends resolved by ARP would overflow it. Permanent entries
/// do not count toward that limit, and spare the baseline its ARP.
pub(super) fn neighbours(n: usize, mac: [u8; 6], dev: &str) -> String {
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut s = String::new();
    for i in 0..n {
        let _ = writeln!(
            s,
            "neigh replace {} lladdr {mac} dev {dev} nud permanent",
            backend(i)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_fill_the_range() {
        assert_eq!(backend(0), Ipv4Addr::new(10, 84, 16, 0));
        assert_eq!(backend(MAX_BACKENDS - 1), Ipv4Addr::new(10, 84, 31, 255));
    }

    #[test]
    fn the_changed_function_differs_in_one_weight() {
        let (a, b) = (function(16, false), function(16, true));
        assert_eq!(a.matches("weight = 1 }").count(), 16);
        assert_eq!(b.matches("weight = 1 }").count(), 15);
        assert!(b.contains("address = \"10.84.16.15\", port = 9000, weight = 2 }"));
    }
}
