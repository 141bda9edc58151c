//! TUN offloads, the packet side: what one read of an `IFF_VNET_HDR` TUN returns (a virtio-net
//! header, then a packet that may be a GSO super-packet of many TCP or UDP segments) split into
//! the MTU-sized packets WireGuard encrypts one by one ([`split`]), and the staging of decrypted
//! packets for a coalescing write ([`stage`], then tun-rs's GRO: same flow, consecutive
//! sequence numbers, the flag rules of wireguard-go's `tun/offload_linux.go`, which tun-rs ports).
//! The segmentation itself (per-segment sequence number, IPv4 id, lengths and checksums) is
//! tun-rs's `gso_split`; this module checks the header the kernel wrote before handing it over,
//! and finishes the checksum of a single packet the kernel left partial. No I/O here: the unit
//! tests below check all of it against packets built by hand, with checksums computed
//! independently.

use tun_rs::{
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
    VIRTIO_NET_HDR_LEN, VirtioNetHdr,
};

/// Bytes in front of every packet written to the TUN: its virtio-net header.
pub const HEADROOM: usize = VIRTIO_NET_HDR_LEN;

/// The size of a read buffer: a header and the largest GSO packet.
pub const READ_BUFFER: usize = VIRTIO_NET_HDR_LEN + 65535;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the transport checksum is partial (the pseudo-header sum only).
const NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_ECN`: a flag on TCP GSO types.
const GSO_ECN: u8 = 0x80;

/// Why a read could not be split (the packet is dropped; the kernel wrote something it should not).
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("a TUN read of {0} bytes is shorter than its virtio-net header and an IP header")]
    Short(usize),
    #[error("unexpected virtio-net header {0:?} on a {1}-byte packet")]
    Header(VirtioNetHdr, usize),
    #[error("segmenting a GSO packet: {0}")]
    Segment(std::io::Error),
}

/// Splits `raw` (what one read returned: a virtio-net header and a packet) into the packets it
/// stands for, written at the start of `bufs[0..n]` with their lengths in `sizes[0..n]`; `bufs`
/// and `sizes` grow (with `new_buf`) to as many as are needed. Returns `n`.
pub fn split<B: AsRef<[u8]> + AsMut<[u8]>>(
    raw: &mut [u8],
    bufs: &mut Vec<B>,
    sizes: &mut Vec<usize>,
    mut new_buf: impl FnMut() -> B,
) -> Result<usize, SplitError> {
    if raw.len() < VIRTIO_NET_HDR_LEN + 20 {
        return Err(SplitError::Short(raw.len()));
    }
    let (head, packet) = raw.split_at_mut(VIRTIO_NET_HDR_LEN);
    let mut hdr = VirtioNetHdr::decode(head).map_err(SplitError::Segment)?;
    let len = packet.len();
    let bad = |hdr: VirtioNetHdr| SplitError::Header(hdr, len);
    let is_v6 = match packet[0] >> 4 {
        4 => false,
        6 => true,
        _ => return Err(bad(hdr)),
    };
    if hdr.gso_type == GSO_NONE {
        if hdr.flags & NEEDS_CSUM != 0 {
            finish_checksum(packet, hdr.csum_start.into(), hdr.csum_offset.into())
                .ok_or(bad(hdr))?;
        }
        ensure(bufs, sizes, 1, &mut new_buf);
        let out = bufs[0].as_mut().get_mut(..len).ok_or(bad(hdr))?;
        out.copy_from_slice(packet);
        sizes[0] = len;
        return Ok(1);
    }
    // The kernel's hdr_len can cover the whole first segment on the forwarding path: the
    // headers' length is csum_start (the IP header) plus the transport header's own.
    let start = usize::from(hdr.csum_start);
    let transport = match hdr.gso_type & !GSO_ECN {
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 => {
            let offset = *packet.get(start + 12).ok_or(bad(hdr))?;
            usize::from(offset >> 4) * 4
        }
        VIRTIO_NET_HDR_GSO_UDP_L4 => 8,
        _ => return Err(bad(hdr)),
    };
    let headers = start + transport;
    if hdr.gso_size == 0 || headers > len || transport < 8 {
        return Err(bad(hdr));
    }
    hdr.hdr_len = u16::try_from(headers).map_err(|_| bad(hdr))?;
    let segments = (len - headers).div_ceil(usize::from(hdr.gso_size)).max(1);
    ensure(bufs, sizes, segments, &mut new_buf);
    tun_rs::gso_split(packet, hdr, bufs, sizes, 0, is_v6).map_err(SplitError::Segment)
}

/// Grows `bufs` and `sizes` to `n` entries at least.
fn ensure<B>(bufs: &mut Vec<B>, sizes: &mut Vec<usize>, n: usize, new_buf: &mut impl FnMut() -> B) {
    while bufs.len() < n {
        bufs.push(new_buf());
    }
    if sizes.len() < bufs.len() {
        sizes.resize(bufs.len(), 0);
    }
}

/// Completes a partial transport checksum: the field at `start + offset` holds the
/// pseudo-header's sum; the checksum covers it and everything from `start` on.
fn finish_checksum(packet: &mut [u8], start: usize, offset: usize) -> Option<()> {
    let at = start.checked_add(offset)?;
    let field = packet.get_mut(at..at + 2)?;
    let initial = u16::from_be_bytes([field[0], field[1]]);
    field.copy_from_slice(&[0, 0]);
    let sum = !fold(sum_words(packet.get(start..)?, u32::from(initial)));
    packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Some(())
}

/// The ones'-complement sum of `data`'s 16-bit words (a last odd byte padded), plus `initial`.
fn sum_words(data: &[u8], initial: u32) -> u64 {
    let mut sum = u64::from(initial);
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Puts `packet` into `buf` behind room for its virtio-net header, as tun-rs's coalescing write
/// wants it (the header is filled in there: a GSO one for a coalesced flow, else all zero). The
/// buffer gets room for a whole super-packet: segments coalesce only into a buffer that can hold
/// them all (twice the headroom, as tun-rs checks).
pub fn stage(buf: &mut Vec<u8>, packet: &[u8]) {
    const ROOM: usize = 2 * HEADROOM + 65535;
    if buf.capacity() < ROOM {
        buf.reserve_exact(ROOM - buf.len());
    }
    buf.clear();
    buf.resize(HEADROOM, 0);
    buf.extend_from_slice(packet);
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- an independent reference: packets and checksums built from the RFCs, naively ----

    /// RFC 1071 checksum, one byte pair at a time, of the concatenation of `parts`.
    fn reference_checksum(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let hi = u32::from(bytes[i]);
            let lo = u32::from(*bytes.get(i + 1).unwrap_or(&0));
            sum += (hi << 8) | lo;
            sum = (sum & 0xffff) + (sum >> 16);
            i += 2;
        }
        !(sum as u16)
    }

    fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, len: usize) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(src);
        p.extend_from_slice(dst);
        if src.len() == 4 {
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        p
    }

    const V4_SRC: [u8; 4] = [10, 99, 0, 2];
    const V4_DST: [u8; 4] = [10, 85, 2, 2];
    const V6_SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const V6_DST: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];

    /// An IP header (v4 with id `id`, or v6) for `payload_len` bytes of protocol `proto`.
    fn ip_header(v6: bool, proto: u8, payload_len: usize, id: u16) -> Vec<u8> {
        if v6 {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(payload_len as u16).to_be_bytes());
            h.extend_from_slice(&[proto, 64]);
            h.extend_from_slice(&V6_SRC);
            h.extend_from_slice(&V6_DST);
            h
        } else {
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + payload_len) as u16).to_be_bytes());
            h.extend_from_slice(&id.to_be_bytes());
            h.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
            h.extend_from_slice(&V4_SRC);
            h.extend_from_slice(&V4_DST);
            let c = reference_checksum(&[&h]);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        }
    }

    fn addrs(v6: bool) -> (&'static [u8], &'static [u8]) {
        if v6 {
            (&V6_SRC, &V6_DST)
        } else {
            (&V4_SRC, &V4_DST)
        }
    }

    /// A TCP segment (header with a timestamp option: 32 bytes) with full, correct checksums.
    fn tcp_packet(v6: bool, seq: u32, ack: u32, flags: u8, payload: &[u8], id: u16) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&40000u16.to_be_bytes());
        t.extend_from_slice(&7000u16.to_be_bytes());
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&ack.to_be_bytes());
        t.extend_from_slice(&[8 << 4, flags]);
        t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        t.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        t.extend_from_slice(payload);
        let (s, d) = addrs(v6);
        let c = reference_checksum(&[&pseudo_header(s, d, 6, t.len()), &t]);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        let mut p = ip_header(v6, 6, t.len(), id);
        p.extend_from_slice(&t);
        p
    }

    fn udp_packet(v6: bool, payload: &[u8], id: u16) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&40001u16.to_be_bytes());
        u.extend_from_slice(&7001u16.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        let (s, d) = addrs(v6);
        let c = reference_checksum(&[&pseudo_header(s, d, 17, u.len()), &u]);
        u[6..8].copy_from_slice(&c.to_be_bytes());
        let mut p = ip_header(v6, 17, u.len(), id);
        p.extend_from_slice(&u);
        p
    }

    /// Checks a packet's IPv4 header checksum and its TCP/UDP checksum from scratch; returns
    /// (ip header length, transport offset).
    fn assert_checksums(p: &[u8]) {
        let v6 = p[0] >> 4 == 6;
        let (ihl, proto, total) = if v6 {
            (40, p[6], 40 + usize::from(u16::from_be_bytes([p[4], p[5]])))
        } else {
            assert_eq!(reference_checksum(&[&p[..20]]), 0, "IPv4 header checksum");
            (20, p[9], usize::from(u16::from_be_bytes([p[2], p[3]])))
        };
        assert_eq!(total, p.len(), "IP length field");
        let (s, d) = if v6 {
            (&p[8..24], &p[24..40])
        } else {
            (&p[12..16], &p[16..20])
        };
        let l4 = &p[ihl..];
        assert_eq!(
            reference_checksum(&[&pseudo_header(s, d, proto, l4.len()), l4]),
            0,
            "transport checksum of a {}-byte packet",
            p.len()
        );
    }

    /// What the kernel hands over for a TSO/USO super-packet: the transport checksum field
    /// holds the pseudo-header sum for the whole packet (CHECKSUM_PARTIAL), lengths cover all.
    fn gso_read(v6: bool, udp: bool, payload: &[u8], gso_size: u16, hdr_len_lie: bool) -> Vec<u8> {
        let (s, d) = addrs(v6);
        let mut p = if udp {
            udp_packet(v6, payload, 100)
        } else {
            tcp_packet(v6, 1000, 5, 0x18, payload, 100)
        };
        let ihl = if v6 { 40 } else { 20 };
        let (proto, field) = if udp { (17, ihl + 6) } else { (6, ihl + 16) };
        let partial = !reference_checksum(&[&pseudo_header(s, d, proto, p.len() - ihl)]);
        p[field..field + 2].copy_from_slice(&partial.to_be_bytes());
        let transport = if udp { 8 } else { 32 };
        let hdr = VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type: match (udp, v6) {
                (true, _) => VIRTIO_NET_HDR_GSO_UDP_L4,
                (false, false) => VIRTIO_NET_HDR_GSO_TCPV4,
                (false, true) => VIRTIO_NET_HDR_GSO_TCPV6,
            },
            // On the forwarding path the kernel may claim the whole first segment.
            hdr_len: if hdr_len_lie {
                (ihl + transport) as u16 + gso_size
            } else {
                (ihl + transport) as u16
            },
            gso_size,
            csum_start: ihl as u16,
            csum_offset: if udp { 6 } else { 16 },
        };
        let mut raw = vec![0u8; HEADROOM];
        hdr.encode(&mut raw).expect("encode");
        raw.extend_from_slice(&p);
        raw
    }

    fn split_all(raw: &mut [u8]) -> Vec<Vec<u8>> {
        let mut bufs: Vec<Vec<u8>> = Vec::new();
        let mut sizes = Vec::new();
        let n = split(raw, &mut bufs, &mut sizes, || vec![0u8; 2048]).expect("split");
        (0..n).map(|i| bufs[i][..sizes[i]].to_vec()).collect()
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_tcp_super_packet_becomes_mss_segments_with_their_own_seq_ids_and_checksums() {
        for v6 in [false, true] {
            for lie in [false, true] {
                let data = payload(1360 * 3 + 500);
                let segs = split_all(&mut gso_read(v6, false, &data, 1360, lie));
                assert_eq!(segs.len(), 4, "v6 {v6}");
                let ihl = if v6 { 40 } else { 20 };
                let mut joined = Vec::new();
                for (i, s) in segs.iter().enumerate() {
                    assert_checksums(s);
                    let seq = u32::from_be_bytes([s[ihl + 4], s[ihl + 5], s[ihl + 6], s[ihl + 7]]);
                    assert_eq!(seq, 1000 + 1360 * i as u32, "seq of segment {i}");
                    if !v6 {
                        assert_eq!(u16::from_be_bytes([s[4], s[5]]), 100 + i as u16, "IP id");
                    }
                    // PSH only on the last segment, as the kernel's own segmentation does.
                    let psh = s[ihl + 13] & 0x08 != 0;
                    assert_eq!(psh, i == segs.len() - 1, "PSH of segment {i}");
                    joined.extend_from_slice(&s[ihl + 32..]);
                }
                assert_eq!(joined, data, "the payload, in order");
                assert_eq!(segs[3].len(), ihl + 32 + 500);
            }
        }
    }

    #[test]
    fn a_udp_super_packet_becomes_datagrams() {
        for v6 in [false, true] {
            let data = payload(1000 * 2 + 10);
            let segs = split_all(&mut gso_read(v6, true, &data, 1000, false));
            assert_eq!(segs.len(), 3);
            let ihl = if v6 { 40 } else { 20 };
            for (i, s) in segs.iter().enumerate() {
                assert_checksums(s);
                let want = &data[i * 1000..(i * 1000 + 1000).min(data.len())];
                assert_eq!(&s[ihl + 8..], want);
                assert_eq!(
                    usize::from(u16::from_be_bytes([s[ihl + 4], s[ihl + 5]])),
                    8 + want.len(),
                    "UDP length"
                );
            }
        }
    }

    #[test]
    fn a_single_packet_with_a_partial_checksum_is_completed() {
        for v6 in [false, true] {
            let mut p = tcp_packet(v6, 7, 9, 0x18, b"hello, tunnel", 3);
            let ihl = if v6 { 40 } else { 20 };
            let (s, d) = addrs(v6);
            let partial = !reference_checksum(&[&pseudo_header(s, d, 6, p.len() - ihl)]);
            p[ihl + 16..ihl + 18].copy_from_slice(&partial.to_be_bytes());
            let hdr = VirtioNetHdr {
                flags: NEEDS_CSUM,
                csum_start: ihl as u16,
                csum_offset: 16,
                ..Default::default()
            };
            let mut raw = vec![0u8; HEADROOM];
            hdr.encode(&mut raw).expect("encode");
            raw.extend_from_slice(&p);
            let segs = split_all(&mut raw);
            assert_eq!(segs.len(), 1);
            assert_checksums(&segs[0]);
            // A packet without offload flags passes unchanged (odd length too).
            let plain = udp_packet(v6, b"odd", 4);
            let mut raw = vec![0u8; HEADROOM];
            raw.extend_from_slice(&plain);
            assert_eq!(split_all(&mut raw), vec![plain]);
        }
    }

    #[test]
    fn nonsense_from_the_kernel_is_refused_not_trusted() {
        let mut short = vec![0u8; HEADROOM + 4];
        assert!(matches!(
            split(
                &mut short,
                &mut Vec::<Vec<u8>>::new(),
                &mut Vec::new(),
                Vec::new
            ),
            Err(SplitError::Short(_))
        ));
        let mut zero_gso = gso_read(false, false, &payload(3000), 1360, false);
        zero_gso[4..6].copy_from_slice(&[0, 0]);
        assert!(
            split(&mut zero_gso, &mut Vec::new(), &mut Vec::new(), || vec![
                0u8;
                2048
            ])
            .is_err()
        );
        // A TCP GSO type on an IPv6 packet's IPv4 twin.
        let mut wrong = gso_read(false, false, &payload(3000), 1360, false);
        wrong[1] = VIRTIO_NET_HDR_GSO_TCPV6;
        assert!(
            split(&mut wrong, &mut Vec::new(), &mut Vec::new(), || vec![
                0u8;
                2048
            ])
            .is_err()
        );
    }

    // ---- coalescing: the decrypted packets of one write, through tun-rs's GRO ----

    /// Stages `packets` and runs the GRO a write runs; returns what would be written (virtio
    /// header decoded, packet).
    fn coalesce(packets: &[Vec<u8>], udp: bool) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        let mut bufs: Vec<Vec<u8>> = packets
            .iter()
            .map(|p| {
                let mut b = Vec::new();
                stage(&mut b, p);
                b
            })
            .collect();
        let mut to_write = Vec::new();
        tun_rs::handle_gro(
            &mut bufs,
            HEADROOM,
            &mut Default::default(),
            &mut Default::default(),
            udp,
            &mut to_write,
        )
        .expect("gro");
        to_write
            .into_iter()
            .map(|i| {
                let hdr = VirtioNetHdr::decode(&bufs[i]).expect("header");
                (hdr, bufs[i][HEADROOM..].to_vec())
            })
            .collect()
    }

    /// What the kernel would make of a written packet: segments by `gso_size` (the same split
    /// as a read), or the packet itself.
    fn as_kernel_sees_it(hdr: VirtioNetHdr, packet: &[u8]) -> Vec<Vec<u8>> {
        let mut raw = vec![0u8; HEADROOM];
        hdr.encode(&mut raw).expect("encode");
        raw.extend_from_slice(packet);
        split_all(&mut raw)
    }

    #[test]
    fn consecutive_segments_of_one_flow_are_written_as_one_gso_packet() {
        for v6 in [false, true] {
            let data = payload(1300 * 5);
            let packets: Vec<Vec<u8>> = (0..5)
                .map(|i| {
                    let flags = if i == 4 { 0x18 } else { 0x10 };
                    let chunk = &data[i * 1300..(i + 1) * 1300];
                    tcp_packet(v6, 1 + 1300 * i as u32, 77, flags, chunk, 10 + i as u16)
                })
                .collect();
            let out = coalesce(&packets, false);
            assert_eq!(out.len(), 1, "v6 {v6}: one super-packet");
            let (hdr, p) = &out[0];
            let want = if v6 {
                VIRTIO_NET_HDR_GSO_TCPV6
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4
            };
            assert_eq!(hdr.gso_type, want);
            assert_eq!(hdr.gso_size, 1300);
            assert_eq!(hdr.flags & NEEDS_CSUM, NEEDS_CSUM);
            // Segmented again (as the kernel will), it gives back the very packets that went in,
            // checksums included (the IPv4 ids ascend as they did).
            let back = as_kernel_sees_it(*hdr, p);
            assert_eq!(back.len(), 5);
            for (b, orig) in back.iter().zip(&packets) {
                assert_checksums(b);
                assert_eq!(b, orig);
            }
        }
    }

    #[test]
    fn packets_that_must_not_merge_are_written_alone_with_a_zero_header() {
        let a = tcp_packet(false, 1, 5, 0x10, &payload(1000), 1);
        // A gap in the sequence, another ack, a SYN, a different flow (UDP without USO).
        let gap = tcp_packet(false, 5000, 5, 0x10, &payload(1000), 2);
        let other_ack = tcp_packet(false, 1001, 6, 0x10, &payload(1000), 3);
        let syn = tcp_packet(false, 2001, 5, 0x02, &[], 4);
        let udp1 = udp_packet(false, &payload(500), 5);
        let udp2 = udp_packet(false, &payload(500), 6);
        let packets = vec![a, gap, other_ack, syn, udp1, udp2];
        let out = coalesce(&packets, false);
        assert_eq!(out.len(), packets.len(), "nothing merged");
        for ((hdr, p), orig) in out.iter().zip(&packets) {
            assert_eq!(p, orig);
            if hdr.gso_type == GSO_NONE && hdr.flags == 0 {
                assert_checksums(p);
            } else {
                // A lone TCP packet may go out with a partial checksum: the kernel's result is
                // the original.
                assert_eq!(&as_kernel_sees_it(*hdr, p), &vec![orig.clone()]);
            }
        }
    }

    #[test]
    fn udp_datagrams_of_one_flow_merge_only_with_uso() {
        let packets: Vec<Vec<u8>> = (0..4).map(|i| udp_packet(true, &payload(800), i)).collect();
        let out = coalesce(&packets, true);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.gso_type, VIRTIO_NET_HDR_GSO_UDP_L4);
        let back = as_kernel_sees_it(out[0].0, &out[0].1);
        assert_eq!(back, packets);
        assert_eq!(coalesce(&packets, false).len(), 4);
    }
}
