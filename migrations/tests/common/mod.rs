//! Helpers the migration test binaries share.

#![allow(dead_code)] // Each test binary uses a different part.

use tokio_postgres::Client;
use uuid::Uuid;

/// A new tenant with this slug; returns its id.
pub async fn tenant(client: &Client, slug: &str) -> Uuid {
    client.query_one("INSERT INTO tenants (slug, name) VALUES ($1, $1) RETURNING id", &[&slug]).await.unwrap().get(0)
}

/// `list`, sorted.
pub fn tags(list: &[String]) -> Vec<String> {
    let mut list = list.to_vec();
    list.sort();
    list
}

/// How many functions are named as cache_watch names them for a table called `table`.
pub async fn functions_for(client: &Client, table: &str) -> i64 {
    let pattern = format!("^cache_(capture|tenant|tags)_{table}$");
    client.query_one("SELECT count(*) FROM pg_proc WHERE proname ~ $1", &[&pattern]).await.unwrap().get(0)
}

/// The outbox rows written since `after`, as (table, op, tenant, sorted tags).
pub async fn events_after(client: &Client, after: i64) -> Vec<(String, String, Uuid, Vec<String>)> {
    client
        .query("SELECT table_name, op, tenant_id, tags FROM cache_outbox WHERE id > $1 ORDER BY id", &[&after])
        .await
        .expect("read outbox")
        .into_iter()
        .map(|row| {
            let mut tags: Vec<String> = row.get(3);
            tags.sort();
            tags.dedup();
            (row.get(0), row.get(1), row.get(2), tags)
        })
        .collect()
}

pub async fn last_event_id(client: &Client) -> i64 {
    client.query_one("SELECT coalesce(max(id), 0) FROM cache_outbox", &[]).await.unwrap().get(0)
}
