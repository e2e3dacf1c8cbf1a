//! Tenant isolation: tenant B can never read or change tenant A's data, through the cache or
//! around it, even knowing A's ids.

mod common;

use common::{
    api_sessions_waiting_for_a_lock, assert_problem, cache_status, spawn_app, spawn_app_with,
    until_the_api_waits_for_a_lock,
};
use openrisk_api::AppOptions;
use openrisk_shared::CacheStatus;
use openrisk_test_support::RedisNamespace;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn another_tenant_sees_none_of_it_through_the_cache_or_around_it() {
    let app = spawn_app().await;
    let (a, b) = (&app.a.analyst, &app.b.analyst);
    let risk = app.create_risk(a, "A's secret risk").await;
    let risk_id = risk["id"].as_str().unwrap();
    let asset = app.create_asset(a, "A's server", "HIGH").await;
    let asset_id = asset["id"].as_str().unwrap();
    let mitigation: Value = app
        .send_json(Method::POST, &format!("/api/v1/risks/{risk_id}/mitigations"), a, json!({"title": "A's plan"}))
        .await
        .json()
        .await
        .unwrap();
    let mitigation_id = mitigation["id"].as_str().unwrap();
    let sub: Value = app
        .send_json(
            Method::POST,
            &format!("/api/v1/risks/{risk_id}/mitigations/{mitigation_id}/subactions"),
            a,
            json!({"title": "A's step"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let sub_path =
        format!("/api/v1/risks/{risk_id}/mitigations/{mitigation_id}/subactions/{}", sub["id"].as_str().unwrap());
    let risk_path = format!("/api/v1/risks/{risk_id}");
    let asset_path = format!("/api/v1/assets/{asset_id}");
    let mitigation_path = format!("{risk_path}/mitigations/{mitigation_id}");

    // A warms the cache with everything.
    for path in [&risk_path, &asset_path, &mitigation_path] {
        app.assert_cached(path, a).await;
    }
    for path in
        ["/api/v1/risks", "/api/v1/assets", "/api/v1/stats", "/api/v1/stats/risk-matrix", "/api/v1/stats/trends"]
    {
        app.get(path, a).await;
    }

    // B, knowing every id, reads nothing of A's: not from Redis, not from Postgres.
    for path in [&risk_path, &asset_path, &mitigation_path] {
        for _ in 0..2 {
            assert_problem(app.get(path, b).await, StatusCode::NOT_FOUND).await;
        }
    }
    let list = app.get_json("/api/v1/risks", b).await;
    assert_eq!(list["total"], 0);
    let assets = app.get_json("/api/v1/assets", b).await;
    assert_eq!(assets["total"], 0);
    let stats = app.get_json("/api/v1/stats", b).await;
    assert_eq!((stats["total_risks"].as_i64(), stats["mitigations_by_status"]["PLANNED"].as_i64()), (Some(0), Some(0)));
    let matrix = app.get_json("/api/v1/stats/risk-matrix", b).await;
    assert_eq!(matrix["total"], 0);
    let trends = app.get_json("/api/v1/stats/trends", b).await;
    assert!(trends["points"].as_array().unwrap().iter().all(|point| point["created"] == 0));

    // B changes nothing of A's.
    let b_risk = app.create_risk(b, "B's risk").await;
    let b_asset = app.create_asset(b, "B's server", "LOW").await;
    let attempts = [
        app.send_json(Method::PATCH, &risk_path, b, json!({"title": "owned"})).await,
        app.request(Method::DELETE, &risk_path, b).send().await.unwrap(),
        app.send_json(Method::PATCH, &asset_path, b, json!({"name": "owned"})).await,
        app.request(Method::DELETE, &asset_path, b).send().await.unwrap(),
        app.send_json(Method::POST, &format!("{risk_path}/mitigations"), b, json!({"title": "owned"})).await,
        app.send_json(Method::PATCH, &mitigation_path, b, json!({"title": "owned"})).await,
        app.request(Method::DELETE, &mitigation_path, b).send().await.unwrap(),
        app.send_json(Method::POST, &format!("{mitigation_path}/subactions"), b, json!({"title": "owned"})).await,
        app.send_json(Method::PATCH, &sub_path, b, json!({"title": "owned"})).await,
        app.request(Method::POST, &format!("{sub_path}/toggle"), b).send().await.unwrap(),
        app.request(Method::DELETE, &sub_path, b).send().await.unwrap(),
        // Links across tenants, both ways.
        app.link_asset(b, &risk_path, &b_asset).await,
        app.request(Method::PUT, &format!("/api/v1/risks/{}/assets/{asset_id}", b_risk["id"].as_str().unwrap()), b)
            .send()
            .await
            .unwrap(),
    ];
    for response in attempts {
        assert_problem(response, StatusCode::NOT_FOUND).await;
    }
    assert_eq!(app.count("SELECT count(*) FROM risk_assets").await, 0);

    // A's data is untouched, and A's cached entries survived B's attempts.
    let detail = app.get(&risk_path, a).await;
    assert_eq!(cache_status(&detail), CacheStatus::Hit);
    let detail: Value = detail.json().await.unwrap();
    assert_eq!(detail["title"], "A's secret risk");
    assert_eq!(detail["mitigations"][0]["subactions"][0]["title"], "A's step");
    assert_eq!(app.get_json(&asset_path, a).await["name"], "A's server");

    // Every Redis key is inside one tenant's hash slot.
    let keys = app.redis.keys();
    assert!(!keys.is_empty());
    for key in keys {
        let a_slot = key.contains(&format!("{{{}}}", app.a.id));
        let b_slot = key.contains(&format!("{{{}}}", app.b.id));
        assert!(a_slot ^ b_slot, "{key} belongs to exactly one tenant");
    }
}

#[tokio::test]
async fn the_same_query_of_two_tenants_uses_two_entries() {
    let app = spawn_app().await;
    app.create_risk(&app.a.analyst, "Only in A").await;
    assert_eq!(cache_status(&app.get("/api/v1/risks", &app.a.viewer).await), CacheStatus::Stored);
    let b_list = app.get("/api/v1/risks", &app.b.viewer).await;
    assert!(cache_status(&b_list).is_miss(), "B does not hit A's entry");
    assert_eq!(b_list.json::<Value>().await.unwrap()["total"], 0);
    // A write of B leaves A's entry alone.
    app.create_risk(&app.b.analyst, "Only in B").await;
    assert_eq!(cache_status(&app.get("/api/v1/risks", &app.a.viewer).await), CacheStatus::Hit);
}

/// A client inventing well-formed tokens costs one lookup per token, but those lookups hold at
/// most a quarter of the pool's connections, so every tenant's own reads keep the rest.
#[tokio::test]
async fn lookups_of_invented_tokens_hold_at_most_a_quarter_of_the_pool() {
    let pool_of_eight = |settings: &mut openrisk_shared::Settings| settings.pool.max_connections = Some(8);
    let app = spawn_app_with(RedisNamespace::new(), pool_of_eight, AppOptions::default()).await;
    // A session of the test's own holds the tokens' table, so every lookup waits for it.
    let holder = app.db.connect().await;
    holder.batch_execute("BEGIN; LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let invented: Vec<String> =
        (0..12).map(|_| format!("ort_{}", uuid::Uuid::new_v4().simple().to_string().repeat(2))).collect();
    let flood = futures::future::join_all(invented.iter().map(|token| app.get("/api/v1/risks", token)));
    let lookups_at_the_peak = async {
        until_the_api_waits_for_a_lock(&holder).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let waiting = api_sessions_waiting_for_a_lock(&holder).await;
        holder.batch_execute("COMMIT").await.unwrap();
        waiting
    };
    let (answers, waiting) = tokio::join!(flood, lookups_at_the_peak);
    assert_eq!(waiting, 2, "lookups holding connections at once, of a pool of 8");
    assert!(answers.iter().all(|answer| answer.status() == StatusCode::UNAUTHORIZED));
}

/// An app with a pool of `connections`, `per_tenant` of them for one tenant at most, and
/// `acquire_timeout_ms` to wait for a place or a connection.
async fn spawn_app_with_pool(connections: u32, per_tenant: u32, acquire_timeout_ms: u64) -> common::TestApp {
    let pool = |settings: &mut openrisk_shared::Settings| {
        (settings.pool.max_connections, settings.pool.max_per_tenant) = (Some(connections), Some(per_tenant));
        settings.pool.acquire_timeout_ms = Some(acquire_timeout_ms);
    };
    spawn_app_with(RedisNamespace::new(), pool, AppOptions::default()).await
}

/// A request of a tenant whose share of the pool is all in use waits for a place, then is told
/// to come back later with 429 and `Retry-After`: its tenant's limit, not 503, which says the
/// instance itself cannot serve (and may take it out of a load balancer's rotation).
#[tokio::test]
async fn a_tenant_over_its_share_of_the_pool_gets_429_with_retry_after() {
    let app = &spawn_app_with_pool(4, 1, 300).await;
    let risk = app.create_risk_path(&app.a.analyst, "Held").await;
    let holder = app.db.connect().await;
    common::hold_risk(&holder, &risk).await;

    let first = app.send_json(Method::PATCH, &risk, &app.a.analyst, json!({"title": "Waits for the lock"}));
    let second = async {
        until_the_api_waits_for_a_lock(&holder).await;
        let refused = app.send_json(Method::PATCH, &risk, &app.a.analyst, json!({"title": "Finds no place"})).await;
        holder.batch_execute("COMMIT").await.unwrap();
        refused
    };
    let (first, refused) = tokio::join!(first, second);
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(refused.headers().get("retry-after").and_then(|value| value.to_str().ok()), Some("1"));
    assert_problem(refused, StatusCode::TOO_MANY_REQUESTS).await;
}

/// One tenant's requests waiting in Postgres hold at most its share of the pool, writes waiting
/// for a row lock and uncached reads waiting for a table lock alike: another tenant's uncached
/// read still gets a connection at once (without the share it waited for the pool's acquire
/// timeout, then got 503).
#[tokio::test]
async fn a_tenant_waiting_on_the_database_leaves_the_rest_of_the_pool_to_other_tenants() {
    let app = &spawn_app_with_pool(4, 2, 3000).await;
    let risk = app.create_risk_path(&app.a.analyst, "Held").await;
    app.create_asset(&app.b.analyst, "Other tenant's", "LOW").await;
    // Tenant B reads its assets once tenant A's requests wait behind `holder`'s lock.
    let other_tenant_read = async |holder: &tokio_postgres::Client| {
        until_the_api_waits_for_a_lock(holder).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let read = app.get("/api/v1/assets?q=Other", &app.b.viewer).await.status();
        holder.batch_execute("COMMIT").await.unwrap();
        read
    };

    let holder = app.db.connect().await;
    common::hold_risk(&holder, &risk).await;
    let write = |title: &'static str| app.send_json(Method::PATCH, &risk, &app.a.analyst, json!({"title": title}));
    let writes = futures::future::join_all(["1", "2", "3", "4"].map(write));
    let (_, read) = tokio::join!(writes, other_tenant_read(&holder));
    assert_eq!(read, StatusCode::OK, "beside writes waiting for a row lock");

    let holder = app.db.connect().await;
    holder.batch_execute("BEGIN; LOCK TABLE risks IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let paths: Vec<String> = ["a", "b", "c", "d"].iter().map(|q| format!("/api/v1/risks?q={q}")).collect();
    let searches = futures::future::join_all(paths.iter().map(|path| app.get(path, &app.a.viewer)));
    let (_, read) = tokio::join!(searches, other_tenant_read(&holder));
    assert_eq!(read, StatusCode::OK, "beside uncached reads waiting for a table lock");
}
