//! What the kinds that track connections (firewall, load balancer) share about the kernel's
//! connection tracking: in kernel mode their timeouts become the `nf_conntrack_*` sysctls of
//! the function's namespace (per-namespace in Linux), which bound what validation accepts.

/// Longest conntrack timeout, in seconds: the `nf_conntrack_*_timeout` sysctls take at most
/// `INT_MAX` jiffies (`proc_dointvec_jiffies`: `INT_MAX / HZ` seconds); this holds for HZ up to
/// 1000.
pub const MAX_TIMEOUT: u32 = (i32::MAX / 1000) as u32;

/// What is wrong with conntrack timeout `name` set to `seconds`, if anything: the message and
/// its hint (validation of either kind's `conntrack` table).
pub fn timeout_problem(name: &str, seconds: u32) -> Option<(String, String)> {
    if seconds == 0 {
        Some((
            format!("conntrack {name} timeout is 0"),
            "timeouts are in seconds and at least 1".to_string(),
        ))
    } else if seconds > MAX_TIMEOUT {
        Some((
            format!("conntrack {name} timeout {seconds} s is too long"),
            format!(
                "use at most {MAX_TIMEOUT} s (24.8 days): the kernel's conntrack timeouts hold \
                 at most 2^31-1 jiffies"
            ),
        ))
    } else {
        None
    }
}

/// The TCP states after a FIN from one side only (the other may go on sending): the kinds'
/// `tcp_half_closed` timeout is each of these.
pub const HALF_CLOSED_STATES: [&str; 2] = ["tcp_timeout_fin_wait", "tcp_timeout_close_wait"];

/// The TCP states after a FIN from each side, or an RST: the kinds' `tcp_closing` timeout is
/// each of these.
pub const CLOSING_STATES: [&str; 3] = [
    "tcp_timeout_last_ack",
    "tcp_timeout_time_wait",
    "tcp_timeout_close",
];

/// The sysctl (path under /proc/sys) and value of conntrack timeout `name` (as
/// `tcp_timeout_established`) at `seconds`.
pub fn timeout_sysctl(name: &str, seconds: u32) -> (String, String) {
    (
        format!("net/netfilter/nf_conntrack_{name}"),
        seconds.to_string(),
    )
}
