//! What a run leaves in `--out`: `results.json` (one typed section per phase), `summary.md`
//! (the tables pasted into RESULTS.md) and `latency.svg`.

use hdrhistogram::Histogram;
use openrisk_load_tests::bench::http::RunResult;
use openrisk_load_tests::bench::plot::{self, PERCENTILES, Panel, Series};
use serde::Serialize;
use serde_json::{Value, json};

use crate::args::Args;
use crate::dataset::Check;
use crate::freshness::{Freshness, pct};

/// `results.json`: one section per phase, in the order they run.
#[derive(Serialize)]
pub struct Report {
    pub data_set: Value,
    pub body_bytes: Value,
    pub saturation: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrk: Option<Value>,
    pub fixed_rate: Value,
    pub dashboard_mix: Value,
    pub freshness: Value,
    pub many_variants: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<Value>,
    pub checks: Vec<Check>,
}

impl Report {
    /// Writes `results.json` and `summary.md` into `args.out`.
    pub fn write(&self, args: &Args) -> anyhow::Result<()> {
        let results = serde_json::to_value(self)?;
        std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&results)?)?;
        std::fs::write(args.out.join("summary.md"), summary_markdown(&results))?;
        Ok(())
    }
}

/// Writes `latency.svg`: latency percentiles of the fixed-rate runs (and of the mix under
/// writes), and the staleness windows of the freshness phase.
pub fn plot_latency(args: &Args, fixed: &[RunResult], freshness: &Freshness) -> std::io::Result<()> {
    let latency_series = |name: String, run: &RunResult| Series {
        name,
        points: PERCENTILES.iter().map(|&p| (p, run.ms(p).max(0.001))).collect(),
    };
    let mut latency: Vec<Series> = fixed.iter().map(|run| latency_series(run.name.clone(), run)).collect();
    latency.push(latency_series(format!("mix under writes ({}/s)", args.fresh_background_rate), &freshness.background));
    let window_series = |name: &str, v: &Histogram<u64>| Series {
        name: name.into(),
        points: PERCENTILES.iter().filter_map(|&p| Some((p, pct(v, p)?.max(0.01)))).collect(),
    };
    let svg = plot::render(
        &format!(
            "OpenRisk cache: {} req/s offered over {} connections (2 cores, generator on the same machine)",
            args.rate, args.connections
        ),
        &[
            Panel {
                title: "Latency at a fixed offered rate (coordinated-omission corrected)".into(),
                y_label: "latency, ms".into(),
                series: latency,
            },
            Panel {
                title: "Staleness window: commit to the first read of the new value".into(),
                y_label: "ms after commit".into(),
                series: vec![
                    window_series("SQL write: first fresh answer", &freshness.windows.sql),
                    window_series("SQL write: last stale read sent", &freshness.lower.sql),
                    window_series("API write: first fresh answer", &freshness.windows.api),
                    window_series("API write: last stale read sent", &freshness.lower.api),
                ],
            },
        ],
    );
    std::fs::write(args.out.join("latency.svg"), svg)
}

/// The results as Markdown tables (pasted into RESULTS.md).
pub fn summary_markdown(results: &Value) -> String {
    let mut md = String::new();
    // A number; a string (a quantile above its histogram's highest bound, `> 50`) as it is.
    let f = |v: &Value| match (v.as_f64(), v.as_str()) {
        (Some(x), _) if x >= 100.0 => format!("{x:.0}"),
        (Some(x), _) => format!("{x:.2}"),
        (None, Some(text)) => text.to_owned(),
        (None, None) => "–".to_owned(),
    };
    md.push_str("### Saturation (closed loop)\n\n| target | req/s (mean of rounds) |\n|---|---|\n");
    if let Some(map) = results["saturation"]["mean_rps"].as_object() {
        for (name, rps) in map {
            md.push_str(&format!("| {name} | {} |\n", f(rps)));
        }
    }
    md.push_str("\n| ratio | value |\n|---|---|\n");
    if let Some(map) = results["saturation"]["ratios"].as_object() {
        for (name, value) in map {
            md.push_str(&format!("| {name} | {} |\n", f(value)));
        }
    }
    if let Some(map) = results["saturation"]["cpu"].as_object() {
        md.push_str("\nCPU µs per request during saturation (from /proc), and the requests per second one Redis core could answer at its share:\n\n| target | machine busy % | per process | req/s per Redis core |\n|---|---|---|---|\n");
        for (name, value) in map {
            let per: Vec<String> = value["cpu_us_per_request"]
                .as_object()
                .map(|m| m.iter().map(|(p, v)| format!("{p} {}", f(v))).collect())
                .unwrap_or_default();
            md.push_str(&format!(
                "| {name} | {} | {} | {} |\n",
                f(&value["machine_busy_percent"]),
                per.join(", "),
                f(&value["requests_per_redis_core_second"])
            ));
        }
    }
    if let Some(map) = results["wrk"].as_object() {
        md.push_str("\nwrk (independent generator):\n\n| target | req/s |\n|---|---|\n");
        for (name, value) in map {
            if name != "ratios" {
                md.push_str(&format!("| {name} | {} |\n", f(&value["rps"])));
            }
        }
        if let Some(ratios) = map.get("ratios").and_then(Value::as_object) {
            for (name, value) in ratios {
                md.push_str(&format!("| ratio {name} | {} |\n", f(value)));
            }
        }
    }
    md.push_str("\n### Fixed offered rate (open loop, corrected for coordinated omission)\n\n");
    md.push_str("| target | offered/s | achieved/s | mean ms | p50 ms | p95 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|---|\n");
    for run in results["fixed_rate"]["runs"].as_array().into_iter().flatten() {
        let l = &run["latency"];
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            run["name"].as_str().unwrap_or(""),
            f(&run["offered_rate"]),
            f(&run["throughput_rps"]),
            f(&l["mean_ms"]),
            f(&l["p50_ms"]),
            f(&l["p95_ms"]),
            f(&l["p99_ms"]),
            f(&l["max_ms"])
        ));
    }
    let mix = &results["dashboard_mix"];
    md.push_str(&format!(
        "\n### Dashboard mix\n\nhit ratio: first phase {} % ({} % of repeat requests), measured {} % ({} % of repeat requests, {} first-time keys)\n\n",
        f(&json!(mix["hit_ratio_first_phase"]["ratio"].as_f64().unwrap_or(0.0) * 100.0)),
        f(&json!(mix["hit_ratio_first_phase"]["ratio_of_repeat_requests"].as_f64().unwrap_or(0.0) * 100.0)),
        f(&json!(mix["hit_ratio_measured"]["ratio"].as_f64().unwrap_or(0.0) * 100.0)),
        f(&json!(mix["hit_ratio_measured"]["ratio_of_repeat_requests"].as_f64().unwrap_or(0.0) * 100.0)),
        mix["hit_ratio_measured"]["first_time_requests"]
    ));
    md.push_str(&format!(
        "resources: `{}`\n\npostgres connections: `{}`\n",
        mix["resources"], mix["postgres_connections"]
    ));
    let topology = &results["topology"];
    if topology.is_object() {
        let rps = &topology["cached_detail_rps"];
        md.push_str(&format!(
            "\n### Single node beside a Redis Cluster\n\ncached GET /risks/{{id}}: node {} req/s, cluster {} req/s\n\n| invalidation lag | p50 ms | p90 ms | p99 ms | writes |\n|---|---|---|---|---|\n",
            f(&rps["node_mean"]),
            f(&rps["cluster_mean"])
        ));
        if let Some(map) = topology["invalidation_lag"].as_object() {
            for (name, lag) in map {
                md.push_str(&format!(
                    "| {name} | {} | {} | {} | {} |\n",
                    f(&lag["p50_ms"]),
                    f(&lag["p90_ms"]),
                    f(&lag["p99_ms"]),
                    lag["writes"]
                ));
            }
        }
        md.push_str("\n| ratio | value |\n|---|---|\n");
        if let Some(map) = topology["ratios"].as_object() {
            for (name, value) in map {
                md.push_str(&format!("| {name} | {} |\n", f(value)));
            }
        }
    }
    let fresh = &results["freshness"];
    let window = |w: &Value| {
        format!(
            "window p50 {} ms, p99 {} ms, max {} ms ({} writes)",
            f(&w["p50_ms"]),
            f(&w["p99_ms"]),
            f(&w["max_ms"]),
            w["count"]
        )
    };
    let bound = |w: &Value| format!("p50 {} p99 {} max {} ms", f(&w["p50_ms"]), f(&w["p99_ms"]), f(&w["max_ms"]));
    md.push_str(&format!(
        "\n### Freshness\n\nSQL writes: {}\n\nAPI writes: {}\n\nlower bounds (last stale read sent): SQL {}; API {}\n\nreads {}, stale inside the window {}, older than the window {}\n\ninvalidator lag: `{}`\n",
        window(&fresh["window_sql"]),
        window(&fresh["window_api"]),
        bound(&fresh["window_sql_lower_bound"]),
        bound(&fresh["window_api_lower_bound"]),
        fresh["reads"],
        fresh["stale_reads_inside_window"],
        fresh["reads_older_than_window"],
        fresh["invalidator_lag_ms"]
    ));
    md
}
