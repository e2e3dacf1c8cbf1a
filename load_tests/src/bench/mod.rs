//! The HTTP benchmark (`openrisk-bench`): a load generator with a closed-loop (saturation) and an
//! open-loop (fixed offered rate, coordinated-omission corrected) mode, key distributions,
//! `/proc` and Prometheus sampling, an SVG plot of the results, and a single Redis node measured
//! beside a Redis Cluster.

pub mod http;
pub mod plot;
pub mod procfs;
pub mod prom;
pub mod redis_cost;
pub mod topology;
pub mod zipf;
