//! `kind = "load-balancer"`: an L4 load balancer. Its settings ([`config`]) name services (a
//! VIP, protocol and port) and their weighted backends; [`maglev`] builds each service's lookup
//! table; [`stage`] loads tables and backends into the fast path's stage at the function's hop
//! (the eBPF program tracks flows and rewrites addresses), with [`reverse`] the services each
//! backend answers for (and [`carry`] which ways back of removed backends flows still need),
//! [`nft`] writes the same services as
//! nftables DNAT for kernel mode, [`observe`] reads the counters back, and [`kind`] is what core
//! registers.

mod carry;
pub mod config;
mod counters;
mod health;
pub mod kind;
pub mod maglev;
pub mod nft;
mod observe;
mod reverse;
pub mod stage;

pub use kind::LoadBalancer;
