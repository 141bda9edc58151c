//! A kind's own process per function (a userspace VPN data plane): started by `up` (and by the
//! agent when it died), stopped by `down`. It runs as the netfn binary with the arguments the
//! kind gives ([`crate::function::FunctionConfig::process`]), in a session of its own, so that
//! neither the netfn command that started it nor the agent takes it along when they end: killing
//! the agent loses no packet through it.
//!
//! Its pid is recorded in `/run/netfn/chains/<chain>.<function>.pid`, its output appended to
//! `….log` beside it. It says it is ready by creating `….ready` (see [`ready_file`]); `start`
//! waits for that, or for its exit, which it reports with the log's last lines.
//!
//! A process runs the netfn binary that started it until it ends: after an upgrade of netfn, the
//! old one ([`other_binary`] tells; `apply` [`restart`]s it on the new one).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::plan::names;

/// How long a process may take to say it is ready. A healthy one takes milliseconds; a starved
/// one much longer: a VPN endpoint restarted by `apply` after an upgrade, on a 1-CPU Debian 6.1
/// VM under TCG with 1,000 datagrams a second through the tunnel (the apply's own eBPF loading
/// on the same CPU), took 3.7-8.8 s from its start to ready, and more before it (the old one's
/// exit, the exec): with 10 s that test failed in two CI runs (2026-12-05).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot {what} for function {function}: {source}")]
    Io {
        what: &'static str,
        function: String,
        source: std::io::Error,
    },
    #[error(
        "function {function}'s process exited before it was ready; its log ({log}) ends with:\n{tail}"
    )]
    Exited {
        function: String,
        log: String,
        tail: String,
    },
    #[error(
        "function {function}'s process did not get ready in {secs} s; see its log {log}",
        secs = READY_TIMEOUT.as_secs()
    )]
    NotReady { function: String, log: String },
    #[error(
        "function {function}'s process (pid {pid}) did not end on SIGTERM nor SIGKILL, so it could \
         not be started again; look at that process (`cat /proc/{pid}/status`)"
    )]
    NotEnded { function: String, pid: i32 },
}

fn file(chain: &str, function: &str, ext: &str) -> PathBuf {
    names::chain_state_dir().join(format!("{chain}.{function}.{ext}"))
}

/// The file a function's process creates once it is ready.
pub fn ready_file(chain: &str, function: &str) -> PathBuf {
    file(chain, function, "ready")
}

/// A file where a function's process may keep state across its restarts (`ext` names it);
/// removed with the process's other files when it is stopped.
pub fn state_file(chain: &str, function: &str, ext: &str) -> PathBuf {
    file(chain, function, ext)
}

/// The file where a function's process lists, one absolute path a line, files of its own
/// outside the state directory (a socket where other tools look for it): [`stop`] removes
/// them too, also when the process could not (it was SIGKILLed).
pub fn owned_files(chain: &str, function: &str) -> PathBuf {
    file(chain, function, "owns")
}

/// The pid recorded for function `function`'s process, alive or not.
pub fn recorded_pid(chain: &str, function: &str) -> Option<i32> {
    std::fs::read_to_string(file(chain, function, "pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The pid of function `function`'s process, if one is recorded and alive (and still that
/// process: a recycled pid whose command line does not name the chain and function is not).
pub fn running(chain: &str, function: &str) -> Option<i32> {
    let pid = recorded_pid(chain, function)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let ours = args.contains(&chain.as_bytes()) && args.contains(&function.as_bytes());
    (ours && !exited(pid)).then_some(pid)
}

/// Whether process `pid` is gone or a zombie (exited, not yet reaped): not running either way.
pub(crate) fn exited(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |state| {
        state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// A function's process that runs another netfn binary than the one asking: an upgrade
/// replaced the binary's file since the process started (the kernel then names it
/// `PATH (deleted)`), or a netfn at another path started it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OtherBinary {
    pub function: String,
    pub pid: i32,
    /// The binary it runs, as the kernel names it (`/proc/PID/exe`).
    pub binary: String,
}

/// A function's process as `apply` (and an unchanged `up`) starts it on this netfn binary: one
/// that runs another netfn binary (started again), or one that does not run (it died, or an
/// earlier restart failed: started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub function: String,
    /// The process that runs another netfn binary; None: none runs.
    pub running: Option<OtherBinary>,
    /// The arguments its kind gives for it (`FunctionConfig::process`).
    pub(crate) args: Vec<String>,
}

impl std::fmt::Display for Restart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.running {
            Some(r) => write!(
                f,
                "⟳ restart function {}'s process (pid {}) on this netfn binary: it runs {}",
                r.function, r.pid, r.binary
            ),
            None => write!(
                f,
                "⟳ start function {}'s process, which is not running",
                self.function
            ),
        }
    }
}

/// The file (device and inode) that process `pid` (`self`: this one) runs: the one it was
/// started from, also when that was removed or replaced since.
fn binary_of(pid: &str) -> Option<(u64, u64)> {
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

/// The binary process `pid` runs, as the kernel names it (`PATH (deleted)` once an upgrade
/// replaced it): for messages.
fn binary_name(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_or_else(|_| "unknown".into(), |p| p.display().to_string())
}

/// If process `pid` runs another binary than the file at `exe` is now (an upgrade replaced
/// that file since the process started from it, or the process runs a netfn at another path):
/// the binary it runs, as the kernel names it. `None` also when either cannot be read
/// (/proc/PID/exe takes root): unknown is not another.
pub(crate) fn runs_other_binary(pid: i32, exe: &Path) -> Option<String> {
    let theirs = binary_of(&pid.to_string())?;
    let m = std::fs::metadata(exe).ok()?;
    (theirs != (m.dev(), m.ino())).then(|| binary_name(pid))
}

/// Function `function`'s process, if one runs and its binary is not the one this process runs.
/// `None` also when either cannot be read (/proc/PID/exe takes root): unknown is not another.
pub fn other_binary(chain: &str, function: &str) -> Option<OtherBinary> {
    let pid = running(chain, function)?;
    let theirs = binary_of(&pid.to_string())?;
    if theirs == binary_of("self")? {
        return None;
    }
    Some(OtherBinary {
        function: function.to_string(),
        pid,
        binary: binary_name(pid),
    })
}

/// Starts function `function`'s process (`netfn ARGS…`) unless one runs, and waits until it is
/// ready. Returns its pid.
pub fn start(chain: &str, function: &str, args: &[String]) -> Result<i32, ProcessError> {
    if let Some(pid) = running(chain, function) {
        return Ok(pid);
    }
    let io = |what| {
        let function = function.to_string();
        move |source| ProcessError::Io {
            what,
            function,
            source,
        }
    };
    std::fs::create_dir_all(names::chain_state_dir()).map_err(io("create the state directory"))?;
    let ready = ready_file(chain, function);
    let _ = std::fs::remove_file(&ready);
    let log_path = file(chain, function, "log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io("open the process log"))?;
    // The file this process runs, through /proc: current_exe() names a binary an upgrade
    // replaced "PATH (deleted)", which cannot be started, while /proc/self/exe still can (an
    // agent from before the upgrade starts its own binary's process; `apply` moves it on). The
    // name it is shown by stays the binary's path.
    let shown = std::env::current_exe().map_or_else(
        |_| "netfn".to_string(),
        |p| {
            let p = p.display().to_string();
            p.strip_suffix(" (deleted)")
                .map(str::to_string)
                .unwrap_or(p)
        },
    );
    let mut command = Command::new("/proc/self/exe");
    std::os::unix::process::CommandExt::arg0(&mut command, shown);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io("open the process log"))?)
        .stderr(log);
    // SAFETY: setsid(2) between fork and exec is async-signal-safe: the process leads a session
    // of its own and outlives the command and the agent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(io("start the process"))?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    std::fs::write(file(chain, function, "pid"), format!("{pid}\n"))
        .map_err(io("record the pid"))?;
    let started = Instant::now();
    while started.elapsed() < READY_TIMEOUT {
        if ready.exists() {
            return Ok(pid);
        }
        if let Ok(Some(_)) = child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let _ = std::fs::remove_file(file(chain, function, "pid"));
            return Err(ProcessError::Exited {
                function: function.to_string(),
                log: log_path.display().to_string(),
                tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(ProcessError::NotReady {
        function: function.to_string(),
        log: log_path.display().to_string(),
    })
}

/// Starts function `function`'s process again on this netfn binary (`netfn ARGS…`): ends the
/// running one as [`stop`] does, but keeps what it keeps across restarts (its state files: where
/// a VPN's peers were; its log goes on), and waits until the new one is ready. Returns its pid.
/// The caller holds the chain's lock: the agent, which starts a process that died, leaves a
/// locked chain alone, so it does not start the old binary's meanwhile.
pub fn restart(chain: &str, function: &str, args: &[String]) -> Result<i32, ProcessError> {
    end(chain, function);
    if let Some(pid) = running(chain, function) {
        return Err(ProcessError::NotEnded {
            function: function.to_string(),
            pid,
        });
    }
    remove_owned(chain, function);
    for ext in ["pid", "ready"] {
        let _ = std::fs::remove_file(file(chain, function, ext));
    }
    start(chain, function, args)
}

/// Stops function `function`'s process (SIGTERM, then SIGKILL after a second) and removes its
/// files (the log too: `down` leaves nothing). Nothing to do when none runs.
pub fn stop(chain: &str, function: &str) {
    end(chain, function);
    remove_owned(chain, function);
    // Its pid, ready file and log, and whatever state it kept beside them.
    let prefix = format!("{chain}.{function}.");
    if let Ok(dir) = std::fs::read_dir(names::chain_state_dir()) {
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Ends function `function`'s process if one runs: SIGTERM, then SIGKILL after a second; waits
/// (a moment) until it is gone, so that what it held (its sockets) is free.
fn end(chain: &str, function: &str) {
    let Some(pid) = running(chain, function) else {
        return;
    };
    let ended_within = |wait: Duration| {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && running(chain, function).is_some() {
            std::thread::sleep(Duration::from_millis(10));
        }
        running(chain, function).is_none()
    };
    // SAFETY: kill(2) on a pid netfn recorded for this function.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if !ended_within(Duration::from_secs(1)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        ended_within(Duration::from_secs(1));
    }
}

/// Removes what function `function`'s process listed as its own outside the state directory
/// (a process that had to be SIGKILLed could not).
fn remove_owned(chain: &str, function: &str) {
    let owned = std::fs::read_to_string(owned_files(chain, function)).unwrap_or_default();
    for path in owned.lines().map(Path::new).filter(|p| p.is_absolute()) {
        let _ = std::fs::remove_file(path);
    }
}
