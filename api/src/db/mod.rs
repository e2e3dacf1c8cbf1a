//! Postgres access through sea-orm's pool: connection set-up, timed queries and write
//! transactions that report which cache tags they invalidated.

pub mod assets;
pub mod entities;
pub mod list;
pub mod replicas;
pub mod risks;
pub mod stats;
pub mod writes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use openrisk_shared::Tag;
use openrisk_shared::config::PoolSettings;
use sea_orm::sqlx::{self, Connection, PgConnection};
use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, FromQueryResult,
    Statement, TransactionTrait, Value,
};
use uuid::Uuid;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Opens the pool with the configured sizes and timeouts.
pub async fn connect(url: &str, pool: PoolSettings) -> Result<DatabaseConnection, DbErr> {
    sea_orm::Database::connect(options(url, pool)).await
}

/// Prepares a pool that connects on first use (a replica may be down when the API starts).
pub async fn connect_lazy(url: &str, pool: PoolSettings) -> Result<DatabaseConnection, DbErr> {
    let mut options = options(url, pool);
    options.connect_lazy(true);
    sea_orm::Database::connect(options).await
}

fn options(url: &str, pool: PoolSettings) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(pool.max_connections)
        .min_connections(pool.min_idle)
        .max_lifetime(pool.max_lifetime)
        .idle_timeout(pool.idle_timeout)
        .acquire_timeout(pool.acquire_timeout)
        .connect_timeout(pool.link.connect_timeout)
        .set_application_name("openrisk-api")
        .sqlx_logging(false);
    // sqlx sets no client-side keepalive or TCP user timeout: the server's side of each session
    // still drops a client that went silent, `http.request_timeout_ms` bounds what a request
    // waits, and the ping that takes a connection back is bounded as `answers_within` says.
    if pool.link.tcp_user_timeout_ms > 0 {
        let silent = Duration::from_millis(pool.link.tcp_user_timeout_ms.into());
        let limit = pool.statement_timeout.unwrap_or_default() + silent;
        options.map_sqlx_postgres_pool_opts(move |pool| {
            pool.after_release(move |conn, _| Box::pin(answers_within(conn, limit)))
        });
    }
    let mut server_side = pool.link.server_options();
    if let (true, Some(limit)) = (pool.link.server_side, pool.statement_timeout) {
        server_side.push(("statement_timeout", limit.as_millis().to_string()));
    }
    options.map_sqlx_postgres_opts(move |connect| connect.options(server_side.clone()));
    options
}

/// Pings a connection the pool takes back, within `limit`. sqlx pings it too, but with no
/// deadline: a request cut off mid-query over a silent network would leave its connection
/// waiting for as long as the kernel retransmits (about 15 minutes), one place fewer in the
/// pool. The ping's answer follows the end of a statement still running, so `limit` is the
/// statement timeout (a live server ends the statement by then) plus the TCP user timeout: a
/// connection given up earlier would free its place while its backend still runs. An error
/// here has sqlx close the connection without a goodbye.
async fn answers_within(conn: &mut PgConnection, limit: Duration) -> Result<bool, sqlx::Error> {
    match tokio::time::timeout(limit, conn.ping()).await {
        Ok(answered) => answered.map(|()| true),
        Err(_) => Err(sqlx::Error::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Builds a Postgres statement with `$n` placeholders.
pub fn stmt(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Cache tags a committed transaction invalidated, grouped per tenant, as its triggers wrote them
/// to the outbox.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Invalidations(pub Vec<(Uuid, Vec<Tag>)>);

/// The tenant and tags of an outbox row the committing transaction's own triggers wrote (the
/// invalidator reads whole rows as `openrisk_shared::event::OutboxRow`).
#[derive(Debug, FromQueryResult)]
struct OwnOutboxRow {
    tenant_id: Uuid,
    tags: Vec<String>,
}

/// The pool plus the metrics every query reports to.
#[derive(Debug, Clone)]
pub struct Db {
    pub conn: DatabaseConnection,
    metrics: Arc<Metrics>,
}

impl Db {
    pub fn new(conn: DatabaseConnection, metrics: Arc<Metrics>) -> Self {
        Self { conn, metrics }
    }

    /// Runs `query` and records its latency under `name`.
    pub async fn timed<T>(&self, name: &str, query: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = query.await;
        self.metrics.observe_db(name, started);
        result
    }

    /// Begins a write transaction and notes where its outbox rows will start (for [`Db::commit`]).
    pub async fn begin(&self) -> Result<DatabaseTransaction, ApiError> {
        let txn = self.conn.begin().await?;
        txn.execute_unprepared(openrisk_shared::outbox::NOTE_POSITION).await?;
        Ok(txn)
    }

    /// Commits `txn` after reading the outbox rows its own triggers wrote (same transaction id,
    /// ids past the position noted by [`Db::begin`]: a short primary-key range, no txid index),
    /// so the caller can invalidate those tags right away (read-your-writes). The rows stay in
    /// the outbox for the invalidator, which remains the source of truth.
    pub async fn commit(&self, txn: DatabaseTransaction) -> Result<Invalidations, CommitFailed> {
        let started = Instant::now();
        let own_rows = OwnOutboxRow::find_by_statement(stmt(openrisk_shared::outbox::OWN_ROWS, [])).all(&txn).await;
        let rows = own_rows.map_err(|error| CommitFailed { error: error.into(), maybe_applied: None })?;
        let committed = txn.commit().await;
        self.metrics.observe_db("commit", started);
        let invalidations = Invalidations::of(rows);
        match committed {
            Ok(()) => Ok(invalidations),
            Err(error) => {
                let error = ApiError::from_commit(error);
                let maybe_applied = error.is_outcome_unknown().then_some(invalidations);
                Err(CommitFailed { error, maybe_applied })
            }
        }
    }

    /// The last migration the database has applied (for /readyz), 0 when it has none: whether
    /// it answers, and whether its schema is the one this build's queries need.
    pub async fn schema_version(&self) -> Result<i64, DbErr> {
        let last = "SELECT coalesce(max(version), 0) AS version FROM schema_migrations";
        let row = self.conn.query_one_raw(stmt(last, [])).await;
        match row {
            Ok(row) => row.map_or(Ok(0), |row| row.try_get("", "version")),
            // A database no migration ever ran on has no such table (`undefined_table`).
            Err(error) if crate::error::sqlstate(&error).as_deref() == Some("42P01") => Ok(0),
            Err(error) => Err(error),
        }
    }

    /// Samples the pool for the `openrisk_db_pool_*` gauges.
    pub fn sample_pool(&self, max_connections: u32) {
        let pool = self.conn.get_postgres_connection_pool();
        let (size, idle) = (pool.size(), u32::try_from(pool.num_idle()).unwrap_or(u32::MAX));
        self.metrics.set_pool(idle, size.saturating_sub(idle), max_connections);
    }
}

/// A write whose commit failed, with the tags of what it changed if its outcome is unknown (the
/// connection was lost once `COMMIT` was sent): invalidating them costs a miss if it was not
/// applied, while leaving them cached would show the client, who is told to read the resource
/// before sending the write again, the state from before a write that was made.
#[derive(Debug)]
pub struct CommitFailed {
    pub error: ApiError,
    pub maybe_applied: Option<Invalidations>,
}

impl Invalidations {
    /// The tags of a transaction's own outbox rows, grouped per tenant, each once.
    fn of(rows: Vec<OwnOutboxRow>) -> Self {
        let mut grouped: Vec<(Uuid, Vec<Tag>)> = Vec::new();
        for row in rows {
            let tags = row.tags.iter().filter_map(|tag| Tag::parse(tag).ok());
            match grouped.iter_mut().find(|(tenant, _)| *tenant == row.tenant_id) {
                Some((_, known)) => known.extend(tags),
                None => grouped.push((row.tenant_id, tags.collect())),
            }
        }
        for (_, tags) in &mut grouped {
            tags.sort();
            tags.dedup();
        }
        Invalidations(grouped)
    }
}
