//! The batched device's UDP receive: `recvmmsg` with UDP GRO on, a coalesced message split at
//! its segment size into one packet per datagram, as GotaTun's receive does, but on headers and
//! buffers made once, when the device starts. GotaTun's receive builds its headers (about 20 KiB
//! of `mmsghdr`s, addresses and control buffers, four allocations) at every call, and a burst
//! takes two calls: the one that gets the datagrams and the one that finds the socket empty.
//! With wireguard-go's lone datagrams arriving a few at a time, that was paid per few packets.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use gotatun::packet::{Packet, PacketBufPool};
use gotatun::udp::socket::UdpSocket;
use nix::sys::socket::SockaddrStorage;
use tokio::io::Interest;

/// `UDP_GRO` (linux/udp.h): the cmsg that gives a coalesced message's segment size.
const UDP_GRO: libc::c_int = 104;

/// Messages one call takes at most (as GotaTun's receive).
const RECV_MESSAGES: usize = 100;

/// Room for one message: a UDP GRO message is at most 64 KiB (the kernel's IPv4 and IPv6
/// `gro_max_size` for UDP), a datagram at most 65,507 bytes.
const MESSAGE_ROOM: usize = 65536;

/// Room for the one cmsg asked for (`CMSG_SPACE(sizeof(int))`, 24 bytes), u64s for alignment.
type Control = [u64; 4];

/// The receiving half of the batched device's socket (GotaTun's `UdpSocket`, bound by
/// [`super::udp_io::UdpFactory`] with UDP GRO on).
pub struct GroRecv {
    udp: UdpSocket,
    raw: Headers,
}

/// The `recvmmsg` arguments: each header points at its slot of `room`, its address and its
/// control buffer, all boxed slices that never grow or move (when `Headers` moves, they stay).
struct Headers {
    room: Box<[u8]>,
    iov: Box<[libc::iovec]>,
    names: Box<[SockaddrStorage]>,
    control: Box<[Control]>,
    headers: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers in `iov` and `headers` point into the other boxed slices of the same
// `Headers`, which moves with them and is only used through `&mut` (one call at a time).
unsafe impl Send for Headers {}

impl Headers {
    fn new() -> Headers {
        // SAFETY (the three `zeroed`): all-zero is a valid iovec, socket address storage (a union
        // of C socket addresses) and mmsghdr (null pointers, zero lengths); the pointers are set
        // below.
        let mut h = Headers {
            room: vec![0u8; RECV_MESSAGES * MESSAGE_ROOM].into_boxed_slice(),
            iov: unsafe { zeroed(RECV_MESSAGES) },
            names: unsafe { zeroed(RECV_MESSAGES) },
            control: vec![[0; 4]; RECV_MESSAGES].into_boxed_slice(),
            headers: unsafe { zeroed(RECV_MESSAGES) },
        };
        let Headers {
            room,
            iov,
            names,
            control,
            headers,
        } = &mut h;
        for (k, slot) in room.chunks_exact_mut(MESSAGE_ROOM).enumerate() {
            iov[k] = libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: MESSAGE_ROOM,
            };
            let hdr = &mut headers[k].msg_hdr;
            hdr.msg_name = (&mut names[k] as *mut SockaddrStorage).cast();
            hdr.msg_iov = &mut iov[k];
            hdr.msg_iovlen = 1;
            hdr.msg_control = control[k].as_mut_ptr().cast();
        }
        h
    }

    /// One `recvmmsg` without waiting: the datagrams it got are appended to `out`, a coalesced
    /// message as its segments. Returns how many messages it got (`WouldBlock` for none).
    fn receive(
        &mut self,
        fd: libc::c_int,
        pool: &mut PacketBufPool,
        out: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<usize> {
        // The kernel wrote the lengths and flags of the last call's messages: reset them all.
        for h in self.headers.iter_mut() {
            h.msg_len = 0;
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = size_of::<Control>();
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: `headers` holds RECV_MESSAGES mmsghdrs whose pointers `new` set into this
        // `Headers`' own buffers, with the lengths just reset to those buffers' sizes.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                RECV_MESSAGES as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
        for k in 0..got {
            let h = &self.headers[k];
            let len = h.msg_len as usize;
            // Longer than its room: impossible with the kernel's GRO limits; not guessed at.
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                tracing::debug!("a received message of more than {MESSAGE_ROOM} bytes dropped");
                continue;
            }
            let Some(from) = socket_addr(&self.names[k]) else {
                continue;
            };
            let data = &self.room[k * MESSAGE_ROOM..][..len];
            let segment = gro_segment(&h.msg_hdr).unwrap_or(len).max(1);
            for datagram in data.chunks(segment) {
                let mut packet = pool.get();
                packet.buf_mut().clear();
                packet.buf_mut().extend_from_slice(datagram);
                out.push((packet, from));
            }
        }
        Ok(got)
    }
}

/// `n` all-zero `T`s.
///
/// # Safety
/// All-zero bytes must be a valid `T` (a C struct of integers and raw pointers).
unsafe fn zeroed<T>(n: usize) -> Box<[T]> {
    // SAFETY: the caller's promise.
    (0..n).map(|_| unsafe { std::mem::zeroed() }).collect()
}

/// The segment size of a coalesced message (its `UDP_GRO` cmsg), if it is one.
fn gro_segment(hdr: &libc::msghdr) -> Option<usize> {
    // SAFETY: `hdr` is a msghdr the kernel filled, its control pointer and length describing
    // the message's control buffer; CMSG_FIRSTHDR/CMSG_NXTHDR stay within it, and the data of a
    // UDP_GRO cmsg is an int (read unaligned).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                return usize::try_from(size).ok().filter(|&s| s > 0);
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// The sender's address: an IPv4 sender on the dual-stack socket (`::ffff:a.b.c.d`) as IPv4,
/// as GotaTun's receive gives it (peers' endpoints are compared and shown so).
fn socket_addr(name: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = name.as_sockaddr_in() {
        return Some(SocketAddrV4::from(*v4).into());
    }
    let v6 = SocketAddrV6::from(*name.as_sockaddr_in6()?);
    Some(match v6.ip().to_ipv4_mapped() {
        Some(v4) => SocketAddrV4::new(v4, v6.port()).into(),
        None => v6.into(),
    })
}

impl GroRecv {
    pub fn new(udp: UdpSocket) -> GroRecv {
        GroRecv {
            udp,
            raw: Headers::new(),
        }
    }

    /// Waits until datagrams are there, then takes what one call gets (see
    /// [`Self::take_queued`]).
    pub async fn recv(
        &mut self,
        pool: &mut PacketBufPool,
        out: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<usize> {
        let Self { udp, raw } = self;
        let socket = udp.socket();
        let fd = socket.as_raw_fd();
        socket
            .async_io(Interest::READABLE, || raw.receive(fd, pool, out))
            .await
    }

    /// Takes the datagrams one call gets without waiting, appended to `out` (a coalesced
    /// message as its datagrams); returns how many messages that was (`WouldBlock` for none).
    /// It asks the socket itself, not tokio's note of whether it is readable, which is only
    /// brought up to date when the runtime's worker next waits for events: after the device
    /// held that worker for a tick (see `super::batched::moderation`), datagrams may be queued
    /// that tokio has not heard of yet.
    pub fn take_queued(
        &mut self,
        pool: &mut PacketBufPool,
        out: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<usize> {
        let fd = self.udp.socket().as_raw_fd();
        self.raw.receive(fd, pool, out)
    }
}

#[cfg(test)]
mod tests {
    //! Against independent senders: plain `std::net::UdpSocket`s (one datagram a call) and a
    //! UDP GSO send, which the kernel hands to a GRO receiver as one coalesced message.

    use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket as StdUdp};
    use std::time::Duration;

    use gotatun::udp::UdpRecv as _;
    use gotatun::udp::socket::SockOpt;

    use super::*;

    fn datagram(index: usize, len: usize) -> Vec<u8> {
        let mut d: Vec<u8> = (0..len).map(|i| (i * 31 + index * 3) as u8).collect();
        d[..4].copy_from_slice(&(index as u32).to_be_bytes());
        d
    }

    fn receiver(bind: SocketAddr) -> (GroRecv, SocketAddr) {
        let only_v6 = bind.is_ipv6().then_some(false);
        let udp = UdpSocket::bind(
            bind,
            SockOpt {
                only_v6,
                ..Default::default()
            },
        )
        .expect("bind the receiver");
        udp.enable_udp_gro().expect("UDP_GRO");
        let addr = udp.local_addr().expect("addr");
        (GroRecv::new(udp), addr)
    }

    async fn receive_all(rx: &mut GroRecv, n: usize) -> Vec<(Packet, SocketAddr)> {
        let mut pool = PacketBufPool::new(256);
        let mut got = Vec::new();
        while got.len() < n {
            tokio::time::timeout(Duration::from_secs(2), rx.recv(&mut pool, &mut got))
                .await
                .expect("datagrams arrive")
                .expect("recv");
        }
        got
    }

    /// Datagrams of many sizes from two senders, received over the dual-stack socket: each
    /// exactly as sent, with its sender's IPv4 address (not the mapped IPv6 one), over more
    /// calls than one (more datagrams than a call takes).
    #[tokio::test]
    async fn datagrams_arrive_whole_with_their_senders() {
        let (mut rx, addr) = receiver((Ipv6Addr::UNSPECIFIED, 0).into());
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()));
        let a = StdUdp::bind("127.0.0.1:0").expect("bind a");
        let b = StdUdp::bind("127.0.0.1:0").expect("bind b");
        let mut sent = Vec::new();
        // Small ones: 150 fit the default receive buffer (sent before any is received).
        for i in 0..150 {
            let (s, len) = if i % 3 == 0 {
                (&b, 4 + i % 97)
            } else {
                (&a, 100)
            };
            let d = datagram(i, len);
            s.send_to(&d, to).expect("send");
            sent.push((d, s.local_addr().expect("addr")));
        }
        let got = receive_all(&mut rx, sent.len()).await;
        assert_eq!(got.len(), sent.len());
        for ((p, from), (d, src)) in got.iter().zip(&sent) {
            assert_eq!(&p[..], &d[..]);
            assert_eq!(from, src);
            assert!(from.is_ipv4());
        }
    }

    /// A GSO send of 20 equal datagrams and a shorter last one crosses loopback as one message;
    /// the receive splits it back into the 21 datagrams, byte for byte, and takes a datagram
    /// sent after it alone.
    #[tokio::test]
    async fn a_coalesced_message_becomes_its_datagrams() {
        let (mut rx, addr) = receiver((Ipv4Addr::LOCALHOST, 0).into());
        let tx = StdUdp::bind("127.0.0.1:0").expect("bind the sender");
        let size = 300;
        let mut whole = Vec::new();
        let mut want = Vec::new();
        for i in 0..21 {
            let d = datagram(i, if i == 20 { 123 } else { size });
            whole.extend_from_slice(&d);
            want.push(d);
        }
        let segment = size as u16;
        nix::sys::socket::sendmsg(
            tx.as_raw_fd(),
            &[io::IoSlice::new(&whole)],
            &[nix::sys::socket::ControlMessage::UdpGsoSegments(&segment)],
            nix::sys::socket::MsgFlags::empty(),
            Some(&nix::sys::socket::SockaddrStorage::from(addr)),
        )
        .expect("a GSO send");
        let lone = datagram(99, 77);
        tx.send_to(&lone, addr).expect("send");
        want.push(lone);
        let got = receive_all(&mut rx, want.len()).await;
        assert_eq!(got.len(), want.len());
        for ((p, _), w) in got.iter().zip(&want) {
            assert_eq!(&p[..], &w[..]);
        }
    }

    /// Nothing there: `take_queued` says so at once; a datagram sent then is taken at once,
    /// though no task waited for the socket (tokio has not seen it readable).
    #[tokio::test]
    async fn take_queued_asks_the_socket_itself() {
        let (mut rx, addr) = receiver((Ipv4Addr::LOCALHOST, 0).into());
        let mut pool = PacketBufPool::new(4);
        let mut got = Vec::new();
        let e = rx
            .take_queued(&mut pool, &mut got)
            .expect_err("nothing to take");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(got.is_empty());
        let tx = StdUdp::bind("127.0.0.1:0").expect("bind the sender");
        tx.send_to(b"now", addr).expect("send");
        // Loopback delivers within the send call: the datagram is queued when it returns.
        assert_eq!(rx.take_queued(&mut pool, &mut got).expect("taken"), 1);
        assert_eq!(&got[0].0[..], b"now");
    }
}
