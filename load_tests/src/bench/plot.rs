//! Percentile plots as plain SVG (no dependencies): x is the percentile on the usual
//! "number of nines" scale (50, 90, 99, 99.9, …), y the value on a log scale.

use std::fmt::Write;

/// Percentiles plotted for every series.
pub const PERCENTILES: [f64; 11] = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0];

/// One line: a name and `(percentile, value)` points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart of a figure.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const COLOURS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// The right end of the x axis: 99.999th percentile (and the maximum, drawn there).
const MAX_NINES: f64 = 5.0;

fn nines(p: f64) -> f64 {
    if p >= 100.0 { MAX_NINES } else { (-(1.0 - p / 100.0).log10()).min(MAX_NINES) }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Renders `panels` one under the other as an SVG document.
pub fn render(title: &str, panels: &[Panel]) -> String {
    let height = 40.0 + PANEL_HEIGHT * panels.len() as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for (index, panel) in panels.iter().enumerate() {
        render_panel(&mut svg, panel, 40.0 + PANEL_HEIGHT * index as f64);
    }
    svg.push_str("</svg>\n");
    svg
}

fn render_panel(svg: &mut String, panel: &Panel, y0: f64) {
    let (x_min, x_max) = (LEFT, WIDTH - RIGHT);
    let (y_top, y_bottom) = (y0 + TOP, y0 + PANEL_HEIGHT - BOTTOM);
    let values = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.1, 1.0) };
    let log_lo = lo.log10().floor();
    let log_hi = hi.log10().ceil().max(log_lo + 1.0);
    let px = |p: f64| x_min + (x_max - x_min) * nines(p) / MAX_NINES;
    let py = |v: f64| {
        let v = v.max(10f64.powf(log_lo));
        y_bottom - (y_bottom - y_top) * (v.log10() - log_lo) / (log_hi - log_lo)
    };
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="14" text-anchor="middle">{}</text>"#,
        (x_min + x_max) / 2.0,
        y0 + 22.0,
        escape(&panel.title)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{x_min}" y="{y_top}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        x_max - x_min,
        y_bottom - y_top
    );
    // y grid: 1, 2, 5 × each power of ten.
    let mut exponent = log_lo;
    while exponent <= log_hi {
        for factor in [1.0, 2.0, 5.0] {
            let v = factor * 10f64.powf(exponent);
            if v.log10() > log_hi + 1e-9 {
                continue;
            }
            let y = py(v);
            let stroke = if factor == 1.0 { "#bbb" } else { "#eee" };
            let _ = writeln!(svg, r#"<line x1="{x_min}" x2="{x_max}" y1="{y:.1}" y2="{y:.1}" stroke="{stroke}"/>"#);
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                x_min - 6.0,
                y + 4.0,
                format_value(v)
            );
        }
        exponent += 1.0;
    }
    for (p, label) in
        [(0.0, "0"), (50.0, "50"), (90.0, "90"), (99.0, "99"), (99.9, "99.9"), (99.99, "99.99"), (100.0, "max")]
    {
        let x = px(p);
        let _ = writeln!(svg, r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y_top}" y2="{y_bottom}" stroke="#ddd"/>"##);
        let _ = writeln!(svg, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"#, y_bottom + 16.0);
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (x_min + x_max) / 2.0,
        y_bottom + 34.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
        x_min - 55.0,
        (y_top + y_bottom) / 2.0,
        x_min - 55.0,
        (y_top + y_bottom) / 2.0,
        escape(&panel.y_label)
    );
    for (index, series) in panel.series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let points: Vec<String> = series.points.iter().map(|&(p, v)| format!("{:.1},{:.1}", px(p), py(v))).collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for &(p, v) in &series.points {
            let _ = writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"#, px(p), py(v));
        }
        let ly = y_top + 10.0 + 18.0 * index as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/>"#,
            x_max + 12.0,
            x_max + 32.0
        );
        let _ = writeln!(svg, r#"<text x="{}" y="{}">{}</text>"#, x_max + 38.0, ly + 4.0, escape(&series.name));
    }
}

fn format_value(v: f64) -> String {
    if v >= 1.0 { format!("{v:.0}") } else { format!("{v}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_well_formed_document_with_every_series() {
        let panel = Panel {
            title: "latency".into(),
            y_label: "ms".into(),
            series: vec![
                Series { name: "a <cached>".into(), points: vec![(50.0, 0.4), (99.0, 1.5), (100.0, 9.0)] },
                Series { name: "b".into(), points: vec![(50.0, 20.0), (99.0, 150.0), (100.0, 900.0)] },
            ],
        };
        let svg = render("t", &[panel.clone(), Panel { series: vec![], ..panel }]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;cached&gt;"));
        assert!(!svg.contains("NaN"));
    }
}
