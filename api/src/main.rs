use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    openrisk_api::cli::run(openrisk_api::cli::Cli::parse()).await
}
