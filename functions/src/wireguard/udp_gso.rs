//! UDP GSO, the planning side: which encrypted datagrams of one send batch go out together as
//! one UDP GSO message (`UDP_SEGMENT`: the kernel sends the message as datagrams of the segment
//! size, one skb through the stack instead of one per datagram). A message holds consecutive
//! datagrams to one destination, all of the first one's length but the last, which may be
//! shorter; at most [`MAX_SEGMENTS`] of them and [`max_payload`] bytes in all (the kernel's
//! limits). The same rules as wireguard-go's `coalesceMessages`. No I/O here: the socket side is
//! [`super::udp_io`].

use std::net::SocketAddr;

/// Datagrams in one GSO message at most (the kernel's `UDP_MAX_SEGMENTS` before Linux 6.10 is
/// 64; later kernels take 128).
pub const MAX_SEGMENTS: usize = 64;

/// The bytes of UDP payload one message may carry toward `to`: what fits one IP datagram.
pub fn max_payload(to: &SocketAddr) -> usize {
    match to {
        SocketAddr::V4(_) => 65535 - 20 - 8,
        SocketAddr::V6(_) => 65535 - 8,
    }
}

/// One message of a send batch: datagrams `start..end` of the batch, to their common
/// destination; `segment` is the GSO segment size when it holds more than one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub start: usize,
    pub end: usize,
    pub segment: Option<u16>,
}

/// Appends to `out` the messages the batch of datagrams `(length, destination)` goes out as:
/// with `gso`, consecutive datagrams merge under the rules above; without, one message each.
pub fn plan(
    datagrams: impl IntoIterator<Item = (usize, SocketAddr)>,
    gso: bool,
    out: &mut Vec<Message>,
) {
    // The open message: its destination, segment size, bytes so far, and whether it is closed
    // to more (its last datagram was shorter than the segment).
    let mut open: Option<(SocketAddr, usize, usize, bool)> = None;
    for (i, (len, to)) in datagrams.into_iter().enumerate() {
        if let (Some((dest, segment, bytes, closed)), Some(last)) = (&mut open, out.last_mut()) {
            let fits = gso
                && !*closed
                && *dest == to
                && len > 0
                && len <= *segment
                && last.end - last.start < MAX_SEGMENTS
                && *bytes + len <= max_payload(&to);
            if fits {
                last.end = i + 1;
                // u16: a segment never exceeds max_payload, checked when the message opened.
                last.segment = u16::try_from(*segment).ok();
                *bytes += len;
                *closed = len < *segment;
                continue;
            }
        }
        out.push(Message {
            start: i,
            end: i + 1,
            segment: None,
        });
        // A datagram too long to be a segment (or empty) goes alone and closes its message.
        let closed = len == 0 || u16::try_from(len).is_err() || len > max_payload(&to);
        open = Some((to, len, len, closed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn planned(datagrams: &[(usize, &str)], gso: bool) -> Vec<(usize, usize, Option<u16>)> {
        let mut out = Vec::new();
        plan(datagrams.iter().map(|&(l, a)| (l, addr(a))), gso, &mut out);
        out.iter().map(|m| (m.start, m.end, m.segment)).collect()
    }

    const A: &str = "10.0.0.1:51820";
    const B: &str = "10.0.0.2:51820";

    #[test]
    fn equal_datagrams_to_one_peer_become_one_message() {
        assert_eq!(planned(&[(128, A); 5], true), vec![(0, 5, Some(128))]);
        // Without GSO, each its own.
        assert_eq!(
            planned(&[(128, A); 3], false),
            vec![(0, 1, None), (1, 2, None), (2, 3, None)]
        );
        // A single datagram carries no segment size.
        assert_eq!(planned(&[(128, A)], true), vec![(0, 1, None)]);
    }

    #[test]
    fn a_shorter_datagram_ends_its_message_and_a_longer_one_starts_the_next() {
        assert_eq!(
            planned(
                &[
                    (1000, A),
                    (1000, A),
                    (300, A),
                    (1000, A),
                    (1200, A),
                    (1200, A)
                ],
                true
            ),
            vec![(0, 3, Some(1000)), (3, 4, None), (4, 6, Some(1200))]
        );
    }

    #[test]
    fn another_destination_starts_another_message() {
        assert_eq!(
            planned(&[(100, A), (100, A), (100, B), (100, B), (100, A)], true),
            vec![(0, 2, Some(100)), (2, 4, Some(100)), (4, 5, None)]
        );
        // The same address in the other family is another destination.
        assert_eq!(
            planned(&[(100, A), (100, "[::ffff:10.0.0.1]:51820")], true),
            vec![(0, 1, None), (1, 2, None)]
        );
    }

    #[test]
    fn the_kernels_limits_hold() {
        // 64 segments at most.
        let many = vec![(100, A); MAX_SEGMENTS * 2 + 1];
        assert_eq!(
            planned(&many, true),
            vec![(0, 64, Some(100)), (64, 128, Some(100)), (128, 129, None)]
        );
        // No more bytes than one IPv4 datagram carries: 43 × 1500 = 64,500 fit, a 44th not.
        let big = vec![(1500, A); 50];
        assert_eq!(
            planned(&big, true),
            vec![(0, 43, Some(1500)), (43, 50, Some(1500))]
        );
        // Empty datagrams and datagrams too long to be segments go alone.
        assert_eq!(
            planned(&[(0, A), (0, A), (70000, A), (70000, A)], true),
            vec![(0, 1, None), (1, 2, None), (2, 3, None), (3, 4, None)]
        );
    }

    #[test]
    fn every_datagram_is_in_exactly_one_message_in_order() {
        // A pseudo-random batch: lengths and destinations drawn from a small set.
        let mut x: u32 = 12345;
        let mut batch = Vec::new();
        for _ in 0..500 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let len = [60usize, 128, 128, 128, 1452, 1452, 0][(x >> 8) as usize % 7];
            let to = if (x >> 20).is_multiple_of(5) { B } else { A };
            batch.push((len, to));
        }
        let out = planned(&batch, true);
        let mut next = 0;
        for (start, end, segment) in out {
            assert_eq!(start, next, "contiguous");
            assert!(end > start && end - start <= MAX_SEGMENTS);
            let msg = &batch[start..end];
            assert!(msg.iter().all(|&(_, to)| to == msg[0].1), "one destination");
            let total: usize = msg.iter().map(|&(l, _)| l).sum();
            assert!(total <= max_payload(&addr(msg[0].1)));
            match segment {
                None => assert_eq!(end - start, 1),
                Some(s) => {
                    let s = usize::from(s);
                    assert_eq!(msg[0].0, s);
                    // All but the last exactly the segment size, the last at most.
                    assert!(msg[..msg.len() - 1].iter().all(|&(l, _)| l == s));
                    assert!(msg[msg.len() - 1].0 <= s && msg[msg.len() - 1].0 > 0);
                }
            }
            next = end;
        }
        assert_eq!(next, batch.len());
    }
}
