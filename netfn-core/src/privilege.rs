//! Least privilege for netfn's long-running processes: [`drop_all`] for a process that needs no
//! capability once set up (a kind's userspace data plane, e.g. the WireGuard endpoint, after it
//! has made its TUN device and bound its sockets), [`keep_only`] for one that needs a few (the
//! host agent: see [`crate::agent::AGENT_CAPABILITIES`]).
//!
//! Capabilities are per thread in Linux, so every thread drops them: a runtime's threads as they
//! start (`on_thread_start`), the main thread when its setup is done. Threads started later
//! inherit what their creator kept.

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

/// Capability numbers (linux/capability.h) that netfn's processes keep.
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SETPCAP: u32 = 8;

/// What the commands that change or read chains need (`setns`, netlink, bpffs and eBPF objects),
/// and the host agent keeps.
pub const ADMIN_CAPABILITIES: &[u32] = &[CAP_SYS_ADMIN, CAP_NET_ADMIN];

/// The name of capability `cap` as linux/capability.h spells it (those netfn uses).
pub fn name(cap: u32) -> String {
    match cap {
        CAP_NET_ADMIN => "CAP_NET_ADMIN".into(),
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN".into(),
        CAP_SETPCAP => "CAP_SETPCAP".into(),
        other => format!("capability {other}"),
    }
}

/// The capabilities of `wanted` that the calling thread does not have in its effective set
/// (root in a container without them, or under a unit's `CapabilityBoundingSet`, has not).
pub fn missing(wanted: &[u32]) -> Result<Vec<u32>, String> {
    let now = current()?;
    Ok(wanted
        .iter()
        .copied()
        .filter(|&cap| {
            let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
            now.get(word).is_none_or(|d| d.effective & bit == 0)
        })
        .collect())
}

/// The calling thread's capability sets.
fn current() -> Result<[CapData; 2], String> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut now = [CapData::default(); 2];
    // SAFETY: capget(2) with a version-3 header and room for the two data words it writes.
    if unsafe { libc::syscall(libc::SYS_capget, &header, now.as_mut_ptr()) } != 0 {
        return Err(format!(
            "read capabilities: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(now)
}

/// Drops every capability of the calling thread (bounding set, ambient set, then the effective,
/// permitted and inheritable sets) and forbids gaining any back (`no_new_privs`, so not even an
/// executed set-uid program could).
pub fn drop_all() -> Result<(), String> {
    keep_only(&[])
}

/// Keeps only the capabilities `keep` (those of them the thread has) in the calling thread's
/// bounding, effective and permitted sets, clears the ambient and inheritable sets, and sets
/// `no_new_privs`: a program it executes gets at most what it kept.
pub fn keep_only(keep: &[u32]) -> Result<(), String> {
    let now = current()?;
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "set no_new_privs: {}",
            std::io::Error::last_os_error()
        ));
    }
    // The bounding set first: dropping from it takes CAP_SETPCAP, which goes last.
    for cap in 0..=last_cap() {
        if keep.iter().any(|&k| libc::c_ulong::from(k) == cap) {
            continue;
        }
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
    let mut data = [CapData::default(); 2];
    for &cap in keep {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        if word < 2 && now[word].permitted & bit != 0 {
            data[word].permitted |= bit;
            data[word].effective |= bit;
        }
    }
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
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
