//! What a soak run leaves behind: its samples as CSV (`soak.csv`) and as a plot (`soak.svg`),
//! one panel per resource, with a mark at each injected fault.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::{Sample, process_names};

/// Writes `soak.csv` and `soak.svg` into `dir`.
pub fn write(dir: &Path, samples: &[Sample], fault_at: &[(f64, String)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("soak.csv"), csv(samples))?;
    std::fs::write(dir.join("soak.svg"), svg(samples, fault_at)?)?;
    Ok(())
}

fn csv(samples: &[Sample]) -> String {
    let names = process_names(samples);
    let mut out = String::from("seconds");
    for &name in &names {
        let _ = write!(out, ",rss_mb_{name}");
    }
    out.push_str(",pg_connections,redis_clients,outbox_backlog,window_p99_ms,lag_p99_ms\n");
    let ms = |value: Option<f64>| value.map_or(String::new(), |v| format!("{:.2}", v * 1e3));
    for s in samples {
        let _ = write!(out, "{:.0}", s.at);
        for &name in &names {
            let _ = write!(
                out,
                ",{}",
                s.rss_kb.get(name).map_or(String::new(), |kb| format!("{:.1}", *kb as f64 / 1024.0))
            );
        }
        let _ = writeln!(
            out,
            ",{},{},{},{},{}",
            s.connections,
            s.redis_clients,
            s.backlog,
            ms(s.staleness_p99),
            ms(s.lag_p99)
        );
    }
    out
}

/// One panel: a title, its y unit and named `(minutes, value)` lines.
struct Panel {
    title: &'static str,
    unit: &'static str,
    lines: Vec<(String, Vec<(f64, f64)>)>,
}

fn panels(samples: &[Sample]) -> Vec<Panel> {
    let minutes = |s: &Sample| s.at / 60.0;
    let line = |name: &str, value: &dyn Fn(&Sample) -> Option<f64>| {
        (name.to_owned(), samples.iter().filter_map(|s| Some((minutes(s), value(s)?))).collect())
    };
    let rss = process_names(samples)
        .into_iter()
        .map(|name| line(name, &|s: &Sample| s.rss_kb.get(name).map(|kb| *kb as f64 / 1024.0)))
        .collect();
    vec![
        Panel { title: "Resident memory per process", unit: "MiB", lines: rss },
        Panel {
            title: "Connections",
            unit: "count",
            lines: vec![
                line("Postgres (all processes)", &|s| (s.connections >= 0).then_some(s.connections as f64)),
                line("Redis clients", &|s| (s.redis_clients >= 0).then_some(s.redis_clients as f64)),
            ],
        },
        Panel {
            title: "Outbox backlog",
            unit: "rows",
            lines: vec![line("cache_outbox rows", &|s| (s.backlog >= 0).then_some(s.backlog as f64))],
        },
        Panel {
            title: "Staleness window and invalidator lag, p99 per sample",
            unit: "ms",
            lines: vec![
                line("window p99 (probes)", &|s| s.staleness_p99.map(|v| v * 1e3)),
                line("lag p99 (bucket bound)", &|s| s.lag_p99.filter(|v| v.is_finite()).map(|v| v * 1e3)),
            ],
        },
    ]
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn svg(samples: &[Sample], fault_at: &[(f64, String)]) -> anyhow::Result<String> {
    let panels = panels(samples);
    let end = samples.last().map_or(1.0, |s| s.at / 60.0).max(1.0);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 300 * panels.len() as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(&panels) {
            let top = panel.lines.iter().flat_map(|(_, points)| points.iter().map(|p| p.1)).fold(0.0, f64::max);
            let mut chart = ChartBuilder::on(area)
                .caption(panel.title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..end, 0.0..(top * 1.15).max(1.0))
                .map_err(plot_error)?;
            chart.configure_mesh().x_desc("minutes").y_desc(panel.unit).draw().map_err(plot_error)?;
            let faults = fault_at.iter().map(|(at, _)| {
                PathElement::new(vec![(at / 60.0, 0.0), (at / 60.0, top * 1.15)], RGBColor(200, 200, 200))
            });
            chart.draw_series(faults).map_err(plot_error)?;
            for (index, (name, points)) in panel.lines.iter().enumerate() {
                let colour = COLOURS[index % COLOURS.len()];
                chart
                    .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
                    .map_err(plot_error)?
                    .label(name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(out)
}

fn plot_error<E: std::error::Error + Send + Sync + 'static>(
    error: plotters::drawing::DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow::anyhow!("drawing the soak plot: {error}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn sample(at: f64, rss_mb: u64, lag_ms: f64) -> Sample {
        Sample {
            at,
            rss_kb: BTreeMap::from([("api".to_owned(), rss_mb * 1024)]),
            connections: 12,
            redis_clients: 9,
            backlog: 0,
            staleness_p99: Some(0.004),
            lag_p99: Some(lag_ms / 1e3),
        }
    }

    #[test]
    fn the_csv_has_one_row_per_sample_with_every_column() {
        let text = csv(&[sample(10.0, 30, 5.0), sample(20.0, 31, 7.5)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "seconds,rss_mb_api,pg_connections,redis_clients,outbox_backlog,window_p99_ms,lag_p99_ms");
        assert_eq!(lines[2], "20,31.0,12,9,0,4.00,7.50");
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn the_plot_draws_a_panel_per_resource_and_names_each_line() {
        let drawn =
            svg(&[sample(0.0, 30, 5.0), sample(600.0, 31, 7.5)], &[(300.0, "restart-redis".to_owned())]).unwrap();
        for title in ["Resident memory per process", "Connections", "Outbox backlog", "invalidator lag"] {
            assert!(drawn.contains(title), "{title} missing");
        }
        assert!(drawn.contains("lag p99 (bucket bound)"));
    }
}
