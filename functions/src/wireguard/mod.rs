//! `kind = "wireguard"`: a WireGuard VPN endpoint. Its settings ([`config`]) are a wg-quick
//! file's, keys in files ([`keys`]); it is a stack kind: its packets cross the function's own IP
//! stack, where the userspace data plane ([`endpoint`], a process of its own per function) runs
//! the tunnel device; [`uapi`] reads the endpoint's peers back for status; [`kind`] is what core
//! registers.

pub mod config;
pub mod endpoint;
pub mod keys;
pub mod kind;
pub mod peers;
pub mod uapi;

pub use kind::WireGuard;
