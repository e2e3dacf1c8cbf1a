/// jemalloc unless built without the `jemalloc` feature (the benchmark's allocator A/B): side by
/// side it served cached reads at 0.98-1.15x the system allocator's throughput for up to 17 % less
/// CPU per hit (`load_tests/RESULTS.md`, 2026-12-03).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    openrisk_api::cli::run(openrisk_api::cli::parse()).await
}
