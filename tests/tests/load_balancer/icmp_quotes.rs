//! ICMP errors whose quote the fast path must read as conntrack does, run through the load
//! balancer's hop with `BPF_PROG_TEST_RUN` (crafted frames: the program's verdict and the frame
//! as it leaves). A UDP flow client:[`CPORT`] → VIP:[`PORT`] is tracked to backend 0
//! ([`SERVER_PORT`]); errors about it come from the backend's side (a port unreachable from the
//! backend quoting client → backend:8080) or from the client's side (quoting the answer
//! VIP:54 → client, addressed to the VIP).
//!
//! - A quote at the longest the stage reads (outer and quoted IPv4 headers of 60 bytes each:
//!   the quoted ports end 146 bytes into the frame) is translated, its checksums right.
//! - A quote conntrack finds no tuple in (`nf_ct_get_tuplepr`: a later fragment, whose first
//!   bytes are no ports; a quoted header longer than the packet) or that is no IPv4 header of
//!   at least 20 bytes passes untranslated, never dropped, however its bytes match the flow.

use super::*;

/// The service's port, and the flow's client port.
const PORT: u16 = 54;
const CPORT: u16 = 45_300;

/// Where an error comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The backend's side: the backend itself, quoting client → backend:8080.
    Backend,
    /// The client's side, to the VIP: quoting VIP:54 → client.
    Client,
}

const SIDES: [Side; 2] = [Side::Backend, Side::Client];

/// What the quoted packet's header is like.
#[derive(Clone, Copy, Debug)]
struct QuoteShape {
    /// The IPv4 header's length in words: its IHL, and as many bytes as there are of it (at
    /// least 20).
    ihl: u8,
    /// Its flags and fragment offset (host order).
    frag: u16,
    /// Its first byte, if not `0x40 | ihl`.
    first: Option<u8>,
}

impl QuoteShape {
    fn plain(ihl: u8) -> Self {
        QuoteShape {
            ihl,
            frag: 0,
            first: None,
        }
    }
}

/// The load balancer's hop, with the forwarder program whose tail call reaches its stage.
struct Lab {
    mode: &'static str,
    hook: Hook,
    program: std::os::fd::OwnedFd,
    client_side: test_run::Hop,
    backend_side: test_run::Hop,
}

impl Lab {
    /// Runs `frame` through the hop on `side`: the verdict and the frame as it leaves.
    fn run(&self, side: Side, frame: &[u8]) -> (Verdict, Vec<u8>) {
        let h = self.hop(side);
        let (retval, out) = in_netns(&h.netns, || {
            test_run::run_once(&self.program, self.hook, h.ifindex, frame)
        })
        .unwrap_or_else(|e| panic!("{}: test run: {e}", self.mode));
        let verdict = test_run::verdict(self.hook, retval)
            .unwrap_or_else(|| panic!("{}: return value {retval}", self.mode));
        (verdict, out)
    }

    fn hop(&self, side: Side) -> &test_run::Hop {
        match side {
            Side::Backend => &self.backend_side,
            Side::Client => &self.client_side,
        }
    }

    /// The client's datagram to the VIP, which (re)opens the flow (its timeout is 2 s): it
    /// goes to backend 0.
    fn track(&self) {
        let link = Link {
            src: CLIENT,
            dst: VIP,
            ..self.client_side.link
        };
        let frame = frames::ipv4_frame(&link, frames::UDP, &frames::udp(&link, CPORT, PORT, b"hi"));
        let (verdict, out) = self.run(Side::Client, &frame);
        assert_eq!(
            (verdict, Ipv4Addr::new(out[30], out[31], out[32], out[33])),
            (Verdict::Forward, SERVERS[0]),
            "{}: the client's datagram did not go to backend 0",
            self.mode
        );
    }

    /// An ICMP error from `side` (outer IPv4 header of `outer_ihl` words) about the packet
    /// the load balancer sent of the flow of client port `cport`, its quoted header shaped as
    /// `shape`, followed by the quoted UDP header (its ports the flow's, whatever the shape)
    /// and 8 bytes of its payload. Its checksums are right.
    fn error(&self, side: Side, outer_ihl: u8, shape: QuoteShape, cport: u16) -> Vec<u8> {
        let (outer, quoted, sport, dport) = match side {
            Side::Backend => (
                (SERVERS[0], CLIENT),
                (CLIENT, SERVERS[0]),
                cport,
                SERVER_PORT,
            ),
            Side::Client => ((CLIENT, VIP), (VIP, CLIENT), PORT, cport),
        };
        let h = self.hop(side);
        let link = Link {
            src: outer.0,
            dst: outer.1,
            ..h.link
        };
        let qlink = Link {
            src: quoted.0,
            dst: quoted.1,
            ..h.link
        };
        let datagram = frames::udp(&qlink, sport, dport, b"answered");
        let mut header = frames::ipv4(&qlink, frames::UDP, shape.ihl, datagram.len(), shape.frag);
        if let Some(first) = shape.first {
            header[0] = first;
            frames::set_ipv4_checksum(&mut header);
        }
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend(header);
        icmp.extend(datagram);
        let c = !frames::sum16(&icmp, 0);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut frame = frames::ethernet(&link, frames::ETH_P_IP);
        frame.extend(frames::ipv4(&link, frames::ICMP, outer_ihl, icmp.len(), 0));
        frame.extend(icmp);
        frame
    }
}

/// A chain whose load balancer serves UDP VIP:54 on backend 0, up in `mode`, and its hop.
fn lab(mode: &'static str, hook: Hook, tag: &str) -> (Lab, ChainGuard, TempDir) {
    let chain = unique_chain(tag);
    let dir = TempDir::new(&chain);
    let file = dir.write(
        "lb.toml",
        &chain_file(&chain, mode, &service(PORT, "udp", &[(0, 1)])),
    );
    let guard = ChainGuard::up(&chain, &file);
    let program = test_run::forwarder(&chain, hook);
    let mut hops = test_run::hops(&chain, CLIENT, SERVERS[0]);
    let mut take = |interface: &str| {
        let at = hops
            .iter()
            .position(|h| h.function == "lb1" && h.interface == interface)
            .unwrap_or_else(|| panic!("lb1 has no {interface}"));
        hops.swap_remove(at)
    };
    let (client_side, backend_side) = (take("nf-in"), take("nf-out"));
    let lab = Lab {
        mode,
        hook,
        program,
        client_side,
        backend_side,
    };
    (lab, guard, dir)
}

/// `out`, what the hop made of the error `frame` from `side`, is it translated for the other
/// side (see [`Side`]): from the backend's, the client gets it from the VIP about its packet
/// to VIP:54; from the client's, the backend gets it about its answer from backend:8080. The
/// rest is as it was, and every checksum right: outer IPv4, ICMP, quoted IPv4.
fn assert_translated(mode: &str, side: Side, frame: &[u8], out: &[u8]) {
    let what = format!("{mode}, from the {side:?} side");
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    assert_eq!(out.len(), frame.len(), "{what}: length");
    let ip = 14;
    let hlen = usize::from(out[ip] & 0x0f) * 4;
    let q = ip + hlen + 8;
    let qhlen = usize::from(out[q] & 0x0f) * 4;
    let l4 = q + qhlen;
    let (outer_at, quoted_at, port_at, vip_side, port_now) = match side {
        Side::Backend => (ip + 12, q + 16, l4 + 2, VIP, PORT),
        Side::Client => (ip + 16, q + 12, l4, SERVERS[0], SERVER_PORT),
    };
    assert_eq!(
        (
            addr(&out[outer_at..]),
            addr(&out[quoted_at..]),
            port(&out[port_at..])
        ),
        (vip_side, vip_side, port_now),
        "{what}: the outer address, the quoted address and port: {out:02x?}"
    );
    // Nothing else changed but what the forwarder's hop rewrites (MACs, TTL, outer checksum)
    // and the checksums the translation updates.
    let changed: Vec<usize> = [
        (outer_at, 4),
        (quoted_at, 4),
        (port_at, 2),
        (ip + 8, 1),
        (ip + 10, 2),
        (ip + hlen + 2, 2),
        (q + 10, 2),
    ]
    .iter()
    .flat_map(|&(at, n)| at..at + n)
    .collect();
    for at in (ip..frame.len()).filter(|at| !changed.contains(at)) {
        assert_eq!(out[at], frame[at], "{what}: byte {at} changed: {out:02x?}");
    }
    use frames::sum16;
    assert_eq!(
        sum16(&out[ip..ip + hlen], 0),
        0xffff,
        "{what}: outer IPv4 checksum"
    );
    assert_eq!(sum16(&out[ip + hlen..], 0), 0xffff, "{what}: ICMP checksum");
    assert_eq!(
        sum16(&out[q..q + qhlen], 0),
        0xffff,
        "{what}: quoted IPv4 checksum"
    );
}

/// What is wrong, if anything, with `verdict` and `out` for the error `frame`: it must be
/// forwarded untranslated, the outer addresses and the ICMP message as they were.
fn untranslated(frame: &[u8], verdict: Verdict, out: &[u8]) -> Option<String> {
    if verdict != Verdict::Forward {
        return Some(format!("not passed on: {verdict:?}"));
    }
    let ip = 14;
    let hlen = usize::from(frame[ip] & 0x0f) * 4;
    let now = (&out[ip + 12..ip + 20], &out[ip + hlen..]);
    let was = (&frame[ip + 12..ip + 20], &frame[ip + hlen..]);
    (now != was)
        .then(|| format!("translated: outer addresses and ICMP message {now:?}, sent as {was:?}"))
}

#[test]
fn tc_icmp_errors_with_the_longest_headers_are_translated() {
    longest_headers("tc", Hook::Tc, "qa");
}

#[test]
fn xdp_icmp_errors_with_the_longest_headers_are_translated() {
    longest_headers("xdp", Hook::Xdp, "qb");
}

/// An error whose outer and quoted IPv4 headers both carry the most options (IHL 15): the
/// quoted ports end at the last byte the stage reads (its `READ_LEN`, 146), from either side;
/// translated, checksums right. (Frames run by `BPF_PROG_TEST_RUN` are linear: this checks the
/// stage's reads, not tc's pull.) Headers of 20 bytes each, for comparison, likewise.
fn longest_headers(mode: &'static str, hook: Hook, tag: &str) {
    let _turn = shared();
    let (lab, _guard, _dir) = lab(mode, hook, tag);
    for side in SIDES {
        for ihl in [5, 15] {
            lab.track();
            let frame = lab.error(side, ihl, QuoteShape::plain(ihl), CPORT);
            let (verdict, out) = lab.run(side, &frame);
            assert_eq!(
                verdict,
                Verdict::Forward,
                "{mode}, {side:?}, IHL {ihl}: not forwarded"
            );
            assert_translated(&format!("{mode}, IHL {ihl}"), side, &frame, &out);
        }
    }
}

#[test]
fn tc_icmp_errors_quoting_what_conntrack_cannot_read_pass_untranslated() {
    unreadable_quotes("tc", Hook::Tc, "qc");
}

#[test]
fn xdp_icmp_errors_quoting_what_conntrack_cannot_read_pass_untranslated() {
    unreadable_quotes("xdp", Hook::Xdp, "qd");
}

/// Quotes conntrack finds no tuple in, or that are no IPv4 header, from either side, each with
/// the flow's addresses and (where ports would be read) its ports: passed on untranslated, as
/// kernel mode's conntrack lets an error it relates to nothing pass. Quoting a later fragment
/// (fragment offset 1480 bytes, with or without "more fragments"): its first bytes are
/// payload, no ports; before, the stage read them as ports, translated the error when they
/// matched the flow and wrote into the quoted payload, or dropped it (`lb-reply-untracked`,
/// `lb-icmp-untracked`) when they matched none. A quoted header shorter than 20 bytes (IHL 4),
/// one longer than the packet (IHL 15, with only 20 bytes of it there), and one of version 6
/// pass too.
fn unreadable_quotes(mode: &'static str, hook: Hook, tag: &str) {
    let _turn = shared();
    let (lab, _guard, _dir) = lab(mode, hook, tag);
    let later = |frag: u16| QuoteShape {
        frag,
        ..QuoteShape::plain(5)
    };
    let cases: [(&str, QuoteShape, u16); 6] = [
        ("a later fragment", later(185), CPORT),
        ("a later fragment, more to come", later(0x2000 | 185), CPORT),
        // Its bytes read as ports name a backend's or the VIP's port, but no flow.
        (
            "a later fragment, its ports no flow's",
            later(185),
            CPORT + 1,
        ),
        ("IHL 4", QuoteShape::plain(4), CPORT),
        (
            "IHL 15, 20 bytes there",
            QuoteShape {
                first: Some(0x4f),
                ..QuoteShape::plain(5)
            },
            CPORT,
        ),
        (
            "version 6",
            QuoteShape {
                first: Some(0x65),
                ..QuoteShape::plain(5)
            },
            CPORT,
        ),
    ];
    let mut wrongs = Vec::new();
    for side in SIDES {
        for (what, shape, cport) in cases {
            lab.track();
            let frame = lab.error(side, 5, shape, cport);
            let (verdict, out) = lab.run(side, &frame);
            if let Some(wrong) = untranslated(&frame, verdict, &out) {
                wrongs.push(format!("from the {side:?} side, {what}: {wrong}"));
            }
        }
    }
    assert!(wrongs.is_empty(), "{mode}:\n{}", wrongs.join("\n"));
}
