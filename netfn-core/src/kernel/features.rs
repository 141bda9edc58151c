//! What this kernel can do, detected at run time (never assumed from the build machine).
//!
//! `netfn features` prints this; `up` refuses a fast-path mode the kernel cannot run, and the
//! integration tests skip (with the reason) what the kernel lacks.

use std::path::Path;

use serde::Serialize;

/// A kernel capability netfn cares about.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    /// Why it is (not) available, for people.
    pub detail: String,
}

/// The running kernel's release and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct KernelVersion(pub u32, pub u32);

impl KernelVersion {
    /// Parses "6.1.0-57-amd64" or "6.18.44-fc".
    pub fn parse(release: &str) -> Option<Self> {
        let mut parts = release.split(['.', '-']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(KernelVersion(major, minor))
    }

    pub fn running() -> Option<Self> {
        Self::parse(&kernel_release())
    }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn by_version(name: &'static str, need: KernelVersion, what: &str) -> Feature {
    let running = KernelVersion::running();
    let available = running.is_some_and(|v| v >= need);
    Feature {
        name,
        available,
        detail: format!(
            "{what} needs Linux {}.{}+; this kernel is {}",
            need.0,
            need.1,
            kernel_release()
        ),
    }
}

fn module_present(module: &str) -> (bool, String) {
    if Path::new("/sys/module").join(module).exists() {
        return (true, format!("module {module} is loaded (or built in)"));
    }
    let release = kernel_release();
    let dir = Path::new("/lib/modules").join(&release);
    let found = std::fs::read_to_string(dir.join("modules.dep")).is_ok_and(|dep| {
        dep.lines().any(|l| {
            l.split(':')
                .next()
                .and_then(|p| p.rsplit('/').next())
                .is_some_and(|f| f.split('.').next() == Some(module))
        })
    });
    if found {
        (true, format!("module {module} is available for {release}"))
    } else {
        (
            false,
            format!("this kernel ({release}) has no {module} module"),
        )
    }
}

/// Every feature netfn looks at.
pub fn detect() -> Vec<Feature> {
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let (wg, wg_detail) = module_present("wireguard");
    vec![
        Feature {
            name: "btf",
            available: btf,
            detail: if btf {
                "/sys/kernel/btf/vmlinux is present".into()
            } else {
                "no /sys/kernel/btf/vmlinux: the kernel was built without BTF".into()
            },
        },
        by_version(
            "tc-redirect-peer",
            KernelVersion(5, 10),
            "bpf_redirect_peer",
        ),
        by_version("tcx", KernelVersion(6, 6), "TCX (bpf_link based TC attach)"),
        by_version(
            "xdp-veth",
            KernelVersion(5, 9),
            "XDP redirect between veths",
        ),
        Feature {
            name: "wireguard-kernel",
            available: wg,
            detail: wg_detail,
        },
    ]
}

/// One feature by name.
pub fn get(name: &str) -> Option<Feature> {
    detect().into_iter().find(|f| f.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse_and_compare() {
        assert_eq!(
            KernelVersion::parse("6.1.0-57-amd64"),
            Some(KernelVersion(6, 1))
        );
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v669"),
            Some(KernelVersion(6, 18))
        );
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert!(KernelVersion(6, 1) < KernelVersion(6, 6));
        assert!(KernelVersion(6, 12) > KernelVersion(6, 6));
    }
}
