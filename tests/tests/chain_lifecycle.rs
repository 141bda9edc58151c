//! A chain's whole life with real kernel objects: up, traffic both ways, status, exec, down,
//! and nothing left behind. Runs as root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use netfn_tests::traffic::{tcp_echo, udp_echo};
use netfn_tests::{
    ChainGuard, ForeignNetns, TempDir, forward_chain, forward_chain_of, kill_netfn_mid_way,
    leftovers, netfn, netfn_ok, unique_chain,
};

#[test]
fn three_function_chain_carries_tcp_and_udp_both_ways_and_leaves_nothing() {
    let chain = unique_chain("lc");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 3, "kernel"));
    {
        let _guard = ChainGuard::up(&chain, &file);
        let ingress = format!("nf-{chain}-ingress");
        let egress = format!("nf-{chain}-egress");

        // UDP both ways; the TTL proves each direction crossed all three functions.
        let udp = udp_echo(&ingress, &egress, 20);
        assert_eq!(
            udp.ttl_forward,
            64 - 3,
            "request should be routed by 3 functions"
        );
        assert_eq!(
            udp.ttl_reverse,
            64 - 3,
            "reply should be routed by 3 functions"
        );
        // The eBPF counters on every interface of the chain see exactly one more burst.
        let before = rx_packets(&chain);
        udp_echo(&ingress, &egress, 50);
        let after = rx_packets(&chain);
        assert_eq!(
            before.len(),
            8,
            "8 interfaces in a 3-function chain: {before:?}"
        );
        for ((name, b), (_, a)) in before.iter().zip(&after) {
            assert_eq!(a - b, 50, "interface {name}: {b} -> {a} packets");
        }

        // The counter program's aya-log lines reach netfn's log.
        let logs = netfn(&["logs", &chain]);
        let logs = String::from_utf8_lossy(&logs.stderr);
        assert!(
            logs.contains("nf_count: counting on ifindex"),
            "netfn logs printed:\n{logs}"
        );

        // TCP both ways, 1 MiB echoed.
        tcp_echo(&ingress, &egress, 1 << 20);

        // status --json: every hop present, every interface up, the planned addresses in place.
        let json: serde_json::Value =
            serde_json::from_str(&netfn_ok(&["status", &chain, "--json"])).expect("status json");
        let s = &json[0];
        assert_eq!(s["chain"], chain.as_str());
        assert_eq!(s["phase"], "up");
        assert_eq!(s["healthy"], true, "status: {s:#}");
        let hops = s["hops"].as_array().expect("hops");
        let names: Vec<&str> = hops.iter().filter_map(|h| h["name"].as_str()).collect();
        assert_eq!(names, ["ingress", "fn1", "fn2", "fn3", "egress"]);
        for hop in hops {
            let ifs = hop["interfaces"].as_array().expect("interfaces");
            let expected = if hop["kind"] == "forward" { 2 } else { 1 };
            assert_eq!(ifs.len(), expected, "hop {hop:#}");
            for i in ifs {
                assert_eq!(i["up"], true);
                assert_eq!(i["addresses"][0], i["planned_address"], "interface {i:#}");
            }
        }
        // The table form names every function.
        let table = netfn_ok(&["status", &chain]);
        for f in ["fn1", "fn2", "fn3"] {
            assert!(table.contains(f), "status table lacks {f}:\n{table}");
        }

        // exec runs inside the function's namespace: forwarding is on there.
        let fwd = netfn_ok(&[
            "exec",
            &chain,
            "fn2",
            "--",
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
        ]);
        assert_eq!(fwd.trim(), "1");

        // up again on the unchanged file changes nothing and says so.
        let again = netfn_ok(&["up", &file.to_string_lossy()]);
        assert!(again.contains("unchanged"), "second up said: {again}");
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

#[test]
fn down_is_safe_to_repeat() {
    // A chain that was never up: nothing to do, every time.
    let chain = unique_chain("rp");
    for round in 0..2 {
        let out = netfn_ok(&["down", &chain]);
        assert!(
            out.contains("not up"),
            "down #{round} of an unknown chain said: {out}"
        );
    }

    // A chain that was up (tc: namespaces, a record and pinned programs and maps): the first down
    // removes it all, the next ones find nothing to do and leave nothing either.
    let chain = unique_chain("ru");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 2, "tc"));
    let _guard = ChainGuard::up(&chain, &file);
    let up = leftovers(&chain);
    for what in ["/run/netns/", "/run/netfn/chains/", "/sys/fs/bpf/netfn/"] {
        assert!(
            up.iter().any(|l| l.starts_with(what)),
            "the up chain has nothing under {what}, so the check below would prove nothing: {up:?}"
        );
    }
    let out = netfn_ok(&["down", &chain]);
    assert!(
        out.contains(": down,") && out.contains("4 namespace(s) removed"),
        "the first down said: {out}"
    );
    assert_eq!(
        leftovers(&chain),
        Vec::<String>::new(),
        "after the first down"
    );
    for round in 1..3 {
        let out = netfn_ok(&["down", &chain]);
        assert!(
            out.contains("not up"),
            "down #{round} of a chain already down said: {out}"
        );
        assert_eq!(
            leftovers(&chain),
            Vec::<String>::new(),
            "after down #{round}"
        );
    }
}

#[test]
fn failed_up_rolls_back_and_never_touches_foreign_namespaces() {
    let chain = unique_chain("rb");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 3, "kernel"));
    // Someone else's namespace under the name netfn would give fn2.
    let squatter = format!("nf-{chain}-fn2");
    let _squat = ForeignNetns::add(&squatter);

    let out = netfn(&["up", &file.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "up should fail when a namespace name is taken"
    );
    assert!(
        stderr.contains(&squatter) && stderr.contains("netfn did not create it"),
        "stderr: {stderr}"
    );
    assert!(
        std::path::Path::new(&format!("/run/netns/{squatter}")).exists(),
        "netfn removed a namespace it did not create"
    );
    let left: Vec<String> = leftovers(&chain)
        .into_iter()
        .filter(|l| !l.contains(&squatter))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

/// Chain `X` with function `a-fn1` and chain `X-a` with function `fn1` both need namespace
/// nf-X-a-fn1 (in two files, validate cannot see it): the second `up` names the chain that has
/// it, its function and its file, leaves nothing, and the first chain runs on.
#[test]
fn up_names_the_chain_whose_namespace_it_would_need() {
    let chain = unique_chain("ow");
    let other = format!("{chain}-a");
    let shared = format!("nf-{chain}-a-fn1");
    let dir = TempDir::new(&chain);
    let first = dir.write(
        "first.toml",
        &forward_chain_of(&chain, "kernel", &["a-fn1"]),
    );
    let second = dir.write("second.toml", &forward_chain_of(&other, "kernel", &["fn1"]));
    {
        let _guard = ChainGuard::up(&chain, &first);
        let out = netfn(&["up", &second.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        // The record keeps the path as given (absolute already).
        let first = std::path::absolute(&first).expect("absolute path");
        assert!(
            stderr.contains(&format!(
                "namespace {shared}, which its function `fn1` needs, is chain `{chain}`'s \
                 (function `a-fn1`, up from {})",
                first.display()
            )) && stderr.contains(&format!("rename chain `{other}` or its function `fn1`")),
            "{stderr}"
        );
        assert!(!stderr.contains("netfn did not create it"), "{stderr}");
        let left: Vec<String> = leftovers(&other)
            .into_iter()
            .filter(|l| !l.contains(&shared))
            .collect();
        assert_eq!(left, Vec::<String>::new());
        let status: serde_json::Value =
            serde_json::from_str(&netfn_ok(&["status", &chain, "--json"])).expect("status json");
        assert_eq!(status[0]["healthy"], true, "{status:#}");
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

/// A chain up from one file, and another file with a chain of the same name: the second `up`
/// names both files and does not offer `apply` (that would turn one chain into the other).
/// `down FILE` works from the records, as `down CHAIN` does: a file that no longer validates (a
/// half-made edit; a key or rules file gone) still takes down the chains it names, and a chain
/// recorded as up from the file that the file no longer names goes down too. Before, the file
/// had to validate whole, and a chain dropped from it was left running.
#[test]
fn down_file_takes_down_its_chains_even_when_it_no_longer_validates() {
    let (kept, dropped) = (unique_chain("dk"), unique_chain("dd"));
    let dir = TempDir::new(&kept);
    let text = forward_chain(&kept, 1, "kernel") + "\n" + &forward_chain(&dropped, 1, "kernel");
    let file = dir.write("two.toml", &text);
    {
        let _kept = ChainGuard::up(&kept, &file);
        let _dropped = ChainGuard {
            chain: dropped.clone(),
            file: file.clone(),
        };
        // The edit: `dropped` is gone from the file, and `kept` has a function of no kind.
        dir.write(
            "two.toml",
            &(forward_chain(&kept, 1, "kernel")
                + "\n[[chain.function]]\nname = \"half\"\nkind = \"not-yet\"\n"),
        );
        assert!(
            !netfn(&["validate", &file.to_string_lossy()])
                .status
                .success(),
            "the edited file still validates"
        );
        let out = netfn(&["down", &file.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("chain `{dropped}` is up from "))
                && stderr.contains("no longer names it"),
            "{stderr}"
        );
        assert_eq!(leftovers(&kept), Vec::<String>::new(), "{stderr}");
        assert_eq!(leftovers(&dropped), Vec::<String>::new(), "{stderr}");
    }
}

#[test]
fn up_of_a_chain_that_is_up_from_another_file_names_both_files() {
    let chain = unique_chain("sf");
    let dir = TempDir::new(&chain);
    let first = dir.write("first.toml", &forward_chain(&chain, 1, "kernel"));
    let second = dir.write("second.toml", &forward_chain(&chain, 2, "kernel"));
    {
        let _guard = ChainGuard::up(&chain, &first);
        let out = netfn(&["up", &second.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        // The record keeps the path as given (absolute already).
        let absolute = |p: &Path| std::path::absolute(p).expect("absolute path");
        assert!(
            stderr.contains(&format!(
                "chain `{chain}` is up from {}; this is {}: rename the chain in {}",
                absolute(&first).display(),
                absolute(&second).display(),
                absolute(&second).display()
            )),
            "{stderr}"
        );
        assert!(!stderr.contains("netfn apply"), "{stderr}");
        // Its own file, changed: that is what apply is for.
        dir.write("first.toml", &forward_chain(&chain, 2, "kernel"));
        let out = netfn(&["up", &first.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("change it in place with `netfn apply"),
            "{stderr}"
        );
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

#[test]
fn concurrent_ups_of_one_chain_do_not_interleave() {
    let chain = unique_chain("cc");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 8, "kernel"));
    let path = file.to_string_lossy().into_owned();
    {
        let _guard = scopeguard(&chain);
        let spawn = || {
            netfn_tests::command(&netfn_tests::netfn_bin())
                .args(["up", &path])
                .output()
                .expect("run netfn up")
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(spawn);
            let b = s.spawn(spawn);
            (a.join().expect("thread a"), b.join().expect("thread b"))
        });
        let outs = [
            String::from_utf8_lossy(&a.stdout),
            String::from_utf8_lossy(&b.stdout),
        ];
        assert!(
            a.status.success() && b.status.success(),
            "both ups should succeed: {outs:?}"
        );
        let created = outs.iter().filter(|o| o.contains(": up,")).count();
        let unchanged = outs.iter().filter(|o| o.contains("unchanged")).count();
        assert_eq!((created, unchanged), (1, 1), "outputs: {outs:?}");
        let udp = udp_echo(
            &format!("nf-{chain}-ingress"),
            &format!("nf-{chain}-egress"),
            3,
        );
        assert_eq!(udp.ttl_forward, 64 - 8);
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

#[test]
fn down_finishes_after_up_was_killed_at_any_point() {
    // Kill `netfn up` of a 200-function chain at several moments: before it wrote anything, and
    // at delays counted from the moment its record says `applying` (so the kills land mid-way
    // on a fast host and in a slow VM alike). Then `down` must leave nothing.
    let mut killed_mid_way = 0;
    for delay_ms in [None, Some(0u64), Some(2), Some(10), Some(30), Some(80)] {
        let chain = unique_chain("kl");
        let dir = TempDir::new(&chain);
        let file = dir.write("chain.toml", &forward_chain(&chain, 200, "kernel"));
        let delay = delay_ms.map(Duration::from_millis);
        if kill_netfn_mid_way(&["up", &file.to_string_lossy()], &chain, delay) {
            killed_mid_way += 1;
        }
        let out = netfn(&["down", &chain]);
        assert!(
            out.status.success(),
            "down after a kill at {delay_ms:?} ms failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            leftovers(&chain),
            Vec::<String>::new(),
            "after a kill at {delay_ms:?} ms"
        );
    }
    assert!(
        killed_mid_way >= 3,
        "only {killed_mid_way} kills landed while up was applying; the test proved too little"
    );
}

/// Received packets per interface (`hop/interface`), from `netfn status --json`.
fn rx_packets(chain: &str) -> Vec<(String, u64)> {
    let json: serde_json::Value =
        serde_json::from_str(&netfn_ok(&["status", chain, "--json"])).expect("status json");
    let mut out = Vec::new();
    for hop in json[0]["hops"].as_array().expect("hops") {
        for i in hop["interfaces"].as_array().expect("interfaces") {
            let name = format!(
                "{}/{}",
                hop["name"].as_str().unwrap_or("?"),
                i["name"].as_str().unwrap_or("?")
            );
            let packets = i["rx_packets"]
                .as_u64()
                .unwrap_or_else(|| panic!("no counter on {name}: {i:#}"));
            out.push((name, packets));
        }
    }
    out
}

/// Takes `chain` down on drop.
fn scopeguard(chain: &str) -> impl Drop {
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = netfn(&["down", &self.0]);
        }
    }
    Down(chain.to_string())
}

#[test]
fn endpoints_in_existing_namespaces_are_wired_and_left_as_found() {
    let chain = unique_chain("ex");
    let client = format!("nftest-{chain}-client");
    let _client = ForeignNetns::add(&client);
    let links_before = ip_links(&client);

    let dir = TempDir::new(&chain);
    let text = forward_chain(&chain, 2, "kernel").replace(
        "[chain.ingress]\n",
        &format!("[chain.ingress]\nnamespace = \"{client}\"\n"),
    );
    let file = dir.write("chain.toml", &text);
    {
        let _guard = ChainGuard::up(&chain, &file);
        let ifname = format!("nf-{chain}");
        assert!(
            ip_links(&client).contains(&ifname),
            "no {ifname} in {client}"
        );
        let udp = udp_echo(&client, &format!("nf-{chain}-egress"), 5);
        assert_eq!((udp.ttl_forward, udp.ttl_reverse), (62, 62));
    }
    assert_eq!(leftovers(&chain), Vec::<String>::new());
    assert!(
        std::path::Path::new(&format!("/run/netns/{client}")).exists(),
        "netfn removed the operator's namespace"
    );
    assert_eq!(
        ip_links(&client),
        links_before,
        "netfn left something in the operator's namespace"
    );
}

/// Interface names in a namespace, as `ip` sees them.
fn ip_links(netns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", netns, "-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

#[test]
fn down_wait_returns_once_the_kernel_has_freed_the_namespaces() {
    let chain = unique_chain("dw");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 10, "tc"));
    let _guard = ChainGuard::up(&chain, &file);
    let out = netfn(&["down", &chain, "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "down --wait failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(leftovers(&chain), Vec::<String>::new());
    // 12 namespaces (10 functions, ingress, egress) removed, and all 12 freed.
    assert!(
        stdout.contains(&format!("chain {chain}: down, 12 namespace(s) removed"))
            && stdout.contains("kernel: freed 12 namespace(s) in "),
        "{stdout}"
    );
    // Not a terminal: no progress line.
    assert!(
        !stderr.contains("netfn down:") && !stderr.contains('\r'),
        "progress line: {stderr:?}"
    );
}

#[test]
fn down_wait_names_the_namespace_something_still_holds() {
    let chain = unique_chain("dh");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 3, "kernel"));
    let guard = ChainGuard::up(&chain, &file);
    // An open file of one function's namespace keeps it alive after down.
    let held = format!("nf-{chain}-fn2");
    let file_of_ns = std::fs::File::open(format!("/run/netns/{held}"))
        .unwrap_or_else(|e| panic!("open /run/netns/{held}: {e}"));
    let out = netfn(&["down", &chain, "--wait", "--wait-limit", "2"]);
    drop(file_of_ns);
    drop(guard);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "down --wait succeeded: {stderr}");
    assert!(
        stderr.contains("began to free 4 of 5 namespace(s)")
            && stderr.contains(&format!("still held by something: {held} ")),
        "{stderr}"
    );
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

/// Runs `netfn ARGS…` on a pseudo-terminal (util-linux `script`); returns all it wrote there.
fn netfn_on_a_terminal(args: &[&str]) -> String {
    let line = std::iter::once(netfn_tests::netfn_bin().display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = netfn_tests::command(Path::new("script"))
        .args(["-qec", &line, "/dev/null"])
        .output()
        .expect("run script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{line} on a pty failed:\n{text}");
    text
}

#[test]
fn up_and_down_draw_a_progress_line_on_a_terminal_only() {
    let chain = unique_chain("pl");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 4, "kernel"));
    let file = file.to_string_lossy().into_owned();
    // Not a terminal: the result line alone.
    let out = netfn(&["up", &file]);
    let _guard = ChainGuard {
        chain: chain.clone(),
        file: file.clone().into(),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("netfn up:") && !stderr.contains('\r'),
        "{stderr:?}"
    );
    netfn_ok(&["down", &chain]);
    // A terminal: the line is drawn (and cleared before the result line).
    let text = netfn_on_a_terminal(&["up", &file]);
    assert!(
        text.contains("\r\x1b[Knetfn up: 0/1 chain(s), 0/4 function(s)")
            && text.contains(&format!("chain {chain}: up, 4 function(s)")),
        "{text:?}"
    );
    let text = netfn_on_a_terminal(&["down", &chain, "--wait"]);
    assert!(
        text.contains("\r\x1b[Knetfn down: ") && text.contains("kernel: freed 6 namespace(s)"),
        "{text:?}"
    );
    // --quiet: not drawn, on a terminal too.
    let text = netfn_on_a_terminal(&["up", &file, "--quiet"]);
    assert!(
        !text.contains("netfn up:") && text.contains(&format!("chain {chain}: up")),
        "{text:?}"
    );
    let text = netfn_on_a_terminal(&["down", &chain, "-q"]);
    assert!(!text.contains("netfn down:"), "{text:?}");
    assert_eq!(leftovers(&chain), Vec::<String>::new());
}

#[test]
fn down_of_many_namespaces_says_the_kernel_frees_them_in_the_background() {
    let chain = unique_chain("dn");
    let dir = TempDir::new(&chain);
    // 98 functions and the two endpoints: 100 namespaces.
    let file = dir.write("chain.toml", &forward_chain(&chain, 98, "kernel"));
    let _guard = ChainGuard::up(&chain, &file);
    let stdout = netfn_ok(&["down", &chain]);
    assert_eq!(leftovers(&chain), Vec::<String>::new());
    assert!(
        stdout.contains("kernel: frees the 100 namespace(s) in the background")
            && stdout.contains("netfn down --wait"),
        "{stdout}"
    );
}

/// Unmounts the bind mount that holds namespace `name` (as `umount /run/netns/NAME` would: the
/// name is a plain file then), holding the namespace itself open; mounts it back when dropped,
/// also when the test fails, so that `down` finds the chain as it made it.
struct Unmounted {
    path: std::path::PathBuf,
    ns: std::fs::File,
}

impl Unmounted {
    fn new(name: &str) -> Self {
        let path = Path::new("/run/netns").join(name);
        let ns = std::fs::File::open(&path).expect("open the namespace");
        nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).expect("unmount it");
        Unmounted { path, ns }
    }
}

impl Drop for Unmounted {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        let held = format!("/proc/self/fd/{}", self.ns.as_raw_fd());
        if let Err(e) = nix::mount::mount(
            Some(held.as_str()),
            &self.path,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        ) {
            eprintln!("cannot mount {} back: {e}", self.path.display());
        }
    }
}

/// A namespace that is there but cannot be entered (its bind mount unmounted: the name is a
/// plain file) is not reported as gone: status says that it is there, why netfn could not look
/// inside, and what to do. A namespace that is gone says that. (Both were `no-netns`, with
/// nothing more.)
#[test]
fn status_tells_a_namespace_it_cannot_enter_from_one_that_is_gone() {
    let chain = unique_chain("nsun");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &forward_chain(&chain, 2, "tc"));
    let _up = ChainGuard::up(&chain, &file);
    let (fn1, fn2) = (format!("nf-{chain}-fn1"), format!("nf-{chain}-fn2"));
    let redo = format!(
        "`netfn down {chain}`, then `netfn up {}`, makes the chain again",
        file.display()
    );
    let hop = |status: &serde_json::Value, name: &str| {
        status[0]["hops"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no hop {name}: {status}"))
    };

    let unmounted = Unmounted::new(&fn1);
    let status = netfn_ok(&["status", &chain]);
    let rows: Vec<&str> = status.lines().filter(|l| l.starts_with("fn1 ")).collect();
    assert!(
        rows.len() == 2 && rows.iter().all(|r| r.contains("netns-unreadable")),
        "{status}"
    );
    assert!(
        !status.contains("no-netns")
            && status.contains(&format!(
                "fn1: namespace {fn1} is there, but netfn could not look inside: \
                 /run/netns/{fn1} is no network namespace"
            ))
            && status.contains(&redo)
            && status.contains("NOT healthy"),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&netfn_ok(&["status", &chain, "--json"])).expect("status json");
    let h = hop(&json, "fn1");
    assert!(
        h["netns_present"] == true
            && h["netns_error"]
                .as_str()
                .is_some_and(|e| e.contains("is no network namespace")),
        "{h}"
    );
    drop(unmounted);
    let status = netfn_ok(&["status", &chain]);
    assert!(status.contains("up, healthy"), "mounted back: {status}");

    // Gone: `ip netns del` (the namespace and its interfaces with it).
    let del = Command::new("ip")
        .args(["netns", "del", &fn2])
        .status()
        .expect("run ip");
    assert!(del.success());
    let status = netfn_ok(&["status", &chain]);
    assert!(
        status.contains("no-netns")
            && !status.contains("netns-unreadable")
            && status.contains(&format!("fn2: namespace {fn2} is gone"))
            && status.contains(&redo),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&netfn_ok(&["status", &chain, "--json"])).expect("status json");
    let h = hop(&json, "fn2");
    assert!(
        h["netns_present"] == false && h.get("netns_error").is_none(),
        "{h}"
    );
}
