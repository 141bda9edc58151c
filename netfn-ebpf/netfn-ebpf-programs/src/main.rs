//! netfn's eBPF programs, built for `bpfel-unknown-none` by `cargo xtask build-ebpf`.
//!
//! One object holds every program: the per-interface counter of kernel-mode chains (`nf_count`,
//! here) and the fast path's forwarder (`nf_fwd_tc`, `nf_fwd_xdp`, `nf_xdp_pass`, in
//! [`forwarder`]). Userspace (`netfn_core::ebpf`) loads it and pins what must outlive the process
//! under `/sys/fs/bpf/netfn/<chain>/`: the counter is attached with netlink (clsact + cls_bpf
//! direct-action), the TC forwarder with TCX on Linux 6.6+ (pinned links) and netlink elsewhere,
//! the XDP programs with pinned XDP links. Either way a chain keeps working with no netfn process
//! running. Nothing here depends on userspace code: the map types come from `netfn-common`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST, TC_ACT_UNSPEC},
    macros::{classifier, map},
    maps::PerCpuHashMap,
    programs::TcContext,
};
use aya_log_ebpf::info;

mod firewall;
mod forwarder;
mod headers;
mod lb;
use netfn_common::{IF_COUNTERS_MAX_ENTRIES, IfCounters};

/// Packets and bytes per interface, keyed by `skb->ifindex` (netfn gives every interface of a
/// chain a unique ifindex). Per CPU, so the hot path takes no lock and no atomic; userspace sums.
/// Not preallocated: an entry's memory is taken when the program first counts on an interface
/// (preallocated, 8,192 entries took 918 KB per chain on 2 CPUs, about 14 MB on 32, whatever
/// the chain's length; a chain of 10 functions uses 22 entries).
#[map]
static NF_IF_COUNTERS: PerCpuHashMap<u32, IfCounters> =
    PerCpuHashMap::with_max_entries(IF_COUNTERS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// The kernel's `BPF_F_NO_PREALLOC` map flag (uapi/linux/bpf.h).
const BPF_F_NO_PREALLOC: u32 = 1;

/// TC ingress classifier on every chain interface: counts, never changes the packet's fate.
///
/// It returns `TC_ACT_UNSPEC` ("no verdict"): with cls_bpf in direct-action mode that makes the
/// kernel go on to the next filter (a forwarder at a later priority), and with no further filter
/// the packet continues as if no filter were there. `TC_ACT_OK` would stop the filter chain and
/// hide every later program.
#[classifier]
pub fn nf_count(ctx: TcContext) -> i32 {
    let skb: *const __sk_buff = ctx.skb.skb;
    // SAFETY: the kernel passes a valid `__sk_buff` context to a classifier.
    let ifindex = unsafe { (*skb).ifindex };
    let len = u64::from(ctx.len());

    if let Some(counters) = NF_IF_COUNTERS.get_ptr_mut(ifindex) {
        add(counters, len);
        return TC_ACT_UNSPEC;
    }
    // First packet on this interface (the new element is zeroed on the other CPUs, so this
    // branch runs about once per interface): insert, and say so once.
    let first = IfCounters {
        packets: 1,
        bytes: len,
    };
    if NF_IF_COUNTERS
        .insert(ifindex, first, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        info!(&ctx, "nf_count: counting on ifindex {}", ifindex);
    } else if let Some(counters) = NF_IF_COUNTERS.get_ptr_mut(ifindex) {
        // Another CPU inserted it between our lookup and insert.
        add(counters, len);
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn add(counters: *mut IfCounters, len: u64) {
    // SAFETY: the pointer comes from a successful map lookup and points at this CPU's value,
    // which no other CPU writes.
    unsafe {
        (*counters).packets = (*counters).packets.wrapping_add(1);
        (*counters).bytes = (*counters).bytes.wrapping_add(len);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
