//! Records the git commit netfn is built from, for `netfn --version` ("netfn 0.1.0 (commit
//! 8ed033d)") and the Debian package's version.
//!
//! `NETFN_COMMIT` in the environment wins (a build from a tarball, or a packager who knows
//! better); otherwise `git rev-parse --short HEAD`; otherwise "unknown". The script reruns when
//! HEAD moves: it watches the HEAD file of this checkout's git dir (a worktree has its own) and
//! the branch's ref file and packed-refs in the common dir.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo::rerun-if-env-changed=NETFN_COMMIT");
    println!("cargo::rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());

    let commit = match std::env::var("NETFN_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // Watch what moves when HEAD does; paths from git are relative to `manifest_dir`
            // unless absolute (`--path-format=absolute` makes them absolute).
            let abs = |args: &[&str]| {
                let mut all = vec!["rev-parse", "--path-format=absolute"];
                all.extend_from_slice(args);
                git(&manifest_dir, &all).map(PathBuf::from)
            };
            if let Some(git_dir) = abs(&["--git-dir"]) {
                println!("cargo::rerun-if-changed={}", git_dir.join("HEAD").display());
            }
            if let Some(common) = abs(&["--git-common-dir"]) {
                let packed = common.join("packed-refs");
                if packed.exists() {
                    println!("cargo::rerun-if-changed={}", packed.display());
                }
                if let Some(branch) = git(&manifest_dir, &["symbolic-ref", "-q", "HEAD"]) {
                    let refs = common.join(branch);
                    if refs.exists() {
                        println!("cargo::rerun-if-changed={}", refs.display());
                    }
                }
            }
            git(&manifest_dir, &["rev-parse", "--short", "HEAD"])
                .unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo::rustc-env=NETFN_COMMIT={commit}");
}
