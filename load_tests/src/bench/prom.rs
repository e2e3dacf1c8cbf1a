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

/// A quantile estimated from histogram buckets, in the histogram's unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantile {
    /// Interpolated inside a finite bucket.
    At(f64),
    /// In the +Inf bucket: above this highest finite bound, by an amount the histogram does not
    /// hold (PromQL answers the bound itself there, which reads as a measurement).
    Above(f64),
}

impl Quantile {
    /// The same quantile in a unit `factor` times smaller (`1000.0`: seconds to milliseconds).
    pub fn scaled(self, factor: f64) -> Self {
        match self {
            Self::At(value) => Self::At(value * factor),
            Self::Above(bound) => Self::Above(bound * factor),
        }
    }

    /// The value, when the histogram holds it (for arithmetic such as ratios).
    pub fn value(self) -> Option<f64> {
        match self {
            Self::At(value) => Some(value),
            Self::Above(_) => None,
        }
    }
}

/// `12.35`, or `> 50.00` above the highest finite bound (always two decimals).
impl std::fmt::Display for Quantile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::At(value) => write!(f, "{value:.2}"),
            Self::Above(bound) => write!(f, "> {bound:.2}"),
        }
    }
}

/// A number, or the string `"> bound"` above the highest finite bound.
impl serde::Serialize for Quantile {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::At(value) => serializer.serialize_f64(*value),
            Self::Above(bound) => serializer.serialize_str(&format!("> {bound}")),
        }
    }
}

/// PromQL's `histogram_quantile` over cumulative buckets: linear interpolation inside the bucket
/// holding the rank; [`Quantile::Above`] the highest finite bound when that bucket is +Inf;
/// `None` without observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<Quantile> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut lower_count) = (0.0, 0.0);
    for &(upper, count) in buckets {
        if count >= rank {
            if upper.is_infinite() {
                return Some(Quantile::Above(lower));
            }
            if count == lower_count {
                return Some(Quantile::At(upper));
            }
            return Some(Quantile::At(lower + (upper - lower) * (rank - lower_count) / (count - lower_count)));
        }
        (lower, lower_count) = (upper, count);
    }
    Some(Quantile::Above(lower))
}

/// A quantile for a report line: [`Quantile`]'s form, `-` without observations.
pub fn show(quantile: Option<Quantile>) -> String {
    quantile.map_or("-".to_owned(), |quantile| quantile.to_string())
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
        assert_eq!(quantile(&buckets, 0.5), Some(Quantile::At(0.001)));
        assert!(quantile(&buckets, 0.75).and_then(Quantile::value).is_some_and(|v| (v - 0.0055).abs() < 1e-9));
        assert_eq!(quantile(&bucket_delta(&buckets, &buckets), 0.5), None);
    }

    #[test]
    fn a_quantile_in_the_inf_bucket_is_above_the_highest_bound_not_at_it() {
        let buckets = [(0.001, 50.0), (0.01, 90.0), (f64::INFINITY, 100.0)];
        let p99 = quantile(&buckets, 0.99);
        assert_eq!(p99, Some(Quantile::Above(0.01)));
        assert_eq!(show(p99.map(|q| q.scaled(1000.0))), "> 10.00");
        assert_eq!(serde_json::to_value(p99).unwrap(), serde_json::json!("> 0.01"));
        assert_eq!(show(quantile(&buckets, 0.5).map(|q| q.scaled(1000.0))), "1.00");
        assert_eq!(show(None), "-");
    }
}
