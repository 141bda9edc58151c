//! Moving a running agent onto this netfn binary after an upgrade replaced the file it was
//! started from (for [`super::ensure_agent_running`]): stopped through a pidfd (no recycled pid
//! is ever signalled) and started again with the arguments it ran with, one caller at a time.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::chain::processes;

/// An agent process that runs another netfn binary, held by a pidfd.
pub(super) struct StaleAgent {
    pid: i32,
    pidfd: OwnedFd,
    /// The binary it runs, as the kernel names it (`PATH (deleted)` after an upgrade).
    pub(super) binary: String,
    /// Its arguments after the program's name (`agent --socket …`, global options included).
    pub(super) args: Vec<OsString>,
}

/// What to do with the agent that answered.
pub(super) enum Found {
    /// It runs the binary at `exe` (or that cannot be told: unknown is not another).
    Current,
    /// Systemd runs it (its unit's name, when the cgroup tells): restarting it is the unit's job.
    Systemd {
        binary: String,
        unit: Option<String>,
    },
    /// Its arguments cannot be read, or are not an agent's: left running, as it cannot be
    /// started again as it was.
    Unknown {
        binary: String,
    },
    Stale(StaleAgent),
}

/// Looks at agent `pid` (as this process's pid namespace numbers it) against the binary at
/// `exe`.
pub(super) fn look(pid: i32, exe: &Path) -> Found {
    // The pidfd first: whatever is read below is of the process it holds, and only that one is
    // ever signalled, even if `pid` is reused meanwhile.
    let Some(pidfd) = pidfd_open(pid) else {
        return Found::Current;
    };
    let Some(binary) = processes::runs_other_binary(pid, exe) else {
        return Found::Current;
    };
    if let Some(unit) = systemd_unit(pid) {
        return Found::Systemd { binary, unit };
    }
    match arguments(pid) {
        Some(args) => Found::Stale(StaleAgent {
            pid,
            pidfd,
            binary,
            args,
        }),
        None => Found::Unknown { binary },
    }
}

impl StaleAgent {
    pub(super) fn pid(&self) -> i32 {
        self.pid
    }

    /// SIGTERM, then SIGKILL after 2 s (the chains do not need it to forward). True once it
    /// has exited; false if it is still there 2 s after SIGKILL.
    pub(super) fn stop(&self) -> bool {
        [libc::SIGTERM, libc::SIGKILL].into_iter().any(|signal| {
            // SAFETY: pidfd_send_signal(2) on a pidfd this value owns, no siginfo, no flags.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.pidfd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            self.exited_within(Duration::from_secs(2))
        })
    }

    /// Whether the process exits within `wait` (a pidfd turns readable when it does).
    fn exited_within(&self, wait: Duration) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one pollfd, alive for the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        ready > 0 || processes::exited(self.pid)
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) with a pid and no flags; a non-negative result is a new descriptor
    // that nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: as above: ours alone.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Systemd's unit of process `pid`, if systemd runs it (a service's processes have its
/// INVOCATION_ID): the unit's name from its cgroup where it tells (`Some(None)`: it does not).
fn systemd_unit(pid: i32) -> Option<Option<String>> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    if !environ
        .split(|&b| b == 0)
        .any(|v| v.starts_with(b"INVOCATION_ID="))
    {
        return None;
    }
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    Some(
        cgroup
            .lines()
            .flat_map(|line| line.rsplit('/'))
            .find(|part| part.ends_with(".service"))
            .map(str::to_string),
    )
}

/// The arguments agent `pid` runs with, after the program's name, byte for byte; `None` when
/// they cannot be read or are not an agent's (no `agent` among them).
fn arguments(pid: i32) -> Option<Vec<OsString>> {
    agent_arguments(&fs::read(format!("/proc/{pid}/cmdline")).ok()?)
}

/// [`arguments`] from the bytes of /proc/PID/cmdline.
fn agent_arguments(cmdline: &[u8]) -> Option<Vec<OsString>> {
    // Each argument ends with a NUL (empty ones too).
    let body = cmdline.strip_suffix(b"\0")?;
    let args: Vec<OsString> = body
        .split(|&b| b == 0)
        .skip(1)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    args.iter().any(|a| a == "agent").then_some(args)
}

/// Held while one caller moves the agent of a socket: another `up` or `apply` at the same
/// moment waits, then finds the moved agent.
pub(super) struct MoveLock {
    _lock: Flock<File>,
}

impl MoveLock {
    pub(super) fn take(socket: &Path) -> std::io::Result<MoveLock> {
        let path = move_lock_path(socket);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| std::io::Error::from(errno))?;
        Ok(MoveLock { _lock: lock })
    }
}

pub(super) fn move_lock_path(socket: &Path) -> PathBuf {
    socket.with_extension("move.lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_arguments_are_kept_byte_for_byte() {
        let args = agent_arguments(b"/usr/bin/netfn\0--log\0debug\0agent\0--label\0\0\xff\0")
            .expect("an agent's");
        let want: Vec<OsString> = vec![
            "--log".into(),
            "debug".into(),
            "agent".into(),
            "--label".into(),
            "".into(),
            OsString::from_vec(vec![0xff]),
        ];
        assert_eq!(args, want);
        assert!(agent_arguments(b"/usr/bin/netfn\0up\0x.toml\0").is_none());
        assert!(agent_arguments(b"").is_none());
    }

    #[test]
    fn pidfds_and_systemd_units_of_processes() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(pidfd_open(me).is_some(), "pidfd_open works here");
        assert!(pidfd_open(i32::MAX).is_none(), "no such process");
        assert!(systemd_unit(i32::MAX).is_none());
    }

    #[test]
    fn the_move_lock_sits_beside_the_socket() {
        assert_eq!(
            move_lock_path(Path::new("/run/netfn/agent.sock")),
            Path::new("/run/netfn/agent.move.lock")
        );
    }
}
