//! The chart: an SVG with UDP pps and latency against chain length, and a PNG where
//! rsvg-convert is installed.

use super::*;

/// An SVG with two panels (UDP pps and latency against chain length, one line per mode, the bare
/// pair as a dashed reference), converted to PNG with rsvg-convert when it is installed.
pub(super) fn chart(records: &[Record]) -> Result<Vec<PathBuf>> {
    super::super::write_chart("chain", &svg_chart(records))
}

pub(super) fn svg_chart(records: &[Record]) -> String {
    const W: f64 = 1000.0;
    const H: f64 = 420.0;
    let colors = [("kernel", "#888888"), ("tc", "#1f77b4"), ("xdp", "#d62728")];
    let max_n = records
        .iter()
        .map(|r| r.functions)
        .max()
        .unwrap_or(3)
        .max(1) as f64;
    let bare = records.iter().find(|r| r.mode == "bare");
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">netfn chain bench: bare veth pair vs chains of forward functions</text>"#,
        W / 2.0
    );
    // (title, unit, value of a record, one line per figure: (selector, dashed))
    type Getter = fn(&Record) -> f64;
    type Panel = (&'static str, &'static str, Vec<(Getter, bool)>);
    let panels: [Panel; 2] = [
        (
            "UDP packets/s delivered (60-byte frames)",
            "Mpps",
            vec![(|r: &Record| r.udp_pps.median / 1e6, false)],
        ),
        (
            "UDP round trip: p50 (solid), p99 (dashed)",
            "us",
            vec![
                (|r: &Record| r.latency_p50.median, false),
                (|r: &Record| r.latency_p99.median, true),
            ],
        ),
    ];
    for (p, (title, unit, lines)) in panels.iter().enumerate() {
        let x0 = 70.0 + p as f64 * (W / 2.0);
        let (pw, ph, y0) = (W / 2.0 - 110.0, H - 120.0, 50.0);
        let mut vmax: f64 = 0.0;
        for r in records {
            for (get, _) in lines {
                vmax = vmax.max(get(r));
            }
        }
        let vmax = if vmax > 0.0 { nice_ceiling(vmax) } else { 1.0 };
        let xpos = |n: f64| x0 + n / max_n * pw;
        let ypos = |v: f64| y0 + ph - (v / vmax) * ph;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{title}</text>"#,
            x0 + pw / 2.0,
            y0 - 8.0
        );
        let _ = write!(
            s,
            r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
        );
        for i in 0..=5 {
            let v = vmax * i as f64 / 5.0;
            let y = ypos(v);
            let _ = write!(
                s,
                r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                x0 + pw,
                x0 - 6.0,
                y + 4.0,
                trim_number(v)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{unit}</text>"#,
            x0 - 48.0,
            y0 + ph / 2.0,
            x0 - 48.0,
            y0 + ph / 2.0
        );
        for n in 0..=(max_n as usize) {
            let x = xpos(n as f64);
            let label = if n == 0 {
                "bare".to_string()
            } else {
                n.to_string()
            };
            let _ = write!(
                s,
                r#"<text x="{x}" y="{}" text-anchor="middle">{label}</text>"#,
                y0 + ph + 16.0
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">functions in the chain</text>"#,
            x0 + pw / 2.0,
            y0 + ph + 34.0
        );
        for (get, dashed) in lines {
            if let Some(b) = bare {
                let y = ypos(get(b));
                let _ = write!(
                    s,
                    r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#2ca02c" stroke-dasharray="2,3"/>"##,
                    x0 + pw
                );
            }
            for (mode, color) in colors {
                let mut pts: Vec<(f64, f64)> = records
                    .iter()
                    .filter(|r| r.mode == mode)
                    .map(|r| (xpos(r.functions as f64), ypos(get(r))))
                    .collect();
                if let Some(b) = bare {
                    pts.insert(0, (xpos(0.0), ypos(get(b))));
                }
                let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let dash = if *dashed {
                    r#" stroke-dasharray="6,4""#
                } else {
                    ""
                };
                let _ = write!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                    path.join(" ")
                );
                for (x, y) in pts {
                    let _ = write!(
                        s,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"#
                    );
                }
            }
        }
    }
    // Legend.
    let mut lx = 70.0;
    for (mode, color) in colors.iter().chain([("bare veth", "#2ca02c")].iter()) {
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{}">{mode}</text>"#,
            H - 22.0,
            lx + 20.0,
            H - 17.0
        );
        lx += 110.0;
    }
    s.push_str("</svg>\n");
    s
}

pub(in crate::bench) fn nice_ceiling(v: f64) -> f64 {
    let exp = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * exp >= v {
            return m * exp;
        }
    }
    10.0 * exp
}

pub(in crate::bench) fn trim_number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
