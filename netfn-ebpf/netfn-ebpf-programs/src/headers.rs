//! What the stages share about packet headers: lengths, the ICMP error types and TCP flags
//! they read, and the one's-complement arithmetic of incremental checksum updates.

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const IP_HLEN: usize = 20;
pub(crate) const ICMP_HLEN: usize = 8;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_RST: u8 = 0x04;

/// ICMP errors, which quote the packet they are about.
pub(crate) const ICMP_DEST_UNREACH: u8 = 3;
pub(crate) const ICMP_TIME_EXCEEDED: u8 = 11;
pub(crate) const ICMP_PARAMETER_PROBLEM: u8 = 12;

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
