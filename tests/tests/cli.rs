//! The read-only verbs (graph, kinds, features), and arguments refused before anything is touched.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use netfn_tests::{ForeignNetns, netfn, netfn_ok, unique_chain};

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn graph_draws_every_hop_and_link_in_dot_and_mermaid() {
    let dot = netfn_ok(&["graph", &example("minimal.toml"), "--format", "dot"]);
    assert!(dot.starts_with("digraph netfn {"), "{dot}");
    for node in [
        "minimal/ingress",
        "minimal/fw1",
        "minimal/fw2",
        "minimal/egress",
    ] {
        assert!(
            dot.contains(&format!("\"{node}\" [label=")),
            "no node {node} in:\n{dot}"
        );
    }
    assert_eq!(
        dot.matches(" -> ").count(),
        3,
        "three links expected:\n{dot}"
    );

    let mermaid = netfn_ok(&["graph", &example("minimal.toml"), "--format", "mermaid"]);
    assert!(mermaid.starts_with("flowchart LR"), "{mermaid}");
    assert_eq!(mermaid.matches(" <-->").count(), 3, "{mermaid}");
}

#[test]
fn kinds_lists_forward() {
    let kinds = netfn_ok(&["kinds"]);
    assert!(kinds.lines().any(|l| l.starts_with("forward ")), "{kinds}");
}

/// `netfn features` against what this machine really has, found another way: the release from
/// `uname -r`, BTF from sysfs, WireGuard by creating a link of that type in a scratch namespace.
#[test]
fn features_reports_the_running_kernel() {
    let json: serde_json::Value =
        serde_json::from_str(&netfn_ok(&["features", "--json"])).expect("json");
    let reported: BTreeMap<&str, bool> = json
        .as_array()
        .expect("array")
        .iter()
        .map(|f| {
            let name = f["name"].as_str().expect("a feature has a name");
            let available = f["available"]
                .as_bool()
                .unwrap_or_else(|| panic!("{name}: no boolean `available` in {f}"));
            (name, available)
        })
        .collect();

    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .expect("run uname -r");
    let release = String::from_utf8_lossy(&uname.stdout).trim().to_string();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().expect("uname -r starts with major.minor"));
    let version = (
        numbers.next().expect("major"),
        numbers.next().expect("minor"),
    );
    let expected = BTreeMap::from([
        ("btf", Path::new("/sys/kernel/btf/vmlinux").exists()),
        ("tc-redirect-peer", version >= (5, 10)),
        ("tcx", version >= (6, 6)),
        ("xdp-veth", version >= (5, 9)),
        ("wireguard-kernel", can_create_link("wireguard")),
    ]);
    assert_eq!(
        reported, expected,
        "netfn features disagrees with this machine (uname -r: {release})"
    );
    // The version-bound features name the release they judged.
    for f in json.as_array().expect("array") {
        if ["tc-redirect-peer", "tcx", "xdp-veth"].contains(&f["name"].as_str().unwrap_or("")) {
            let detail = f["detail"].as_str().unwrap_or("");
            assert!(detail.contains(&release), "{f}");
        }
    }
}

/// Whether this kernel can make a link of `kind` (a module it can load, or built in), tried in a
/// namespace of the test's own.
fn can_create_link(kind: &str) -> bool {
    let ns = ForeignNetns::add(&format!("nftest-{}", unique_chain("ft")));
    Command::new("ip")
        .args(["-n", &ns.0, "link", "add", "probe0", "type", kind])
        .output()
        .expect("run ip link add")
        .status
        .success()
}

/// A chain name is checked before it becomes part of a path under /run/netfn: `../x` and `a/b`
/// are refused with the reason, for every command that takes one.
#[test]
fn chain_names_that_are_paths_are_refused() {
    for args in [
        &["down", "../x"][..],
        &["down", "a/b"],
        &["status", "../../etc"],
        &["logs", "../x"],
        &["exec", "../x", "f", "--", "true"],
    ] {
        let out = netfn(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains("is not a chain name: it contains"),
            "{args:?}: {stderr}"
        );
    }
}

/// A chain file that is a directory, missing, or huge: one clear line, the OS error once.
#[test]
fn unreadable_chain_files_get_one_clear_line() {
    let dir = std::env::temp_dir();
    let out = netfn(&["validate", &dir.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("it is a directory"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let out = netfn(&["validate", "/nonexistent/netfn-chain.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );

    let huge = netfn_tests::TempDir::new("huge");
    let path = huge.0.join("huge.toml");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(netfn_core::spec::MAX_FILE_BYTES + 1)
        .expect("grow");
    let out = netfn(&["validate", &path.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chain files are at most"), "{stderr}");
}

/// `--chain NAME` that the file does not have: `up` and `apply` say which chains it has
/// (`apply` once printed nothing and succeeded).
#[test]
fn a_chain_the_file_does_not_have_is_refused_with_the_ones_it_has() {
    for verb in ["up", "apply"] {
        let out = netfn(&[verb, &example("minimal.toml"), "--chain", "nosuch"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "netfn {verb} succeeded: {stderr}");
        assert!(
            stderr.contains("has no chain named `nosuch`; it has: minimal"),
            "netfn {verb}: {stderr}"
        );
    }
}

/// Run as nobody, the verbs that need root say so, each with what it does that needs it (each
/// said "creates kernel objects"); and `status` reports no chain as broken for want of a look
/// (it did: every chain `no-netns`, "NOT healthy", and success).
#[test]
fn verbs_that_need_root_say_why_to_a_user_without_it() {
    let bin = netfn_tests::netfn_bin();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(args)
            .env("NETFN_AGENT_AUTOSTART", "0")
            .output()
            .expect("run setpriv")
    };
    if !as_nobody(&["--version"]).status.success() {
        netfn_tests::skipped(
            "root-only verbs run as nobody",
            &format!("nobody cannot run {} here", bin.display()),
        );
        return;
    }
    let dir = netfn_tests::TempDir::new("nobody");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let file = dir.write(
        "chain.toml",
        &netfn_tests::forward_chain("nobody", 1, "kernel"),
    );
    let file = file.to_string_lossy();
    for (args, why) in [
        (
            &["status"][..],
            "`netfn status` enters the chains' namespaces and reads their pinned eBPF maps",
        ),
        (&["status", "minimal", "--json"], "`netfn status` enters"),
        (
            &["logs", "minimal"],
            "`netfn logs` reads the chain's pinned eBPF log buffer",
        ),
        (&["down", "minimal"], "`netfn down` removes namespaces"),
        (&["up", &file], "`netfn up` creates namespaces"),
        (&["apply", &file], "`netfn apply` changes the namespaces"),
        (
            &["apply", &file, "--dry-run"],
            "`netfn apply --dry-run` reads each chain's record",
        ),
        (
            &["exec", "minimal", "fn1", "--", "true"],
            "`netfn exec` enters the function's network namespace",
        ),
    ] {
        let out = as_nobody(args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            !out.status.success(),
            "{args:?} succeeded:\n{stdout}\n{stderr}"
        );
        assert!(
            stderr.contains(why) && stderr.contains("needs root; run it with sudo"),
            "{args:?}: {stderr}"
        );
        assert!(
            !stdout.contains("NOT healthy") && !stdout.contains("no-netns"),
            "{args:?}: {stdout}"
        );
    }
}

/// Whether this system's `setpriv` can set a bounding set (util-linux's can; busybox's, the test
/// VM's, cannot). Asked through `sh`, as busybox's shell prefers its own applet.
fn setpriv_has_bounding_set() -> bool {
    Command::new("sh")
        .args(["-c", "setpriv --help 2>&1"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--bounding-set"))
}

/// Root without CAP_SYS_ADMIN and CAP_NET_ADMIN (a container without them, a unit's
/// CapabilityBoundingSet): the verbs say which capabilities they miss. `status` used to show
/// every namespace as `no-netns` and every chain NOT healthy (its setns failed), and `up` failed
/// deep inside; `exec` failed with setns's bare EPERM. `exec` needs CAP_SYS_ADMIN only (the
/// command it runs needs what it needs).
#[test]
fn verbs_that_need_capabilities_say_which_to_root_without_them() {
    if !setpriv_has_bounding_set() {
        netfn_tests::skipped(
            "root-only verbs run without capabilities",
            "this system's setpriv has no --bounding-set (busybox); it runs on the host suite",
        );
        return;
    }
    let bin = netfn_tests::netfn_bin();
    let chain = unique_chain("caps");
    let dir = netfn_tests::TempDir::new(&chain);
    let file = dir.write("chain.toml", &netfn_tests::forward_chain(&chain, 1, "tc"));
    let _up = netfn_tests::ChainGuard::up(&chain, &file);
    let without = |dropped: &str, args: &[&str]| {
        Command::new("setpriv")
            .args(["--inh-caps=-all", &format!("--bounding-set={dropped}")])
            .arg(&bin)
            .args(args)
            .env("NETFN_AGENT_AUTOSTART", "0")
            .output()
            .expect("run setpriv")
    };
    let file = file.to_string_lossy();
    for (dropped, args, missing) in [
        (
            "-sys_admin",
            &["status", &chain][..],
            "needs CAP_SYS_ADMIN,",
        ),
        ("-sys_admin", &["status", "--json"], "needs CAP_SYS_ADMIN,"),
        ("-net_admin", &["down", &chain], "needs CAP_NET_ADMIN,"),
        (
            "-sys_admin,-net_admin",
            &["apply", &file],
            "needs CAP_SYS_ADMIN and CAP_NET_ADMIN,",
        ),
        ("-sys_admin", &["logs", &chain], "needs CAP_SYS_ADMIN,"),
        ("-net_admin", &["up", &file], "needs CAP_NET_ADMIN,"),
        (
            "-sys_admin,-net_admin",
            &["exec", &chain, "fn1", "--", "echo", "ran"],
            "needs CAP_SYS_ADMIN,",
        ),
    ] {
        let out = without(dropped, args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            !out.status.success(),
            "{args:?} without {dropped} succeeded:\n{stdout}\n{stderr}"
        );
        assert!(
            stderr.contains(missing) && stderr.contains("although it runs as root"),
            "{args:?} without {dropped}: {stderr}"
        );
        assert!(
            !stdout.contains("NOT healthy")
                && !stdout.contains("no-netns")
                && !stdout.contains("ran"),
            "{args:?}: {stdout}"
        );
    }
    // `exec` enters the namespace with CAP_SYS_ADMIN alone.
    let exec = without("-net_admin", &["exec", &chain, "fn1", "--", "echo", "ran"]);
    assert!(
        exec.status.success() && String::from_utf8_lossy(&exec.stdout).trim() == "ran",
        "exec without CAP_NET_ADMIN: {exec:?}"
    );
    // Refused before it touched anything: the chain is still up and healthy.
    let status = netfn_ok(&["status", &chain]);
    assert!(status.contains("up, healthy"), "{status}");
}

/// A reader that stops early never makes netfn panic: a verb that only prints ends quietly
/// (SIGPIPE, as any Unix tool), and `up` and `down` finish their work (they used to panic at
/// their first line of output, `up` after its chains were up, with a backtrace and exit 101).
#[test]
fn a_closed_stdout_ends_printing_quietly_and_never_stops_up_or_down() {
    use std::process::Stdio;
    let chain = unique_chain("pipe");
    let dir = netfn_tests::TempDir::new(&chain);
    let file = dir.write("chain.toml", &netfn_tests::forward_chain(&chain, 1, "tc"));
    let file = file.to_string_lossy().into_owned();
    // The read end is closed before netfn writes anything: its first write meets EPIPE.
    let run = |args: &[&str]| {
        let mut child = netfn_tests::command(&netfn_tests::netfn_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run netfn");
        drop(child.stdout.take());
        child.wait_with_output().expect("wait for netfn")
    };
    let up = run(&["up", &file]);
    let _down = netfn_tests::ChainGuard {
        chain: chain.clone(),
        file: file.clone().into(),
    };
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "up: {:?}\n{stderr}", up.status);
    assert!(!stderr.contains("panicked"), "up: {stderr}");
    let status = netfn_ok(&["status", &chain]);
    assert!(status.contains("up, healthy"), "{status}");

    for args in [&["status", &chain][..], &["status", "--json"], &["kinds"]] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked"),
            "{args:?}: {:?}\n{stderr}",
            out.status
        );
        assert!(
            out.status.success()
                || std::os::unix::process::ExitStatusExt::signal(&out.status)
                    == Some(libc::SIGPIPE),
            "{args:?}: {:?}\n{stderr}",
            out.status
        );
    }

    let down = run(&["down", &chain]);
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(
        down.status.success() && !stderr.contains("panicked"),
        "down: {:?}\n{stderr}",
        down.status
    );
    assert!(
        netfn_core::chain::state::load(&chain)
            .expect("read records")
            .is_none(),
        "down finished: the chain has no record"
    );
}
