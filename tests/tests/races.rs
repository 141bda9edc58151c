//! netfn commands at the same time: several CLIs racing on one chain (`up`, `apply` and `down`
//! at once: the chain's lock serializes them, a refused one says why, and the chain is never
//! half one thing and half another), and 20 chains brought up, changed and taken down in
//! parallel, with nothing left.

use netfn_tests::whole::{Down, assert_chain_is, assert_nothing_left, chain_file};
use netfn_tests::{TempDir, command, netfn_bin, netfn_ok, shared, unique_chain};

const V1: [&str; 3] = ["fw", "a", "b"];
const V2: [&str; 3] = ["fw", "x", "b"];

/// Runs every command of `commands` (netfn arguments) at once; returns (success, stdout, stderr)
/// of each, in order.
fn all_at_once(commands: &[Vec<String>]) -> Vec<(bool, String, String)> {
    let bin = netfn_bin();
    std::thread::scope(|s| {
        let running: Vec<_> = commands
            .iter()
            .map(|args| {
                let bin = &bin;
                s.spawn(move || {
                    let out = command(bin).args(args).output().expect("run netfn");
                    (
                        out.status.success(),
                        String::from_utf8_lossy(&out.stdout).into_owned(),
                        String::from_utf8_lossy(&out.stderr).into_owned(),
                    )
                })
            })
            .collect();
        running
            .into_iter()
            .map(|t| t.join().expect("command thread"))
            .collect()
    })
}

/// Asserts that `chain` is whole after a race: not there at all, or up exactly as one file said.
fn assert_whole(chain: &str, what: &str) {
    match netfn_core::chain::state::load(chain) {
        Ok(None) => assert_nothing_left(chain, what),
        Ok(Some(record)) => {
            let hops: Vec<&str> = record.plan.hops.iter().map(|h| h.name.as_str()).collect();
            let functions = if hops.contains(&"x") { &V2 } else { &V1 };
            assert_chain_is(chain, functions, what);
        }
        Err(e) => panic!("{what}: the record cannot be read: {e}"),
    }
}

#[test]
fn racing_commands_on_one_chain_are_serialized_and_leave_it_whole() {
    let _turn = shared();
    let chain = unique_chain("r");
    let _down = Down(&chain);
    let dir = TempDir::new(&chain);
    let mut waited = 0;
    for (round, mode) in ["tc", "xdp", "kernel", "tc", "xdp", "kernel"]
        .iter()
        .enumerate()
    {
        let v1 = dir.write(
            &format!("v1-{mode}.toml"),
            &chain_file(&chain, mode, &V1[1..]),
        );
        let v2 = dir.write(
            &format!("v2-{mode}.toml"),
            &chain_file(&chain, mode, &V2[1..]),
        );
        let (v1, v2) = (v1.to_string_lossy(), v2.to_string_lossy());
        let commands: Vec<Vec<String>> = [
            ["up", &v1],
            ["apply", &v2],
            ["down", &chain],
            ["apply", &v1],
            ["up", &v2],
            ["up", &v1],
        ]
        .iter()
        .map(|a| a.iter().map(|s| s.to_string()).collect())
        .collect();
        let what = format!("round {round} ({mode})");
        for ((ok, stdout, stderr), args) in all_at_once(&commands).iter().zip(&commands) {
            waited += usize::from(stderr.contains("another netfn command is working on chain"));
            // A command that lost the race is refused with a reason and what to do, never
            // half done.
            let refused_clearly = stderr.contains("is not up; bring it up with `netfn up`")
                || stderr.contains("is up with a different definition; change it in place")
                || stderr.contains(&format!("chain `{chain}` is up from "));
            assert!(
                *ok || refused_clearly,
                "{what}: netfn {args:?} failed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
        assert_whole(&chain, &what);
        netfn_ok(&["down", &chain]);
        assert_nothing_left(&chain, &what);
        // An apply that finds no chain leaves nothing either (not even its lock file).
        let refused = netfn_tests::netfn(&["apply", &v1]);
        assert!(!refused.status.success());
        assert_nothing_left(&chain, &format!("{what}, then apply of no chain"));
    }
    assert!(
        waited >= 3,
        "only {waited} commands waited for the chain's lock: the commands hardly raced"
    );
}

#[test]
fn twenty_chains_up_changed_and_down_in_parallel_leave_nothing() {
    let _turn = shared();
    let chains: Vec<String> = (0..20).map(|_| unique_chain("p")).collect();
    let _down: Vec<Down> = chains.iter().map(|c| Down(c)).collect();
    let dir = TempDir::new(&chains[0]);
    let modes = ["kernel", "tc", "xdp"];
    let files: Vec<(String, String)> = chains
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mode = modes[i % 3];
            let v1 = dir.write(&format!("{c}-v1.toml"), &chain_file(c, mode, &V1[1..]));
            let v2 = dir.write(&format!("{c}-v2.toml"), &chain_file(c, mode, &V2[1..]));
            (
                v1.to_string_lossy().into_owned(),
                v2.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let check = |results: Vec<(bool, String, String)>, what: &str| {
        for (i, (ok, _, stderr)) in results.iter().enumerate() {
            assert!(ok, "{what}: chain {}: {stderr}", chains[i]);
        }
    };
    // All up at once.
    let ups: Vec<Vec<String>> = files
        .iter()
        .map(|(v1, _)| vec!["up".into(), v1.clone()])
        .collect();
    check(all_at_once(&ups), "up");
    for c in &chains {
        assert_chain_is(c, &V1, &format!("{c} after the parallel up"));
    }
    // Half change (remove a, insert x) while the other half go down.
    let mixed: Vec<Vec<String>> = chains
        .iter()
        .zip(&files)
        .enumerate()
        .map(|(i, (c, (_, v2)))| {
            if i % 2 == 0 {
                vec!["apply".into(), v2.clone()]
            } else {
                vec!["down".into(), c.clone()]
            }
        })
        .collect();
    check(all_at_once(&mixed), "apply and down");
    for (i, c) in chains.iter().enumerate() {
        let what = format!("{c} after the parallel apply and down");
        if i % 2 == 0 {
            assert_chain_is(c, &V2, &what);
        } else {
            assert_nothing_left(c, &what);
        }
    }
    // All down at once (half of them are down already: nothing to do).
    let downs: Vec<Vec<String>> = chains
        .iter()
        .map(|c| vec!["down".into(), c.clone()])
        .collect();
    check(all_at_once(&downs), "down");
    for c in &chains {
        assert_nothing_left(c, &format!("{c} after the parallel down"));
    }
}

/// Two chains whose namespaces share a name (chain `X` with function `b-c`, chain `X-b` with
/// function `c`: both `nf-X-b-c`) brought up at the same time: one comes up whole, the other
/// fails naming the chain that has the namespace, as it would one at a time. The loser used to
/// say the namespace was not netfn's and to remove it (`ip netns del`), which would have broken
/// the winner, whenever both had passed the check before either made it.
#[test]
fn racing_ups_of_chains_that_share_a_namespace_name_say_whose_it_is() {
    let _shared = shared();
    let first = unique_chain("rn");
    let second = format!("{first}-b");
    let dir = TempDir::new(&first);
    let a = dir.write(
        "a.toml",
        &netfn_tests::forward_chain_of(&first, "tc", &["b-c"]),
    );
    let b = dir.write(
        "b.toml",
        &netfn_tests::forward_chain_of(&second, "tc", &["c"]),
    );
    let shared_ns = format!("nf-{first}-b-c");
    // Whichever is up when an assertion fails is taken down all the same.
    let _guards = [&first, &second].map(|c| netfn_tests::ChainGuard {
        chain: c.clone(),
        file: dir.0.clone(),
    });
    for round in 0..5 {
        let results = all_at_once(&[
            vec!["up".into(), a.to_string_lossy().into_owned()],
            vec!["up".into(), b.to_string_lossy().into_owned()],
        ]);
        let up: Vec<bool> = results.iter().map(|(ok, ..)| *ok).collect();
        assert_eq!(
            up.iter().filter(|ok| **ok).count(),
            1,
            "round {round}: one chain comes up: {results:?}"
        );
        let (winner, loser) = if up[0] {
            (&first, &second)
        } else {
            (&second, &first)
        };
        let (_, _, stderr) = &results[usize::from(up[0])];
        assert!(
            stderr.contains(&format!("namespace {shared_ns}, which"))
                && stderr.contains(&format!("is chain `{winner}`'s"))
                && !stderr.contains("ip netns del"),
            "round {round}: chain {loser} says whose the namespace is:\n{stderr}"
        );
        let status = netfn_ok(&["status", winner]);
        assert!(status.contains("up, healthy"), "round {round}: {status}");
        netfn_ok(&["down", winner]);
        assert_nothing_left(&first, &format!("round {round}"));
        assert_nothing_left(&second, &format!("round {round}"));
    }
}
