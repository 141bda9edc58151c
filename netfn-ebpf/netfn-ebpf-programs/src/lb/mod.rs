//! The load balancer kind's stage: an L4 load balancer at its function's hop, entered from the
//! forwarder by a tail call (`nf_lb_tc`, `nf_lb_xdp`) with a packet the forwarder would forward.
//!
//! Toward egress (from clients): `flow_hash` of the packet's 5-tuple names its set of the
//! connection table ([`NF_LB_FLOWS`]); a packet of a tracked flow there goes to the backend its
//! flow was balanced to; a packet to a service ([`NF_LB_SERVICES`]) of no tracked flow is
//! balanced: the same hash picks an entry of the service's live Maglev table ([`NF_LB_TABLE`]),
//! whose backend ([`NF_LB_BACKENDS`]) it goes to, and the flow is tracked: one slot of its set
//! (a free or expired one, else the least recently seen flow's). Its destination address and
//! port become the backend's (DNAT). Anything else passes unchanged.
//!
//! Toward ingress (from backends): a packet from a backend's `addr:port:proto`
//! ([`NF_LB_REVERSE`]: the services it serves) is the answer of the flow tracked with its
//! destination as the client and one of those services as the VIP side; it gets its source back
//! to that VIP and port. An answer of no tracked flow (its entry evicted or expired) is dropped
//! as `lb-reply-untracked`, never passed on with the backend's address (see
//! `LB_DROP_REPLY_UNTRACKED`). Anything else passes unchanged.
//!
//! A tracked flow whose backend the health checks declared down is balanced again (the table
//! no longer has that backend): a TCP client then gets a reset from the new backend at once,
//! instead of waiting out retransmissions toward a dead server; a UDP flow simply moves. A flow
//! keeps its backend's number, which a settings change may have given another backend: a flow
//! tracked under another numbering first gets its backend's number now ([`nf_lb_renumber`]),
//! so the health verdict and the counters it meets are its own backend's.
//!
//! ICMP errors (destination unreachable, fragmentation needed included, time exceeded,
//! parameter problem) about a balanced flow are translated both ways, as Linux's NAT does for
//! the errors conntrack relates to a flow ([`icmp`]): one from the backend's side reaches the
//! client about the packet it sent to the VIP, one from the client's side reaches the flow's
//! backend about the packet the backend sent. One about a flow the stage does not track is
//! dropped and counted, as conntrack holds it invalid and no backend ever sees it.
//!
//! IPv4 fragments: only a datagram's first fragment carries the ports, so it is the one balanced
//! (or answered, or passed) as above; the address rewrite it got is entered in [`NF_LB_FRAGS`]
//! under the datagram's name, and its later fragments get the same (their IP header only: the
//! transport checksum, in the first fragment, was updated there for the whole datagram). A later
//! fragment whose first did not go through is dropped (`lb-fragment`): its address is not known.
//!
//! Checksums: TC rewrites through `bpf_l3_csum_replace` / `bpf_l4_csum_replace`, which also keep
//! a `CHECKSUM_PARTIAL` skb right (its L4 field then holds only the pseudo-header sum); XDP frames
//! carry full checksums (netfn turns tx checksum offload off in xdp chains), updated here
//! incrementally (RFC 1624).

use core::ptr;

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR, TC_ACT_SHOT,
        xdp_action,
    },
    helpers::generated::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use netfn_common::{
    DIR_FORWARD, FRAG_TIMEOUT_NS, FRAGS_SIZE, FragKey, FwdEntry, KIND_DROP_BASE,
    firewall::{PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    lb::{
        BACKEND_DOWN, Backend, BackendCounters, BackendKey, FAMILY_V4, FRAG_PASS, FRAG_TO_BACKEND,
        FRAG_TO_CLIENT, LB_CT_CLOSING, LB_CT_OPEN, LB_CT_SYN, LB_DROP_FRAGMENT, LB_DROP_NO_BACKEND,
        LB_DROP_REPLY_UNTRACKED, LB_FLOW_WAYS, LB_TEARDOWN, LbConf, LbFlow, LbFlowSet, LbFrag,
        LbStats, NO_BACKEND, REVERSE_SERVICES, Reverse, Service, ServiceKey, counter_index,
        flow_hash,
    },
};

use crate::forwarder::{self, count_drop, read, rewrite, send_tc, send_xdp};
use crate::headers::{
    ETH_HLEN, FIRST, ICMP_HLEN, IP_HLEN, IP_MAX_HLEN, LATER, TCP_FIN, TCP_RST, TCP_SYN, WHOLE,
    bare_syn, datagram, fragment, replace16, replace32,
};

mod icmp;
use icmp::Quoted;

#[map]
static NF_LB_SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(1, 0);
/// Memory-mappable, so userspace writes a 65,537-entry table half without a syscall per entry.
#[map]
static NF_LB_TABLE: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static NF_LB_BACKENDS: Array<Backend> = Array::with_max_entries(1, 0);
#[map]
static NF_LB_CONF: Array<LbConf> = Array::with_max_entries(1, 0);
/// One slice per CPU (`counter_index`); memory-mappable, so a scrape reads thousands of
/// backends' counters without a syscall each.
#[map]
static NF_LB_BACKEND_COUNTERS: Array<BackendCounters> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static NF_LB_FLOWS: Array<LbFlowSet> = Array::with_max_entries(1, 0);
#[map]
static NF_LB_STATS: PerCpuArray<LbStats> = PerCpuArray::with_max_entries(1, 0);
/// Written by userspace only (no preallocation: sized with room for backends a settings change
/// removed, whose flows may still run).
#[map]
static NF_LB_REVERSE: HashMap<BackendKey, Reverse> =
    HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);
#[map]
static NF_LB_FRAGS: LruHashMap<FragKey, LbFrag> = LruHashMap::with_max_entries(FRAGS_SIZE, 0);

/// Most bytes the stage reads: Ethernet, an IPv4 header with options, and a TCP header's first
/// 20 bytes or an ICMP error's header, quoted IPv4 header (options too) and ports.
const READ_LEN: u32 = (ETH_HLEN + IP_MAX_HLEN + ICMP_HLEN + IP_MAX_HLEN + 4) as u32;

/// The headers the stage reads (addresses and ports in packet byte order).
#[derive(Clone, Copy)]
struct Packet {
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    ttl: u8,
    tcp_flags: u8,
    /// Offset of the L4 header from the start of the frame.
    l4: usize,
    /// An ICMP error about a TCP or UDP packet (`proto` is then 0): `quote` is the packet it
    /// quotes; else `quote` is zero. (Not an `Option<Quoted>`: as the firewall's `Packet.inner`
    /// was, an `Option` of a record leaves its fields unset where it is `None`, LLVM may copy
    /// them there all the same, and the verifier refuses the read, `R?? !read_ok`.)
    quoted: bool,
    quote: Quoted,
    /// Where it stands in its datagram: [`WHOLE`], [`FIRST`] or [`LATER`] (plain numbers, as
    /// the firewall's: the verifier's view of an enum with data is fragile).
    frag: u8,
    /// The IP identification (packet byte order), naming the datagram with the addresses and
    /// the protocol ([`Packet::datagram`]).
    ip_id: u16,
}

/// What happens to the packet: a plain record whose every field is always set, as the
/// firewall's. (An enum with data leaves the other variants' fields unset on each variant's
/// paths; LLVM may copy them anyway, and the verifier refuses the program, `R?? !read_ok`,
/// as it did the firewall's.)
#[derive(Clone, Copy)]
struct Fate {
    /// [`PASS`], [`DROP`], [`NAT`], [`ICMP`] or [`READDRESS`].
    what: u8,
    /// NAT, ICMP, READDRESS: toward a backend (the destination side is rewritten) or back to a
    /// client (the source side).
    to_backend: bool,
    /// DROP: the kind's drop reason.
    reason: usize,
    /// NAT, ICMP, READDRESS: the address (and, but for READDRESS, the port) written.
    addr: u32,
    port: u16,
}

/// Forward unchanged.
const PASS: u8 = 0;
/// Drop, counted under [`Fate::reason`].
const DROP: u8 = 1;
/// Forward with the destination (toward a backend) or the source (back to a client) rewritten
/// to `addr:port`.
const NAT: u8 = 2;
/// An ICMP error about a balanced flow, translated as [`NAT`] translates its packets (see
/// [`icmp`]): from the backend's side (`to_backend` false) the packet it quotes gets its
/// destination back to the VIP's `addr:port`; from the client's side, its source becomes the
/// backend's `addr:port`. The outer address on the same side follows.
const ICMP: u8 = 3;
/// A later fragment of a datagram whose first fragment was rewritten: the destination (toward
/// a backend) or the source (back to a client) becomes `addr`, ports untouched.
const READDRESS: u8 = 4;

impl Fate {
    #[inline(always)]
    fn pass() -> Fate {
        Fate {
            what: PASS,
            to_backend: false,
            reason: 0,
            addr: 0,
            port: 0,
        }
    }

    #[inline(always)]
    fn drop(reason: usize) -> Fate {
        Fate {
            what: DROP,
            reason,
            ..Fate::pass()
        }
    }

    #[inline(always)]
    fn nat(to_backend: bool, addr: u32, port: u16) -> Fate {
        Fate {
            what: NAT,
            to_backend,
            reason: 0,
            addr,
            port,
        }
    }

    #[inline(always)]
    fn icmp(to_backend: bool, addr: u32, port: u16) -> Fate {
        Fate {
            what: ICMP,
            ..Fate::nat(to_backend, addr, port)
        }
    }

    #[inline(always)]
    fn readdress(to_backend: bool, addr: u32) -> Fate {
        Fate {
            what: READDRESS,
            ..Fate::nat(to_backend, addr, 0)
        }
    }
}

/// TC stage (`fastpath = "tc"`).
#[classifier]
pub fn nf_lb_tc(ctx: TcContext) -> i32 {
    // SAFETY: the kernel passes a valid `__sk_buff` to a classifier.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(e) = forwarder::entry(ifindex) else {
        return TC_ACT_SHOT;
    };
    let slot = e.counter_slot;
    let want = core::cmp::min(ctx.len(), READ_LEN);
    if ctx.data() + want as usize > ctx.data_end() && ctx.pull_data(want).is_err() {
        count_drop(slot, netfn_common::DROP_MALFORMED);
        return TC_ACT_SHOT;
    }
    let Some(p) = parse(ctx.data(), ctx.data_end()) else {
        count_drop(slot, netfn_common::DROP_MALFORMED);
        return TC_ACT_SHOT;
    };
    let fate = if p.frag == LATER {
        later(&p)
    } else {
        decide(&p, e, u64::from(ctx.len()))
    };
    match fate.what {
        PASS => first_fragment(&p, FRAG_PASS, 0),
        DROP => {
            count_drop(slot, KIND_DROP_BASE + fate.reason);
            return TC_ACT_SHOT;
        }
        NAT => {
            first_fragment(&p, rewrite_of(fate.to_backend), fate.addr);
            if nat_tc(&ctx, &p, fate.to_backend, fate.addr, fate.port).is_err() {
                count_drop(slot, netfn_common::DROP_MALFORMED);
                return TC_ACT_SHOT;
            }
        }
        ICMP => {
            if icmp::translate(&ctx, &p, fate.to_backend, fate.addr, fate.port).is_err() {
                count_drop(slot, netfn_common::DROP_MALFORMED);
                return TC_ACT_SHOT;
            }
        }
        _ => {
            if readdress_tc(&ctx, &p, fate.to_backend, fate.addr).is_err() {
                count_drop(slot, netfn_common::DROP_MALFORMED);
                return TC_ACT_SHOT;
            }
        }
    }
    // The helpers may have moved the packet: bounds again before the forwarder's rewrite.
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN + IP_HLEN > data_end {
        return TC_ACT_SHOT;
    }
    rewrite(data, data + ETH_HLEN, p.ttl, e);
    send_tc(&ctx, slot, e.redirect_ifindex)
}

/// XDP stage (`fastpath = "xdp"`).
#[xdp]
pub fn nf_lb_xdp(ctx: XdpContext) -> u32 {
    // SAFETY: the kernel passes a valid `xdp_md` to an XDP program.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some(e) = forwarder::entry(ifindex) else {
        return xdp_action::XDP_DROP;
    };
    let slot = e.counter_slot;
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let len = (data_end - data) as u64;
    let Some(p) = parse(data, data_end) else {
        count_drop(slot, netfn_common::DROP_MALFORMED);
        return xdp_action::XDP_DROP;
    };
    let fate = if p.frag == LATER {
        later(&p)
    } else {
        decide(&p, e, len)
    };
    match fate.what {
        PASS => first_fragment(&p, FRAG_PASS, 0),
        DROP => {
            count_drop(slot, KIND_DROP_BASE + fate.reason);
            return xdp_action::XDP_DROP;
        }
        NAT => {
            first_fragment(&p, rewrite_of(fate.to_backend), fate.addr);
            nat_xdp(data, data_end, &p, fate.to_backend, fate.addr, fate.port);
        }
        ICMP => {
            if icmp::translate(&ctx, &p, fate.to_backend, fate.addr, fate.port).is_err() {
                count_drop(slot, netfn_common::DROP_MALFORMED);
                return xdp_action::XDP_DROP;
            }
        }
        _ => readdress_xdp(data, data_end, &p, fate.to_backend, fate.addr),
    }
    // The helpers may have written the frame: bounds again before the forwarder's rewrite.
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN + IP_HLEN > data_end {
        return xdp_action::XDP_DROP;
    }
    rewrite(data, data + ETH_HLEN, p.ttl, e);
    send_xdp(slot, e.redirect_ifindex, len)
}

/// The headers of an IPv4 TCP or UDP packet that is not a fragment; `None` if the frame is too
/// short for what its headers say. Anything else comes back with `proto` 0 (passed unchanged).
#[inline(always)]
fn parse(data: usize, data_end: usize) -> Option<Packet> {
    let ip = data + ETH_HLEN;
    if ip + IP_HLEN > data_end {
        return None;
    }
    let ihl = ((read::<u8>(ip) & 0x0f) as usize) * 4;
    if ihl < IP_HLEN {
        return None;
    }
    let mut p = Packet {
        src: read(ip + 12),
        dst: read(ip + 16),
        sport: 0,
        dport: 0,
        proto: 0,
        ttl: read(ip + 8),
        tcp_flags: 0,
        l4: ETH_HLEN + ihl,
        quoted: false,
        quote: Quoted::default(),
        frag: WHOLE,
        ip_id: read(ip + 4),
    };
    let proto: u8 = read(ip + 9);
    let frag = fragment(u16::from_be(read(ip + 6)));
    if proto != PROTO_TCP && proto != PROTO_UDP {
        // A later fragment of an ICMP datagram has no ICMP header to read.
        if proto == PROTO_ICMP && frag != LATER {
            icmp::quote(&mut p, data, data_end);
        }
        return Some(p);
    }
    p.proto = proto;
    p.frag = frag;
    if frag == LATER {
        // No ports: it follows its first fragment (see `later`).
        return Some(p);
    }
    let l4 = ip + ihl;
    let need = if proto == PROTO_TCP { 20 } else { 8 };
    if l4 + need > data_end {
        return None;
    }
    p.sport = read(l4);
    p.dport = read(l4 + 2);
    if proto == PROTO_TCP {
        p.tcp_flags = read(l4 + 13);
    }
    Some(p)
}

/// What a datagram's later fragments get when its first was rewritten toward a backend or back
/// to a client.
#[inline(always)]
fn rewrite_of(to_backend: bool) -> u8 {
    if to_backend {
        FRAG_TO_BACKEND
    } else {
        FRAG_TO_CLIENT
    }
}

/// Called with each packet that goes on (`rewrite` and `addr` as for [`LbFrag`]): a first
/// fragment enters its datagram, whose later fragments then get the same ([`later`]).
#[inline(always)]
fn first_fragment(p: &Packet, rewrite: u8, addr: u32) {
    if p.frag != FIRST {
        return;
    }
    // SAFETY: a BPF helper without arguments.
    let at_ns = unsafe { bpf_ktime_get_ns() };
    let entry = LbFrag {
        at_ns,
        addr,
        rewrite,
        _pad: [0; 3],
    };
    // A full table evicts the oldest datagram; should this insert fail, the later fragments
    // are dropped and counted (`lb-fragment`).
    let _ = NF_LB_FRAGS.insert(datagram(p.src, p.dst, p.ip_id, p.proto), entry, 0);
}

/// A later fragment: what its datagram's first fragment got, within the kernel's reassembly
/// timeout; else it is dropped (`lb-fragment`).
#[inline(always)]
fn later(p: &Packet) -> Fate {
    // SAFETY: a BPF helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a copy of an LRU value read now; userspace never writes this map.
    let entry = unsafe { NF_LB_FRAGS.get(datagram(p.src, p.dst, p.ip_id, p.proto)) }.copied();
    match entry {
        Some(f) if now.saturating_sub(f.at_ns) <= FRAG_TIMEOUT_NS => match f.rewrite {
            FRAG_TO_BACKEND => Fate::readdress(true, f.addr),
            FRAG_TO_CLIENT => Fate::readdress(false, f.addr),
            _ => Fate::pass(),
        },
        _ => Fate::drop(LB_DROP_FRAGMENT),
    }
}

#[inline(always)]
fn stats() -> Option<&'static mut LbStats> {
    // SAFETY: a per-CPU element, written only by this CPU, which runs the program to completion.
    NF_LB_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn v4(a: u32) -> [u32; 4] {
    [a, 0, 0, 0]
}

#[inline(always)]
fn decide(p: &Packet, e: &FwdEntry, len: u64) -> Fate {
    if p.proto == 0 && !p.quoted {
        return Fate::pass();
    }
    let Some(conf) = NF_LB_CONF.get(0) else {
        return Fate::pass();
    };
    if p.quoted {
        return icmp::error(p, e, conf);
    }
    // SAFETY: a BPF helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if e.counter_slot & 1 != DIR_FORWARD {
        return reply(p, conf, now);
    }
    let hash = flow_hash(p.src, p.dst, p.sport, p.dport, p.proto);
    let Some((index, set)) = flow_set(conf, hash) else {
        return Fate::pass();
    };
    let key = FlowKey {
        client: p.src,
        vip: p.dst,
        cport: p.sport,
        vport: p.dport,
        proto: p.proto,
    };
    let mut rebalance = false;
    // A bare SYN opens a connection. On the ports of a TCP flow that closed (a FIN from each
    // side or an RST seen) it opens a new one (a client that wrapped its port range, or aborted
    // with RST; on a half-closed flow it opens the flow again, on its backend: see `touch`): it
    // is balanced anew by the live table, as Linux conntrack starts a new entry (and the DNAT
    // rule decides) on a SYN in TIME_WAIT or CLOSE; it must not go on to the old one's
    // backend, draining or not.
    let syn = p.proto == PROTO_TCP && bare_syn(p.tcp_flags);
    if let Some((way, flow)) = lookup(index, set, &key) {
        // An expired flow, or a closed one opened again, is balanced anew below, into its own
        // slot.
        if !flow.ended(conf, now) && !(syn && flow.state == LB_CT_CLOSING) {
            let number = if flow.numbering == conf.numbering {
                flow.backend
            } else {
                nf_lb_renumber(index, way)
            };
            if backend_down(number) {
                rebalance = true;
            } else {
                touch(flow, p, now, true);
                count_backend(conf, number, len, false);
                if let Some(s) = stats() {
                    s.ct_hits += 1;
                }
                return Fate::nat(true, flow.addr[0], flow.port);
            }
        }
    }
    let Some(service) = service(p.dst, p.dport, p.proto) else {
        return Fate::pass();
    };
    if service.size == 0 {
        return Fate::drop(LB_DROP_NO_BACKEND);
    }
    let half = if service.active & 1 == 0 {
        service.table[0]
    } else {
        service.table[1]
    };
    let number = match NF_LB_TABLE.get(half.wrapping_add(hash % service.size)) {
        Some(&n) if n != NO_BACKEND => n,
        _ => return Fate::drop(LB_DROP_NO_BACKEND),
    };
    let Some(backend) = NF_LB_BACKENDS.get(number) else {
        return Fate::drop(LB_DROP_NO_BACKEND);
    };
    let (addr, port) = (backend.addr[0], backend.port);
    // Opened by a SYN, the flow waits for the backend's SYN-ACK (`touch`) on the short
    // timeout; tracked from any other packet (balanced again mid-connection), it is open.
    let state = if syn { LB_CT_SYN } else { LB_CT_OPEN };
    let evicted = track(index, set, &key, addr, port, number, state, conf, now);
    if let Some(s) = stats() {
        s.balanced += 1;
        if rebalance {
            s.rebalanced += 1;
        }
        if evicted {
            s.evicted += 1;
        }
    }
    count_backend(conf, number, len, true);
    Fate::nat(true, addr, port)
}

/// The service `vip:port` over `proto` (packet byte order), if there is one.
#[inline(always)]
fn service(vip: u32, port: u16, proto: u8) -> Option<&'static Service> {
    let key = ServiceKey {
        vip: v4(vip),
        port,
        proto,
        family: FAMILY_V4,
        _pad: 0,
    };
    // SAFETY: the value is only read, and userspace replaces it whole.
    unsafe { NF_LB_SERVICES.get(key) }
}

/// A flow's client side (addresses and ports in packet byte order).
struct FlowKey {
    client: u32,
    vip: u32,
    cport: u16,
    vport: u16,
    proto: u8,
}

/// The set of the connection table a flow of hash `hash` lives in: its index and its slots.
#[inline(always)]
fn flow_set(conf: &LbConf, hash: u32) -> Option<(u32, &'static mut LbFlowSet)> {
    if conf.flow_sets == 0 {
        return None;
    }
    let index = hash % conf.flow_sets;
    // SAFETY: a pointer into the map's value, valid for this program run; other CPUs may write
    // the same slots at once, which `nf_lb_flow_way` detects by each slot's check.
    let set = NF_LB_FLOWS.get_ptr_mut(index).map(|p| unsafe { &mut *p })?;
    Some((index, set))
}

/// A flow key's ports as one word (for the global functions' scalar arguments).
#[inline(always)]
fn ports(key: &FlowKey) -> u32 {
    u32::from(key.cport) << 16 | u32::from(key.vport)
}

/// The key of the global functions' scalar arguments.
#[inline(always)]
fn key_of(client: u32, vip: u32, ports: u32, proto: u32) -> FlowKey {
    FlowKey {
        client,
        vip,
        cport: (ports >> 16) as u16,
        vport: ports as u16,
        proto: proto as u8,
    }
}

/// The way of set `set` whose slot holds the flow (`client`, `vip`, `ports` as `cport << 16 |
/// vport`, `proto`) whole (its check right), or -1.
///
/// A global function, like [`nf_lb_new_flow_way`]: the verifier checks it once, on its own, and
/// its callers get the way as a bounded unknown. Inlined, each way was a path of its own through
/// everything after a lookup (and each service, for answers), which more than doubled the time
/// the stage took to verify.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nf_lb_flow_way(set: u32, client: u32, vip: u32, ports: u32, proto: u32) -> i64 {
    let Some(s) = NF_LB_FLOWS.get(set) else {
        return -1;
    };
    let key = key_of(client, vip, ports, proto);
    match s.flows.iter().position(|f| holds(f, &key)) {
        Some(way) if s.flows[way & (LB_FLOW_WAYS - 1)].is_whole() => way as i64,
        _ => -1,
    }
}

/// The way of set `set` a new flow (arguments as for [`nf_lb_flow_way`]) takes: see `way_for`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nf_lb_new_flow_way(
    set: u32,
    client: u32,
    vip: u32,
    ports: u32,
    proto: u32,
) -> i64 {
    let (Some(s), Some(conf)) = (NF_LB_FLOWS.get(set), NF_LB_CONF.get(0)) else {
        return 0;
    };
    // SAFETY: a BPF helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    way_for(s, &key_of(client, vip, ports, proto), conf, now) as i64
}

/// Whether slot `f` is the flow `key`'s (whole or torn).
#[inline(always)]
fn holds(f: &LbFlow, key: &FlowKey) -> bool {
    // One comparison, not six branches: the verifier walks each branch of every way.
    let ports = (u32::from(f.cport) << 16 | u32::from(f.vport))
        ^ (u32::from(key.cport) << 16 | u32::from(key.vport));
    let kind = (u32::from(f.proto) | u32::from(f.family) << 8)
        ^ (u32::from(key.proto) | u32::from(FAMILY_V4) << 8);
    (f.client[0] ^ key.client) | (f.vip[0] ^ key.vip) | ports | kind == 0
}

/// The flow `key` in set `index` (`set`), if a slot holds it whole: its way and its slot.
#[inline(always)]
fn lookup<'a>(index: u32, set: &'a mut LbFlowSet, key: &FlowKey) -> Option<(u32, &'a mut LbFlow)> {
    let way = nf_lb_flow_way(index, key.client, key.vip, ports(key), u32::from(key.proto));
    if way < 0 {
        return None;
    }
    let way = bounded_way(way);
    Some((way as u32, &mut set.flows[way]))
}

/// The number of the backend of the flow in way `way` of set `set` in the live numbering
/// ([`LbConf::numbering`]), written into the flow with that numbering: its backend's number for
/// its service in [`NF_LB_REVERSE`] (by the backend's identity), [`NO_BACKEND`] if the backend
/// left that service (or the slot was not whole when read).
///
/// A global function, as [`nf_lb_flow_way`]: checked once by the verifier, called once per flow
/// after a settings change that renumbered (the stage then trusts the flow's number).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nf_lb_renumber(set: u32, way: u32) -> u32 {
    let (Some(s), Some(conf)) = (NF_LB_FLOWS.get_ptr_mut(set), NF_LB_CONF.get(0)) else {
        return NO_BACKEND;
    };
    // SAFETY: a pointer into the map's value, valid for this program run; the way is masked
    // into the set. Read in place, not copied: the caller's stack and this function's share
    // the verifier's 512 bytes. Another CPU may write the slot meanwhile (see below).
    let f = unsafe { &mut (*s).flows[way as usize & (LB_FLOW_WAYS - 1)] };
    if !f.is_whole() {
        return NO_BACKEND;
    }
    let number = number_now(f);
    if number != f.backend {
        // The check covers the number: a reader between the two writes finds no flow (its
        // packet is balanced again, or dropped if an answer), as during any slot's write. The
        // check written is of the fields as read here: should another CPU write a new flow
        // into the slot meanwhile, a mix of the two fails it.
        // SAFETY: `f` is valid for writes; see above for readers.
        unsafe {
            ptr::write_volatile(&mut f.backend, number);
            ptr::write_volatile(&mut f.check, f.identity_check());
        }
    }
    // SAFETY: as above. A reader that still sees the old numbering renumbers again.
    unsafe { ptr::write_volatile(&mut f.numbering, conf.numbering) };
    number
}

/// The number of `flow`'s backend for the flow's service, as [`NF_LB_REVERSE`] holds it.
#[inline(always)]
fn number_now(flow: &LbFlow) -> u32 {
    // SAFETY: the value is only read, and userspace replaces it whole.
    let Some(rev) = (unsafe { NF_LB_REVERSE.get(flow.backend_key()) }) else {
        return NO_BACKEND;
    };
    let count = rev.count as usize;
    for i in 0..REVERSE_SERVICES {
        if i >= count {
            break;
        }
        let service = &rev.services[i];
        if service.vip[0] == flow.vip[0] && service.port == flow.vport {
            return rev.numbers[i];
        }
    }
    NO_BACKEND
}

/// A way a global function returned, bounded for the verifier, which knows nothing of it. The
/// compiler does (it sees the function), and would drop a plain mask as a no-op: the value
/// goes through the stack first.
#[inline(always)]
fn bounded_way(way: i64) -> usize {
    let mut slot = 0i64;
    // SAFETY: a local, written then read.
    unsafe {
        ptr::write_volatile(&mut slot, way);
        ptr::read_volatile(&slot) as usize & (LB_FLOW_WAYS - 1)
    }
}

/// The way a new flow `key` takes in `set`: the key's own slot if one holds it (expired, or
/// torn), else a free one, else the one whose flow was seen longest ago (expired ones first).
#[inline(always)]
fn way_for(set: &LbFlowSet, key: &FlowKey, conf: &LbConf, now: u64) -> usize {
    let mut way = 0;
    let mut oldest = 0u64;
    for (i, f) in set.flows.iter().enumerate() {
        if holds(f, key) {
            return i;
        }
        let idle = if f.proto == 0 {
            u64::MAX
        } else if f.ended(conf, now) {
            u64::MAX - 1
        } else {
            now.saturating_sub(f.last_seen_ns)
        };
        if i == 0 || idle > oldest {
            oldest = idle;
            way = i;
        }
    }
    way
}

/// Tracks the new flow `key` in `state`, balanced to backend `number` at `addr:port`, in its
/// set; true if that evicted a flow of another key that had not ended.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn track(
    index: u32,
    set: &mut LbFlowSet,
    key: &FlowKey,
    addr: u32,
    port: u16,
    number: u32,
    state: u8,
    conf: &LbConf,
    now: u64,
) -> bool {
    let way = bounded_way(nf_lb_new_flow_way(
        index,
        key.client,
        key.vip,
        ports(key),
        u32::from(key.proto),
    ));
    let f = &mut set.flows[way];
    let evicted = f.proto != 0 && !holds(f, key) && !f.ended(conf, now);
    let mut flow = LbFlow {
        client: v4(key.client),
        vip: v4(key.vip),
        cport: key.cport,
        vport: key.vport,
        proto: key.proto,
        family: FAMILY_V4,
        state,
        _pad: 0,
        addr: v4(addr),
        port,
        _pad2: 0,
        backend: number,
        check: 0,
        numbering: conf.numbering,
        last_seen_ns: now,
    };
    flow.check = flow.identity_check();
    // SAFETY: `f` points into the map's value. Another CPU may write or read the slot at the
    // same time: whatever mix of two flows that leaves fails the check (see `lookup`).
    unsafe { ptr::write_volatile(f, flow) };
    evicted
}

/// A packet from the egress side: a backend's answer gets the VIP back as its source.
#[inline(always)]
fn reply(p: &Packet, conf: &LbConf, now: u64) -> Fate {
    let a = answered(conf, p.src, p.sport, p.dst, p.dport, p.proto);
    let Some(flow) = a.flow else {
        return if a.backend {
            Fate::drop(LB_DROP_REPLY_UNTRACKED)
        } else {
            Fate::pass()
        };
    };
    if flow.ended(conf, now) {
        // The flow ended: its next client packet is balanced anew.
        return Fate::drop(LB_DROP_REPLY_UNTRACKED);
    }
    touch(flow, p, now, false);
    if let Some(s) = stats() {
        s.replies += 1;
    }
    Fate::nat(false, a.vip, a.port)
}

/// Whose answer a packet from `backend:bport` to `client:cport` over `proto` is: not a
/// backend's (`backend` false: its source is no backend of a service here); a backend's of no
/// tracked flow of its services with this client and this backend (`flow` none); or the flow
/// of service `vip:port` (`flow`, its slot).
///
/// A plain record whose every field is always set (`vip` and `port` zero without a flow), not
/// an enum with data: see [`Fate`]. `flow` is one pointer, null for none, never unset.
struct Answer {
    backend: bool,
    vip: u32,
    port: u16,
    flow: Option<&'static mut LbFlow>,
}

/// Finds the flow a backend's packet answers: the services the backend serves
/// ([`NF_LB_REVERSE`]) each make a flow key with the client; the flow must be on this backend.
#[inline(always)]
fn answered(conf: &LbConf, backend: u32, bport: u16, client: u32, cport: u16, proto: u8) -> Answer {
    let mut answer = Answer {
        backend: false,
        vip: 0,
        port: 0,
        flow: None,
    };
    let bkey = BackendKey {
        addr: v4(backend),
        port: bport,
        proto,
        family: FAMILY_V4,
    };
    // SAFETY: the value is only read, and userspace replaces it whole.
    let Some(rev) = (unsafe { NF_LB_REVERSE.get(bkey) }) else {
        return answer;
    };
    answer.backend = true;
    let count = rev.count as usize;
    for i in 0..REVERSE_SERVICES {
        if i >= count {
            break;
        }
        let service = &rev.services[i];
        let key = FlowKey {
            client,
            vip: service.vip[0],
            cport,
            vport: service.port,
            proto,
        };
        let hash = flow_hash(key.client, key.vip, key.cport, key.vport, proto);
        let Some((_, flow)) =
            flow_set(conf, hash).and_then(|(index, set)| lookup(index, set, &key))
        else {
            continue;
        };
        // The client's flow to this service went to another backend (balanced again after
        // this one's slot was lost): not this backend's flow.
        if flow.addr[0] == backend && flow.port == bport {
            answer.vip = service.vip[0];
            answer.port = service.port;
            answer.flow = Some(flow);
            return answer;
        }
    }
    answer
}

/// Backend `number` (a tracked flow's, in the live numbering) is down: the flow is balanced
/// again. A backend that left the settings ([`NO_BACKEND`]) has no health checks: its flows go
/// on until they end.
#[inline(always)]
fn backend_down(number: u32) -> bool {
    NF_LB_BACKENDS
        .get(number)
        .is_some_and(|b| b.flags & BACKEND_DOWN != 0)
}

/// A packet of a tracked flow, from its client or its backend: it is alive (refreshed at most
/// every 100 ms, to spare the cache line), and TCP's flags move it along its handshake and
/// teardown (`netfn_common::teardown`): the backend's SYN-ACK establishes a flow a SYN opened
/// (nothing else does: a challenge ACK, data or a FIN leave it on `tcp_syn`); a FIN from one
/// side half-closes it, one from each side or an RST starts its short closing timeout.
#[inline(always)]
fn touch(flow: &mut LbFlow, p: &Packet, now: u64, from_client: bool) {
    if now.saturating_sub(flow.last_seen_ns) > 100_000_000 {
        flow.last_seen_ns = now;
    }
    // The backend's SYN-ACK, a FIN, an RST, or (from the client) a bare SYN that opens a
    // half-closed flow again.
    if p.proto == PROTO_TCP && p.tcp_flags & (TCP_FIN | TCP_RST | TCP_SYN) != 0 {
        let state = LB_TEARDOWN.after(flow.state, p.tcp_flags, from_client);
        if state != flow.state {
            flow.state = state;
            flow.last_seen_ns = now;
        }
    }
}

#[inline(always)]
fn count_backend(conf: &LbConf, number: u32, len: u64, new_flow: bool) {
    // SAFETY: a BPF helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(index) = counter_index(cpu, conf.backends, number) else {
        return;
    };
    if let Some(c) = NF_LB_BACKEND_COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's slice: only this CPU writes it, and the program runs to its end
        // without migrating (as a per-CPU array's element).
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += len;
        if new_flow {
            c.new_flows += 1;
        }
    }
}

/// Where the L4 checksum is, from the L4 header.
#[inline(always)]
fn l4_check_offset(proto: u8) -> usize {
    if proto == PROTO_TCP { 16 } else { 6 }
}

/// TC: rewrites the destination (or source) address and port, with the checksums.
#[inline(always)]
fn nat_tc(ctx: &TcContext, p: &Packet, to_backend: bool, addr: u32, port: u16) -> Result<(), i64> {
    let (addr_at, port_at, old_addr, old_port) = if to_backend {
        (ETH_HLEN + 16, p.l4 + 2, p.dst, p.dport)
    } else {
        (ETH_HLEN + 12, p.l4, p.src, p.sport)
    };
    let check = p.l4 + l4_check_offset(p.proto);
    let mangled0 = if p.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    ctx.l4_csum_replace(
        check,
        u64::from(old_addr),
        u64::from(addr),
        u64::from(BPF_F_PSEUDO_HDR) | 4 | mangled0,
    )?;
    ctx.l4_csum_replace(check, u64::from(old_port), u64::from(port), 2 | mangled0)?;
    ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(old_addr), u64::from(addr), 4)?;
    ctx.store(addr_at, &addr, 0)?;
    ctx.store(port_at, &port, 0)?;
    Ok(())
}

/// XDP: the same rewrite by hand; `p` was parsed from `data..data_end`. One path per protocol,
/// each with its own bounds check, so that every verifier (6.1's too) sees the L4 checksum in
/// bounds.
#[inline(always)]
fn nat_xdp(data: usize, data_end: usize, p: &Packet, to_backend: bool, addr: u32, port: u16) {
    if p.proto == PROTO_TCP {
        nat_xdp_l4::<16>(data, data_end, p, to_backend, addr, port);
    } else {
        nat_xdp_l4::<6>(data, data_end, p, to_backend, addr, port);
    }
}

/// [`nat_xdp`] for an L4 header whose checksum is at `CHECK` (TCP 16, UDP 6).
#[inline(always)]
fn nat_xdp_l4<const CHECK: usize>(
    data: usize,
    data_end: usize,
    p: &Packet,
    to_backend: bool,
    addr: u32,
    port: u16,
) {
    let ip = data + ETH_HLEN;
    // Bounded for the verifier: an IPv4 header is at most 60 bytes.
    let l4 = data + (p.l4 & 0x7f);
    if l4 + CHECK + 2 > data_end || ip + IP_HLEN > data_end {
        return;
    }
    let (old_addr, old_port) = if to_backend {
        (p.dst, p.dport)
    } else {
        (p.src, p.sport)
    };
    let ip_check: u16 = read(ip + 10);
    let l4_check: u16 = read(l4 + CHECK);
    let new_ip_check = replace32(ip_check, old_addr, addr);
    // The L4 checksum covers the address (in its pseudo-header) and the port.
    let mut new_l4_check = replace16(replace32(l4_check, old_addr, addr), old_port, port);
    let udp_without_checksum = p.proto == PROTO_UDP && l4_check == 0;
    if p.proto == PROTO_UDP && new_l4_check == 0 {
        new_l4_check = 0xffff;
    }
    // SAFETY: every address written is inside the bounds checked above (the L4 header up to
    // its checksum, the IPv4 header's first 20 bytes).
    unsafe {
        if to_backend {
            ptr::write((ip + 16) as *mut u32, addr);
            ptr::write((l4 + 2) as *mut u16, port);
        } else {
            ptr::write((ip + 12) as *mut u32, addr);
            ptr::write(l4 as *mut u16, port);
        }
        ptr::write((ip + 10) as *mut u16, new_ip_check);
        if !udp_without_checksum {
            ptr::write((l4 + CHECK) as *mut u16, new_l4_check);
        }
    }
}

/// The destination (`to_backend`) or the source of the IPv4 header, and where it is in the frame.
#[inline(always)]
fn readdressed(p: &Packet, to_backend: bool) -> (usize, u32) {
    if to_backend {
        (ETH_HLEN + 16, p.dst)
    } else {
        (ETH_HLEN + 12, p.src)
    }
}

/// TC: a later fragment's address rewrite (IP header and its checksum only).
#[inline(always)]
fn readdress_tc(ctx: &TcContext, p: &Packet, to_backend: bool, addr: u32) -> Result<(), i64> {
    let (at, old) = readdressed(p, to_backend);
    ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(old), u64::from(addr), 4)?;
    ctx.store(at, &addr, 0)?;
    Ok(())
}

/// XDP: the same by hand (RFC 1624).
#[inline(always)]
fn readdress_xdp(data: usize, data_end: usize, p: &Packet, to_backend: bool, addr: u32) {
    let ip = data + ETH_HLEN;
    if ip + IP_HLEN > data_end {
        return;
    }
    let (at, old) = readdressed(p, to_backend);
    let new_check = replace32(read(ip + 10), old, addr);
    // SAFETY: both writes are inside the IPv4 header's first 20 bytes, checked above.
    unsafe {
        ptr::write((data + at) as *mut u32, addr);
        ptr::write((ip + 10) as *mut u16, new_check);
    }
}
