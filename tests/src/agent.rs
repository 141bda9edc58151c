//! A `netfn agent` process for a test: one chain, its own socket and a free loopback port,
//! killed and reaped when the test is done.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netfn_core::agent;

use crate::netfn_bin;

/// A `netfn agent` process, killed (and reaped) on drop.
pub struct Agent {
    child: Option<Child>,
    pub socket: PathBuf,
    pub http: String,
    pub log: PathBuf,
}

impl Agent {
    /// Starts an agent for `chain` with its socket in `dir`, on a free loopback port.
    pub fn start(dir: &Path, chain: &str, extra: &[&str]) -> Agent {
        Self::start_wrapped(
            dir.join("agent.sock"),
            dir.join("agent.log"),
            chain,
            extra,
            &[],
            &netfn_bin(),
        )
    }

    /// [`Agent::start`] with the socket and log at the given paths, the agent (the binary `bin`)
    /// started through `wrapper` (a command that ends by exec'ing its arguments, e.g.
    /// `setpriv …`: the agent keeps the wrapper's pid).
    pub fn start_wrapped(
        socket: PathBuf,
        log: PathBuf,
        chain: &str,
        extra: &[&str],
        wrapper: &[String],
        bin: &Path,
    ) -> Agent {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("agent log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .args(["agent", "--listen", "127.0.0.1:0", "--chain", chain])
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("spawn netfn agent");
        let mut agent = Agent {
            child: Some(child),
            socket,
            http: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(pong)) = agent::ping(&agent.socket)
                && Some(pong.pid) == agent.child.as_ref().map(Child::id)
            {
                agent.http = pong.http;
                return agent;
            }
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(Child::try_wait) {
                panic!("netfn agent exited ({status}):\n{}", agent.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "netfn agent did not answer on its socket:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        let (status, body) = http_get(&self.http, "/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// The agent's pid (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One GET on 127.0.0.1, returning the status and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// The value of the sample `name{…}` in Prometheus text `text` that has every label of
/// `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
