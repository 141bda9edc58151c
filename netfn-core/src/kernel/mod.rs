//! The kernel objects of a chain that are not eBPF: named network namespaces ([`netns`]),
//! typed rtnetlink operations on one namespace's socket ([`netlink`]), and the batched creation
//! and removal of a plan's namespaces, veths, addresses, routes and sysctls ([`objects`]);
//! plus what the running kernel can do ([`features`]), when it has freed the namespaces a
//! `down` removed ([`freed`]), and interfaces' offload switches ([`ethtool`]).
//!
//! With [`crate::ebpf`], this is the only layer that changes the kernel. It carries out what a
//! plan says and decides nothing: which objects exist, with which names, comes from
//! [`crate::plan`].

pub mod ethtool;
pub mod features;
pub mod freed;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod objects;
