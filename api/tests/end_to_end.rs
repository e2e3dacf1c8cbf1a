//! The API and a real invalidator together: a write made by another program through plain SQL
//! reaches the cached API response once the invalidator has processed it, and every metric the
//! dashboards and alert rules name is exported by the running binaries.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{TestApp, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Spawns the app, and an invalidator replica on its database and Redis namespace.
async fn spawn_app_and_invalidator() -> (TestApp, openrisk_invalidator::Running) {
    let app = spawn_app().await;
    let mut settings = openrisk_test_support::settings_for(&app.db, &app.redis);
    settings.invalidator.poll_interval_ms = 100;
    let invalidator = openrisk_invalidator::start(settings).await.expect("invalidator starts");
    (app, invalidator)
}

/// Waits until the invalidator has applied every outbox event.
async fn wait_drained(app: &TestApp) {
    let client = app.db.connect().await;
    let started = Instant::now();
    while client.query_one(openrisk_shared::outbox::BACKLOG, &[]).await.unwrap().get::<_, i64>(0) > 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "outbox not drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `path` until `fresh` holds for the body; returns how long that took.
async fn read_until(app: &TestApp, path: &str, token: &str, fresh: impl Fn(&Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let response = app.get(path, token).await;
        assert_eq!(response.status(), StatusCode::OK);
        if fresh(&response.json().await.unwrap()) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{path} still stale after 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_plain_sql_write_reaches_cached_responses_through_the_invalidator() {
    let (app, invalidator) = spawn_app_and_invalidator().await;
    let token = app.a.analyst.clone();
    let risk = app.create_risk(&token, "before").await;
    let id = risk["id"].as_str().unwrap().to_owned();
    let asset = app.create_asset(&token, "db", "LOW").await;
    let asset_id = asset["id"].as_str().unwrap().to_owned();
    let link = app.link_asset(&token, &format!("/api/v1/risks/{id}"), &asset).await;
    assert!(link.status().is_success(), "{}", link.status());

    // Warm the detail, the list and the stats once the set-up writes are applied, and check
    // they are served from the cache.
    wait_drained(&app).await;
    let paths = [format!("/api/v1/risks/{id}"), "/api/v1/risks".to_owned(), "/api/v1/stats".to_owned()];
    for path in &paths {
        app.assert_cached(path, &token).await;
    }

    // Another program renames the risk and makes its asset critical, bypassing the API.
    app.sql(&format!(
        "UPDATE risks SET title = 'after' WHERE id = '{id}';
         UPDATE assets SET name = 'db-primary', criticality = 'CRITICAL' WHERE id = '{asset_id}';"
    ))
    .await;
    read_until(&app, &paths[0], &token, |body| {
        body["title"] == "after" && body["assets"][0]["name"] == "db-primary" && body["score"].as_f64() == Some(18.0)
    })
    .await;
    read_until(&app, &paths[1], &token, |body| body["items"][0]["title"] == "after").await;
    read_until(&app, &paths[2], &token, |body| {
        body["total_risks"] == 1 && body["average_score"].as_f64() == Some(18.0)
    })
    .await;
    assert!(invalidator.metrics.events_processed.get() > 0);
    assert!(invalidator.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test]
async fn every_metric_the_dashboards_and_alerts_use_is_exported() {
    let (app, invalidator) = spawn_app_and_invalidator().await;
    let token = app.a.analyst.clone();
    // Traffic that touches every metric: hits, misses, collapsed concurrent misses, a write.
    let risk = app.create_risk(&token, "metrics").await;
    let path = format!("/api/v1/risks/{}", risk["id"].as_str().unwrap());
    let concurrent: Vec<_> = (0..20).map(|_| app.get(&path, &token)).collect();
    futures::future::join_all(concurrent).await;
    app.get(&path, &token).await;
    app.get("/api/v1/risks", &token).await;
    let patched = app.send_json(Method::PATCH, &path, &token, json!({"title": "metrics 2"})).await;
    assert_eq!(patched.status(), StatusCode::OK);
    wait_drained(&app).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // one backlog sample

    let api_metrics = app.metrics().await;
    let invalidator_metrics = app
        .client
        .get(format!("http://{}/metrics", invalidator.metrics_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<&str> = api_metrics
        .lines()
        .chain(invalidator_metrics.lines())
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let wanted = include_str!("../../deployment/metric_names.txt");
    let missing: Vec<&str> = wanted
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        // Per-replica series exist only with replicas configured: api/tests/replicas.rs checks them.
        .filter(|name| !name.starts_with("openrisk_db_replica_"))
        .filter(|name| !exported.contains(name) && !exported.contains(format!("{name}_bucket").as_str()))
        .collect();
    assert!(missing.is_empty(), "named in deployment/ but not exported: {missing:?}");
    assert!(invalidator.shutdown(Duration::from_secs(10)).await);
}
