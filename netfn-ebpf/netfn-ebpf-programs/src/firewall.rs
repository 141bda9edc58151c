//! The firewall kind's stage: a stateful firewall at its function's hop, entered from the
//! forwarder by a tail call (`nf_fw_tc`, `nf_fw_xdp`) with a packet the forwarder would forward.
//!
//! 1. The connection table ([`NF_FW_CT`], LRU, keyed direction-independently) is looked up
//!    first: a packet of a live connection passes without rule evaluation, and moves the
//!    connection's state on (TCP: a reply establishes it, a FIN half-closes it, a FIN from each
//!    side or an RST closes it, see `netfn_common::teardown`; UDP: a reply makes it a stream).
//!    An entry past its state's timeout counts as absent and is removed.
//! 2. A packet of no connection: an ICMP error about a tracked connection passes (related), any
//!    other ICMP error is dropped (`fw-invalid`), a TCP packet that is not a bare SYN is dropped
//!    (`fw-not-syn`); anything else is classified by
//!    the compiled rules (`netfn_common::firewall::walk` over [`NF_FW_NODES`] and
//!    [`NF_FW_ENTRIES`], at most 64 map lookups whatever the rule count), or the default verdict.
//! 3. The verdict: accept (after the rule's rate limit, if any) enters the connection into the
//!    table and forwards the packet as the forwarder does; drop counts `fw-rule` (or
//!    `fw-rate-limit`); reject answers the client at once, from the firewall: a TCP RST from the
//!    address the client called, an ICMP port-unreachable from the firewall's own address for
//!    anything else, sent back out of the interface the packet came in on.
//!
//! IPv4 fragments: a datagram's first fragment carries the ports and is judged as above; when it
//! passes, the datagram is entered into [`NF_FW_FRAGS`], and its later fragments (no ports of
//! their own) pass after it, within the kernel's reassembly timeout. A later fragment of a
//! datagram whose first fragment did not pass is dropped (`fw-fragment`), as nftables drops
//! the whole datagram after the kernel's reassembly: the verdict is the datagram's, taken once.
//!
//! Every map here is this function's own instance, sized for its settings by userspace; the
//! connection table and the statistics outlive a settings change (pinned per function), the
//! compiled rules are new with each change, which the stage array switches in one step.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, xdp_action},
    helpers::generated::{
        bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_head, bpf_skb_change_tail,
        bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use netfn_common::{
    FRAG_TIMEOUT_NS, FRAGS_SIZE, FragKey, FwdEntry, KIND_DROP_BASE,
    firewall::{
        ACTION_ACCEPT, ACTION_RATE_LIMITED, ACTION_REJECT, CT_CLOSING, CT_ESTABLISHED,
        CT_FROM_EGRESS, CT_NEW, CT_OPENED_BY_A, CtEntry, CtKey, FW_DROP_FRAGMENT, FW_DROP_INVALID,
        FW_DROP_NOT_SYN, FW_DROP_RATE_LIMIT, FW_DROP_REJECTED, FW_DROP_RULE, FW_TEARDOWN, FragSeen,
        FwConf, FwStats, Key, LeafEntry, NO_RULE, Node, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
        RateBucket, RuleAction, RuleCounters, walk,
    },
};

use crate::forwarder::{self, count_drop, read, rewrite, send_tc, send_xdp};
use crate::headers::{
    ETH_HLEN, FIRST, ICMP_DEST_UNREACH, ICMP_HLEN, ICMP_PARAMETER_PROBLEM, ICMP_TIME_EXCEEDED,
    IP_HLEN, IP_MAX_HLEN, LATER, TCP_ACK, TCP_RST, bare_syn, datagram, fold, fragment,
    ipv4_header_len, words,
};

#[map]
static NF_FW_NODES: Array<Node> = Array::with_max_entries(2, 0);
#[map]
static NF_FW_ENTRIES: Array<LeafEntry> = Array::with_max_entries(1, 0);
#[map]
static NF_FW_ACTIONS: Array<RuleAction> = Array::with_max_entries(1, 0);
#[map]
static NF_FW_CONF: Array<FwConf> = Array::with_max_entries(1, 0);
#[map]
static NF_FW_RATE: Array<RateBucket> = Array::with_max_entries(1, 0);
#[map]
static NF_FW_RULE_COUNTERS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(1, 0);
#[map]
static NF_FW_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(1, 0);
#[map]
static NF_FW_STATS: PerCpuArray<FwStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static NF_FW_FRAGS: LruHashMap<FragKey, FragSeen> = LruHashMap::with_max_entries(FRAGS_SIZE, 0);

const TCP_HLEN: usize = 20;
/// Most bytes the stage reads: Ethernet, an IPv4 header with options, and an ICMP error's
/// quoted IPv4 header, options too, plus its first 8 bytes (ports, or a quoted echo's
/// identifier).
const READ_LEN: u32 = (ETH_HLEN + IP_MAX_HLEN + ICMP_HLEN + IP_MAX_HLEN + 8) as u32;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_SOURCE_QUENCH: u8 = 4;
const ICMP_REDIRECT: u8 = 5;

/// Frame lengths of the answers a reject sends.
const RST_LEN: u32 = (ETH_HLEN + IP_HLEN + TCP_HLEN) as u32;
/// ICMP error: its IPv4 and ICMP headers, then the offending IPv4 header and 8 bytes of it.
const UNREACH_LEN: u32 = (ETH_HLEN + IP_HLEN + ICMP_HLEN + IP_HLEN + 8) as u32;
const UNREACH_GROW: i32 = (IP_HLEN + ICMP_HLEN) as i32;

/// The stage's decision: a plain record whose every field is always set. (It was an enum
/// with data; on the paths of one variant the others' fields were unset, LLVM copied them
/// anyway, and the verifier refused the program: `R3 !read_ok`.)
#[derive(Clone, Copy)]
struct Fate {
    /// [`PASS`] (forward it: the caller rewrites and sends it), [`DROP`], [`REJECT_TCP`]
    /// (answer with a TCP RST) or [`REJECT_ICMP`] (answer with an ICMP port-unreachable).
    what: u8,
    /// PASS: the TTL it leaves with.
    ttl: u8,
    /// DROP: the reason.
    reason: usize,
    /// REJECT_TCP: the RST; REJECT_ICMP: its source and destination (`src`, `dst`).
    rst: Rst,
}

const PASS: u8 = 0;
const DROP: u8 = 1;
const REJECT_TCP: u8 = 2;
const REJECT_ICMP: u8 = 3;

impl Fate {
    #[inline(always)]
    fn pass(ttl: u8) -> Fate {
        Fate {
            what: PASS,
            ttl,
            reason: 0,
            rst: Rst::default(),
        }
    }

    #[inline(always)]
    fn drop(reason: usize) -> Fate {
        Fate {
            what: DROP,
            ttl: 0,
            reason,
            rst: Rst::default(),
        }
    }

    #[inline(always)]
    fn reject_tcp(rst: Rst) -> Fate {
        Fate {
            what: REJECT_TCP,
            ttl: 0,
            reason: 0,
            rst,
        }
    }

    #[inline(always)]
    fn reject_icmp(src: u32, dst: u32) -> Fate {
        Fate {
            what: REJECT_ICMP,
            ttl: 0,
            reason: 0,
            rst: Rst {
                src,
                dst,
                ..Rst::default()
            },
        }
    }
}

/// What a TCP RST answer needs of the SYN it answers (addresses in packet byte order, ports
/// and sequence numbers as in the packet).
#[derive(Clone, Copy, Default)]
struct Rst {
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    /// The acknowledgement number: the SYN's sequence number + 1 + its payload.
    ack: u32,
}

/// The headers of the packet, as far as the firewall reads them.
#[derive(Clone, Copy)]
struct Packet {
    /// Packet byte order.
    src: u32,
    dst: u32,
    ttl: u8,
    proto: u8,
    /// Host order; 0 where the protocol has none (ICMP: see `icmp_type`).
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    icmp_type: u8,
    /// The IPv4 header had options (then no reject is built: the drop stands).
    options: bool,
    /// TCP: sequence number (host order) and payload length.
    seq: u32,
    payload: u32,
    /// ICMP errors: the quoted connection (as the quoted packet went) when `quoted`, else zero.
    /// (Not an `Option`: its fields were unset on the paths without one, and LLVM read them
    /// there, which the verifier refuses, `R3 !read_ok`.)
    inner: Inner,
    quoted: bool,
    /// An ICMP error (any type but echo, echo reply and the other queries).
    error: bool,
    /// Where it stands in its datagram: [`WHOLE`], [`FIRST`] or [`LATER`] (plain numbers: an
    /// enum with data here made LLVM read registers the verifier saw unset).
    frag: u8,
    /// The IP identification (packet byte order): with the addresses and the protocol, it names
    /// the datagram ([`Packet::datagram`]).
    ip_id: u16,
}

#[derive(Clone, Copy, Default)]
struct Inner {
    src: u32,
    dst: u32,
    proto: u8,
    sport: u16,
    dport: u16,
}

/// TC: the firewall stage of a function (see the module doc).
#[classifier]
pub fn nf_fw_tc(ctx: TcContext) -> i32 {
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
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Some(p) = parse(data, data_end) else {
        count_drop(slot, netfn_common::DROP_MALFORMED);
        return TC_ACT_SHOT;
    };
    let fate = judge(&p, e, u64::from(ctx.len()));
    match fate.what {
        PASS => {
            passed(&p);
            rewrite(data, data + ETH_HLEN, fate.ttl, e);
            send_tc(&ctx, slot, e.redirect_ifindex)
        }
        DROP => {
            count_drop(slot, KIND_DROP_BASE + fate.reason);
            TC_ACT_SHOT
        }
        REJECT_TCP => {
            count_drop(slot, KIND_DROP_BASE + FW_DROP_REJECTED);
            // SAFETY: BPF helpers on our own skb; data pointers are read again afterwards.
            if unsafe { bpf_skb_change_tail(ctx.skb.skb, RST_LEN, 0) } != 0 {
                return TC_ACT_SHOT;
            }
            let (data, data_end) = (ctx.data(), ctx.data_end());
            if data + RST_LEN as usize > data_end {
                return TC_ACT_SHOT;
            }
            write_rst(data, e, &fate.rst);
            // SAFETY: a BPF helper; out of the interface the packet came in on.
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        _ => {
            count_drop(slot, KIND_DROP_BASE + FW_DROP_REJECTED);
            // SAFETY: BPF helpers on our own skb; data pointers are read again afterwards.
            unsafe {
                if bpf_skb_change_head(ctx.skb.skb, UNREACH_GROW as u32, 0) != 0
                    || bpf_skb_change_tail(ctx.skb.skb, UNREACH_LEN, 0) != 0
                {
                    return TC_ACT_SHOT;
                }
            }
            let (data, data_end) = (ctx.data(), ctx.data_end());
            if data + UNREACH_LEN as usize > data_end {
                return TC_ACT_SHOT;
            }
            write_unreach(data, e, fate.rst.src, fate.rst.dst);
            // SAFETY: a BPF helper; out of the interface the packet came in on.
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
    }
}

/// XDP: the firewall stage of a function (see the module doc).
#[xdp]
pub fn nf_fw_xdp(ctx: XdpContext) -> u32 {
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
    let fate = judge(&p, e, len);
    match fate.what {
        PASS => {
            passed(&p);
            rewrite(data, data + ETH_HLEN, fate.ttl, e);
            send_xdp(slot, e.redirect_ifindex, len)
        }
        DROP => {
            count_drop(slot, KIND_DROP_BASE + fate.reason);
            xdp_action::XDP_DROP
        }
        REJECT_TCP => {
            count_drop(slot, KIND_DROP_BASE + FW_DROP_REJECTED);
            let shrink = RST_LEN as i32 - len as i32;
            // SAFETY: a BPF helper on our own frame; data pointers are read again afterwards.
            if unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } != 0 {
                return xdp_action::XDP_DROP;
            }
            let (data, data_end) = (ctx.data(), ctx.data_end());
            if data + RST_LEN as usize > data_end {
                return xdp_action::XDP_DROP;
            }
            write_rst(data, e, &fate.rst);
            xdp_action::XDP_TX
        }
        _ => {
            count_drop(slot, KIND_DROP_BASE + FW_DROP_REJECTED);
            // SAFETY: BPF helpers on our own frame; data pointers are read again afterwards.
            unsafe {
                if bpf_xdp_adjust_head(ctx.ctx, -UNREACH_GROW) != 0 {
                    return xdp_action::XDP_DROP;
                }
                let now = (ctx.data_end() - ctx.data()) as i32;
                if bpf_xdp_adjust_tail(ctx.ctx, UNREACH_LEN as i32 - now) != 0 {
                    return xdp_action::XDP_DROP;
                }
            }
            let (data, data_end) = (ctx.data(), ctx.data_end());
            if data + UNREACH_LEN as usize > data_end {
                return xdp_action::XDP_DROP;
            }
            write_unreach(data, e, fate.rst.src, fate.rst.dst);
            xdp_action::XDP_TX
        }
    }
}

/// Reads the headers the firewall needs; `None` for a packet too short for what its headers say
/// (the forwarder has checked Ethernet, IPv4 version and a 20-byte header already).
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
    let tot_len = u16::from_be(read::<u16>(ip + 2)) as u32;
    let mut p = Packet {
        src: read(ip + 12),
        dst: read(ip + 16),
        ttl: read(ip + 8),
        proto: read(ip + 9),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        options: ihl != IP_HLEN,
        seq: 0,
        payload: 0,
        inner: Inner::default(),
        quoted: false,
        error: false,
        frag: fragment(u16::from_be(read(ip + 6))),
        ip_id: read(ip + 4),
    };
    if p.frag == LATER {
        // No transport header: the datagram's first fragment decides (see `judge`).
        return Some(p);
    }
    let l4 = ip + ihl;
    match p.proto {
        PROTO_TCP => {
            if l4 + TCP_HLEN > data_end {
                return None;
            }
            p.sport = u16::from_be(read(l4));
            p.dport = u16::from_be(read(l4 + 2));
            p.seq = u32::from_be(read(l4 + 4));
            p.tcp_flags = read(l4 + 13);
            let doff = ((read::<u8>(l4 + 12) >> 4) as u32) * 4;
            p.payload = tot_len.saturating_sub(ihl as u32 + doff);
        }
        PROTO_UDP => {
            if l4 + 8 > data_end {
                return None;
            }
            p.sport = u16::from_be(read(l4));
            p.dport = u16::from_be(read(l4 + 2));
        }
        PROTO_ICMP => {
            if l4 + ICMP_HLEN > data_end {
                return None;
            }
            p.icmp_type = read(l4);
            match p.icmp_type {
                ICMP_ECHO | ICMP_ECHO_REPLY => {
                    // The echo identifier plays both ports, so request and reply meet.
                    let id = u16::from_be(read(l4 + 4));
                    p.sport = id;
                    p.dport = id;
                }
                ICMP_DEST_UNREACH
                | ICMP_SOURCE_QUENCH
                | ICMP_REDIRECT
                | ICMP_TIME_EXCEEDED
                | ICMP_PARAMETER_PROBLEM => {
                    p.error = true;
                    let q = l4 + ICMP_HLEN;
                    // The quoted header may carry options (IHL 5 to 15), as the packet it quotes
                    // did: the quoted ports follow them (conntrack reads them there too).
                    let quoted_ihl = if q + IP_HLEN + 8 <= data_end {
                        ipv4_header_len(read(q))
                    } else {
                        0
                    };
                    let ql4 = q + quoted_ihl;
                    if quoted_ihl != 0 && ql4 + 8 <= data_end {
                        let proto: u8 = read(q + 9);
                        let quoted_type: u8 = read(ql4);
                        // A quoted echo is keyed by its identifier, both ways (as above); anything
                        // else by its first four bytes, the ports.
                        let (sport, dport) = if proto == PROTO_ICMP
                            && (quoted_type == ICMP_ECHO || quoted_type == ICMP_ECHO_REPLY)
                        {
                            let id = u16::from_be(read(ql4 + 4));
                            (id, id)
                        } else {
                            (u16::from_be(read(ql4)), u16::from_be(read(ql4 + 2)))
                        };
                        p.quoted = true;
                        p.inner = Inner {
                            src: read(q + 12),
                            dst: read(q + 16),
                            proto,
                            sport,
                            dport,
                        };
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
    Some(p)
}

/// The connection-table key of a connection seen from one endpoint, and whether that endpoint
/// is the key's `a`.
#[inline(always)]
fn ct_key(src: u32, sport: u16, dst: u32, dport: u16, proto: u8) -> (CtKey, bool) {
    let (s, d) = (u32::from_be(src) as u64, u32::from_be(dst) as u64);
    let src_is_a = (s, sport) <= (d, dport);
    let (a, a_port, b, b_port) = if src_is_a {
        (s, sport, d, dport)
    } else {
        (d, dport, s, sport)
    };
    (
        CtKey {
            a: [0, a],
            b: [0, b],
            a_port,
            b_port,
            proto,
            _pad: [0; 3],
        },
        src_is_a,
    )
}

#[inline(always)]
fn stats() -> Option<&'static mut FwStats> {
    // SAFETY: a per-CPU element is only touched by this CPU, and the program is not preempted.
    NF_FW_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// The firewall's decision for one packet arriving on the interface of entry `e`, fragments
/// included: a datagram's first fragment is decided as a whole packet (it carries the ports;
/// [`passed`] enters the datagram when it passes), and its later fragments follow that decision.
#[inline(always)]
fn judge(p: &Packet, e: &FwdEntry, len: u64) -> Fate {
    match p.frag {
        LATER => {
            // SAFETY: a BPF helper without arguments.
            let now = unsafe { bpf_ktime_get_ns() };
            // SAFETY: a copy of an LRU value read now; a concurrent update only moves `at_ns`.
            let datagram = datagram(p.src, p.dst, p.ip_id, p.proto);
            let seen = unsafe { NF_FW_FRAGS.get(datagram) }.copied();
            match seen {
                Some(s) if now.saturating_sub(s.at_ns) <= FRAG_TIMEOUT_NS => Fate::pass(p.ttl),
                _ => Fate::drop(FW_DROP_FRAGMENT),
            }
        }
        _ => decide(p, e, len),
    }
}

/// Called for each packet that passes: a first fragment enters its datagram, whose later
/// fragments then follow it (see [`judge`]). Here rather than in `judge`, on the branch that
/// forwards: a second match on the verdict there made the XDP program unverifiable (LLVM read
/// an unset register of the verdict).
#[inline(always)]
fn passed(p: &Packet) {
    if p.frag == FIRST {
        // SAFETY: a BPF helper without arguments.
        let at_ns = unsafe { bpf_ktime_get_ns() };
        // A full table evicts the oldest datagram; should this insert fail, the datagram's
        // later fragments are dropped and counted (`fw-fragment`).
        let datagram = datagram(p.src, p.dst, p.ip_id, p.proto);
        let _ = NF_FW_FRAGS.insert(datagram, FragSeen { at_ns }, 0);
    }
}

/// The firewall's decision for one packet arriving on the interface of entry `e`.
#[inline(always)]
fn decide(p: &Packet, e: &FwdEntry, len: u64) -> Fate {
    let Some(conf) = NF_FW_CONF.get(0) else {
        return Fate::drop(FW_DROP_RULE);
    };
    // SAFETY: a BPF helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let from_egress = e.counter_slot & 1 == netfn_common::DIR_REVERSE;
    // An ICMP error is never a packet of a connection of its own (its key, ports 0, would be
    // that of other portless ICMP between the two hosts, and pass it): its key names no
    // protocol, so that only the related check below lets one through.
    let proto = if p.error { 0 } else { p.proto };
    let (key, src_is_a) = ct_key(p.src, p.sport, p.dst, p.dport, proto);

    let bare_syn = bare_syn(p.tcp_flags);
    if let Some(ct) = NF_FW_CT.get_ptr_mut(key) {
        // SAFETY: the value of an LRU entry found just now; concurrent writers store whole
        // fields, and a torn view of `state` or `last_seen_ns` only shifts a timeout.
        let ct = unsafe { &mut *ct };
        // Another CPU may have stamped the entry after this packet read the clock: age 0.
        let live = conf.live(p.proto, ct, now);
        // The ports of a TCP connection that closed, opened again (a client that wrapped its
        // port range, or one that aborted with RST): the old connection is over, as conntrack
        // ends one in TIME_WAIT or CLOSE on a new SYN, and the rules decide the new one (it
        // must not live on in the old one's closing state and timeout).
        let reopened = p.proto == PROTO_TCP && ct.state == CT_CLOSING && bare_syn;
        if live && !reopened {
            let from_opener = src_is_a == (ct.flags & CT_OPENED_BY_A != 0);
            if p.proto == PROTO_TCP {
                // The answer's SYN-ACK establishes a new connection (a bare ACK, such as the
                // challenge ACK of a server still in CLOSE_WAIT to a SYN that reopened a
                // half-closed connection, establishes nothing, as in conntrack; an RST before
                // the answer refuses it, a FIN changes nothing); a FIN, an RST, or a SYN that
                // opens a half-closed connection again move it along its teardown.
                ct.state = FW_TEARDOWN.after(ct.state, p.tcp_flags, from_opener);
            } else if ct.state == CT_NEW && !from_opener {
                // The answer.
                ct.state = CT_ESTABLISHED;
            }
            ct.last_seen_ns = now;
            if let Some(s) = stats() {
                s.ct_hits += 1;
            }
            return Fate::pass(p.ttl);
        }
        let _ = NF_FW_CT.remove(key);
        // A reopened connection's old entry counts as expired: its life ended (so that
        // evicted = created - expired - live stays true).
        if let Some(s) = stats() {
            s.ct_expired += 1;
        }
    }

    // ICMP errors about a live tracked connection pass, sent to the host whose packet they
    // quote (as conntrack relates them: `nf_conntrack_inet_error`).
    let q = p.inner;
    if p.quoted && p.dst == q.src {
        let (inner, _) = ct_key(q.src, q.sport, q.dst, q.dport, q.proto);
        // SAFETY: the value of an LRU entry found just now (see above: a torn view only shifts
        // a timeout).
        if let Some(ct) = NF_FW_CT.get_ptr(inner)
            && conf.live(q.proto, unsafe { &*ct }, now)
        {
            return Fate::pass(p.ttl);
        }
    }
    // Any other ICMP error is about nothing this firewall passed: conntrack holds it invalid and
    // nftables' `ct state invalid drop` drops it before the rules, as the stage does (a rule that
    // lets ICMP in must not let forged unreachables or redirects reach an endpoint).
    if p.error {
        return Fate::drop(FW_DROP_INVALID);
    }
    if p.proto == PROTO_TCP && !bare_syn {
        return Fate::drop(FW_DROP_NOT_SYN);
    }

    // The agent's chain probe passes before the rules (counted at `rules + 1`).
    if conf.probe_port != 0
        && p.proto == PROTO_UDP
        && !from_egress
        && p.src == conf.probe_src
        && p.dst == conf.probe_dst
        && u32::from(p.dport) == conf.probe_port
    {
        count_rule(conf.rules.wrapping_add(1), len);
        track(&key, src_is_a, from_egress, NO_RULE, now);
        return Fate::pass(p.ttl);
    }

    let classify = Key {
        family: 0,
        side: from_egress as u8,
        proto: p.proto,
        src: [0, u32::from_be(p.src) as u64],
        dst: [0, u32::from_be(p.dst) as u64],
        sport: if p.proto == PROTO_ICMP { 0 } else { p.sport },
        dport: if p.proto == PROTO_ICMP {
            p.icmp_type as u16
        } else {
            p.dport
        },
    };
    let small = u64::from(classify.family)
        | u64::from(classify.side) << 8
        | u64::from(classify.proto) << 16
        | u64::from(classify.sport) << 32
        | u64::from(classify.dport) << 48;
    let rule = nf_fw_classify(
        small,
        classify.src[0],
        classify.src[1],
        classify.dst[0],
        classify.dst[1],
    );
    if let Some(s) = stats() {
        s.classified += 1;
    }
    let (counter, action) = if rule == NO_RULE {
        (conf.rules, conf.default_action)
    } else {
        match NF_FW_ACTIONS.get(rule) {
            Some(a) => {
                if a.flags & ACTION_RATE_LIMITED != 0 && !take_token(rule, a, now) {
                    return Fate::drop(FW_DROP_RATE_LIMIT);
                }
                (rule, a.action)
            }
            None => (conf.rules, conf.default_action),
        }
    };
    count_rule(counter, len);

    match action {
        ACTION_ACCEPT => {
            track(&key, src_is_a, from_egress, rule, now);
            Fate::pass(p.ttl)
        }
        // Never an ICMP error about an ICMP error (RFC 1122 3.2.2, as the kernel's icmp_send),
        // nor to a broadcast or multicast destination: those are dropped instead.
        ACTION_REJECT if !p.options && answerable(p) => {
            if p.proto == PROTO_TCP {
                Fate::reject_tcp(Rst {
                    src: p.dst,
                    dst: p.src,
                    sport: p.dport,
                    dport: p.sport,
                    ack: p.seq.wrapping_add(1).wrapping_add(p.payload),
                })
            } else {
                let own = if from_egress {
                    e.local_addrs[1]
                } else {
                    e.local_addrs[0]
                };
                Fate::reject_icmp(own, p.src)
            }
        }
        _ => Fate::drop(FW_DROP_RULE),
    }
}

/// Whether a rejected packet may be answered: not to the limited broadcast or a multicast
/// address. (Never an ICMP error either, RFC 1122 3.2.2: those never reach the rules, see
/// [`decide`].)
#[inline(always)]
fn answerable(p: &Packet) -> bool {
    let dst = u32::from_be(p.dst);
    dst != u32::MAX && dst >> 28 != 0xe
}

/// The classifier, as a global BPF function: the verifier checks it once, on its own, instead of
/// once for every path of the stage that reaches it (which made loading the stage slow). Its
/// arguments are scalars (global functions take nothing else): the key's small fields packed
/// (family, side, proto in the low bytes, sport at bit 32, dport at bit 48), then the
/// addresses' words. Returns the first matching rule, or `NO_RULE`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nf_fw_classify(
    small: u64,
    src_hi: u64,
    src_lo: u64,
    dst_hi: u64,
    dst_lo: u64,
) -> u32 {
    let key = Key {
        family: small as u8,
        side: (small >> 8) as u8,
        proto: (small >> 16) as u8,
        src: [src_hi, src_lo],
        dst: [dst_hi, dst_lo],
        sport: (small >> 32) as u16,
        dport: (small >> 48) as u16,
    };
    walk(|i| NF_FW_NODES.get(i), |i| NF_FW_ENTRIES.get(i), &key).rule
}

/// Counts a new connection's first packet at `counter` of the rule counters.
#[inline(always)]
fn count_rule(counter: u32, len: u64) {
    if let Some(c) = NF_FW_RULE_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: as in `stats`.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += len;
    }
}

/// Enters an accepted connection into the table.
#[inline(always)]
fn track(key: &CtKey, src_is_a: bool, from_egress: bool, rule: u32, now: u64) {
    let mut flags = if src_is_a { CT_OPENED_BY_A } else { 0 };
    if from_egress {
        flags |= CT_FROM_EGRESS;
    }
    let entry = CtEntry {
        last_seen_ns: now,
        rule,
        state: CT_NEW,
        flags,
        _pad: [0; 2],
    };
    let inserted = NF_FW_CT.insert(key, entry, 0).is_ok();
    if let Some(s) = stats() {
        if inserted {
            s.ct_created += 1;
        } else {
            s.ct_insert_failed += 1;
        }
    }
}

/// The rule's token bucket: true if the packet may pass.
#[inline(always)]
fn take_token(rule: u32, a: &RuleAction, now: u64) -> bool {
    let Some(b) = NF_FW_RATE.get_ptr_mut(rule) else {
        return true;
    };
    // SAFETY: an array element; CPUs race on it without a lock, which makes the limit
    // approximate under load on several CPUs (never a wrong verdict for other rules).
    let b = unsafe { &mut *b };
    let cost = 1_000_000_000 / (a.pps.max(1) as u64);
    let cap = cost.saturating_mul(a.burst.max(1) as u64);
    let credit = core::cmp::min(
        cap,
        b.credit_ns.saturating_add(now.saturating_sub(b.last_ns)),
    );
    b.last_ns = now;
    if credit >= cost {
        b.credit_ns = credit - cost;
        true
    } else {
        b.credit_ns = credit;
        false
    }
}

/// Writes the Ethernet header of an answer: back to the neighbour the packet came from.
#[inline(always)]
fn write_eth(data: usize, e: &FwdEntry) {
    let eth = data as *mut u16;
    // SAFETY: the caller checked that the frame holds at least an Ethernet header.
    unsafe {
        for i in 0..3 {
            core::ptr::write(eth.add(i), e.peer_mac[i]);
            core::ptr::write(eth.add(3 + i), e.own_mac[i]);
        }
        core::ptr::write(eth.add(6), u16::from_ne_bytes([0x08, 0x00]));
    }
}

/// Writes a 20-byte IPv4 header (no options, DF, TTL 64) at `ip`; returns nothing, the checksum
/// is computed from the values.
#[inline(always)]
fn write_ip(ip: usize, tot_len: u16, proto: u8, src: u32, dst: u32) {
    let h: [u16; 10] = [
        u16::from_ne_bytes([0x45, 0]),
        tot_len.to_be(),
        0,
        0x4000u16.to_be(),
        u16::from_ne_bytes([64, proto]),
        0,
        (src & 0xffff) as u16,
        (src >> 16) as u16,
        (dst & 0xffff) as u16,
        (dst >> 16) as u16,
    ];
    let mut sum = 0u32;
    for w in h {
        sum += w as u32;
    }
    let p = ip as *mut u16;
    // SAFETY: the caller checked that 20 bytes at `ip` are in the frame.
    unsafe {
        for (i, w) in h.iter().enumerate() {
            core::ptr::write(p.add(i), *w);
        }
        core::ptr::write(p.add(5), fold(sum));
    }
}

/// Turns the frame at `data` (at least [`RST_LEN`] bytes) into the RST answering `rst`.
#[inline(always)]
fn write_rst(data: usize, e: &FwdEntry, rst: &Rst) {
    write_eth(data, e);
    let ip = data + ETH_HLEN;
    write_ip(ip, (IP_HLEN + TCP_HLEN) as u16, PROTO_TCP, rst.src, rst.dst);
    let tcp: [u16; 10] = [
        rst.sport.to_be(),
        rst.dport.to_be(),
        0,
        0,
        ((rst.ack >> 16) as u16).to_be(),
        ((rst.ack & 0xffff) as u16).to_be(),
        u16::from_ne_bytes([0x50, TCP_RST | TCP_ACK]),
        0,
        0,
        0,
    ];
    // Pseudo-header: addresses, protocol, TCP length.
    let mut sum = words(rst.src) + words(rst.dst) + (PROTO_TCP as u16).to_be() as u32;
    sum += (TCP_HLEN as u16).to_be() as u32;
    for w in tcp {
        sum += w as u32;
    }
    let p = (ip + IP_HLEN) as *mut u16;
    // SAFETY: the caller checked the frame holds RST_LEN bytes.
    unsafe {
        for (i, w) in tcp.iter().enumerate() {
            core::ptr::write(p.add(i), *w);
        }
        core::ptr::write(p.add(8), fold(sum));
    }
}

/// Fills the frame at `data` (at least [`UNREACH_LEN`] bytes, the offending IPv4 header and 8
/// bytes of it already at the end) with an ICMP port-unreachable from `src` to `dst`.
#[inline(always)]
fn write_unreach(data: usize, e: &FwdEntry, src: u32, dst: u32) {
    write_eth(data, e);
    let ip = data + ETH_HLEN;
    let icmp_len = (ICMP_HLEN + IP_HLEN + 8) as u16;
    write_ip(ip, IP_HLEN as u16 + icmp_len, PROTO_ICMP, src, dst);
    let icmp = ip + IP_HLEN;
    let header: [u16; 4] = [
        u16::from_ne_bytes([ICMP_DEST_UNREACH, ICMP_PORT_UNREACH]),
        0,
        0,
        0,
    ];
    let mut sum = 0u32;
    for w in header {
        sum += w as u32;
    }
    let quoted = icmp + ICMP_HLEN;
    for i in 0..((IP_HLEN + 8) / 2) {
        sum += read::<u16>(quoted + 2 * i) as u32;
    }
    let p = icmp as *mut u16;
    // SAFETY: the caller checked the frame holds UNREACH_LEN bytes.
    unsafe {
        for (i, w) in header.iter().enumerate() {
            core::ptr::write(p.add(i), *w);
        }
        core::ptr::write(p.add(1), fold(sum));
    }
}
