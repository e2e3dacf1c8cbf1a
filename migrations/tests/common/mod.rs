//! Helpers the migration test binaries share.

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
