//! Just enough of the Prometheus text format to read counters and histograms back.

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the exposition text (comments and malformed lines are skipped).
pub fn parse(text: &str) -> Vec<PromSample> {
    text.lines().filter(|line| !line.starts_with('#') && !line.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<PromSample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match head.find('{') {
        Some(open) => {
            let body = head[open + 1..].strip_suffix('}')?;
            let mut labels = BTreeMap::new();
            for pair in split_labels(body) {
                let (key, value) = pair.split_once('=')?;
                labels.insert(key.trim().to_owned(), value.trim().trim_matches('"').replace("\\\"", "\""));
            }
            (head[..open].to_owned(), labels)
        }
        None => (head.to_owned(), BTreeMap::new()),
    };
    Some(PromSample { name, labels, value })
}

/// Splits `a="x",b="y,z"` at the commas outside quotes.
fn split_labels(body: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (index, ch) in body.char_indices() {
        match ch {
            '\\' if quoted => escaped = !escaped,
            '"' if !escaped => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&body[start..index]);
                start = index + 1;
            }
            _ => escaped = false,
        }
    }
    if start < body.len() {
        parts.push(&body[start..]);
    }
    parts.into_iter().filter(|part| !part.trim().is_empty()).collect()
}

/// Sum of the samples named `name` whose labels include every `(key, value)` of `filter`.
pub fn sum(samples: &[PromSample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && filter.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// Cumulative bucket counts `(le, count)` of histogram `name` (summed over other labels), sorted.
pub fn buckets(samples: &[PromSample], name: &str) -> Vec<(f64, f64)> {
    buckets_where(samples, name, &[])
}

/// Like [`buckets`], only over the series whose labels include every pair of `filter`.
pub fn buckets_where(samples: &[PromSample], name: &str, filter: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket_name = format!("{name}_bucket");
    let mut by_le: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let matches = |s: &PromSample| filter.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v));
    for s in samples.iter().filter(|s| s.name == bucket_name && matches(s)) {
        let Some(le) = s.labels.get("le") else { continue };
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
        by_le.entry(le.clone()).or_insert((bound, 0.0)).1 += s.value;
    }
    let mut out: Vec<(f64, f64)> = by_le.into_values().collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Bucket counts of `after` minus `before` (a histogram over the interval between two scrapes).
pub fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, count)| {
            let old = before.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, c)| *c);
            (le, count - old)
        })
        .collect()
}

/// PromQL's `histogram_quantile` over cumulative buckets: linear interpolation inside the bucket
/// holding the rank; `None` without observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut lower_count) = (0.0, 0.0);
    for &(upper, count) in buckets {
        if count >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            if count == lower_count {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - lower_count) / (count - lower_count));
        }
        (lower, lower_count) = (upper, count);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP openrisk_cache_requests_total x
# TYPE openrisk_cache_requests_total counter
openrisk_cache_requests_total{route="/api/v1/risks/{id}",result="hit"} 90
openrisk_cache_requests_total{route="/api/v1/risks/{id}",result="miss"} 10
openrisk_cache_requests_total{route="/api/v1/risks",result="hit"} 5
lag_bucket{le="0.001"} 50
lag_bucket{le="0.01"} 100
lag_bucket{le="+Inf"} 100
up 1
"#;

    #[test]
    fn reads_counters_by_label_and_histogram_quantiles() {
        let samples = parse(TEXT);
        assert_eq!(sum(&samples, "openrisk_cache_requests_total", &[("result", "hit")]), 95.0);
        assert_eq!(sum(&samples, "openrisk_cache_requests_total", &[("route", "/api/v1/risks/{id}")]), 100.0);
        assert_eq!(sum(&samples, "up", &[]), 1.0);
        let buckets = buckets(&samples, "lag");
        assert_eq!(quantile(&buckets, 0.5), Some(0.001));
        assert!((quantile(&buckets, 0.75).unwrap() - 0.0055).abs() < 1e-9);
        assert_eq!(quantile(&bucket_delta(&buckets, &buckets), 0.5), None);
    }
}
