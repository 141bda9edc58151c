//! `#[repr(C)]` types shared by the eBPF programs (`no_std`, built for `bpfel-unknown-none`) and
//! userspace (`netfn-core`, with the `user` feature, which adds the `aya::Pod` impls).
//!
//! Every type here is plain data with a fixed layout: the eBPF side writes it into a map, the
//! userspace side reads the same bytes back. Change a layout only together with both sides.
#![cfg_attr(not(test), no_std)]

pub mod firewall;
pub mod lb;
pub mod teardown;

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

// ---------------------------------------------------------------------------------------------
// The forwarder (fast path): TC (`nf_fwd_tc`) and XDP (`nf_fwd_xdp`, `nf_xdp_pass`).
// ---------------------------------------------------------------------------------------------

/// Name of the TC ingress forwarder program.
pub const FWD_TC_PROGRAM: &str = "nf_fwd_tc";
/// Name of the XDP forwarder program.
pub const FWD_XDP_PROGRAM: &str = "nf_fwd_xdp";
/// Name of the XDP program that only passes frames up (on every veth that receives redirects but
/// forwards nothing itself: the endpoints' interfaces).
pub const XDP_PASS_PROGRAM: &str = "nf_xdp_pass";

/// Name of the forwarding table (`Array<FwdRow>`), indexed by `ifindex - FWD_IFINDEX_BASE` of
/// the interface a packet arrived on.
pub const FWD_TABLE_MAP: &str = "NF_FWD";
/// Name of the per-function, per-direction counters (`PerCpuArray<FnCounters>`), indexed by
/// [`FwdEntry::counter_slot`] (`function * 2 + direction`).
pub const FN_COUNTERS_MAP: &str = "NF_FN_COUNTERS";
/// Name of the counters of packets that arrived on an interface without a valid table entry
/// (`PerCpuArray<FnCounters>` of one element).
pub const FWD_UNKNOWN_MAP: &str = "NF_FWD_UNKNOWN";
/// Name of the XDP devmap, indexed like [`FWD_TABLE_MAP`]; the value at the index of interface
/// `i` is `i`'s ifindex (in its own namespace).
pub const FWD_DEVMAP: &str = "NF_FWD_DEVMAP";

/// The ifindex of a chain's first interface (`netfn_core::plan::names::IFINDEX_BASE`): chain
/// interfaces have `FWD_IFINDEX_BASE + 2 * link + side`, so a plain array indexed by
/// `ifindex - FWD_IFINDEX_BASE` holds the table.
pub const FWD_IFINDEX_BASE: u32 = 0x4e46_0000;
/// `max_entries` of the forwarder maps in the object; userspace sizes each chain's maps at load
/// time (`EbpfLoader::map_max_entries`) from the chain's plan (which leaves room for functions a
/// live apply adds).
pub const FWD_TABLE_DEFAULT_ENTRIES: u32 = 2;

/// [`FwdEntry::flags`]: the entry is filled in (a zeroed array element is not).
pub const FWD_VALID: u32 = 1;
/// [`FwdEntry::flags`]: the function has a per-packet stage of its kind (a firewall, a load
/// balancer): a packet the forwarder would forward is handed to the program at the function's
/// slot of [`STAGES_MAP`] (a tail call), which decides and forwards it. Without the flag the
/// forwarder forwards by itself (a `forward` function pays nothing for the seam).
pub const FWD_STAGE: u32 = 2;

/// [`FwdEntry::flags`]: the function's own IP stack forwards (a kind whose packets must cross
/// it, such as a VPN endpoint): a packet the forwarder would forward goes up the stack instead,
/// which routes it (the namespace has IP forwarding on) and decrements the TTL itself.
pub const FWD_STACK: u32 = 4;

/// Name of the stage programs of a chain's functions (`ProgramArray`), indexed by function
/// slot (`counter_slot >> 1`). A tail call into an empty element fails, and the forwarder drops
/// the packet as [`DROP_NO_STAGE`]: a function whose stage is not loaded never passes traffic
/// unchecked.
pub const STAGES_MAP: &str = "NF_STAGES";

/// Name of the sources a function accepts besides its neighbour and the subnet it faces
/// (`LpmTrie<SourceKey, u8>`): the sources other functions put on packets (a load balancer's VIP,
/// a VPN's decapsulated clients). Consulted only when the subnet check fails, so ordinary
/// traffic never pays for it.
pub const FWD_SOURCES_MAP: &str = "NF_FWD_SOURCES";
/// `max_entries` of [`FWD_SOURCES_MAP`] (an LPM trie allocates per entry, not up front).
pub const FWD_SOURCES_MAX: u32 = 65_536;

/// The data of a [`FWD_SOURCES_MAP`] key: a function's counter slot (`function * 2 +
/// direction`, big-endian so that it is the key's leading 32 bits) then the IPv4 source (network
/// byte order). A prefix `p/len` allowed at `slot` has prefix length `32 + len`; the forwarder
/// looks up the full 64 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub slot_be: u32,
    pub addr: u32,
}

/// Directions, the low bit of [`FwdEntry::counter_slot`].
pub const DIR_FORWARD: u32 = 0;
pub const DIR_REVERSE: u32 = 1;

/// What the forwarder does with a packet that arrives on one function interface.
///
/// Addresses are in network byte order (as in the packet), so the hot path compares without
/// swapping. Layout: 8 × u32 then 12 × u16; 56 bytes, 4-byte aligned, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FwdEntry {
    /// [`FWD_VALID`] when filled in.
    pub flags: u32,
    /// The function's other interface, in the same namespace: TC `bpf_redirect_peer` target (the
    /// packet lands on the ingress of its veth peer, the next hop's interface); XDP devmap key is
    /// `redirect_ifindex - FWD_IFINDEX_BASE`. 0: no next hop (dropped as no-route).
    pub redirect_ifindex: u32,
    /// Index into [`FN_COUNTERS_MAP`]: `function * 2 + direction`.
    pub counter_slot: u32,
    /// The wired neighbour's address on this link (ARP sender IP; allowed IPv4 source).
    pub peer_addr: u32,
    /// Allowed IPv4 sources besides `peer_addr`: `src & allowed_mask == allowed_net` (the
    /// ingress endpoint's subnet on the forward side, the egress subnet on the reverse side).
    pub allowed_net: u32,
    pub allowed_mask: u32,
    /// The function's own interface addresses: packets to them go to the function's stack.
    pub local_addrs: [u32; 2],
    /// This interface's MAC: only unicast frames to it are forwarded (others go to the stack).
    /// MACs are kept as 16-bit words in packet byte order ([`mac_words`]), so the program
    /// compares and writes them with three 2-byte accesses (Ethernet fields are 2-byte aligned).
    pub own_mac: [u16; 3],
    /// The wired neighbour's MAC: the only source MAC (and ARP sender MAC) accepted.
    pub peer_mac: [u16; 3],
    /// The new Ethernet addresses, as in the header: destination (the next hop's interface)
    /// then source (the function's out interface).
    pub eth_rewrite: [u16; 6],
}

/// One row of the forwarding table: two versions of an interface's [`FwdEntry`] and which one is
/// live (`active & 1`).
///
/// The double buffer makes a change of a running chain exact for every packet. A map update
/// copies the value over the element in place while the forwarder may be reading it, so
/// rewriting a live entry could hand a packet half the old and half the new entry. Userspace
/// therefore writes the new version into the idle half first (the live half is rewritten with
/// the bytes it already holds, which no reader can notice), then flips `active` with a second
/// update that changes nothing but that one byte. A packet sees the old entry or the new one,
/// never a mix. Layout: 4 + 2 × 56 = 116 bytes, 4-byte aligned, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FwdRow {
    /// Which version is live: 0 or 1 (only the low bit is read).
    pub active: u32,
    pub versions: [FwdEntry; 2],
}

impl FwdRow {
    /// The live version.
    #[inline(always)]
    pub fn live(&self) -> &FwdEntry {
        if self.active & 1 == 0 {
            &self.versions[0]
        } else {
            &self.versions[1]
        }
    }
}

/// A MAC address as three 16-bit words holding its bytes in packet order.
pub const fn mac_words(mac: [u8; 6]) -> [u16; 3] {
    [
        u16::from_ne_bytes([mac[0], mac[1]]),
        u16::from_ne_bytes([mac[2], mac[3]]),
        u16::from_ne_bytes([mac[4], mac[5]]),
    ]
}

/// An IPv4 datagram in fragments, as all its fragments name it: addresses (packet byte order),
/// IP identification (packet byte order) and protocol. A kind's stage that needs the ports
/// (firewall, load balancer) judges a datagram by its first fragment and keys what later
/// fragments must follow by this.
///
/// Layout: `src, dst: u32` (0, 4), `id: u16` (8), `proto: u8` (10), `_pad: u8`; 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: u32,
    pub dst: u32,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for FragKey {}

/// Datagrams in fragments a stage follows at once (its table is LRU: the oldest go first).
pub const FRAGS_SIZE: u32 = 4096;
/// How long after its first fragment a datagram's later fragments still follow it: Linux's
/// reassembly timeout (`net.ipv4.ipfrag_time`, 30 s by default).
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

/// Drop reasons, the indexes of [`FnCounters::drops`]: the forwarder's own below
/// [`KIND_DROP_BASE`], a kind's stage from there on.
pub const DROP_SPOOFED_MAC: usize = 0;
pub const DROP_SPOOFED_IP: usize = 1;
pub const DROP_TTL_EXCEEDED: usize = 2;
pub const DROP_NO_ROUTE: usize = 3;
pub const DROP_MALFORMED: usize = 4;
/// The function has a stage ([`FWD_STAGE`]) but none is loaded at its slot.
pub const DROP_NO_STAGE: usize = 5;
/// The first slot of a kind's own drop reasons: a kind's stage counts its reason `i` at
/// `KIND_DROP_BASE + i` (a kind names at most `DROP_SLOTS - KIND_DROP_BASE` reasons).
pub const KIND_DROP_BASE: usize = 8;
/// Slots of [`FnCounters::drops`]; the ones past the named reasons are reserved.
pub const DROP_SLOTS: usize = 16;
const _: () = assert!(KIND_DROP_BASE < DROP_SLOTS);
/// Names of the forwarder's drop reasons, by index (for status and metrics).
pub const DROP_REASON_NAMES: [&str; 6] = [
    "spoofed-mac",
    "spoofed-ip",
    "ttl-exceeded",
    "no-route",
    "malformed",
    "no-stage",
];

/// One function's counters in one direction (one CPU's share; userspace sums the CPUs).
///
/// `bytes` is the frame length where the packet arrived (Ethernet header included), as the
/// forwarder saw it: `skb->len` on TC, `data_end - data` on XDP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FnCounters {
    /// Packets forwarded to the next hop.
    pub packets: u64,
    pub bytes: u64,
    /// Packets handed to the function's own stack (ARP, its own addresses, broadcast,
    /// non-IPv4).
    pub to_stack: u64,
    /// Packets dropped, by reason ([`DROP_SPOOFED_MAC`] …).
    pub drops: [u64; DROP_SLOTS],
}

impl FnCounters {
    /// Adds `other` into `self` (wrapping, as kernel counters do).
    pub fn accumulate(&mut self, other: &FnCounters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.to_stack = self.to_stack.wrapping_add(other.to_stack);
        for (d, o) in self.drops.iter_mut().zip(other.drops.iter()) {
            *d = d.wrapping_add(*o);
        }
    }

    /// All drops, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().fold(0u64, |a, d| a.wrapping_add(*d))
    }
}

// SAFETY: `FwdEntry` is `#[repr(C)]`, `Copy`, made of u32s and u16 arrays laid out without
// padding (8 × 4 + 12 × 2 = 56 bytes, a multiple of its 4-byte alignment); every bit pattern is
// valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FwdEntry {}

// SAFETY: `FwdRow` is `#[repr(C)]`, `Copy`, a u32 followed by two `FwdEntry` (4-byte aligned,
// 56 bytes each): 116 bytes without padding; every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FwdRow {}

// SAFETY: `SourceKey` is `#[repr(C)]`, `Copy`, two `u32` without padding; every bit pattern is
// valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SourceKey {}

// SAFETY: `FnCounters` is `#[repr(C)]`, `Copy`, made of u64s only; no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FnCounters {}

#[cfg(test)]
mod tests {
    use super::{
        DROP_REASON_NAMES, DROP_SLOTS, FnCounters, FragKey, FwdEntry, FwdRow, IfCounters, mac_words,
    };

    #[test]
    fn mac_words_keep_packet_byte_order() {
        let w = mac_words([1, 2, 3, 4, 5, 6]);
        let bytes: [u8; 6] = unsafe { core::mem::transmute(w) };
        assert_eq!(bytes, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn forwarder_layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<FwdEntry>(), 56);
        assert_eq!(core::mem::align_of::<FwdEntry>(), 4);
        assert_eq!(core::mem::size_of::<FwdRow>(), 4 + 2 * 56);
        assert_eq!(core::mem::align_of::<FwdRow>(), 4);
        assert_eq!(core::mem::size_of::<FnCounters>(), 8 * (3 + DROP_SLOTS));
        assert_eq!(core::mem::size_of::<FragKey>(), 12);
        assert!(DROP_REASON_NAMES.len() <= super::KIND_DROP_BASE);
    }

    #[test]
    fn the_low_bit_of_active_picks_the_live_version() {
        let mut row = FwdRow::default();
        row.versions[1].flags = 7;
        assert_eq!(row.live().flags, 0);
        row.active = 1;
        assert_eq!(row.live().flags, 7);
        row.active = 2;
        assert_eq!(row.live().flags, 0);
    }

    #[test]
    fn fn_counters_accumulate_every_field() {
        let mut a = FnCounters {
            packets: 1,
            bytes: 2,
            to_stack: 3,
            drops: [1; DROP_SLOTS],
        };
        a.accumulate(&a.clone());
        assert_eq!((a.packets, a.bytes, a.to_stack), (2, 4, 6));
        assert_eq!(a.drops, [2; DROP_SLOTS]);
        assert_eq!(a.dropped(), 2 * DROP_SLOTS as u64);
    }

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
