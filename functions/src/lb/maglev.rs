//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights, and a rebuild that moves
//! only the flows a change must move. Pure: no kernel, no clock.
//!
//! A table has a prime number `M` of entries; a flow goes to the backend at `hash % M`. Each
//! backend has a preference order over the entries, a permutation derived from its identity
//! alone (`offset + j × skip mod M`), so it does not depend on the other backends.
//!
//! Every backend is owed a share of the entries in proportion to its weight (its quota; largest
//! remainders make the quotas add up to `M`). A fresh table is filled the Maglev way: backends
//! take turns, each taking the next free entry of its own order, until it has its quota. A
//! rebuild first keeps, in entry order, each entry whose backend is still there, up to that
//! backend's new quota, and fills only the rest the Maglev way. So removing one of N backends
//! moves exactly the flows that were on it, adding one moves its new share (about 1/(N+1)), and
//! a weight change moves only the difference.

use std::collections::HashMap;

/// A table entry without a backend (every weight is 0, or no backend is up).
pub const NONE: u32 = u32::MAX;

/// The default table size: a prime, about 16 entries per backend at 4,096 backends.
pub const DEFAULT_SIZE: u32 = 65_537;

/// One backend as the table sees it: an identity (its address and port, say; only its bytes
/// matter) and a weight (0: no new flows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub id: &'a str,
    pub weight: u32,
}

/// True when `n` is prime.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// The table this one replaces: its entries (backend numbers) and the identities of those
/// numbers.
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    pub table: &'a [u32],
    pub ids: &'a [&'a str],
}

/// Builds a table of `size` entries (a prime greater than 1) for `backends`; entry values are
/// indexes into `backends`, or [`NONE`] when no backend has a weight. With `previous`, entries
/// keep their backend where its quota allows (see the module comment).
pub fn build(backends: &[Entry<'_>], size: u32, previous: Option<Previous<'_>>) -> Vec<u32> {
    let m = size as usize;
    let mut table = vec![NONE; m];
    let quotas = quotas(backends, size);
    if m == 0 || quotas.iter().all(|&q| q == 0) {
        return table;
    }
    let mut taken = vec![0u32; backends.len()];
    let mut filled = 0usize;

    if let Some(prev) = previous {
        // Old backend number → new index, by identity (through a map: a search of the new list
        // per old number took most of a 4,096-backend rebuild).
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(backends.len());
        for (i, b) in backends.iter().enumerate().rev() {
            index.insert(b.id, i); // the first of equal identities wins, as a search would
        }
        let renumber: Vec<Option<usize>> =
            prev.ids.iter().map(|id| index.get(id).copied()).collect();
        for (slot, &old) in table.iter_mut().zip(prev.table) {
            let Some(Some(i)) = renumber.get(old as usize) else {
                continue;
            };
            if taken[*i] < quotas[*i] {
                *slot = *i as u32;
                taken[*i] += 1;
                filled += 1;
            }
        }
    }

    let orders: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let offset = fnv1a(b.id.as_bytes(), 0) % u64::from(size);
            let skip = fnv1a(b.id.as_bytes(), 1) % u64::from(size.saturating_sub(1).max(1)) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    while filled < m {
        for (i, &(offset, skip)) in orders.iter().enumerate() {
            if taken[i] >= quotas[i] {
                continue;
            }
            // The next free entry in backend i's order (its order visits every entry once).
            let slot = loop {
                let slot = ((offset + next[i] * skip) % u64::from(size)) as usize;
                next[i] += 1;
                if table[slot] == NONE {
                    break slot;
                }
            };
            table[slot] = i as u32;
            taken[i] += 1;
            filled += 1;
            if filled == m {
                break;
            }
        }
    }
    table
}

/// Each backend's share of `size` entries, in proportion to its weight; they add up to `size`
/// (largest remainders first, ties to the lower index). All zero when every weight is 0.
pub fn quotas(backends: &[Entry<'_>], size: u32) -> Vec<u32> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return vec![0; backends.len()];
    }
    let size = u64::from(size);
    let mut quotas: Vec<u32> = backends
        .iter()
        .map(|b| (size * u64::from(b.weight) / total) as u32)
        .collect();
    let given: u64 = quotas.iter().map(|&q| u64::from(q)).sum();
    let mut by_remainder: Vec<usize> = (0..backends.len()).collect();
    by_remainder.sort_by_key(|&i| {
        let remainder = size * u64::from(backends[i].weight) % total;
        (std::cmp::Reverse(remainder), i)
    });
    for &i in by_remainder.iter().take((size - given) as usize) {
        quotas[i] += 1;
    }
    quotas
}

/// FNV-1a, 64 bits, over `seed` then `bytes`: stable across builds and platforms (a table must
/// not change because netfn was rebuilt).
fn fnv1a(bytes: &[u8], seed: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&seed).chain(bytes) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche, so that nearby identities get unrelated offsets and skips.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.2.{}.{}:80", i / 250, i % 250 + 2))
            .collect()
    }

    fn entries(ids: &[String], weight: u32) -> Vec<Entry<'_>> {
        ids.iter().map(|id| Entry { id, weight }).collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &b in table {
            c[b as usize] += 1;
        }
        c
    }

    /// The identity each entry of `table` (built over `names`) points at.
    fn owners<'a>(table: &[u32], names: &'a [String]) -> Vec<&'a str> {
        table.iter().map(|&b| names[b as usize].as_str()).collect()
    }

    #[test]
    fn primes_are_told_apart() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(DEFAULT_SIZE));
        assert!(is_prime(4_294_967_291));
        assert!(!is_prime(65_535));
    }

    #[test]
    fn equal_weights_spread_within_one_percent() {
        for n in [2usize, 3, 10, 100, 1000] {
            let names = ids(n);
            let table = build(&entries(&names, 1), DEFAULT_SIZE, None);
            let fair = f64::from(DEFAULT_SIZE) / n as f64;
            for (i, c) in counts(&table, n).into_iter().enumerate() {
                let off = (c as f64 - fair).abs() / fair;
                assert!(
                    off <= 0.01,
                    "{n} backends: backend {i} has {c}, fair {fair:.1}"
                );
            }
        }
    }

    #[test]
    fn weights_are_honoured() {
        let names = ids(3);
        let backends = [
            Entry {
                id: &names[0],
                weight: 1,
            },
            Entry {
                id: &names[1],
                weight: 2,
            },
            Entry {
                id: &names[2],
                weight: 0,
            },
        ];
        let table = build(&backends, 65_537, None);
        let c = counts(&table, 3);
        assert_eq!(c[2], 0, "weight 0 gets no entries");
        assert_eq!(c[0] + c[1], 65_537);
        assert!((c[1] as f64 / c[0] as f64 - 2.0).abs() < 0.001, "{c:?}");
        assert_eq!(quotas(&backends, 65_537), [21_846, 43_691, 0]);
    }

    #[test]
    fn no_weight_means_no_backend() {
        let names = ids(2);
        assert!(
            build(&entries(&names, 0), 13, None)
                .iter()
                .all(|&b| b == NONE)
        );
        assert!(build(&[], 13, None).iter().all(|&b| b == NONE));
    }

    #[test]
    fn the_table_depends_on_identities_not_on_order() {
        let names = ids(5);
        let mut reversed = names.clone();
        reversed.reverse();
        let a = build(&entries(&names, 1), 251, None);
        let b = build(&entries(&reversed, 1), 251, None);
        // Same owners for most entries (turn order differs, preferences do not).
        let same = owners(&a, &names)
            .iter()
            .zip(owners(&b, &reversed))
            .filter(|(x, y)| **x == *y)
            .count();
        assert!(same > 200, "{same} of 251 agree");
    }

    #[test]
    fn removing_a_backend_moves_only_its_flows() {
        let names = ids(10);
        let before = build(&entries(&names, 1), DEFAULT_SIZE, None);
        let kept: Vec<String> = names.iter().filter(|n| *n != &names[3]).cloned().collect();
        let old_ids: Vec<&str> = names.iter().map(String::as_str).collect();
        let after = build(
            &entries(&kept, 1),
            DEFAULT_SIZE,
            Some(Previous {
                table: &before,
                ids: &old_ids,
            }),
        );
        let (was, now) = (owners(&before, &names), owners(&after, &kept));
        for (slot, (w, n)) in was.iter().zip(&now).enumerate() {
            if *w != names[3] {
                assert_eq!(w, n, "entry {slot} moved from {w} to {n}");
            }
        }
        let fair = f64::from(DEFAULT_SIZE) / 9.0;
        for c in counts(&after, 9) {
            assert!((c as f64 - fair).abs() / fair <= 0.01, "{c} vs {fair}");
        }
    }

    #[test]
    fn adding_a_backend_moves_about_its_share() {
        let names = ids(10);
        let before = build(&entries(&names, 1), DEFAULT_SIZE, None);
        let mut more = names.clone();
        more.push("10.2.9.9:80".into());
        let old_ids: Vec<&str> = names.iter().map(String::as_str).collect();
        let after = build(
            &entries(&more, 1),
            DEFAULT_SIZE,
            Some(Previous {
                table: &before,
                ids: &old_ids,
            }),
        );
        let moved = owners(&before, &names)
            .iter()
            .zip(owners(&after, &more))
            .filter(|(w, n)| **w != *n)
            .count();
        let share = f64::from(DEFAULT_SIZE) / 11.0;
        // Exactly the new backend's entries moved, and nothing else.
        assert!(
            (moved as f64 - share).abs() <= 1.0,
            "{moved} moved, share {share:.0}"
        );
        assert_eq!(counts(&after, 11)[10], moved);
    }

    #[test]
    fn draining_to_weight_zero_moves_only_its_flows() {
        let names = ids(4);
        let before = build(&entries(&names, 1), 1009, None);
        let mut drained = entries(&names, 1);
        drained[1].weight = 0;
        let old_ids: Vec<&str> = names.iter().map(String::as_str).collect();
        let after = build(
            &drained,
            1009,
            Some(Previous {
                table: &before,
                ids: &old_ids,
            }),
        );
        assert_eq!(counts(&after, 4)[1], 0);
        for (w, n) in before.iter().zip(&after) {
            if *w != 1 {
                assert_eq!(w, n);
            }
        }
    }
}
