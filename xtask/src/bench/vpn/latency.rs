//! Latency through a tunnel: round trips of a small UDP datagram from the client to an echo in
//! the server's namespace, one a millisecond, idle or beside a steady load.
//!
//! Unlike the chain bench's ping-pong, nobody busy-polls: the tunnel's own processes need the
//! two CPUs, so the client and the echo block in `recv` as any application does, and each round
//! trip pays the wake-ups a real one would.
//!
//! The load ([`LOAD_PPS`] 60-byte datagrams a second by default, `--latency-load-pps` to change
//! it; client to server, counted by a sink) is well under what every tunnel carries, so nothing
//! queues for want of capacity; its datagrams come 50 µs apart, closer together than netfn's receive moderation tick (100 µs by default; a
//! tick under 50 µs would rarely engage), so the tick's wait shows in the round trips that cross
//! it: the request, which the receiving netfn endpoint takes (netfn-wggo's, netfn-netfn's
//! server side). Idle, a request comes after a pause of a millisecond, longer than a tick.

use std::net::{SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Tunnel;
use super::measure::{Run, counters_now};
use crate::bench::chain::{PPS_PAYLOAD, recv_loop, set_rcvbuf, udp_connected, udp_in};

const ECHO_PORT: u16 = 9312;
const LOAD_PORT: u16 = 9313;
/// The steady load beside the loaded round trips by default: a datagram every 50 µs.
pub const LOAD_PPS: u32 = 20_000;
/// One round trip a millisecond (or at once after one that took longer).
const PING_EVERY: Duration = Duration::from_millis(1);
/// The most datagrams the load sends at one wake-up (200 µs of them).
const MAX_BURST: u64 = 4;
/// A reply later than this counts as lost.
const LOST_AFTER: Duration = Duration::from_millis(500);

/// What the round trips of one run took.
#[derive(Debug, Clone, Copy)]
pub(super) struct RoundTrips {
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    /// Requests whose reply did not come within [`LOST_AFTER`].
    pub(super) lost: u64,
    /// The load's datagrams received a second at the sink (loaded runs).
    pub(super) load_pps: Option<f64>,
}

/// Round trips for `seconds` (after 0.3 s with the load on), beside `load` datagrams a second
/// (none: idle).
pub(super) fn run(t: &Tunnel, seconds: f64, load: Option<f64>) -> Result<Run> {
    let stop = Arc::new(AtomicBool::new(false));
    let echo = echo(t, stop.clone())?;
    let load = match load
        .map(|pps| Load::start(t, stop.clone(), pps))
        .transpose()
    {
        Ok(load) => load,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            let _ = echo.join();
            return Err(e);
        }
    };
    let window = (|| -> Result<Run> {
        let client = udp_connected(
            &t.client_ns,
            t.client_addr,
            SocketAddrV4::new(t.server_addr, ECHO_PORT),
        )?;
        thread::sleep(Duration::from_millis(300));
        let (c0, l0, t0) = (
            counters_now(t)?,
            load.as_ref().map(Load::received),
            Instant::now(),
        );
        let (mut rtts, lost) = ping(&client, Duration::from_secs_f64(seconds))?;
        let (c1, l1, elapsed) = (
            counters_now(t)?,
            load.as_ref().map(Load::received),
            t0.elapsed().as_secs_f64(),
        );
        if rtts.is_empty() {
            bail!("no echo came back ({lost} requests lost)");
        }
        rtts.sort_by(f64::total_cmp);
        let load_pps = l0.zip(l1).map(|(a, b)| (b - a) as f64 / elapsed);
        let asked = load.as_ref().map_or(0.0, |l| l.pps);
        if let Some(pps) = load_pps.filter(|&pps| pps < 0.9 * asked) {
            eprintln!(
                "  warning: {}: the load got {:.1} kpps through, short of {:.0}: the round \
                 trips were not measured under the load asked for",
                t.name,
                pps / 1e3,
                asked / 1e3
            );
        }
        let trips = RoundTrips {
            p50_us: percentile(&rtts, 0.50),
            p99_us: percentile(&rtts, 0.99),
            lost,
            load_pps,
        };
        // Every datagram the tunnel carried in the window: both ways of each round trip, and
        // the load.
        let carried = 2.0 * rtts.len() as f64 + trips.load_pps.unwrap_or(0.0) * elapsed;
        let mut run = Run::between(trips.p50_us, carried, &c0, &c1);
        run.round_trips = Some(trips);
        Ok(run)
    })();
    stop.store(true, Ordering::Relaxed);
    let mut panicked = echo.join().is_err();
    if let Some(load) = load {
        panicked |= load.join();
    }
    if panicked {
        bail!("the echo or the load panicked");
    }
    window
}

/// The echo in the server's namespace, until `stop`.
fn echo(t: &Tunnel, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
    let socket = udp_in(&t.server_ns, SocketAddrV4::new(t.server_addr, ECHO_PORT))?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    }))
}

/// Requests of [`PPS_PAYLOAD`] bytes, each carrying its sequence number, one every
/// [`PING_EVERY`] for `duration`: the round trips in µs, and the requests lost (no reply within
/// [`LOST_AFTER`] of the request). A late reply to an earlier request is skipped.
fn ping(client: &UdpSocket, duration: Duration) -> Result<(Vec<f64>, u64)> {
    let (mut rtts, mut lost) = (Vec::new(), 0u64);
    let mut request = [0x42u8; PPS_PAYLOAD];
    let mut reply = [0u8; 64];
    let start = Instant::now();
    let mut next = start;
    let mut seq = 0u64;
    while start.elapsed() < duration {
        thread::sleep(next.saturating_duration_since(Instant::now()));
        next += PING_EVERY;
        seq += 1;
        request[..8].copy_from_slice(&seq.to_be_bytes());
        let sent = Instant::now();
        client
            .send(&request)
            .context("send a request to the echo")?;
        loop {
            let left = LOST_AFTER.saturating_sub(sent.elapsed());
            // A zero timeout would block for ever.
            if left.is_zero() {
                lost += 1;
                break;
            }
            client.set_read_timeout(Some(left))?;
            match client.recv(&mut reply) {
                Ok(n) if n == request.len() && reply[..8] == request[..8] => {
                    rtts.push(sent.elapsed().as_secs_f64() * 1e6);
                    break;
                }
                // A late reply to an earlier request.
                Ok(_) => {}
                // No reply in time (the read timeout), or an ICMP error queued on the
                // connected socket.
                _ => {
                    lost += 1;
                    break;
                }
            }
        }
        next = next.max(Instant::now());
    }
    Ok((rtts, lost))
}

/// The `p`-th quantile of sorted samples: the one at rank round((n - 1) p), as the chain bench's
/// round trips take it.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `pps` datagrams a second from the client to a sink in the server's namespace.
struct Load {
    pps: f64,
    received: Arc<AtomicU64>,
    threads: [JoinHandle<()>; 2],
}

impl Load {
    fn start(t: &Tunnel, stop: Arc<AtomicBool>, pps: f64) -> Result<Load> {
        let to = SocketAddrV4::new(t.server_addr, LOAD_PORT);
        let sink = udp_in(&t.server_ns, to)?;
        set_rcvbuf(&sink, 8 << 20);
        sink.set_read_timeout(Some(Duration::from_millis(50)))?;
        let source = udp_connected(&t.client_ns, t.client_addr, to)?;
        let received = Arc::new(AtomicU64::new(0));
        let sink_thread = {
            let (stop, received) = (stop.clone(), received.clone());
            thread::spawn(move || recv_loop(&sink, &stop, &received))
        };
        let source_thread = thread::spawn(move || paced(&source, &stop, pps));
        Ok(Load {
            pps,
            received,
            threads: [sink_thread, source_thread],
        })
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits for both threads; whether one panicked.
    fn join(self) -> bool {
        self.threads
            .into_iter()
            .map(|t| t.join().is_err())
            .fold(false, |a, b| a | b)
    }
}

/// Sends `pps` datagrams a second until `stop`: every wake-up sends what is due by then, so the rate
/// holds on average while the thread is woken a little late; after a longer stall the backlog
/// is dropped beyond [`MAX_BURST`], so that no burst queues in front of a request.
fn paced(source: &UdpSocket, stop: &AtomicBool, pps: f64) {
    // A sleep of tens of µs: the thread's timer slack (50 µs by default) down to 1 µs.
    let slack_ns: libc::c_ulong = 1_000;
    // SAFETY: prctl(2) with integer arguments; it acts on the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack_ns, 0, 0, 0) };
    let datagram = [0x5au8; PPS_PAYLOAD];
    let gap = Duration::from_secs_f64(1.0 / pps);
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * pps) as u64;
        sent = sent.max(due.saturating_sub(MAX_BURST));
        while sent < due {
            // An error (ENOBUFS; ECONNREFUSED from an ICMP error before the sink was up) only
            // leaves the rest to the next wake-up.
            if source.send(&datagram).is_err() {
                break;
            }
            sent += 1;
        }
        thread::sleep(gap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 51.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
