//! Versioned SQL migrations, embedded in the binary and applied in order by [`migrate`].
//!
//! Each migration runs in its own transaction and is recorded in `schema_migrations` with a
//! checksum; applying twice is a no-op, and an already-applied migration whose file changed is
//! refused rather than silently skipped, as is a database that holds a migration this binary
//! does not know below its last one (one that was reverted). A session advisory lock serialises
//! concurrent runners. A migration waits at most [`LOCK_TIMEOUT`] for each table lock, and is
//! run again after a pause when it waited longer or lost a deadlock to the live system
//! ([`LOCK_RETRIES`] times at most), so that a long transaction of the live system never makes
//! every later query of a table queue behind it.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

/// One versioned SQL file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// SHA-256 of the file with `\r\n` read as `\n`, so that a checkout with Windows line endings
    /// has the checksum its migrations were applied with.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.replace("\r\n", "\n").as_bytes()))
    }
}

/// Longest wait of a migration's statement for a table lock (`lock_timeout`): past it the
/// migration is rolled back and run again later, instead of holding its place at the head of the
/// lock queue, where every query of the table waits behind it.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a migration that timed out waiting for a lock runs again (after 1 s, then up
/// to 30 s apart: about four minutes in all).
pub const LOCK_RETRIES: usize = 12;

/// Every migration, in the order it must be applied: each file `sql/<version>_<name>.sql`, as
/// `build.rs` lists them (a test holds the versions to following each other).
pub const MIGRATIONS: &[Migration] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database error while migrating: {}", described(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("migration {version} ({name}) failed: {}", described(.source))]
    Failed { version: i64, name: &'static str, source: tokio_postgres::Error },
    #[error(
        "the database has migration(s) {versions:?} that this binary does not know, below its last one \
         ({last}): a migration that was applied and then removed from the code; restore it, or undo what it \
         did and delete its row from schema_migrations"
    )]
    Unknown { versions: Vec<i64>, last: i64 },
    #[error(
        "migration {version} ({name}) was applied with checksum {applied} but the file now has {current}; \
         write a new migration instead of editing an applied one"
    )]
    Edited { version: i64, name: &'static str, applied: String, current: String },
}

/// The database's own words for `error` (message, detail, hint), where `tokio_postgres` says only
/// "db error", so that the one line a log shows names the cause.
fn described(error: &tokio_postgres::Error) -> String {
    let Some(database) = error.as_db_error() else {
        return openrisk_shared::db::with_causes(error);
    };
    let mut text = format!("{}: {}", database.severity(), database.message());
    if let Some(detail) = database.detail() {
        text.push_str(&format!(" (detail: {detail})"));
    }
    if let Some(hint) = database.hint() {
        text.push_str(&format!(" (hint: {hint})"));
    }
    text
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
    migrate_these(client, MIGRATIONS).await
}

/// [`migrate`] with `migrations` (in version order) in place of this binary's own.
pub async fn migrate_these(client: &mut Client, migrations: &[Migration]) -> Result<Vec<i64>, MigrateError> {
    let lock = openrisk_shared::advisory_locks::MIGRATION;
    let taken: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&lock]).await?.get(0);
    if !taken {
        tracing::info!("another runner is applying migrations; waiting for it to finish");
        client.execute("SELECT pg_advisory_lock($1)", &[&lock]).await?;
    }
    let result = apply_pending(client, migrations).await;
    client.execute("SELECT pg_advisory_unlock($1)", &[&lock]).await?;
    result
}

async fn apply_pending(client: &mut Client, migrations: &[Migration]) -> Result<Vec<i64>, MigrateError> {
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
    check_recorded(&recorded_versions(client).await?, migrations)?;
    let mut applied = Vec::new();
    for migration in migrations {
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
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(LOCK_RETRIES)
            .build();
        let failed = |source| MigrateError::Failed { version: migration.version, name: migration.name, source };
        while let Err(error) = apply(client, migration, &current).await {
            let waited = [SqlState::LOCK_NOT_AVAILABLE, SqlState::T_R_DEADLOCK_DETECTED];
            let pause = pauses.next().filter(|_| error.code().is_some_and(|code| waited.contains(code)));
            let Some(pause) = pause else { return Err(failed(error)) };
            tracing::warn!(
                version = migration.version,
                name = migration.name,
                ?pause,
                error = described(&error),
                "a migration waited longer than its lock timeout for a table another session holds \
                 (a long transaction?), or lost a deadlock to one; it was rolled back and runs again \
                 after a pause"
            );
            tokio::time::sleep(pause).await;
        }
        tracing::info!(version = migration.version, name = migration.name, "applied migration");
        applied.push(migration.version);
    }
    Ok(applied)
}

/// Applies `migration` in one transaction, its statements waiting at most [`LOCK_TIMEOUT`] for
/// a lock, and records it with its checksum.
async fn apply(client: &mut Client, migration: &Migration, checksum: &str) -> Result<(), tokio_postgres::Error> {
    let transaction: Transaction<'_> = client.transaction().await?;
    let timeout = format!("SET LOCAL lock_timeout = {}", LOCK_TIMEOUT.as_millis());
    transaction.batch_execute(&timeout).await?;
    transaction.batch_execute(migration.sql).await?;
    transaction
        .execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&migration.version, &migration.name, &checksum],
        )
        .await?;
    transaction.commit().await
}

async fn recorded_versions(client: &Client) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client.query("SELECT version FROM schema_migrations ORDER BY version", &[]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Refuses a database whose `recorded` versions hold one not among `migrations` below their
/// last: one that was applied and then removed from the code, and what it did is still in the
/// schema, where nothing else would ever say so. One above their last is a newer release's, and
/// only warned about, as a rollback of the code runs `migrate` too.
fn check_recorded(recorded: &[i64], migrations: &[Migration]) -> Result<(), MigrateError> {
    let last = migrations.last().map_or(0, |migration| migration.version);
    if let Some(newer) = recorded.iter().find(|&&version| version > last) {
        tracing::warn!(
            version = newer,
            "the database has a migration newer than this binary knows (a newer release applied it); going on"
        );
    }
    let known = |version: &i64| migrations.iter().any(|migration| migration.version == *version);
    let versions: Vec<i64> = recorded.iter().copied().filter(|version| *version < last && !known(version)).collect();
    if versions.is_empty() { Ok(()) } else { Err(MigrateError::Unknown { versions, last }) }
}
