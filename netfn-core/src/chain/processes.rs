//! A kind's own process per function (a userspace VPN data plane): started by `up` (and by the
//! agent when it died), stopped by `down`. It runs as the netfn binary with the arguments the
//! kind gives ([`crate::function::FunctionConfig::process`]), in a session of its own, so that
//! neither the netfn command that started it nor the agent takes it along when they end: killing
//! the agent loses no packet through it.
//!
//! Its pid is recorded in `/run/netfn/chains/<chain>.<function>.pid`, its output appended to
//! `….log` beside it. It says it is ready by creating `….ready` (see [`ready_file`]); `start`
//! waits for that, or for its exit, which it reports with the log's last lines.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::plan::names;

/// How long a process may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

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
    // A zombie (exited, not yet reaped) is not running.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let zombie = state
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    (ours && !zombie).then_some(pid)
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
    let exe = std::env::current_exe().map_err(io("find the netfn binary"))?;
    let mut command = Command::new(exe);
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

/// Stops function `function`'s process (SIGTERM, then SIGKILL after a second) and removes its
/// files (the log too: `down` leaves nothing). Nothing to do when none runs.
pub fn stop(chain: &str, function: &str) {
    if let Some(pid) = running(chain, function) {
        // SAFETY: kill(2) on a pid netfn recorded for this function.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && running(chain, function).is_some() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if running(chain, function).is_some() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // What it listed as its own outside the state directory.
    let owned = std::fs::read_to_string(owned_files(chain, function)).unwrap_or_default();
    for path in owned.lines().map(Path::new).filter(|p| p.is_absolute()) {
        let _ = std::fs::remove_file(path);
    }
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
