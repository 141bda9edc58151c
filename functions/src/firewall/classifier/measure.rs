//! The classifier's measurement (an ignored test; run it in release):
//!
//! ```text
//! cargo test -p netfn-functions --release -- --ignored --nocapture classifier_measure
//! ```
//!
//! For rule sets of 10 to 100,000 rules of two shapes it prints compile time, records, map bytes,
//! the structure's own step bound, and the max and mean steps over 1M boundary-biased packets,
//! and checks a sample against the reference. `FW_LEAF=<n>` tightens the leaf size to compare
//! trade-offs. It also prints, per rule set, the per-field equivalence classes (elementary
//! intervals) that the bit-vector and cross-product alternatives would need.

use std::time::Instant;

use super::boxes::expand;
use super::records::FIELDS;
use super::{Limits, compile_with};
use crate::firewall::reference;
use crate::firewall::testgen::{self, Rng, Shape};

/// Distinct elementary intervals per field: an upper bound on that field's equivalence classes.
fn classes(set: &crate::firewall::rules::RuleSet) -> [usize; FIELDS] {
    let Ok(boxes) = expand(&set.rules) else {
        return [0; FIELDS];
    };
    let mut out = [0; FIELDS];
    for (f, count) in out.iter_mut().enumerate() {
        let mut edges: Vec<u128> = boxes.lo[f]
            .iter()
            .copied()
            .chain(boxes.hi[f].iter().map(|h| h.saturating_add(1)))
            .collect();
        edges.sort_unstable();
        edges.dedup();
        *count = edges.len() + 1;
    }
    out
}

#[test]
#[ignore = "measurement: run in release with --ignored --nocapture"]
fn classifier_measure() {
    let leaf = std::env::var("FW_LEAF")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(Limits::EBPF.max_leaf);
    let limits = Limits {
        max_leaf: leaf,
        ..Limits::EBPF
    };
    let packets = 1_000_000;
    println!(
        "{:<14} {:>7} {:>9} {:>8} {:>9} {:>9} {:>11} {:>8} {:>7} {:>6} {:>6} {:>7}",
        "shape",
        "rules",
        "compile",
        "boxes",
        "nodes",
        "entries",
        "bytes",
        "depth",
        "leaf",
        "bound",
        "max",
        "mean"
    );
    let mut alternatives = Vec::new();
    for shape in [Shape::SecurityGroup, Shape::Adversarial, Shape::Dense] {
        for n in [10, 1_000, 10_000, 100_000] {
            let mut rng = Rng::new(n as u64 + 17);
            let set = testgen::rule_set(&mut rng, n, shape);
            let start = Instant::now();
            let compiled = match compile_with(&set, &limits) {
                Ok(c) => c,
                Err(e) => {
                    println!("{shape:<14?} {n:>7} error: {e}");
                    continue;
                }
            };
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let (mut max, mut total) = (0u32, 0u64);
            let sample: Vec<_> = (0..packets)
                .map(|_| testgen::packet(&mut rng, &set))
                .collect();
            let start = Instant::now();
            for p in &sample {
                let w = compiled.walk(p);
                max = max.max(w.steps);
                total += u64::from(w.steps);
            }
            let walk_ns = start.elapsed().as_nanos() as f64 / packets as f64;
            let checked = (20_000_000 / n).clamp(1_000, 100_000);
            for p in sample.iter().take(checked) {
                assert_eq!(compiled.lookup(p), reference::first_match(&set, p), "{p:?}");
            }
            println!(
                "{:<14} {:>7} {:>7.1}ms {:>8} {:>9} {:>9} {:>11} {:>8} {:>7} {:>6} {:>6} {:>7.2}   walk {:.0} ns, {} packets = reference",
                format!("{shape:?}"),
                n,
                ms,
                compiled.stats.boxes,
                compiled.nodes.len(),
                compiled.entries.len(),
                compiled.memory_bytes(),
                format!("{:?}", compiled.stats.max_depth),
                format!("{:?}", compiled.stats.max_leaf),
                compiled.max_steps(),
                max,
                total as f64 / packets as f64,
                walk_ns,
                checked,
            );
            let c = classes(&set);
            let words = n.div_ceil(64);
            alternatives.push(format!(
                "{shape:?} {n}: classes family/side/proto/src/dst/sport/dport = {c:?}; \
                 bit vectors: {} words read per lookup, {} bytes; \
                 cross product src x dst = {}, sport x dport = {}",
                FIELDS * words,
                c.iter().sum::<usize>() * words * 8,
                c[3] as u128 * c[4] as u128,
                c[5] as u128 * c[6] as u128,
            ));
        }
    }
    for line in alternatives {
        println!("{line}");
    }
}
