//! The soak's traffic: sequenced UDP streams and a TCP transfer that run for the whole soak,
//! each on its own threads, never panicking (a failure is an error in the report).
//!
//! A stream numbers its datagrams and paces them; its receiver keeps a bitmap of the numbers
//! that arrived, so at the end every lost datagram is known by number (and, from the pace, by
//! the moment it was sent). The TCP transfer writes a known byte pattern and the server checks
//! every byte: a reset, a stall past the timeouts or a corrupted byte is an error.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bench::chain::{in_netns, set_rcvbuf, udp_in};

/// Where a flow starts and ends: (namespace, address) of each side.
#[derive(Debug, Clone)]
pub struct Path {
    pub from_ns: String,
    pub from: std::net::Ipv4Addr,
    pub to_ns: String,
    pub to: std::net::Ipv4Addr,
}

/// What one stream saw, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct StreamResult {
    pub what: String,
    pub sent: u32,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub send_errors: u64,
    /// The first lost ranges: (first, last sequence number, when the first was sent: seconds
    /// since the chaos began, from the stream's pace).
    pub lost_ranges: Vec<(u32, u32, f64)>,
}

/// A sequenced UDP stream running until [`SeqStream::finish`].
pub struct SeqStream {
    what: String,
    per_second: u64,
    started: Instant,
    stop: Arc<AtomicBool>,
    sender: JoinHandle<(u32, u64)>,
    receiver: JoinHandle<(Vec<u64>, u64)>,
}

impl SeqStream {
    /// Starts a stream of `per_second` datagrams on `path`, to port `port` (sent from
    /// `port + 1`).
    pub fn start(what: &str, path: &Path, port: u16, per_second: u64) -> Result<SeqStream> {
        let rx = udp_in(&path.to_ns, SocketAddrV4::new(path.to, port))?;
        set_rcvbuf(&rx, 16 << 20);
        rx.set_read_timeout(Some(Duration::from_millis(200)))?;
        let tx = udp_in(&path.from_ns, SocketAddrV4::new(path.from, port + 1))?;
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut seen: Vec<u64> = Vec::new();
                let mut duplicates = 0u64;
                let mut buf = [0u8; 64];
                let mut last = Instant::now();
                loop {
                    match rx.recv(&mut buf) {
                        Ok(n) if n >= 4 => {
                            let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                            let (word, bit) = (seq / 64, seq % 64);
                            if seen.len() <= word {
                                seen.resize(word + 1, 0);
                            }
                            if seen[word] & (1 << bit) != 0 {
                                duplicates += 1;
                            } else {
                                seen[word] |= 1 << bit;
                            }
                            last = Instant::now();
                        }
                        _ => {
                            // Stop after 1.5 s of silence once the sender is done.
                            if stop.load(Ordering::Relaxed)
                                && last.elapsed() > Duration::from_millis(1500)
                            {
                                break;
                            }
                        }
                    }
                }
                (seen, duplicates)
            })
        };
        let sender = {
            let stop = Arc::clone(&stop);
            let to = SocketAddrV4::new(path.to, port);
            std::thread::spawn(move || {
                let start = Instant::now();
                let gap_ns = 1_000_000_000 / per_second.max(1);
                let (mut seq, mut errors) = (0u32, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    if tx.send_to(&seq.to_be_bytes(), to).is_err() {
                        errors += 1;
                    }
                    seq += 1;
                    let due = start + Duration::from_nanos(u64::from(seq) * gap_ns);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                (seq, errors)
            })
        };
        Ok(SeqStream {
            what: what.to_string(),
            per_second,
            started: Instant::now(),
            stop,
            sender,
            receiver,
        })
    }

    /// Stops sending, waits for the stragglers, and counts (loss times relative to `reference`).
    pub fn finish(self, reference: Instant) -> Result<StreamResult> {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, send_errors) = self
            .sender
            .join()
            .map_err(|_| anyhow::anyhow!("{}: the sender panicked", self.what))?;
        let (seen, duplicates) = self
            .receiver
            .join()
            .map_err(|_| anyhow::anyhow!("{}: the receiver panicked", self.what))?;
        let has = |s: u32| {
            let (w, b) = (s as usize / 64, s as usize % 64);
            seen.get(w).is_some_and(|word| word & (1 << b) != 0)
        };
        let mut lost = 0u64;
        let mut ranges = Vec::new();
        let mut open: Option<u32> = None;
        for s in 0..sent {
            if has(s) {
                if let Some(first) = open.take() {
                    ranges.push((first, s - 1));
                }
            } else {
                lost += 1;
                open.get_or_insert(s);
            }
        }
        if let Some(first) = open {
            ranges.push((first, sent - 1));
        }
        let received = seen.iter().map(|w| u64::from(w.count_ones())).sum();
        let offset = if self.started >= reference {
            (self.started - reference).as_secs_f64()
        } else {
            -(reference - self.started).as_secs_f64()
        };
        Ok(StreamResult {
            what: self.what,
            sent,
            received,
            lost,
            duplicates,
            send_errors,
            lost_ranges: ranges
                .into_iter()
                .take(20)
                .map(|(a, b)| (a, b, offset + f64::from(a) / self.per_second as f64))
                .collect(),
        })
    }
}

/// What the TCP transfer saw.
#[derive(Debug, Clone, Serialize)]
pub struct TcpResult {
    pub what: String,
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Every byte read was the byte written at that offset.
    pub intact: bool,
    pub errors: Vec<String>,
}

/// One TCP connection carrying a byte pattern at a paced rate until [`TcpTransfer::finish`].
pub struct TcpTransfer {
    what: String,
    stop: Arc<AtomicBool>,
    writer: JoinHandle<(u64, Option<String>)>,
    reader: JoinHandle<(u64, bool, Option<String>)>,
}

/// The byte at offset `i` of the transfer.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

impl TcpTransfer {
    /// Listens on `listen` in `server_ns`, connects to `connect` from `client_ns` (a load
    /// balancer's VIP leads to the listener), and writes `bytes_per_second`.
    pub fn start(
        what: &str,
        server_ns: &str,
        listen: SocketAddrV4,
        client_ns: &str,
        connect: SocketAddrV4,
        bytes_per_second: u64,
    ) -> Result<TcpTransfer> {
        let listener = in_netns(server_ns, || {
            TcpListener::bind(listen).with_context(|| format!("listen on {listen} in {server_ns}"))
        })?;
        let client = in_netns(client_ns, || {
            TcpStream::connect_timeout(&connect.into(), Duration::from_secs(10))
                .with_context(|| format!("connect to {connect} from {client_ns}"))
        })?;
        let (server, _) = listener.accept().context("accept the transfer")?;
        // A chain may stall for a moment during a change; a minute without progress is a failure.
        server.set_read_timeout(Some(Duration::from_secs(60)))?;
        client.set_write_timeout(Some(Duration::from_secs(60)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = std::thread::spawn(move || {
            let mut server = server;
            let (mut offset, mut intact) = (0u64, true);
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match server.read(&mut buf) {
                    Ok(0) => return (offset, intact, None),
                    Ok(n) => {
                        for (k, b) in buf[..n].iter().enumerate() {
                            if *b != pattern(offset + k as u64) {
                                intact = false;
                            }
                        }
                        offset += n as u64;
                    }
                    Err(e) => return (offset, intact, Some(format!("read at byte {offset}: {e}"))),
                }
            }
        });
        let writer = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut client = client;
                const CHUNK: u64 = 16 << 10;
                let start = Instant::now();
                let mut offset = 0u64;
                let mut chunk = vec![0u8; CHUNK as usize];
                while !stop.load(Ordering::Relaxed) {
                    for (k, b) in chunk.iter_mut().enumerate() {
                        *b = pattern(offset + k as u64);
                    }
                    if let Err(e) = client.write_all(&chunk) {
                        return (offset, Some(format!("write at byte {offset}: {e}")));
                    }
                    offset += CHUNK;
                    let due = start
                        + Duration::from_secs_f64(offset as f64 / bytes_per_second.max(1) as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let _ = client.shutdown(Shutdown::Write);
                (offset, None)
            })
        };
        Ok(TcpTransfer {
            what: what.to_string(),
            stop,
            writer,
            reader,
        })
    }

    pub fn finish(self) -> TcpResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        let (bytes_written, werr) = self
            .writer
            .join()
            .unwrap_or((0, Some("the writer panicked".into())));
        errors.extend(werr);
        let (bytes_read, intact, rerr) =
            self.reader
                .join()
                .unwrap_or((0, false, Some("the reader panicked".into())));
        errors.extend(rerr);
        if bytes_read != bytes_written {
            errors.push(format!("{bytes_written} bytes written, {bytes_read} read"));
        }
        if !intact {
            errors.push("a byte read differs from the byte written".into());
        }
        TcpResult {
            what: self.what,
            bytes_written,
            bytes_read,
            intact,
            errors,
        }
    }
}

/// A short burst of datagrams at 1,000/s for `millis` on `path` (port `port`): (sent,
/// arrived). Checks that a chain carries traffic after it came back.
pub fn burst(path: &Path, port: u16, millis: u64) -> Result<(u32, u64)> {
    let stream = SeqStream::start("burst", path, port, 1000)?;
    std::thread::sleep(Duration::from_millis(millis));
    let r = stream.finish(Instant::now())?;
    Ok((r.sent, r.received))
}
