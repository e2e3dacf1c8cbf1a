//! Shared pieces of the benchmarks in `load_tests/`.

use prometheus::Histogram;

/// Estimates quantile `q` (0–1) of a Prometheus histogram the way PromQL's `histogram_quantile`
/// does: linear interpolation inside the bucket that holds the rank.
pub fn histogram_quantile(histogram: &Histogram, q: f64) -> Option<f64> {
    let metric = prometheus::core::Collector::collect(histogram);
    let proto = metric.first()?.get_metric().first()?.get_histogram().clone();
    let total = proto.get_sample_count() as f64;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower_bound, mut lower_count) = (0.0, 0.0);
    for bucket in proto.get_bucket() {
        let (upper, count) = (bucket.upper_bound(), bucket.cumulative_count() as f64);
        if count >= rank {
            if count == lower_count {
                return Some(upper);
            }
            return Some(lower_bound + (upper - lower_bound) * (rank - lower_count) / (count - lower_count));
        }
        (lower_bound, lower_count) = (upper, count);
    }
    Some(lower_bound)
}

pub mod bench;
