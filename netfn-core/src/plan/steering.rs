//! Kernel-mode steering during a live apply: per-interface route tables that keep a packet on
//! the links it travels on while routes switch. Pure data; [`crate::kernel::objects`] installs it.

use ipnet::Ipv4Net;

use super::{ChainPlan, LinkEnd, RoutePlan};

/// Kernel mode, during a live apply: the routes that steer a function's packets by the interface
/// they arrived on. Packets from the ingress side (arriving on the function's `in` interface) are
/// routed by a table of their own holding the route toward egress, packets from the egress side
/// by one holding the route toward ingress; the table id is the arriving interface's index
/// (unique in the chain), and a rule `iif INTERFACE lookup TABLE` selects it. While the steering
/// is in place a packet's path follows the links it travels on: one already on the old links
/// stays on them to the end, and one that takes a switched route takes the new path all the way,
/// never half of each (so a reorder cannot skip the function that moves). Once the old links are
/// gone the main table routes the same way and the steering is removed: custom rules cost on
/// every packet (a rule walk, and a second lookup to validate the source). (Where a side faces an endpoint's subnet directly, there is no table:
/// the main table's connected route applies.) Empty for endpoints and for functions that do not
/// forward (tc/xdp mode).
pub fn steering_routes(plan: &ChainPlan, hop: usize) -> Vec<(&LinkEnd, RoutePlan)> {
    let Some(h) = plan.hops.get(hop).filter(|h| h.forwarding) else {
        return Vec::new();
    };
    let (ingress_net, egress_net) = plan.endpoint_subnets();
    let route_to = |net: Ipv4Net| h.routes.iter().find(|r| r.destination == net).cloned();
    let inn = hop
        .checked_sub(1)
        .and_then(|l| plan.links.get(l))
        .map(|l| (&l.inn, route_to(egress_net)));
    let out = plan.links.get(hop).map(|l| (&l.out, route_to(ingress_net)));
    inn.into_iter()
        .chain(out)
        .filter_map(|(end, route)| Some((end, route?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_specs::{a, tc_chain as spec};
    use crate::plan::{ifindex, plan_chain};
    use crate::spec::FastPath;

    #[test]
    fn kernel_mode_steers_each_side_by_its_own_table() {
        let mut s = spec(3, None);
        s.fastpath = FastPath::Kernel;
        let plan = plan_chain(&s);
        // fn2: from ingress (arriving on nf-in) toward egress via fn3; back via fn1.
        let routes = steering_routes(&plan, 2);
        let shape: Vec<(u32, Ipv4Net, std::net::Ipv4Addr)> = routes
            .iter()
            .map(|(end, r)| (end.ifindex, r.destination, r.gateway))
            .collect();
        let (ingress, egress) = plan.endpoint_subnets();
        assert_eq!(
            shape,
            vec![
                (ifindex(1, true), egress, a("100.64.0.3")),
                (ifindex(2, false), ingress, a("100.64.0.0")),
            ]
        );
        // fn1's reverse side faces the ingress subnet directly: no table of its own.
        let first: Vec<u32> = steering_routes(&plan, 1)
            .iter()
            .map(|(e, _)| e.ifindex)
            .collect();
        assert_eq!(first, vec![ifindex(0, true)]);
        // Endpoints, and functions in tc mode, are not steered.
        assert!(steering_routes(&plan, 0).is_empty());
        assert!(steering_routes(&plan_chain(&spec(3, None)), 2).is_empty());
    }
}
