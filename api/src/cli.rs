//! The `openrisk-api` command line: thin wrappers over the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use openrisk_shared::{Settings, telemetry};

#[derive(Debug, Parser)]
#[command(name = "openrisk-api", version, about = "OpenRisk HTTP API with a Redis read-through cache")]
pub struct Cli {
    /// TOML configuration file (environment variables override it).
    #[arg(long, global = true, env = "OPENRISK_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations (idempotent).
    Migrate,
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(&settings.log);
    match cli.command {
        Command::Migrate => migrate(&settings).await,
    }
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let mut client = openrisk_shared::db::connect(&settings.database_url, "openrisk-migrate")
        .await
        .with_context(|| "connect to Postgres (DATABASE_URL)")?;
    let applied = openrisk_migrations::migrate(&mut client).await?;
    if applied.is_empty() {
        println!("database is up to date");
    } else {
        println!("applied migrations {applied:?}");
    }
    Ok(())
}
