//! Plans a change to a running chain (`netfn apply`) so that what stays keeps its identity:
//! a link between the same two hops keeps its interface names, indexes, MACs and addresses, and
//! only new links get new ones. Pure data, no kernel.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::plan::diff::{self, Change};
use crate::plan::names;
use crate::plan::{self, ChainPlan, HopPlan, HopRole, LinkEnd, LinkPlan};
use crate::spec::{ChainSpec, FastPath};

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
    #[error(
        "chain `{chain}`: the fast path's maps were sized at `up` for {capacity} {what}, and this apply needs more; run `netfn down {chain}` then `netfn up` to size them for the new chain"
    )]
    Capacity {
        chain: String,
        what: &'static str,
        capacity: u32,
    },
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
    assign_slots(old, &mut hops)?;
    let mut indexes = IndexAllocator::new(old);
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
                let ifindex = indexes.next_pair()?;
                let end = |hop: usize, ifindex: u32, tag: char, addr: Ipv4Addr| LinkEnd {
                    hop,
                    ifname: format!("nf-{tag}{:x}", ifindex & 0xffff),
                    ifindex,
                    mac: plan::mac(&spec.name, ifindex),
                    address: Ipv4Net::new(addr, 31).unwrap_or_else(|_| Ipv4Net::from(addr)),
                };
                LinkPlan {
                    index: l,
                    out: end(l, ifindex, 'o', a),
                    inn: end(l + 1, ifindex + 1, 'i', b),
                }
            }
        };
        links.push(link);
    }
    if old.fastpath == FastPath::Kernel {
        retire_replaced_interfaces(old, &mut hops, &links);
    }
    plan::function_routes(
        &mut hops,
        &links,
        spec.ingress.address.trunc(),
        spec.egress.address.trunc(),
        spec.transit,
    );
    Ok(Replan {
        plan: ChainPlan {
            chain: fresh.chain,
            fastpath: fresh.fastpath,
            hops,
            links,
            capacity: old.capacity(),
        },
        changes,
    })
}

/// Gives every function of the new plan its forwarder slot: a function the old plan has keeps
/// its own (its counters continue), a new one takes the lowest slot no old function holds (the
/// counters of a removed function's slot are zeroed before the slot is used again).
fn assign_slots(old: &ChainPlan, hops: &mut [HopPlan]) -> Result<(), ReplanError> {
    let held: BTreeSet<u32> = (0..old.hops.len())
        .filter_map(|h| old.function_slot(h))
        .collect();
    let capacity = old.capacity().functions;
    let mut free = (0..capacity).filter(|s| !held.contains(s));
    for hop in hops.iter_mut() {
        if !matches!(hop.role, HopRole::Function { .. }) {
            continue;
        }
        hop.slot = match old.hop(&hop.name) {
            Some((h, _)) => old.function_slot(h),
            None => Some(free.next().ok_or_else(|| ReplanError::Capacity {
                chain: old.chain.clone(),
                what: "functions",
                capacity,
            })?),
        };
    }
    Ok(())
}

/// Interface indexes for new links.
///
/// Kernel mode never reuses an index, not even a retired one: the per-interface counters of
/// retired interfaces are still in the pinned map and still part of their function's totals.
/// The fast path counts per function instead and keeps a table indexed by interface, so there a
/// new link takes the lowest pair of rows that no interface of the old plan holds: indexes stay
/// within the table however many applies a chain sees.
struct IndexAllocator {
    chain: String,
    /// Fast path: the table's rows, and the rows the old plan's interfaces hold.
    table: Option<(u32, BTreeSet<u32>)>,
    next: u32,
}

impl IndexAllocator {
    fn new(old: &ChainPlan) -> Self {
        let in_use = old
            .links
            .iter()
            .flat_map(|l| [l.out.ifindex, l.inn.ifindex]);
        if old.fastpath == FastPath::Kernel {
            let retired = old
                .hops
                .iter()
                .flat_map(|h| h.retired_in.iter().chain(&h.retired_out).copied());
            let next = in_use.chain(retired).max().unwrap_or(0) + 1;
            return IndexAllocator {
                chain: old.chain.clone(),
                table: None,
                next,
            };
        }
        let rows = in_use.filter_map(plan::interface_slot).collect();
        IndexAllocator {
            chain: old.chain.clone(),
            table: Some((old.capacity().interfaces, rows)),
            next: 0,
        }
    }

    /// The index of the `out` end of a new link (the `in` end has the next one).
    fn next_pair(&mut self) -> Result<u32, ReplanError> {
        let Some((rows, held)) = &mut self.table else {
            let index = self.next;
            self.next += 2;
            return Ok(index);
        };
        let row = (0..rows.saturating_sub(1))
            .step_by(2)
            .find(|r| !held.contains(r) && !held.contains(&(r + 1)))
            .ok_or_else(|| ReplanError::Capacity {
                chain: self.chain.clone(),
                what: "interfaces",
                capacity: *rows,
            })?;
        held.extend([row, row + 1]);
        Ok(names::IFINDEX_BASE + row)
    }
}

/// Carries each kept hop's retired interfaces over, and retires the interfaces a change replaced.
fn retire_replaced_interfaces(old: &ChainPlan, hops: &mut [HopPlan], links: &[LinkPlan]) {
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

    fn tc(names: &[&str]) -> ChainSpec {
        test_specs::chain("c", FastPath::Tc, names, None)
    }

    #[test]
    fn fast_path_reuses_free_table_rows_and_keeps_function_slots() {
        let old = plan::plan_chain(&tc(&["a", "b", "c"]));
        let slot = |p: &ChainPlan, name: &str| p.function_slot(p.hop(name).unwrap().0);
        let next = replan(&old, &tc(&["a", "x", "b", "c"])).unwrap().plan;
        // Kept functions keep their slots wherever they are now; x takes the first free one.
        assert_eq!(
            ["a", "b", "c", "x"].map(|n| slot(&next, n)),
            [Some(0), Some(1), Some(2), Some(3)]
        );
        // The old plan holds rows 0..8 (four links): the two new links take rows 8..12.
        let rows = |p: &ChainPlan| -> Vec<u32> {
            p.links
                .iter()
                .map(|l| plan::interface_slot(l.out.ifindex).unwrap())
                .collect()
        };
        assert_eq!(rows(&next), vec![0, 8, 10, 4, 6]);
        assert!(next.hops.iter().all(|h| h.retired_in.is_empty()));
        assert_eq!(next.capacity, old.capacity);

        // Removing x frees slot 3 and rows 8..12; adding y then reuses both (the rows a-b had,
        // 2..4, are free again too, and come first).
        let back = replan(&next, &tc(&["a", "b", "c"])).unwrap().plan;
        assert_eq!(rows(&back), vec![0, 2, 4, 6]);
        let again = replan(&back, &tc(&["a", "b", "y", "c"])).unwrap().plan;
        assert_eq!(slot(&again, "y"), Some(3));
        assert_eq!(rows(&again), vec![0, 2, 8, 10, 6]);
    }

    #[test]
    fn fast_path_apply_beyond_the_maps_is_refused_with_the_way_out() {
        let names: Vec<String> = (0..16).map(|i| format!("f{i}")).collect();
        let mut list: Vec<&str> = names.iter().map(String::as_str).collect();
        let old = plan::plan_chain(&tc(&list[..2]));
        // 16 function slots: 2 held, 14 more fit.
        let mut grown = list[..1].to_vec();
        grown.extend(&list[2..16]);
        grown.push(list[1]);
        assert!(replan(&old, &tc(&grown)).is_ok());
        list.push("one-too-many");
        let mut too_many = list[..1].to_vec();
        too_many.extend(&list[2..]);
        too_many.push(list[1]);
        let err = replan(&old, &tc(&too_many)).unwrap_err();
        assert!(matches!(
            err,
            ReplanError::Capacity {
                what: "functions",
                capacity: 16,
                ..
            }
        ));
        assert!(
            err.to_string()
                .contains("run `netfn down c` then `netfn up`")
        );
    }
}
