//! An interface's offload switches, through the `SIOCETHTOOL` ioctl (what `ethtool -K` and
//! `ethtool -k` do; the legacy per-feature commands, which every kernel netfn supports has).
//! The ioctl acts on the interface of that name in the calling thread's namespace: callers in
//! another namespace run it there (see [`super::netns::run_in`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `ETHTOOL_STXCSUM` (linux/ethtool.h): transmit checksum offload, set.
const ETHTOOL_STXCSUM: u32 = 0x17;
/// `ETHTOOL_GGRO`, `ETHTOOL_SGRO`: generic receive offload, get and set.
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// Turns transmit checksum offload of `ifname` on or off (`ethtool -K IF tx on|off`).
pub fn set_tx_checksum(ifname: &str, on: bool) -> io::Result<()> {
    value(ifname, ETHTOOL_STXCSUM, u32::from(on)).map(drop)
}

/// Turns generic receive offload of `ifname` on or off (`ethtool -K IF gro on|off`). On a veth
/// that also makes the kernel hand the packets it receives to a NAPI poll (batches of up to 64)
/// instead of the per-CPU backlog, where GRO merges a burst of one flow into one packet (UDP
/// too, for a socket that asked for it with `UDP_GRO`).
pub fn set_gro(ifname: &str, on: bool) -> io::Result<()> {
    value(ifname, ETHTOOL_SGRO, u32::from(on)).map(drop)
}

/// Whether generic receive offload of `ifname` is on (`ethtool -k IF`'s
/// generic-receive-offload).
pub fn gro(ifname: &str) -> io::Result<bool> {
    value(ifname, ETHTOOL_GGRO, 0).map(|v| v != 0)
}

/// One `struct ethtool_value` command on `ifname`; returns the value after the call (what a
/// get command read).
fn value(ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    /// `struct ethtool_value`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    /// `struct ifreq` with the `ifr_data` member (40 bytes on 64-bit Linux).
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut libc::c_void,
        _pad: [u8; 16],
    }

    let bytes = ifname.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{ifname}` is not a valid interface name"),
        ));
    }
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: (&mut value as *mut EthtoolValue).cast(),
        _pad: [0; 16],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads `req` (a NUL-terminated name and a pointer to `value`, both alive
    // for the call) and reads/writes `value`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_name_is_refused_before_the_kernel_sees_it() {
        for name in ["a-name-longer-than-15", "nul\0inside"] {
            let e = gro(name).expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn a_missing_interface_is_an_error_not_a_value() {
        let e = gro("nfx-absent0").expect_err("no such interface");
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
    }
}
