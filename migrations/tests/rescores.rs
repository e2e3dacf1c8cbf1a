//! Risks re-scored, and assets' tags computed, while other transactions write the same rows
//! (migration 20).

mod common;

use std::time::{Duration, Instant};

use common::{events_after, last_event_id, tenant};
use openrisk_test_support::TestDatabase;
use tokio_postgres::Client;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// A tenant's risk (impact and probability 3), an asset of `criticality`, and the link between
/// them, made in this order: (tenant, risk, asset).
async fn linked_risk_and_asset(client: &Client, criticality: &str) -> (Uuid, Uuid, Uuid) {
    let tenant = tenant(client, "acme").await;
    let risk = insert_risk(client, tenant).await;
    let asset = insert_asset(client, tenant, criticality).await;
    link(client, tenant, risk, asset).await;
    (tenant, risk, asset)
}

async fn insert_risk(client: &Client, tenant: Uuid) -> Uuid {
    let sql = "INSERT INTO risks (tenant_id, title, impact, probability) VALUES ($1, 'r', 3, 3) RETURNING id";
    client.query_one(sql, &[&tenant]).await.unwrap().get(0)
}

async fn insert_asset(client: &Client, tenant: Uuid, criticality: &str) -> Uuid {
    let sql =
        "INSERT INTO assets (tenant_id, name, asset_type, criticality) VALUES ($1, 'a', 'server', $2) RETURNING id";
    client.query_one(sql, &[&tenant, &criticality]).await.unwrap().get(0)
}

async fn link(client: &Client, tenant: Uuid, risk: Uuid, asset: Uuid) {
    let sql = "INSERT INTO risk_assets (tenant_id, risk_id, asset_id) VALUES ($1, $2, $3)";
    client.execute(sql, &[&tenant, &risk, &asset]).await.unwrap();
}

/// The score `risk` has stored, and the one its row and links give now.
async fn stored_and_computed_score(client: &Client, risk: Uuid) -> (String, String) {
    let sql = "SELECT score::text, risk_compute_score(id, impact, probability)::text FROM risks WHERE id = $1";
    let row = client.query_one(sql, &[&risk]).await.unwrap();
    (row.get(0), row.get(1))
}

/// Runs `sql` on `session` in a task of its own, and returns once it has finished or waits for a
/// lock (as seen from `observer`): whether it waits, and the task.
async fn start_and_see_whether_it_waits(
    observer: &Client,
    session: Client,
    sql: String,
) -> (bool, tokio::task::JoinHandle<Client>) {
    let pid: i32 = session.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let task = tokio::spawn(async move {
        session.batch_execute(&sql).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
        session
    });
    let waiting = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1";
    let deadline = Instant::now() + WAIT;
    while !task.is_finished() {
        if observer.query_one(waiting, &[&pid]).await.unwrap().get::<_, Option<bool>>(0) == Some(true) {
            return (true, task);
        }
        assert!(Instant::now() < deadline, "{pid} neither finished nor waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (false, task)
}

/// A restore not yet committed while a linked asset's criticality changes: the change's
/// re-score waits for the restore and scores the restored risk with the new criticality, rather
/// than skip the risk its snapshot shows deleted (which left the score the restore computed from
/// the old criticality). The same for a link made meanwhile.
#[tokio::test]
async fn a_risk_restored_while_its_links_or_their_assets_change_is_scored_from_what_they_became() {
    let db = TestDatabase::create().await;
    let restorer = db.connect().await;
    let (tenant, risk, asset) = linked_risk_and_asset(&restorer, "LOW").await;
    let other = insert_asset(&restorer, tenant, "CRITICAL").await;
    let changes = [
        format!("UPDATE assets SET criticality = 'CRITICAL' WHERE id = '{asset}'"),
        format!("INSERT INTO risk_assets (tenant_id, risk_id, asset_id) VALUES ('{tenant}', '{risk}', '{other}')"),
    ];
    for change in changes {
        restorer.execute("UPDATE risks SET deleted_at = now() WHERE id = $1", &[&risk]).await.unwrap();
        restorer.batch_execute("BEGIN").await.unwrap();
        restorer.execute("UPDATE risks SET deleted_at = NULL WHERE id = $1", &[&risk]).await.unwrap();
        let (waits, task) =
            start_and_see_whether_it_waits(&db.connect().await, db.connect().await, change.clone()).await;
        restorer.batch_execute("COMMIT").await.unwrap();
        task.await.unwrap();
        let (stored, computed) = stored_and_computed_score(&restorer, risk).await;
        assert_eq!(stored, computed, "after {change} (which waited for the restore: {waits})");
    }
}

/// A criticality change locks the risks linked to its asset in id order, whatever order they
/// were linked in, so two changes of assets that share risks wait for each other instead of each
/// holding one of the risks the other needs (a deadlock, one of them failed). Here the risk with
/// the higher id is held: the change must already hold the lower one while it waits.
#[tokio::test]
async fn a_criticality_change_locks_the_linked_risks_in_id_order() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let tenant = tenant(&client, "acme").await;
    let (first, second) = (insert_risk(&client, tenant).await, insert_risk(&client, tenant).await);
    let (low, high) = if first < second { (first, second) } else { (second, first) };
    let asset = insert_asset(&client, tenant, "LOW").await;
    // Linked (and stored) high first, so any order but the ids' meets the high one first.
    link(&client, tenant, high, asset).await;
    link(&client, tenant, low, asset).await;

    let holder = db.connect().await;
    holder.batch_execute(&format!("BEGIN; SELECT 1 FROM risks WHERE id = '{high}' FOR UPDATE")).await.unwrap();
    let change = format!("UPDATE assets SET criticality = 'HIGH' WHERE id = '{asset}'");
    let (waits, task) = start_and_see_whether_it_waits(&client, db.connect().await, change).await;
    assert!(waits, "the change waits for the held risk");
    let probe = client.batch_execute(&format!("SELECT 1 FROM risks WHERE id = '{low}' FOR UPDATE NOWAIT")).await;
    holder.batch_execute("COMMIT").await.unwrap();
    task.await.unwrap();
    let error = probe.expect_err("the change already held the risk with the lower id");
    assert_eq!(error.code(), Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE), "{error}");
}

/// A writer at REPEATABLE READ (or SERIALIZABLE) reads an asset's links as of its snapshot, so a
/// link committed after it is not among the tags it computes: its change of the asset invalidates
/// the tenant's whole cache (`all`), the linked risk's detail included.
#[tokio::test]
async fn an_asset_changed_under_a_snapshot_older_than_a_link_still_invalidates_the_linked_risk() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let (tenant, _, asset) = linked_risk_and_asset(&client, "LOW").await;
    let later = insert_risk(&client, tenant).await;
    for isolation in ["REPEATABLE READ", "SERIALIZABLE"] {
        let writer = db.connect().await;
        writer
            .batch_execute(&format!("BEGIN ISOLATION LEVEL {isolation}; SELECT count(*) FROM tenants"))
            .await
            .unwrap();
        client.execute("DELETE FROM risk_assets WHERE risk_id = $1", &[&later]).await.unwrap();
        link(&client, tenant, later, asset).await;
        let mark = last_event_id(&client).await;
        writer.execute("UPDATE assets SET name = $2 WHERE id = $1", &[&asset, &isolation]).await.unwrap();
        writer.batch_execute("COMMIT").await.unwrap();
        let events = events_after(&client, mark).await;
        let tags: Vec<&String> = events.iter().flat_map(|(_, _, _, tags)| tags).collect();
        let covered = tags.iter().any(|tag| *tag == "all" || **tag == format!("risk:{later}"));
        assert!(covered, "{isolation}: the change's tags miss the risk linked after its snapshot: {tags:?}");
    }

    // At READ COMMITTED every statement sees the links committed before it: no `all`.
    let mark = last_event_id(&client).await;
    client.execute("UPDATE assets SET name = 'read committed' WHERE id = $1", &[&asset]).await.unwrap();
    let events = events_after(&client, mark).await;
    let tags: Vec<&String> = events.iter().flat_map(|(_, _, _, tags)| tags).collect();
    assert!(tags.contains(&&format!("risk:{later}")) && !tags.contains(&&"all".to_owned()), "{tags:?}");
}
