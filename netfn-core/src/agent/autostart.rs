//! Starting the agent from `netfn up` when none runs: `netfn agent` in its own session (setsid),
//! stdin from /dev/null, stdout and stderr appended to /run/netfn/agent.log, and no parent to
//! wait for it. Under systemd, run the unit (examples/netfn-agent.service) instead; `up` then
//! finds it running and starts nothing.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::client::{self, ClientError};
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
/// `NETFN_AGENT_AUTOSTART=0`).
/// Returns once the agent answers.
pub fn ensure_agent_running(opts: &AutostartOptions) -> Result<AgentStart, AutostartError> {
    if !opts.enabled {
        return Ok(AgentStart::Disabled);
    }
    if let Some(pong) = client::ping(&opts.socket)? {
        return Ok(AgentStart::Running { pid: pong.pid });
    }
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
    cmd.arg("agent")
        .arg("--socket")
        .arg(&opts.socket)
        .args(&opts.args)
        .current_dir("/") // a daemon pins no directory
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
