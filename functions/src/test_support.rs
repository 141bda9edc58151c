//! Helpers for the kinds' unit tests.

use std::path::Path;

use netfn_core::function::HostNames;
use netfn_core::spec::diag::Diagnostic;

/// What `netfn validate` reports for the chain file `path` (relative paths in it start from
/// its directory) whose one function, `fn1`, is of `kind` with `body`: its ingress is
/// 10.1.0.2/24, its egress 10.2.0.2/24, and the function's table starts at line 10.
pub fn diagnostics(path: &Path, kind: &str, body: &str) -> Vec<Diagnostic> {
    diagnostics_with(path, kind, body, &HostNames::unresolved())
}

/// [`diagnostics`], with host names looked up by `names`.
pub fn diagnostics_with(path: &Path, kind: &str, body: &str, names: &HostNames) -> Vec<Diagnostic> {
    match parse(path, kind, body, names) {
        Ok(_) => Vec::new(),
        Err(found) => found.iter().cloned().collect(),
    }
}

/// The warnings of [`diagnostics_with`]'s file, when it has no error.
pub fn warnings_with(path: &Path, kind: &str, body: &str, names: &HostNames) -> Vec<Diagnostic> {
    parse(path, kind, body, names)
        .map(|file| file.warnings.iter().cloned().collect())
        .unwrap_or_default()
}

/// The checked configuration of [`diagnostics`]'s function, when it has no problem.
pub fn config<T: netfn_core::function::FunctionConfig + Clone>(
    path: &Path,
    kind: &str,
    body: &str,
) -> Option<T> {
    config_with(path, kind, body, &HostNames::unresolved())
}

/// [`config`], with host names looked up by `names`.
pub fn config_with<T: netfn_core::function::FunctionConfig + Clone>(
    path: &Path,
    kind: &str,
    body: &str,
    names: &HostNames,
) -> Option<T> {
    let file = parse(path, kind, body, names).ok()?;
    let function = file.chains.first()?.functions.first()?;
    function.config.downcast_ref::<T>().cloned()
}

fn parse(
    path: &Path,
    kind: &str,
    body: &str,
    names: &HostNames,
) -> Result<netfn_core::spec::ChainFile, netfn_core::spec::diag::Diagnostics> {
    let text = format!(
        "[[chain]]\nname = \"c\"\n[chain.ingress]\naddress = \"10.1.0.2/24\"\n\
         [chain.egress]\naddress = \"10.2.0.2/24\"\n[[chain.function]]\nname = \"fn1\"\n\
         kind = \"{kind}\"\n{body}"
    );
    netfn_core::spec::parse_with(path, &text, &crate::registry(), names)
}
