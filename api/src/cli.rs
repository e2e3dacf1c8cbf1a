//! The `openrisk-api` command line: thin wrappers over the library.

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;
use openrisk_shared::Settings;
use openrisk_shared::command_line::{ServerCli, until_stopped};
use sea_orm::{DatabaseConnection, FromQueryResult};
use uuid::Uuid;

use crate::app::{AppOptions, Application};
use crate::auth::{Role, create_token, revoke_token};
use crate::db::stmt;

/// The `openrisk-api` command line.
pub type Cli = ServerCli<Command>;

/// The command line the process was started with.
pub fn parse() -> Cli {
    Cli::parse_as("openrisk-api", "OpenRisk HTTP API with a Redis read-through cache")
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API on API_ADDR until SIGTERM or Ctrl-C.
    Serve,
    /// Apply pending database migrations (idempotent).
    Migrate,
    /// Print the OpenAPI document (JSON) on stdout.
    Openapi,
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Generate demo data: new tenants with risks, mitigations, sub-actions, assets and links.
    Seed {
        /// How many new tenants to create.
        #[arg(long, default_value_t = 1)]
        tenants: u32,
        /// Risks per tenant.
        #[arg(long, default_value_t = 200)]
        risks: u32,
        /// Also create the `demo` tenant and print an analyst token for it; once it exists, a run
        /// creates nothing and prints a fresh token for it.
        #[arg(long)]
        demo: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once; only its hash is stored).
    Create {
        /// Tenant slug or id.
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        role: Role,
        /// A label for the token.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Revoke a token by id (every API instance that listens for revocations refuses it from the
    /// commit on; one that cannot listen, within `cache.token_cache_secs`).
    Revoke {
        /// Token id.
        id: Uuid,
    },
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Openapi = cli.command {
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(std::io::stdout(), "{}", crate::app::openapi_json());
        return Ok(());
    }
    let settings = cli.config.load()?;
    match cli.command {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(&settings).await,
        Command::Openapi => unreachable!("handled before loading settings"),
        Command::Token { command } => token(&settings, command).await,
        Command::Seed { tenants, risks, demo } => seed(&settings, tenants, risks, demo).await,
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let mut app = Application::spawn(settings, AppOptions::default()).await?;
    let failure = until_stopped(app.failed()).await;
    app.shutdown().await.context("server stopped with an error")?;
    failure.map_or(Ok(()), |ended| Err(ended.into()))
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let mut client =
        openrisk_shared::db::connect(&settings.database_url, "openrisk-migrate", &settings.database.link())
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

async fn connect(settings: &Settings) -> anyhow::Result<DatabaseConnection> {
    let mut pool = settings.pool_settings();
    pool.max_connections = pool.max_connections.min(2);
    pool.min_idle = 0;
    // A seed of many rows may take longer than any request may.
    pool.statement_timeout = None;
    crate::db::connect(&settings.database_url, pool).await.context("connect to Postgres (DATABASE_URL)")
}

async fn token(settings: &Settings, command: TokenCommand) -> anyhow::Result<()> {
    let db = connect(settings).await?;
    match command {
        TokenCommand::Create { tenant, role, name } => {
            #[derive(FromQueryResult)]
            struct TenantRow {
                id: Uuid,
            }
            let found = TenantRow::find_by_statement(stmt(
                "SELECT id FROM tenants WHERE slug = $1 OR id::text = $1",
                [tenant.clone().into()],
            ))
            .one(&db)
            .await?
            .with_context(|| format!("no tenant with slug or id {tenant:?}"))?;
            let (id, token) = create_token(&db, found.id, role, &name).await?;
            eprintln!("token id: {id}");
            println!("{token}");
        }
        TokenCommand::Revoke { id } => match revoke_token(&db, id, None).await? {
            Some(_) => println!("revoked {id}"),
            None => anyhow::bail!("no live token with id {id}"),
        },
    }
    Ok(())
}

async fn seed(settings: &Settings, tenants: u32, risks: u32, demo: bool) -> anyhow::Result<()> {
    let db = connect(settings).await?;
    let started = std::time::Instant::now();
    let report = crate::seed::seed(&db, tenants, risks, demo).await.context("seed demo data")?;
    println!(
        "seeded {} tenant(s) with {risks} risks each in {:.1}s",
        report.tenants.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some((tenant, token)) = report.demo {
        println!("demo tenant: {tenant}");
        println!("token: {token}");
    }
    Ok(())
}
