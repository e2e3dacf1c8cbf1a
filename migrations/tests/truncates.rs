//! `TRUNCATE` of a watched table invalidates every tenant whose rows it removes, through any
//! partition and whatever rows the truncating role may see (migration 13).

mod common;

use common::{events_after, last_event_id, tenant};
use openrisk_test_support::TestDatabase;
use tokio_postgres::Client;
use uuid::Uuid;

/// `sql`'s `TRUNCATE` events, as (table, tenant), sorted.
async fn truncated_tenants(client: &Client, sql: &str) -> Vec<(String, Uuid)> {
    let mark = last_event_id(client).await;
    client.batch_execute(sql).await.unwrap();
    let events = events_after(client, mark).await;
    assert!(events.iter().all(|(_, op, _, tags)| op == "TRUNCATE" && tags == &["all"]), "{events:?}");
    let mut tenants: Vec<(String, Uuid)> = events.into_iter().map(|(table, _, tenant, _)| (table, tenant)).collect();
    tenants.sort();
    tenants
}

/// One partition truncated invalidates its own tenants; the partitioned table truncated
/// invalidates each tenant of each partition once, a partition added since the watch included;
/// unwatched, a partition truncates quietly.
#[tokio::test]
async fn truncate_through_any_partition_invalidates_each_tenant_it_empties_once() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let (a, b, c) = (tenant(&client, "acme").await, tenant(&client, "bolt").await, tenant(&client, "cog").await);
    client
        .batch_execute(&format!(
            "CREATE TABLE readings (tenant_id uuid NOT NULL, day int NOT NULL) PARTITION BY RANGE (day);
             CREATE TABLE readings_early PARTITION OF readings FOR VALUES FROM (0) TO (10);
             CREATE TABLE readings_late PARTITION OF readings FOR VALUES FROM (10) TO (20);
             SELECT cache_watch('readings', 'r.tenant_id', $$ARRAY['readings']$$);
             CREATE TABLE readings_later PARTITION OF readings FOR VALUES FROM (20) TO (30);
             INSERT INTO readings VALUES ('{a}', 1), ('{b}', 15), ('{b}', 16), ('{c}', 25);"
        ))
        .await
        .unwrap();
    let events = |tenants: &[Uuid]| tenants.iter().map(|t| ("readings".to_string(), *t)).collect::<Vec<_>>();
    let mut each_once = events(&[b, c]);
    each_once.sort();

    assert_eq!(truncated_tenants(&client, "TRUNCATE readings_early").await, events(&[a]), "one partition");
    assert_eq!(truncated_tenants(&client, "TRUNCATE readings").await, each_once, "the partitioned table");
    client.batch_execute(&format!("INSERT INTO readings VALUES ('{a}', 2)")).await.unwrap();
    let unwatched = "SELECT cache_unwatch('readings'); TRUNCATE readings_early";
    assert_eq!(truncated_tenants(&client, unwatched).await, [], "unwatched");
}

/// A role whose row-level security policy lets it see one tenant's rows still invalidates every
/// tenant its `TRUNCATE` empties.
#[tokio::test]
async fn truncate_under_row_level_security_invalidates_the_tenants_the_role_cannot_see() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let (a, b) = (tenant(&client, "acme").await, tenant(&client, "bolt").await);
    let role = format!("openrisk_truncator_{}", Uuid::new_v4().simple());
    client
        .batch_execute(&format!(
            "CREATE TABLE notes (tenant_id uuid NOT NULL, body text);
             SELECT cache_watch('notes', 'r.tenant_id', $$ARRAY['notes']$$);
             ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own_tenant ON notes USING (tenant_id::text = current_setting('app.tenant'));
             CREATE ROLE {role};
             GRANT SELECT, TRUNCATE ON notes TO {role};
             GRANT SELECT ON cache_watches TO {role};
             GRANT INSERT ON cache_outbox TO {role};
             INSERT INTO notes VALUES ('{a}', 'x'), ('{b}', 'y');"
        ))
        .await
        .unwrap();
    let under_policy = format!("SET ROLE {role}; SET app.tenant = '{a}'; TRUNCATE notes; RESET ROLE");
    let truncated = truncated_tenants(&client, &under_policy).await;
    client.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}")).await.unwrap();
    let mut both = vec![("notes".to_string(), a), ("notes".to_string(), b)];
    both.sort();
    assert_eq!(truncated, both, "every tenant whose rows went, seen or not");
}
