//! The `openrisk-invalidator` command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use openrisk_shared::config::WakeMode;
use openrisk_shared::{Settings, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "openrisk-invalidator",
    version,
    about = "Turns committed Postgres changes into exact Redis invalidations"
)]
pub struct Cli {
    /// TOML configuration file (environment variables override it).
    #[arg(long, global = true, env = "OPENRISK_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drain the outbox until SIGTERM or Ctrl-C.
    Run {
        /// How to learn of new events (overrides `invalidator.mode`).
        #[arg(long, value_enum)]
        mode: Option<WakeMode>,
    },
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(&settings.log);
    match cli.command {
        Command::Run { mode } => {
            if let Some(mode) = mode {
                settings.invalidator.mode = mode;
            }
            let timeout = Duration::from_millis(settings.invalidator.shutdown_timeout_ms);
            let running = crate::start(settings).await?;
            shutdown_signal().await;
            tracing::info!("shutting down");
            if !running.shutdown(timeout).await {
                tracing::warn!(?timeout, "shutdown timed out; claimed events are released by the database");
            }
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
