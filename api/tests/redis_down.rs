//! Redis down and back: reads fall back to Postgres uncached, writes succeed, nothing hangs,
//! readiness says degraded, and caching resumes by itself. Readiness probes cost Redis and
//! Postgres one check at a time, however many arrive.

mod common;

use openrisk_shared::CacheStatus;
use std::time::{Duration, Instant};

use common::{HANG_BOUND, cache_status, spawn_app_with, spawn_app_with_cached_risk, until_the_api_waits_for_a_lock};
use openrisk_api::AppOptions;
use openrisk_test_support::{PrivateRedis, RedisNamespace};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn the_api_serves_from_postgres_while_redis_is_down_and_caches_again_when_it_is_back() {
    let mut redis = PrivateRedis::start();
    let (app, path) = spawn_app_with_cached_risk(RedisNamespace::on(&redis.url()), "Before the outage").await;
    let token = &app.a.analyst;

    redis.kill();
    for round in 0..6 {
        let started = Instant::now();
        let response = app.get(&path, token).await;
        assert!(started.elapsed() < HANG_BOUND, "read {round} took {:?}", started.elapsed());
        assert_eq!(response.status(), StatusCode::OK);
        assert!(cache_status(&response).is_bypass(), "{}", cache_status(&response));
    }
    let started = Instant::now();
    let written = app.send_json(Method::PATCH, &path, token, json!({"title": "During the outage"})).await;
    assert!(started.elapsed() < HANG_BOUND);
    assert_eq!(written.status(), StatusCode::OK, "writes succeed without Redis");
    assert_eq!(app.get_json(&path, token).await["title"], "During the outage");
    let list = app.get("/api/v1/risks", token).await;
    assert_eq!(list.status(), StatusCode::OK);

    let ready = app.client.get(format!("{}/readyz", app.url)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "a dead Redis does not make the API unready");
    let ready: Value = ready.json().await.unwrap();
    assert_eq!((ready["status"].as_str(), ready["redis"].as_str()), (Some("degraded"), Some("down")));
    let metrics = app.metrics().await;
    assert_eq!(common::metric_value(&metrics, "openrisk_cache_degraded"), 1.0);
    assert!(
        common::metric_value(&metrics, "openrisk_cache_requests_total{result=\"error\",route=\"/api/v1/risks/{id}\"}")
            >= 1.0
    );
    assert!(
        common::metric_value(&metrics, "openrisk_cache_requests_total{result=\"bypass\",route=\"/api/v1/risks/{id}\"}")
            >= 1.0
    );

    // Back (empty, as after a crash): caching resumes without a restart of the API.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let started = Instant::now();
        let response = app.get(&path, token).await;
        assert!(started.elapsed() < HANG_BOUND);
        assert_eq!(response.status(), StatusCode::OK);
        if cache_status(&response) == CacheStatus::Stored {
            break;
        }
        assert!(Instant::now() < deadline, "caching never resumed: {}", cache_status(&response));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hit = app.get(&path, token).await;
    assert_eq!(cache_status(&hit), CacheStatus::Hit);
    assert_eq!(hit.json::<Value>().await.unwrap()["title"], "During the outage");
    let ready: Value = app.client.get(format!("{}/readyz", app.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(common::metric_value(&app.metrics().await, "openrisk_cache_degraded"), 0.0);
}

#[tokio::test]
async fn the_api_starts_and_serves_while_redis_was_never_up() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    redis.kill();
    let app = spawn_app_with(RedisNamespace::on(&url), |_| {}, AppOptions::default()).await;
    let risk = app.create_risk(&app.a.analyst, "No Redis").await;
    let started = Instant::now();
    let response = app.get(&format!("/api/v1/risks/{}", risk["id"].as_str().unwrap()), &app.a.viewer).await;
    assert!(started.elapsed() < HANG_BOUND);
    assert_eq!(response.status(), StatusCode::OK);
    assert!(cache_status(&response).is_bypass());
    assert!(app.metrics().await.contains("openrisk_cache_eviction_policy_ok 0"), "unknown policy is not ok");
}

/// How many `PING`s `redis` has answered since it started.
fn pings_answered(redis: &PrivateRedis) -> u64 {
    let mut conn = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let stats: String = redis::cmd("INFO").arg("commandstats").query(&mut conn).unwrap();
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_ping:calls="))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

#[tokio::test]
async fn readiness_probes_that_arrive_while_a_check_runs_share_it_and_the_next_one_checks_again() {
    let redis = PrivateRedis::start();
    let one_connection = |settings: &mut openrisk_shared::Settings| {
        settings.pool.max_connections = Some(1);
        settings.http.request_timeout_ms = 2000;
    };
    let app = spawn_app_with(RedisNamespace::on(&redis.url()), one_connection, AppOptions::default()).await;
    let path = app.create_risk_path(&app.a.analyst, "Locked while probed").await;
    let readyz = || app.client.get(format!("{}/readyz", app.url)).send();

    // The pool's one connection waits for a row lock the test holds, so every check's `SELECT 1`
    // waits for the pool until the check's limit (half the request timeout, here shorter than
    // the pool's acquire timeout).
    let session = app.db.connect().await;
    common::hold_risk(&session, &path).await;
    let write = app.send_json(Method::PATCH, &path, &app.a.analyst, json!({ "title": "After the probes" }));
    let (written, pings) = tokio::join!(write, async {
        until_the_api_waits_for_a_lock(&session).await;
        let before = pings_answered(&redis);
        let probes = futures::future::join_all((0..20).map(|_| readyz())).await;
        for probe in probes {
            let probe: Value = probe.unwrap().json().await.unwrap();
            assert_eq!((probe["postgres"].as_str(), probe["redis"].as_str()), (Some("down"), Some("up")), "{probe}");
        }
        let pings = pings_answered(&redis) - before;
        session.batch_execute("ROLLBACK").await.unwrap();
        pings
    });
    assert_eq!(written.status(), StatusCode::OK);
    eprintln!("20 probes at once sent {pings} PING(s)");
    assert!(pings < 5, "20 probes sent {pings} PINGs: they did not share the checks running");

    // A finished check is not reused: each probe after it checks again.
    let before = pings_answered(&redis);
    for _ in 0..2 {
        let probe: Value = readyz().await.unwrap().json().await.unwrap();
        assert_eq!(probe["status"], "ready", "{probe}");
    }
    assert!(pings_answered(&redis) - before >= 2, "a probe after a finished check took its result");
}

#[tokio::test]
async fn a_redis_that_would_reload_its_data_after_a_restart_is_flagged_and_one_that_would_not_is_not() {
    let redis = PrivateRedis::start();
    let app = spawn_app_with(RedisNamespace::on(&redis.url()), |_| {}, AppOptions::default()).await;
    let flagged = until_settings_checked(&app).await;
    assert_eq!(flagged, (1.0, 1.0), "a private Redis saves nothing and evicts by LRU");

    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("save").arg("3600 1").query_async(&mut conn).await.unwrap();
    let app = spawn_app_with(RedisNamespace::on(&redis.url()), |_| {}, AppOptions::default()).await;
    let flagged = until_settings_checked(&app).await;
    assert_eq!(flagged, (1.0, 0.0), "a save schedule reloads entries and versions on restart");
}

/// The `(eviction policy ok, persistence off)` gauges once the start-up check has read them.
async fn until_settings_checked(app: &common::TestApp) -> (f64, f64) {
    for _ in 0..200 {
        let metrics = app.metrics().await;
        let read = ["openrisk_cache_eviction_policy_ok", "openrisk_cache_redis_persistence_off"]
            .map(|name| common::metric_value(&metrics, name));
        if read != [0.0, 0.0] {
            return (read[0], read[1]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the API never read Redis' settings");
}
