//! Least privilege for the host agent: every thread of a running agent keeps only the
//! capabilities its unit's `CapabilityBoundingSet=` names, with no_new_privs; the agent still
//! does its work confined as examples/netfn-agent.service says (read from the unit itself: its
//! bounding set, read-only file system but `ReadWritePaths=`, private /tmp, no /home; applied
//! with `unshare` and `setpriv` since systemd is not PID 1 on the test hosts): /metrics with a
//! chain's counters, the chain's probe, a chain taken down and up again, a killed WireGuard
//! endpoint restarted; and its control socket refuses a user other than root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use netfn_tests::agent::Agent;
use netfn_tests::traffic::udp_echo;
use netfn_tests::wireguard::{endpoint_pid, kill_endpoint};
use netfn_tests::{ChainGuard, TempDir, forward_chain, leftovers, netfn_ok, skipped, unique_chain};

/// The agent's unit, as installed.
fn unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/netfn-agent.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The words of every `KEY=` line of the unit (a leading `-`, "ignore if missing", dropped).
fn unit_values(key: &str) -> Vec<String> {
    unit()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| {
            v.split_whitespace()
                .map(|w| w.trim_start_matches('-').to_string())
        })
        .collect()
}

/// The capability numbers of names as the unit writes them.
fn capability(name: &str) -> u32 {
    match name {
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_KILL" => 5,
        "CAP_SETPCAP" => 8,
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_ADMIN" => 12,
        "CAP_NET_RAW" => 13,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("the test does not know {other}: add it"),
    }
}

/// The unit's bounding set as a mask.
fn unit_capabilities() -> u64 {
    let caps = unit_values("CapabilityBoundingSet");
    assert!(!caps.is_empty(), "the unit has no CapabilityBoundingSet=");
    caps.iter()
        .map(|c| 1u64 << capability(c))
        .fold(0, |a, b| a | b)
}

/// (task, CapEff, CapPrm, CapBnd, NoNewPrivs) of every thread of `pid`.
fn thread_capabilities(pid: u32) -> Vec<(String, u64, u64, u64, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the agent's threads")
        .flatten()
    {
        // A thread that ended since the listing has no status to read: it holds nothing.
        // (Read as empty, it showed as holding every capability: u64::MAX below.)
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let mask = |name: &str| u64::from_str_radix(&field(name), 16).unwrap_or(u64::MAX);
        out.push((
            task.file_name().to_string_lossy().into_owned(),
            mask("CapEff:"),
            mask("CapPrm:"),
            mask("CapBnd:"),
            field("NoNewPrivs:"),
        ));
    }
    out
}

/// Every thread has exactly `mask` effective, permitted and bounding, and no_new_privs.
fn assert_threads_keep(pid: u32, mask: u64) {
    let threads = thread_capabilities(pid);
    assert!(
        threads.len() > 1,
        "the agent has {} thread(s)",
        threads.len()
    );
    for (task, eff, prm, bnd, nnp) in threads {
        assert_eq!(
            (eff, prm, bnd),
            (mask, mask, mask),
            "thread {task} of the agent: effective {eff:x}, permitted {prm:x}, bounding {bnd:x}; \
             the unit allows {mask:x}"
        );
        assert_eq!(nnp, "1", "thread {task} of the agent: no_new_privs");
    }
}

/// Waits until the agent's status says `chain`'s last probe came back.
fn wait_probe_success(agent: &Agent, chain: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reports = netfn_core::agent::chain_reports(&agent.socket)
            .ok()
            .flatten()
            .unwrap_or_default();
        if reports
            .iter()
            .any(|r| r.chain == chain && r.probe.as_ref().is_some_and(|p| p.success))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no successful probe of {chain}: {reports:?}\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A packet counter of `chain` in the agent's /metrics above zero.
fn assert_counts(agent: &Agent, chain: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = agent.metrics();
        if metrics.lines().any(|l| {
            l.starts_with("netfn_function_packets_total{")
                && l.contains(&format!("chain=\"{chain}\""))
                && !l.ends_with(" 0")
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no packet counted for {chain} in /metrics:\n{metrics}\nagent log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_agent_thread_keeps_only_the_units_capabilities() {
    let chain = unique_chain("pc");
    let dir = TempDir::new(&chain);
    let file = dir.write("c.toml", &forward_chain(&chain, 1, "tc"));
    let _guard = ChainGuard::up(&chain, &file);
    let agent = Agent::start(&dir.0, &chain, &[]);
    let (ingress, egress) = (format!("nf-{chain}-ingress"), format!("nf-{chain}-egress"));
    udp_echo(&ingress, &egress, 5);
    // Working (metrics read from pinned maps, probes through namespaces) with what it kept.
    assert_counts(&agent, &chain);
    wait_probe_success(&agent, &chain);
    assert_threads_keep(agent.pid().expect("running"), unit_capabilities());
}

/// A directory under /run (readable by a confined agent: a restarted endpoint reads its key
/// there, where /tmp and /home are hidden from it), removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn new(tag: &str) -> RunDir {
        let dir = PathBuf::from(format!("/run/netfn-test-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the key directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        RunDir(dir)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Files removed on drop (a SIGKILLed agent leaves its socket and lock).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The command that runs a program confined as the unit says: its own mount namespace where
/// every mount is read-only but the unit's `ReadWritePaths=` (and /proc/sys read-only too:
/// ProtectKernelTunables), an empty /tmp (PrivateTmp), /home and /root hidden (ProtectHome),
/// then `setpriv` with the unit's bounding set and no_new_privs.
fn confined_wrapper() -> Vec<String> {
    let rw = unit_values("ReadWritePaths");
    assert!(
        unit_values("ProtectSystem") == ["strict"],
        "the unit's ProtectSystem changed"
    );
    for dir in &rw {
        std::fs::create_dir_all(dir).expect("a ReadWritePaths directory");
    }
    let caps: Vec<String> = unit_values("CapabilityBoundingSet")
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let mut script = String::from(
        "set -e\n\
         for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do\n\
           case $m in /proc|/proc/*|/dev|/dev/*) continue;; esac\n\
           mount -o remount,bind,ro \"$m\" 2>/dev/null || true\n\
         done\n\
         mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys\n",
    );
    for dir in &rw {
        script.push_str(&format!(
            "mount --bind {dir} {dir} && mount -o remount,bind,rw {dir}\n"
        ));
    }
    script.push_str(
        "mount -t tmpfs -o mode=1777 tmpfs /tmp\n\
         for d in /home /root; do\n\
           if [ -d $d ]; then mount -t tmpfs -o ro,mode=000 tmpfs $d; fi\n\
         done\n\
         exec \"$@\"\n",
    );
    let mut wrapper: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "slave",
        "sh",
        "-c",
        &script,
        "confined",
        "setpriv",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--no-new-privs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    wrapper.push(format!("--bounding-set=-all,{}", caps.join(",")));
    wrapper
}

/// The mount options of mount point `target` as process `pid` sees it.
fn mount_options(pid: u32, target: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some(target))
        .and_then(|l| l.split_whitespace().nth(5).map(str::to_string))
        .unwrap_or_default()
}

/// A chain with a userspace WireGuard endpoint (no peer: only its restart is checked).
fn vpn_chain(chain: &str, key: &Path) -> String {
    format!(
        "[[chain]]\nname = \"{chain}\"\nfastpath = \"tc\"\n\n[chain.ingress]\naddress = \
         \"10.86.1.2/24\"\n\n[chain.egress]\naddress = \"10.86.2.2/24\"\n\n\
         [[chain.function]]\nname = \"vpn\"\nkind = \"wireguard\"\nside = \"ingress\"\n\
         private_key_file = \"{}\"\nlisten_port = 51820\naddress = [\"10.98.0.1/24\"]\n\
         backend = \"userspace\"\n\n\
         [[chain.function.peer]]\npublic_key = \"{}\"\nallowed_ips = [\"10.98.0.2/32\"]\n",
        key.display(),
        // Any valid public key: nothing talks to the endpoint here.
        "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
    )
}

#[test]
fn the_agent_works_confined_as_its_unit_says() {
    // util-linux's setpriv sets a bounding set; busybox's (the test VM's) cannot. Asked through
    // `sh`, as the wrapper runs it: busybox's shell prefers its own applet.
    let help = Command::new("sh")
        .args(["-c", "setpriv --help 2>&1"])
        .output();
    let text = help
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default();
    if !text.contains("--bounding-set") {
        netfn_tests::skipped(
            "the agent confined as its unit says",
            "this system's setpriv has no --bounding-set (busybox); it runs on the host suite",
        );
        return;
    }
    let chain = unique_chain("pu");
    let vpn = unique_chain("pv");
    let dir = TempDir::new(&chain);
    let file = dir.write("c.toml", &forward_chain(&chain, 2, "tc"));
    let keys = RunDir::new(&vpn);
    let key = keys.0.join("vpn.key");
    let private = netfn_ok(&["wg", "genkey"]);
    std::fs::write(&key, &private).expect("write the key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let vpn_file = keys.0.join("vpn.toml");
    std::fs::write(&vpn_file, vpn_chain(&vpn, &key)).expect("write the chain file");
    // The binary where the unit's would be visible: a checkout under /tmp or /home (a CI clone,
    // say) is hidden by PrivateTmp and ProtectHome. The agent restarts the endpoint with it too.
    let bin = keys.0.join("netfn");
    netfn_tests::copy_of_netfn(&bin);
    // The socket in the agent's writable /run/netfn (the test's /tmp is not the agent's).
    let socket = PathBuf::from(format!("/run/netfn/test-{chain}.sock"));
    let _files = RemoveOnDrop(vec![socket.clone(), socket.with_extension("lock")]);
    {
        let _guard = ChainGuard::up(&chain, &file);
        let _vpn_guard = ChainGuard::up(&vpn, &vpn_file);
        let agent = Agent::start_wrapped(
            socket.clone(),
            dir.0.join("agent.log"),
            &chain,
            &["--chain", &vpn],
            &confined_wrapper(),
            &bin,
        );
        let pid = agent.pid().expect("running");
        // Confined: the file system read-only but its own paths, the unit's capabilities only.
        assert!(
            mount_options(pid, "/").starts_with("ro"),
            "/ is not read-only for the agent"
        );
        assert!(
            mount_options(pid, "/run/netfn").starts_with("rw"),
            "/run/netfn is not writable for the agent"
        );
        assert_threads_keep(pid, unit_capabilities());

        // Its work: counters from pinned maps, probes through the chain's namespaces.
        let (ingress, egress) = (format!("nf-{chain}-ingress"), format!("nf-{chain}-egress"));
        udp_echo(&ingress, &egress, 5);
        assert_counts(&agent, &chain);
        wait_probe_success(&agent, &chain);

        // A chain taken down and up again while it runs: its new namespaces reach the agent's
        // mount namespace, and the probe comes back.
        netfn_ok(&["down", &chain]);
        netfn_ok(&["up", &file.to_string_lossy()]);
        udp_echo(&ingress, &egress, 5);
        wait_probe_success(&agent, &chain);

        // A killed userspace endpoint is restarted by the confined agent: its TUN, its UAPI
        // socket (/run/wireguard), its files (/run/netfn/chains) and its key are reachable.
        let old = kill_endpoint(&vpn, "vpn");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(new) = endpoint_pid(&vpn, "vpn").filter(|&p| p != old)
                && Path::new(&format!("/run/netfn/chains/{vpn}.vpn.ready")).exists()
                && Path::new(&format!("/proc/{new}")).exists()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the confined agent did not restart the endpoint:\n{}\nendpoint log:\n{}",
                agent.log_text(),
                std::fs::read_to_string(format!("/run/netfn/chains/{vpn}.vpn.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
    assert_eq!(leftovers(&vpn), Vec::<String>::new());
}

#[test]
fn the_control_socket_refuses_other_users() {
    let chain = unique_chain("ps");
    let dir = TempDir::new(&chain);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let agent = Agent::start(&dir.0, &chain, &["--no-probe"]);
    let meta = std::fs::metadata(&agent.socket).expect("the socket");
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o600),
        "the control socket's owner and mode"
    );
    // Root is answered ...
    assert!(
        netfn_core::agent::ping(&agent.socket).is_ok_and(|p| p.is_some()),
        "root's ping got no answer"
    );
    // ... nobody is refused by the kernel, before the agent reads a byte.
    let client = "import socket, sys\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  s.sendall(b'{\"cmd\":\"ping\"}\\n')\n\
                  print(s.recv(4096).decode())\n";
    // The system's python3 (a user's, e.g. under /root, is not nobody's to run).
    let python = "/usr/bin/python3";
    if !Path::new(python).exists() {
        skipped(
            "the control socket refusing nobody",
            "no /usr/bin/python3 for the client",
        );
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            python,
            "-c",
            client,
        ])
        .arg(&agent.socket)
        .output()
        .expect("run python3 as nobody");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !out.status.success() && stderr.contains("PermissionError"),
        "nobody reached the control socket ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(!stdout.contains("pong"), "nobody got an answer: {stdout}");
}
