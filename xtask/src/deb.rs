//! `cargo xtask deb`: a Debian package of netfn, built with dpkg-deb (no extra cargo tool).
//!
//! Why dpkg-deb and not cargo-deb: cargo-deb would be one more tool to build and pin for
//! rustc 1.95 on every fresh machine, and it would build its own binary and completions, while
//! ours come from `cargo xtask` (the eBPF object must be built first) and from the binary itself
//! (`netfn generate`). dpkg-deb is in dpkg itself; dpkg-shlibdeps (dpkg-dev) computes the
//! library dependencies exactly as Debian's own packages get them. The layout below is all
//! there is: one place to read, nothing implicit.
//!
//! | path in the package | what |
//! |---|---|
//! | `/usr/bin/netfn` | the release binary, stripped (the debug info stays in target/) |
//! | `/lib/systemd/system/netfn-agent.service` | the agent's unit, `ExecStart=/usr/bin/netfn agent …`; not enabled by the package |
//! | `/usr/share/bash-completion/completions/netfn`, `/usr/share/zsh/vendor-completions/_netfn`, `/usr/share/fish/vendor_completions.d/netfn.fish` | completions |
//! | `/usr/share/man/man1/netfn*.1.gz` | man pages |
//! | `/usr/share/doc/netfn/` | README.md, docs/*.md, examples/, copyright, changelog.gz |
//!
//! The unit goes to /lib/systemd/system: Debian 12 (bookworm) packages still ship units there
//! (lintian's `systemd-service-file-outside-lib`), and systemd reads both.
//!
//! Version: `<workspace version>+git<commits>.<commit>` (e.g. `0.1.0+git112.8ed033d`): the
//! commit count keeps versions of later commits sorting higher. A native package (no Debian
//! revision): upstream and packaging live in one tree.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::flow::Profile;
use crate::package::{self, UNIT_NAME, UNIT_TEMPLATE};
use crate::util;

/// What netfn runs at run time: `ip`, and `nft` for the firewall's and the load balancer's
/// kernel-mode forms.
const RUNTIME_DEPENDS: &[&str] = &["iproute2", "nftables"];
/// What operators use beside it: `wg` shows a WireGuard function's endpoint (`wg show`).
const RUNTIME_RECOMMENDS: &[&str] = &["wireguard-tools"];

const SUMMARY: &str = "service chains of network functions in Linux namespaces";
const DESCRIPTION: &str = "\
netfn turns a chain file (TOML) into kernel objects: one network namespace per
network function, veth pairs between them, and eBPF programs (TC or XDP) that
steer packets from function to function and count them. Chains can be changed
while traffic runs, survive the netfn process, and are removed without leaving
anything behind.
.
The package contains the netfn command, the host agent's systemd unit
(metrics for Prometheus, chain probes; not enabled), shell completions, man
pages, documentation and example chain files.";

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: netfn
Comment: The binary also contains Rust crates (clap, tokio, aya and others) under their
 own permissive licenses (MIT, Apache-2.0, BSD); see the workspace's Cargo.lock.

Files: *
Copyright: 2026 The netfn developers
License: MIT or Apache-2.0

License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the \"Software\"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
 THE SOFTWARE.

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the \"License\");
 you may not use this file except in compliance with the License.
 You may obtain a copy of the License at
 .
 https://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an \"AS IS\" BASIS,
 WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 See the License for the specific language governing permissions and
 limitations under the License.
 .
 On Debian systems, the full text of the Apache License, Version 2.0
 can be found in the file '/usr/share/common-licenses/Apache-2.0'.
";

#[derive(Args)]
pub struct DebArgs {
    /// Where to write the .deb [default: target/debian/].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The build to package (`dev`: the tests' unoptimized build).
    #[arg(long, value_enum, default_value_t = Profile::Release)]
    pub profile: Profile,
}

/// Facts about the commit the package is built from.
struct Commit {
    short: String,
    count: Option<u32>,
    subject: String,
    /// RFC 2822 date of the commit (the changelog's date; also SOURCE_DATE_EPOCH).
    date: String,
    epoch: Option<u64>,
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(util::workspace_root())
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The commit from `netfn --version` ("0.1.0 (commit 8ed033d)"), with git's facts about it
/// when git knows it.
fn commit_of(version: &str) -> Result<(String, Commit)> {
    let (semver, rest) = version
        .split_once(" (commit ")
        .with_context(|| format!("`netfn --version` says {version:?}, without a commit"))?;
    let short = rest.trim_end_matches(')').to_string();
    let known = short != "unknown";
    let at = |args: &[&str]| {
        if known {
            let mut all = args.to_vec();
            all.push(&short);
            git(&all)
        } else {
            None
        }
    };
    let commit = Commit {
        count: at(&["rev-list", "--count"]).and_then(|c| c.parse().ok()),
        subject: at(&["log", "-1", "--format=%s"]).unwrap_or_else(|| "(unknown)".to_string()),
        date: at(&["log", "-1", "--format=%aD"])
            .or_else(|| {
                Command::new("date")
                    .arg("-R")
                    .output()
                    .ok()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            })
            .unwrap_or_default(),
        epoch: at(&["log", "-1", "--format=%at"]).and_then(|e| e.parse().ok()),
        short,
    };
    Ok((semver.to_string(), commit))
}

/// `0.1.0+git112.8ed033d`, or `0.1.0` when the commit is unknown.
fn debian_version(semver: &str, commit: &Commit) -> String {
    match (&commit.count, commit.short.as_str()) {
        (_, "unknown") => semver.to_string(),
        (Some(n), short) => format!("{semver}+git{n}.{short}"),
        (None, short) => format!("{semver}+git.{short}"),
    }
}

/// `Name <email>`: $DEBFULLNAME/$DEBEMAIL (Debian's convention), else git's user, else a
/// placeholder.
fn maintainer() -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let name = env("DEBFULLNAME")
        .or_else(|| git(&["config", "user.name"]))
        .unwrap_or_else(|| "netfn developers".to_string());
    let email = env("DEBEMAIL")
        .or_else(|| git(&["config", "user.email"]))
        .unwrap_or_else(|| "netfn@example.org".to_string());
    format!("{name} <{email}>")
}

/// Runs a command and returns its stdout, failing with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?} (run `cargo xtask setup`)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The staging tree: every file and directory gets an explicit mode (the umask must not leak
/// into the package).
struct Stage {
    root: PathBuf,
}

impl Stage {
    fn dir(&self, rel: &str) -> Result<PathBuf> {
        let dir = self.root.join(rel);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    fn write(&self, rel: &str, bytes: &[u8], mode: u32) -> Result<PathBuf> {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
        Ok(path)
    }

    fn copy(&self, from: &Path, rel: &str, mode: u32) -> Result<PathBuf> {
        let bytes =
            std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        self.write(rel, &bytes, mode)
    }

    /// gzip -9n (no name, no time stamp: reproducible), as Debian wants man pages and changelogs.
    fn gzip(&self, bytes: &[u8], rel: &str) -> Result<PathBuf> {
        let tmp = self.write(&format!("{rel}.tmp"), bytes, 0o644)?;
        let gz = Command::new("gzip")
            .args(["-9n", "-c"])
            .arg(&tmp)
            .output()
            .context("cannot run gzip")?;
        if !gz.status.success() {
            bail!("gzip -9n {} failed with {}", tmp.display(), gz.status);
        }
        let gz = gz.stdout;
        std::fs::remove_file(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
        self.write(&format!("{rel}.gz"), &gz, 0o644)
    }

    /// Every directory 0755 (files were given their modes as they were written).
    fn fix_dir_modes(dir: &Path) -> Result<()> {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        for entry in
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let path = entry
                .with_context(|| format!("cannot read {}", dir.display()))?
                .path();
            if path.is_dir() && !path.is_symlink() {
                Self::fix_dir_modes(&path)?;
            }
        }
        Ok(())
    }
}

/// Installed-Size: the sum of the files' sizes in KiB, each rounded up (what dpkg-gencontrol
/// does, near enough).
fn installed_size_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "DEBIAN") {
            continue;
        }
        let meta = entry
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        total += if meta.is_dir() {
            1 + installed_size_kib(&path)?
        } else {
            meta.len().div_ceil(1024)
        };
    }
    Ok(total)
}

/// The shared-library dependencies of `binary` (`libc6 (>= 2.34), libgcc-s1 (>= 4.2)`), from
/// dpkg-shlibdeps, which wants to run next to a debian/control.
fn shlib_depends(work: &Path, binary: &Path) -> Result<String> {
    let debian = work.join("debian");
    std::fs::create_dir_all(&debian)
        .with_context(|| format!("cannot create {}", debian.display()))?;
    std::fs::write(
        debian.join("control"),
        "Source: netfn\n\nPackage: netfn\nArchitecture: any\n",
    )
    .context("cannot write the scratch debian/control for dpkg-shlibdeps")?;
    let out = output(
        Command::new("dpkg-shlibdeps")
            .current_dir(work)
            .arg("-O")
            .arg(binary),
    )
    .context("dpkg-shlibdeps (from dpkg-dev) could not find the binary's library packages")?;
    let deps = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out:?}"))?;
    Ok(deps.trim().to_string())
}

pub fn build(args: DebArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let root = util::workspace_root();
    let built = package::build(args.profile)?;
    let (semver, commit) = commit_of(&built.version)?;
    let version = debian_version(&semver, &commit);
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let scratch = package::Scratch::new("debian")?;
    let work = scratch.0.clone();
    let stage = Stage {
        root: work.join("netfn"),
    };
    println!("== building netfn_{version}_{arch}.deb (dpkg-deb)");

    // The binary, stripped as dh_strip does.
    let bin = stage.root.join("usr/bin/netfn");
    stage.dir("usr/bin")?;
    util::run(
        Command::new("strip")
            .args([
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
                "-o",
            ])
            .arg(&bin)
            .arg(&built.netfn),
    )
    .context("cannot strip netfn (strip is in binutils; run `cargo xtask setup`)")?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot set the mode of {}", bin.display()))?;

    let template = std::fs::read_to_string(root.join(UNIT_TEMPLATE))
        .with_context(|| format!("cannot read {UNIT_TEMPLATE}"))?;
    let unit = package::render_unit(
        &template,
        Path::new("/usr/bin/netfn"),
        Path::new("/usr/share/doc/netfn/agent.md"),
        "Installed by the netfn Debian package.",
    )?;
    stage.write(
        &format!("lib/systemd/system/{UNIT_NAME}"),
        unit.as_bytes(),
        0o644,
    )?;

    for (file, dest) in [
        ("netfn.bash", "usr/share/bash-completion/completions/netfn"),
        ("_netfn", "usr/share/zsh/vendor-completions/_netfn"),
        (
            "netfn.fish",
            "usr/share/fish/vendor_completions.d/netfn.fish",
        ),
    ] {
        stage.copy(&built.completions.join(file), dest, 0o644)?;
    }
    for page in &built.man_pages {
        let name = page
            .file_name()
            .context("a man page without a name")?
            .to_string_lossy();
        let text =
            std::fs::read(page).with_context(|| format!("cannot read {}", page.display()))?;
        stage.gzip(&text, &format!("usr/share/man/man1/{name}"))?;
    }
    let doc = "usr/share/doc/netfn";
    for file in package::docs(&root)? {
        let name = file
            .file_name()
            .context("a doc without a name")?
            .to_string_lossy();
        stage.copy(&file, &format!("{doc}/{name}"), 0o644)?;
    }
    for file in package::files_in(&root.join("examples"), None)? {
        let name = file
            .file_name()
            .context("an example without a name")?
            .to_string_lossy();
        stage.copy(&file, &format!("{doc}/examples/{name}"), 0o644)?;
    }
    stage.write(&format!("{doc}/copyright"), COPYRIGHT.as_bytes(), 0o644)?;
    let maintainer = maintainer();
    let changelog = format!(
        "netfn ({version}) unstable; urgency=medium\n\n{}\n -- {maintainer}  {}\n",
        wrap(
            &format!("Built from commit {}: {}", commit.short, commit.subject),
            "  * ",
            "    ",
            80
        ),
        commit.date
    );
    stage.gzip(changelog.as_bytes(), &format!("{doc}/changelog"))?;

    // Control files.
    let mut depends = vec![shlib_depends(&work, &bin)?];
    depends.extend(RUNTIME_DEPENDS.iter().map(|d| d.to_string()));
    let size = installed_size_kib(&stage.root)?;
    let mut control = String::new();
    writeln!(control, "Package: netfn")?;
    writeln!(control, "Version: {version}")?;
    writeln!(control, "Architecture: {arch}")?;
    writeln!(control, "Maintainer: {maintainer}")?;
    writeln!(control, "Installed-Size: {size}")?;
    writeln!(control, "Depends: {}", depends.join(", "))?;
    writeln!(control, "Recommends: {}", RUNTIME_RECOMMENDS.join(", "))?;
    writeln!(control, "Section: net")?;
    writeln!(control, "Priority: optional")?;
    writeln!(control, "Description: {SUMMARY}")?;
    for line in DESCRIPTION.lines() {
        writeln!(control, " {line}")?;
    }
    Stage::fix_dir_modes(&stage.root)?;
    stage.write("DEBIAN/control", control.as_bytes(), 0o644)?;
    let sums = output(Command::new("sh").current_dir(&stage.root).args([
        "-c",
        "find . -path ./DEBIAN -prune -o -type f -printf '%P\\0' | LC_ALL=C sort -z | \
                 xargs -0r md5sum",
    ]))
    .context("cannot compute md5sums")?;
    stage.write("DEBIAN/md5sums", sums.as_bytes(), 0o644)?;
    Stage::fix_dir_modes(&stage.root)?;

    let out_dir = args.out.unwrap_or_else(|| target.join("debian"));
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let deb = out_dir.join(format!("netfn_{version}_{arch}.deb"));
    let mut dpkg_deb = Command::new("dpkg-deb");
    dpkg_deb
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage.root)
        .arg(&deb);
    if let Some(epoch) = commit.epoch {
        // Time stamps of the commit, not of this build.
        dpkg_deb.env("SOURCE_DATE_EPOCH", epoch.to_string());
    }
    output(&mut dpkg_deb).context("dpkg-deb could not build the package")?;
    let bytes = std::fs::metadata(&deb)
        .with_context(|| format!("cannot stat {}", deb.display()))?
        .len();
    println!(
        "built {} ({:.1} MiB, installed size {size} KiB) in {:.1} s",
        deb.display(),
        bytes as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64()
    );
    println!("  look inside: dpkg-deb -c {}", deb.display());
    println!("  check it:    lintian {}", deb.display());
    println!("  install it:  sudo apt install {}", deb.display());
    Ok(())
}

/// `text` wrapped at `width` columns, the first line after `first`, the others after `rest`
/// (a Debian changelog entry).
fn wrap(text: &str, first: &str, rest: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.len() + 1 + word.len() > width {
            out.push_str(line.trim_end());
            out.push('\n');
            line = rest.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(short: &str, count: Option<u32>) -> Commit {
        Commit {
            short: short.to_string(),
            count,
            subject: String::new(),
            date: String::new(),
            epoch: None,
        }
    }

    #[test]
    fn versions_sort_by_commit_count() {
        assert_eq!(
            debian_version("0.1.0", &commit("8ed033d", Some(112))),
            "0.1.0+git112.8ed033d"
        );
        assert_eq!(debian_version("0.1.0", &commit("unknown", None)), "0.1.0");
        assert_eq!(
            debian_version("0.1.0", &commit("8ed033d", None)),
            "0.1.0+git.8ed033d"
        );
    }

    #[test]
    fn changelog_lines_fit_80_columns() {
        let text = "Built from commit 8ed033d: tests: a lost-datagram failure in live_apply \
                    prints the chain's interface statistics";
        let wrapped = wrap(text, "  * ", "    ", 80);
        assert!(wrapped.lines().all(|l| l.len() <= 80), "{wrapped}");
        assert!(wrapped.starts_with("  * Built from commit 8ed033d:"));
        assert!(wrapped.lines().skip(1).all(|l| l.starts_with("    ")));
        assert_eq!(
            wrapped.split_whitespace().collect::<Vec<_>>(),
            format!("* {text}").split_whitespace().collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_commit_comes_from_netfn_version() {
        let (semver, c) = commit_of("0.1.0 (commit unknown)").expect("parses");
        assert_eq!((semver.as_str(), c.short.as_str()), ("0.1.0", "unknown"));
        assert!(commit_of("0.1.0").is_err());
    }
}
