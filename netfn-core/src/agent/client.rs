//! The CLI's side of the control socket: blocking, with short timeouts, and `Ok(None)` when no
//! agent runs (no socket file, or a stale one nobody listens on).

use std::io::{self, BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{ChainReport, Pong, Reply, Request};

/// How long the CLI waits for the agent. `rescan` waits longer: it reads the state directory.
const TIMEOUT: Duration = Duration::from_secs(3);
const RESCAN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot talk to the netfn agent at {}: {source}", socket.display())]
    Io { socket: PathBuf, source: io::Error },
    #[error("the netfn agent at {} answered something unexpected: {detail}", socket.display())]
    Protocol { socket: PathBuf, detail: String },
    #[error("the netfn agent at {} says: {message}", socket.display())]
    Agent { socket: PathBuf, message: String },
}

/// Sends one request; `None` if no agent listens on `socket`.
pub fn request(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Option<Reply>, ClientError> {
    Ok(request_peer(socket, request, timeout)?.map(|(reply, _)| reply))
}

/// [`request`], with the pid of the process that answered as this process's pid namespace
/// numbers it (the connection's SO_PEERCRED; `None` if it cannot be read).
fn request_peer(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Option<(Reply, Option<i32>)>, ClientError> {
    let io_err = |source| ClientError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io_err(e)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut line = serde_json::to_string(request).map_err(|e| ClientError::Protocol {
        socket: socket.to_path_buf(),
        detail: e.to_string(),
    })?;
    line.push('\n');
    // MSG_NOSIGNAL: an agent that has closed the connection is an error here, never a SIGPIPE
    // (the CLI's printing verbs run with SIGPIPE at its default, see netfn-cli's main).
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        use nix::sys::socket::{MsgFlags, send};
        match send(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            rest,
            MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(io_err(io::Error::from(e))),
        }
    }
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(io_err)?;
    let reply: Reply = serde_json::from_str(&reply).map_err(|e| ClientError::Protocol {
        socket: socket.to_path_buf(),
        detail: format!("{e} in {:?}", reply.trim()),
    })?;
    if let Reply::Error { message } = reply {
        return Err(ClientError::Agent {
            socket: socket.to_path_buf(),
            message,
        });
    }
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.pid());
    Ok(Some((reply, peer)))
}

fn unexpected(socket: &Path, reply: &Reply) -> ClientError {
    ClientError::Protocol {
        socket: socket.to_path_buf(),
        detail: format!("{reply:?}"),
    }
}

/// Who serves `socket`, if anyone.
pub fn ping(socket: &Path) -> Result<Option<Pong>, ClientError> {
    match request(socket, &Request::Ping, TIMEOUT)? {
        None => Ok(None),
        Some(Reply::Pong(p)) => Ok(Some(p)),
        Some(other) => Err(unexpected(socket, &other)),
    }
}

/// [`ping`], with the agent's pid as this process's pid namespace numbers it (`Pong::pid` is
/// the agent's own view, another namespace's in a container); `None` if it cannot be read.
pub fn ping_peer(socket: &Path) -> Result<Option<(Pong, Option<i32>)>, ClientError> {
    match request_peer(socket, &Request::Ping, TIMEOUT)? {
        None => Ok(None),
        Some((Reply::Pong(p), pid)) => Ok(Some((p, pid))),
        Some((other, _)) => Err(unexpected(socket, &other)),
    }
}

/// The agent's per-chain results (prober, tasks), or `None` if no agent runs. For `netfn status`.
pub fn chain_reports(socket: &Path) -> Result<Option<Vec<ChainReport>>, ClientError> {
    match request(socket, &Request::Status, TIMEOUT)? {
        None => Ok(None),
        Some(Reply::Status { chains }) => Ok(Some(chains)),
        Some(other) => Err(unexpected(socket, &other)),
    }
}

/// Asks the agent to read the state directory now (after `up`, `down`, `apply`); returns how
/// many chains it has adopted, or `None` if no agent runs.
pub fn notify_rescan(socket: &Path) -> Result<Option<usize>, ClientError> {
    match request(socket, &Request::Rescan, RESCAN_TIMEOUT)? {
        None => Ok(None),
        Some(Reply::Rescanned { chains }) => Ok(Some(chains)),
        Some(other) => Err(unexpected(socket, &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_agent_is_none() {
        let socket = Path::new("/nonexistent/netfn/agent.sock");
        assert!(matches!(ping(socket), Ok(None)));
        assert!(matches!(chain_reports(socket), Ok(None)));
    }
}
