//! What the stages share about packet headers: lengths, the ICMP error types and TCP flags
//! they read, and the one's-complement arithmetic of incremental checksum updates.

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const IP_HLEN: usize = 20;
/// An IPv4 header with the most options (IHL 15).
pub(crate) const IP_MAX_HLEN: usize = 60;
pub(crate) const ICMP_HLEN: usize = 8;

pub(crate) use netfn_common::teardown::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, bare_syn};

/// ICMP errors, which quote the packet they are about.
pub(crate) const ICMP_DEST_UNREACH: u8 = 3;
pub(crate) const ICMP_TIME_EXCEEDED: u8 = 11;
pub(crate) const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// The length of an IPv4 header from its first byte (version and IHL): 20 to 60 bytes, or 0
/// when it is no IPv4 header (another version, or an IHL under 5).
#[inline(always)]
pub(crate) fn ipv4_header_len(version_ihl: u8) -> usize {
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < IP_HLEN {
        return 0;
    }
    ihl
}

/// Folds a one's-complement sum to 16 bits and complements it.
#[inline(always)]
pub(crate) fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The sum of a packet-order u32 as two 16-bit words (in packet order).
#[inline(always)]
pub(crate) fn words(v: u32) -> u32 {
    (v & 0xffff) + (v >> 16)
}

/// The incremental update of RFC 1624 (eqn. 3), `HC' = ~(~HC + ~m + m')`: checksum `check` (as
/// the packet holds it) once the packet-order u32 `old` it covers (two 16-bit words) is `new`.
/// Several changes to one checksum are applied one after the other; the result is the same as
/// one update over all of them.
#[inline(always)]
pub(crate) fn replace32(check: u16, old: u32, new: u32) -> u16 {
    fold(u32::from(!check) + words(!old) + words(new))
}

/// [`replace32`] for one 16-bit word (a port, or a checksum the region covers).
#[inline(always)]
pub(crate) fn replace16(check: u16, old: u16, new: u16) -> u16 {
    fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// Where a packet stands in its IPv4 datagram (plain numbers: the verifier's view of an enum
/// with data in the stages' packet records proved fragile): not fragmented.
pub(crate) const WHOLE: u8 = 0;
/// The first fragment (offset 0, more to come): it carries the transport header.
pub(crate) const FIRST: u8 = 1;
/// A later fragment: no transport header, so no ports.
pub(crate) const LATER: u8 = 2;

/// [`WHOLE`], [`FIRST`] or [`LATER`], from an IPv4 header's flags and fragment offset (host order).
#[inline(always)]
pub(crate) fn fragment(flags: u16) -> u8 {
    match (flags & 0x1fff, flags & 0x2000 != 0) {
        (0, false) => WHOLE,
        (0, true) => FIRST,
        _ => LATER,
    }
}

/// The name all fragments of a datagram share (addresses and id in packet byte order).
#[inline(always)]
pub(crate) fn datagram(src: u32, dst: u32, id: u16, proto: u8) -> netfn_common::FragKey {
    netfn_common::FragKey {
        src,
        dst,
        id,
        proto,
        _pad: 0,
    }
}
