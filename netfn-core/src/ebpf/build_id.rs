//! The build id of an eBPF object: 16 hex digits of the BLAKE2s of its bytes. Shared by the
//! build script (the embedded object's id, computed once when it is embedded) and the runtime
//! (an object named by `NETFN_EBPF_OBJECT`).

/// The id of the object `bytes`.
pub fn build_id(bytes: &[u8]) -> String {
    use blake2::{Blake2s256, Digest};
    Blake2s256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
