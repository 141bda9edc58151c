//! The forwarder's extra sources (`NF_FWD_SOURCES`, see [`netfn_common::FWD_SOURCES_MAP`]) as
//! userspace keeps them: one LPM-trie entry per (function slot and direction, prefix) that the
//! plan's [`crate::plan::ForwarderEntry::extra_sources`] list.
//!
//! A change only ever widens first: [`sync_sources`] adds what a new plan allows before its
//! entries go live, and prunes what it no longer allows once they are (and the old path has
//! drained), so no packet of a kept flow meets a narrower check than the one it was sent under.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::LpmTrie;
use aya::maps::lpm_trie::Key;
use netfn_common::SourceKey;

use super::FWD_SOURCES_PIN;
use super::table::{map_error, pinned_map};
use crate::ebpf::EbpfError;
use crate::plan::{self, ChainPlan};

/// Whether [`sync_sources`] also removes entries the plan does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Only add (before a switch: the old entries are still live).
    No,
    /// Add and remove (at `up`, and after a switch has drained).
    Yes,
}

/// Makes the chain's extra-sources map hold what `plan` lists; returns the entries it added and
/// removed.
pub fn sync_sources(
    plan: &ChainPlan,
    bpf_dir: &Path,
    prune: Prune,
) -> Result<(usize, usize), EbpfError> {
    let path = bpf_dir.join(FWD_SOURCES_PIN);
    let mut trie: LpmTrie<_, SourceKey, u8> =
        LpmTrie::try_from(pinned_map(&path)?).map_err(map_error(&path))?;
    let wanted: BTreeSet<(u32, u32, u32)> = plan::forwarder_entries(plan)
        .iter()
        .flat_map(|e| {
            let slot = e.counter_slot();
            e.extra_sources
                .iter()
                .map(move |net| (slot, net_bytes(net.network()), u32::from(net.prefix_len())))
        })
        .collect();
    let present: BTreeSet<(u32, u32, u32)> = trie
        .keys()
        .filter_map(Result::ok)
        .map(|k| {
            let data = k.data();
            (
                u32::from_be(data.slot_be),
                data.addr,
                k.prefix_len().saturating_sub(32),
            )
        })
        .collect();
    let key = |&(slot, addr, len): &(u32, u32, u32)| {
        Key::new(
            32 + len,
            SourceKey {
                slot_be: slot.to_be(),
                addr,
            },
        )
    };
    let mut added = 0;
    for k in wanted.difference(&present) {
        trie.insert(&key(k), 1, 0).map_err(map_error(&path))?;
        added += 1;
    }
    let mut removed = 0;
    if prune == Prune::Yes {
        for k in present.difference(&wanted) {
            trie.remove(&key(k)).map_err(map_error(&path))?;
            removed += 1;
        }
    }
    Ok((added, removed))
}

/// An address as its bytes in packet order (how the program reads it).
fn net_bytes(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}
