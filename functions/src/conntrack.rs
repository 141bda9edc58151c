//! What the kinds that track connections (firewall, load balancer) share about the kernel's
//! connection tracking: in kernel mode their timeouts become the `nf_conntrack_*` sysctls of
//! the function's namespace (per-namespace in Linux), which bound what validation accepts. Both
//! read their `conntrack` table with [`read`].

use netfn_core::function::{Fields, Problems, Want};

/// Longest conntrack timeout, in seconds: the `nf_conntrack_*_timeout` sysctls take at most
/// `INT_MAX` jiffies (`proc_dointvec_jiffies`: `INT_MAX / HZ` seconds); this holds for HZ up to
/// 1000.
pub const MAX_TIMEOUT: u32 = (i32::MAX / 1000) as u32;

/// Largest connection table a function may ask for.
pub const MAX_SIZE: u32 = 16 << 20;

/// How `conntrack` is written, for a value that is not a table.
pub const TABLE: Want = Want {
    what: "a table of the connection table's size and timeouts",
    example: "{ size = 65536, udp = 30 }",
};
const SIZE: Want = Want {
    what: "a whole number from 1 to 16777216",
    example: "65536",
};
const _: () = assert!(MAX_SIZE == 16_777_216);
const SECONDS: Want = Want {
    what: "a whole number of seconds",
    example: "30",
};

/// Reads a kind's `conntrack` table: `size` (1 to [`MAX_SIZE`]) and the `timeouts` (each a key
/// and where its value goes), each reported at its own key when wrong. What is absent or wrong
/// keeps the value it had (the default); the table's other keys are unknown.
pub fn read(
    mut table: Fields<'_>,
    size: &mut u32,
    timeouts: &mut [(&'static str, &mut u32)],
    out: &mut Problems,
) {
    if let Some(v) = table.integer("size", SIZE, out) {
        match u32::try_from(*v.get_ref()) {
            Ok(n) if (1..=MAX_SIZE).contains(&n) => *size = n,
            _ => out.wrong_at(v.span(), "size", SIZE, v.get_ref()),
        }
    }
    for (name, value) in timeouts.iter_mut() {
        let Some(v) = table.integer(name, SECONDS, out) else {
            continue;
        };
        match timeout_problem(name, *v.get_ref()) {
            Some((message, hint)) => out.error(v.span(), message, hint),
            None => **value = *v.get_ref() as u32,
        }
    }
    table.finish(out);
}

/// What is wrong with conntrack timeout `name` set to `seconds`, if anything: the message and
/// its hint.
fn timeout_problem(name: &str, seconds: i64) -> Option<(String, String)> {
    if seconds <= 0 {
        Some((
            format!("conntrack {name} timeout is {seconds}"),
            "timeouts are in seconds and at least 1".to_string(),
        ))
    } else if seconds > i64::from(MAX_TIMEOUT) {
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
