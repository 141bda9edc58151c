//! The verbs on one chain: `up` and `down` ([`lifecycle`]), `apply` ([`apply`]), `status`
//! ([`status`]) and `graph` ([`graph`]), and the record of what netfn created for a chain
//! ([`state`]), which every verb reads or writes under the chain's lock.
//!
//! This layer orders the work and keeps the record; it builds nothing itself: objects come from
//! [`crate::kernel`] and [`crate::ebpf`], plans from [`crate::plan`].

pub mod apply;
pub mod function_record;
pub mod graph;
pub(crate) mod kinds;
pub mod lifecycle;
pub mod processes;
pub mod state;
pub mod status;
