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

/// A file with one error (line 8) and one warning (a shadowed firewall rule, line 20).
const ONE_ERROR_ONE_WARNING: &str = r#"[[chain]]
name = "diag"

[chain.ingress]
address = "10.1.0.2/24"

[chain.egress]
address = "10.2.0.0/24"

[[chain.function]]
name = "fw1"
kind = "firewall"

[[chain.function.rule]]
proto = "tcp"
action = "accept"

[[chain.function.rule]]
name = "late"
proto = "tcp"
dport = 22
action = "drop"
"#;

/// Every verb that reads a chain file prints its diagnostics as `validate` does, each line
/// starting `FILE:LINE:COL: ` (what editors and grep read; the first once got `netfn: error: `
/// in front), then one summary line that counts errors and warnings apart. (`down FILE` reads
/// only the chains' names, and takes them down whatever else is wrong with the file: see
/// chain_lifecycle's down_file_takes_down_its_chains_even_when_it_no_longer_validates.)
#[test]
fn diagnostics_keep_their_form_under_every_verb_and_the_count_is_of_errors() {
    let dir = netfn_tests::TempDir::new("diagform");
    let file = dir.write("bad.toml", ONE_ERROR_ONE_WARNING);
    let path = file.to_string_lossy();
    for args in [
        &["validate", &path][..],
        &["graph", &path],
        &["up", &path],
        &["apply", &path, "--dry-run"],
    ] {
        let out = netfn(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted the file");
        let lines: Vec<&str> = stderr.lines().collect();
        let error = format!("{path}:8:11: error: chain `diag`: egress address");
        let warning = format!("{path}:18:1: warning: ");
        assert!(
            lines.iter().any(|l| l.starts_with(&error))
                && lines.iter().any(|l| l.starts_with(&warning)),
            "{args:?}: no `{error}` and `{warning}` lines in:\n{stderr}"
        );
        let last = lines.last().copied().unwrap_or_default();
        assert!(
            last.contains(&format!("{path}: 1 error(s), 1 warning(s)")),
            "{args:?}: the last line should count 1 error and 1 warning:\n{stderr}"
        );
        // Only the summary line may say anything but a diagnostic or its hint.
        for line in &lines[..lines.len() - 1] {
            assert!(
                line.starts_with(&*path) || line.starts_with("  hint: "),
                "{args:?}: `{line}` in:\n{stderr}"
            );
        }
    }
}
