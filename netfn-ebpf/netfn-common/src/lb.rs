//! The load balancer kind's map types and map names, shared by its eBPF stage
//! (`netfn-ebpf-programs/src/lb.rs`) and userspace (`functions/src/lb`).
//!
//! - Services ([`ServiceKey`] → [`Service`], a hash map): a VIP, port and protocol, and where its
//!   Maglev lookup table lives in [`LB_TABLE_MAP`]. Each service has two table halves; a new
//!   table is written into the idle half and goes live when the service's `active` flips (one
//!   hash-map update, which replaces the value whole: a packet sees the old table or the new).
//! - Backends ([`Backend`], an array indexed by backend number) and the table entries (backend
//!   numbers, [`NO_BACKEND`] where a service has none up). A number is a backend's place in the
//!   function's list (service 0's backends first, then service 1's…), so a settings change that
//!   removes, inserts or reorders backends renumbers the ones after; [`LbConf::numbering`] names
//!   the list an instance numbers by.
//! - The connection table ([`LbFlowSet`], an array of sets of [`LB_FLOW_WAYS`] flows): one
//!   [`LbFlow`] per balanced flow, in the set its client-side 5-tuple hashes to ([`flow_hash`],
//!   the hash that balances it), so a flow stays on its backend whatever the lookup table does,
//!   until it ends. A full set gives the way of its least recently seen flow to a new one (LRU
//!   within the set), as Maglev's own connection tracking does with a fixed-size table. A new
//!   flow costs one set read and one slot write: no lock, no list, no allocation (the kernel's
//!   LRU hash map spent most of a new flow's time taking a free node and evicting). Two CPUs
//!   writing one slot at once leave a slot that fails its [`LbFlow::check`]: it counts as
//!   absent, the next packet balances the flow again (to the same backend while the lookup
//!   table is unchanged) and overwrites it. A flow keeps its backend's number with the numbering
//!   it is of ([`LbFlow::numbering`]); a flow of another numbering (one tracked before a settings
//!   change) gets its backend's number now from [`Reverse`] (by the backend's identity and the
//!   flow's service) before the number is used.
//! - The backends' way back ([`BackendKey`] → [`Reverse`], a hash map written by userspace with
//!   the services): which services (VIP and port) a backend's `addr:port:proto` serves, and its
//!   number in each. A backend's answer (backend → client) finds its flow by trying each of them
//!   as the key's VIP side; an answer of a backend whose flow is in no entry (evicted, expired)
//!   is dropped and counted (`lb-reply-untracked`), never passed on with the backend's address.
//!
//! Addresses are `[u32; 4]` in packet byte order, an IPv4 address in word 0 and the rest zero,
//! so the maps hold IPv6 VIPs and backends without a change of layout; ports are in packet byte
//! order too, so the stage compares and writes them as read.

use super::firewall::PROTO_UDP;
use crate::teardown::Teardown;

/// Map names.
pub const LB_SERVICES_MAP: &str = "NF_LB_SERVICES";
pub const LB_TABLE_MAP: &str = "NF_LB_TABLE";
pub const LB_BACKENDS_MAP: &str = "NF_LB_BACKENDS";
pub const LB_CONF_MAP: &str = "NF_LB_CONF";
/// Per CPU and backend number: packets, bytes and new flows sent to it (this instance's). A
/// plain array cut in one slice per possible CPU id, [`counter_stride`] long: CPU `c` counts
/// backend `n` at `c * stride + n` (see [`counter_index`]). After the CPUs' slices, entries the
/// stage never writes: what earlier instances counted (userspace writes and reads them).
pub const LB_BACKEND_COUNTERS_MAP: &str = "NF_LB_BACKEND_COUNTERS";
/// Kept across settings changes: the connection table and the function's statistics.
pub const LB_FLOWS_MAP: &str = "NF_LB_FLOWS";
pub const LB_STATS_MAP: &str = "NF_LB_STATS";
/// Per backend `addr:port:proto`: the services it answers for ([`BackendKey`] → [`Reverse`]).
pub const LB_REVERSE_MAP: &str = "NF_LB_REVERSE";
/// Kept: the IPv4 datagrams in fragments whose first fragment went through
/// ([`crate::FragKey`] → [`LbFrag`]): their later fragments (no ports of their own) get the
/// address rewrite the first got.
pub const LB_FRAGS_MAP: &str = "NF_LB_FRAGS";

/// The stage programs.
pub const LB_TC_PROGRAM: &str = "nf_lb_tc";
pub const LB_XDP_PROGRAM: &str = "nf_lb_xdp";

/// The load balancer's drop reasons, counted at `KIND_DROP_BASE + i` of the function's counters.
pub const LB_DROP_NO_BACKEND: usize = 0;
/// A backend's answer (or an ICMP error about a packet sent to a backend) of no tracked flow:
/// its flow's entry was evicted or expired. Passing it on would show the client the backend's
/// address (the client would reset, the backend too); dropped, the client's next packet is
/// balanced again (to the same backend while the table is unchanged) and the flow goes on.
pub const LB_DROP_REPLY_UNTRACKED: usize = 1;
/// A later fragment of a datagram whose first fragment did not go through (dropped, not seen,
/// or seen more than [`crate::FRAG_TIMEOUT_NS`] ago): the address it needs is not known.
pub const LB_DROP_FRAGMENT: usize = 2;
/// An ICMP error from the client's side about a VIP's service (quoting a packet from
/// `VIP:port` to a client) of no tracked flow (evicted, expired, never seen, or forged), or not
/// addressed to that VIP: it has no backend to go to. Linux's conntrack finds no entry for it
/// (or holds it invalid), so kernel mode's DNAT never sends it to a backend either.
pub const LB_DROP_ICMP_UNTRACKED: usize = 3;
pub const LB_DROP_REASON_NAMES: [&str; 4] = [
    "lb-no-backend",
    "lb-reply-untracked",
    "lb-fragment",
    "lb-icmp-untracked",
];
const _: () = assert!(LB_DROP_REASON_NAMES.len() <= super::DROP_SLOTS - super::KIND_DROP_BASE);

/// [`LbFrag::rewrite`]: what a datagram's later fragments get.
pub const FRAG_PASS: u8 = 0;
/// The destination becomes [`LbFrag::addr`] (a backend).
pub const FRAG_TO_BACKEND: u8 = 1;
/// The source becomes [`LbFrag::addr`] (the VIP).
pub const FRAG_TO_CLIENT: u8 = 2;

/// A datagram in fragments whose first fragment went through: when, and the address rewrite its
/// later fragments get (their ports, in the first fragment, were rewritten there).
///
/// Layout: `at_ns: u64` (0), `addr: u32` (8, packet byte order), `rewrite: u8` (12), `_pad`;
/// 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbFrag {
    pub at_ns: u64,
    pub addr: u32,
    pub rewrite: u8,
    pub _pad: [u8; 3],
}

/// A table entry of a service without a backend to take new flows.
pub const NO_BACKEND: u32 = u32::MAX;

/// Address families ([`ServiceKey::family`]).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A virtual service: `vip:port` over `proto`. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub vip: [u32; 4],
    /// Packet byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: u32,
}

/// Where a service's lookup table is. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Service {
    /// Index of the service's first table entry of each half in [`LB_TABLE_MAP`].
    pub table: [u32; 2],
    /// The live half: 0 or 1.
    pub active: u32,
    /// Entries per half (a prime: the Maglev table size).
    pub size: u32,
}

/// [`Backend::flags`]: the health checks declared the backend down. A flow tracked to it is
/// balanced again (see the stage); its table entries are rebuilt without it.
pub const BACKEND_DOWN: u32 = 1;

/// One backend. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: [u32; 4],
    /// Packet byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    pub flags: u32,
}

/// The stage's settings (one element). 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbConf {
    /// Idle timeouts of tracked flows: TCP open, TCP after a FIN from one side only, TCP after
    /// a FIN from each side or an RST, UDP (and [`LbConf::tcp_syn_s`]).
    pub tcp_ns: u64,
    pub tcp_half_closed_ns: u64,
    pub tcp_closing_ns: u64,
    pub udp_ns: u64,
    /// Sets of the connection table ([`LB_FLOWS_MAP`]'s entries).
    pub flow_sets: u32,
    /// Backend numbers (their counters: [`counter_index`]).
    pub backends: u32,
    /// Names the list the backend numbers are places in (a hash of it, never 0): a flow whose
    /// [`LbFlow::numbering`] differs was numbered by another list.
    pub numbering: u32,
    /// Idle timeout of a TCP flow opened by a SYN and not yet answered by the backend's
    /// SYN-ACK, in seconds, not nanoseconds: it took the place of padding, so that the map
    /// keeps its layout (a newer netfn reads the live instance's, loaded by an older one, to
    /// carry its counters and ways back over an apply; the padding reads as 0 there).
    pub tcp_syn_s: u32,
}

impl LbConf {
    /// The idle timeout of a flow over `proto` in `state`.
    #[inline(always)]
    pub fn timeout(&self, proto: u8, state: u8) -> u64 {
        if proto == PROTO_UDP {
            self.udp_ns
        } else if state == LB_CT_SYN {
            u64::from(self.tcp_syn_s) * 1_000_000_000
        } else if state == LB_CT_CLOSING {
            self.tcp_closing_ns
        } else if LB_TEARDOWN.half_closed(state) {
            self.tcp_half_closed_ns
        } else {
            self.tcp_ns
        }
    }
}

/// A backend as its answers show it: `addr:port` over `proto`. 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub addr: [u32; 4],
    /// Packet byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// A service's address as a backend's answer must show it: `vip:port`. 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipPort {
    pub vip: [u32; 4],
    /// Packet byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Most services one backend `addr:port:proto` may serve in one load balancer (validation
/// refuses more): an answer tries each, so the bound keeps the stage's loop short.
pub const REVERSE_SERVICES: usize = 4;

/// The services a backend serves (`count` of them, the configured ones first, then ones it
/// served before a settings change, whose flows may still run), and its backend number in each
/// ([`NO_BACKEND`] in one it left). 100 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Reverse {
    pub services: [VipPort; REVERSE_SERVICES],
    pub count: u32,
    pub numbers: [u32; REVERSE_SERVICES],
}

/// [`LbFlow::state`] values: open (TCP established by the backend's SYN-ACK, or tracked from
/// a packet other than a bare SYN: a flow balanced again mid-connection), and every UDP flow.
pub const LB_CT_OPEN: u8 = 0;
/// TCP after a FIN from each side, or an RST (a short timeout follows).
pub const LB_CT_CLOSING: u8 = 1;
/// TCP after a FIN from the client, none from the backend yet.
pub const LB_CT_FIN_BY_CLIENT: u8 = 2;
/// TCP after a FIN from the backend, none from the client yet.
pub const LB_CT_FIN_BY_BACKEND: u8 = 3;
/// TCP opened by a bare SYN from the client (a new flow, or a half-closed one the client's SYN
/// opened again), no SYN-ACK from the backend yet: conntrack's SYN_SENT, with its timeout
/// ([`LbConf::tcp_syn_s`]), so that a stray SYN cannot keep a flow for the open timeout.
pub const LB_CT_SYN: u8 = 4;

/// The handshake and teardown states of [`LbFlow::state`] (the client opens every flow).
pub const LB_TEARDOWN: Teardown = Teardown {
    new: LB_CT_SYN,
    established: LB_CT_OPEN,
    closing: LB_CT_CLOSING,
    fin_by_opener: LB_CT_FIN_BY_CLIENT,
    fin_by_answerer: LB_CT_FIN_BY_BACKEND,
};

/// Flows per set of the connection table.
pub const LB_FLOW_WAYS: usize = 4;

/// Sets of a connection table that holds `flows` flows.
pub const fn flow_sets(flows: u32) -> u32 {
    flows.div_ceil(LB_FLOW_WAYS as u32)
}

/// A tracked flow: its client's side (the packet toward the VIP, as it arrives; a backend's
/// answer makes the same key from its destination and a service of [`Reverse`]), the backend's
/// address and port (written going in; an answer must come from them), and its backend's number
/// in numbering `numbering`. `proto` 0: a free slot. 80 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbFlow {
    pub client: [u32; 4],
    pub vip: [u32; 4],
    pub cport: u16,
    pub vport: u16,
    pub proto: u8,
    pub family: u8,
    pub state: u8,
    pub _pad: u8,
    pub addr: [u32; 4],
    pub port: u16,
    pub _pad2: u16,
    /// The backend's number (index of [`LB_BACKENDS_MAP`]) in numbering `numbering`
    /// ([`NO_BACKEND`]: none, the backend left the settings).
    pub backend: u32,
    /// [`LbFlow::identity_check`] of the fields above but `state`, written last.
    pub check: u32,
    /// The [`LbConf::numbering`] `backend` is a number of (0: a flow of a stage that kept
    /// none).
    pub numbering: u32,
    pub last_seen_ns: u64,
}

impl LbFlow {
    /// A slot that holds a flow, as written (not free, not a mix of two writes).
    #[inline(always)]
    pub fn is_whole(&self) -> bool {
        self.proto != 0 && self.check == self.identity_check()
    }

    /// A mix of what the flow is (key and backend): a slot written by two CPUs at once, or
    /// read while written, fails it.
    #[inline(always)]
    pub fn identity_check(&self) -> u32 {
        let mut h: u32 = 0x2f69_3a41 ^ u32::from(self.proto) ^ (u32::from(self.family) << 8);
        for k in [
            self.client[0] ^ self.client[1] ^ self.client[2] ^ self.client[3],
            self.vip[0] ^ self.vip[1] ^ self.vip[2] ^ self.vip[3],
            (u32::from(self.cport) << 16) | u32::from(self.vport),
            self.addr[0] ^ self.addr[1] ^ self.addr[2] ^ self.addr[3],
            (u32::from(self.port) << 16) ^ self.backend,
        ] {
            h = mix(h, k);
        }
        finish(h)
    }

    /// The flow's backend as its answers show it (its key in [`LB_REVERSE_MAP`]).
    #[inline(always)]
    pub fn backend_key(&self) -> BackendKey {
        BackendKey {
            addr: self.addr,
            port: self.port,
            proto: self.proto,
            family: self.family,
        }
    }

    /// The flow's service as its backend's answers must show it (one of the backend's services
    /// in [`LB_REVERSE_MAP`]).
    #[inline(always)]
    pub fn service(&self) -> VipPort {
        VipPort {
            vip: self.vip,
            port: self.vport,
            _pad: 0,
        }
    }

    /// Whether the flow has been idle past its timeout at `now` (`bpf_ktime_get_ns`,
    /// `CLOCK_MONOTONIC`). Both directions stamp one slot, from any CPU: a stamp later than
    /// `now` is fresh (saturating, never a wrapped huge idle time).
    #[inline(always)]
    pub fn ended(&self, conf: &LbConf, now: u64) -> bool {
        now.saturating_sub(self.last_seen_ns) > conf.timeout(self.proto, self.state)
    }
}

/// One set of the connection table. 320 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbFlowSet {
    pub flows: [LbFlow; LB_FLOW_WAYS],
}

/// Per backend number (one CPU's share, in that CPU's slice). 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// The function's statistics (one CPU's share). 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbStats {
    /// Flows balanced (a table lookup chose the backend).
    pub balanced: u64,
    /// Packets of tracked flows.
    pub ct_hits: u64,
    /// Flows pushed out of their set by a new one before they ended (a table too small for
    /// the flows, or a flood of new ones); the next packet of such a flow is balanced again.
    pub evicted: u64,
    /// Tracked flows whose backend was down: balanced again.
    pub rebalanced: u64,
    /// Packets answered from a VIP (the backend's side, translated back).
    pub replies: u64,
}

/// Elements of one CPU's slice of [`LB_BACKEND_COUNTERS_MAP`]: the backends, rounded up to
/// whole cache lines (8 elements of 24 bytes are three 64-byte lines), so two CPUs never write
/// one line (the map is memory-mappable: its values start page-aligned).
#[inline(always)]
pub const fn counter_stride(backends: u32) -> u32 {
    backends.div_ceil(8).saturating_mul(8)
}

/// Where CPU `cpu` counts backend `number` in [`LB_BACKEND_COUNTERS_MAP`]: in its own slice,
/// reached with one array read (a per-CPU array reads a pointer first). None for a number past
/// the instance's `backends` ([`NO_BACKEND`]: a flow of a backend the settings left).
#[inline(always)]
pub fn counter_index(cpu: u32, backends: u32, number: u32) -> Option<u32> {
    if number >= backends {
        return None;
    }
    cpu.checked_mul(counter_stride(backends))?
        .checked_add(number)
}

/// The flow hash the stage balances by, over the client's 5-tuple (addresses and ports as in
/// the packet): a murmur3-style mix, the same on every CPU and in userspace (tests).
#[inline(always)]
pub fn flow_hash(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h: u32 = 0x9747_b28c ^ u32::from(proto);
    for k in [src, dst, (u32::from(sport) << 16) | u32::from(dport)] {
        h = mix(h, k);
    }
    finish(h ^ 12)
}

/// One murmur3 round of `k` into `h`.
#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// murmur3's finalizer.
#[inline(always)]
fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY (all): `#[repr(C)]`, `Copy`, integer fields only, laid out without padding (the
    // layouts are stated on each type and asserted in the tests); every bit pattern is valid.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for LbConf {}
    unsafe impl aya::Pod for LbFlow {}
    unsafe impl aya::Pod for LbFlowSet {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for VipPort {}
    unsafe impl aya::Pod for Reverse {}
    unsafe impl aya::Pod for BackendCounters {}
    unsafe impl aya::Pod for LbStats {}
    unsafe impl aya::Pod for LbFrag {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<ServiceKey>(), 24);
        assert_eq!(core::mem::size_of::<Service>(), 16);
        assert_eq!(core::mem::size_of::<Backend>(), 24);
        assert_eq!(core::mem::size_of::<LbConf>(), 48);
        assert_eq!(core::mem::size_of::<LbFlow>(), 80);
        assert_eq!(core::mem::size_of::<LbFlowSet>(), 320);
        assert_eq!(core::mem::size_of::<BackendKey>(), 20);
        assert_eq!(core::mem::size_of::<VipPort>(), 20);
        assert_eq!(core::mem::size_of::<Reverse>(), 100);
        assert_eq!(core::mem::size_of::<BackendCounters>(), 24);
        assert_eq!(core::mem::size_of::<LbStats>(), 40);
        assert_eq!(core::mem::size_of::<LbFrag>(), 16);
    }

    #[test]
    fn every_cpu_counts_every_backend_in_its_own_cache_lines() {
        for backends in [1u32, 2, 5, 8, 4096] {
            let stride = counter_stride(backends);
            assert!(stride >= backends);
            assert_eq!(
                stride as usize * core::mem::size_of::<BackendCounters>() % 64,
                0,
                "{backends} backends: a slice ends inside a cache line"
            );
            let cpus = 3u32;
            let mut seen = std::collections::HashSet::new();
            for cpu in 0..cpus {
                for number in 0..backends {
                    let i = counter_index(cpu, backends, number).expect("in range");
                    assert_eq!(i / stride, cpu, "backend {number} of CPU {cpu} at {i}");
                    assert!(seen.insert(i), "two counters at {i}");
                }
            }
            // A number this instance lacks (a flow of a backend that left) counts nowhere,
            // rather than in another CPU's slice.
            assert_eq!(counter_index(0, backends, backends), None);
            assert_eq!(counter_index(u32::MAX, backends, 0), None);
        }
    }

    #[test]
    fn the_flow_hash_spreads_source_ports_evenly() {
        let mut buckets = [0u32; 7];
        for port in 0..7000u16 {
            let h = flow_hash(0x0201_0a0a, 0x0a00_00c0, port.to_be(), 80u16.to_be(), 6);
            buckets[(h % 7) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (900..1100).contains(&b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn a_flow_check_covers_what_the_flow_is_and_not_what_changes_as_it_runs() {
        let flow = LbFlow {
            client: [0x0201_0a0a, 0, 0, 0],
            vip: [0x0a02_00c0, 0, 0, 0],
            cport: 4000u16.to_be(),
            vport: 80u16.to_be(),
            proto: 6,
            family: FAMILY_V4,
            addr: [0x0300_0a0a, 0, 0, 0],
            port: 8080u16.to_be(),
            backend: 2,
            ..LbFlow::default()
        };
        let check = flow.identity_check();
        let running = LbFlow {
            state: LB_CT_CLOSING,
            numbering: 7,
            last_seen_ns: 12345,
            ..flow
        };
        assert_eq!(running.identity_check(), check);
        let torn: [LbFlow; 7] = [
            LbFlow {
                client: [0x0301_0a0a, 0, 0, 0],
                ..flow
            },
            LbFlow {
                vip: [0x0b02_00c0, 0, 0, 0],
                ..flow
            },
            LbFlow {
                cport: 4001u16.to_be(),
                ..flow
            },
            LbFlow {
                vport: 81u16.to_be(),
                ..flow
            },
            LbFlow { proto: 17, ..flow },
            LbFlow {
                addr: [0x0400_0a0a, 0, 0, 0],
                ..flow
            },
            LbFlow { backend: 3, ..flow },
        ];
        for t in torn {
            assert_ne!(t.identity_check(), check, "{t:?}");
        }
    }

    #[test]
    fn a_flow_ends_after_its_protocol_and_state_timeout() {
        let conf = LbConf {
            tcp_syn_s: 2,
            tcp_ns: 100,
            tcp_half_closed_ns: 30,
            tcp_closing_ns: 10,
            udp_ns: 50,
            ..LbConf::default()
        };
        let flow = |proto, state| LbFlow {
            proto,
            state,
            last_seen_ns: 1000,
            ..LbFlow::default()
        };
        for (f, timeout) in [
            (flow(6, LB_CT_SYN), 2_000_000_000),
            (flow(6, LB_CT_OPEN), 100),
            (flow(6, LB_CT_CLOSING), 10),
            (flow(6, LB_CT_FIN_BY_CLIENT), 30),
            (flow(6, LB_CT_FIN_BY_BACKEND), 30),
            (flow(17, LB_CT_OPEN), 50),
        ] {
            assert!(!f.ended(&conf, 1000 + timeout), "{f:?}");
            assert!(f.ended(&conf, 1001 + timeout), "{f:?}");
            // Stamped later than `now` (another CPU): fresh.
            assert!(!f.ended(&conf, 0), "{f:?}");
        }
    }
}
