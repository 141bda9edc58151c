//! Datagrams a tunnel endpoint's UDP socket dropped because its receive buffer was full: the
//! `drops` column of /proc/net/udp and udp6 for the sockets bound to the tunnel's port, in the
//! endpoint's namespace. A TCP rate through a tunnel depends on this loss as much as on CPU: a
//! receiver whose socket overflows makes the sender back off (Debian's wireguard-go keeps the
//! kernel's default buffer, net.core.rmem_default).

use anyhow::{Context, Result};

use crate::bench::chain::in_netns;

/// Drops so far of the UDP sockets bound to `port` in namespace `ns`, IPv4 and IPv6 together.
pub(super) fn now(ns: &str, port: u16) -> Result<u64> {
    in_netns(ns, || {
        let mut total = 0;
        for table in ["udp", "udp6"] {
            // thread-self: this thread is the one in `ns` (/proc/self/net is the main thread's).
            let file = format!("/proc/thread-self/net/{table}");
            let text = std::fs::read_to_string(&file).with_context(|| format!("read {file}"))?;
            total += bound_to(&text, port).with_context(|| format!("{file} in {ns}"))?;
        }
        Ok(total)
    })
}

/// The summed `drops` of the sockets in a /proc/net/udp(6) `table` whose local port is `port`.
fn bound_to(table: &str, port: u16) -> Result<u64> {
    let mut total = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(drops)) = (fields.get(1), fields.last()) else {
            continue;
        };
        let local_port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            .with_context(|| format!("odd local address {local}"))?;
        if local_port == port {
            total += drops
                .parse::<u64>()
                .with_context(|| format!("odd drops count {drops}"))?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of /proc/net/udp6 from this kernel (6.18): wireguard-go's dual-stack socket on
    /// 51820 (0xCA6C) with drops, and another socket.
    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1043: 00000000000000000000000000000000:CA6C 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123456 2 0000000000000000 48895
 2211: 00000000000000000000000000000000:2457 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123457 2 0000000000000000 7
";

    #[test]
    fn sums_the_drops_of_the_port_only() {
        assert_eq!(bound_to(UDP6, 51820).ok(), Some(48895));
        assert_eq!(bound_to(UDP6, 9303).ok(), Some(7));
        assert_eq!(bound_to(UDP6, 1).ok(), Some(0));
        assert!(bound_to("header\n 1: nonsense 0 0\n", 1).is_err());
    }
}
