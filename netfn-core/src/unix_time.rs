//! The wall clock as netfn's records, status rows and metrics give it: whole seconds since the
//! Unix epoch (as WireGuard's handshake times are).

/// Seconds since the Unix epoch now (0 on a clock set before 1970).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
