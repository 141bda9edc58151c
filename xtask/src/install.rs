//! `cargo xtask install [--prefix DIR] [--enable]` and `cargo xtask uninstall [--prefix DIR]`.
//!
//! Install puts, under PREFIX (default /usr/local):
//!
//! | path | what |
//! |---|---|
//! | `bin/netfn` | the release binary |
//! | `lib/systemd/system/netfn-agent.service` | the agent's unit, `ExecStart=PREFIX/bin/netfn agent …` |
//! | `share/bash-completion/completions/netfn`, `share/zsh/site-functions/_netfn`, `share/fish/vendor_completions.d/netfn.fish` | completions |
//! | `share/man/man1/netfn.1`, `netfn-<verb>.1` | man pages |
//! | `share/doc/netfn/` | README.md, docs/*.md, `examples/` |
//! | `share/netfn/install-manifest` | every file and directory install created |
//!
//! The unit goes to `PREFIX/lib/systemd/system`: for /usr/local that is a directory systemd
//! reads (`systemd-analyze unit-paths`), and /etc/systemd/system stays the administrator's (their
//! overrides and `systemctl enable` links live there), so one prefix holds everything install
//! wrote and uninstall has one place to look. For a prefix systemd does not read, install says
//! so and `--enable` links the unit by its full path.
//!
//! Uninstall removes exactly the files and the then-empty directories the manifest lists. A
//! file install would overwrite that no manifest lists (someone else's) stops the install
//! unless `--force`. Both are idempotent.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::flow::Profile;
use crate::package::{self, Built, UNIT_NAME, UNIT_TEMPLATE};
use crate::util;

const DEFAULT_PREFIX: &str = "/usr/local";
const MANIFEST: &str = "share/netfn/install-manifest";
const MANIFEST_HEADER: &str = "# netfn install manifest: what `cargo xtask install` created; \
                               `cargo xtask uninstall` removes exactly this.";

/// Unit directories systemd reads for packages and local installs (`systemd-analyze
/// unit-paths` on Debian 12).
const SYSTEMD_UNIT_DIRS: &[&str] = &[
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
    "/etc/systemd/system",
];

#[derive(Args)]
pub struct InstallArgs {
    /// Install under this directory (bin/, lib/systemd/system/, share/…).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PREFIX)]
    pub prefix: PathBuf,
    /// Also enable and start the agent's unit (systemctl daemon-reload, enable --now), if
    /// systemd runs.
    #[arg(long)]
    pub enable: bool,
    /// Overwrite files that exist but that no install manifest lists (they become netfn's).
    #[arg(long)]
    pub force: bool,
    /// The build to install (`dev`: the tests' unoptimized build).
    #[arg(long, value_enum, default_value_t = Profile::Release)]
    pub profile: Profile,
}

#[derive(Args)]
pub struct UninstallArgs {
    /// The prefix given to `cargo xtask install`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PREFIX)]
    pub prefix: PathBuf,
}

/// One file to install: its place, its bytes (or where to copy them from), its mode.
struct Item {
    dest: PathBuf,
    source: Source,
    mode: u32,
}

enum Source {
    Copy(PathBuf),
    Text(String),
}

/// What a previous install recorded.
#[derive(Default, Debug, PartialEq)]
struct Manifest {
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

impl Manifest {
    fn parse(text: &str) -> Result<Self> {
        let mut m = Manifest::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(' ') {
                Some(("file", p)) => m.files.insert(PathBuf::from(p)),
                Some(("dir", p)) => m.dirs.insert(PathBuf::from(p)),
                _ => bail!(
                    "line {}: expected `file PATH` or `dir PATH`, found {line:?}",
                    n + 1
                ),
            };
        }
        Ok(m)
    }

    fn render(&self) -> String {
        let mut s = format!("{MANIFEST_HEADER}\n");
        for f in &self.files {
            s.push_str(&format!("file {}\n", f.display()));
        }
        for d in &self.dirs {
            s.push_str(&format!("dir {}\n", d.display()));
        }
        s
    }

    /// The manifest under `prefix`, or `None` if there is none.
    fn read(prefix: &Path) -> Result<Option<Self>> {
        let path = prefix.join(MANIFEST);
        match std::fs::read_to_string(&path) {
            Ok(text) => Manifest::parse(&text).map(Some).with_context(|| {
                format!(
                    "{} is damaged; fix or delete it (it lists what `cargo xtask install` put \
                     there)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

/// PREFIX made absolute (relative to the current directory), without `..` tricks.
fn absolute_prefix(prefix: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(prefix)
        .with_context(|| format!("cannot make --prefix {} absolute", prefix.display()))?;
    if abs
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        bail!(
            "--prefix {} contains `..`; give a plain absolute path",
            prefix.display()
        );
    }
    Ok(abs)
}

/// Where each shipped file goes under `prefix`.
fn layout(prefix: &Path, built: &Built) -> Result<Vec<Item>> {
    let root = util::workspace_root();
    let share = prefix.join("share");
    let doc = share.join("doc").join("netfn");
    let bin = prefix.join("bin").join("netfn");
    let mut items = vec![Item {
        dest: bin.clone(),
        source: Source::Copy(built.netfn.clone()),
        mode: 0o755,
    }];
    let template = std::fs::read_to_string(root.join(UNIT_TEMPLATE))
        .with_context(|| format!("cannot read {UNIT_TEMPLATE}"))?;
    let unit = unit_path(prefix);
    items.push(Item {
        dest: unit.clone(),
        source: Source::Text(package::render_unit(
            &template,
            &bin,
            &doc.join("agent.md"),
            &format!(
                "Installed by `cargo xtask install --prefix {}`; not enabled until you run\n  {}",
                prefix.display(),
                enable_command(&unit)
            ),
        )?),
        mode: 0o644,
    });
    for (file, dir) in [
        ("netfn.bash", "bash-completion/completions/netfn"),
        ("_netfn", "zsh/site-functions/_netfn"),
        ("netfn.fish", "fish/vendor_completions.d/netfn.fish"),
    ] {
        items.push(Item {
            dest: share.join(dir),
            source: Source::Copy(built.completions.join(file)),
            mode: 0o644,
        });
    }
    for page in &built.man_pages {
        let name = page.file_name().context("a man page without a name")?;
        items.push(Item {
            dest: share.join("man").join("man1").join(name),
            source: Source::Copy(page.clone()),
            mode: 0o644,
        });
    }
    for file in package::docs(&root)? {
        let name = file.file_name().context("a doc without a name")?;
        items.push(Item {
            dest: doc.join(name),
            source: Source::Copy(file.clone()),
            mode: 0o644,
        });
    }
    for file in package::files_in(&root.join("examples"), None)? {
        let name = file.file_name().context("an example without a name")?;
        items.push(Item {
            dest: doc.join("examples").join(name),
            source: Source::Copy(file.clone()),
            mode: 0o644,
        });
    }
    Ok(items)
}

/// Where the agent's unit goes under `prefix`.
fn unit_path(prefix: &Path) -> PathBuf {
    prefix.join("lib/systemd/system").join(UNIT_NAME)
}

/// True if systemd reads units from the directory of `unit`.
fn systemd_reads(unit: &Path) -> bool {
    SYSTEMD_UNIT_DIRS
        .iter()
        .any(|d| unit.parent() == Some(Path::new(d)))
}

/// How to enable the unit by hand: by name where systemd finds it, else by its full path
/// (which links it into /etc/systemd/system).
fn enable_command(unit: &Path) -> String {
    if systemd_reads(unit) {
        format!("systemctl daemon-reload && systemctl enable --now {UNIT_NAME}")
    } else {
        format!("systemctl enable --now {}", unit.display())
    }
}

/// Creates `dir` and its missing parents; returns those it created.
fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.exists())
        .map(Path::to_path_buf)
        .collect();
    for d in missing.iter().rev() {
        std::fs::create_dir(d).with_context(|| permission_hint("create", d))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot set the mode of {}", d.display()))?;
    }
    Ok(missing)
}

fn permission_hint(verb: &str, path: &Path) -> String {
    format!(
        "cannot {verb} {}; run as root (sudo cargo xtask …) or choose a --prefix you can write",
        path.display()
    )
}

/// Writes `item` through a temporary file and a rename (a running netfn is never overwritten
/// in place).
fn write_item(item: &Item) -> Result<()> {
    let tmp = item.dest.with_file_name(format!(
        ".{}.netfn-install",
        item.dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let result = (|| -> Result<()> {
        match &item.source {
            Source::Copy(from) => {
                std::fs::copy(from, &tmp).with_context(|| {
                    format!("cannot copy {} to {}", from.display(), tmp.display())
                })?;
            }
            Source::Text(text) => {
                let mut f =
                    std::fs::File::create(&tmp).with_context(|| permission_hint("create", &tmp))?;
                f.write_all(text.as_bytes())
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
            }
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(item.mode))
            .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
        std::fs::rename(&tmp, &item.dest)
            .with_context(|| format!("cannot move {} into place", item.dest.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// True if systemd is the running init (sd_booted(3)).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

pub fn install(args: InstallArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let prefix = absolute_prefix(&args.prefix)?;
    let built = package::build(args.profile)?;
    let build_time = started.elapsed();
    let copy_started = std::time::Instant::now();
    println!(
        "== installing netfn {} under {}",
        built.version,
        prefix.display()
    );
    let items = layout(&prefix, &built)?;
    let old = Manifest::read(&prefix)?;
    let previous = old.as_ref().map(|m| &m.files);

    // Someone else's file in the way: stop before changing anything.
    let foreign: Vec<&Path> = items
        .iter()
        .map(|i| i.dest.as_path())
        .filter(|d| d.symlink_metadata().is_ok() && previous.is_none_or(|p| !p.contains(*d)))
        .collect();
    if !foreign.is_empty() && !args.force {
        bail!(
            "these files exist and no install manifest ({}) lists them, so they are not from \
             `cargo xtask install`:\n  {}\nmove them away, or pass --force to overwrite them (then \
             uninstall removes them too)",
            prefix.join(MANIFEST).display(),
            foreign
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }

    let mut manifest = Manifest {
        files: BTreeSet::new(),
        dirs: old.as_ref().map(|m| m.dirs.clone()).unwrap_or_default(),
    };
    // Directories recorded earlier but gone since are not ours to remember.
    manifest.dirs.retain(|d| d.is_dir());
    let manifest_path = prefix.join(MANIFEST);
    let mut dirs: Vec<&Path> = items.iter().filter_map(|i| i.dest.parent()).collect();
    dirs.extend(manifest_path.parent());
    for dir in dirs {
        manifest.dirs.extend(create_dirs(dir)?);
    }
    let (mut replaced, mut added) = (0, 0);
    for item in &items {
        if item.dest.symlink_metadata().is_ok() {
            replaced += 1;
        } else {
            added += 1;
        }
        write_item(item)?;
        manifest.files.insert(item.dest.clone());
    }
    // Written after every file: a failed install leaves the old manifest, which still lists
    // what the earlier install put there.
    let stale: Vec<PathBuf> = old
        .map(|m| m.files.difference(&manifest.files).cloned().collect())
        .unwrap_or_default();
    write_item(&Item {
        dest: manifest_path.clone(),
        source: Source::Text(manifest.render()),
        mode: 0o644,
    })?;
    for file in &stale {
        match std::fs::remove_file(file) {
            Ok(()) => println!(
                "removed {} (an earlier install's, no longer shipped)",
                file.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => println!("WARNING: cannot remove {}: {e}", file.display()),
        }
    }
    println!(
        "installed {} files ({added} new, {replaced} replaced) in {:.1} s (after {:.1} s of \
         building); manifest {}",
        items.len(),
        copy_started.elapsed().as_secs_f64(),
        build_time.as_secs_f64(),
        manifest_path.display()
    );
    let bin = prefix.join("bin").join("netfn");
    println!("  {}", bin.display());
    let unit = unit_path(&prefix);
    println!("  {}", unit.display());
    println!(
        "  completions for bash, zsh and fish; {} man pages (man netfn); docs and examples in {}",
        built.man_pages.len(),
        prefix.join("share/doc/netfn").display()
    );
    path_note(&bin);
    if !systemd_reads(&unit) {
        println!(
            "NOTE: systemd does not read units from {}; --enable (or `{}`) links it",
            unit.parent().unwrap_or(&prefix).display(),
            enable_command(&unit)
        );
    }
    if args.enable {
        enable(&unit)?;
    } else {
        println!(
            "the agent's unit is not enabled; to run it under systemd: {} (or install with \
             --enable)",
            enable_command(&unit)
        );
    }
    Ok(())
}

/// Says so when `netfn` on PATH is not `bin` (missing, or another one first).
fn path_note(bin: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    match crate::ebpf::find_in(&path, "netfn") {
        Some(found) if found == bin => {}
        Some(found) => println!(
            "NOTE: `netfn` on this shell's PATH is {}, not {}",
            found.display(),
            bin.display()
        ),
        None => println!(
            "NOTE: {} is not on this shell's PATH; add it, or run {}",
            bin.parent().unwrap_or(bin).display(),
            bin.display()
        ),
    }
}

fn enable(unit: &Path) -> Result<()> {
    if !systemd_running() {
        bail!(
            "--enable: systemd is not running on this machine (no /run/systemd/system), so the \
             unit cannot be enabled; netfn is installed: start the agent with `netfn agent`, or \
             enable {} on a machine that runs systemd",
            unit.display()
        );
    }
    util::run(Command::new("systemctl").arg("daemon-reload"))?;
    let target = if systemd_reads(unit) {
        UNIT_NAME.to_string()
    } else {
        unit.display().to_string()
    };
    util::run(Command::new("systemctl").args(["enable", "--now", &target]))?;
    println!("enabled and started {UNIT_NAME}");
    Ok(())
}

/// Stops and disables the agent's unit if systemd runs it from `unit` (the installed file),
/// so no enable link points at a removed file.
fn disable_if_ours(unit: &Path) -> Result<()> {
    if !systemd_running() {
        return Ok(());
    }
    let out = Command::new("systemctl")
        .args(["show", "--property=FragmentPath", "--value", UNIT_NAME])
        .output()
        .context("cannot run systemctl show")?;
    let fragment = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if Path::new(&fragment) != unit {
        return Ok(());
    }
    util::run(Command::new("systemctl").args(["disable", "--now", UNIT_NAME]))?;
    println!("stopped and disabled {UNIT_NAME}");
    Ok(())
}

pub fn uninstall(args: UninstallArgs) -> Result<()> {
    let prefix = absolute_prefix(&args.prefix)?;
    let manifest_path = prefix.join(MANIFEST);
    let Some(manifest) = Manifest::read(&prefix)? else {
        println!(
            "nothing to uninstall under {}: no {} (was netfn installed with `cargo xtask install \
             --prefix {}`?)",
            prefix.display(),
            manifest_path.display(),
            prefix.display()
        );
        return Ok(());
    };
    let unit = unit_path(&prefix);
    if manifest.files.contains(&unit) {
        disable_if_ours(&unit)?;
    }
    let mut errors = Vec::new();
    let mut removed = 0;
    for file in &manifest.files {
        match std::fs::remove_file(file) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("cannot remove {}: {e}", file.display())),
        }
    }
    if !errors.is_empty() {
        // The manifest stays, so a second uninstall (as root, say) can finish.
        bail!(
            "{}\n{removed} files removed; fix the above (root?) and run `cargo xtask uninstall \
             --prefix {}` again",
            errors.join("\n"),
            prefix.display()
        );
    }
    // Deepest first; a directory that holds something else stays. The manifest's own
    // directories go last, once it is clear whether the manifest must stay.
    let mut dirs: Vec<&PathBuf> = manifest.dirs.iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    let (holding_manifest, others): (Vec<&PathBuf>, Vec<&PathBuf>) =
        dirs.into_iter().partition(|d| manifest_path.starts_with(d));
    let mut kept = BTreeSet::new();
    let mut dirs_removed = 0;
    let mut remove_dir = |dir: &Path, kept: &mut BTreeSet<PathBuf>| match std::fs::remove_dir(dir) {
        Ok(()) => dirs_removed += 1,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            kept.insert(dir.to_path_buf());
        }
        Err(e) => errors.push(format!("cannot remove {}: {e}", dir.display())),
    };
    for dir in others {
        remove_dir(dir, &mut kept);
    }
    if kept.is_empty() {
        std::fs::remove_file(&manifest_path)
            .with_context(|| format!("cannot remove {}", manifest_path.display()))?;
        for dir in holding_manifest {
            remove_dir(dir, &mut kept);
        }
    } else {
        // Directories install created still hold someone else's files: the manifest keeps
        // them (and its own), so a later uninstall finishes once they are empty.
        kept.extend(holding_manifest.into_iter().cloned());
        let rest = Manifest {
            files: BTreeSet::new(),
            dirs: kept.clone(),
        };
        write_item(&Item {
            dest: manifest_path.clone(),
            source: Source::Text(rest.render()),
            mode: 0o644,
        })?;
    }
    if manifest.files.contains(&unit) && systemd_running() {
        util::run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    println!(
        "uninstalled netfn from {}: {removed} files and {dirs_removed} directories removed",
        prefix.display()
    );
    if !kept.is_empty() {
        println!(
            "kept directories that hold files install did not put there (the manifest still \
             lists them; uninstall again once they are empty): {}",
            kept.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_rejects_garbage() {
        let mut m = Manifest::default();
        m.files.insert("/p/bin/netfn".into());
        m.files.insert("/p/share/man/man1/netfn up.1".into());
        m.dirs.insert("/p/share/netfn".into());
        let text = m.render();
        assert!(text.starts_with("# netfn install manifest"));
        assert_eq!(Manifest::parse(&text).expect("parses"), m);
        assert!(Manifest::parse("rm -rf /\n").is_err());
    }

    #[test]
    fn prefix_must_not_climb() {
        assert!(absolute_prefix(Path::new("/usr/local/../../etc")).is_err());
        assert_eq!(
            absolute_prefix(Path::new("/opt/netfn")).expect("absolute"),
            PathBuf::from("/opt/netfn")
        );
    }

    #[test]
    fn create_dirs_reports_what_it_made() {
        let base = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("base");
        let made = create_dirs(&base.join("a/b")).expect("create");
        assert_eq!(made, vec![base.join("a/b"), base.join("a")]);
        assert!(create_dirs(&base.join("a/b")).expect("again").is_empty());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
