//! netfn-core: from a chain file to kernel objects and back.
//!
//! The flow is `spec` (parse and validate) → `plan` (pure data) → `apply` (the only layer that
//! touches the kernel) → `state` (what netfn created, so `down` can finish any job).

pub mod agent;
pub mod apply;
pub mod diag;
pub mod diff;
pub mod ebpf;
pub mod features;
pub mod function;
pub mod graph;
pub mod lifecycle;
pub mod live;
pub mod metrics;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod plan;
pub mod replan;
pub mod spec;
pub mod state;
pub mod status;
