//! `netfn validate` on broken chain files: each file's `# expect: LINE:COL: text` lines must all
//! appear as `FILE:LINE:COL: error: …text…`, and the exit code must be non-zero.

use std::path::Path;

use netfn_tests::netfn;

#[test]
fn every_broken_fixture_reports_each_expected_error_with_its_position() {
    // `invalid-kinds/` holds the files whose problems only the kinds of `functions/` find (core's
    // own unit test reads `invalid/` with its test kinds).
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut paths: Vec<_> = ["invalid", "invalid-kinds"]
        .iter()
        .flat_map(|d| std::fs::read_dir(fixtures.join(d)).expect("fixtures dir"))
        .map(|entry| entry.expect("entry").path())
        .collect();
    paths.sort();
    let mut checked = 0;
    for path in paths {
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read fixture");
        let expects: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .filter_map(|e| {
                // "LINE:COL: message substring"
                let mut parts = e.splitn(3, ':');
                let (line, col, msg) = (parts.next()?, parts.next()?, parts.next()?);
                Some((&e[..line.len() + 1 + col.len()], msg.trim()))
            })
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no # expect: lines",
            path.display()
        );
        let out = netfn(&["validate", &path.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "validate accepted {}",
            path.display()
        );
        for (pos, msg) in &expects {
            let head = format!("{}:{pos}: error: ", path.display());
            assert!(
                stderr
                    .lines()
                    .any(|l| l.starts_with(&head) && l.contains(msg)),
                "{}: expected `{head}…{msg}…` in:\n{stderr}",
                path.display()
            );
        }
        let reported = stderr.lines().filter(|l| l.contains(": error: ")).count();
        assert_eq!(
            reported,
            expects.len(),
            "{}: unexpected extra errors:\n{stderr}",
            path.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} fixtures found in {}",
        fixtures.display()
    );
}

#[test]
fn every_example_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue; // e.g. examples/netfn-agent.service
        }
        let out = netfn(&["validate", &path.to_string_lossy()]);
        assert!(
            out.status.success(),
            "{} does not validate:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok, "));
        checked += 1;
    }
    assert!(checked >= 4);
}
