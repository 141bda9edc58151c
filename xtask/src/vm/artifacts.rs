//! The binaries that go into the VM: the test executables of one package (from cargo's JSON
//! messages) and the `netfn` binary, optionally stripped of debug info to keep the initramfs
//! small (TCG unpacks it at a few hundred MB/s, and it lives in the guest's RAM).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::util;

/// One test executable.
#[derive(Debug, Clone)]
pub struct TestExe {
    /// The test target's name (`chain_lifecycle`), or `lib-<name>` for unit tests.
    pub name: String,
    pub path: PathBuf,
}

/// Everything built on the host for the guest.
#[derive(Debug)]
pub struct Artifacts {
    pub tests: Vec<TestExe>,
    pub netfn: PathBuf,
    /// The package's directory: tests run there, as under `cargo test`.
    pub package_dir: Option<PathBuf>,
}

/// A compiler-artifact message, reduced to what we use.
struct Built {
    /// The package the target belongs to (from cargo's package id).
    package: String,
    kinds: Vec<String>,
    name: String,
    test: bool,
    executable: Option<PathBuf>,
    manifest: Option<PathBuf>,
}

/// Runs cargo with `--message-format=json-render-diagnostics` (compiler messages still go to
/// the terminal) and returns the artifacts it reports.
fn cargo_json(root: &Path, args: &[&str]) -> Result<Vec<Built>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut child = util::without_cargo_run_env(&mut Command::new(&cargo))
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cargo} {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("cargo has no stdout")?;
    let mut built = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read cargo's output")?;
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        built.push(Built {
            package: msg["package_id"]
                .as_str()
                .map(package_name)
                .unwrap_or_default()
                .to_string(),
            kinds: msg["target"]["kind"]
                .as_array()
                .map(|kinds| {
                    kinds
                        .iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            name: msg["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            test: msg["profile"]["test"].as_bool().unwrap_or(false),
            executable: msg["executable"].as_str().map(PathBuf::from),
            manifest: msg["manifest_path"].as_str().map(PathBuf::from),
        });
    }
    let status = child.wait().context("cannot wait for cargo")?;
    if !status.success() {
        bail!("cargo {} failed with {status}", args.join(" "));
    }
    Ok(built)
}

/// The package name in a cargo package id: `path+file:///w/tests#netfn-tests@0.1.0` (the
/// name differs from the directory's), `path+file:///w/xtask#0.1.0` (it does not), or the
/// older `netfn-tests 0.1.0 (path+file:///w/tests)`.
fn package_name(id: &str) -> &str {
    if let Some((url, fragment)) = id.split_once('#') {
        return match fragment.split_once('@') {
            Some((name, _)) => name,
            None => url.rsplit('/').next().unwrap_or(url),
        };
    }
    id.split(' ').next().unwrap_or(id)
}

/// Builds the test executables of `package` and the netfn binary.
///
/// The whole workspace's tests are built, as `cargo xtask test` builds them, and those of
/// `package` kept: built alone, the package would unify its dependencies' features differently
/// and cargo would compile them again (most of a minute in CI, for nothing).
pub fn build(root: &Path, package: &str) -> Result<Artifacts> {
    println!(
        "vm-test: building the test executables of {package} (cargo test --workspace --no-run)"
    );
    let built = cargo_json(root, &["test", "--workspace", "--no-run"])?;
    let mut package_dir = None;
    let mut tests = Vec::new();
    for b in built.into_iter().filter(|b| b.test && b.package == package) {
        let Some(path) = b.executable else { continue };
        package_dir = b
            .manifest
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        let name = if b.kinds.iter().any(|k| k == "test") {
            b.name
        } else {
            format!(
                "{}-{}",
                b.kinds.first().map_or("unit", String::as_str),
                b.name
            )
        };
        tests.push(TestExe { name, path });
    }
    tests.sort_by(|a, b| a.name.cmp(&b.name));

    println!("vm-test: building netfn (cargo build -p netfn-cli)");
    let built = cargo_json(root, &["build", "-p", "netfn-cli"])?;
    let netfn = built
        .into_iter()
        .filter(|b| b.kinds.iter().any(|k| k == "bin") && b.name == "netfn")
        .find_map(|b| b.executable)
        .context("cargo build -p netfn-cli produced no `netfn` executable")?;
    Ok(Artifacts {
        tests,
        netfn,
        package_dir,
    })
}

/// A copy of `src` without debug sections in `stage` (`objcopy --strip-debug`); the symbol
/// table stays, so backtraces still name functions.
pub fn strip_debug(src: &Path, stage: &Path) -> Result<PathBuf> {
    fs::create_dir_all(stage).with_context(|| format!("cannot create {}", stage.display()))?;
    let name = src
        .file_name()
        .with_context(|| format!("{} has no file name", src.display()))?;
    let dst = stage.join(name);
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(src)
        .arg(&dst)
        .status()
        .context("cannot run objcopy")?;
    if !status.success() {
        bail!(
            "objcopy --strip-debug {} failed with {status}",
            src.display()
        );
    }
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_come_from_every_form_of_package_id() {
        assert_eq!(
            package_name("path+file:///w/tests#netfn-tests@0.1.0"),
            "netfn-tests"
        );
        assert_eq!(package_name("path+file:///w/xtask#0.1.0"), "xtask");
        assert_eq!(
            package_name("netfn-tests 0.1.0 (path+file:///w/tests)"),
            "netfn-tests"
        );
    }
}
