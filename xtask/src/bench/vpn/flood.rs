//! Our own UDP pps, as iperf3's one `write` per datagram limits its sender to a few hundred
//! thousand packets per second even on a bare veth: 18-byte datagrams (60-byte frames before
//! encapsulation) from a connected UDP socket in the client's namespace, 256 per `sendmmsg`,
//! counted at a UDP socket in the server's namespace (`recvmmsg`); or the other way round
//! (`reverse`). Nothing is pinned: the tunnel's processes share the two CPUs with the generator
//! and the sink.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Tunnel;
use super::measure::{Run, cpu_now};
use crate::bench::chain::{PPS_PAYLOAD, in_netns, recv_loop, sendmmsg_loop, set_rcvbuf, udp_in};

const PORT: u16 = 9311;

/// Datagrams received per second over a window of `seconds` (after 0.3 s of warm-up), with the
/// CPU that window cost; from the server to the client when `reverse`.
pub(super) fn run(t: &Tunnel, seconds: f64, reverse: bool) -> Result<Run> {
    let ((from_ns, from), (to_ns, to)) = {
        let client = (&t.client_ns, t.client_addr);
        let server = (&t.server_ns, t.server_addr);
        if reverse {
            (server, client)
        } else {
            (client, server)
        }
    };
    let dst = SocketAddrV4::new(to, PORT);
    let sink = udp_in(to_ns, dst)?;
    set_rcvbuf(&sink, 64 << 20);
    sink.set_read_timeout(Some(Duration::from_millis(50)))?;
    let source = in_netns(from_ns, || {
        let s = UdpSocket::bind(SocketAddrV4::new(from, 0))
            .with_context(|| format!("bind {from} in {from_ns}"))?;
        s.connect(dst)
            .with_context(|| format!("connect to {dst}"))?;
        Ok(s)
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let (received, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sink_thread = {
        let (stop, received) = (stop.clone(), received.clone());
        thread::spawn(move || recv_loop(&sink, &stop, &received))
    };
    let source_thread = {
        let (stop, sent) = (stop.clone(), sent.clone());
        thread::spawn(move || {
            sendmmsg_loop(source.as_raw_fd(), &[vec![0x5a; PPS_PAYLOAD]], &stop, &sent)
        })
    };
    let window = (|| -> Result<Run> {
        thread::sleep(Duration::from_millis(300));
        let (r0, c0, t0) = (
            received.load(Ordering::Relaxed),
            cpu_now(t)?,
            Instant::now(),
        );
        thread::sleep(Duration::from_secs_f64(seconds));
        let (r1, c1) = (received.load(Ordering::Relaxed), cpu_now(t)?);
        let packets = (r1 - r0) as f64;
        Ok(Run::between(
            packets / t0.elapsed().as_secs_f64(),
            packets,
            c0,
            c1,
        ))
    })();
    stop.store(true, Ordering::Relaxed);
    let joined = (source_thread.join(), sink_thread.join());
    if joined.0.is_err() || joined.1.is_err() {
        anyhow::bail!("the UDP generator or sink panicked");
    }
    window
}
