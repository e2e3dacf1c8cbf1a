//! Shared pieces of the benchmarks in `load_tests/`.

use prometheus::Histogram;

/// Estimates quantile `q` (0–1) of a Prometheus histogram the way PromQL's `histogram_quantile`
/// does, but marks one above the highest finite bound (see [`bench::prom::quantile`]).
pub fn histogram_quantile(histogram: &Histogram, q: f64) -> Option<bench::prom::Quantile> {
    let metric = prometheus::core::Collector::collect(histogram);
    let proto = metric.first()?.get_metric().first()?.get_histogram().clone();
    let mut buckets: Vec<(f64, f64)> =
        proto.get_bucket().iter().map(|bucket| (bucket.upper_bound(), bucket.cumulative_count() as f64)).collect();
    buckets.push((f64::INFINITY, proto.get_sample_count() as f64));
    bench::prom::quantile(&buckets, q)
}

pub mod bench;
