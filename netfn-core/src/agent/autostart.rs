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
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::client::{self, ClientError};
use super::{default_log_path, default_socket};
use crate::chain::processes;

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
    /// The agent runs another netfn binary, but systemd runs it: left to its unit, which the
    /// caller should tell the operator to restart.
    OtherBinary { pid: u32, binary: String },
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
        "the netfn agent (pid {pid}) runs {binary}, not {}, and did not stop on SIGTERM nor \
         SIGKILL; stop it (kill {pid}) and run this command again",
        exe.display()
    )]
    Stop {
        pid: u32,
        binary: String,
        exe: PathBuf,
    },
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
/// again on it (unless systemd runs it). Returns once the agent answers.
pub fn ensure_agent_running(opts: &AutostartOptions) -> Result<AgentStart, AutostartError> {
    if !opts.enabled {
        return Ok(AgentStart::Disabled);
    }
    let Some(pong) = client::ping(&opts.socket)? else {
        return start(opts, None);
    };
    let pid = pong.pid;
    let Some(binary) = i32::try_from(pid)
        .ok()
        .and_then(|p| processes::runs_other_binary(p, &opts.exe))
    else {
        return Ok(AgentStart::Running { pid });
    };
    if under_systemd(pid) {
        return Ok(AgentStart::OtherBinary { pid, binary });
    }
    let args = arguments(pid);
    if !stopped(pid) {
        return Err(AutostartError::Stop {
            pid,
            binary,
            exe: opts.exe.clone(),
        });
    }
    Ok(match start(opts, args)? {
        AgentStart::Started { pid: new, log } => AgentStart::Replaced {
            old_pid: pid,
            old_binary: binary,
            pid: new,
            log,
        },
        // Another `up` started one at the same moment.
        other => other,
    })
}

/// Whether systemd runs process `pid` (a service's processes have its INVOCATION_ID).
fn under_systemd(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|&b| b == 0)
            .any(|v| v.starts_with(b"INVOCATION_ID="))
    })
}

/// The arguments agent `pid` runs with, after the program's name (`agent --socket …`); `None`
/// when they cannot be read or are not an agent's.
fn arguments(pid: u32) -> Option<Vec<String>> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .skip(1)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (args.first().map(String::as_str) == Some("agent")).then_some(args)
}

/// Stops agent `pid`: SIGTERM, then SIGKILL after 2 s (the chains do not need it to forward).
/// Returns once it is gone (true), or false if it is still there 2 s after SIGKILL.
fn stopped(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    let gone_within = |wait: Duration| {
        let deadline = Instant::now() + wait;
        while !processes::exited(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        processes::exited(pid)
    };
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        // SAFETY: kill(2) on the pid the agent answered its ping with.
        unsafe { libc::kill(pid, signal) };
        if gone_within(Duration::from_secs(2)) {
            return true;
        }
    }
    false
}

/// Starts `netfn agent` with `args` (after the program's name; `None`: `agent --socket SOCKET`
/// and `opts.args`), its output appended to `opts.log`, and waits until it answers.
fn start(opts: &AutostartOptions, args: Option<Vec<String>>) -> Result<AgentStart, AutostartError> {
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
    cmd.current_dir("/") // a daemon pins no directory
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(io::Error::from));
    }
    let mut child = cmd.spawn().map_err(|source| AutostartError::Spawn {
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
