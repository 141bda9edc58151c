//! `kind = "wireguard"`: a WireGuard VPN endpoint. Its settings ([`config`]) are a wg-quick
//! file's, keys in files ([`keys`]); it is a stack kind: its packets cross the function's own IP
//! stack, where its tunnel device runs: the kernel's ([`kernel`], over [`genl`]) where the kernel
//! has the module, else the userspace data plane (a process of its own per function:
//! [`endpoint`]; what it runs: `dataplane`, feature `userspace-wireguard`, with the device the
//! setting `userspace` names: netfn's `batched` one by default, or `gotatun_device`; told peer
//! changes over its [`control`] socket (in place), read over [`uapi`], without capabilities once
//! set up: [`netfn_core::privilege`]; on its TUN with offloads: `tun_io`, `tun_offload`; on a
//! UDP socket with GSO sends and GRO receives: `udp_io`, `udp_recv`,
//! [`udp_gso`]). [`device`] is the running one, whichever it is; [`peers`] says what it must be
//! told, [`link`] gives it addresses and routes, [`handshakes`] counts its handshakes,
//! [`reresolve`] follows peers' host names ([`named_endpoint`]) for the agent; [`kind`] is what
//! core registers.

#[cfg(feature = "userspace-wireguard")]
pub mod batched;
pub mod config;
pub mod control;
#[cfg(feature = "userspace-wireguard")]
pub mod dataplane;
pub mod device;
pub mod endpoint;
pub mod genl;
#[cfg(feature = "userspace-wireguard")]
pub mod gotatun_device;
pub mod handshakes;
pub mod kernel;
pub mod keys;
pub mod kind;
pub mod link;
pub mod named_endpoint;
pub mod peers;
#[cfg(feature = "userspace-wireguard")]
pub mod remembered;
pub mod reresolve;
#[cfg(feature = "userspace-wireguard")]
pub mod tun_io;
#[cfg(feature = "userspace-wireguard")]
pub mod tun_offload;
pub mod uapi;
pub mod udp_gso;
#[cfg(feature = "userspace-wireguard")]
pub mod udp_io;
#[cfg(feature = "userspace-wireguard")]
pub mod udp_recv;

pub use kind::WireGuard;
