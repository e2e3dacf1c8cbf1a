use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    openrisk_invalidator::cli::run(openrisk_invalidator::cli::Cli::parse()).await
}
