#[tokio::main]
async fn main() -> anyhow::Result<()> {
    openrisk_api::cli::run(openrisk_api::cli::parse()).await
}
