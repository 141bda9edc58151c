//! Our own UDP pps, as iperf3's one `write` per datagram limits its sender to a few hundred
//! thousand packets per second even on a bare veth: 18-byte datagrams (60-byte frames before
//! encapsulation) from a connected UDP socket in the client's namespace, 256 per `sendmmsg`,
//! counted at a UDP socket in the server's namespace (`recvmmsg`); or the other way round
//! (`reverse`). Nothing is pinned: the tunnel's processes share the two CPUs with the generator
//! and the sink, whose threads' CPU time is counted too (the share of the machine the tunnel
//! does not get).

use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Tunnel;
use super::measure::{Run, counters_now, jiffies_to_s, own_thread_stat, task_jiffies};
use crate::bench::chain::{
    PPS_PAYLOAD, recv_loop, sendmmsg_loop, set_rcvbuf, udp_connected, udp_in,
};

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
    let source = udp_connected(from_ns, from, dst)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (received, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Each thread says where its stat file is first, so the window can count the CPU it takes.
    let (stats_tx, stats_rx) = mpsc::channel();
    let sink_thread = {
        let (stop, received, stats_tx) = (stop.clone(), received.clone(), stats_tx.clone());
        thread::spawn(move || {
            let _ = stats_tx.send(own_thread_stat());
            recv_loop(&sink, &stop, &received)
        })
    };
    let source_thread = {
        let (stop, sent) = (stop.clone(), sent.clone());
        thread::spawn(move || {
            let _ = stats_tx.send(own_thread_stat());
            sendmmsg_loop(source.as_raw_fd(), &[vec![0x5a; PPS_PAYLOAD]], &stop, &sent)
        })
    };
    let window = (|| -> Result<Run> {
        let stats = (0..2)
            .map(|_| {
                stats_rx
                    .recv_timeout(Duration::from_secs(5))
                    .context("the UDP generator or sink did not start")
            })
            .collect::<Result<Vec<String>>>()?;
        let generator = || -> Result<u64> { stats.iter().map(|s| task_jiffies(s)).sum() };
        thread::sleep(Duration::from_millis(300));
        let (r0, c0, g0, t0) = (
            received.load(Ordering::Relaxed),
            counters_now(t)?,
            generator()?,
            Instant::now(),
        );
        thread::sleep(Duration::from_secs_f64(seconds));
        let (r1, c1, g1) = (
            received.load(Ordering::Relaxed),
            counters_now(t)?,
            generator()?,
        );
        let packets = (r1 - r0) as f64;
        let mut run = Run::between(packets / t0.elapsed().as_secs_f64(), packets, &c0, &c1);
        run.generator_cpu_s = Some(jiffies_to_s(g0, g1));
        Ok(run)
    })();
    stop.store(true, Ordering::Relaxed);
    let joined = (source_thread.join(), sink_thread.join());
    if joined.0.is_err() || joined.1.is_err() {
        anyhow::bail!("the UDP generator or sink panicked");
    }
    window
}
