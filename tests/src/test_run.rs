//! Runs a pinned eBPF program once on a frame with `BPF_PROG_TEST_RUN`, as if the frame had
//! arrived on interface `ifindex` of the calling thread's namespace: the program's exact
//! verdict and the frame as it would leave. Its maps are the live ones (counters count, tail
//! calls reach the chain's stages); nothing is transmitted.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use std::os::fd::AsRawFd;

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
