//! Key distributions: uniform, and any discrete distribution given by weights (Zipf's law over
//! ranked keys being the realistic one for dashboards: a few risks are read all the time).

use rand::Rng;
use rand::rngs::SmallRng;

/// Draws request indexes.
#[derive(Debug, Clone)]
pub enum Sampler {
    /// Uniform over `0..n`.
    Uniform(usize),
    /// Inverse-CDF sampling over a cumulative distribution ending at 1.
    Cdf(Vec<f64>),
}

impl Sampler {
    /// A distribution proportional to `weights` (not all zero).
    pub fn from_weights(weights: &[f64]) -> Self {
        let total: f64 = weights.iter().sum();
        assert!(total > 0.0, "weights must not all be zero");
        let mut running = 0.0;
        let cdf = weights
            .iter()
            .map(|weight| {
                running += weight / total;
                running
            })
            .collect();
        Sampler::Cdf(cdf)
    }

    pub fn sample(&self, rng: &mut SmallRng) -> usize {
        match self {
            Sampler::Uniform(n) => rng.random_range(0..(*n).max(1)),
            Sampler::Cdf(cdf) => {
                let u: f64 = rng.random();
                cdf.partition_point(|&c| c < u).min(cdf.len().saturating_sub(1))
            }
        }
    }
}

/// Zipf weights for `n` ranked keys with exponent `s`: rank `k` (from 1) weighs `1 / k^s`.
pub fn zipf_weights(n: usize, s: f64) -> Vec<f64> {
    (1..=n).map(|rank| 1.0 / (rank as f64).powf(s)).collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn zipf_favours_the_first_ranks_and_covers_the_tail() {
        let sampler = Sampler::from_weights(&zipf_weights(1000, 1.0));
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[sampler.sample(&mut rng)] += 1;
        }
        // P(rank 1) = 1 / H(1000) ≈ 0.134.
        assert!((12_000..15_000).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[0] > counts[1] && counts[1] > counts[9]);
        assert!(counts[500..].iter().sum::<u32>() > 0);
    }

    #[test]
    fn weights_mix_groups_in_proportion() {
        let sampler = Sampler::from_weights(&[3.0, 1.0]);
        let mut rng = SmallRng::seed_from_u64(2);
        let first = (0..10_000).filter(|_| sampler.sample(&mut rng) == 0).count();
        assert!((7_000..8_000).contains(&first), "{first}");
    }
}
