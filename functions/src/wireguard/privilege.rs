//! Least privilege for the userspace endpoint: once it has made its TUN device, bound its
//! sockets and configured its interface (all of which need root), it needs no capability at all
//! to move packets and answer `wg`. Capabilities are per thread in Linux, so every thread drops
//! them: the runtime's threads as they start, the main thread when setup is done.

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability of the calling thread (bounding set, ambient set, then the effective,
/// permitted and inheritable sets) and forbids gaining any back (`no_new_privs`, so not even an
/// executed set-uid program could).
pub fn drop_all() -> Result<(), String> {
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "set no_new_privs: {}",
            std::io::Error::last_os_error()
        ));
    }
    // The bounding set first: dropping from it takes CAP_SETPCAP, which goes last.
    for cap in 0..=last_cap() {
        // SAFETY: as above. EINVAL (a capability this kernel does not know) is harmless.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset(2) with a version-3 header and the two data words it reads.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(format!(
            "drop capabilities: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The highest capability number this kernel knows.
fn last_cap() -> libc::c_ulong {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}
