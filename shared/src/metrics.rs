//! Prometheus helpers shared by both binaries.

use prometheus::{Encoder, Registry, TextEncoder};

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric in `registry` in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        tracing::error!(%error, "could not encode metrics");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// Latency buckets from 100 µs to 10 s, for Redis, Postgres and HTTP timings alike.
pub fn latency_buckets() -> Vec<f64> {
    vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
}
