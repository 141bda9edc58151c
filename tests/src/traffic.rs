//! Real traffic through a chain: UDP and TCP echo, both directions, with hop counts from TTLs.

use std::io::{IoSliceMut, Read, Write};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg};

use crate::{
    EGRESS_ADDR, INGRESS_ADDR, enable_recv_ttl, tcp_connect_from, tcp_listener_in, udp_socket_in,
};

/// Receives one datagram and the TTL it arrived with.
pub fn recv_with_ttl(sock: &UdpSocket, buf: &mut [u8]) -> (usize, SocketAddrV4, u8) {
    let mut cmsg = nix::cmsg_space!(libc::c_int);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap_or_else(|e| panic!("recvmsg: {e} (no datagram within the timeout?)"));
    let mut ttl = 0u8;
    for c in msg.cmsgs().expect("cmsgs") {
        if let ControlMessageOwned::Ipv4Ttl(t) = c {
            ttl = u8::try_from(t).unwrap_or(0);
        }
    }
    let from = msg.address.expect("sender address");
    (msg.bytes, SocketAddrV4::new(from.ip(), from.port()), ttl)
}

/// What one round of UDP echo saw.
#[derive(Debug)]
pub struct UdpEcho {
    /// TTL of the request when it reached the egress endpoint (64 minus the hops it crossed).
    pub ttl_forward: u8,
    /// TTL of the reply when it reached the ingress endpoint.
    pub ttl_reverse: u8,
}

/// Sends `count` datagrams from the ingress endpoint to a server in the egress endpoint, which
/// echoes each; checks every payload both ways.
pub fn udp_echo(ingress_ns: &str, egress_ns: &str, count: usize) -> UdpEcho {
    let server = udp_socket_in(egress_ns, SocketAddrV4::new(EGRESS_ADDR, 7001));
    let client = udp_socket_in(ingress_ns, SocketAddrV4::new(INGRESS_ADDR, 7002));
    enable_recv_ttl(&server);
    enable_recv_ttl(&client);
    let mut echo = UdpEcho {
        ttl_forward: 0,
        ttl_reverse: 0,
    };
    for i in 0..count {
        let payload = format!("netfn-udp-{i}");
        client
            .send_to(payload.as_bytes(), SocketAddrV4::new(EGRESS_ADDR, 7001))
            .expect("udp send");
        let mut buf = [0u8; 256];
        let (n, from, ttl) = recv_with_ttl(&server, &mut buf);
        assert_eq!(
            &buf[..n],
            payload.as_bytes(),
            "server got a different payload"
        );
        assert_eq!(
            from,
            SocketAddrV4::new(INGRESS_ADDR, 7002),
            "request did not come from the ingress endpoint"
        );
        echo.ttl_forward = ttl;
        server.send_to(&buf[..n], from).expect("udp echo");
        let (m, from, ttl) = recv_with_ttl(&client, &mut buf);
        assert_eq!(&buf[..m], payload.as_bytes(), "client got a different echo");
        assert_eq!(from, SocketAddrV4::new(EGRESS_ADDR, 7001));
        echo.ttl_reverse = ttl;
    }
    echo
}

/// Opens a TCP connection from the ingress endpoint to the egress endpoint and echoes `bytes`
/// bytes through it (in 16 KiB writes), checking every byte.
pub fn tcp_echo(ingress_ns: &str, egress_ns: &str, bytes: usize) {
    let listener = tcp_listener_in(egress_ns, SocketAddrV4::new(EGRESS_ADDR, 7003));
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = s.read(&mut buf).expect("server read");
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).expect("server write");
        }
    });
    let mut client = tcp_connect_from(ingress_ns, SocketAddrV4::new(EGRESS_ADDR, 7003));
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let mut writer = client.try_clone().expect("clone stream");
    let sender = std::thread::spawn(move || {
        for chunk in data.chunks(16 * 1024) {
            writer.write_all(chunk).expect("client write");
        }
        writer
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    });
    let mut got = Vec::with_capacity(bytes);
    client.read_to_end(&mut got).expect("client read");
    sender.join().expect("sender thread");
    server.join().expect("server thread");
    assert_eq!(got.len(), bytes, "TCP echo returned a different length");
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
        "TCP echo corrupted data"
    );
}

/// Forces a socket's receive buffer (SO_RCVBUFFORCE, root), so a stream is not lost in it.
pub fn set_rcvbuf(sock: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: valid fd and a c_int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// Sends `count` sequenced datagrams from the chain's ingress endpoint to its egress endpoint,
/// `per_second` of them per second, on `port`; runs `during` 300 ms into the stream, and returns
/// the sequence numbers that arrived (the receiver stops after 1.5 s of silence).
pub fn sequenced_stream_during(
    chain: &str,
    count: u32,
    per_second: u64,
    port: u16,
    during: impl FnOnce(),
) -> std::collections::BTreeSet<u32> {
    let stream = SequencedStream::start(chain, Toward::Egress, count, per_second, port);
    std::thread::sleep(std::time::Duration::from_millis(300));
    during();
    stream.finish()
}

/// [`sequenced_stream_during`] in both directions at once (ports `port` and `port + 2`):
/// returns what arrived at the egress endpoint, then what arrived at the ingress endpoint.
pub fn sequenced_streams_both_ways_during(
    chain: &str,
    count: u32,
    per_second: u64,
    port: u16,
    during: impl FnOnce(),
) -> (
    std::collections::BTreeSet<u32>,
    std::collections::BTreeSet<u32>,
) {
    let forward = SequencedStream::start(chain, Toward::Egress, count, per_second, port);
    let reverse = SequencedStream::start(chain, Toward::Ingress, count, per_second, port + 2);
    std::thread::sleep(std::time::Duration::from_millis(300));
    during();
    (forward.finish(), reverse.finish())
}

/// Which endpoint a stream goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    Egress,
    Ingress,
}

/// A sequenced UDP stream between a chain's endpoints, running on two threads.
struct SequencedStream {
    sender: std::thread::JoinHandle<()>,
    receiver: std::thread::JoinHandle<std::collections::BTreeSet<u32>>,
}

impl SequencedStream {
    fn start(chain: &str, toward: Toward, count: u32, per_second: u64, port: u16) -> Self {
        use std::time::{Duration, Instant};
        let (ingress, egress) = (
            (format!("nf-{chain}-ingress"), INGRESS_ADDR),
            (format!("nf-{chain}-egress"), EGRESS_ADDR),
        );
        let ((from_ns, from_addr), (to_ns, to_addr)) = match toward {
            Toward::Egress => (ingress, egress),
            Toward::Ingress => (egress, ingress),
        };
        let rx = udp_socket_in(&to_ns, SocketAddrV4::new(to_addr, port));
        set_rcvbuf(&rx, 16 << 20);
        rx.set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        let tx = udp_socket_in(&from_ns, SocketAddrV4::new(from_addr, port + 1));
        let receiver = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            let mut buf = [0u8; 64];
            while let Ok(n) = rx.recv(&mut buf) {
                if n >= 4 {
                    seen.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                }
            }
            seen
        });
        let sender = std::thread::spawn(move || {
            let to = SocketAddrV4::new(to_addr, port);
            let start = Instant::now();
            let gap_ns = 1_000_000_000 / per_second.max(1);
            for seq in 0..count {
                tx.send_to(&seq.to_be_bytes(), to).expect("send");
                let due = start + Duration::from_nanos(u64::from(seq) * gap_ns);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        SequencedStream { sender, receiver }
    }

    fn finish(self) -> std::collections::BTreeSet<u32> {
        self.sender.join().expect("sender");
        self.receiver.join().expect("receiver")
    }
}
