//! The outbox consumer: claims a batch with `FOR UPDATE SKIP LOCKED` so replicas never share an
//! event, and acknowledges it (commits its deletion) only once Redis has confirmed. The SQL is
//! in [`openrisk_shared::outbox`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use openrisk_shared::db::Lsn;
use openrisk_shared::event::{InvalidationEvent, OutboxRow, PoisonReason};
use openrisk_shared::outbox;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement, Transaction};
use uuid::Uuid;

/// A claimed batch, split into applicable events and poison rows.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<ClaimedEvent>,
    pub poison: Vec<PoisonRow>,
    /// How many events of held tenants the claim moved aside instead (not in `events`): they
    /// commit or roll back with the batch.
    pub moved_aside: usize,
    /// Where the primary's WAL ended once the claim saw the rows: every claimed write is
    /// replayed by a replica that has replayed this far.
    pub replayed_by: Lsn,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.events.len() + self.poison.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each row's tenant and outbox id, events first, then poison rows.
    fn rows(&self) -> impl Iterator<Item = (Uuid, i64)> + '_ {
        let events = self.events.iter().map(|claimed| (claimed.event.tenant_id, claimed.event.id));
        events.chain(self.poison.iter().map(|poison| (poison.row.tenant_id, poison.row.id)))
    }

    /// The outbox ids of the batch's rows, by tenant.
    pub fn ids_by_tenant(&self) -> HashMap<Uuid, HashSet<i64>> {
        let mut ids: HashMap<Uuid, HashSet<i64>> = HashMap::new();
        for (tenant, id) in self.rows() {
            ids.entry(tenant).or_default().insert(id);
        }
        ids
    }

    /// Keeps the rows for whose tenant and outbox id `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(Uuid, i64) -> bool) {
        self.events.retain(|claimed| keep(claimed.event.tenant_id, claimed.event.id));
        self.poison.retain(|poison| keep(poison.row.tenant_id, poison.row.id));
    }

    /// The batch's distinct tenants, sorted and comma-separated (the first ten, then how many
    /// more), for its log lines.
    pub fn tenants(&self) -> String {
        const SHOWN: usize = 10;
        let tenants: BTreeSet<Uuid> = self.rows().map(|(tenant, _)| tenant).collect();
        let mut text = tenants.iter().take(SHOWN).map(ToString::to_string).collect::<Vec<_>>().join(",");
        if tenants.len() > SHOWN {
            text.push_str(&format!(" (+{} more)", tenants.len() - SHOWN));
        }
        text
    }

    /// The largest invalidation lag in the batch once Redis confirmed it `confirmed_after` the
    /// claim (what `openrisk_invalidator_lag_seconds` observes), in milliseconds.
    pub fn max_lag_ms(&self, confirmed_after: Duration) -> f64 {
        let oldest = self.events.iter().map(|claimed| claimed.age_at_claim).max().unwrap_or_default();
        (oldest + confirmed_after).as_secs_f64() * 1000.0
    }
}

/// An event with how old it was, by the database's clock, when it was claimed: since its commit
/// where Postgres records commit times, else since the row change (see [`outbox::CLAIM`]).
#[derive(Debug)]
pub struct ClaimedEvent {
    pub event: InvalidationEvent,
    pub age_at_claim: Duration,
    /// From the row change to its commit, where Postgres recorded the commit's time.
    pub in_transaction: Option<Duration>,
}

/// A claimed row that cannot be applied, kept whole for the dead-letter table.
#[derive(Debug)]
pub struct PoisonRow {
    pub row: OutboxRow,
    pub txid: String,
    pub reason: PoisonReason,
}

/// Prepares the claim on `client`, for [`claim`].
pub async fn prepare_claim(client: &Client) -> Result<Statement, tokio_postgres::Error> {
    client.prepare(outbox::CLAIM).await
}

/// Begins the park leader's wake-up transaction, which idles until the wake-up (up to the poll
/// interval) and must not be ended by a server or role default for idle transactions.
pub async fn begin_parked(client: &mut Client) -> Result<Transaction<'_>, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    transaction.batch_execute(outbox::IDLE_BY_DESIGN).await?;
    Ok(transaction)
}

/// Claims up to `limit` events inside `transaction` (they stay claimed until it ends), and takes
/// back up to `limit` of those moved aside, with the statement [`prepare_claim`] prepared on its
/// connection, under the transaction's settings ([`outbox::CLAIMING_TRANSACTION`], sent in the
/// same round trip). The claimed events of the tenants in `held_back` move aside instead of
/// joining the batch ([`Batch::moved_aside`] counts them), and none of theirs is taken back; a
/// claim that moves any aside wakes the other replicas at its commit ([`outbox::WAKE_ALL`]).
pub async fn claim(
    transaction: &Transaction<'_>,
    statement: &Statement,
    limit: u32,
    held_back: &[Uuid],
) -> Result<Batch, tokio_postgres::Error> {
    let limit = i64::from(limit);
    let parameters: [&(dyn ToSql + Sync); 2] = [&limit, &held_back];
    let (_, _, rows) = tokio::try_join!(
        transaction.batch_execute(outbox::CLAIMING_TRANSACTION),
        transaction.batch_execute(outbox::IDLE_BY_DESIGN),
        transaction.query(statement, &parameters)
    )?;
    let (moved, claimed): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|row| row.get("moved_aside"));
    if !moved.is_empty() {
        // Another replica, parked, may reach the master this one does not.
        transaction.batch_execute(outbox::WAKE_ALL).await?;
    }
    Ok(Batch { moved_aside: moved.len(), ..batch_of(&claimed) })
}

/// Claims with the tenants in `held_back` held, each claim in a transaction of its own, until one
/// moves none of their events aside: what the replicas' claims do to a held tenant's backlog over
/// time, done at once (benchmarks and tests build a backlog of events moved aside so). Returns
/// how many events moved aside and how many the claims took (other tenants', now deleted).
pub async fn move_all_aside(
    client: &mut Client,
    statement: &Statement,
    limit: u32,
    held_back: &[Uuid],
) -> Result<(usize, usize), tokio_postgres::Error> {
    let (mut moved, mut taken) = (0, 0);
    loop {
        let transaction = client.transaction().await?;
        let batch = claim(&transaction, statement, limit, held_back).await?;
        transaction.commit().await?;
        if batch.moved_aside == 0 {
            return Ok((moved, taken + batch.len()));
        }
        (moved, taken) = (moved + batch.moved_aside, taken + batch.len());
    }
}

/// Reads, without claiming them, every event of the tenants in `since` moved aside by
/// transactions at or past each one's id ([`outbox::PEEK`]), this one's included. Returns them
/// and, when it read any, where the next read of the same tenants may start (as `since`) and miss
/// none moved after this one.
pub async fn peek(
    transaction: &Transaction<'_>,
    since: &[(Uuid, u64)],
) -> Result<(Batch, Option<u64>), tokio_postgres::Error> {
    let tenants: Vec<Uuid> = since.iter().map(|(tenant, _)| *tenant).collect();
    let positions: Vec<String> = since.iter().map(|(_, since)| since.to_string()).collect();
    let rows = transaction.query(outbox::PEEK, &[&tenants, &positions]).await?;
    let next = rows.first().and_then(|row| row.get::<_, String>("snapshot_xmin").parse::<u64>().ok());
    Ok((batch_of(&rows), next))
}

/// The events and poison rows of `rows`, read in the columns of [`outbox::CLAIM`].
fn batch_of(rows: &[Row]) -> Batch {
    let mut batch = Batch::default();
    for row in rows {
        let outbox_row = OutboxRow {
            id: row.get("id"),
            tenant_id: row.get("tenant_id"),
            table_name: row.get("table_name"),
            op: row.get("op"),
            tags: row.get("tags"),
            created_at: row.get::<_, DateTime<Utc>>("created_at"),
            table_watched: row.get("watched"),
        };
        let age_at_claim = seconds(row.get("age_seconds"));
        let in_transaction = row.get::<_, Option<f64>>("in_transaction_seconds").map(seconds);
        if let Ok(position) = row.get::<_, String>("wal_position").parse::<Lsn>() {
            batch.replayed_by = batch.replayed_by.max(position);
        }
        match InvalidationEvent::try_from(outbox_row.clone()) {
            Ok(event) => batch.events.push(ClaimedEvent { event, age_at_claim, in_transaction }),
            Err(reason) => batch.poison.push(PoisonRow { row: outbox_row, txid: row.get("txid"), reason }),
        }
    }
    batch
}

/// A duration the database computed between two of its clock readings; never negative (its
/// clock may step back between them).
fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}

/// Moves the batch's poison rows to the dead-letter table (the claim already deleted them).
pub async fn dead_letter(transaction: &Transaction<'_>, batch: &Batch) -> Result<(), tokio_postgres::Error> {
    for poison in &batch.poison {
        let row = &poison.row;
        transaction
            .execute(
                outbox::DEAD_LETTER,
                &[
                    &row.id,
                    &row.tenant_id,
                    &row.table_name,
                    &row.op,
                    &row.tags,
                    &poison.txid,
                    &row.created_at,
                    &poison.reason.to_string(),
                ],
            )
            .await?;
    }
    Ok(())
}

/// Size of the outbox (the events moved aside included) and age of its oldest event (zero when
/// empty), by the database's clock (from the commit where commit times are recorded; see
/// [`outbox::BACKLOG`]).
pub async fn backlog(client: &impl GenericClient) -> Result<(i64, f64), tokio_postgres::Error> {
    let row = client.query_one(outbox::BACKLOG, &[]).await?;
    Ok((row.get(0), row.get(1)))
}
