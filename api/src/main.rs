/// jemalloc unless built without the `jemalloc` feature (the benchmark's allocator A/B): its
/// per-thread caches served cached reads at 1.35x glibc's throughput (`load_tests/RESULTS.md`).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    openrisk_api::cli::run(openrisk_api::cli::parse()).await
}
