//! The `openrisk-invalidator` command line.

use std::time::Duration;

use clap::Subcommand;
use openrisk_shared::command_line::{ServerCli, until_stopped};
use openrisk_shared::config::WakeMode;

/// The `openrisk-invalidator` command line.
pub type Cli = ServerCli<Command>;

/// The command line the process was started with.
pub fn parse() -> Cli {
    Cli::parse_as("openrisk-invalidator", "Turns committed Postgres changes into exact Redis invalidations")
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
    let mut settings = cli.config.load()?;
    match cli.command {
        Command::Run { mode } => {
            if let Some(mode) = mode {
                settings.invalidator.mode = mode;
            }
            let timeout = Duration::from_millis(settings.invalidator.shutdown_timeout_ms);
            let mut running = crate::start(settings).await?;
            let failure = until_stopped(running.failed()).await;
            if !running.shutdown(timeout).await {
                tracing::warn!(?timeout, "shutdown timed out; claimed events are released by the database");
            }
            failure.map_or(Ok(()), |ended| Err(ended.into()))
        }
    }
}
