//! `#[repr(C)]` types shared by the eBPF programs (`no_std`, built for `bpfel-unknown-none`) and
//! userspace (`netfn-core`, with the `user` feature, which adds the `aya::Pod` impls).
//!
//! Every type here is plain data with a fixed layout: the eBPF side writes it into a map, the
//! userspace side reads the same bytes back. Change a layout only together with both sides.
#![cfg_attr(not(test), no_std)]

/// Name of the per-CPU hash map (`ifindex: u32` → [`IfCounters`]) filled by `nf_count`.
pub const IF_COUNTERS_MAP: &str = "NF_IF_COUNTERS";

/// Name of the TC classifier that counts packets and bytes per interface.
pub const COUNT_PROGRAM: &str = "nf_count";

/// Capacity of [`IF_COUNTERS_MAP`]: one entry per interface of a chain (a chain of 1000
/// functions has about 2000 interfaces), with room to spare.
pub const IF_COUNTERS_MAX_ENTRIES: u32 = 8192;

/// Packets and bytes seen on TC ingress of one interface (one CPU's share in the per-CPU map;
/// userspace sums the CPUs).
///
/// `bytes` counts `skb->len` at TC ingress, which includes the Ethernet header (14 bytes on a
/// veth) but not the FCS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfCounters {
    pub packets: u64,
    pub bytes: u64,
}

impl IfCounters {
    /// Adds `other` into `self` (wrapping, as kernel counters do).
    pub fn accumulate(&mut self, other: &IfCounters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

// SAFETY: `IfCounters` is `#[repr(C)]`, `Copy`, made of two `u64` and has no padding, so every
// bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for IfCounters {}

#[cfg(test)]
mod tests {
    use super::IfCounters;

    #[test]
    fn layout_is_two_u64_without_padding() {
        assert_eq!(core::mem::size_of::<IfCounters>(), 16);
        assert_eq!(core::mem::align_of::<IfCounters>(), 8);
    }

    #[test]
    fn accumulate_wraps() {
        let mut a = IfCounters {
            packets: u64::MAX,
            bytes: 10,
        };
        a.accumulate(&IfCounters {
            packets: 2,
            bytes: 5,
        });
        assert_eq!(
            a,
            IfCounters {
                packets: 1,
                bytes: 15
            }
        );
    }
}
