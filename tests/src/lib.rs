//! Helpers for netfn's integration tests: run the real `netfn` binary, send real packets between
//! namespaces the test created, and check that nothing is left behind.
//!
//! Every test uses unique chain names (pid + counter), so tests can run in parallel, and a
//! [`ChainGuard`] takes its chain down even when the test fails.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

pub mod agent;
pub mod frames;
pub mod loss;
pub mod raw;
pub mod test_run;
pub mod traffic;
pub mod whole;
pub mod wireguard;

/// The `netfn` binary under test: $NETFN_BIN, or the workspace's debug build.
pub fn netfn_bin() -> PathBuf {
    std::env::var_os("NETFN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/netfn"))
}

/// A copy of the `netfn` binary under test at `to`, once it can be started. A file just written
/// cannot be exec'd (`ETXTBSY`) while any process holds it open for writing, and a child that
/// another test's thread forked during the copy holds the copy's descriptor until its own exec:
/// this runs `to --version` as the agent's autostart starts a binary (trying again for a second
/// while it is busy), after which nothing holds it.
pub fn copy_of_netfn(to: &Path) {
    std::fs::copy(netfn_bin(), to)
        .unwrap_or_else(|e| panic!("copy the netfn binary to {}: {e}", to.display()));
    let mut version = Command::new(to);
    version.arg("--version").stdout(std::process::Stdio::null());
    netfn_core::agent::autostart::spawn_when_not_busy(&mut version)
        .and_then(|mut child| child.wait())
        .unwrap_or_else(|e| panic!("run the copy {}: {e}", to.display()));
}

/// A command for the `netfn` binary under test. `up` would start the host agent, which would
/// outlive the test: tests that want an agent start their own (tests/agent.rs).
pub fn command(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env("NETFN_AGENT_AUTOSTART", "0");
    c
}

/// Runs `netfn ARGS…` and returns its output (never panics on a non-zero exit).
pub fn netfn(args: &[&str]) -> Output {
    let bin = netfn_bin();
    command(&bin).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {}: {e} (build it: cargo build -p netfn-cli)",
            bin.display()
        )
    })
}

/// `netfn ARGS…` with failpoint `point` armed (`netfn_core::failpoint`, read by the debug build
/// under test); returns (success, stderr).
pub fn netfn_at(point: &str, args: &[&str]) -> (bool, String) {
    let out = command(&netfn_bin())
        .env(netfn_core::failpoint::ENV, point)
        .args(args)
        .output()
        .expect("run netfn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `netfn apply FILE` failing at failpoint `point`, and restoring the chain as it was.
pub fn apply_fails_at(point: &str, file: &Path) {
    let (ok, stderr) = netfn_at(point, &["apply", &file.to_string_lossy()]);
    assert!(
        !ok && stderr.contains(&format!("failure injected at failpoint `{point}`"))
            && stderr.contains("the old chain was restored")
            && !stderr.contains("except"),
        "apply with a failure at {point}: succeeded, or not restored:\n{stderr}"
    );
}

/// Runs `netfn ARGS…`, panicking with its output unless it succeeds; returns stdout.
pub fn netfn_ok(args: &[&str]) -> String {
    let out = netfn(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "netfn {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// The detail rows (label, value) of function `function` in `netfn status CHAIN --json`.
pub fn status_details(chain: &str, function: &str) -> Vec<(String, String)> {
    let status: serde_json::Value =
        serde_json::from_str(&netfn_ok(&["status", chain, "--json"])).expect("status json");
    status[0]["hops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["name"] == function)
        .flat_map(|h| h["details"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| Some((d[0].as_str()?.to_string(), d[1].as_str()?.to_string())))
        .collect()
}

/// A chain name no other test (or test process) uses: at most 12 bytes.
pub fn unique_chain(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{tag}{:x}{n:x}", std::process::id());
    assert!(
        name.len() <= 12,
        "chain name {name} too long; use a shorter tag"
    );
    name
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("netfn-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A chain file with `n` forward functions (`fn1`…`fnN`) between created endpoints 10.81.1.2/24
/// (ingress) and 10.81.2.2/24 (egress). The addresses live only inside the chain's own namespaces.
pub fn forward_chain(name: &str, n: usize, fastpath: &str) -> String {
    let functions: Vec<String> = (1..=n).map(|i| format!("fn{i}")).collect();
    let functions: Vec<&str> = functions.iter().map(String::as_str).collect();
    forward_chain_of(name, fastpath, &functions)
}

/// Like [`forward_chain`], with the forward functions named `functions`, in that order.
pub fn forward_chain_of(name: &str, fastpath: &str, functions: &[&str]) -> String {
    let mut s = format!(
        "[[chain]]\nname = \"{name}\"\nfastpath = \"{fastpath}\"\n\n\
         [chain.ingress]\naddress = \"10.81.1.2/24\"\n\n\
         [chain.egress]\naddress = \"10.81.2.2/24\"\n"
    );
    for f in functions {
        s.push_str(&format!(
            "\n[[chain.function]]\nname = \"{f}\"\nkind = \"forward\"\n"
        ));
    }
    s
}

pub const INGRESS_ADDR: Ipv4Addr = Ipv4Addr::new(10, 81, 1, 2);
pub const EGRESS_ADDR: Ipv4Addr = Ipv4Addr::new(10, 81, 2, 2);

/// Takes a chain down when dropped (also when the test panics).
pub struct ChainGuard {
    pub chain: String,
    pub file: PathBuf,
}

impl ChainGuard {
    /// Runs `netfn up FILE` and returns a guard that runs `netfn down CHAIN`.
    pub fn up(chain: &str, file: &Path) -> Self {
        let guard = ChainGuard {
            chain: chain.to_string(),
            file: file.to_path_buf(),
        };
        netfn_ok(&["up", &file.to_string_lossy()]);
        guard
    }
}

impl Drop for ChainGuard {
    fn drop(&mut self) {
        let out = netfn(&["down", &self.chain]);
        if !out.status.success() {
            eprintln!(
                "cleanup: netfn down {} failed: {}",
                self.chain,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Whether the tests run inside the test VM (`cargo xtask vm-test` sets `NETFN_IN_VM` there):
/// emulated CPUs, where a few tests scale their load down or tolerate what only starvation
/// explains, and say so.
pub fn in_test_vm() -> bool {
    std::env::var_os("NETFN_IN_VM").is_some()
}

/// The output of `ip -n nf-CHAIN-HOP -4 ARGS…` (HOP a function, `ingress` or `egress`).
pub fn ip_in(chain: &str, hop: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", &format!("nf-{chain}-{hop}"), "-4"])
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?} in nf-{chain}-{hop} failed"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names of `chain`'s namespaces under /run/netns (`nf-CHAIN-*`), sorted.
pub fn chain_namespaces(chain: &str) -> Vec<String> {
    let prefix = format!("nf-{chain}-");
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

/// Everything netfn could have left for `chain`: namespaces, state files, pinned eBPF objects.
pub fn leftovers(chain: &str) -> Vec<String> {
    let prefix = format!("nf-{chain}-");
    let mut left: Vec<String> = chain_namespaces(chain)
        .into_iter()
        .map(|name| format!("/run/netns/{name}"))
        .collect();
    // The record, its lock, and the files of the kinds' processes (`CHAIN.FUNCTION.pid`…).
    if let Ok(dir) = std::fs::read_dir("/run/netfn/chains") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{chain}.")) {
                left.push(format!("/run/netfn/chains/{name}"));
            }
        }
    }
    let pins = PathBuf::from(format!("/sys/fs/bpf/netfn/{chain}"));
    if pins.exists() {
        left.push(pins.display().to_string());
    }
    // Bind mounts of our namespaces (a deleted file can leave a mount behind).
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mounts.lines().filter(|l| l.contains(&prefix)) {
            left.push(format!("mount: {line}"));
        }
    }
    left
}

/// Runs `f` on a thread inside namespace `netns` (a name under /run/netns).
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{netns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A UDP socket bound in namespace `netns`.
pub fn udp_socket_in(netns: &str, addr: SocketAddrV4) -> UdpSocket {
    in_netns(netns, || {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {netns}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
        s
    })
}

/// A TCP listener in namespace `netns`.
pub fn tcp_listener_in(netns: &str, addr: SocketAddrV4) -> TcpListener {
    in_netns(netns, || {
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("listen {addr} in {netns}: {e}"))
    })
}

/// A TCP connection made from namespace `netns`.
pub fn tcp_connect_from(netns: &str, addr: SocketAddrV4) -> TcpStream {
    in_netns(netns, || {
        let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr} from {netns}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
        s
    })
}

/// A TCP connection from `from` (port 0: any; SO_REUSEADDR, so a port a closed connection used
/// can connect again) to `to`, made in the calling thread's namespace, giving up after
/// `timeout` (which is also the stream's read timeout).
pub fn tcp_connect_bound(
    from: SocketAddrV4,
    to: SocketAddrV4,
    timeout: Duration,
) -> nix::Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
    };
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        // Close-on-exec: a child that another test thread spawns meanwhile (netfn, ip, an
        // agent) would otherwise keep the connection open past our close, so it never resets
        // and the same ports cannot connect again (EADDRNOTAVAIL: the 4-tuple is ESTABLISHED).
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    // On Linux the send timeout bounds a blocking connect.
    let t = nix::sys::time::TimeVal::new(
        i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(timeout.subsec_micros()),
    );
    setsockopt(&fd, sockopt::SendTimeout, &t)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(from))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    // SAFETY: `fd` is a connected TCP socket that the stream now owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|_| nix::errno::Errno::EINVAL)?;
    Ok(stream)
}

/// The next connection on `listener` (which must be non-blocking), returned blocking; `None`
/// once `stopped()` is true. It sleeps in poll(2) and looks at `stopped` every 50 ms: a server
/// thread that spun on accept with a 1 ms sleep woke the (emulated, in the VM suite) CPUs a
/// thousand times a second for the whole test.
pub fn accept_until(listener: &TcpListener, stopped: impl Fn() -> bool) -> Option<TcpStream> {
    while !stopped() {
        let mut fds = [libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, for a descriptor `listener` keeps open during the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 50) };
        if ready <= 0 {
            // A timeout, or EINTR: look at `stopped` again.
            continue;
        }
        match listener.accept() {
            Ok((conn, _)) => {
                if conn.set_nonblocking(false).is_ok() {
                    return Some(conn);
                }
            }
            // The connection was reset before it was accepted, or another thread took it.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

/// setsockopt(2) of `value` (a plain C value: an int, a `linger`…) on socket `fd`.
pub fn set_socket_option<T>(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: a pointer to `value` and its size; the kernel reads that many bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Asks the kernel to report the TTL of received datagrams (IP_RECVTTL).
pub fn enable_recv_ttl(sock: &UdpSocket) {
    let on: libc::c_int = 1;
    set_socket_option(sock.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVTTL, &on)
        .unwrap_or_else(|e| panic!("setsockopt IP_RECVTTL: {e}"));
}

/// A namespace made by the test itself (with `ip netns add`, as an operator would), removed on
/// drop: stands for namespaces netfn did not create.
pub struct ForeignNetns(pub String);

impl ForeignNetns {
    pub fn add(name: &str) -> Self {
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("run ip netns add");
        assert!(ok.success(), "ip netns add {name} failed");
        ForeignNetns(name.to_string())
    }
}

impl Drop for ForeignNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Starts `netfn ARGS…`, waits until the chain's record says `applying` (or `delay` is `None`:
/// at once), sleeps `delay`, and SIGKILLs it. Returns true if the record still said `applying`
/// after the kill (the kill landed mid-way).
pub fn kill_netfn_mid_way(args: &[&str], chain: &str, delay: Option<Duration>) -> bool {
    let record_path = format!("/run/netfn/chains/{chain}.json");
    let applying = || {
        std::fs::read_to_string(&record_path)
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
            .is_some_and(|r| r["phase"] == "applying")
    };
    let mut child = command(&netfn_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn netfn");
    if let Some(delay) = delay {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !applying() && std::time::Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(delay);
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    applying()
}

/// `ip -s -s link` of every namespace of the chain, for a failure message (drops, XDP drops).
pub fn interface_stats(chain: &str) -> String {
    chain_namespaces(chain)
        .iter()
        .map(|ns| {
            let out = std::process::Command::new("ip")
                .args(["-n", ns, "-s", "-s", "link"])
                .output();
            let text = out
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("ip failed: {e}"));
            format!("== {ns}\n{text}")
        })
        .collect()
}

/// Says that a test skipped `what`, and `why`, on the real stderr: past libtest's capture, so
/// that the line shows in a passing run too (on the host and on the VM's console). Every skip
/// goes through here; a skip that says nothing is a test that can pass by accident.
pub fn skipped(what: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {what}: {why}");
}

/// Tests that measure loss (sequenced streams across a change) run alone within their test
/// binary: a sibling loading programs or building chains at the same moment steals the CPU a
/// small VM needs to drain a veth's XDP ring. Every other test of such a binary takes
/// [`shared`]; the loss tests take [`alone`].
static TURNS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A turn shared with the other tests of the binary.
pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    TURNS.read().unwrap_or_else(|p| p.into_inner())
}

/// A turn no other test of the binary runs in.
pub fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    TURNS.write().unwrap_or_else(|p| p.into_inner())
}
