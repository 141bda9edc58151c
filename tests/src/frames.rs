//! Ethernet/IPv4 frames built by hand, well-formed or deliberately broken, and the checksum
//! checks a receiver would make. The malformed-frame tests feed them to every hop of a chain.

use std::net::Ipv4Addr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// The addresses of a frame on one link.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// The one's complement sum of `data` folded to 16 bits (RFC 1071), not inverted.
pub fn sum16(data: &[u8], mut acc: u32) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    u32::from(sum16(&p, 0))
}

/// An Ethernet header.
pub fn ethernet(link: &Link, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&link.dst_mac);
    f.extend_from_slice(&link.src_mac);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4 header of `ihl` words (options are NOPs) for `payload_len` bytes of `proto`,
/// with a correct checksum.
pub fn ipv4(link: &Link, proto: u8, ihl: u8, payload_len: usize, frag: u16) -> Vec<u8> {
    let hlen = usize::from(ihl) * 4;
    let mut h = vec![0u8; hlen.max(20)];
    h[0] = 0x40 | (ihl & 0x0f);
    h[2..4].copy_from_slice(&((hlen + payload_len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&link.src.octets());
    h[16..20].copy_from_slice(&link.dst.octets());
    for b in h.iter_mut().skip(20) {
        *b = 1; // NOP options
    }
    h.truncate(hlen.max(20));
    set_ipv4_checksum(&mut h);
    h
}

/// Recomputes the checksum of the IPv4 header `h` (as long as its IHL says, or all of `h`).
pub fn set_ipv4_checksum(h: &mut [u8]) {
    let hlen = (usize::from(h[0] & 0x0f) * 4).clamp(20, h.len());
    h[10..12].copy_from_slice(&[0, 0]);
    let c = !sum16(&h[..hlen], 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// A UDP header and payload with a correct checksum.
pub fn udp(link: &Link, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = !sum16(&u, pseudo_sum(link.src, link.dst, UDP, len));
    u[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    u
}

/// A TCP header of `doff` words (the data offset field; at least 20 bytes are written) with
/// `flags` and a correct checksum.
pub fn tcp(link: &Link, sport: u16, dport: u16, flags: u8, doff: u8) -> Vec<u8> {
    let mut t = vec![0u8; (usize::from(doff) * 4).max(20)];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[12] = doff << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    for b in t.iter_mut().skip(20) {
        *b = 1; // NOP options
    }
    let c = !sum16(&t, pseudo_sum(link.src, link.dst, TCP, t.len()));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// An ICMP echo request with a correct checksum.
pub fn icmp_echo() -> Vec<u8> {
    let mut i = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'n', b'f'];
    let c = !sum16(&i, 0);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    i
}

/// A whole Ethernet + IPv4 + `l4` frame.
pub fn ipv4_frame(link: &Link, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = ethernet(link, ETH_P_IP);
    f.extend(ipv4(link, proto, 5, l4.len(), 0));
    f.extend_from_slice(l4);
    f
}

/// What is wrong with the checksums of an Ethernet + IPv4 frame, if anything: the IPv4 header
/// checksum, and for an unfragmented TCP, UDP or ICMP packet that is all there, its own.
pub fn checksum_problem(frame: &[u8]) -> Option<String> {
    if frame.len() < 34 || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IP {
        return None;
    }
    let ip = &frame[14..];
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    if hlen < 20 || ip.len() < hlen {
        return None;
    }
    if sum16(&ip[..hlen], 0) != 0xffff {
        return Some("IPv4 header checksum".into());
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    if frag != 0 || total > ip.len() || total < hlen {
        return None;
    }
    let l4 = &ip[hlen..total];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let ok = match ip[9] {
        UDP if l4.len() >= 8 => {
            u16::from_be_bytes([l4[6], l4[7]]) == 0
                || sum16(l4, pseudo_sum(src, dst, UDP, l4.len())) == 0xffff
        }
        TCP if l4.len() >= 20 => sum16(l4, pseudo_sum(src, dst, TCP, l4.len())) == 0xffff,
        ICMP if l4.len() >= 4 => sum16(l4, 0) == 0xffff,
        _ => true,
    };
    (!ok).then(|| format!("protocol {} checksum", ip[9]))
}

/// Recomputes the TCP or UDP checksum of an Ethernet + IPv4 frame over what its headers say,
/// after a test changed a header field.
pub fn set_l4_checksum(frame: &mut [u8]) {
    let ip = 14;
    let hlen = usize::from(frame[ip] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
    let proto = frame[ip + 9];
    let src = Ipv4Addr::new(
        frame[ip + 12],
        frame[ip + 13],
        frame[ip + 14],
        frame[ip + 15],
    );
    let dst = Ipv4Addr::new(
        frame[ip + 16],
        frame[ip + 17],
        frame[ip + 18],
        frame[ip + 19],
    );
    let l4 = &mut frame[ip + hlen..ip + total];
    let at = match proto {
        TCP => 16,
        UDP => 6,
        _ => return,
    };
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let c = !sum16(l4, pseudo_sum(src, dst, proto, l4.len()));
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Sends `frame` as it is out of interface `ifname` of the calling thread's namespace (a
/// packet socket: no stack, no checks of ours).
pub fn inject(ifname: &str, frame: &[u8]) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let name = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
    // SAFETY: a plain C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: valid buffer and address of the stated sizes.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            0,
            &to as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
