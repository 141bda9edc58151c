//! Raw IPv4 sockets in a test's namespaces: hand-made ICMP messages (errors a router would send)
//! and segments sent as they are, and every packet of a protocol that reaches a namespace read
//! with its IPv4 header, as the kernel delivered it.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::{in_netns, set_socket_option};

/// A raw IPv4 socket of protocol `proto` in namespace `ns`: the kernel writes the IPv4 header of
/// what it sends, and it reads every packet of `proto` to the namespace (IPv4 header first),
/// waiting at most `wait` (under a second) for one.
pub fn raw_socket(ns: &str, proto: libc::c_int, wait: Duration) -> OwnedFd {
    in_netns(ns, || {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, proto) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor just opened, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let wait = libc::timeval {
            tv_sec: 0,
            tv_usec: wait.as_micros() as libc::suseconds_t,
        };
        set_socket_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &wait)
            .unwrap_or_else(|e| panic!("SO_RCVTIMEO: {e}"));
        fd
    })
}

/// Sends ICMP message `icmp` (its checksum is filled in here) from raw socket `fd` to `to`.
pub fn send_icmp(fd: &OwnedFd, to: Ipv4Addr, mut icmp: Vec<u8>) {
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = !crate::frames::sum16(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    send_raw(fd, to, &icmp);
}

/// Sends `payload` (what follows the IPv4 header) from raw socket `fd` to `to`.
pub fn send_raw(fd: &OwnedFd, to: Ipv4Addr, payload: &[u8]) {
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a buffer and an address of the stated sizes.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    assert_eq!(
        sent,
        payload.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

/// The next packet raw socket `fd` reads (IPv4 header first), or `None` once its wait passed.
pub fn recv_packet(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: recv(2) into a buffer of its stated size.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let n = usize::try_from(n).ok()?;
    buf.truncate(n);
    Some(buf)
}
