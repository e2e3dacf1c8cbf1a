//! A Redis Cluster master dies under the API: reads and writes keep answering (bypassing the
//! cache within the Redis timeout) while the cluster promotes the replica, `/readyz` reports the
//! failover, caching resumes by itself, and the write's outbox row makes the read fresh; and the
//! breaker that opens for a master that is down leaves the other masters' tenants cached. Each
//! test runs a private cluster of its own.

mod common;

use std::time::{Duration, Instant};

use common::{
    HANG_BOUND, cache_status, create_tenant, spawn_app_with_a_breaker_per_master, spawn_app_with_cached_risk,
};
use openrisk_shared::{CacheStatus, Tag};
use openrisk_test_support::{PrivateRedisCluster, RedisNamespace};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn the_api_keeps_answering_while_a_cluster_master_fails_over_and_caches_again_after() {
    the_api_keeps_answering_while_a_master_fails_over(PrivateRedisCluster::kill).await;
}

/// A master that stops answering (as when its host drops off the network) is failed over by the
/// cluster while it stays frozen: no call to it fails fast, so each read waits out the Redis
/// timeout and is served from Postgres until the API's connection has learnt the new slots (by
/// the cluster client's own recovery from the failed calls or the cluster watch's re-read).
#[tokio::test]
async fn the_api_caches_again_after_a_master_that_stopped_answering_is_failed_over() {
    the_api_keeps_answering_while_a_master_fails_over(|cluster, master| cluster.pause(master)).await;
}

/// Stops the master of the tenant's slot with `stop` while the API serves a cached risk, which is
/// written: the cluster promotes the master's replica by itself (its node timeout is a second).
async fn the_api_keeps_answering_while_a_master_fails_over(stop: impl FnOnce(&mut PrivateRedisCluster, u16)) {
    let mut cluster = PrivateRedisCluster::start();
    let (app, path) = spawn_app_with_cached_risk(RedisNamespace::on(&cluster.url()), "Before the failover").await;
    let token = &app.a.analyst;

    let tenant_key = app.redis.keyspace().version_key(app.a.id, &Tag::all());
    let master = cluster.master_of(&tenant_key);
    stop(&mut cluster, master);
    let written = app.send_json(Method::PATCH, &path, token, json!({"title": "During the failover"})).await;
    assert_eq!(written.status(), StatusCode::OK, "writes succeed while the master is gone");

    // Generous: on a loaded machine the election and the client's topology refresh take longer.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let started = Instant::now();
        let response = app.get(&path, token).await;
        assert!(started.elapsed() < HANG_BOUND, "a read took {:?}", started.elapsed());
        assert_eq!(response.status(), StatusCode::OK);
        let status = cache_status(&response);
        let ready: Value = app.client.get(format!("{}/readyz", app.url)).send().await.unwrap().json().await.unwrap();
        let recovered = ready["redis_cluster"]["failovers_seen"].as_u64() >= Some(1)
            && ready["redis_cluster"]["state_ok"] == true
            && status == CacheStatus::Hit;
        if recovered {
            assert_eq!(ready["status"], "ready", "{ready}");
            break;
        }
        assert!(Instant::now() < deadline, "the cluster did not recover: {status}, {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The API's own invalidation may have died with the master; the write's outbox row, applied
    // as the invalidator would, makes the read fresh. Every read from then on is fresh. While the
    // client still settles, a Redis call may time out (the read is then served from Postgres), so
    // the entry is cached by the first fill that gets through.
    app.drain_outbox().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fresh = app.get(&path, token).await;
        let status = cache_status(&fresh);
        assert_eq!(fresh.json::<Value>().await.unwrap()["title"], "During the failover", "{status}");
        if matches!(status, CacheStatus::Stored | CacheStatus::Hit) {
            break;
        }
        assert!(Instant::now() < deadline, "no fill got through after the failover: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hit = app.get(&path, token).await;
    assert_eq!(cache_status(&hit), CacheStatus::Hit);
    assert_eq!(hit.json::<Value>().await.unwrap()["title"], "During the failover");
    let metrics = app.metrics().await;
    assert!(common::metric_value(&metrics, "openrisk_redis_cluster_failovers_total") >= 1.0, "{metrics}");
    assert_eq!(common::metric_value(&metrics, "openrisk_redis_cluster_slots_ok"), 16_384.0);
}

/// Three masters without replicas, one killed: its tenant's reads open its breaker (and are
/// served from Postgres), while a tenant of another master is still served from the cache. Once
/// the master is back and the cluster watch has heard every master, the breaker is closed and
/// the API no longer reports degraded, though none of that master's tenants has read since.
#[tokio::test]
async fn a_master_that_is_down_opens_the_breaker_of_its_own_tenants_only() {
    let mut cluster = PrivateRedisCluster::start_with(3, 0);
    let app = spawn_app_with_a_breaker_per_master(&cluster, 1_500).await;
    let master_of = |tenant| cluster.master_of(&app.redis.keyspace().version_key(tenant, &Tag::all()));
    let down = &app.a;
    let mut up = create_tenant(&app.app, "up-0").await;
    for attempt in 1.. {
        if master_of(up.id) != master_of(down.id) {
            break;
        }
        up = create_tenant(&app.app, &format!("up-{attempt}")).await;
    }
    let down_path = app.create_risk_path(&down.analyst, "On the master that dies").await;
    let up_path = app.create_risk_path(&up.analyst, "On a master that stays").await;
    app.assert_cached(&down_path, &down.analyst).await;
    app.assert_cached(&up_path, &up.analyst).await;

    let down_master = master_of(down.id);
    cluster.kill(down_master);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = app.get(&down_path, &down.analyst).await;
        assert_eq!(response.status(), StatusCode::OK, "served from Postgres");
        statuses.push(cache_status(&response));
    }
    assert_eq!(statuses.last(), Some(&CacheStatus::BreakerOpen), "{statuses:?}");
    let other = app.get(&up_path, &up.analyst).await;
    assert_eq!(cache_status(&other), CacheStatus::Hit, "the other master's tenant lost its cache");
    let metrics = app.metrics().await;
    let degraded = common::metric_value(&metrics, "openrisk_cache_degraded");
    assert_eq!(degraded, 1.0, "a hit on another master hid the open breaker");
    let ready: Value = app.client.get(format!("{}/readyz", app.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "degraded", "{ready}");

    cluster.restart(down_master);
    cluster.wait_until_healthy(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::metric_value(&app.metrics().await, "openrisk_cache_degraded") != 0.0 {
        assert!(Instant::now() < deadline, "still degraded with every master back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready: Value = app.client.get(format!("{}/readyz", app.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
}
