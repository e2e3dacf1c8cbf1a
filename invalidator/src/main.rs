#[tokio::main]
async fn main() -> anyhow::Result<()> {
    openrisk_invalidator::cli::run(openrisk_invalidator::cli::parse()).await
}
