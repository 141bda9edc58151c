//! The userspace endpoint's process contract: one process per WireGuard function (`netfn
//! wireguard-endpoint --chain C --function F`, started by `up` through the seam's `process`),
//! its interface name (unique on the host, as its UAPI socket is) and the files it keeps beside
//! the chain's record. What runs in that process is [`super::dataplane`] (feature
//! `userspace-wireguard`).

use netfn_core::chain::processes;

/// The interface name of function `function` of `chain`: unique on the host (the UAPI socket's
/// directory is shared by every namespace), at most 15 bytes.
pub fn interface_name(chain: &str, function: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in chain.bytes().chain([b'/']).chain(function.bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("nfwg{h:08x}")
}

/// The arguments of the netfn binary that runs the endpoint of `function` in `chain`.
pub fn args(chain: &str, function: &str) -> Vec<String> {
    [
        "wireguard-endpoint",
        "--chain",
        chain,
        "--function",
        function,
    ]
    .map(String::from)
    .to_vec()
}

/// The file that says how the running endpoint does its I/O: the offloads it has on its TUN and
/// the buffers its UDP socket got (`netfn status` shows it).
pub fn io_file(chain: &str, function: &str) -> std::path::PathBuf {
    processes::state_file(chain, function, "io")
}
