//! The agent's Unix socket (JSON lines, see [`super::protocol`]) and the lock that makes it one
//! agent per socket.
//!
//! The lock is an exclusive `flock` on `<socket>.lock` (e.g. /run/netfn/agent.lock) held for the
//! agent's life; the kernel drops it when the agent dies, even by SIGKILL, so a socket file left
//! behind by a killed agent is known to be stale and replaced.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::AgentError;
use super::board::Board;
use super::protocol::{Pong, Reply, Request};

/// The lock file of the agent serving `socket`.
pub fn lock_path(socket: &Path) -> PathBuf {
    socket.with_extension("lock")
}

/// Held for the agent's life.
#[derive(Debug)]
pub struct InstanceLock {
    _lock: Flock<File>,
}

impl InstanceLock {
    /// Takes the lock of `socket`'s agent and writes our pid into it, or says who holds it.
    pub fn acquire(socket: &Path) -> Result<Self, AgentError> {
        let path = lock_path(socket);
        let io = |what: &'static str| {
            let path = path.clone();
            move |source| AgentError::Io { what, path, source }
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io("create the directory of"))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("open"))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(AgentError::AlreadyRunning {
                    socket: socket.to_path_buf(),
                    pid: pid.trim().parse().ok(),
                });
            }
            Err((_, e)) => return Err(io("lock")(e.into())),
        };
        lock.set_len(0).map_err(io("write"))?;
        lock.rewind().map_err(io("write"))?;
        writeln!(lock, "{}", std::process::id()).map_err(io("write"))?;
        Ok(InstanceLock { _lock: lock })
    }
}

/// Binds the control socket (replacing a stale one: the caller holds the instance lock),
/// readable and writable by root only.
pub fn bind(socket: &Path) -> Result<UnixListener, AgentError> {
    let io = |what: &'static str| {
        let path = socket.to_path_buf();
        move |source| AgentError::Io { what, path, source }
    };
    match fs::remove_file(socket) {
        Ok(()) => tracing::info!("removed a stale agent socket {}", socket.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove the stale socket")(e)),
    }
    let listener = UnixListener::bind(socket).map_err(io("bind the control socket"))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))
        .map_err(io("set permissions of"))?;
    Ok(listener)
}

/// A request for a rescan, answered with the number of adopted chains.
pub type RescanRequest = oneshot::Sender<usize>;

/// What the control socket needs to answer.
pub struct ControlContext {
    pub pong: Pong,
    pub board: Arc<Board>,
    pub rescan: mpsc::Sender<RescanRequest>,
}

/// Serves the control socket until the task is dropped.
pub async fn serve(listener: UnixListener, ctx: Arc<ControlContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let ctx = Arc::clone(&ctx);
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &ctx).await {
                        tracing::debug!("control socket: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("control socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, ctx: &ControlContext) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap_or(Ok(None))
    {
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => answer(request, ctx).await,
            Err(e) => Reply::Error {
                message: format!("cannot parse the request: {e}"),
            },
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_else(|e| {
            format!("{{\"reply\":\"error\",\"message\":\"cannot encode the reply: {e}\"}}")
        });
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
    }
    Ok(())
}

async fn answer(request: Request, ctx: &ControlContext) -> Reply {
    match request {
        Request::Ping => Reply::Pong(ctx.pong.clone()),
        Request::Status => Reply::Status {
            chains: ctx.board.reports(),
        },
        Request::Rescan => {
            let (tx, rx) = oneshot::channel();
            if ctx.rescan.send(tx).await.is_err() {
                return Reply::Error {
                    message: "the agent is shutting down".into(),
                };
            }
            match rx.await {
                Ok(chains) => Reply::Rescanned { chains },
                Err(_) => Reply::Error {
                    message: "the rescan did not finish".into(),
                },
            }
        }
    }
}
