//! Starting the agent from `netfn up` and `netfn apply` when none runs: `netfn agent` in its own
//! session (setsid), stdin from /dev/null, stdout and stderr appended to /run/netfn/agent.log,
//! and no parent to wait for it. Under systemd, run the unit (examples/netfn-agent.service)
//! instead; `up` then finds it running and starts nothing.
//!
//! An agent that runs another netfn binary than the one asking (an upgrade replaced the file it
//! was started from) is stopped and started again on this one, with the arguments it ran with:
//! the chains keep forwarding meanwhile, as they do whenever the agent stops. One that systemd
//! runs is left to its unit (`systemctl restart netfn-agent`), which knows how to start it.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::client::{self, ClientError};
use super::upgrade::{self, Found, MoveLock};
use super::{default_log_path, default_socket};

/// Set to `0` to keep `netfn up` from starting an agent (tests, hosts that run the unit).
pub const AUTOSTART_ENV: &str = "NETFN_AGENT_AUTOSTART";

/// What [`ensure_agent_running`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStart {
    /// It started an agent.
    Started { pid: u32, log: PathBuf },
    /// An agent was running already.
    Running { pid: u32 },
    /// The agent ran another netfn binary (`old_binary`, as the kernel names it: `PATH
    /// (deleted)` after an upgrade): it was stopped and started again on this one.
    Replaced {
        old_pid: u32,
        old_binary: String,
        pid: u32,
        log: PathBuf,
    },
    /// The agent runs another netfn binary but was left running, for the caller to tell the
    /// operator: systemd runs it (`unit`: its name where known), whose unit should restart it;
    /// or (`systemd` false) its arguments could not be read, so it could not be started again
    /// as it was.
    OtherBinary {
        pid: u32,
        binary: String,
        systemd: bool,
        unit: Option<String>,
    },
    /// `NETFN_AGENT_AUTOSTART=0`: nothing checked, nothing started.
    Disabled,
}

/// How to start the agent.
#[derive(Debug, Clone)]
pub struct AutostartOptions {
    /// The `netfn` binary (normally `std::env::current_exe()`).
    pub exe: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// More arguments after `agent --socket SOCKET`.
    pub args: Vec<String>,
    /// How long to wait for the new agent to answer on its socket.
    pub wait: Duration,
    /// Whether to check and start at all: false when `NETFN_AGENT_AUTOSTART=0` (read by
    /// [`AutostartOptions::new`]; a caller that means to start one sets it).
    pub enabled: bool,
}

impl AutostartOptions {
    /// Defaults: the socket from `NETFN_AGENT_SOCKET` or /run/netfn/agent.sock, the log at
    /// /run/netfn/agent.log, 5 s to come up.
    pub fn new(exe: impl Into<PathBuf>) -> Self {
        AutostartOptions {
            exe: exe.into(),
            socket: default_socket(),
            log: default_log_path(),
            args: Vec::new(),
            wait: Duration::from_secs(5),
            enabled: !std::env::var(AUTOSTART_ENV).is_ok_and(|v| v.trim() == "0"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AutostartError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot open the agent log {}: {source}", path.display())]
    Log { path: PathBuf, source: io::Error },
    #[error("cannot start {} agent: {source}", exe.display())]
    Spawn { exe: PathBuf, source: io::Error },
    #[error("the netfn agent exited at once ({status}); its log {} ends with:\n{tail}", log.display())]
    Exited {
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "the netfn agent (pid {pid}) runs {binary}, not {}, and did not end on SIGTERM nor \
         SIGKILL (stuck in the kernel? see /proc/{pid}/stack); once it is gone, run this command \
         again",
        exe.display()
    )]
    Stop {
        pid: i32,
        binary: String,
        exe: PathBuf,
    },
    #[error(
        "stopped the netfn agent (pid {pid}), which ran {binary}, but it did not start again on \
         {}: {source}; start it by hand: {} {}",
        exe.display(), exe.display(), args.join(" ")
    )]
    Restart {
        pid: i32,
        binary: String,
        exe: PathBuf,
        args: Vec<String>,
        source: Box<AutostartError>,
    },
    #[error(
        "cannot take {} (held while an agent that runs another netfn binary is moved onto this \
         one): {source}",
        path.display()
    )]
    Lock { path: PathBuf, source: io::Error },
    #[error(
        "the netfn agent (pid {pid}) did not answer on {} within {} ms; see {}",
        socket.display(), wait.as_millis(), log.display()
    )]
    Timeout {
        pid: u32,
        socket: PathBuf,
        log: PathBuf,
        wait: Duration,
    },
}

/// Starts `netfn agent` unless one answers on the socket already (or `opts.enabled` is false:
/// `NETFN_AGENT_AUTOSTART=0`); one that runs another netfn binary than `opts.exe` is started
/// again on it, with the arguments it ran with (unless systemd runs it). Returns once the agent
/// answers.
pub fn ensure_agent_running(opts: &AutostartOptions) -> Result<AgentStart, AutostartError> {
    if !opts.enabled {
        return Ok(AgentStart::Disabled);
    }
    let Some((pong, pid_here)) = client::ping_peer(&opts.socket)? else {
        return start(opts, None);
    };
    // The pid as this process sees it (the agent's own may be another pid namespace's).
    let Some(pid_here) = pid_here else {
        return Ok(AgentStart::Running { pid: pong.pid });
    };
    if matches!(upgrade::look(pid_here, &opts.exe), Found::Current) {
        return Ok(AgentStart::Running { pid: pong.pid });
    }
    // One caller moves it; another `up` or `apply` meanwhile waits here, then finds it moved.
    let _moving = MoveLock::take(&opts.socket).map_err(|source| AutostartError::Lock {
        path: upgrade::move_lock_path(&opts.socket),
        source,
    })?;
    let Some((pong, Some(pid_here))) = client::ping_peer(&opts.socket)? else {
        return start(opts, None);
    };
    let stale = match upgrade::look(pid_here, &opts.exe) {
        Found::Current => return Ok(AgentStart::Running { pid: pong.pid }),
        Found::Systemd { binary, unit } => {
            return Ok(AgentStart::OtherBinary {
                pid: pong.pid,
                binary,
                systemd: true,
                unit,
            });
        }
        Found::Unknown { binary } => {
            return Ok(AgentStart::OtherBinary {
                pid: pong.pid,
                binary,
                systemd: false,
                unit: None,
            });
        }
        Found::Stale(stale) => stale,
    };
    if !stale.stop() {
        return Err(AutostartError::Stop {
            pid: stale.pid(),
            binary: stale.binary,
            exe: opts.exe.clone(),
        });
    }
    match start(opts, Some(stale.args.clone())) {
        Ok(AgentStart::Started { pid, log }) => Ok(AgentStart::Replaced {
            old_pid: pong.pid,
            old_binary: stale.binary,
            pid,
            log,
        }),
        // Another agent came up at the same moment (not through `up`: they take the lock).
        Ok(other) => Ok(other),
        Err(source) => Err(AutostartError::Restart {
            pid: stale.pid(),
            binary: stale.binary,
            exe: opts.exe.clone(),
            args: stale
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            source: Box::new(source),
        }),
    }
}

/// Starts `netfn agent` with `args` (after the program's name; `None`: `agent --socket SOCKET`
/// and `opts.args`), its output appended to `opts.log`, and waits until it answers.
fn start(
    opts: &AutostartOptions,
    args: Option<Vec<std::ffi::OsString>>,
) -> Result<AgentStart, AutostartError> {
    let log_err = |source| AutostartError::Log {
        path: opts.log.clone(),
        source,
    };
    if let Some(dir) = opts.log.parent() {
        fs::create_dir_all(dir).map_err(log_err)?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.log)
        .map_err(log_err)?;
    let log2 = log.try_clone().map_err(log_err)?;
    let mut cmd = Command::new(&opts.exe);
    match args {
        Some(args) => cmd.args(args),
        None => cmd
            .arg("agent")
            .arg("--socket")
            .arg(&opts.socket)
            .args(&opts.args),
    };
    // A daemon pins no directory. Started from a systemd service (a CI runner's, say), it
    // would inherit the service's INVOCATION_ID and pass for one systemd runs.
    cmd.env_remove("INVOCATION_ID")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(io::Error::from));
    }
    let mut child = spawn_when_not_busy(&mut cmd).map_err(|source| AutostartError::Spawn {
        exe: opts.exe.clone(),
        source,
    })?;
    let pid = child.id();
    let deadline = Instant::now() + opts.wait;
    loop {
        if let Some(pong) = client::ping(&opts.socket)? {
            return Ok(if pong.pid == pid {
                AgentStart::Started {
                    pid,
                    log: opts.log.clone(),
                }
            } else {
                // Another `up` started one at the same moment; ours stepped back.
                AgentStart::Running { pid: pong.pid }
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            // It may have lost a race against another agent that is still coming up.
            std::thread::sleep(Duration::from_millis(200));
            if let Some(pong) = client::ping(&opts.socket)? {
                return Ok(AgentStart::Running { pid: pong.pid });
            }
            return Err(AutostartError::Exited {
                status,
                log: opts.log.clone(),
                tail: tail(&opts.log, 20),
            });
        }
        if Instant::now() >= deadline {
            return Err(AutostartError::Timeout {
                pid,
                socket: opts.socket.clone(),
                log: opts.log.clone(),
                wait: opts.wait,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of a file (for error messages).
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts `cmd`, trying again for up to a second while its file is busy (`ETXTBSY`). A binary
/// just written (an upgrade's, or a copy) is busy while any process still holds it open for
/// writing, and that includes a child that another thread of this process forked meanwhile and
/// has not yet exec'd (it inherited the writer's descriptor for that moment). The tests start
/// their copies of netfn through it too.
pub fn spawn_when_not_busy(cmd: &mut Command) -> io::Result<Child> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A program still open for writing cannot be started; once the writer lets go (here after
    /// 200 ms, in another thread), the retry starts it.
    #[test]
    fn a_program_busy_for_a_moment_is_started_when_it_is_not() {
        let dir = std::env::temp_dir().join(format!("netfn-busy-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let program = dir.join("prog");
        let mut writer = fs::File::create(&program).unwrap();
        writer.write_all(b"#!/bin/sh\nexit 7\n").unwrap();
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
        let busy = Command::new(&program).spawn().map(|_| ()).unwrap_err();
        assert_eq!(busy.raw_os_error(), Some(libc::ETXTBSY), "{busy}");
        let let_go = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(writer);
        });
        let mut child = spawn_when_not_busy(&mut Command::new(&program)).unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(7));
        let_go.join().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
