//! The userspace endpoint's TUN I/O with offloads: it attaches to the persistent TUN device `up`
//! made, with `IFF_VNET_HDR` and `TUNSETOFFLOAD` (checksum, TSO for IPv4 and IPv6, and USO where
//! the kernel has it, Linux 6.2 on), as wireguard-go does. The kernel then hands over GSO
//! super-packets of up to 64 KiB in one read: [`TunRecv`] splits them into MTU-sized packets
//! and gives the device a batch per call. Decrypted packets go to a [`TunWriter`], which
//! coalesces the segments of each TCP flow (and UDP flow, with USO) into super-packets and
//! writes those, so a batch of 40 segments is a couple of writes instead of 40. netfn's batched
//! device hands it each decrypted batch whole; GotaTun's device, which hands packets over one
//! at a time, gets a [`TunSend`] ([`TunWriter::queued`]) that queues them to a writer task: it
//! takes every packet that is ready (after letting GotaTun's decrypting tasks run once, so that
//! it gets their whole batch; one alone is written then, no waiting).
//! Packet-level work is in [`super::tun_offload`].

use std::io;
use std::sync::Arc;

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use tokio::sync::mpsc;
use tun_rs::{AsyncDevice, GROTable};

use super::tun_offload::{self, HEADROOM, READ_BUFFER};

/// Packets at most in one batch, either way (wireguard-go's and tun-rs's batch size).
const BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;

/// Which offloads the TUN has on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// Checksum offload and TSO for IPv4 and IPv6 (`IFF_VNET_HDR` is on).
    pub tcp: bool,
    /// USO for IPv4 and IPv6.
    pub udp: bool,
}

impl std::fmt::Display for Offloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.tcp, self.udp) {
            (false, _) => f.write_str("none"),
            (true, false) => f.write_str("vnet_hdr, csum, tso4, tso6"),
            (true, true) => f.write_str("vnet_hdr, csum, tso4, tso6, uso4, uso6"),
        }
    }
}

/// Attaches to the TUN device `name` (in the current namespace) with offloads. Needs
/// CAP_NET_ADMIN (attaching to a persistent device); nothing after this does.
pub fn open(name: &str) -> io::Result<(TunWriter, TunRecv, Offloads)> {
    // tun-rs would make a device of that name where there is none: a bare one, without the
    // addresses and routes `up` gave the chain's, that would carry nothing.
    if nix::net::if_::if_nametoindex(name).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("there is no device {name} in the function's namespace"),
        ));
    }
    let dev = tun_rs::DeviceBuilder::new()
        .name(name)
        .offload(true)
        .inherit_enable_state()
        .build_async()?;
    let offloads = Offloads {
        tcp: dev.tcp_gso(),
        udp: dev.udp_gso(),
    };
    let mtu = dev.mtu()?;
    let dev = Arc::new(dev);
    let writer = TunWriter {
        dev: dev.clone(),
        bufs: Vec::with_capacity(BATCH),
        gro: GROTable::new(),
    };
    let recv = TunRecv {
        dev,
        raw: vec![0; READ_BUFFER],
        segments: Vec::new(),
        sizes: Vec::new(),
        batch: Vec::with_capacity(BATCH * 2),
        mtu: MtuWatcher::new(mtu),
    };
    Ok((writer, recv, offloads))
}

/// Writes batches of packets to the TUN, coalesced.
pub struct TunWriter {
    dev: Arc<AsyncDevice>,
    bufs: Vec<Vec<u8>>,
    gro: GROTable,
}

impl TunWriter {
    /// Writes `packets` (and empties it), coalesced, a batch of at most [`BATCH`] at a time.
    /// `Err` only when the device is gone; a write that fails otherwise is logged and its
    /// packets dropped, as a kernel device drops them.
    pub async fn write(&mut self, packets: &mut Vec<Packet<Ip>>) -> io::Result<()> {
        while !packets.is_empty() {
            let n = packets.len().min(BATCH);
            if self.bufs.len() < n {
                self.bufs.resize_with(n, Vec::new);
            }
            for (buf, packet) in self.bufs.iter_mut().zip(packets.drain(..n)) {
                tun_offload::stage(buf, &packet.into_bytes());
            }
            let written = self
                .dev
                .send_multiple(&mut self.gro, &mut self.bufs[..n], HEADROOM)
                .await;
            match written {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBADF | libc::EBADFD | libc::ENODEV)
                    ) =>
                {
                    tracing::error!("the TUN device is gone: {e}");
                    return Err(e);
                }
                Err(e) => tracing::debug!("a TUN write failed: {e}"),
            }
        }
        Ok(())
    }

    /// The TUN device's descriptor (readable: the other direction has packets to send).
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&**self.dev)
    }

    /// A sender that queues each packet to a writer task (started on the current tokio
    /// runtime), for a device that hands packets over one at a time.
    pub fn queued(self) -> TunSend {
        let (tx, rx) = mpsc::channel(BATCH * 8);
        tokio::spawn(write_loop(self, rx));
        TunSend { tx }
    }
}

/// The sending half: queues each packet to the writer task.
#[derive(Clone)]
pub struct TunSend {
    tx: mpsc::Sender<Packet<Ip>>,
}

impl IpSend for TunSend {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        self.tx
            .send(packet)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the TUN writer has stopped"))
    }
}

/// Writes what is queued, coalesced, until the queue closes or the device is gone.
async fn write_loop(mut writer: TunWriter, mut rx: mpsc::Receiver<Packet<Ip>>) {
    let mut queued = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut queued, BATCH).await == 0 {
            return;
        }
        // GotaTun hands decrypted packets over one at a time, through tasks of its own that
        // share this worker, so the first of a batch wakes this task while the rest are still
        // being decrypted. Let them run once, then take what they queued: a TCP batch is then
        // written in about half the writes (netfn to netfn, TCP 1 stream: 28 KB per write
        // instead of 17). One lone packet still goes at once after the yield.
        if queued.len() < BATCH {
            tokio::task::yield_now().await;
            while queued.len() < BATCH {
                let Ok(packet) = rx.try_recv() else { break };
                queued.push(packet);
            }
        }
        if writer.write(&mut queued).await.is_err() {
            return;
        }
    }
}

/// The receiving half: one or more reads per call, split into packets.
pub struct TunRecv {
    dev: Arc<AsyncDevice>,
    raw: Vec<u8>,
    segments: Vec<Segment>,
    sizes: Vec<usize>,
    batch: Vec<Packet<Ip>>,
    mtu: MtuWatcher,
}

/// A pool buffer that segments are split into.
struct Segment(Packet<[u8]>);

impl AsRef<[u8]> for Segment {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for Segment {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl TunRecv {
    /// Splits the `len` bytes read into `raw` into packets appended to the batch.
    fn take(&mut self, len: usize, pool: &PacketBufPool) {
        let raw = &mut self.raw[..len];
        let n = match tun_offload::split(raw, &mut self.segments, &mut self.sizes, || {
            Segment(pool.get())
        }) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("dropped a TUN read: {e}");
                return;
            }
        };
        for (Segment(mut packet), size) in self.segments.drain(..n).zip(&self.sizes) {
            packet.truncate(*size);
            if let Ok(packet) = packet.try_into_ip() {
                self.batch.push(packet);
            }
        }
    }
}

impl IpRecv for TunRecv {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        self.batch.clear();
        while self.batch.is_empty() {
            let len = self.dev.recv(&mut self.raw).await?;
            self.take(len, pool);
            // Then whatever else is ready, up to a batch.
            while self.batch.len() < BATCH {
                match self.dev.try_recv(&mut self.raw) {
                    Ok(len) => self.take(len, pool),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if self.batch.is_empty() => return Err(e),
                    Err(_) => break,
                }
            }
        }
        Ok(self.batch.drain(..))
    }

    fn mtu(&self) -> MtuWatcher {
        self.mtu.clone()
    }
}
