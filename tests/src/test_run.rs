//! Runs a pinned eBPF program once on a frame with `BPF_PROG_TEST_RUN`, as if the frame had
//! arrived on interface `ifindex` of the calling thread's namespace: the program's exact
//! verdict and the frame as it would leave. Its maps are the live ones (counters count, tail
//! calls reach the chain's stages); nothing is transmitted. With it, the hops of a chain (each
//! function interface and the link its frames arrive on) and what a verdict means.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use std::os::fd::AsRawFd;

use crate::frames::Link;
use crate::netfn_ok;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Which context the program takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A TC classifier (`struct __sk_buff`).
    Tc,
    /// An XDP program (`struct xdp_md`).
    Xdp,
}

/// `union bpf_attr` as BPF_OBJ_GET reads it.
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr` as BPF_PROG_TEST_RUN reads it.
#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a properly laid out, fully initialised bpf_attr prefix of its size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens the program pinned at `path`.
pub fn pinned_program(path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let mut attr = ObjGet {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel just handed us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Runs `program` once on `frame` arriving on `ifindex` (in the calling thread's namespace).
/// Returns the program's return value and the frame as the program left it.
pub fn run_once(
    program: &OwnedFd,
    hook: Hook,
    ifindex: u32,
    frame: &[u8],
) -> std::io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    // __sk_buff up to and including `ifindex` (offset 40); xdp_md's first four fields.
    let mut skb = [0u32; 11];
    skb[10] = ifindex;
    let mut xdp = [0u32; 6];
    xdp[1] = frame.len() as u32;
    xdp[3] = ifindex;
    let ctx: &mut [u32] = match hook {
        Hook::Tc => &mut skb,
        Hook::Xdp => &mut xdp,
    };
    let mut attr = TestRun {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: std::mem::size_of_val(ctx) as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    out.truncate(attr.data_size_out as usize);
    Ok((attr.retval, out))
}

/// What a hop does with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Forwarded to the next hop (TC redirect to the peer, XDP redirect through the devmap).
    Forward,
    /// Handed to the function's own stack (ARP, non-IPv4, broadcast, multicast, to itself).
    Stack,
    /// Dropped, counted under the reason.
    Drop(&'static str),
}

/// What a hop did, from the return value of its program run with `hook`.
pub fn verdict(hook: Hook, retval: u32) -> Option<Verdict> {
    match (hook, retval) {
        (Hook::Tc, 7) | (Hook::Xdp, 4) => Some(Verdict::Forward),
        (Hook::Tc, 0) | (Hook::Xdp, 2) => Some(Verdict::Stack),
        (Hook::Tc, 2) | (Hook::Xdp, 1) => Some(Verdict::Drop("")),
        _ => None,
    }
}

/// One interface of a function, the frames that arrive on it, and where the program is.
pub struct Hop {
    pub function: String,
    pub kind: String,
    pub netns: String,
    pub interface: String,
    pub ifindex: u32,
    pub link: Link,
}

fn mac(text: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, part) in m.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("mac");
    }
    m
}

/// Every function interface of `chain`, with the link its frames arrive on: from the ingress
/// side on `nf-in` (client to server), from the egress side on `nf-out` (server to client).
pub fn hops(chain: &str, ingress: Ipv4Addr, egress: Ipv4Addr) -> Vec<Hop> {
    let status: serde_json::Value =
        serde_json::from_str(&netfn_ok(&["status", chain, "--json"])).expect("status json");
    let all = status[0]["hops"].as_array().expect("hops").clone();
    let iface = |h: &serde_json::Value, name: &str| -> Option<(u32, [u8; 6])> {
        h["interfaces"]
            .as_array()?
            .iter()
            .find(|i| i["name"] == name)
            .map(|i| {
                (
                    i["ifindex"].as_u64().expect("ifindex") as u32,
                    mac(i["mac"].as_str().expect("mac")),
                )
            })
    };
    let mut out = Vec::new();
    for (n, h) in all.iter().enumerate() {
        let kind = h["kind"].as_str().unwrap_or_default();
        if kind == "ingress" || kind == "egress" {
            continue;
        }
        let prev = &all[n - 1];
        let next = &all[n + 1];
        let prev_out = iface(prev, "nf-out").expect("previous hop's nf-out");
        let next_in = iface(next, "nf-in")
            .or_else(|| iface(next, "nf-out"))
            .expect("next");
        for (interface, peer_mac, src, dst) in [
            ("nf-in", prev_out.1, ingress, egress),
            ("nf-out", next_in.1, egress, ingress),
        ] {
            let (ifindex, own) = iface(h, interface).expect("function interface");
            out.push(Hop {
                function: h["name"].as_str().expect("name").to_string(),
                kind: kind.to_string(),
                netns: h["netns"].as_str().expect("netns").to_string(),
                interface: interface.to_string(),
                ifindex,
                link: Link {
                    src_mac: peer_mac,
                    dst_mac: own,
                    src,
                    dst,
                },
            });
        }
    }
    out
}

/// The chain's forwarder program for `hook`, pinned by `netfn up`: frames run through it reach
/// the stage of the function whose interface they arrive on by its tail call.
pub fn forwarder(chain: &str, hook: Hook) -> OwnedFd {
    let program = PathBuf::from(format!(
        "/sys/fs/bpf/netfn/{chain}/{}",
        match hook {
            Hook::Tc => "nf_fwd_tc",
            Hook::Xdp => "nf_fwd_xdp",
        }
    ));
    pinned_program(&program).unwrap_or_else(|e| panic!("open {}: {e}", program.display()))
}
