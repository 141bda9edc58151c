//! Embeds the eBPF object when it has been built (`cargo xtask build-ebpf`).
//!
//! If `<workspace>/netfn-ebpf/target/bpfel-unknown-none/release/netfn-ebpf-programs` exists, this
//! sets `--cfg netfn_ebpf_embedded` and `NETFN_EBPF_OBJECT_EMBED=<path>`, and
//! `NETFN_EBPF_OBJECT_BUILD=<its build id>` (see src/ebpf/build_id.rs), and
//! `netfn_core::ebpf` embeds it with `include_bytes!`. Otherwise the runtime looks at the
//! `NETFN_EBPF_OBJECT` environment variable and, failing that, says how to build the object.

use std::path::{Path, PathBuf};

#[path = "src/ebpf/build_id.rs"]
mod build_id;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(netfn_ebpf_embedded)");

    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let workspace = manifest_dir.parent().unwrap_or(&manifest_dir).to_path_buf();
    let ebpf_dir = workspace.join("netfn-ebpf");
    let object = ebpf_dir
        .join("target")
        .join("bpfel-unknown-none")
        .join("release")
        .join("netfn-ebpf-programs");

    if object.is_file() {
        println!("cargo::rerun-if-changed={}", object.display());
        println!("cargo::rustc-cfg=netfn_ebpf_embedded");
        println!(
            "cargo::rustc-env=NETFN_EBPF_OBJECT_EMBED={}",
            object.display()
        );
        match std::fs::read(&object) {
            Ok(bytes) => println!(
                "cargo::rustc-env=NETFN_EBPF_OBJECT_BUILD={}",
                build_id::build_id(&bytes)
            ),
            Err(e) => panic!("cannot read the eBPF object {}: {e}", object.display()),
        }
    } else {
        // Watch the nearest existing ancestor, so that building the object later reruns this
        // script (watching a missing file would rerun it on every build).
        let watch = object
            .ancestors()
            .skip(1)
            .take_while(|dir| dir.starts_with(&ebpf_dir))
            .find(|dir| dir.is_dir())
            .map_or_else(|| Path::new("build.rs").to_path_buf(), Path::to_path_buf);
        println!("cargo::rerun-if-changed={}", watch.display());
        println!(
            "cargo::warning=eBPF object not found at {}: netfn will need NETFN_EBPF_OBJECT at run \
             time (run `cargo xtask build-ebpf`, then rebuild netfn)",
            object.display()
        );
    }
    println!("cargo::rerun-if-changed=build.rs");
}
