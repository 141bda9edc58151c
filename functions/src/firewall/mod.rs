//! `kind = "firewall"`: a stateful firewall. Its settings ([`config`]) become a rule set
//! ([`rules`], whose meaning [`reference`] defines) that [`classifier`] compiles into flat
//! records an eBPF program walks in a bounded number of map lookups; [`stage`] loads them into
//! the fast path's stage at the function's hop, [`nft`] writes the same rules as nftables for
//! kernel mode, [`observe`] reads the counters back, and [`kind`] is what core registers.

pub mod classifier;
pub mod config;
pub mod kind;
pub mod nft;
mod observe;
pub mod reference;
pub mod rules;
mod stage;

#[cfg(test)]
mod testgen;

pub use kind::Firewall;
