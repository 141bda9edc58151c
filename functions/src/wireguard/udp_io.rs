//! The userspace endpoint's encrypted side: its UDP socket with batched I/O, plugged into GotaTun
//! through GotaTun's transport seam (`DeviceBuilder::with_udp` takes a `UdpTransportFactory`,
//! whose `UdpSend` and `UdpRecv` GotaTun's send and receive tasks drive).
//!
//! - Sends: GotaTun's send task hands over every encrypted datagram that is ready, up to
//!   [`BATCH`]; [`GsoSend`] sends them with one `sendmmsg`, consecutive datagrams to one peer
//!   merged into UDP GSO messages (`UDP_SEGMENT`, planned by [`super::udp_gso`]), so the kernel
//!   carries a batch through its stack, the chain's veths and the forwarder as one skb and
//!   segments it at the last moment (or not at all: a receiver with UDP GRO on takes it whole).
//!   Where the kernel refuses GSO for good (EIO: the route's device cannot checksum) it is turned
//!   off for the socket; a message it refuses otherwise goes again as plain datagrams.
//! - Receives: `recvmmsg` of up to 100 messages with UDP GRO on, a coalesced message split at
//!   its segment size: GotaTun's own receive on GotaTun's device, [`super::udp_recv::GroRecv`]
//!   (the same calls, on headers and buffers made once) on netfn's batched device.
//!
//! The socket is GotaTun's `UdpSocket` (bound as GotaTun binds it: dual-stack `[::]:port`, with
//! the buffer sizes asked for); the batched send and the batched device's receive are ours.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use gotatun::packet::Packet;
use gotatun::udp::socket::{SockOpt, UdpSocket};
use gotatun::udp::{UdpRecv, UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use nix::sys::socket::{SockaddrLike, SockaddrStorage};
use tokio::io::Interest;

use super::udp_gso::{self, Message};

/// Datagrams handed to one [`GsoSend::send_many_to`] at most (wireguard-go's batch size).
pub const BATCH: usize = 128;

/// `UDP_SEGMENT` (linux/udp.h; not in the libc crate for glibc targets).
const UDP_SEGMENT: libc::c_int = 103;

/// Binds the endpoint's UDP socket: GotaTun calls [`UdpTransportFactory::bind`] when the device
/// starts and whenever its port changes.
#[derive(Debug, Clone)]
pub struct UdpFactory {
    /// The socket buffer sizes asked for: forced past rmem_max / wmem_max where the process may
    /// ([`force_buffers`]), capped by them otherwise.
    pub buffer: usize,
    /// Use UDP GSO where the kernel has it.
    pub gso: bool,
    /// The buffers the socket bound last got, for `netfn status`.
    pub got: Arc<SocketBuffers>,
}

/// A socket's receive and send buffer sizes in bytes, as the kernel reports them
/// (`SO_RCVBUF`/`SO_SNDBUF`: twice what was set, its bookkeeping included; what `ss -m` shows).
#[derive(Debug, Default)]
pub struct SocketBuffers {
    pub receive: AtomicUsize,
    pub send: AtomicUsize,
}

impl std::fmt::Display for SocketBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} KiB in, {} KiB out",
            self.receive.load(Ordering::Relaxed) / 1024,
            self.send.load(Ordering::Relaxed) / 1024
        )
    }
}

impl UdpTransportFactory for UdpFactory {
    type Send = GsoSend;
    type Recv = UdpSocket;

    async fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> io::Result<(GsoSend, UdpSocket)> {
        let only_v6 = match params.addr {
            Some(IpAddr::V6(_)) => Some(true),
            Some(IpAddr::V4(_)) => None,
            None => Some(false),
        };
        let opts = SockOpt {
            fwmark: params.fwmark,
            recv_buffer_size: Some(self.buffer),
            send_buffer_size: Some(self.buffer),
            only_v6,
        };
        let addr = params.addr.unwrap_or(Ipv6Addr::UNSPECIFIED.into());
        let udp = match UdpSocket::bind((addr, params.port).into(), opts) {
            Ok(udp) => udp,
            // No IPv6 in this namespace: IPv4 alone, as GotaTun's own factory does.
            Err(e)
                if params.addr.is_none()
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                    ) =>
            {
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, params.port).into(), opts)?
            }
            Err(e) => return Err(e),
        };
        force_buffers(&udp, self.buffer);
        {
            use nix::sys::socket::{getsockopt, sockopt};
            let socket = udp.socket();
            let (receive, send) = (
                getsockopt(socket, sockopt::RcvBuf).unwrap_or(0),
                getsockopt(socket, sockopt::SndBuf).unwrap_or(0),
            );
            self.got.receive.store(receive, Ordering::Relaxed);
            self.got.send.store(send, Ordering::Relaxed);
        }
        if let Err(e) = udp.enable_udp_gro() {
            tracing::warn!("UDP GRO is unavailable ({e}): each datagram is received alone");
        }
        let gso = self.gso && kernel_has_gso(&udp);
        if self.gso && !gso {
            tracing::warn!("UDP GSO is unavailable: each datagram is sent alone");
        }
        Ok((GsoSend::new(udp.clone(), gso), udp))
    }
}

/// Raises the socket's buffers to `size` past net.core.rmem_max / wmem_max where the process
/// may, as wireguard-go does: `SO_RCVBUFFORCE` and `SO_SNDBUFFORCE` need CAP_NET_ADMIN, which
/// the endpoint has when it binds at start. With the kernel's default caps (208 KiB) the receive
/// buffer holds a few hundred small datagrams, and a burst that arrives while the endpoint waits
/// for a CPU overflows it. Without the capability (a rebind after start) the buffers stay as
/// `SO_RCVBUF` / `SO_SNDBUF` left them, capped.
fn force_buffers(udp: &UdpSocket, size: usize) {
    use nix::sys::socket::{setsockopt, sockopt};
    let socket = udp.socket();
    let forced = setsockopt(socket, sockopt::RcvBufForce, &size)
        .and_then(|()| setsockopt(socket, sockopt::SndBufForce, &size));
    if let Err(e) = forced {
        tracing::debug!(
            "socket buffers of {size} bytes not forced past the kernel's caps ({e}): \
             net.core.rmem_max and wmem_max apply"
        );
    }
}

/// Whether the kernel knows `UDP_SEGMENT` (Linux 4.18 on).
fn kernel_has_gso(udp: &UdpSocket) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket descriptor, and `value`/`len` describe a c_int the call may write.
    let rc = unsafe {
        libc::getsockopt(
            udp.socket().as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0
}

/// The sending half: single datagrams as GotaTun sends them, batches with `sendmmsg` and GSO.
#[derive(Clone)]
pub struct GsoSend {
    udp: UdpSocket,
    /// Whether GSO is on (shared by the clones; off for good after an EIO).
    gso: Arc<AtomicBool>,
}

impl GsoSend {
    pub fn new(udp: UdpSocket, gso: bool) -> Self {
        GsoSend {
            udp,
            gso: Arc::new(AtomicBool::new(gso)),
        }
    }

    /// Whether batches are sent with GSO (now).
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Sends one datagram now, from any thread, without the runtime: `send_to` first waits for
    /// the socket's readiness, which only the runtime's worker learns (from its I/O driver), and
    /// a worker kept busy by a backlog of datagrams may take seconds to learn it on a slow CPU.
    /// A full socket buffer fails with `WouldBlock` (the datagram is dropped, as UDP may).
    pub fn send_now(&self, datagram: &[u8], destination: SocketAddr) -> io::Result<()> {
        nix::sys::socket::sendto(
            self.udp.socket().as_raw_fd(),
            datagram,
            &SockaddrStorage::from(destination),
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .map(drop)
        .map_err(io::Error::from)
    }
}

/// What [`GsoSend::send_many_to`] reuses from call to call.
#[derive(Default)]
pub struct SendBuf {
    messages: Vec<Message>,
    raw: RawHeaders,
}

/// The `sendmmsg` arguments, rebuilt for every attempt from the packets of the call: they point
/// into those packets and are never read after the attempt.
#[derive(Default)]
struct RawHeaders {
    iov: Vec<libc::iovec>,
    names: Vec<SockaddrStorage>,
    /// One control buffer per message (a `UDP_SEGMENT` cmsg needs 24 bytes; u64 for alignment).
    control: Vec<[u64; 4]>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iov` and `headers` are only written and read by the attempt that
// fills them (inside one synchronous closure, on one thread); between calls they are dead values
// that are overwritten before any use. Nothing is shared.
unsafe impl Send for RawHeaders {}
// SAFETY: as above; `&RawHeaders` gives access to nothing but the dead values.
unsafe impl Sync for RawHeaders {}

impl RawHeaders {
    /// Fills the headers of `messages` (of `packets`).
    fn fill(&mut self, packets: &[(Packet, SocketAddr)], messages: &[Message]) {
        self.iov.clear();
        self.names.clear();
        self.control.clear();
        self.headers.clear();
        for m in messages {
            for (packet, _) in &packets[m.start..m.end] {
                self.iov.push(libc::iovec {
                    iov_base: packet.as_ptr() as *mut libc::c_void,
                    iov_len: packet.len(),
                });
            }
            self.names.push(SockaddrStorage::from(packets[m.start].1));
            self.control.push([0; 4]);
        }
        // Only now that the vectors no longer grow, point into them.
        let mut first_iov = 0;
        for (k, m) in messages.iter().enumerate() {
            let count = m.end - m.start;
            // SAFETY: zero is a valid msghdr (null pointers, zero lengths).
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = self.names[k].as_ptr() as *mut libc::c_void;
            hdr.msg_namelen = self.names[k].len();
            hdr.msg_iov = self.iov[first_iov..].as_mut_ptr();
            hdr.msg_iovlen = count;
            first_iov += count;
            if let Some(segment) = m.segment {
                let control = &mut self.control[k];
                hdr.msg_control = control.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is arithmetic; CMSG_FIRSTHDR/CMSG_DATA point into
                // `control`, 32 bytes, aligned for cmsghdr, of which the cmsg uses 24.
                unsafe {
                    hdr.msg_controllen = libc::CMSG_SPACE(2) as usize;
                    let cmsg = libc::CMSG_FIRSTHDR(&hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
                }
            }
            self.headers.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
    }
}

/// Errors with which the kernel refuses one GSO message (its datagrams may still go alone).
fn refuses_gso(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)
    )
}

impl UdpSend for GsoSend {
    type SendManyBuf = SendBuf;

    async fn send_to(&self, packet: Packet, destination: SocketAddr) -> io::Result<()> {
        self.udp.send_to(packet, destination).await
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        BATCH
    }

    /// Sends `packets` (all of one address family, as GotaTun's send task groups them). A
    /// message the kernel refuses is dropped (UDP may lose it anyway) and the rest still go; the
    /// first error is returned after all were tried. `packets` is empty afterwards.
    async fn send_many_to(
        &self,
        buf: &mut SendBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        let SendBuf { messages, raw } = buf;
        messages.clear();
        udp_gso::plan(
            packets.iter().map(|(p, to)| (p.len(), *to)),
            self.gso(),
            messages,
        );
        let socket = self.udp.socket();
        let fd = socket.as_raw_fd();
        let mut first_error = None;
        let mut next = 0;
        while next < messages.len() {
            let sent = socket
                .async_io(Interest::WRITABLE, || {
                    raw.fill(packets, &messages[next..]);
                    let count = u32::try_from(raw.headers.len()).unwrap_or(u32::MAX);
                    // SAFETY: `headers` holds `count` mmsghdrs whose pointers `fill` just set
                    // into `names`, `iov`, `control` and the packets, all alive and unmoved
                    // until this call returns.
                    let n = unsafe {
                        libc::sendmmsg(fd, raw.headers.as_mut_ptr(), count, libc::MSG_DONTWAIT)
                    };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                })
                .await;
            match sent {
                Ok(0) => {
                    first_error.get_or_insert_with(|| io::Error::other("sendmmsg sent nothing"));
                    break;
                }
                Ok(n) => next += n,
                Err(e) if messages[next].segment.is_some() && refuses_gso(&e) => {
                    if e.raw_os_error() == Some(libc::EIO)
                        && self.gso.swap(false, Ordering::Relaxed)
                    {
                        tracing::warn!("the kernel refuses UDP GSO ({e}): sending datagrams alone");
                    }
                    // That message again, as one message per datagram.
                    let m = messages[next];
                    messages.splice(
                        next..=next,
                        (m.start..m.end).map(|i| Message {
                            start: i,
                            end: i + 1,
                            segment: None,
                        }),
                    );
                }
                Err(e) => {
                    tracing::trace!("a UDP send failed: {e}");
                    first_error.get_or_insert(e);
                    next += 1;
                }
            }
        }
        packets.clear();
        first_error.map_or(Ok(()), Err)
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        UdpSend::local_addr(&self.udp)
    }

    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        self.udp.set_fwmark(mark)
    }
}

#[cfg(test)]
mod tests {
    //! Against an independent reference: the kernel's own datagram boundaries, as plain
    //! `std::net::UdpSocket`s (no GRO) and a raw `recvmsg` with UDP GRO on see them, over
    //! loopback.

    use std::net::UdpSocket as StdUdp;
    use std::time::Duration;

    use gotatun::packet::PacketBufPool;
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, setsockopt, sockopt};

    use super::*;

    /// A datagram that says which it is: its index in the first 4 bytes, then a pattern.
    fn datagram(index: usize, len: usize) -> Vec<u8> {
        let mut d: Vec<u8> = (0..len).map(|i| (i * 13 + index * 7) as u8).collect();
        d[..4].copy_from_slice(&(index as u32).to_be_bytes());
        d
    }

    fn packet(bytes: &[u8]) -> Packet {
        Packet::from_bytes(bytes.into())
    }

    async fn sender(gso: bool) -> GsoSend {
        let mut factory = UdpFactory {
            buffer: 1 << 20,
            gso,
            got: Default::default(),
        };
        let params = UdpTransportFactoryParams {
            addr: None,
            port: 0,
            fwmark: None,
        };
        factory.bind(&params).await.expect("bind the sender").0
    }

    fn receiver() -> (StdUdp, SocketAddr) {
        let s = StdUdp::bind("127.0.0.1:0").expect("bind a receiver");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let addr = s.local_addr().expect("addr");
        (s, addr)
    }

    fn receive(s: &StdUdp, n: usize) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        (0..n)
            .map(|i| {
                let len = s
                    .recv(&mut buf)
                    .unwrap_or_else(|e| panic!("datagram {i} of {n}: {e}"));
                buf[..len].to_vec()
            })
            .collect()
    }

    /// A batch that exercises every rule: runs of equal datagrams (longer than 64), a shorter
    /// one ending a run (and full ones after it), a longer one starting the next, two
    /// destinations interleaved.
    fn batch(a: SocketAddr, b: SocketAddr) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut out = Vec::new();
        let mut add = |len: usize, to: SocketAddr| {
            let i = out.len();
            out.push((datagram(i, len), to));
        };
        for _ in 0..70 {
            add(128, a);
        }
        add(60, a);
        for _ in 0..3 {
            add(1452, a);
        }
        // A shorter one, then full ones again: they must not merge with it.
        add(700, a);
        for _ in 0..3 {
            add(1452, a);
        }
        for _ in 0..5 {
            add(96, b);
        }
        add(1000, a);
        add(200, b);
        for _ in 0..40 {
            add(1452, a);
        }
        out
    }

    async fn send_batch(tx: &GsoSend, batch: &[(Vec<u8>, SocketAddr)]) {
        let mut buf = SendBuf::default();
        for chunk in batch.chunks(BATCH) {
            let mut packets: Vec<_> = chunk.iter().map(|(d, to)| (packet(d), *to)).collect();
            tx.send_many_to(&mut buf, &mut packets)
                .await
                .expect("send_many_to");
            assert!(packets.is_empty(), "every packet taken");
        }
    }

    fn expect_per_destination(
        batch: &[(Vec<u8>, SocketAddr)],
        (a, a_addr): (&StdUdp, SocketAddr),
        (b, b_addr): (&StdUdp, SocketAddr),
    ) {
        for (s, addr) in [(a, a_addr), (b, b_addr)] {
            let want: Vec<Vec<u8>> = batch
                .iter()
                .filter(|(_, to)| *to == addr)
                .map(|(d, _)| d.clone())
                .collect();
            let got = receive(s, want.len());
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(
                    g,
                    w,
                    "datagram {} arrives as sent (length {} vs {})",
                    u32::from_be_bytes([w[0], w[1], w[2], w[3]]),
                    g.len(),
                    w.len()
                );
            }
        }
    }

    #[tokio::test]
    async fn a_batch_arrives_as_the_datagrams_it_was() {
        for gso in [true, false] {
            let tx = sender(gso).await;
            assert_eq!(tx.gso(), gso, "this kernel has UDP GSO");
            let (a, a_addr) = receiver();
            let (b, b_addr) = receiver();
            let batch = batch(a_addr, b_addr);
            send_batch(&tx, &batch).await;
            expect_per_destination(&batch, (&a, a_addr), (&b, b_addr));
            assert_eq!(tx.gso(), gso, "nothing turned GSO off");
        }
    }

    /// `send_now` sends from a thread outside the runtime, while the runtime's thread is held
    /// (its driver never runs meanwhile), to IPv4 and IPv6 destinations of the dual-stack socket.
    #[tokio::test]
    async fn send_now_needs_no_runtime() {
        let tx = sender(true).await;
        let (v4, v4_addr) = receiver();
        let v6 = StdUdp::bind("[::1]:0").expect("bind an IPv6 receiver");
        v6.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let v6_addr = v6.local_addr().expect("addr");
        let sent = std::thread::spawn(move || {
            [(0, v4_addr), (1, v6_addr)].map(|(i, to)| tx.send_now(&datagram(i, 148), to))
        })
        .join()
        .expect("the sending thread");
        for r in sent {
            r.expect("send_now");
        }
        assert_eq!(receive(&v4, 1), vec![datagram(0, 148)]);
        assert_eq!(receive(&v6, 1), vec![datagram(1, 148)]);
    }

    /// A receiver with UDP GRO on gets a GSO message whole, with its segment size: the proof
    /// that the datagrams crossed the stack as one.
    #[tokio::test]
    async fn a_run_of_equal_datagrams_crosses_the_stack_as_one_message() {
        let tx = sender(true).await;
        let (rx, addr) = receiver();
        setsockopt(&rx, sockopt::UdpGroSegment, &true).expect("UDP_GRO");
        let run: Vec<(Vec<u8>, SocketAddr)> = (0..10).map(|i| (datagram(i, 300), addr)).collect();
        send_batch(&tx, &run).await;
        let mut buf = vec![0u8; 65536];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(i32);
        let msg = nix::sys::socket::recvmsg::<SockaddrStorage>(
            rx.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .expect("recvmsg");
        let segment = msg.cmsgs().expect("cmsgs").find_map(|c| match c {
            ControlMessageOwned::UdpGroSegments(s) => Some(s),
            _ => None,
        });
        let len = msg.bytes;
        assert_eq!(segment, Some(300), "one message of 300-byte segments");
        assert_eq!(len, 3000, "all ten in it");
        let whole: Vec<u8> = run.iter().flat_map(|(d, _)| d.clone()).collect();
        assert_eq!(&buf[..len], &whole[..]);
    }

    /// GotaTun's receive (GRO on, the endpoint's receive side) splits such a message back into
    /// the datagrams, byte for byte.
    #[tokio::test]
    async fn gotatuns_gro_receive_splits_our_gso_messages_exactly() {
        let tx = sender(true).await;
        let mut factory = UdpFactory {
            buffer: 1 << 20,
            gso: true,
            got: Default::default(),
        };
        let params = UdpTransportFactoryParams {
            addr: Some(Ipv4Addr::LOCALHOST.into()),
            port: 0,
            fwmark: None,
        };
        let (rx_send, mut rx) = factory.bind(&params).await.expect("bind the receiver");
        let addr = UdpSend::local_addr(&rx_send)
            .expect("addr")
            .expect("a port");
        let (other, other_addr) = receiver();
        let batch = batch(addr, other_addr);
        send_batch(&tx, &batch).await;
        let want: Vec<&Vec<u8>> = batch
            .iter()
            .filter(|(_, to)| *to == addr)
            .map(|(d, _)| d)
            .collect();
        let mut pool = PacketBufPool::new(256);
        let mut recv_buf = Default::default();
        let mut got = Vec::new();
        while got.len() < want.len() {
            tokio::time::timeout(
                Duration::from_secs(2),
                rx.recv_many_from(&mut recv_buf, &mut pool, &mut got),
            )
            .await
            .expect("datagrams arrive")
            .expect("recv_many_from");
        }
        assert_eq!(got.len(), want.len());
        for ((g, _), w) in got.iter().zip(want) {
            assert_eq!(&g[..], &w[..]);
        }
        assert_eq!(receive(&other, 6).len(), 6);
    }

    /// The kernel refuses GSO on a socket that sends without UDP checksums (EINVAL): the
    /// refused messages go again as plain datagrams and nothing is lost.
    #[tokio::test]
    async fn a_refused_gso_message_goes_again_as_datagrams() {
        let tx = sender(true).await;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and an int option value.
        let rc = unsafe {
            libc::setsockopt(
                tx.udp.socket().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_NO_CHECK");
        let (a, a_addr) = receiver();
        let (b, b_addr) = receiver();
        let batch = batch(a_addr, b_addr);
        send_batch(&tx, &batch).await;
        expect_per_destination(&batch, (&a, a_addr), (&b, b_addr));
        // Not EIO: GSO stays on for the next batch.
        assert!(tx.gso());
    }
}
