//! netfn's own traffic: warm-up, UDP pps from an AF_PACKET generator to a `recvmmsg` sink, and
//! UDP ping-pong latency.

use super::*;

pub(crate) fn udp_in(ns: &str, addr: SocketAddrV4) -> Result<UdpSocket> {
    in_netns(ns, || {
        UdpSocket::bind(addr).with_context(|| format!("bind {addr} in {ns}"))
    })
}

/// A UDP socket in namespace `ns`, bound to `from` (any port) and connected to `to` (the socket
/// keeps its namespace, so it connects from here).
pub(crate) fn udp_connected(ns: &str, from: Ipv4Addr, to: SocketAddrV4) -> Result<UdpSocket> {
    let s = udp_in(ns, SocketAddrV4::new(from, 0))?;
    s.connect(to)
        .with_context(|| format!("connect {from} in {ns} to {to}"))?;
    Ok(s)
}

/// A few echoes both ways, so every neighbour is resolved before anything is measured.
pub(in crate::bench) fn warm_up(t: &Topology) -> Result<()> {
    let (p50, _) = ping_pong(t, 50, Duration::from_secs(5))?;
    if p50.is_nan() {
        bail!("no echo came back");
    }
    Ok(())
}

pub(in crate::bench) struct Pps {
    pub(in crate::bench) delivered: f64,
    pub(in crate::bench) offered: f64,
    pub(in crate::bench) cpu_ns_per_packet: f64,
}

pub(in crate::bench) fn measure_pps(t: &Topology, seconds: f64) -> Result<Pps> {
    measure_pps_of(t, seconds, vec![udp_frame(t, PPS_PORT)])
}

/// [`measure_pps`] with the generator cycling through `frames` (one flow per distinct frame).
pub(in crate::bench) fn measure_pps_of(
    t: &Topology,
    seconds: f64,
    frames: Vec<Vec<u8>>,
) -> Result<Pps> {
    measure_pps_into(t, SocketAddrV4::new(t.dst_addr, PPS_PORT), seconds, frames)
}

/// [`measure_pps_of`] with the sink's socket bound to `sink` in the topology's sink namespace
/// (0.0.0.0 counts datagrams to every address the namespace owns, e.g. a load balancer's
/// backends).
pub(in crate::bench) fn measure_pps_into(
    t: &Topology,
    sink: SocketAddrV4,
    seconds: f64,
    frames: Vec<Vec<u8>>,
) -> Result<Pps> {
    measure_pps_after(t, sink, Duration::from_millis(300), seconds, frames)
}

/// [`measure_pps_into`] whose window starts after the generator has sent for `settle` (queues
/// filled, CPUs settled; or a connection table filled by the first frames).
pub(in crate::bench) fn measure_pps_after(
    t: &Topology,
    sink: SocketAddrV4,
    settle: Duration,
    seconds: f64,
    frames: Vec<Vec<u8>>,
) -> Result<Pps> {
    let sink = udp_in(&t.dst_ns, sink)?;
    set_rcvbuf(&sink, 64 << 20);
    sink.set_read_timeout(Some(Duration::from_millis(50)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));

    let sink_thread = {
        let (stop, received) = (stop.clone(), received.clone());
        thread::spawn(move || {
            pin_to(1);
            recv_loop(&sink, &stop, &received);
        })
    };
    let gen_thread = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let (ns, dev) = (t.src_ns.clone(), t.src_if.clone());
        thread::spawn(move || -> Result<()> {
            enter(&ns)?;
            pin_to(0);
            send_loop(&dev, &frames, &stop, &sent)
        })
    };

    // Let queues fill and the CPUs settle, then measure a window.
    thread::sleep(settle);
    let (r0, s0, (b0, _), t0) = (
        received.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        cpu_jiffies(),
        Instant::now(),
    );
    thread::sleep(Duration::from_secs_f64(seconds));
    let (r1, s1, (b1, _), t1) = (
        received.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        cpu_jiffies(),
        Instant::now(),
    );
    stop.store(true, Ordering::Relaxed);
    let gen_result = gen_thread
        .join()
        .map_err(|_| anyhow::anyhow!("generator panicked"))?;
    sink_thread
        .join()
        .map_err(|_| anyhow::anyhow!("sink panicked"))?;
    gen_result?;
    let secs = (t1 - t0).as_secs_f64();
    let delivered = (r1 - r0) as f64;
    let busy_secs = (b1.saturating_sub(b0)) as f64 / clock_ticks();
    Ok(Pps {
        delivered: delivered / secs,
        offered: (s1 - s0) as f64 / secs,
        cpu_ns_per_packet: if delivered > 0.0 {
            busy_secs * 1e9 / delivered
        } else {
            f64::NAN
        },
    })
}

pub(crate) fn set_rcvbuf(sock: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: valid fd and option value. SO_RCVBUFFORCE (root) ignores rmem_max.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Counts datagrams at the UDP socket until `stop`.
pub(in crate::bench) fn recv_loop(sock: &UdpSocket, stop: &AtomicBool, received: &AtomicU64) {
    let mut bufs = vec![[0u8; 64]; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: zeroed mmsghdr is valid; each points at its own iovec, alive for the loop.
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `msgs` holds BATCH valid headers; blocking with the socket's read timeout.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            received.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Sends `frames` out of `dev` (calling thread's namespace) as fast as it can, in turn, until
/// `stop`.
pub(in crate::bench) fn send_loop(
    dev: &str,
    frames: &[Vec<u8>],
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<()> {
    if frames.is_empty() {
        bail!("no frames to send");
    }
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: plain syscalls on a socket this function owns; every pointer handed to the
    // kernel points at live locals.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            bail!("no interface {dev}");
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // Protocol 0: this socket sends only, it receives nothing.
        if libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error()).context("bind AF_PACKET");
        }
        sendmmsg_loop(fd.as_raw_fd(), frames, stop, sent);
    }
    Ok(())
}

/// Sends `frames` on socket `fd` (bound and connected: no address per message) with
/// `sendmmsg`, BATCH at a time, in turn, until `stop`; errors (a full queue) only retry.
pub(in crate::bench) fn sendmmsg_loop(
    fd: std::os::fd::RawFd,
    frames: &[Vec<u8>],
    stop: &AtomicBool,
    sent: &AtomicU64,
) {
    if frames.is_empty() {
        return;
    }
    // SAFETY: every header handed to the kernel points at an iovec of `iovs`, which points at a
    // frame of `frames`; all outlive the loop.
    unsafe {
        // One iovec per frame; each batch's headers point at the next BATCH of them.
        let mut iovs: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
            .map(|_| {
                let mut m: libc::mmsghdr = std::mem::zeroed();
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut next = 0usize;
        while !stop.load(Ordering::Relaxed) {
            for m in msgs.iter_mut() {
                m.msg_hdr.msg_iov = &mut iovs[next];
                next = (next + 1) % iovs.len();
            }
            let n = libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, 0);
            if n > 0 {
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// An Ethernet + IPv4 + UDP frame from the topology's source to its sink (UDP checksum 0).
pub(in crate::bench) fn udp_frame(t: &Topology, port: u16) -> Vec<u8> {
    udp_frame_from(t, 40000, port)
}

/// [`udp_frame`] from source port `sport`.
pub(in crate::bench) fn udp_frame_from(t: &Topology, sport: u16, port: u16) -> Vec<u8> {
    udp_frame_between(
        t,
        SocketAddrV4::new(t.src_addr, sport),
        SocketAddrV4::new(t.dst_addr, port),
    )
}

/// A frame of the topology's generator (its MACs) with any IPv4 source and destination: to a
/// load balancer's VIP, or from many clients.
pub(in crate::bench) fn udp_frame_between(
    t: &Topology,
    src: SocketAddrV4,
    dst: SocketAddrV4,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_BYTES);
    f.extend_from_slice(&t.next_mac);
    f.extend_from_slice(&t.src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 8 + PPS_PAYLOAD) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&((8 + PPS_PAYLOAD) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0x5a; PPS_PAYLOAD]);
    f
}

pub(in crate::bench) fn measure_latency(t: &Topology, seconds: f64) -> Result<(f64, f64)> {
    ping_pong(t, usize::MAX, Duration::from_secs_f64(seconds))
}

/// Round trips of a 16-byte datagram, until `count` or `duration`; (p50, p99) in µs.
///
/// Both sides busy-poll non-blocking sockets on their own CPU (client CPU 0, echo CPU 1): no
/// sleeping, so the figure is the path itself, not how fast an idle virtual CPU wakes up (which
/// dominates blocking ping-pong between CPUs of a VM: tens of µs).
pub(in crate::bench) fn ping_pong(
    t: &Topology,
    count: usize,
    duration: Duration,
) -> Result<(f64, f64)> {
    let server = udp_in(&t.dst_ns, SocketAddrV4::new(t.dst_addr, PING_PORT))?;
    server.set_nonblocking(true)?;
    let client = udp_in(&t.src_ns, SocketAddrV4::new(t.src_addr, PING_PORT + 1))?;
    client.connect(SocketAddrV4::new(t.dst_addr, PING_PORT))?;
    client.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        thread::spawn(move || {
            pin_to(1);
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..n], from);
                } else {
                    std::hint::spin_loop();
                }
            }
        })
    };
    pin_to(0);
    let mut rtts = Vec::new();
    let payload = [0x42u8; 16];
    let mut buf = [0u8; 64];
    let start = Instant::now();
    let mut lost = 0usize;
    'rounds: while rtts.len() < count && start.elapsed() < duration && lost <= 3 {
        let t0 = Instant::now();
        client.send(&payload)?;
        loop {
            match client.recv(&mut buf) {
                Ok(16) => {
                    rtts.push(t0.elapsed().as_secs_f64() * 1e6);
                    continue 'rounds;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if t0.elapsed() > Duration::from_secs(1) {
                        lost += 1;
                        continue 'rounds;
                    }
                    std::hint::spin_loop();
                }
                Err(e) => return Err(e).context("ping-pong recv"),
            }
        }
    }
    unpin();
    stop.store(true, Ordering::Relaxed);
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))?;
    if rtts.is_empty() {
        bail!("no round trip completed ({lost} lost)");
    }
    rtts.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
    Ok((pct(0.50), pct(0.99)))
}

/// Lets the calling (main) thread run anywhere again.
pub(in crate::bench) fn unpin() {
    let cpus = online_cpus();
    // SAFETY: as in `pin_to`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cpus.min(libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
