//! What the servers' command lines share: their shape (the `--config` option and one command),
//! and the wait for a signal to stop.

use std::path::PathBuf;

use crate::tasks::TaskEnded;
use crate::{ConfigError, Settings, telemetry};

/// A server's command line: the `--config` option and one of the server's commands.
#[derive(Debug, clap::Parser)]
#[command(version)]
pub struct ServerCli<C: clap::Subcommand> {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: C,
}

impl<C: clap::Subcommand> ServerCli<C> {
    /// Parses the process's arguments as the command line of the server `name`, which does
    /// `about`; `--help`, `--version` and a usage error end the process, as clap does.
    pub fn parse_as(name: &'static str, about: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command().name(name).about(about).get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }
}

/// The `--config` option of every server command, flattened into each command line.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file (environment variables override it).
    #[arg(long, global = true, env = "OPENRISK_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    /// Loads the settings (the file, then the environment) and starts logging as they say.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let settings = Settings::load(self.config.as_deref())?;
        telemetry::init(&settings.log);
        Ok(settings)
    }
}

/// Runs until a shutdown is asked for (`None`) or one of the process's tasks ends on its own
/// (`failed`, which names it), and logs which: what both servers wait for before they stop.
pub async fn until_stopped(failed: impl Future<Output = TaskEnded>) -> Option<TaskEnded> {
    let failure = tokio::select! {
        () = shutdown_signal() => None,
        ended = failed => Some(ended),
    };
    match &failure {
        None => tracing::info!("shutting down"),
        Some(ended) => tracing::error!(%ended, "shutting down to be restarted"),
    }
    failure
}

/// Resolves on Ctrl-C or SIGTERM (only Ctrl-C where there is no SIGTERM, or where its handler
/// cannot be installed).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
