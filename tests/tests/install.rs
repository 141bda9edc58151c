//! Installing netfn as an operator would: `cargo xtask install` into a scratch prefix and
//! `cargo xtask uninstall`, and `cargo xtask deb` installed with dpkg into a scratch root.
//!
//! Both install and package the suite's own build (`--profile dev`: `cargo xtask test` built
//! it; building release as well would cost minutes, and the steps are the same) and run the
//! real installed artifacts. They need cargo and the workspace, so they skip (saying so) inside
//! the VM suite (`cargo xtask vm-test`), where neither exists.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use netfn_tests::TempDir;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// None (and the reason printed) where these tests cannot run: in the VM, or without cargo.
fn cargo() -> Option<PathBuf> {
    if netfn_tests::in_test_vm() {
        netfn_tests::skipped(
            "install and packaging tests",
            "they need cargo and the workspace, which the VM (cargo xtask vm-test) does not \
             have; they run on the host (cargo xtask test)",
        );
        return None;
    }
    Some(std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from))
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo xtask ARGS…` in the workspace; returns stdout and prints it (the test's log).
fn xtask(cargo: &Path, args: &[&str]) -> String {
    let started = Instant::now();
    let out = ok(Command::new(cargo)
        .current_dir(workspace())
        .arg("xtask")
        .args(args));
    eprintln!(
        "$ cargo xtask {} ({:.1} s)\n{out}",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    out
}

/// The commit this checkout is at, if git can tell.
fn head_commit() -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(workspace())
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Every file and directory under `dir` (relative paths).
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            out.insert(path.strip_prefix(base).unwrap_or(&path).to_path_buf());
            if path.is_dir() && !path.is_symlink() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// The subcommands `netfn --help` lists (the public ones: `generate` is hidden).
fn subcommands(netfn: &Path) -> Vec<Vec<String>> {
    // Nested ones too (`wg genkey`): each gets its own page.
    let mut out = Vec::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let help = ok(Command::new(netfn).args(&path).arg("--help"));
        let Some(commands) = help.split("Commands:").nth(1) else {
            assert!(!path.is_empty(), "no Commands: in netfn --help:\n{help}");
            continue;
        };
        for c in commands
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
        {
            let mut sub = path.clone();
            sub.push(c.to_string());
            out.push(sub.clone());
            todo.push(sub);
        }
    }
    out
}

/// `netfn --version` names the workspace version and this checkout's commit.
fn check_version(netfn: &Path) {
    let version = ok(Command::new(netfn).arg("--version"));
    let want = match head_commit() {
        Some(c) => format!("netfn {} (commit {c})", env!("CARGO_PKG_VERSION")),
        None => format!("netfn {} (commit unknown)", env!("CARGO_PKG_VERSION")),
    };
    assert_eq!(version.trim(), want);
}

/// `netfn validate EXAMPLE` of an installed example succeeds.
fn check_validate(netfn: &Path, example: &Path) {
    assert!(example.is_file(), "{} not installed", example.display());
    let out = ok(Command::new(netfn).arg("validate").arg(example));
    assert!(out.contains(": ok, 1 chain(s)"), "{out}");
}

/// `man -l` renders the page without a warning, with its name and examples.
fn check_man_page(page: &Path) {
    let out = Command::new("man")
        .args(["--warnings", "-E", "UTF-8", "-l"])
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("cannot run man (apt-get install man-db): {e}"));
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "man -l {} failed or warned:\n{}",
        page.display(),
        text(&out)
    );
    for section in ["NAME", "SYNOPSIS", "EXAMPLES"] {
        assert!(
            rendered.lines().any(|l| l == section),
            "no {section} in {}:\n{rendered}",
            page.display()
        );
    }
}

#[test]
fn install_into_a_prefix_then_uninstall_leaves_nothing() {
    let Some(cargo) = cargo() else { return };
    let scratch = TempDir::new("install");
    // `nobody` runs the installed binary below.
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755))
        .expect("chmod scratch");
    // Not created here: install creates it, and uninstall must remove it again.
    let prefix = scratch.0.join("prefix");
    let prefix_arg = prefix.to_string_lossy().into_owned();

    let started = Instant::now();
    let log = xtask(
        &cargo,
        &["install", "--profile", "dev", "--prefix", &prefix_arg],
    );
    eprintln!(
        "install (build included) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(log.contains("installed "), "{log}");

    let netfn = prefix.join("bin/netfn");
    check_version(&netfn);
    let docs = prefix.join("share/doc/netfn");
    check_validate(&netfn, &docs.join("examples/minimal.toml"));
    for doc in ["README.md", "agent.md", "chain-format.md"] {
        assert!(docs.join(doc).is_file(), "{doc} not installed");
    }

    // kinds and features need no root.
    for verb in ["kinds", "features"] {
        let out = ok(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&netfn)
            .arg(verb));
        assert!(!out.trim().is_empty(), "netfn {verb} printed nothing");
    }

    // The unit runs the installed binary and is not enabled anywhere.
    let unit = std::fs::read_to_string(prefix.join("lib/systemd/system/netfn-agent.service"))
        .expect("the unit is installed");
    assert!(
        unit.contains(&format!("\nExecStart={} agent ", netfn.display())),
        "{unit}"
    );
    assert!(unit.contains(&format!(
        "\nDocumentation=file://{}\n",
        docs.join("agent.md").display()
    )));

    // Completions load in bash (and in zsh and fish, where they are installed).
    let bash = prefix.join("share/bash-completion/completions/netfn");
    let out = ok(Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}' && complete -p netfn", bash.display())));
    assert!(out.contains("netfn"), "{out}");
    let zsh = prefix.join("share/zsh/site-functions/_netfn");
    let fish = prefix.join("share/fish/vendor_completions.d/netfn.fish");
    for file in [&zsh, &fish] {
        let body = std::fs::read_to_string(file).expect("completion installed");
        assert!(body.contains("netfn"), "{}", file.display());
    }
    if Command::new("fish").arg("--version").output().is_ok() {
        ok(Command::new("fish")
            .arg("--no-config")
            .arg("-c")
            .arg(format!("source '{}'", fish.display())));
    }

    // One page per public subcommand, each rendering with its examples; every --help has
    // examples too.
    let man1 = prefix.join("share/man/man1");
    let mut want: BTreeSet<String> = BTreeSet::from(["netfn.1".to_string()]);
    for sub in subcommands(&netfn) {
        want.insert(format!("netfn-{}.1", sub.join("-")));
        let help = ok(Command::new(&netfn).args(&sub).arg("--help"));
        assert!(
            help.contains("Examples:\n  "),
            "netfn {} --help has no examples:\n{help}",
            sub.join(" ")
        );
    }
    let pages: BTreeSet<String> = std::fs::read_dir(&man1)
        .expect("man1 installed")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pages, want, "man pages");
    assert!(want.len() >= 10, "{want:?}");
    for page in &pages {
        check_man_page(&man1.join(page));
    }

    // Installing again changes nothing but the files' contents.
    let files_before = tree(&prefix);
    let log = xtask(
        &cargo,
        &["install", "--profile", "dev", "--prefix", &prefix_arg],
    );
    assert!(log.contains("(0 new, "), "{log}");
    assert_eq!(tree(&prefix), files_before);

    xtask(&cargo, &["uninstall", "--prefix", &prefix_arg]);
    assert!(
        !prefix.exists(),
        "left after uninstall: {:?}",
        tree(&prefix)
    );
    let log = xtask(&cargo, &["uninstall", "--prefix", &prefix_arg]);
    assert!(log.contains("nothing to uninstall"), "{log}");
}

#[test]
fn uninstall_never_removes_what_install_did_not_create() {
    let Some(cargo) = cargo() else { return };
    let scratch = TempDir::new("install-foreign");
    let prefix = scratch.0.join("prefix");
    let prefix_arg = prefix.to_string_lossy().into_owned();
    // Someone else's files: one where netfn goes, one next to its man pages.
    let theirs = scratch.write("their-netfn", "#!/bin/sh\necho theirs\n");
    std::fs::create_dir_all(prefix.join("bin")).expect("bin");
    std::fs::create_dir_all(prefix.join("share/man/man1")).expect("man1");
    std::fs::copy(&theirs, prefix.join("bin/netfn")).expect("their netfn");
    std::fs::write(prefix.join("share/man/man1/other.1"), ".TH OTHER 1\n").expect("other.1");

    let out = Command::new(&cargo)
        .current_dir(workspace())
        .args([
            "xtask",
            "install",
            "--profile",
            "dev",
            "--prefix",
            &prefix_arg,
        ])
        .output()
        .expect("run cargo xtask install");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "install overwrote their file:\n{}",
        text(&out)
    );
    assert!(err.contains("pass --force"), "{err}");
    assert_eq!(
        std::fs::read_to_string(prefix.join("bin/netfn")).expect("theirs"),
        "#!/bin/sh\necho theirs\n"
    );
    assert!(!prefix.join("share/netfn/install-manifest").exists());

    std::fs::remove_file(prefix.join("bin/netfn")).expect("remove theirs");
    xtask(
        &cargo,
        &["install", "--profile", "dev", "--prefix", &prefix_arg],
    );
    xtask(&cargo, &["uninstall", "--prefix", &prefix_arg]);
    // What existed before the install is there, and nothing else.
    let left = tree(&prefix);
    let want: BTreeSet<PathBuf> = ["bin", "share", "share/man", "share/man/man1"]
        .iter()
        .map(PathBuf::from)
        .chain([PathBuf::from("share/man/man1/other.1")])
        .collect();
    assert_eq!(left, want);
}

#[test]
fn debian_package_passes_lintian_and_installs_into_a_scratch_root() {
    let Some(cargo) = cargo() else { return };
    let scratch = TempDir::new("deb");
    let out_dir = scratch.0.join("out");
    let started = Instant::now();
    xtask(
        &cargo,
        &[
            "deb",
            "--profile",
            "dev",
            "--out",
            &out_dir.to_string_lossy(),
        ],
    );
    eprintln!(
        "deb (build included) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let debs: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .expect("out dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let deb = &debs[0];
    let size = std::fs::metadata(deb).expect("stat").len();
    eprintln!("{}: {size} bytes", deb.display());

    // Version: the workspace's and the commit.
    let field = |name: &str| ok(Command::new("dpkg-deb").args(["-f"]).arg(deb).arg(name));
    let version = field("Version");
    assert!(
        version.starts_with(&format!("{}+git", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    if let Some(commit) = head_commit() {
        assert!(version.trim().ends_with(&format!(".{commit}")), "{version}");
    }
    let depends = field("Depends");
    for dep in ["libc6", "iproute2", "nftables"] {
        assert!(depends.contains(dep), "Depends: {depends}");
    }

    // Contents.
    let listing = ok(Command::new("dpkg-deb").arg("-c").arg(deb));
    let paths: BTreeSet<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for want in [
        "./usr/bin/netfn",
        "./lib/systemd/system/netfn-agent.service",
        "./usr/share/bash-completion/completions/netfn",
        "./usr/share/zsh/vendor-completions/_netfn",
        "./usr/share/fish/vendor_completions.d/netfn.fish",
        "./usr/share/man/man1/netfn.1.gz",
        "./usr/share/man/man1/netfn-up.1.gz",
        "./usr/share/man/man1/netfn-agent.1.gz",
        "./usr/share/doc/netfn/README.md",
        "./usr/share/doc/netfn/agent.md",
        "./usr/share/doc/netfn/copyright",
        "./usr/share/doc/netfn/changelog.gz",
        "./usr/share/doc/netfn/examples/minimal.toml",
    ] {
        assert!(
            paths.contains(want),
            "{want} not in the package:\n{listing}"
        );
    }
    for line in listing.lines() {
        assert!(line.contains(" root/root "), "not owned by root: {line}");
    }

    // lintian: no errors (warnings are printed for the log).
    let out = Command::new("lintian")
        .arg(deb)
        .output()
        .expect("run lintian (apt-get install lintian; cargo xtask setup does)");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("lintian:\n{report}");
    assert!(
        out.status.success() && !report.lines().any(|l| l.starts_with("E: ")),
        "lintian reports errors:\n{}",
        text(&out)
    );

    // Every dependency is satisfied on this machine (the scratch root below has none).
    for dep in depends.split(',') {
        let name = dep.split_whitespace().next().expect("a package name");
        let status = ok(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]));
        assert!(status.ends_with(" installed"), "{name}: {status}");
    }

    // dpkg into a scratch root: its own admin dir, no other packages (hence --force-depends).
    let root = scratch.0.join("root");
    let admin = root.join("var/lib/dpkg");
    for dir in ["updates", "info"] {
        std::fs::create_dir_all(admin.join(dir)).expect("admin dir");
    }
    std::fs::write(admin.join("status"), "").expect("status");
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", root.display()))
            .arg("--force-depends")
            .args(args);
        c
    };
    ok(dpkg(&["-i"]).arg(deb));
    let netfn = root.join("usr/bin/netfn");
    check_version(&netfn);
    check_validate(
        &netfn,
        &root.join("usr/share/doc/netfn/examples/minimal.toml"),
    );
    check_man_page(&root.join("usr/share/man/man1/netfn-validate.1.gz"));
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/netfn-agent.service")).expect("unit");
    assert!(unit.contains("\nExecStart=/usr/bin/netfn agent "), "{unit}");
    let status = ok(&mut dpkg(&["-s", "netfn"]));
    assert!(status.contains("Status: install ok installed"), "{status}");

    ok(&mut dpkg(&["--purge", "netfn"]));
    let left: Vec<PathBuf> = tree(&root)
        .into_iter()
        .filter(|p| !p.starts_with("var"))
        .collect();
    assert!(left.is_empty(), "left after dpkg --purge: {left:?}");
}
