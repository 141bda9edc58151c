//! Test kernels: Debian `linux-image-*-amd64` packages, fetched with `apt-get download` (never
//! installed on the host), unpacked with `dpkg-deb -x` under `target/vm/kernels/<release>/`, with
//! a `modules.dep` written by `depmod -b`. A kernel that is already there is not fetched again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::tools;
use crate::util;

/// Written last into a kernel's directory: its presence means the unpack is complete.
const COMPLETE: &str = ".netfn-complete";

/// An unpacked kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// What was asked for on the command line (`6.1`).
    pub spec: String,
    /// The Debian package it came from (`linux-image-6.1.0-57-amd64`).
    pub package: String,
    /// `uname -r` of the kernel (`6.1.0-57-amd64`).
    pub release: String,
    /// `target/vm/kernels/<release>`.
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// The release in a package name, for the plain amd64 flavour of a versioned image package:
/// `linux-image-6.1.0-57-amd64` -> `6.1.0-57-amd64`; `None` for meta packages (`…-6.12-amd64`),
/// other flavours (`cloud`, `rt`) and `-unsigned`/`-dbg` packages.
fn release_of(package: &str) -> Option<&str> {
    let release = package.strip_prefix("linux-image-")?;
    let core = release.strip_suffix("-amd64")?;
    let versioned = core.starts_with(|c: char| c.is_ascii_digit()) && core.contains(['-', '+']);
    let plain = !core.ends_with("-cloud") && !core.ends_with("-rt");
    (versioned && plain).then_some(release)
}

/// `6.1` selects `6.1.0-57-amd64` but not `6.12.117+deb12-amd64`: a prefix that ends at a
/// component boundary.
fn matches(spec: &str, release: &str) -> bool {
    release
        .strip_prefix(spec)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Numeric components, to pick the newest of several matching releases.
fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Packages apt knows (`apt-cache search`), as (release, package), newest first.
fn apt_kernels() -> Result<Vec<(String, String)>> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", "^linux-image-[0-9].*-amd64$"])
        .output()
        .context("cannot run apt-cache")?;
    if !out.status.success() {
        bail!(
            "apt-cache search failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|pkg| release_of(pkg).map(|r| (r.to_string(), pkg.to_string())))
        .collect();
    found.sort_by_key(|(release, _)| std::cmp::Reverse(version_key(release)));
    found.dedup();
    Ok(found)
}

/// Kernels already unpacked under `dir`, newest first.
fn cached_kernels(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(COMPLETE).is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    found.sort_by_key(|r| std::cmp::Reverse(version_key(r)));
    found
}

/// Prints the kernels apt offers (newest of each series) and those already cached.
pub fn list(dir: &Path) -> Result<()> {
    let mut series: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (release, package) in apt_kernels()? {
        let key: Vec<&str> = release.splitn(3, ['.', '-', '+']).take(2).collect();
        series
            .entry(key.join("."))
            .or_insert((release.clone(), package.clone()));
    }
    println!("kernels apt can fetch (newest of each series; select with --kernel SERIES):");
    for (key, (release, package)) in &series {
        println!("  {key:<6} {release:<26} {package}");
    }
    println!("kernels cached in {}:", dir.display());
    for release in cached_kernels(dir) {
        println!("  {release}");
    }
    Ok(())
}

/// Finds the newest kernel matching `spec`, and fetches and unpacks it unless it is cached.
pub fn ensure(spec: &str, dir: &Path) -> Result<Kernel> {
    let spec = spec.trim().trim_start_matches("linux-image-");
    let mut candidates = apt_kernels()?;
    if !candidates.iter().any(|(r, _)| matches(spec, r)) && tools::is_root() {
        println!("vm-test: no kernel {spec} in apt's lists; running apt-get update");
        util::run(Command::new("apt-get").arg("update"))?;
        candidates = apt_kernels()?;
    }
    let kernel = match candidates.into_iter().find(|(r, _)| matches(spec, r)) {
        Some((release, package)) => Kernel {
            spec: spec.to_string(),
            root: dir.join(&release),
            package,
            release,
        },
        None => match cached_kernels(dir).into_iter().find(|r| matches(spec, r)) {
            Some(release) => {
                println!("vm-test: apt offers no kernel {spec}; using the cached {release}");
                Kernel {
                    spec: spec.to_string(),
                    root: dir.join(&release),
                    package: format!("linux-image-{release}"),
                    release,
                }
            }
            None => bail!(
                "no Debian kernel package matches {spec:?} (`cargo xtask vm-test --list-kernels` \
                 shows what apt offers)"
            ),
        },
    };
    if kernel.root.join(COMPLETE).is_file() {
        println!(
            "vm-test: kernel {spec}: {} (cached in {})",
            kernel.release,
            kernel.root.display()
        );
    } else {
        fetch(&kernel, dir)?;
    }
    for path in [kernel.vmlinuz(), kernel.modules_dir()] {
        if !path.exists() {
            bail!(
                "{} is missing: delete {} to fetch the kernel again",
                path.display(),
                kernel.root.display()
            );
        }
    }
    Ok(kernel)
}

/// apt-get download, dpkg-deb -x, depmod; the directory only gets its final name when complete.
fn fetch(kernel: &Kernel, dir: &Path) -> Result<()> {
    let partial = dir.join(format!("{}.partial", kernel.release));
    let download = dir.join(format!("{}.download", kernel.release));
    for d in [&partial, &download] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("cannot remove {}", d.display()))?;
        }
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    println!(
        "vm-test: kernel {}: downloading {} (apt-get download, not installed on the host)",
        kernel.spec, kernel.package
    );
    let mut apt = Command::new("apt-get");
    if tools::is_root() {
        // apt's sandbox user cannot write into target/; root downloads directly, quietly.
        apt.args(["-o", "APT::Sandbox::User=root"]);
    }
    util::run(
        apt.args(["-q", "download", &kernel.package])
            .current_dir(&download),
    )
    .context("cannot download the kernel package (`apt-get update` may help)")?;
    let deb = fs::read_dir(&download)
        .with_context(|| format!("cannot read {}", download.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?;
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    // Newer packages put modules under usr/lib/modules; depmod -b looks in lib/modules.
    if !partial.join("lib/modules").exists() && partial.join("usr/lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", partial.join("lib"))
            .context("cannot link lib -> usr/lib")?;
    }
    println!("vm-test: depmod for {}", kernel.release);
    util::run(
        Command::new("depmod")
            .arg("-b")
            .arg(&partial)
            .arg(&kernel.release),
    )?;
    fs::write(partial.join(COMPLETE), &kernel.package)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    if kernel.root.exists() {
        fs::remove_dir_all(&kernel.root)
            .with_context(|| format!("cannot remove {}", kernel.root.display()))?;
    }
    fs::rename(&partial, &kernel.root).with_context(|| {
        format!(
            "cannot rename {} to {}",
            partial.display(),
            kernel.root.display()
        )
    })?;
    fs::remove_dir_all(&download).with_context(|| format!("cannot remove {}", download.display()))
}

/// One module to ship: where it is on the host, where it goes in the guest.
#[derive(Debug, Clone, PartialEq)]
pub struct Module {
    /// `vxlan`, with `-` written `_`.
    pub name: String,
    /// Path under the modules directory in the guest, uncompressed (`kernel/…/vxlan.ko`).
    pub rel: String,
    /// Its dependencies' `rel` paths, as in modules.dep.
    pub deps: Vec<String>,
    /// The file on the host (possibly `.ko.xz`).
    pub src: PathBuf,
}

impl Module {
    /// The module's bytes, decompressed when the package ships `.ko.xz`, `.ko.zst` or `.ko.gz`
    /// (busybox insmod reads plain ELF).
    pub fn contents(&self) -> Result<Vec<u8>> {
        let name = self.src.to_string_lossy();
        let tool = if name.ends_with(".xz") {
            "xz"
        } else if name.ends_with(".zst") {
            "zstd"
        } else if name.ends_with(".gz") {
            "gzip"
        } else {
            return fs::read(&self.src)
                .with_context(|| format!("cannot read {}", self.src.display()));
        };
        let out = Command::new(tool)
            .arg("-dc")
            .arg(&self.src)
            .output()
            .with_context(|| format!("cannot run {tool} to decompress {name}"))?;
        if !out.status.success() {
            bail!(
                "{tool} -dc {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    }
}

/// The modules to ship, in load order (dependencies first), and what was not shipped.
#[derive(Debug, Default)]
pub struct ModulePlan {
    pub load: Vec<Module>,
    /// Asked for, but built into the kernel: nothing to load.
    pub builtin: Vec<String>,
    /// Asked for, but this kernel has no such module.
    pub missing: Vec<String>,
}

/// `kernel/net/sched/cls-bpf.ko.xz` -> (`cls_bpf`, `kernel/net/sched/cls-bpf.ko`).
fn module_name(path: &str) -> (String, String) {
    let rel = [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| path.strip_suffix(ext))
        .unwrap_or(path);
    let file = rel.rsplit('/').next().unwrap_or(rel);
    let name = file.strip_suffix(".ko").unwrap_or(file).replace('-', "_");
    (name, rel.to_string())
}

/// Resolves `wanted` against modules.dep and modules.builtin of `kernel`.
pub fn plan_modules(kernel: &Kernel, wanted: &[String]) -> Result<ModulePlan> {
    let dir = kernel.modules_dir();
    let dep_file = dir.join("modules.dep");
    let dep = fs::read_to_string(&dep_file)
        .with_context(|| format!("cannot read {}", dep_file.display()))?;
    // modules.builtin is optional: a kernel without it simply builds nothing in.
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    plan_from(&dep, &builtin, &dir, wanted)
}

fn plan_from(dep: &str, builtin: &str, dir: &Path, wanted: &[String]) -> Result<ModulePlan> {
    // name -> (path as in modules.dep, dependency paths)
    let mut table: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let deps = deps.split_whitespace().map(str::to_string).collect();
        table.insert(module_name(path).0, (path.to_string(), deps));
    }
    let builtin: BTreeSet<String> = builtin.lines().map(|l| module_name(l).0).collect();

    let mut plan = ModulePlan::default();
    let mut seen = BTreeSet::new();
    for want in wanted {
        let want = want.replace('-', "_");
        if table.contains_key(&want) {
            visit(&want, &table, dir, &mut seen, &mut plan.load)?;
        } else if builtin.contains(&want) {
            plan.builtin.push(want);
        } else {
            plan.missing.push(want);
        }
    }
    Ok(plan)
}

/// Depth-first: dependencies are pushed before the module that needs them.
fn visit(
    name: &str,
    table: &BTreeMap<String, (String, Vec<String>)>,
    dir: &Path,
    seen: &mut BTreeSet<String>,
    out: &mut Vec<Module>,
) -> Result<()> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let (path, deps) = table
        .get(name)
        .with_context(|| format!("modules.dep names {name} as a dependency but has no entry"))?;
    for dep in deps {
        visit(&module_name(dep).0, table, dir, seen, out)?;
    }
    out.push(Module {
        name: name.to_string(),
        rel: module_name(path).1,
        deps: deps.iter().map(|d| module_name(d).1).collect(),
        src: dir.join(path),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_from_package_names() {
        assert_eq!(
            release_of("linux-image-6.1.0-57-amd64"),
            Some("6.1.0-57-amd64")
        );
        assert_eq!(
            release_of("linux-image-6.12.117+deb12-amd64"),
            Some("6.12.117+deb12-amd64")
        );
        for other in [
            "linux-image-6.12-amd64",
            "linux-image-amd64",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-6.12.117+deb12-rt-amd64",
            "linux-image-6.1.0-57-amd64-unsigned",
            "linux-image-6.1.0-57-amd64-dbg",
        ] {
            assert_eq!(release_of(other), None, "{other}");
        }
    }

    #[test]
    fn prefixes_stop_at_a_component() {
        assert!(matches("6.1", "6.1.0-57-amd64"));
        assert!(!matches("6.1", "6.12.117+deb12-amd64"));
        assert!(matches("6.12", "6.12.117+deb12-amd64"));
        assert!(matches("6.12.117", "6.12.117+deb12-amd64"));
        assert!(matches("6.1.0-57-amd64", "6.1.0-57-amd64"));
        assert!(!matches("6.2", "6.1.0-57-amd64"));
    }

    #[test]
    fn newest_sorts_first() {
        let mut releases = ["6.1.0-47-amd64", "6.1.0-57-amd64", "6.1.0-9-amd64"];
        releases.sort_by_key(|r| std::cmp::Reverse(version_key(r)));
        assert_eq!(releases[0], "6.1.0-57-amd64");
        assert_eq!(releases[2], "6.1.0-9-amd64");
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let dep = "\
kernel/drivers/net/veth.ko.xz:
kernel/net/ipv4/udp_tunnel.ko.xz:
kernel/net/ipv6/ip6_udp_tunnel.ko.xz:
kernel/drivers/net/vxlan/vxlan.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz kernel/net/ipv6/ip6_udp_tunnel.ko.xz
kernel/drivers/net/wireguard/wireguard.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz kernel/net/ipv6/ip6_udp_tunnel.ko.xz
kernel/net/sched/sch-ingress.ko.xz:
";
        let builtin = "kernel/net/ipv6/ipv6.ko\n";
        let wanted: Vec<String> = [
            "vxlan",
            "wireguard",
            "veth",
            "sch_ingress",
            "ipv6",
            "netkit",
        ]
        .map(String::from)
        .to_vec();
        let plan = plan_from(dep, builtin, Path::new("/m"), &wanted).expect("plan");
        let names: Vec<&str> = plan.load.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "udp_tunnel",
                "ip6_udp_tunnel",
                "vxlan",
                "wireguard",
                "veth",
                "sch_ingress"
            ]
        );
        assert_eq!(plan.load[2].rel, "kernel/drivers/net/vxlan/vxlan.ko");
        assert_eq!(
            plan.load[2].deps,
            [
                "kernel/net/ipv4/udp_tunnel.ko",
                "kernel/net/ipv6/ip6_udp_tunnel.ko"
            ]
        );
        assert_eq!(
            plan.load[2].src,
            Path::new("/m/kernel/drivers/net/vxlan/vxlan.ko.xz")
        );
        assert_eq!(plan.builtin, ["ipv6"]);
        assert_eq!(plan.missing, ["netkit"]);
    }
}
