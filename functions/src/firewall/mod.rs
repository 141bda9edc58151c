//! The firewall kind's pure core: the rule model ([`rules`]), the naive first-match matcher that
//! defines what a rule set means ([`reference`]), and the rule compiler that turns a rule set into
//! flat, index-linked records an eBPF program can walk in a bounded number of map lookups
//! ([`classifier`]). Nothing here touches the kernel, parses configuration or validates it (an
//! IPv6 prefix is held, not refused: the validator will say "not yet"); the kind itself (config,
//! plan, eBPF module) is not registered yet.

pub mod classifier;
pub mod reference;
pub mod rules;

#[cfg(test)]
mod testgen;
