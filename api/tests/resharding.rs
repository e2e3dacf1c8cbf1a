//! A tenant's slot migrating from one Redis Cluster master to another under the API: while it
//! migrates, Redis refuses a call whose keys are not all on one node (`TRYAGAIN`), which the
//! API's own invalidation and the tenant's misses meet. The writer must still read its own write
//! at once, and the refusals must not cost the master's other tenants their cache. Each test
//! runs a private cluster of its own (3 masters, no replica).

mod common;

use common::{cache_status, create_tenant, spawn_app_with_a_breaker_per_master, spawn_app_with_cached_risk};
use openrisk_shared::keys::tenant_slot;
use openrisk_shared::{CacheStatus, Tag};
use openrisk_test_support::{PrivateRedisCluster, RedisNamespace};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn a_write_while_its_tenants_slot_migrates_is_read_back_at_once() {
    let cluster = PrivateRedisCluster::start_with(3, 0);
    let (app, path) = spawn_app_with_cached_risk(RedisNamespace::on(&cluster.url()), "Before the migration").await;
    let token = &app.a.analyst;
    cluster.start_migrating(&app.redis.keyspace().version_key(app.a.id, &Tag::all()), |others| others[0]);
    let cached = app.get(&path, token).await;
    assert_eq!(cache_status(&cached), CacheStatus::Hit, "the migration alone changes nothing a read sees");

    let written = app.send_json(Method::PATCH, &path, token, json!({"title": "During the migration"})).await;
    assert_eq!(written.status(), StatusCode::OK);
    let read = app.get(&path, token).await;
    let status = cache_status(&read);
    let title = read.json::<Value>().await.unwrap()["title"].clone();
    assert_eq!(title, "During the migration", "{status}: the writer was served what its write replaced");
}

#[tokio::test]
async fn a_tenant_whose_slot_migrates_leaves_the_other_tenants_of_its_master_cached() {
    let cluster = PrivateRedisCluster::start_with(3, 0);
    let app = spawn_app_with_a_breaker_per_master(&cluster, 60_000).await;
    let version_key = |tenant| app.redis.keyspace().version_key(tenant, &Tag::all());
    let migrating = &app.a;
    let mut neighbour = create_tenant(&app.app, "neighbour-0").await;
    for attempt in 1.. {
        let same_master =
            cluster.master_of(&version_key(neighbour.id)) == cluster.master_of(&version_key(migrating.id));
        if same_master && tenant_slot(neighbour.id) != tenant_slot(migrating.id) {
            break;
        }
        neighbour = create_tenant(&app.app, &format!("neighbour-{attempt}")).await;
    }
    let neighbour_path = app.create_risk_path(&neighbour.analyst, "On the same master").await;
    app.assert_cached(&neighbour_path, &neighbour.analyst).await;
    // The tenant's versions exist on the master that is giving the slot away, the new risk's
    // entry nowhere: every lookup of it names keys on both sides, and is refused.
    app.assert_cached("/api/v1/risks", &migrating.analyst).await;
    let migrating_path = app.create_risk_path(&migrating.analyst, "On the move").await;
    cluster.start_migrating(&version_key(migrating.id), |others| others[0]);

    let mut statuses = Vec::new();
    for _ in 0..4 {
        let read = app.get(&migrating_path, &migrating.analyst).await;
        assert_eq!(read.status(), StatusCode::OK, "served from Postgres");
        statuses.push(cache_status(&read));
    }
    let refused_each_time = statuses.iter().all(|status| *status == CacheStatus::LookupFailed);
    assert!(refused_each_time, "every read refused and served from Postgres, the breaker closed: {statuses:?}");
    let neighbours = app.get(&neighbour_path, &neighbour.analyst).await;
    assert_eq!(cache_status(&neighbours), CacheStatus::Hit, "the refusals opened the master's breaker: {statuses:?}");
    let degraded = common::metric_value(&app.metrics().await, "openrisk_cache_degraded");
    assert_eq!(degraded, 0.0, "refusals while a slot migrates report the cache degraded");
}
