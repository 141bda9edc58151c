//! Plans a change to a running chain (`netfn apply`) so that what stays keeps its identity:
//! a link between the same two hops keeps its interface names, indexes, MACs and addresses, and
//! only new links get new ones. Pure data, no kernel.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::diff::{self, Change};
use crate::plan::{self, ChainPlan, LinkEnd, LinkPlan};
use crate::spec::ChainSpec;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplanError {
    #[error(
        "chain `{chain}`: {what}; a live apply cannot do that: run `netfn down {chain}` then `netfn up`"
    )]
    NeedsRebuild { chain: String, what: String },
    #[error(
        "chain `{chain}`: the transit pool {pool} has no free /31 left for a new link; give the chain a larger `transit`"
    )]
    TransitFull { chain: String, pool: Ipv4Net },
}

/// The new plan of a running chain, and what changes.
#[derive(Debug, Clone)]
pub struct Replan {
    pub plan: ChainPlan,
    pub changes: Vec<Change>,
}

impl Replan {
    /// Links of the new plan that the old one does not have (by interface index).
    pub fn new_links<'a>(&'a self, old: &'a ChainPlan) -> impl Iterator<Item = &'a LinkPlan> {
        let known: BTreeSet<u32> = old.links.iter().map(|l| l.out.ifindex).collect();
        self.plan
            .links
            .iter()
            .filter(move |l| !known.contains(&l.out.ifindex))
    }
}

/// Links of `old` that the new plan no longer has.
pub fn gone_links<'a>(
    old: &'a ChainPlan,
    new: &'a ChainPlan,
) -> impl Iterator<Item = &'a LinkPlan> {
    let kept: BTreeSet<u32> = new.links.iter().map(|l| l.out.ifindex).collect();
    old.links
        .iter()
        .filter(move |l| !kept.contains(&l.out.ifindex))
}

/// Plans `spec` on top of the running `old` plan.
pub fn replan(old: &ChainPlan, spec: &ChainSpec) -> Result<Replan, ReplanError> {
    let fresh = plan::plan_chain(spec);
    let changes = diff::diff(old, &fresh);
    let rebuild = |what: String| ReplanError::NeedsRebuild {
        chain: spec.name.clone(),
        what,
    };
    if let Some(Change::Chain { what }) = changes.iter().find(|c| matches!(c, Change::Chain { .. }))
    {
        return Err(rebuild(what.clone()));
    }
    for c in &changes {
        if let Change::Changed { name, what } = c {
            return Err(rebuild(format!("function {name} changed ({what})")));
        }
    }
    let first = |p: &ChainPlan| p.hops.get(1).map(|h| h.name.clone());
    let last = |p: &ChainPlan| p.hops.iter().rev().nth(1).map(|h| h.name.clone());
    if first(old) != first(&fresh) || last(old) != last(&fresh) {
        return Err(rebuild(
            "the first or last function changes (the functions next to the endpoints stay in a live apply)".into(),
        ));
    }

    let mut hops = fresh.hops.clone();
    // Never reuse an index, not even a retired one: its counters are still in the pinned map.
    let mut next_index = old
        .links
        .iter()
        .map(|l| l.inn.ifindex)
        .chain(
            old.hops
                .iter()
                .flat_map(|h| h.retired_in.iter().chain(&h.retired_out).copied()),
        )
        .max()
        .unwrap_or(0)
        + 1;
    let mut used: BTreeSet<Ipv4Addr> = old
        .links
        .iter()
        .flat_map(|l| [l.out.address.addr(), l.inn.address.addr()])
        .collect();
    let mut links = Vec::with_capacity(hops.len().saturating_sub(1));
    for l in 0..hops.len().saturating_sub(1) {
        let (left, right) = (&hops[l].name, &hops[l + 1].name);
        let existing = old
            .links
            .iter()
            .find(|ol| &old.hops[ol.out.hop].name == left && &old.hops[ol.inn.hop].name == right);
        let link = match existing {
            Some(ol) => {
                let mut link = ol.clone();
                link.index = l;
                link.out.hop = l;
                link.inn.hop = l + 1;
                link
            }
            None => {
                // Interior by construction: the hops next to the endpoints never change here.
                let base = free_pair(spec.transit, &used).ok_or(ReplanError::TransitFull {
                    chain: spec.name.clone(),
                    pool: spec.transit,
                })?;
                let (a, b) = (Ipv4Addr::from(base), Ipv4Addr::from(base + 1));
                used.extend([a, b]);
                let end = |hop: usize, ifindex: u32, tag: char, addr: Ipv4Addr| LinkEnd {
                    hop,
                    ifname: format!("nf-{tag}{:x}", ifindex & 0xffff),
                    ifindex,
                    mac: plan::mac(&spec.name, ifindex),
                    address: Ipv4Net::new(addr, 31).unwrap_or_else(|_| Ipv4Net::from(addr)),
                };
                let link = LinkPlan {
                    index: l,
                    out: end(l, next_index, 'o', a),
                    inn: end(l + 1, next_index + 1, 'i', b),
                };
                next_index += 2;
                link
            }
        };
        links.push(link);
    }
    retire_replaced_interfaces(old, &mut hops, &links);
    plan::function_routes(
        &mut hops,
        &links,
        spec.ingress.address.trunc(),
        spec.egress.address.trunc(),
    );
    Ok(Replan {
        plan: ChainPlan {
            chain: fresh.chain,
            fastpath: fresh.fastpath,
            hops,
            links,
        },
        changes,
    })
}

/// Carries each kept hop's retired interfaces over, and retires the interfaces a change replaced.
fn retire_replaced_interfaces(
    old: &ChainPlan,
    hops: &mut [crate::plan::HopPlan],
    links: &[LinkPlan],
) {
    let sides = |plan_links: &[LinkPlan], h: usize| {
        let inn = h
            .checked_sub(1)
            .and_then(|l| plan_links.get(l))
            .map(|l| l.inn.ifindex);
        let out = plan_links.get(h).map(|l| l.out.ifindex);
        (inn, out)
    };
    for (h, hop) in hops.iter_mut().enumerate() {
        let Some((oh, before)) = old.hop(&hop.name) else {
            continue;
        };
        hop.retired_in = before.retired_in.clone();
        hop.retired_out = before.retired_out.clone();
        let (old_in, old_out) = sides(&old.links, oh);
        let (new_in, new_out) = sides(links, h);
        if let Some(i) = old_in.filter(|i| Some(*i) != new_in) {
            hop.retired_in.push(i);
        }
        if let Some(o) = old_out.filter(|o| Some(*o) != new_out) {
            hop.retired_out.push(o);
        }
    }
}

/// The first /31 of `pool` whose two addresses are both unused.
fn free_pair(pool: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<u32> {
    let start = u32::from(pool.network());
    let end = u32::from(pool.broadcast());
    (start..end)
        .step_by(2)
        .find(|&a| !used.contains(&Ipv4Addr::from(a)) && !used.contains(&Ipv4Addr::from(a + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_specs;
    use crate::spec::FastPath;

    fn spec(names: &[&str]) -> ChainSpec {
        test_specs::chain("c", FastPath::Kernel, names, None)
    }

    #[test]
    fn insert_keeps_untouched_links_and_retires_the_replaced_interfaces() {
        let old = plan::plan_chain(&spec(&["a", "b", "c"]));
        let next = replan(&old, &spec(&["a", "x", "b", "c"])).unwrap();
        let new = &next.plan;
        // ingress-a and b-c links are kept as they were.
        assert_eq!(new.links[0], old.links[0]);
        assert_eq!(new.links[3].out.ifindex, old.links[2].out.ifindex);
        // a's out side and b's in side were replaced: their old interfaces are retired.
        let (_, a) = new.hop("a").unwrap();
        let (_, b) = new.hop("b").unwrap();
        assert_eq!(a.retired_out, vec![old.links[1].out.ifindex]);
        assert_eq!(b.retired_in, vec![old.links[1].inn.ifindex]);
        assert!(a.retired_in.is_empty() && b.retired_out.is_empty());
        // New interfaces never reuse an index.
        let max_old = old.links.iter().map(|l| l.inn.ifindex).max().unwrap();
        assert!(new.links[1].out.ifindex > max_old);

        // Removing x again: the retired lists carry over and grow; indexes keep increasing.
        let back = replan(new, &spec(&["a", "b", "c"])).unwrap().plan;
        let (_, a2) = back.hop("a").unwrap();
        assert_eq!(
            a2.retired_out,
            vec![old.links[1].out.ifindex, new.links[1].out.ifindex]
        );
        let max_new = new.links.iter().map(|l| l.inn.ifindex).max().unwrap();
        assert!(back.links[1].out.ifindex > max_new);
    }
}
