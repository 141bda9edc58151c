//! iperf3 as a cross-check of our own generator: TCP throughput and UDP pps.

use super::*;

/// Where an iperf3 test runs: the client's and the server's namespaces and the addresses they
/// bind, and the server's port.
pub(in crate::bench) struct IperfPath<'a> {
    pub(in crate::bench) src_ns: &'a str,
    pub(in crate::bench) src_addr: Ipv4Addr,
    pub(in crate::bench) dst_ns: &'a str,
    pub(in crate::bench) dst_addr: Ipv4Addr,
    pub(in crate::bench) port: u16,
}

impl<'a> IperfPath<'a> {
    fn of(t: &'a Topology) -> Self {
        IperfPath {
            src_ns: &t.src_ns,
            src_addr: t.src_addr,
            dst_ns: &t.dst_ns,
            dst_addr: t.dst_addr,
            port: IPERF_PORT,
        }
    }
}

/// An iperf3 server in the sink's namespace for one test (`-1`); killed on drop if still there.
pub(super) struct IperfServer(Child);

impl IperfServer {
    fn start(p: &IperfPath) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", p.dst_ns, "iperf3", "-s", "-1", "-p"])
            .arg(p.port.to_string())
            .arg("-B")
            .arg(p.dst_addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 -s")?;
        let server = IperfServer(child);
        // Wait until it listens.
        let start = Instant::now();
        loop {
            let ss = ip(&["netns", "exec", p.dst_ns, "ss", "-Hltn"])?;
            if ss.contains(&format!(":{}", p.port)) {
                return Ok(server);
            }
            if start.elapsed() > Duration::from_secs(5) {
                bail!("iperf3 server did not start");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

pub(super) fn iperf_client(
    t: &Topology,
    extra: &[&str],
    seconds: f64,
) -> Result<serde_json::Value> {
    iperf_on(&IperfPath::of(t), extra, seconds)
}

/// One iperf3 test (`iperf3 -J -c DST -p PORT -B SRC -t SECONDS EXTRA…` against a one-off
/// server); its JSON report.
pub(in crate::bench) fn iperf_on(
    p: &IperfPath,
    extra: &[&str],
    seconds: f64,
) -> Result<serde_json::Value> {
    let _server = IperfServer::start(p)?;
    let out = Command::new("ip")
        .args(["netns", "exec", p.src_ns, "iperf3", "-J", "-c"])
        .arg(p.dst_addr.to_string())
        .arg("-p")
        .arg(p.port.to_string())
        .arg("-B")
        .arg(p.src_addr.to_string())
        .arg("-t")
        .arg(format!("{seconds}"))
        .args(extra)
        .output()
        .context("run iperf3 -c")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = json["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(json)
}

/// TCP throughput at the receiver, Gbit/s.
pub(super) fn iperf_tcp(t: &Topology, seconds: f64) -> Result<f64> {
    tcp_gbit_per_s(&iperf_client(t, &[], seconds)?)
}

/// The receiver's TCP throughput of an iperf3 report, Gbit/s.
pub(in crate::bench) fn tcp_gbit_per_s(json: &serde_json::Value) -> Result<f64> {
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3 reported no received throughput")
}

/// Received UDP datagrams per second of `iperf3 -u -b 0 -l 18` ([`IPERF_UDP_ARGS`]).
pub(super) fn iperf_udp(t: &Topology, seconds: f64) -> Result<f64> {
    let json = iperf_client(t, &IPERF_UDP_ARGS, seconds)?;
    udp_received_pps(&json, seconds)
}

/// iperf3's arguments for 60-byte frames as fast as it can send: `-u -b 0 -l 18`.
pub(in crate::bench) const IPERF_UDP_ARGS: [&str; 5] = ["-u", "-b", "0", "-l", "18"];

/// Datagrams per second received (sent minus lost) of an iperf3 UDP report.
pub(in crate::bench) fn udp_received_pps(json: &serde_json::Value, seconds: f64) -> Result<f64> {
    let sum = &json["end"]["sum"];
    let packets = sum["packets"].as_f64().context("iperf3: no packets")?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64().unwrap_or(seconds);
    Ok((packets - lost) / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_udp_frames_are_the_pps_frames() {
        assert_eq!(IPERF_UDP_ARGS[4], PPS_PAYLOAD.to_string());
    }
}
