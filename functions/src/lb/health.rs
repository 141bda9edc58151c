//! Health checks: the load balancer's control tasks in the host agent, one per service with a
//! `health` table, named after the service. Each checks its service's backends at its interval,
//! from inside the load balancer's own namespace (so a check takes the path the traffic takes):
//! a TCP connect, or an HTTP GET expecting a 2xx answer, each within the timeout. `fall`
//! failures in a row take a backend down, `rise` successes bring it back (HAProxy's and IPVS's
//! rules).
//!
//! A change goes to the data path at once: tc/xdp, the backend's flag in the live instance's
//! maps and tables rebuilt without it (only its flows move; see [`super::stage::apply_health`]);
//! kernel mode, the nftables ruleset without it and with it in its set of down backends,
//! reloaded in one transaction. So a failed backend stops getting new flows within `fall ×
//! interval` plus one interval.
//!
//! A verdict is written with the function's settings as the chain's record has them at that
//! moment, under the chain's lock (never between an `apply`'s steps, never with the settings
//! the task began with: an `apply` since then would be undone).
//!
//! A task starts from what the data path holds (a backend marked down stays down until it
//! rises), so an agent that restarts resumes where the last one left off; while no agent runs,
//! the last verdicts stay in force.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use netfn_core::chain::function_record;
use netfn_core::chain::state::ChainLock;
use netfn_core::function::{KindTask, TaskContext, TaskRun};
use netfn_core::kernel::netns;
use netfn_core::spec::FastPath;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::{HealthCheck, LbSettings, Probe};

/// One task per service with a `health` table, named `health VIP:PORT/PROTO` (the agent labels
/// it with the chain and the function, so two load balancers never collide): a service whose
/// checks fail to run restarts alone.
pub fn tasks(ctx: &TaskContext) -> Vec<KindTask> {
    let Ok(settings) = ctx.settings.parse::<LbSettings>() else {
        return Vec::new();
    };
    let settings = Arc::new(settings);
    settings
        .services
        .iter()
        .enumerate()
        .filter(|(_, service)| service.health.is_some())
        .map(|(i, service)| {
            let (ctx, settings) = (ctx.clone(), settings.clone());
            KindTask {
                name: format!("health {}", service.label()),
                start: Arc::new(move || -> TaskRun {
                    Box::pin(run(ctx.clone(), settings.clone(), i))
                }),
            }
        })
        .collect()
}

/// One backend's checks so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    up: bool,
    /// Results in a row that disagree with `up`.
    streak: u32,
}

impl State {
    /// Counts one result; true when the backend changes state.
    fn observe(&mut self, ok: bool, check: &HealthCheck) -> bool {
        if ok == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if self.up { check.fall } else { check.rise };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            return true;
        }
        false
    }
}

/// The backends the data path holds as down (what the last verdicts left, whoever made them).
fn down_in_data_path(ctx: &TaskContext) -> Result<BTreeSet<String>, String> {
    match (&ctx.fastpath, &ctx.stage_dir) {
        (FastPath::Kernel, _) => super::nft::down_backends(&ctx.netns),
        (_, None) => Ok(BTreeSet::new()),
        (_, Some(dir)) => Ok(super::stage::down_backends(dir).into_iter().collect()),
    }
}

/// Serializes the services' read-modify-write of the data path's verdicts (every task of the
/// agent runs in one process; a write is rare and quick).
static VERDICTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Checks the backends of service `i` at its interval until the task is stopped.
async fn run(ctx: TaskContext, settings: Arc<LbSettings>, i: usize) -> Result<(), String> {
    let service = settings
        .services
        .get(i)
        .ok_or_else(|| format!("the settings have no service {i}"))?;
    let Some(check) = service.health.clone() else {
        return Ok(());
    };
    let targets: Vec<(String, SocketAddr)> = service
        .backends
        .iter()
        .map(|b| (b.id(), SocketAddr::new(b.address, b.port)))
        .collect();
    // Backends marked down stay down until they rise (a restarted agent resumes).
    let down = down_in_data_path(&ctx)?;
    let mut states: Vec<State> = targets
        .iter()
        .map(|(id, _)| State {
            up: !down.contains(id),
            streak: 0,
        })
        .collect();
    let mut ticker = tokio::time::interval(Duration::from_millis(check.interval_ms.into()));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Verdicts not yet in the data path (the chain was busy with a change).
    let mut unwritten = false;
    loop {
        ticker.tick().await;
        let results = check_all(&ctx.netns, &targets, &check).await?;
        for ((state, ok), (id, _)) in states.iter_mut().zip(results).zip(&targets) {
            if state.observe(ok, &check) {
                unwritten = true;
                tracing::info!(
                    function = %ctx.function,
                    "backend {id} of {} is {}",
                    service.label(),
                    if state.up { "up again" } else { "down" }
                );
            }
        }
        if unwritten {
            let verdicts: Vec<(&str, bool)> = targets
                .iter()
                .zip(&states)
                .map(|((id, _), state)| (id.as_str(), state.up))
                .collect();
            unwritten = !write_verdicts(&ctx, &verdicts)?;
        }
    }
}

/// Puts this service's verdicts (backend, up) into the data path, over what it holds (the other
/// services'), with the function's settings as the chain's record has them now: a `netfn apply`
/// may have changed them since this task started (the agent then starts it again), and a
/// table rebuilt from the old ones would undo the apply. Done under the chain's lock, which
/// `up`, `apply` and `down` hold while they change the chain; false (nothing written: try at
/// the next check) while one of them holds it. A backend (address:port) that two checked
/// services share is one backend: the last verdict stands.
fn write_verdicts(ctx: &TaskContext, verdicts: &[(&str, bool)]) -> Result<bool, String> {
    let _turn = VERDICTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(_chain) = ChainLock::try_existing(&ctx.chain).map_err(|e| e.to_string())? else {
        return Ok(false);
    };
    let settings = recorded_settings(ctx)?;
    let mut down = down_in_data_path(ctx)?;
    for (id, up) in verdicts {
        if *up {
            down.remove(*id);
        } else {
            down.insert((*id).to_string());
        }
    }
    // Only backends the function has now (a task that began before an apply may judge one the
    // apply removed: kept down, it would come back down if an apply added it again).
    let present: BTreeSet<String> = settings
        .services
        .iter()
        .flat_map(|s| &s.backends)
        .map(|b| b.id())
        .collect();
    down.retain(|id| present.contains(id));
    apply(ctx, &settings, &down)?;
    Ok(true)
}

/// The function's settings in the chain's record (read under the chain's lock).
fn recorded_settings(ctx: &TaskContext) -> Result<LbSettings, String> {
    function_record::load(&ctx.chain, &ctx.function)
        .map(|(_, settings)| settings)
        .map_err(|e| e.to_string())
}

/// Puts the verdicts into the data path.
fn apply(ctx: &TaskContext, settings: &LbSettings, down: &BTreeSet<String>) -> Result<(), String> {
    match (&ctx.fastpath, &ctx.stage_dir) {
        (FastPath::Kernel, _) => {
            netfn_core::kernel::nft::load(&ctx.netns, &super::nft::ruleset(settings, down))
                .map_err(|e| format!("reload the ruleset without the down backends: {e}"))
        }
        (_, Some(dir)) => {
            let down: Vec<String> = down.iter().cloned().collect();
            super::stage::apply_health(dir, settings, &down)
        }
        (_, None) => Err("the function has no stage directory".into()),
    }
}

/// Checks every target once, concurrently, from inside namespace `netns`: true for each that
/// passed.
async fn check_all(
    netns_name: &str,
    targets: &[(String, SocketAddr)],
    check: &HealthCheck,
) -> Result<Vec<bool>, String> {
    let sockets = sockets_in(netns_name, targets.len()).await?;
    let timeout = Duration::from_millis(check.timeout_ms.into());
    let mut set = tokio::task::JoinSet::new();
    for (i, (socket, (_, addr))) in sockets.into_iter().zip(targets).enumerate() {
        let (addr, probe) = (*addr, check.check.clone());
        set.spawn(async move {
            let ok = tokio::time::timeout(timeout, probe_one(socket, addr, &probe))
                .await
                .is_ok_and(|r| r);
            (i, ok)
        });
    }
    let mut out = vec![false; targets.len()];
    while let Some(done) = set.join_next().await {
        if let Ok((i, ok)) = done {
            out[i] = ok;
        }
    }
    Ok(out)
}

async fn probe_one(socket: tokio::net::TcpSocket, addr: SocketAddr, probe: &Probe) -> bool {
    let Ok(mut stream) = socket.connect(addr).await else {
        return false;
    };
    let Probe::Http { path } = probe else {
        return true;
    };
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: netfn-health\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    // "HTTP/1.x 2xx"
    got == head.len() && head.starts_with(b"HTTP/1.") && head[9] == b'2'
}

/// `n` unconnected TCP sockets made inside namespace `name` (a socket stays in the namespace it
/// was made in), on a thread of their own: no tokio worker ever changes namespace.
async fn sockets_in(name: &str, n: usize) -> Result<Vec<tokio::net::TcpSocket>, String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let name = name.to_string();
    let fds = tokio::task::spawn_blocking(move || {
        let ns = netns::open(&name).map_err(|e| e.to_string())?;
        netns::run_in(&ns, &name, || {
            (0..n)
                .map(|_| {
                    socket(
                        AddressFamily::Inet,
                        SockType::Stream,
                        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                        None,
                    )
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("create a socket in {name}: {e}"))
    })
    .await
    .map_err(|e| format!("socket thread: {e}"))??;
    Ok(fds
        .into_iter()
        .map(|fd| tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rise: u32, fall: u32) -> HealthCheck {
        HealthCheck {
            check: Probe::Tcp,
            interval_ms: 100,
            timeout_ms: 50,
            rise,
            fall,
        }
    }

    /// An HTTP server on loopback that answers a `GET /healthz` with `status_line` (anything
    /// else with 404), once per connection; its address.
    async fn http_server(status_line: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback listener");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 512];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let line = if request[..n].starts_with(b"GET /healthz HTTP/1.") {
                    status_line
                } else {
                    "HTTP/1.1 404 Not Found"
                };
                let answer = format!("{line}\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    async fn http_probe(addr: SocketAddr) -> bool {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        probe_one(
            socket,
            addr,
            &Probe::Http {
                path: "/healthz".into(),
            },
        )
        .await
    }

    #[tokio::test]
    async fn an_http_check_passes_on_2xx_only() {
        assert!(http_probe(http_server("HTTP/1.1 200 OK").await).await);
        assert!(http_probe(http_server("HTTP/1.0 204 No Content").await).await);
        assert!(!http_probe(http_server("HTTP/1.1 503 Service Unavailable").await).await);
        assert!(!http_probe(http_server("HTTP/1.1 302 Found").await).await);
        assert!(!http_probe(http_server("SSH-2.0-OpenSSH_9.2").await).await);
        // Nothing listens: refused.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("address")
        };
        assert!(!http_probe(closed).await);
    }

    #[test]
    fn fall_failures_take_a_backend_down_and_rise_successes_bring_it_back() {
        let c = check(2, 3);
        let mut s = State {
            up: true,
            streak: 0,
        };
        // A failure between successes resets the streak.
        assert!(!s.observe(false, &c));
        assert!(!s.observe(false, &c));
        assert!(!s.observe(true, &c));
        assert!(!s.observe(false, &c));
        assert!(!s.observe(false, &c));
        assert!(s.observe(false, &c), "third failure in a row");
        assert!(!s.up);
        assert!(!s.observe(true, &c));
        assert!(s.observe(true, &c), "second success in a row");
        assert!(s.up);
    }
}
