//! The command line: the addresses and processes `bench.sh` started, and the size of each phase.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use clap::builder::RangedU64ValueParser;

#[derive(Debug, Parser)]
#[command(about = "HTTP benchmark of the OpenRisk cache (see load_tests/bench.sh)")]
pub struct Args {
    /// The API with the cache on.
    #[arg(long)]
    pub cached: SocketAddr,
    /// The API with the cache off (`OPENRISK_CACHE__ENABLED=false`).
    #[arg(long)]
    pub uncached: SocketAddr,
    /// Another process of the cached API, like the first: both at once measure what one Redis
    /// core serves when the API's cores are no longer the limit; measured at saturation only.
    #[arg(long)]
    pub cached_second: Option<SocketAddr>,
    #[arg(long, default_value_t = 0)]
    pub cached_second_pid: u32,
    /// A cached API (same Redis keys) to A/B against the first, e.g. built with another
    /// allocator; measured at saturation only.
    #[arg(long)]
    pub cached_alt: Option<SocketAddr>,
    /// Label of `--cached-alt`.
    #[arg(long, default_value = "alternative")]
    pub cached_alt_label: String,
    #[arg(long, default_value_t = 0)]
    pub cached_alt_pid: u32,
    /// The ceiling server (`ceiling`).
    #[arg(long)]
    pub ceiling: SocketAddr,
    /// The invalidator's metrics address.
    #[arg(long)]
    pub invalidator_metrics: SocketAddr,
    /// `METRICS_ADDR` of the API with the cache on (its /metrics).
    #[arg(long)]
    pub cached_metrics: SocketAddr,
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: String,
    /// Redis key the ceiling serves; filled here with a real risk detail.
    #[arg(long, default_value = "bench:ceiling")]
    pub ceiling_key: String,
    /// File of `<tenant id> <token>` lines (analyst tokens).
    #[arg(long)]
    pub tokens: PathBuf,
    #[arg(long)]
    pub api_pid: u32,
    #[arg(long)]
    pub uncached_pid: u32,
    #[arg(long)]
    pub invalidator_pid: u32,
    /// The Redis server's pid (for CPU per request); 0 to skip.
    #[arg(long, default_value_t = 0)]
    pub redis_pid: u32,
    /// The ceiling's pid (for CPU per request); 0 to skip.
    #[arg(long, default_value_t = 0)]
    pub ceiling_pid: u32,
    /// Record a perf profile of the cached API during an extra cached-detail saturation run
    /// before the measured rounds, left out of their means (`perf-hit.data` in `--out`).
    #[arg(long)]
    pub perf: bool,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 8.0, value_parser = positive)]
    pub phase_secs: f64,
    /// Saturation rounds (each runs every target once, interleaved).
    #[arg(long, default_value_t = 2, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub rounds: usize,
    #[arg(long, default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub connections: usize,
    /// Offered rate of the fixed-rate phases, requests per second.
    #[arg(long, default_value_t = 2000.0, value_parser = positive)]
    pub rate: f64,
    /// Hot risks read by the throughput and fixed-rate phases (the most popular of the Zipf order).
    #[arg(long, default_value_t = 1000)]
    pub hot: usize,
    /// Zipf exponent of the dashboard mix over all risks.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    pub zipf_s: f64,
    /// List variants (page and page size) one tenant requests before one write invalidates them
    /// all; the API caches at most its entry budget of them.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub variants: u32,
    /// The API's cache key prefix (`cache.key_prefix`).
    #[arg(long, default_value = "bench")]
    pub key_prefix: String,
    /// Risks whose title the freshness phase keeps changing.
    #[arg(long, default_value_t = 4)]
    pub fresh_risks: usize,
    #[arg(long, default_value_t = 3)]
    pub readers_per_risk: usize,
    /// Pause between two reads of one freshness reader, ms; 0 reads back to back. A paced reader
    /// samples the window as finely as its pace and leaves the cores to the invalidator.
    #[arg(long, default_value_t = 0)]
    pub read_interval_ms: u64,
    /// Pause between two reads of a freshness reader that has already seen its risk's latest
    /// write, ms; unset, `--read-interval-ms`. A write wakes its readers at once, so they sample
    /// each window densely without loading the cores between windows.
    #[arg(long)]
    pub settled_read_interval_ms: Option<u64>,
    /// Pause between two writes to one risk, ms.
    #[arg(long, default_value_t = 50)]
    pub write_interval_ms: u64,
    /// Offered rate of the dashboard mix running in the background of the freshness phase.
    #[arg(long, default_value_t = 500.0, value_parser = positive)]
    pub fresh_background_rate: f64,
    /// Background SQL updates per second on other risks during the freshness phase; 0 for none.
    #[arg(long, default_value_t = 100.0, value_parser = non_negative)]
    pub background_writes: f64,
    /// A cached API on a Redis Cluster, on its own database (`--cluster-database-url`, tokens in
    /// `--cluster-tokens`), measured beside `--cached`.
    #[arg(long, requires_all = ["cluster_database_url", "cluster_tokens", "cluster_invalidator_metrics"])]
    pub cluster_cached: Option<SocketAddr>,
    #[arg(long)]
    pub cluster_database_url: Option<String>,
    #[arg(long)]
    pub cluster_tokens: Option<PathBuf>,
    /// The invalidator draining `--cluster-database-url` into the cluster (it waits for a
    /// replica: `REDIS_REPLICAS_ACK` 1).
    #[arg(long)]
    pub cluster_invalidator_metrics: Option<SocketAddr>,
    /// A database drained into the same cluster by an invalidator with `REDIS_REPLICAS_ACK=0`.
    #[arg(long, requires = "cluster_ack0_invalidator_metrics")]
    pub cluster_ack0_database_url: Option<String>,
    #[arg(long)]
    pub cluster_ack0_invalidator_metrics: Option<SocketAddr>,
    /// SQL writes per second of each invalidation lag phase.
    #[arg(long, default_value_t = 50.0, value_parser = positive)]
    pub lag_writes: f64,
    /// Also measure saturation with wrk (if installed), as an independent generator.
    #[arg(long)]
    pub wrk: bool,
    /// Only the staleness window under load (`window.rs`): `--invalidator-variant` replaces
    /// the invalidator `bench.sh` would start, and the other servers' flags are not used.
    #[arg(long, requires = "invalidator_variant")]
    pub window: bool,
    /// An invalidator for `--window`:
    /// `label=path[,nice=N][,linger=MS][,api_nice=N][,realtime|,slice=US]` (`realtime`: it,
    /// Postgres and Redis at `SCHED_FIFO` while it runs; `slice`: the same three with a custom
    /// time slice of US µs instead); repeat to compare.
    #[arg(long)]
    pub invalidator_variant: Vec<crate::window::Variant>,
    /// SQL writes per second on other risks during each `--window` phase; 0 for none.
    #[arg(long, default_value_t = 500.0, value_parser = non_negative)]
    pub window_writes: f64,
    #[arg(long)]
    pub out: PathBuf,
}

/// The largest rate or length of time a run takes: ten million a second, or seconds (115 days).
const LARGEST: f64 = 10_000_000.0;

/// The smallest rate or length of time above 0: a thousandth (a request every 1,000 s).
const SMALLEST: f64 = 0.001;

/// A number from [`SMALLEST`] to [`LARGEST`], for a rate or a length of time: from 0, a negative,
/// a tiny or a huge one no schedule can be made (a request every 1/rate seconds, a phase of so
/// many seconds: a `Duration` holds neither infinity nor 10^20 s).
fn positive(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|error| format!("{error}"))?;
    let fits = (SMALLEST..=LARGEST).contains(&value);
    if fits { Ok(value) } else { Err(format!("must be a number from {SMALLEST} to {LARGEST}")) }
}

/// A number from 0 to [`LARGEST`], for a rate that may be none at all or an exponent.
fn non_negative(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|error| format!("{error}"))?;
    let fits = (0.0..=LARGEST).contains(&value);
    if fits { Ok(value) } else { Err(format!("must be a number from 0 to {LARGEST}")) }
}

#[cfg(test)]
mod tests {
    use super::Args;
    use clap::Parser;

    /// The arguments `bench.sh` always passes, then `extra`.
    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let required = [
            "openrisk-bench",
            "--cached=127.0.0.1:1",
            "--uncached=127.0.0.1:2",
            "--ceiling=127.0.0.1:3",
            "--invalidator-metrics=127.0.0.1:4",
            "--cached-metrics=127.0.0.1:5",
            "--database-url=postgres://x",
            "--redis-url=redis://x",
            "--tokens=tokens.txt",
            "--api-pid=1",
            "--uncached-pid=2",
            "--invalidator-pid=3",
            "--out=out",
        ];
        Args::try_parse_from(required.iter().chain(extra))
    }

    #[test]
    fn values_no_run_can_be_made_of_are_refused_by_clap() {
        assert!(parse(&[]).is_ok());
        // `=`, so that a negative value is read as the option's and not as another option.
        for bad in [
            "--rounds=0",
            "--connections=0",
            "--variants=0",
            "--rate=0",
            "--rate=inf",
            "--fresh-background-rate=0",
            "--phase-secs=-1",
            "--phase-secs=NaN",
            "--lag-writes=0",
            "--background-writes=-5",
            "--window-writes=inf",
            "--zipf-s=NaN",
            "--phase-secs=1e20",
            "--rate=1e-18",
            "--window-writes=1e300",
        ] {
            let error = parse(&[bad]).err().unwrap_or_else(|| panic!("{bad} was accepted"));
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation, "{bad}: {error}");
        }
    }

    #[test]
    fn none_of_a_rate_that_may_be_none_is_accepted() {
        let args = parse(&["--background-writes=0", "--window-writes=0", "--zipf-s=0"]).unwrap();
        assert_eq!((args.background_writes, args.window_writes, args.zipf_s), (0.0, 0.0, 0.0));
    }
}
