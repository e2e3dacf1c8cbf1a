//! Versioned SQL migrations, embedded in the binary and applied in order by [`migrate`].
//!
//! Each migration runs in its own transaction and is recorded in `schema_migrations` with a
//! checksum; applying twice is a no-op, and an already-applied migration whose file changed is
//! refused rather than silently skipped. A session advisory lock serialises concurrent runners.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// One versioned SQL file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// Every migration, in the order it must be applied: each file `sql/<version>_<name>.sql`, as
/// `build.rs` lists them (a test holds the versions to following each other).
pub const MIGRATIONS: &[Migration] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database error while migrating: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("migration {version} ({name}) failed: {source}")]
    Failed { version: i64, name: &'static str, source: tokio_postgres::Error },
    #[error(
        "migration {version} ({name}) was applied with checksum {applied} but the file now has {current}; \
         write a new migration instead of editing an applied one"
    )]
    Edited { version: i64, name: &'static str, applied: String, current: String },
}

/// A hash over every migration, naming a schema state (test templates are keyed by it).
pub fn fingerprint() -> String {
    let mut hasher = Sha256::new();
    for migration in MIGRATIONS {
        hasher.update(migration.checksum().as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Applies every migration not yet applied; returns the versions it applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i64>, MigrateError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&openrisk_shared::advisory_locks::MIGRATION]).await?;
    let result = apply_pending(client).await;
    client.execute("SELECT pg_advisory_unlock($1)", &[&openrisk_shared::advisory_locks::MIGRATION]).await?;
    result
}

async fn apply_pending(client: &mut Client) -> Result<Vec<i64>, MigrateError> {
    client
        .batch_execute(
            "SET client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version     bigint PRIMARY KEY,
                 name        text NOT NULL,
                 checksum    text NOT NULL,
                 applied_at  timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        let current = migration.checksum();
        let row = client
            .query_opt("SELECT checksum FROM schema_migrations WHERE version = $1", &[&migration.version])
            .await?;
        if let Some(row) = row {
            let recorded: String = row.get(0);
            if recorded != current {
                return Err(MigrateError::Edited {
                    version: migration.version,
                    name: migration.name,
                    applied: recorded,
                    current,
                });
            }
            continue;
        }
        let failed = |source| MigrateError::Failed { version: migration.version, name: migration.name, source };
        let transaction = client.transaction().await?;
        transaction.batch_execute(migration.sql).await.map_err(failed)?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&migration.version, &migration.name, &current],
            )
            .await?;
        transaction.commit().await?;
        tracing::info!(version = migration.version, name = migration.name, "applied migration");
        applied.push(migration.version);
    }
    Ok(applied)
}
