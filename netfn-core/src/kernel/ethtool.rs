//! An interface's offload switches, through the `SIOCETHTOOL` ioctl (what `ethtool -K` does;
//! the legacy per-feature commands, which every kernel netfn supports has).
//! The ioctl acts on the interface of that name in the calling thread's namespace: callers in
//! another namespace run it there (see [`super::netns::run_in`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `ETHTOOL_STXCSUM` (linux/ethtool.h): transmit checksum offload, set.
const ETHTOOL_STXCSUM: u32 = 0x17;

/// Turns transmit checksum offload of `ifname` on or off (`ethtool -K IF tx on|off`).
pub fn set_tx_checksum(ifname: &str, on: bool) -> io::Result<()> {
    value(ifname, ETHTOOL_STXCSUM, u32::from(on))
}

/// One `struct ethtool_value` set command on `ifname`.
fn value(ifname: &str, cmd: u32, data: u32) -> io::Result<()> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_name_is_refused_before_the_kernel_sees_it() {
        for name in ["a-name-longer-than-15", "nul\0inside"] {
            let e = set_tx_checksum(name, false).expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn a_missing_interface_is_the_kernels_enodev() {
        let e = set_tx_checksum("nfx-absent0", false).expect_err("no such interface");
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
    }
}
