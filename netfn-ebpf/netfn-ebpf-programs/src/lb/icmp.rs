//! ICMP errors about balanced flows: destination unreachable (fragmentation needed included),
//! time exceeded and parameter problem, each quoting the IPv4 header and the ports of the packet
//! it is about. The load balancer rewrote that packet on its way, so the error must be rewritten
//! back before its receiver can match it to a socket, as Linux's NAT does for the errors
//! conntrack relates to a flow (`nf_nat_icmp_reply_translation`):
//!
//! - From the backend's side (a backend, or a router between the load balancer and it), quoting
//!   a packet the load balancer sent to a backend (client → backend:bport): the client gets it
//!   about the packet it sent (client → VIP:port), and an outer source that is the backend
//!   itself becomes the VIP.
//! - From the client's side (the client, or a router on its path, e.g. a smaller MTU toward the
//!   client: "fragmentation needed" about a backend's answer), addressed to the VIP and quoting
//!   an answer the load balancer sent from the VIP (VIP:port → client): the flow's backend gets
//!   it about the packet it sent (backend:bport → client), its outer destination the backend.
//!   Without it, path MTU discovery from a backend toward a client is a black hole.
//!
//! The quoted IPv4 header may carry options (IHL 5 to 15), as the packet it quotes did: its
//! length comes from its IHL and the quoted ports follow the options, as conntrack reads them.
//! A quote conntrack finds no tuple in (`nf_ct_get_tuplepr`) is no flow's error and passes as it
//! is: one of a later fragment (no ports in it), or whose header or ports the packet does not
//! hold; so does one that is no IPv4 header (version not 4, IHL under 5).
//!
//! One about a flow the stage does not track (a backend's address and port of no tracked flow,
//! or a VIP's service of none: evicted, expired, never seen, or forged), or from the client's
//! side addressed elsewhere than the quoted VIP, is dropped and counted: conntrack finds no
//! entry for it (or, for an outer destination other than the quoted source, holds it invalid:
//! `nf_conntrack_inet_error`), so no NAT applies and it reaches no backend (nor, from the
//! backend's side, the client with the backend's address). Errors about anything else pass.
//!
//! Checksums: the quoted IPv4 header's, the ICMP checksum (it covers the quoted bytes) and the
//! outer IPv4 header's are updated incrementally (RFC 1624), in tc and xdp alike, by plain stores
//! (an ICMP error carries a full checksum, never `CHECKSUM_PARTIAL`). Quoted options are whole
//! 32-bit words, so the quoted port stays on a 16-bit word of the ICMP message, as the updates
//! need. The quoted TCP or UDP checksum is left as it is, which Linux's NAT would update where
//! the quote holds it (kernel mode does): no receiver checks it (Linux's `tcp_v4_err` and
//! `__udp4_lib_err` match the socket by addresses and ports, and TCP the sequence number, which
//! is not touched). Since the ICMP checksum covers those unchanged bytes as they are, it stays
//! right.

use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::{TcContext, XdpContext},
};
use netfn_common::{
    DIR_FORWARD, FwdEntry,
    firewall::{PROTO_TCP, PROTO_UDP},
    lb::{LB_DROP_ICMP_UNTRACKED, LB_DROP_REPLY_UNTRACKED, LbConf, flow_hash},
};

use super::{Fate, FlowKey, Packet, answered, flow_set, lookup, service};
use crate::forwarder::read;
use crate::headers::{
    ETH_HLEN, ICMP_DEST_UNREACH, ICMP_HLEN, ICMP_PARAMETER_PROBLEM, ICMP_TIME_EXCEEDED, IP_HLEN,
    LATER, fragment, ipv4_header_len, replace16, replace32,
};

/// The TCP or UDP packet an ICMP error quotes (addresses and ports in packet byte order).
#[derive(Clone, Copy, Default)]
pub(super) struct Quoted {
    /// Offset of the quoted IPv4 header from the start of the frame.
    pub(super) at: usize,
    pub(super) src: u32,
    pub(super) dst: u32,
    pub(super) sport: u16,
    pub(super) dport: u16,
    pub(super) proto: u8,
    /// The quoted IPv4 header's length, options included (20 to 60 bytes): the quoted ports
    /// follow it.
    pub(super) hlen: u8,
}

/// Marks `p`, an ICMP packet of the frame `data..data_end` (its L4 header at `p.l4`), as
/// [`Packet::quoted`] with its [`Packet::quote`] if it is an error that quotes a TCP or UDP
/// packet; else leaves it as it is.
#[inline(always)]
pub(super) fn quote(p: &mut Packet, data: usize, data_end: usize) {
    let icmp = data + p.l4;
    if icmp + ICMP_HLEN + IP_HLEN + 4 > data_end {
        return;
    }
    let kind: u8 = read(icmp);
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED && kind != ICMP_PARAMETER_PROBLEM {
        return;
    }
    let q = icmp + ICMP_HLEN;
    // A quoted later fragment has no ports where they would be, only payload: conntrack finds
    // no tuple in it and lets the error pass (`ipv4_get_l4proto`), as this does.
    if fragment(u16::from_be(read(q + 6))) == LATER {
        return;
    }
    let proto: u8 = read(q + 9);
    // The quoted header may carry options (see the module's notes): the ports follow them.
    let hlen = ipv4_header_len(read(q));
    let ql4 = q + hlen;
    if hlen == 0 || ql4 + 4 > data_end || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return;
    }
    p.quoted = true;
    p.quote = Quoted {
        at: p.l4 + ICMP_HLEN,
        src: read(q + 12),
        dst: read(q + 16),
        sport: read(ql4),
        dport: read(ql4 + 2),
        proto,
        hlen: hlen as u8,
    };
}

/// The fate of the ICMP error `p` ([`Packet::quoted`]) at the hop of forwarder entry `e`.
#[inline(always)]
pub(super) fn error(p: &Packet, e: &FwdEntry, conf: &LbConf) -> Fate {
    let q = &p.quote;
    if e.counter_slot & 1 == DIR_FORWARD {
        from_client(p, q, conf)
    } else {
        from_backend(p, q, conf)
    }
}

/// From the egress side, quoting a packet the load balancer sent to a backend (client →
/// backend): the client must see it about the packet it sent (client → VIP). One about a
/// packet to a backend of no tracked flow is dropped, as an answer would be.
#[inline(always)]
fn from_backend(p: &Packet, q: &Quoted, conf: &LbConf) -> Fate {
    // SAFETY: a BPF helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let a = answered(conf, q.dst, q.dport, q.src, q.sport, q.proto);
    match a.flow {
        None if a.backend => Fate::drop(LB_DROP_REPLY_UNTRACKED),
        None => Fate::pass(),
        // A flow idle past its timeout is no flow, as for its answers (see `reply`).
        Some(flow) if flow.ended(conf, now) => Fate::drop(LB_DROP_REPLY_UNTRACKED),
        // Sent elsewhere than to the client whose packet it quotes: conntrack holds it invalid.
        Some(_) if p.dst != q.src => Fate::drop(LB_DROP_ICMP_UNTRACKED),
        Some(_) => Fate::icmp(false, a.vip, a.port),
    }
}

/// From the ingress side, quoting a packet the load balancer sent from a VIP (a backend's
/// answer, VIP:port → client:cport): the quoted packet's destination and source are the flow's
/// client side, so the forward lookup finds the flow, whose backend must see the error about the
/// packet it sent. A flow idle past its timeout is no flow (conntrack would have let it go); its
/// error does not refresh it (conntrack's does not either).
#[inline(always)]
fn from_client(p: &Packet, q: &Quoted, conf: &LbConf) -> Fate {
    let key = FlowKey {
        client: q.dst,
        vip: q.src,
        cport: q.dport,
        vport: q.sport,
        proto: q.proto,
    };
    let hash = flow_hash(key.client, key.vip, key.cport, key.vport, key.proto);
    // SAFETY: a BPF helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if p.dst == q.src
        && let Some((_, flow)) =
            flow_set(conf, hash).and_then(|(index, set)| lookup(index, set, &key))
        && !flow.ended(conf, now)
    {
        return Fate::icmp(true, flow.addr[0], flow.port);
    }
    if service(q.src, q.sport, q.proto).is_some() {
        Fate::drop(LB_DROP_ICMP_UNTRACKED)
    } else {
        Fate::pass()
    }
}

/// What the translation of an ICMP error replaces, and where: the quoted packet's address (its
/// offset in the quoted IPv4 header) and port (its offset in the quoted L4 header), and the
/// outer header's address on the same side (its offset in the IPv4 header), with their values.
struct Sides {
    quoted_addr_at: usize,
    quoted_port_at: usize,
    old_addr: u32,
    old_port: u16,
    outer_at: usize,
    old_outer: u32,
}

/// [`Sides`] of the error `p` (quoting `q`): toward a backend, the quoted source and the outer
/// destination (the VIP's); back to a client, the quoted destination and the outer source (the
/// backend's, when the backend itself sent it).
#[inline(always)]
fn sides(p: &Packet, q: &Quoted, to_backend: bool) -> Sides {
    if to_backend {
        Sides {
            quoted_addr_at: 12,
            quoted_port_at: 0,
            old_addr: q.src,
            old_port: q.sport,
            outer_at: 16,
            old_outer: p.dst,
        }
    } else {
        Sides {
            quoted_addr_at: 16,
            quoted_port_at: 2,
            old_addr: q.dst,
            old_port: q.dport,
            outer_at: 12,
            old_outer: p.src,
        }
    }
}

/// The checksums once the quoted address and port of `s` are `addr:port` (and, when `outer`
/// holds the outer IP checksum, the outer address too): the quoted IPv4 header's, the ICMP
/// checksum, the outer IPv4 header's (RFC 1624 updates).
#[inline(always)]
fn checksums(
    s: &Sides,
    addr: u32,
    port: u16,
    inner_check: u16,
    icmp_check: u16,
    outer: Option<u16>,
) -> (u16, u16, u16) {
    let new_inner = replace32(inner_check, s.old_addr, addr);
    // The ICMP checksum covers the quoted address, port and IPv4 checksum.
    let mut new_icmp = replace32(icmp_check, s.old_addr, addr);
    new_icmp = replace16(new_icmp, s.old_port, port);
    new_icmp = replace16(new_icmp, inner_check, new_inner);
    let new_outer = match outer {
        Some(check) => replace32(check, s.old_outer, addr),
        None => 0,
    };
    (new_inner, new_icmp, new_outer)
}

/// Loads and stores at an offset of a packet through its program type's helpers: the quoted
/// header sits at an offset the verifier could only bound through one exact pointer, which the
/// compiler is free not to keep (a rare path; the helpers check every access themselves). The
/// ICMP error carries a full checksum, so plain stores with computed checksums are right in TC
/// too.
pub(super) trait Bytes {
    fn load_at<T: Copy>(&self, offset: usize) -> Result<T, i64>;
    fn store_at<T: Copy>(&self, offset: usize, value: T) -> Result<(), i64>;
}

impl Bytes for TcContext {
    #[inline(always)]
    fn load_at<T: Copy>(&self, offset: usize) -> Result<T, i64> {
        self.load(offset)
    }

    #[inline(always)]
    fn store_at<T: Copy>(&self, offset: usize, value: T) -> Result<(), i64> {
        self.store(offset, &value, 0)
    }
}

impl Bytes for XdpContext {
    /// Through `bpf_xdp_load_bytes`.
    #[inline(always)]
    fn load_at<T: Copy>(&self, offset: usize) -> Result<T, i64> {
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes `size_of::<T>()` bytes into `value` or fails.
        let r = unsafe {
            bpf_xdp_load_bytes(
                self.ctx,
                offset as u32,
                value.as_mut_ptr().cast(),
                core::mem::size_of::<T>() as u32,
            )
        };
        if r < 0 {
            return Err(r);
        }
        // SAFETY: filled by the helper above.
        Ok(unsafe { value.assume_init() })
    }

    /// Through `bpf_xdp_store_bytes`.
    #[inline(always)]
    fn store_at<T: Copy>(&self, offset: usize, mut value: T) -> Result<(), i64> {
        // SAFETY: the helper reads `size_of::<T>()` bytes of `value` and checks the frame's
        // bounds.
        let r = unsafe {
            bpf_xdp_store_bytes(
                self.ctx,
                offset as u32,
                (&mut value as *mut T).cast(),
                core::mem::size_of::<T>() as u32,
            )
        };
        if r < 0 { Err(r) } else { Ok(()) }
    }
}

/// Rewrites the ICMP error `p` (parsed from `ctx`'s packet) as a [`super::ICMP`] fate says,
/// with its checksums.
#[inline(always)]
pub(super) fn translate<C: Bytes>(
    ctx: &C,
    p: &Packet,
    to_backend: bool,
    addr: u32,
    port: u16,
) -> Result<(), i64> {
    if !p.quoted {
        return Ok(());
    }
    let q = &p.quote;
    let s = sides(p, q, to_backend);
    let (icmp, inner) = (p.l4 & 0x7f, q.at & 0x7f);
    let outer = if s.old_outer == s.old_addr {
        Some(ctx.load_at::<u16>(ETH_HLEN + 10)?)
    } else {
        None
    };
    let (new_inner, new_icmp, new_outer) = checksums(
        &s,
        addr,
        port,
        ctx.load_at(inner + 10)?,
        ctx.load_at(icmp + 2)?,
        outer,
    );
    ctx.store_at(inner + s.quoted_addr_at, addr)?;
    ctx.store_at(inner + usize::from(q.hlen) + s.quoted_port_at, port)?;
    ctx.store_at(inner + 10, new_inner)?;
    ctx.store_at(icmp + 2, new_icmp)?;
    if outer.is_some() {
        ctx.store_at(ETH_HLEN + s.outer_at, addr)?;
        ctx.store_at(ETH_HLEN + 10, new_outer)?;
    }
    Ok(())
}
