//! The chart: one panel per test (TCP 1 stream, TCP 4 streams, UDP pps), one bar per tunnel
//! with its median and its ratio to the wireguard-go pair. Written with
//! [`crate::bench::write_chart`].

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;

use super::measure::Test;
use super::report::Record;
use crate::bench::chain::{nice_ceiling, trim_number};

const COLORS: [(&str, &str); 5] = [
    ("wggo-pair", "#888888"),
    ("netfn-wggo", "#1f77b4"),
    ("netfn-netfn", "#d62728"),
    ("netfn-wggo-gotatun", "#9ecae1"),
    ("netfn-netfn-gotatun", "#fc9272"),
];

/// The chart, if a test with a panel ran (`--tests latency` alone draws none).
pub(super) fn chart(records: &[Record]) -> Result<Vec<PathBuf>> {
    if !super::report::any_main_test(records) {
        return Ok(Vec::new());
    }
    crate::bench::write_chart("vpn", &svg(records))
}

fn svg(records: &[Record]) -> String {
    const PANEL: f64 = 340.0;
    // A panel for each main test that was run.
    let tests: Vec<Test> = Test::MAIN
        .into_iter()
        .filter(|&t| records.iter().any(|r| r.figures(t).is_some()))
        .collect();
    // Room on the right for the last panel's longest label.
    let width = PANEL * tests.len().max(1) as f64 + 50.0;
    let (top, bar, gap) = (60.0, 36.0, 14.0);
    // Room for every tunnel but the bare veth, the axis and the note under it.
    let bars = records.iter().filter(|r| r.config != "bare").count().max(3);
    let height = top + bars as f64 * (bar + gap) + 70.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">netfn VPN bench: WireGuard tunnels on this machine (medians; ×: over the wireguard-go pair)</text>"#,
        width / 2.0
    );
    for (p, test) in tests.iter().enumerate() {
        let x0 = 130.0 + p as f64 * PANEL;
        let pw = PANEL - 180.0;
        let (scale, unit) = if test.is_udp() {
            (1e-3, "kpps")
        } else {
            (1.0, "Gbit/s")
        };
        // The bare veth is tens of times faster than any tunnel: a note, not a bar.
        let bare = records
            .iter()
            .find(|r| r.config == "bare")
            .and_then(|r| r.figures(*test))
            .map(|f| f.median() * scale);
        let values: Vec<(&str, f64, f64)> = records
            .iter()
            .filter(|r| r.config != "bare")
            .filter_map(|r| {
                r.figures(*test)
                    .map(|f| (r.config, f.median() * scale, f.vs_wggo_pair))
            })
            .collect();
        let vmax = values.iter().map(|v| v.1).fold(0.0, f64::max);
        let vmax = if vmax > 0.0 { nice_ceiling(vmax) } else { 1.0 };
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{} ({unit})</text>"#,
            x0 + pw / 2.0,
            top - 12.0,
            test.label()
        );
        for (i, (config, v, ratio)) in values.iter().enumerate() {
            let y = top + i as f64 * (bar + gap);
            let color = COLORS
                .iter()
                .find(|(c, _)| c == config)
                .map_or("#444444", |(_, c)| c);
            let w = if v.is_finite() { v / vmax * pw } else { 0.0 };
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{config}</text><rect x="{x0}" y="{y}" width="{w:.1}" height="{bar}" fill="{color}"/><text x="{}" y="{}">{} ({}×)</text>"#,
                x0 - 6.0,
                y + bar / 2.0 + 4.0,
                x0 + w + 4.0,
                y + bar / 2.0 + 4.0,
                trim_number(*v),
                trim_number(*ratio)
            );
        }
        let axis_y = top + values.len() as f64 * (bar + gap);
        let _ = write!(
            s,
            r##"<line x1="{x0}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="#333"/><text x="{x0}" y="{}" text-anchor="middle">0</text><text x="{}" y="{}" text-anchor="middle">{}</text>"##,
            x0 + pw,
            axis_y + 14.0,
            x0 + pw,
            axis_y + 14.0,
            trim_number(vmax)
        );
        if let Some(b) = bare {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">bare veth, no tunnel: {} {unit}</text>"#,
                x0 + pw / 2.0,
                axis_y + 40.0,
                trim_number(b)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_chart_is_still_an_svg() {
        let s = svg(&[]);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
    }
}
