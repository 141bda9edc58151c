//! Real traffic through a chain: UDP and TCP echo, both directions, with hop counts from TTLs.

use std::collections::BTreeSet;
use std::io::{IoSliceMut, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
    crate::set_socket_option(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        &bytes,
    )
    .unwrap_or_else(|e| panic!("SO_RCVBUFFORCE: {e}"));
}

/// What a sequenced stream saw across a change.
#[derive(Debug)]
pub struct StreamRun {
    /// The sequence numbers that arrived.
    pub seen: BTreeSet<u32>,
    /// Datagrams sent: sequence numbers `0..sent`.
    pub sent: u32,
    /// Datagrams that had arrived when the change began (at least one: the change starts only
    /// then).
    pub arrived_before: usize,
    /// The first sequence number sent after the change had ended.
    pub first_after: u32,
}

impl StreamRun {
    /// The sequence numbers sent that never arrived.
    pub fn lost(&self) -> Vec<u32> {
        (0..self.sent).filter(|s| !self.seen.contains(s)).collect()
    }

    /// Datagrams that arrived although they were sent only after the change had ended.
    pub fn arrived_after(&self) -> usize {
        self.seen.range(self.first_after..).count()
    }
}

/// Sends sequenced datagrams from the chain's ingress endpoint to its egress endpoint,
/// `per_second` of them per second, on `port`, and runs `during` (the change) while they flow:
/// it starts once datagrams have arrived (and not before 300 ms), and the stream goes on after
/// it ends, to `count` datagrams in all and at least 300 ms more. So the stream spans the change
/// however slow the machine, and "nothing lost" is never vacuous: the run asserts that datagrams
/// arrived both before the change began and, sent after it ended, after it (the stream waits
/// up to 20 s for one: see `change_ended`). The receiver stops after 1.5 s of silence once the
/// sender has stopped.
pub fn sequenced_stream_during(
    chain: &str,
    count: u32,
    per_second: u64,
    port: u16,
    during: impl FnOnce(),
) -> StreamRun {
    let mut stream = SequencedStream::start(chain, Toward::Egress, per_second, port);
    stream.wait_until_flowing();
    during();
    stream.change_ended(count);
    stream.finish()
}

/// [`sequenced_stream_during`] from `from` to `to` (namespace and address each; the sender
/// binds `port + 1`): through a tunnel, say.
pub fn sequenced_stream_between(
    from: (&str, Ipv4Addr),
    to: (&str, Ipv4Addr),
    count: u32,
    per_second: u64,
    port: u16,
    during: impl FnOnce(),
) -> StreamRun {
    let what = format!("the stream from {} to {} (port {port})", from.1, to.1);
    let mut stream = SequencedStream::between(what, from, to, per_second, port);
    stream.wait_until_flowing();
    during();
    stream.change_ended(count);
    stream.finish()
}

/// [`sequenced_stream_during`] in both directions at once (ports `port` and `port + 2`):
/// returns the stream to the egress endpoint, then the one to the ingress endpoint.
pub fn sequenced_streams_both_ways_during(
    chain: &str,
    count: u32,
    per_second: u64,
    port: u16,
    during: impl FnOnce(),
) -> (StreamRun, StreamRun) {
    let mut forward = SequencedStream::start(chain, Toward::Egress, per_second, port);
    let mut reverse = SequencedStream::start(chain, Toward::Ingress, per_second, port + 2);
    forward.wait_until_flowing();
    reverse.wait_until_flowing();
    during();
    forward.change_ended(count);
    reverse.change_ended(count);
    (forward.finish(), reverse.finish())
}

/// Which endpoint a stream goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    Egress,
    Ingress,
}

/// A sequenced UDP stream between a chain's endpoints, running on two threads until told how
/// many datagrams to send in all.
struct SequencedStream {
    what: String,
    per_second: u64,
    started: Instant,
    /// Datagrams sent so far (the next sequence number).
    sent: Arc<AtomicU32>,
    /// Datagrams received so far.
    received: Arc<AtomicUsize>,
    /// One past the highest sequence number received (0: none yet).
    newest: Arc<AtomicU32>,
    /// How many to send in all: `u32::MAX` until [`Self::finish`] decides.
    stop_at: Arc<AtomicU32>,
    /// Received when the change began.
    arrived_before: usize,
    /// Sent when the change had ended.
    first_after: u32,
    /// Taken by [`Self::finish`]; a stream dropped unfinished (the test failed during the
    /// change) stops and joins them ([`Drop`]).
    sender: Option<std::thread::JoinHandle<()>>,
    receiver: Option<std::thread::JoinHandle<BTreeSet<u32>>>,
}

impl SequencedStream {
    fn start(chain: &str, toward: Toward, per_second: u64, port: u16) -> Self {
        let (ingress, egress) = (
            (format!("nf-{chain}-ingress"), INGRESS_ADDR),
            (format!("nf-{chain}-egress"), EGRESS_ADDR),
        );
        let (from, to) = match toward {
            Toward::Egress => (ingress, egress),
            Toward::Ingress => (egress, ingress),
        };
        let what = format!("the stream toward {toward:?} of chain {chain} (port {port})");
        Self::between(what, (&from.0, from.1), (&to.0, to.1), per_second, port)
    }

    fn between(
        what: String,
        (from_ns, from_addr): (&str, Ipv4Addr),
        (to_ns, to_addr): (&str, Ipv4Addr),
        per_second: u64,
        port: u16,
    ) -> Self {
        let rx = udp_socket_in(to_ns, SocketAddrV4::new(to_addr, port));
        set_rcvbuf(&rx, 16 << 20);
        rx.set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        let tx = udp_socket_in(from_ns, SocketAddrV4::new(from_addr, port + 1));
        let sent = Arc::new(AtomicU32::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let newest = Arc::new(AtomicU32::new(0));
        let stop_at = Arc::new(AtomicU32::new(u32::MAX));
        let sending = Arc::new(AtomicBool::new(true));
        let receiver = {
            let (received, newest, sending) = (
                Arc::clone(&received),
                Arc::clone(&newest),
                Arc::clone(&sending),
            );
            std::thread::spawn(move || {
                let mut seen = BTreeSet::new();
                let mut buf = [0u8; 64];
                loop {
                    match rx.recv(&mut buf) {
                        Ok(n) if n >= 4 => {
                            let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                            seen.insert(seq);
                            received.fetch_add(1, Ordering::SeqCst);
                            newest.fetch_max(seq.saturating_add(1), Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        // Silence while the sender still sends: the change holds the stream up
                        // (an endpoint that restarts and handshakes again, on a slow VM).
                        Err(_) if sending.load(Ordering::SeqCst) => {}
                        Err(_) => break,
                    }
                }
                seen
            })
        };
        let sender = {
            let (sent, stop_at) = (Arc::clone(&sent), Arc::clone(&stop_at));
            let sending = Arc::clone(&sending);
            // Tells the receiver that nothing more comes, however the sender ends.
            struct Done(Arc<AtomicBool>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::SeqCst);
                }
            }
            std::thread::spawn(move || {
                let _done = Done(sending);
                let to = SocketAddrV4::new(to_addr, port);
                let start = Instant::now();
                let mut seq = 0u32;
                // Paced per millisecond, not per datagram: what is due goes out together, then
                // the sender sleeps a tick. A wakeup per datagram (10,000 a second for two
                // streams) is what the VM suite's emulated CPUs paid most for.
                loop {
                    let elapsed = start.elapsed().as_nanos();
                    let due = u32::try_from(elapsed * u128::from(per_second) / 1_000_000_000 + 1)
                        .unwrap_or(u32::MAX);
                    let end = due.min(stop_at.load(Ordering::SeqCst));
                    while seq < end {
                        tx.send_to(&seq.to_be_bytes(), to).expect("send");
                        seq += 1;
                        sent.store(seq, Ordering::SeqCst);
                    }
                    if seq >= stop_at.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        SequencedStream {
            what,
            per_second,
            started: Instant::now(),
            sent,
            received,
            newest,
            stop_at,
            arrived_before: 0,
            first_after: u32::MAX,
            sender: Some(sender),
            receiver: Some(receiver),
        }
    }

    /// Waits until datagrams have arrived and the stream has run 300 ms; panics if none arrive
    /// within 10 s (then the chain did not carry the stream before the change). Counts what
    /// arrived before the change.
    fn wait_until_flowing(&mut self) {
        let lead = self.started + Duration::from_millis(300);
        let deadline = self.started + Duration::from_secs(10);
        while self.received.load(Ordering::SeqCst) == 0 || Instant::now() < lead {
            assert!(
                Instant::now() < deadline,
                "{}: nothing arrived in 10 s ({} sent) before the change",
                self.what,
                self.sent.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.arrived_before = self.received.load(Ordering::SeqCst);
    }

    /// Called once the change has ended: the stream goes on until a datagram sent after the
    /// change has arrived (at most 20 s: a change may hold the stream up after it returns, as an
    /// endpoint that restarted does until its handshake, slowly on the VM suite's emulated
    /// CPUs), then to `count` datagrams in all and for at least 300 ms more.
    fn change_ended(&mut self, count: u32) {
        self.first_after = self.sent.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.newest.load(Ordering::SeqCst) <= self.first_after && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let resumed = self.sent.load(Ordering::SeqCst);
        let tail = u32::try_from((self.per_second * 3 / 10).max(1)).unwrap_or(u32::MAX);
        let stop_at = count.max(resumed.saturating_add(tail));
        self.stop_at.store(stop_at, Ordering::SeqCst);
    }

    /// Waits for the end of the stream and checks that it spanned the change.
    fn finish(mut self) -> StreamRun {
        let first_after = self.first_after;
        let sender = self
            .sender
            .take()
            .expect("the sender is joined by finish only");
        let receiver = self
            .receiver
            .take()
            .expect("the receiver is joined by finish only");
        sender.join().expect("sender");
        let seen = receiver.join().expect("receiver");
        let run = StreamRun {
            seen,
            sent: self.sent.load(Ordering::SeqCst),
            arrived_before: self.arrived_before,
            first_after,
        };
        assert!(
            run.arrived_before > 0 && run.arrived_after() > 0,
            "{} did not span the change: {} datagrams arrived before it began, {} of the {} sent \
             after it ended arrived ({} of {} in all)",
            self.what,
            run.arrived_before,
            run.arrived_after(),
            run.sent - first_after,
            run.seen.len(),
            run.sent
        );
        run
    }
}

/// A stream dropped before [`SequencedStream::finish`] (the test failed during the change):
/// its sender stops at once rather than send until the test binary ends, and both threads are
/// joined (the receiver ends after its read timeout).
impl Drop for SequencedStream {
    fn drop(&mut self) {
        self.stop_at.store(0, Ordering::SeqCst);
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
        if let Some(receiver) = self.receiver.take() {
            let _ = receiver.join();
        }
    }
}

/// A request, then an answer after `delay` of quiet on a half-closed connection: a client in
/// `client_ns` connects to `to`, sends a request and shuts down its writing (its FIN), as a
/// client that has said all it has to say does; the server (listening on `listen` in
/// `server_ns`) reads the request to its end, waits `delay`, answers and closes. Returns what
/// the client read before the server's close or a 3 s silence.
pub fn late_answer(
    client_ns: &str,
    to: SocketAddrV4,
    server_ns: &str,
    listen: SocketAddrV4,
    delay: Duration,
) -> Vec<u8> {
    let listener = tcp_listener_in(server_ns, listen);
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut request = Vec::new();
        s.read_to_end(&mut request).expect("read the request");
        std::thread::sleep(delay);
        // The answer may be lost on the way: that is what the caller looks at.
        let _ = s.write_all(b"late answer");
    });
    let mut client = tcp_connect_from(client_ns, to);
    client.write_all(b"request").expect("send the request");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    client
        .set_read_timeout(Some(delay + Duration::from_secs(3)))
        .expect("set timeout");
    let mut answer = Vec::new();
    // A timeout leaves `answer` with what arrived.
    let _ = client.read_to_end(&mut answer);
    server.join().expect("server thread");
    answer
}
