//! The chart the function benches draw: packets per second against a count on a log scale (rules
//! of a firewall, backends of a load balancer), one line per contender and traffic shape, flat
//! reference lines (a `forward` function), and a legend on the right. Written with
//! [`super::write_chart`].

use std::fmt::Write as _;

/// One line: a contender in one traffic shape.
pub(super) struct Series {
    pub(super) label: String,
    pub(super) color: &'static str,
    /// Dashed (a second traffic shape) or solid.
    pub(super) dashed: bool,
    /// (count, packets per second), in order of the count.
    pub(super) points: Vec<(f64, f64)>,
}

/// A flat line across the chart: what every point is compared with.
pub(super) struct Reference {
    pub(super) label: String,
    pub(super) color: &'static str,
    pub(super) pps: f64,
}

/// What to draw.
pub(super) struct PpsChart<'a> {
    pub(super) title: &'a str,
    pub(super) x_label: &'a str,
    /// The counts labelled on the x axis.
    pub(super) x_ticks: Vec<f64>,
    /// The x axis runs from the first to the second count (log scale).
    pub(super) x_range: (f64, f64),
    /// The top of the y axis (packets per second).
    pub(super) y_max: f64,
    pub(super) series: Vec<Series>,
    pub(super) references: Vec<Reference>,
}

impl PpsChart<'_> {
    /// The chart as an SVG document. Series without points are left out, legend and all.
    pub(super) fn svg(&self) -> String {
        const W: f64 = 900.0;
        const H: f64 = 520.0;
        let (left, right, top, bottom) = (80.0, 220.0, 50.0, 60.0);
        let (min_x, max_x) = self.x_range;
        let max_pps = self.y_max;
        let x = |count: f64| {
            let span = (max_x.log10() - min_x.log10()).max(1e-9);
            left + (count.log10() - min_x.log10()) / span * (W - left - right)
        };
        let y = |pps: f64| H - bottom - (pps / max_pps) * (H - top - bottom);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
            (W - right + left) / 2.0,
            self.title
        );
        // Axes and grid.
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#000"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="#000"/>"##,
            H - bottom,
            W - right,
            H - bottom,
            H - bottom
        );
        for &tick in &self.x_ticks {
            let _ = write!(
                s,
                r##"<text x="{}" y="{}" text-anchor="middle">{}</text><line x1="{}" y1="{top}" x2="{}" y2="{}" stroke="#eee"/>"##,
                x(tick),
                H - bottom + 18.0,
                tick as u64,
                x(tick),
                x(tick),
                H - bottom
            );
        }
        for i in 0..=5 {
            let v = max_pps * f64::from(i) / 5.0;
            let _ = write!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end">{:.2} M</text><line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#eee"/>"##,
                left - 6.0,
                y(v) + 4.0,
                v / 1e6,
                y(v),
                W - right,
                y(v)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="20" y="{}" transform="rotate(-90 20 {})" text-anchor="middle">packets/s delivered (60-byte UDP)</text>"#,
            (left + W - right) / 2.0,
            H - 18.0,
            self.x_label,
            (top + H - bottom) / 2.0,
            (top + H - bottom) / 2.0
        );
        let mut legend_y = top + 10.0;
        let mut legend = |s: &mut String, label: &str, color: &str, dashed: bool| {
            let dash = if dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = write!(
                s,
                r#"<line x1="{}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{label}</text>"#,
                W - right + 10.0,
                W - right + 40.0,
                W - right + 46.0,
                legend_y + 4.0
            );
            legend_y += 18.0;
        };
        for series in self.series.iter().filter(|l| !l.points.is_empty()) {
            let path: Vec<String> = series
                .points
                .iter()
                .map(|&(count, pps)| format!("{:.1},{:.1}", x(count), y(pps)))
                .collect();
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = write!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                path.join(" "),
                series.color
            );
            legend(&mut s, &series.label, series.color, series.dashed);
        }
        for r in &self.references {
            let _ = write!(
                s,
                r#"<line x1="{left}" y1="{y0}" x2="{}" y2="{y0}" stroke="{}" stroke-dasharray="2 3"/>"#,
                W - right,
                r.color,
                y0 = y(r.pps)
            );
            legend(&mut s, &r.label, r.color, true);
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Powers of ten from `min` to `max`: where a log axis of counts gets its labels.
pub(super) fn decade_ticks(min: f64, max: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut tick = 1.0;
    while tick <= max * 1.0001 {
        if tick >= min * 0.9999 {
            ticks.push(tick);
        }
        tick *= 10.0;
    }
    ticks
}
