//! The outbox consumer: claims a batch with `FOR UPDATE SKIP LOCKED` so replicas never share an
//! event, and acknowledges (deletes) it in the same transaction once Redis has confirmed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use openrisk_shared::event::{InvalidationEvent, OutboxRow, PoisonReason};
use tokio_postgres::{Client, Transaction};

/// Claims the oldest unclaimed events; the row locks last until the transaction ends, and a
/// replica that dies mid-batch releases them with its connection.
const CLAIM: &str = "
    SELECT o.id, o.tenant_id, o.table_name, o.op, o.tags, o.created_at,
           EXISTS (SELECT 1 FROM cache_watches w WHERE w.table_name::text = o.table_name) AS watched,
           extract(epoch FROM clock_timestamp() - o.created_at)::float8 AS age_seconds
    FROM cache_outbox o
    ORDER BY o.id
    LIMIT $1
    FOR UPDATE OF o SKIP LOCKED";

const DEAD_LETTER: &str = "
    INSERT INTO cache_outbox_dead_letter (id, tenant_id, table_name, op, tags, txid, created_at, reason)
    SELECT id, tenant_id, table_name, op, tags, txid, created_at, $2 FROM cache_outbox WHERE id = $1
    ON CONFLICT (id) DO NOTHING";

/// A claimed batch, split into applicable events and poison rows.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<ClaimedEvent>,
    pub poison: Vec<(i64, PoisonReason)>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.events.len() + self.poison.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn ids(&self) -> Vec<i64> {
        self.events.iter().map(|claimed| claimed.event.id).chain(self.poison.iter().map(|(id, _)| *id)).collect()
    }
}

/// An event with how old it was, by the database's clock, when it was claimed.
#[derive(Debug)]
pub struct ClaimedEvent {
    pub event: InvalidationEvent,
    pub age_at_claim: Duration,
}

/// Claims up to `limit` events inside `transaction`.
pub async fn claim(transaction: &Transaction<'_>, limit: u32) -> Result<Batch, tokio_postgres::Error> {
    let rows = transaction.query(CLAIM, &[&i64::from(limit)]).await?;
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
        let id = outbox_row.id;
        let age_seconds: f64 = row.get("age_seconds");
        match InvalidationEvent::try_from(outbox_row) {
            Ok(event) => {
                batch.events.push(ClaimedEvent { event, age_at_claim: Duration::from_secs_f64(age_seconds.max(0.0)) })
            }
            Err(reason) => batch.poison.push((id, reason)),
        }
    }
    Ok(batch)
}

/// Moves poison rows to the dead-letter table and deletes every claimed row.
pub async fn acknowledge(transaction: &Transaction<'_>, batch: &Batch) -> Result<(), tokio_postgres::Error> {
    for (id, reason) in &batch.poison {
        transaction.execute(DEAD_LETTER, &[id, &reason.to_string()]).await?;
    }
    transaction.execute("DELETE FROM cache_outbox WHERE id = ANY($1)", &[&batch.ids()]).await?;
    Ok(())
}

/// Size of the outbox and age of its oldest event (zero when empty), by the database's clock.
pub async fn backlog(client: &Client) -> Result<(i64, f64), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at))::float8, 0)
             FROM cache_outbox",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
