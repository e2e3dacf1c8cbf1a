//! The invalidators' own lag (`openrisk_invalidator_lag_seconds`) between two soak samples,
//! from the difference of their cumulative histogram buckets.

use std::collections::BTreeMap;

/// Name of the histogram's bucket series in the Prometheus text format.
const BUCKET: &str = "openrisk_invalidator_lag_seconds_bucket{le=\"";

/// Cumulative bucket counts `(upper bound in seconds, count)` of one scrape, `+Inf` last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(Vec<(f64, f64)>);

impl Buckets {
    /// Reads the lag histogram's buckets out of a `/metrics` page (empty when absent).
    pub fn parse(metrics: &str) -> Self {
        let mut buckets: Vec<(f64, f64)> = metrics
            .lines()
            .filter_map(|line| line.strip_prefix(BUCKET))
            .filter_map(|rest| {
                let (bound, count) = rest.split_once("\"} ")?;
                let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().ok()? };
                Some((bound, count.trim().parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self(buckets)
    }

    fn total(&self) -> f64 {
        self.0.last().map_or(0.0, |&(_, count)| count)
    }

    /// What was observed since `earlier`; a process that restarted in between starts from zero,
    /// so then everything it counted is new.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        if earlier.0.len() != self.0.len() || earlier.total() > self.total() {
            return self.clone();
        }
        Buckets(self.0.iter().zip(&earlier.0).map(|(&(bound, now), &(_, then))| (bound, now - then)).collect())
    }

    /// Adds another process's buckets (same bounds) to these.
    pub fn merge(&mut self, other: &Buckets) {
        if self.0.is_empty() {
            self.0 = other.0.clone();
        } else if self.0.len() == other.0.len() {
            for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
                mine.1 += theirs.1;
            }
        }
    }

    /// The upper bound of the bucket holding quantile `q` (what a histogram can promise of it),
    /// or `None` when nothing was observed.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total <= 0.0 {
            return None;
        }
        let rank = (q * total).ceil();
        self.0.iter().find(|&&(_, count)| count >= rank).map(|&(bound, _)| bound)
    }
}

/// The lag buckets of each invalidator at the previous sample.
#[derive(Debug, Default)]
pub struct LagScraper {
    previous: BTreeMap<String, Buckets>,
}

impl LagScraper {
    /// Records a scrape of `name` and returns what it observed since its previous scrape.
    pub fn observe(&mut self, name: &str, metrics: &str) -> Buckets {
        let now = Buckets::parse(metrics);
        let fresh = self.previous.get(name).map_or_else(|| now.clone(), |earlier| now.since(earlier));
        self.previous.insert(name.to_owned(), now);
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(counts: [u64; 4]) -> String {
        let bounds = ["0.005", "0.01", "0.05", "+Inf"];
        bounds
            .iter()
            .zip(counts)
            .map(|(bound, count)| format!("openrisk_invalidator_lag_seconds_bucket{{le=\"{bound}\"}} {count}\n"))
            .collect::<String>()
            + "openrisk_invalidator_lag_seconds_sum 1.5\n"
    }

    #[test]
    fn the_p99_is_the_bound_of_the_bucket_holding_it() {
        let buckets = Buckets::parse(&page([90, 99, 100, 100]));
        assert_eq!(buckets.quantile_bound(0.5), Some(0.005));
        assert_eq!(buckets.quantile_bound(0.99), Some(0.01));
        assert_eq!(buckets.quantile_bound(1.0), Some(0.05));
    }

    #[test]
    fn only_what_was_observed_since_the_previous_scrape_counts() {
        let mut scraper = LagScraper::default();
        scraper.observe("invalidator-1", &page([1000, 1000, 1000, 1000]));
        let fresh = scraper.observe("invalidator-1", &page([1000, 1000, 1010, 1010]));
        assert_eq!(fresh.quantile_bound(0.5), Some(0.05), "the ten new events were all slow");
    }

    #[test]
    fn a_restarted_process_counts_from_zero() {
        let mut scraper = LagScraper::default();
        scraper.observe("invalidator-1", &page([1000, 1000, 1000, 1000]));
        let fresh = scraper.observe("invalidator-1", &page([0, 5, 5, 5]));
        assert_eq!(fresh.quantile_bound(0.99), Some(0.01));
    }

    #[test]
    fn replicas_merge_into_one_distribution() {
        let mut all = Buckets::parse(&page([10, 10, 10, 10]));
        all.merge(&Buckets::parse(&page([0, 0, 0, 990])));
        assert_eq!(all.quantile_bound(0.5), Some(f64::INFINITY));
        assert_eq!(all.quantile_bound(0.005), Some(0.005));
    }

    #[test]
    fn nothing_observed_has_no_quantile() {
        assert_eq!(Buckets::parse("").quantile_bound(0.99), None);
    }
}
