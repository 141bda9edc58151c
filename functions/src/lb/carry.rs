//! Which of the ways back the live instance carries for backends that had already left it
//! (services with no number in its reverse map, [`NO_BACKEND`]) a settings change must keep:
//! those of a flow the connection table ([`LB_FLOWS_MAP`], kept across changes) still holds.
//!
//! Why the connection table and not a clock: a flow's timeouts are idle timeouts, so a flow of
//! a removed backend may run for days; a removal time older than the longest timeout says
//! nothing about it. The table says exactly which flows may still be answered. Reading it costs
//! one map read per set (a 1 Mi-flow table: 262,144; 0.44 s in a debug build on the 2-core
//! dev VM, apply 0.53 s against 0.08 s without), so it is read only when the live instance
//! carries such ways back (an apply after one that removed a backend, and each apply while a
//! removed backend's flows run), and stops once every carried key is found.
//!
//! Why no race: a backend that has left every table of the live instance gets no new flow (only
//! a table lookup balances one), so the flows found here can only end, never appear. A backend
//! this change removes still has its number in the live instance (it may be balancing new flows
//! to it until the switch): its way back is always kept, once, and judged at the next change.

use std::collections::HashSet;
use std::path::Path;

use aya::maps::{Array, MapData};
use netfn_common::lb::{
    BackendKey, LB_CONF_MAP, LB_FLOWS_MAP, LbConf, LbFlow, LbFlowSet, NO_BACKEND, REVERSE_SERVICES,
    Reverse, VipPort,
};

use crate::maps::{map, monotonic_ns};

/// A backend and one service it left: what a carried way back is kept for.
pub type Carried = (BackendKey, VipPort);

/// The services each live entry carries with no number (left at an earlier change).
pub fn carried(live: &[(BackendKey, Reverse)]) -> HashSet<Carried> {
    let mut out = HashSet::new();
    for (key, r) in live {
        let count = (r.count as usize).min(REVERSE_SERVICES);
        for (service, number) in r.services[..count].iter().zip(&r.numbers[..count]) {
            if *number == NO_BACKEND {
                out.insert((*key, *service));
            }
        }
    }
    out
}

/// Of `wanted`, those a flow in the connection table under `dir` may still need, judged by
/// the longer of the live instance's timeouts and `new`'s (the new instance's: a flow the
/// old ones let go may live on under longer ones). `None` when the table, the live settings or
/// the clock cannot be read: the caller then keeps every way back, as before.
pub fn still_needed(
    dir: &Path,
    wanted: &HashSet<Carried>,
    new: &LbConf,
) -> Option<HashSet<Carried>> {
    if wanted.is_empty() {
        return Some(HashSet::new());
    }
    let live_conf: Array<MapData, LbConf> =
        Array::try_from(map(&dir.join(LB_CONF_MAP)).ok()?).ok()?;
    let conf = longest(&live_conf.get(&0, 0).ok()?, new);
    let table: Array<MapData, LbFlowSet> =
        Array::try_from(map(&dir.join(LB_FLOWS_MAP)).ok()?).ok()?;
    let now = monotonic_ns().ok()?;
    let mut found = HashSet::new();
    for i in 0..table.len() {
        // A set that cannot be read may hold a flow: keep everything.
        let set = table.get(&i, 0).ok()?;
        for flow in &set.flows {
            if may_need(flow, &conf, now) {
                let key = of(flow);
                if wanted.contains(&key) {
                    found.insert(key);
                }
            }
        }
        if found.len() == wanted.len() {
            break;
        }
    }
    Some(found)
}

/// Whether slot `flow` may be a flow whose answers still come: any slot in use and not idle
/// past its timeout. A torn slot counts too (the stage writes a flow's new number and then its
/// check: read in between, a live flow looks torn); at worst a way back stays one change more.
pub fn may_need(flow: &LbFlow, conf: &LbConf, now: u64) -> bool {
    flow.proto != 0 && !flow.ended(conf, now)
}

/// The backend and service of a slot.
fn of(flow: &LbFlow) -> Carried {
    (flow.backend_key(), flow.service())
}

/// Each timeout the longer of `a`'s and `b`'s.
pub fn longest(a: &LbConf, b: &LbConf) -> LbConf {
    LbConf {
        tcp_syn_s: a.tcp_syn_s.max(b.tcp_syn_s),
        tcp_ns: a.tcp_ns.max(b.tcp_ns),
        tcp_half_closed_ns: a.tcp_half_closed_ns.max(b.tcp_half_closed_ns),
        tcp_closing_ns: a.tcp_closing_ns.max(b.tcp_closing_ns),
        udp_ns: a.udp_ns.max(b.udp_ns),
        ..*b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netfn_common::lb::{LB_CT_CLOSING, LB_CT_OPEN};

    fn conf(tcp: u64, closing: u64, udp: u64) -> LbConf {
        LbConf {
            tcp_ns: tcp,
            tcp_half_closed_ns: tcp,
            tcp_closing_ns: closing,
            udp_ns: udp,
            ..LbConf::default()
        }
    }

    fn flow(proto: u8, state: u8, last_seen_ns: u64) -> LbFlow {
        let mut f = LbFlow {
            client: [1, 0, 0, 0],
            vip: [2, 0, 0, 0],
            addr: [3, 0, 0, 0],
            proto,
            state,
            family: 4,
            last_seen_ns,
            ..LbFlow::default()
        };
        f.check = f.identity_check();
        f
    }

    #[test]
    fn a_slot_needs_its_way_back_while_in_use_and_not_idle_past_its_timeout() {
        let c = conf(100, 10, 50);
        assert!(!may_need(&LbFlow::default(), &c, 0), "a free slot");
        assert!(may_need(&flow(6, LB_CT_OPEN, 1000), &c, 1100));
        assert!(
            !may_need(&flow(6, LB_CT_OPEN, 1000), &c, 1101),
            "idle past tcp"
        );
        assert!(!may_need(&flow(6, LB_CT_CLOSING, 1000), &c, 1011), "closed");
        assert!(
            !may_need(&flow(17, LB_CT_OPEN, 1000), &c, 1051),
            "idle past udp"
        );
        // Torn (read between the stage's writes of a new number and its check): counted.
        let mut torn = flow(6, LB_CT_OPEN, 1000);
        torn.backend = 7;
        assert!(!torn.is_whole());
        assert!(may_need(&torn, &c, 1050));
    }

    #[test]
    fn the_longer_timeouts_of_the_two_instances_judge() {
        let l = longest(&conf(100, 10, 50), &conf(20, 30, 40));
        assert_eq!(
            (l.tcp_ns, l.tcp_half_closed_ns, l.tcp_closing_ns, l.udp_ns),
            (100, 100, 30, 50)
        );
        // A flow the old instance let go, alive under the new one's longer timeout.
        let f = flow(6, LB_CT_CLOSING, 1000);
        assert!(!may_need(&f, &conf(100, 10, 50), 1020));
        assert!(may_need(&f, &l, 1020));
    }

    #[test]
    fn carried_are_the_services_a_live_entry_holds_with_no_number() {
        let key = |a| BackendKey {
            addr: [a, 0, 0, 0],
            port: 80,
            proto: 6,
            family: 4,
        };
        let to = |v| VipPort {
            vip: [v, 0, 0, 0],
            port: 80,
            _pad: 0,
        };
        let mut r = Reverse {
            count: 2,
            ..Reverse::default()
        };
        r.services[..2].copy_from_slice(&[to(10), to(11)]);
        r.numbers[..2].copy_from_slice(&[0, NO_BACKEND]);
        // A slot past `count` is not a service.
        r.services[2] = to(12);
        r.numbers[2] = NO_BACKEND;
        let c = carried(&[(key(1), r)]);
        assert_eq!(c, HashSet::from([(key(1), to(11))]));
        // A flow's slot names its backend and service as the reverse map does.
        let mut f = flow(6, LB_CT_OPEN, 0);
        f.addr = key(1).addr;
        f.port = 80;
        f.vip = to(11).vip;
        f.vport = 80;
        assert_eq!(of(&f), (key(1), to(11)));
    }
}
