//! Kernel limits an operator can reach, met for real: `netfn up` fails with an error that names
//! the limit and what to do, and leaves nothing behind.
//!
//! These lower host-wide settings, which would fail every other user of namespaces on a shared
//! host (other tests running in parallel too). So they run only in the VM suite
//! (`cargo xtask vm-test`, part of CI), whose kernel is the test's own and which runs one test
//! binary at a time; on the host they say that they skipped.

use netfn_tests::{TempDir, forward_chain, leftovers, netfn, skipped, unique_chain};

/// Sets a sysctl file for the guard's life, then puts the old value back.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Self {
        let old = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        std::fs::write(path, value).unwrap_or_else(|e| panic!("write {value} to {path}: {e}"));
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.path, self.old.trim()) {
            eprintln!("cleanup: cannot restore {}: {e}", self.path);
        }
    }
}

#[test]
fn too_many_namespaces_fail_the_chain_clearly_and_leave_nothing() {
    if !netfn_tests::in_test_vm() {
        skipped(
            "the namespace-limit test",
            "it lowers the host-wide sysctl user.max_net_namespaces; it runs in the VM suite \
             (cargo xtask vm-test), whose kernel is its own",
        );
        return;
    }
    let chain = unique_chain("lim");
    let dir = TempDir::new("limits");
    // 10 functions and 2 endpoints: 12 namespaces, over a limit of 6.
    let file = dir.write("chain.toml", &forward_chain(&chain, 10, "tc"));
    let out = {
        let _limit = Sysctl::set("/proc/sys/user/max_net_namespaces", "6");
        netfn(&["up", &file.to_string_lossy()])
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let down = netfn(&["down", &chain]);
    assert!(
        !out.status.success(),
        "up succeeded over the limit: {stderr}"
    );
    assert!(
        stderr.contains("limit of network namespaces is reached")
            && stderr.contains("user.max_net_namespaces = 6")
            && stderr.contains("sysctl -w user.max_net_namespaces="),
        "the error does not name the limit and the fix:\n{stderr}"
    );
    assert!(
        stderr.lines().filter(|l| !l.trim().is_empty()).count() <= 3,
        "one clear error, not a cascade:\n{stderr}"
    );
    let left = leftovers(&chain);
    assert!(
        left.is_empty(),
        "a failed up left {left:?} (down said: {})",
        String::from_utf8_lossy(&down.stderr)
    );

    // Under the limit again, the same file comes up.
    let up = netfn(&["up", &file.to_string_lossy()]);
    let down = netfn(&["down", &chain]);
    assert!(
        up.status.success(),
        "up failed once the limit was restored: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(down.status.success());
    assert!(leftovers(&chain).is_empty());
}
