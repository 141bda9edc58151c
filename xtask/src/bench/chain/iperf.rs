//! iperf3 as a cross-check of our own generator: TCP throughput and UDP pps.

use super::*;

/// An iperf3 server in the sink's namespace for one test (`-1`); killed on drop if still there.
pub(super) struct IperfServer(Child);

impl IperfServer {
    fn start(t: &Topology) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", &t.dst_ns, "iperf3", "-s", "-1", "-p"])
            .arg(IPERF_PORT.to_string())
            .arg("-B")
            .arg(t.dst_addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 -s")?;
        let server = IperfServer(child);
        // Wait until it listens.
        let start = Instant::now();
        loop {
            let ss = ip(&["netns", "exec", &t.dst_ns, "ss", "-Hltn"])?;
            if ss.contains(&format!(":{IPERF_PORT}")) {
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
    let _server = IperfServer::start(t)?;
    let out = Command::new("ip")
        .args(["netns", "exec", &t.src_ns, "iperf3", "-J", "-c"])
        .arg(t.dst_addr.to_string())
        .arg("-p")
        .arg(IPERF_PORT.to_string())
        .arg("-B")
        .arg(t.src_addr.to_string())
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
    let json = iperf_client(t, &[], seconds)?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3 reported no received throughput")
}

/// Received UDP datagrams per second of `iperf3 -u -b 0 -l 18`.
pub(super) fn iperf_udp(t: &Topology, seconds: f64) -> Result<f64> {
    let json = iperf_client(
        t,
        &["-u", "-b", "0", "-l", &PPS_PAYLOAD.to_string()],
        seconds,
    )?;
    let sum = &json["end"]["sum"];
    let packets = sum["packets"].as_f64().context("iperf3: no packets")?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64().unwrap_or(seconds);
    Ok((packets - lost) / secs)
}
