//! A write transaction learns exactly the tags its own triggers wrote, whatever else is in the
//! outbox: a backlog written before it began, and rows other transactions write while it runs.

use std::sync::Arc;

use openrisk_api::db::{self, Db};
use openrisk_api::metrics::Metrics;
use openrisk_shared::Tag;
use openrisk_shared::config::Profile;
use openrisk_test_support::TestDatabase;
use sea_orm::ConnectionTrait;
use uuid::Uuid;

async fn insert_asset(client: &tokio_postgres::Client, tenant: Uuid, name: &str) -> Uuid {
    client
        .query_one(
            "INSERT INTO assets (tenant_id, name, asset_type) VALUES ($1, $2, 'laptop') RETURNING id",
            &[&tenant, &name],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_transaction_reads_only_its_own_outbox_rows() {
    let database = TestDatabase::create().await;
    let other = database.connect().await;
    let tenant: Uuid =
        other.query_one("INSERT INTO tenants (slug, name) VALUES ('a', 'a') RETURNING id", &[]).await.unwrap().get(0);
    for n in 0..50 {
        insert_asset(&other, tenant, &format!("backlog {n}")).await;
    }
    let db = Db::new(db::connect(&database.url, Profile::Dev.pool_defaults()).await.unwrap(), Arc::new(Metrics::new()));

    // Another transaction is open across ours and writes before, during and after it.
    other.batch_execute("BEGIN").await.unwrap();
    insert_asset(&other, tenant, "concurrent before").await;
    let txn = db.begin().await.unwrap();
    insert_asset(&other, tenant, "concurrent during").await;
    let ours: Uuid = txn
        .query_one_raw(db::stmt(
            "INSERT INTO assets (tenant_id, name, asset_type) VALUES ($1, 'ours', 'server') RETURNING id",
            [tenant.into()],
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "id")
        .unwrap();
    insert_asset(&other, tenant, "concurrent after").await;
    let invalidations = db.commit(txn).await.unwrap();
    other.batch_execute("COMMIT").await.unwrap();

    let mut expected = vec![Tag::parse(&format!("asset:{ours}")).unwrap(), Tag::parse("assets").unwrap()];
    expected.sort();
    assert_eq!(invalidations.0, vec![(tenant, expected)]);
}
