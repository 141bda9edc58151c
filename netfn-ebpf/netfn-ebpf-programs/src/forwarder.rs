//! The forwarder: moves a packet from one function of a chain to the next without the IP stack of
//! the function's namespace.
//!
//! Every function interface carries the forwarder on its ingress (TC `nf_fwd_tc`, or XDP
//! `nf_fwd_xdp`). A packet arriving on interface `i` is handled by the table entry at
//! `i - FWD_IFINDEX_BASE` ([`NF_FWD`], filled by userspace from the chain's plan; the live one of
//! the row's two versions, so a live apply switches every entry atomically for each packet):
//!
//! 1. anti-spoofing: the source MAC must be the wired neighbour's; an ARP packet's sender MAC and
//!    IP must be the neighbour's; an IPv4 source must be the neighbour's link address or in the
//!    subnet of the endpoint this side faces. Anything else is dropped and counted by reason.
//!    An IPv4 header that Linux's `ip_rcv` would refuse (version, header length, total length
//!    against the frame, header checksum) is dropped as `malformed`, as kernel mode would;
//! 2. ARP, other non-IPv4 frames, packets to the function's own addresses and frames not sent to
//!    this interface's MAC (broadcast, multicast) go to the function's stack, so ARP, ping of a
//!    function and the like work as in kernel mode;
//! 3. IPv4 is forwarded: TTL decremented with an incremental checksum update (TTL <= 1 is
//!    dropped), Ethernet addresses rewritten to (next hop's interface, our out interface), then
//!    TC: `bpf_redirect_peer(out interface)`, which lands the packet on the ingress of the next
//!    hop's interface in the next namespace; XDP: `bpf_redirect_map` through [`NF_FWD_DEVMAP`],
//!    which transmits out of the out interface, so the frame arrives on its veth peer.
//!
//! A function whose kind has a per-packet stage ([`FWD_STAGE`]: a firewall, a load balancer) is
//! handed each packet that step 3 would forward, untouched, by a tail call into its slot of
//! [`NF_STAGES`]; the stage decides, and forwards with [`forward_tc`] / [`forward_xdp`] exactly as
//! step 3 does. An empty slot drops the packet (`no-stage`): a stage that is not loaded never
//! lets traffic through unchecked. `forward` functions never take the branch.
//!
//! Counters are per CPU ([`NF_FN_COUNTERS`], one element per function and direction): no lock,
//! no atomic on the hot path. The hot path logs at debug/trace level only; userspace sets the
//! level at load time (`AYA_LOG_LEVEL`, a read-only global), so disabled statements are removed by
//! the verifier and cost nothing.

use core::ptr;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::generated::bpf_redirect_peer,
    macros::{classifier, map, xdp},
    maps::{Array, DevMap, LpmTrie, PerCpuArray, ProgramArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::{debug, trace};
use netfn_common::{
    DROP_MALFORMED, DROP_NO_ROUTE, DROP_NO_STAGE, DROP_SPOOFED_IP, DROP_SPOOFED_MAC,
    DROP_TTL_EXCEEDED, FWD_IFINDEX_BASE, FWD_SOURCES_MAX, FWD_STACK, FWD_STAGE,
    FWD_TABLE_DEFAULT_ENTRIES, FWD_VALID, FnCounters, FwdEntry, FwdRow, SourceKey,
};

use crate::headers::{ETH_HLEN, IP_HLEN, IP_MAX_HLEN};

/// The forwarding table, indexed by `ifindex - FWD_IFINDEX_BASE` of the arriving interface; each
/// row holds two versions of the entry and which one is live (see `FwdRow`).
#[map]
static NF_FWD: Array<FwdRow> = Array::with_max_entries(FWD_TABLE_DEFAULT_ENTRIES, 0);

/// Per-function, per-direction counters, indexed by `FwdEntry::counter_slot`.
#[map]
static NF_FN_COUNTERS: PerCpuArray<FnCounters> =
    PerCpuArray::with_max_entries(FWD_TABLE_DEFAULT_ENTRIES, 0);

/// Packets on an interface without a valid table entry (dropped, counted as no-route).
#[map]
static NF_FWD_UNKNOWN: PerCpuArray<FnCounters> = PerCpuArray::with_max_entries(1, 0);

/// XDP redirect targets, indexed like [`NF_FWD`]; filled from inside each function's namespace.
#[map]
static NF_FWD_DEVMAP: DevMap = DevMap::with_max_entries(FWD_TABLE_DEFAULT_ENTRIES, 0);

/// Sources a function accepts besides its neighbour and the subnet it faces, by counter slot
/// (see `netfn_common::FWD_SOURCES_MAP`). aya creates it `BPF_F_NO_PREALLOC`, as LPM tries require.
#[map]
static NF_FWD_SOURCES: LpmTrie<SourceKey, u8> = LpmTrie::with_max_entries(FWD_SOURCES_MAX, 0);

/// The stage programs of the chain's functions, by function slot (see the module doc).
#[map]
static NF_STAGES: ProgramArray = ProgramArray::with_max_entries(FWD_TABLE_DEFAULT_ENTRIES, 0);

/// True when `src` is among the extra sources the function accepts at counter slot `slot`.
#[inline(always)]
fn extra_source(slot: u32, src: u32) -> bool {
    let key = Key::new(
        64,
        SourceKey {
            slot_be: slot.to_be(),
            addr: src,
        },
    );
    NF_FWD_SOURCES.get(&key).is_some()
}

const ARP_LEN: usize = 28;
/// The headers the forwarder reads: Ethernet + the longer of ARP and an IPv4 header with
/// options (its checksum covers them).
const HEADERS_LEN: usize = ETH_HLEN + IP_MAX_HLEN;

/// EtherTypes and the fixed ARP prefix, as the bytes appear in the packet (read natively).
const ETH_P_IP: u16 = u16::from_ne_bytes([0x08, 0x00]);
const ETH_P_ARP: u16 = u16::from_ne_bytes([0x08, 0x06]);
/// ARP hardware type 1 (Ethernet), protocol type 0x0800 (IPv4).
const ARP_ETHER_IPV4: u32 = u32::from_ne_bytes([0x00, 0x01, 0x08, 0x00]);
/// ARP hardware length 6, protocol length 4.
const ARP_LENS: u16 = u16::from_ne_bytes([6, 4]);

/// What to do with one packet.
#[derive(Clone, Copy)]
pub(crate) enum Verdict {
    /// Rewritten (TTL, checksum, MACs): send it to the next hop.
    Forward {
        slot: u32,
        redirect: u32,
    },
    /// Forwardable, untouched: the function's stage decides ([`FWD_STAGE`]).
    Stage {
        slot: u32,
    },
    /// Hand it to the function's own stack.
    ToStack {
        slot: u32,
    },
    Drop {
        slot: u32,
        reason: usize,
    },
    /// The headers are not all in the directly readable part of the packet.
    Short {
        slot: u32,
    },
    /// No valid table entry for this interface.
    Unknown,
}

#[inline(always)]
pub(crate) fn read<T: Copy>(addr: usize) -> T {
    // SAFETY: every caller has checked `addr + size_of::<T>() <= data_end` against the packet
    // bounds first. A plain (not `read_unaligned`) load, as C programs do with `iph->saddr`:
    // one instruction instead of one per byte. Ethernet fields are 2-byte aligned; the IPv4
    // addresses may sit at 2 mod 4, which BPF allows on packet data (the verifier checks packet
    // alignment only on architectures without efficient unaligned access, and the JITs of those
    // that have it emit ordinary loads).
    unsafe { ptr::read(addr as *const T) }
}

/// Compares the 6 bytes at `addr` (checked by the caller) with `mac` (packet-order words).
#[inline(always)]
fn mac_eq(addr: usize, mac: &[u16; 3]) -> bool {
    read::<u16>(addr) == mac[0]
        && read::<u16>(addr + 2) == mac[1]
        && read::<u16>(addr + 4) == mac[2]
}

/// The live forwarder entry of the interface `ifindex` (`None`: not a valid chain interface).
#[inline(always)]
pub(crate) fn entry(ifindex: u32) -> Option<&'static FwdEntry> {
    let row = NF_FWD.get(ifindex.wrapping_sub(FWD_IFINDEX_BASE))?;
    let e = row.live();
    if e.flags & FWD_VALID == 0 {
        return None;
    }
    Some(e)
}

/// The one's complement sum of the IPv4 header at `ip` of `ihl` 32-bit words (5 to 15; the
/// caller checked its first 20 bytes against the packet), folded to 16 bits: 0xffff when its
/// checksum is right (RFC 1071; native-order words fold to the same 16 bits). `None` when the
/// options do not end before `data_end`. Each option word has its own bounds check at a
/// constant offset: a loop lets LLVM rewrite the checks into a form the verifier cannot follow.
#[inline(always)]
fn ipv4_header_sum(ip: usize, ihl: usize, data_end: usize) -> Option<u64> {
    let mut sum: u64 = 0;
    let mut off = 0;
    while off < IP_HLEN {
        sum += u64::from(read::<u32>(ip + off));
        off += 4;
    }
    macro_rules! option_word {
        ($word:literal) => {
            if ihl > $word {
                if ip + 4 * $word + 4 > data_end {
                    return None;
                }
                sum += u64::from(read::<u32>(ip + 4 * $word));
            }
        };
    }
    option_word!(5);
    option_word!(6);
    option_word!(7);
    option_word!(8);
    option_word!(9);
    option_word!(10);
    option_word!(11);
    option_word!(12);
    option_word!(13);
    option_word!(14);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    Some((sum & 0xffff) + (sum >> 16))
}

/// Decides the packet's fate and, for `Forward`, rewrites it. `data..data_end` is the directly
/// accessible packet, `len` the whole frame's length (more than `data_end - data` when TC has
/// not pulled it all in); `ifindex` the interface it arrived on.
#[inline(always)]
fn decide(data: usize, data_end: usize, len: usize, ifindex: u32) -> Verdict {
    let Some(e) = entry(ifindex) else {
        return Verdict::Unknown;
    };
    let slot = e.counter_slot;
    if data + ETH_HLEN > data_end {
        return Verdict::Short { slot };
    }
    if !mac_eq(data + 6, &e.peer_mac) {
        return Verdict::Drop {
            slot,
            reason: DROP_SPOOFED_MAC,
        };
    }
    let proto: u16 = read(data + 12);
    if proto == ETH_P_ARP {
        let arp = data + ETH_HLEN;
        if arp + ARP_LEN > data_end {
            return Verdict::Short { slot };
        }
        if read::<u32>(arp) != ARP_ETHER_IPV4 || read::<u16>(arp + 4) != ARP_LENS {
            return Verdict::Drop {
                slot,
                reason: DROP_MALFORMED,
            };
        }
        // Sender hardware address at 8, sender protocol address at 14.
        if !mac_eq(arp + 8, &e.peer_mac) {
            return Verdict::Drop {
                slot,
                reason: DROP_SPOOFED_MAC,
            };
        }
        // The neighbour may answer for any address of the subnet it belongs to (an endpoint
        // with several addresses, such as a row of servers behind a load balancer, sends ARP
        // from the one its packet leaves from); its MAC is checked above.
        let sender: u32 = read(arp + 14);
        if sender != e.peer_addr && sender & e.allowed_mask != e.allowed_net {
            return Verdict::Drop {
                slot,
                reason: DROP_SPOOFED_IP,
            };
        }
        return Verdict::ToStack { slot };
    }
    if proto != ETH_P_IP {
        return Verdict::ToStack { slot };
    }

    let ip = data + ETH_HLEN;
    if ip + IP_HLEN > data_end {
        return Verdict::Short { slot };
    }
    let version_ihl: u8 = read(ip);
    let ihl = (version_ihl & 0x0f) as usize;
    let mut total = u16::from_be(read::<u16>(ip + 2)) as usize;
    if total == 0 && len > ETH_HLEN + 0xffff {
        // A BIG TCP GSO packet: its length is the skb's (as `iph_totlen` has it).
        total = len - ETH_HLEN;
    }
    if version_ihl & 0xf0 != 0x40 || ihl < 5 || total < ihl * 4 || ETH_HLEN + total > len {
        return Verdict::Drop {
            slot,
            reason: DROP_MALFORMED,
        };
    }
    match ipv4_header_sum(ip, ihl, data_end) {
        Some(0xffff) => {}
        Some(_) => {
            return Verdict::Drop {
                slot,
                reason: DROP_MALFORMED,
            };
        }
        None => return Verdict::Short { slot },
    }
    let src: u32 = read(ip + 12);
    if src != e.peer_addr && src & e.allowed_mask != e.allowed_net && !extra_source(slot, src) {
        return Verdict::Drop {
            slot,
            reason: DROP_SPOOFED_IP,
        };
    }
    let dst: u32 = read(ip + 16);
    if dst == e.local_addrs[0] || dst == e.local_addrs[1] || !mac_eq(data, &e.own_mac) {
        return Verdict::ToStack { slot };
    }
    // A function whose own stack forwards (FWD_STACK) gets every packet, checked as above.
    if e.flags & FWD_STACK != 0 {
        return Verdict::ToStack { slot };
    }
    let ttl: u8 = read(ip + 8);
    if ttl <= 1 {
        return Verdict::Drop {
            slot,
            reason: DROP_TTL_EXCEEDED,
        };
    }
    if e.redirect_ifindex == 0 {
        return Verdict::Drop {
            slot,
            reason: DROP_NO_ROUTE,
        };
    }

    if e.flags & FWD_STAGE != 0 {
        return Verdict::Stage { slot };
    }
    rewrite(data, ip, ttl, e);
    Verdict::Forward {
        slot,
        redirect: e.redirect_ifindex,
    }
}

/// Rewrites a packet the forwarder (or a stage) forwards: TTL - 1 with the matching checksum
/// update, then the Ethernet addresses. The caller has checked `ip + IP_HLEN <= data_end`
/// (and so the Ethernet header) and that `ttl` (the packet's TTL) is above 1.
#[inline(always)]
pub(crate) fn rewrite(data: usize, ip: usize, ttl: u8, e: &FwdEntry) {
    // TTL - 1 and the matching incremental checksum update (RFC 1624), as the kernel's
    // ip_decrease_ttl does: the checksum field is read and written in packet byte order.
    let check: u16 = read(ip + 10);
    let mut sum = u32::from(check) + u32::from(0x0100u16.to_be());
    sum += u32::from(sum >= 0xffff);
    // SAFETY: `ip + IP_HLEN <= data_end` was checked, and the program may write the packet
    // (TC: the kernel unclones it first; XDP: the buffer is ours).
    unsafe {
        ptr::write((ip + 8) as *mut u8, ttl - 1);
        ptr::write((ip + 10) as *mut u16, sum as u16);
        let eth = data as *mut u16;
        for (i, w) in e.eth_rewrite.iter().enumerate() {
            ptr::write(eth.add(i), *w);
        }
    }
}

#[inline(always)]
fn counters(slot: u32) -> Option<&'static mut FnCounters> {
    // SAFETY: a per-CPU array element is only written by this CPU, and the program runs to
    // completion without preemption on it.
    NF_FN_COUNTERS.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub(crate) fn count_forward(slot: u32, len: u64) {
    if let Some(c) = counters(slot) {
        c.packets = c.packets.wrapping_add(1);
        c.bytes = c.bytes.wrapping_add(len);
    }
}

#[inline(always)]
fn count_to_stack(slot: u32) {
    if let Some(c) = counters(slot) {
        c.to_stack = c.to_stack.wrapping_add(1);
    }
}

#[inline(always)]
pub(crate) fn count_drop(slot: u32, reason: usize) {
    if let Some(c) = counters(slot)
        && let Some(d) = c.drops.get_mut(reason)
    {
        *d = d.wrapping_add(1);
    }
}

#[inline(always)]
fn count_unknown() {
    // SAFETY: as in `counters`.
    if let Some(c) = NF_FWD_UNKNOWN.get_ptr_mut(0).map(|p| unsafe { &mut *p }) {
        c.drops[DROP_NO_ROUTE] = c.drops[DROP_NO_ROUTE].wrapping_add(1);
    }
}

/// Sends a rewritten packet on (TC): counts it and redirects it to the ingress of the next hop's
/// interface (`redirect` is the function's out interface, whose veth peer that is).
#[inline(always)]
pub(crate) fn send_tc(ctx: &TcContext, slot: u32, redirect: u32) -> i32 {
    count_forward(slot, u64::from(ctx.len()));
    // SAFETY: a BPF helper; returns TC_ACT_REDIRECT (flags are 0).
    unsafe { bpf_redirect_peer(redirect, 0) as i32 }
}

/// Sends a rewritten packet on (XDP) through the devmap; a missing devmap entry drops it as
/// no-route.
#[inline(always)]
pub(crate) fn send_xdp(slot: u32, redirect: u32, len: u64) -> u32 {
    match NF_FWD_DEVMAP.redirect(redirect.wrapping_sub(FWD_IFINDEX_BASE), 0) {
        Ok(action) => {
            count_forward(slot, len);
            action
        }
        Err(_) => {
            count_drop(slot, DROP_NO_ROUTE);
            xdp_action::XDP_DROP
        }
    }
}

/// TC ingress forwarder on every function interface (netlink clsact, after the counter).
#[classifier]
pub fn nf_fwd_tc(ctx: TcContext) -> i32 {
    // SAFETY: the kernel passes a valid `__sk_buff` to a classifier.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = ctx.len() as usize;
    let mut verdict = decide(ctx.data(), ctx.data_end(), len, ifindex);
    if let Verdict::Short { slot } = verdict {
        // Headers outside the linear part: pull them in and decide again (slow path).
        let want = core::cmp::min(ctx.len(), HEADERS_LEN as u32);
        verdict = if ctx.pull_data(want).is_ok() {
            decide(ctx.data(), ctx.data_end(), len, ifindex)
        } else {
            Verdict::Short { slot }
        };
    }
    match verdict {
        Verdict::Forward { slot, redirect } => {
            trace!(&ctx, "nf_fwd_tc: if {} -> peer of {}", ifindex, redirect);
            send_tc(&ctx, slot, redirect)
        }
        Verdict::Stage { slot } => {
            // SAFETY: a BPF helper; on success it does not return.
            unsafe { NF_STAGES.tail_call(&ctx, slot >> 1) };
            count_drop(slot, DROP_NO_STAGE);
            debug!(&ctx, "nf_fwd_tc: if {}: no stage loaded, drop", ifindex);
            TC_ACT_SHOT
        }
        Verdict::ToStack { slot } => {
            count_to_stack(slot);
            trace!(&ctx, "nf_fwd_tc: if {} -> stack", ifindex);
            TC_ACT_OK
        }
        Verdict::Drop { slot, reason } => {
            count_drop(slot, reason);
            debug!(
                &ctx,
                "nf_fwd_tc: if {}: drop, reason {}", ifindex, reason as u32
            );
            TC_ACT_SHOT
        }
        Verdict::Short { slot } => {
            count_drop(slot, DROP_MALFORMED);
            debug!(&ctx, "nf_fwd_tc: if {}: drop, truncated", ifindex);
            TC_ACT_SHOT
        }
        Verdict::Unknown => {
            count_unknown();
            debug!(&ctx, "nf_fwd_tc: if {}: no table entry, drop", ifindex);
            TC_ACT_SHOT
        }
    }
}

/// XDP forwarder on every function interface.
#[xdp]
pub fn nf_fwd_xdp(ctx: XdpContext) -> u32 {
    // SAFETY: the kernel passes a valid `xdp_md` to an XDP program.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let len = (data_end - data) as u64;
    match decide(data, data_end, data_end - data, ifindex) {
        Verdict::Forward { slot, redirect } => {
            trace!(&ctx, "nf_fwd_xdp: if {} -> {}", ifindex, redirect);
            send_xdp(slot, redirect, len)
        }
        Verdict::Stage { slot } => {
            // SAFETY: a BPF helper; on success it does not return.
            unsafe { NF_STAGES.tail_call(&ctx, slot >> 1) };
            count_drop(slot, DROP_NO_STAGE);
            debug!(&ctx, "nf_fwd_xdp: if {}: no stage loaded, drop", ifindex);
            xdp_action::XDP_DROP
        }
        Verdict::ToStack { slot } => {
            count_to_stack(slot);
            trace!(&ctx, "nf_fwd_xdp: if {} -> stack", ifindex);
            xdp_action::XDP_PASS
        }
        Verdict::Drop { slot, reason } => {
            count_drop(slot, reason);
            debug!(
                &ctx,
                "nf_fwd_xdp: if {}: drop, reason {}", ifindex, reason as u32
            );
            xdp_action::XDP_DROP
        }
        Verdict::Short { slot } => {
            count_drop(slot, DROP_MALFORMED);
            debug!(&ctx, "nf_fwd_xdp: if {}: drop, truncated", ifindex);
            xdp_action::XDP_DROP
        }
        Verdict::Unknown => {
            count_unknown();
            debug!(&ctx, "nf_fwd_xdp: if {}: no table entry, drop", ifindex);
            xdp_action::XDP_DROP
        }
    }
}

/// On every veth that receives XDP redirects but forwards nothing (the endpoints' interfaces):
/// without an XDP program there, redirected frames would vanish.
#[xdp]
pub fn nf_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
