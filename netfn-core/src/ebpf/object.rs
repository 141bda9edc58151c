//! Where the eBPF object comes from: embedded at build time, or named at run time.

use std::borrow::Cow;
use std::path::PathBuf;

use super::EbpfError;

/// Environment variable naming an eBPF object to load instead of the embedded one.
pub const OBJECT_ENV: &str = "NETFN_EBPF_OBJECT";

/// The object netfn will load, as a description (for `--version`-style diagnostics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectSource {
    /// `NETFN_EBPF_OBJECT` names a file.
    Env(PathBuf),
    /// Embedded in the binary by netfn-core's build script.
    Embedded,
}

/// Which object netfn will load, or the "not built" error.
///
/// `NETFN_EBPF_OBJECT`, when set and not empty, wins over the embedded object: it is the
/// explicit choice (a freshly rebuilt object, without rebuilding netfn).
pub fn object_source() -> Result<ObjectSource, EbpfError> {
    if let Some(path) = std::env::var_os(OBJECT_ENV).filter(|p| !p.is_empty()) {
        return Ok(ObjectSource::Env(PathBuf::from(path)));
    }
    if embedded().is_some() {
        return Ok(ObjectSource::Embedded);
    }
    Err(EbpfError::ObjectNotBuilt)
}

/// The bytes of the eBPF object (see [`object_source`]).
pub(crate) fn object_bytes() -> Result<Cow<'static, [u8]>, EbpfError> {
    match object_source()? {
        ObjectSource::Env(path) => match std::fs::read(&path) {
            Ok(bytes) => Ok(Cow::Owned(bytes)),
            Err(source) => Err(EbpfError::ReadObject { path, source }),
        },
        ObjectSource::Embedded => embedded()
            .map(Cow::Borrowed)
            .ok_or(EbpfError::ObjectNotBuilt),
    }
}

#[cfg(netfn_ebpf_embedded)]
fn embedded() -> Option<&'static [u8]> {
    Some(aya::include_bytes_aligned!(env!("NETFN_EBPF_OBJECT_EMBED")))
}

#[cfg(not(netfn_ebpf_embedded))]
fn embedded() -> Option<&'static [u8]> {
    None
}

/// Which build of the eBPF object netfn loads (see [`object_source`]): its build id
/// ([`super::build_id`]; the embedded object's was computed when it was embedded). A chain's
/// record keeps the build its programs came from, so `netfn apply` knows when an upgraded netfn
/// has other programs than the running ones, and loads its own.
pub fn object_build() -> Result<String, EbpfError> {
    // The object is the same for the whole process: an object named by NETFN_EBPF_OBJECT is read
    // and hashed once, not once per chain that `status` or `apply` looks at.
    static BUILD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(build) = BUILD.get() {
        return Ok(build.clone());
    }
    let build = match object_source()? {
        ObjectSource::Env(_) => super::build_id::build_id(&object_bytes()?),
        ObjectSource::Embedded => embedded_build().ok_or(EbpfError::ObjectNotBuilt)?,
    };
    Ok(BUILD.get_or_init(|| build).clone())
}

#[cfg(netfn_ebpf_embedded)]
fn embedded_build() -> Option<String> {
    Some(env!("NETFN_EBPF_OBJECT_BUILD").to_string())
}

#[cfg(not(netfn_ebpf_embedded))]
fn embedded_build() -> Option<String> {
    None
}
