//! Rebuild the eBPF object when bpf-linker changes.
//!
//! The build uses the `bpf-linker` binary found on PATH, a dependency cargo cannot see: this
//! makes the binary's mtime part of the crate's fingerprint (as the aya template does).

fn main() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(linker) = std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.is_file())
    {
        println!("cargo::rerun-if-changed={}", linker.display());
    }
    println!("cargo::rerun-if-changed=build.rs");
}
