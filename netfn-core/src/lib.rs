//! netfn-core: from a chain file to kernel objects and back.
//!
//! The folders are the layers, in the order a chain file crosses them (docs/architecture.md
//! walks one file through them):
//!
//! - [`spec`]: chain files → a validated [`spec::ChainFile`], every error at once, located.
//! - [`plan`]: pure data: a chain → the namespaces, links, addresses, routes and forwarder
//!   entries that must exist (and, for `netfn apply`, what changes). No kernel, no I/O.
//! - [`kernel`] and [`ebpf`]: the only layers that touch the kernel. `kernel` makes namespaces,
//!   veths, addresses and routes over netlink; `ebpf` loads, attaches and pins the programs and
//!   reads and writes their maps.
//! - [`chain`]: the verbs on one chain (`up`, `down`, `apply`, `status`, `graph`), with the
//!   record of what netfn created (`chain::state`) and the lock that serialises them.
//! - [`agent`] and [`metrics`]: the host agent, which only observes what the verbs made.
//! - [`function`]: the seam to the function kinds; core names no kind.
//! - [`failpoint`]: the named steps of `up`, `apply` and `down` a test can make fail (debug
//!   builds and the `failpoints` feature only).
//! - [`privilege`]: dropping capabilities (the agent, the kinds' processes).
//! - [`unix_time`]: the wall clock as records, status and metrics give it.

pub mod agent;
pub mod chain;
pub mod ebpf;
pub mod failpoint;
pub mod function;
pub mod kernel;
pub mod metrics;
pub mod plan;
pub mod privilege;
pub mod spec;
pub mod unix_time;
