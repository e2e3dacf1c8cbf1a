//! The read-through cache: hits, misses, 304, read-your-writes, invalidation by plain SQL, the
//! stale-fill race (made deterministic with the fill hook) and single-flight.

mod common;

use openrisk_shared::CacheStatus;
use std::time::Duration;

use common::{cache_status, spawn_app, spawn_app_with, spawn_gated_app};
use openrisk_api::AppOptions;
use openrisk_api::cache::MissStep;
use openrisk_test_support::RedisNamespace;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn a_get_misses_then_hits_with_the_same_bytes_and_answers_304_to_its_etag() {
    let app = spawn_app().await;
    let risk = app.create_risk(&app.a.analyst, "Cached").await;
    let path = format!("/api/v1/risks/{}", risk["id"].as_str().unwrap());

    let first = app.get(&path, &app.a.viewer).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(cache_status(&first), CacheStatus::Stored);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let first_body = first.bytes().await.unwrap();

    let second = app.get(&path, &app.a.viewer).await;
    assert_eq!(cache_status(&second), CacheStatus::Hit);
    assert_eq!(second.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(second.headers()["content-type"].to_str().unwrap(), "application/json; charset=utf-8");
    assert_eq!(second.bytes().await.unwrap(), first_body, "a hit returns the stored bytes");

    let not_modified =
        app.request(Method::GET, &path, &app.a.viewer).header("If-None-Match", &etag).send().await.unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"].to_str().unwrap(), etag);
    assert!(not_modified.bytes().await.unwrap().is_empty());
    let other =
        app.request(Method::GET, &path, &app.a.viewer).header("If-None-Match", "\"other\"").send().await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);

    assert_eq!(app.metric("openrisk_cache_requests_total{result=\"hit\",route=\"/api/v1/risks/{id}\"}").await, 3.0);
    assert_eq!(app.metric("openrisk_cache_requests_total{result=\"miss\",route=\"/api/v1/risks/{id}\"}").await, 1.0);
}

#[tokio::test]
async fn normalised_parameters_share_one_entry() {
    let app = spawn_app().await;
    app.create_risk(&app.a.analyst, "One").await;
    assert_eq!(cache_status(&app.get("/api/v1/risks", &app.a.viewer).await), CacheStatus::Stored);
    for same in
        ["/api/v1/risks?page=1", "/api/v1/risks?limit=20&page=1&sort_by=created_at&sort_dir=desc", "/api/v1/risks/"]
    {
        assert_eq!(cache_status(&app.get(same, &app.a.viewer).await), CacheStatus::Hit, "{same}");
    }
    assert_eq!(cache_status(&app.get("/api/v1/risks?min_score=0.001", &app.a.viewer).await), CacheStatus::Stored);
    assert_eq!(
        cache_status(&app.get("/api/v1/risks?min_score=0.01", &app.a.viewer).await),
        CacheStatus::Hit,
        "score bounds are keyed as the score column holds them"
    );
    assert!(cache_status(&app.get("/api/v1/risks?page=2", &app.a.viewer).await).is_miss());
}

#[tokio::test]
async fn every_cached_get_reads_its_own_writes() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let path = app.create_risk_path(token, "Before").await;
    let asset = app.create_asset(token, "Server", "LOW").await;
    let asset_path = format!("/api/v1/assets/{}", asset["id"].as_str().unwrap());
    let mitigation = app.create_mitigation(token, &path, "M").await;
    let mitigation_path = format!("{path}/mitigations/{}", mitigation["id"].as_str().unwrap());
    let reads = [
        path.clone(),
        "/api/v1/risks".to_owned(),
        "/api/v1/stats".to_owned(),
        "/api/v1/stats/risk-matrix".to_owned(),
        "/api/v1/stats/trends".to_owned(),
        "/api/v1/assets".to_owned(),
        asset_path.clone(),
        mitigation_path.clone(),
    ];
    let warm = || async {
        for read in &reads {
            app.assert_cached(read, token).await;
        }
    };

    warm().await;
    app.send_json(Method::PATCH, &path, token, json!({"title": "After", "probability": 1})).await;
    let detail = app.get_json(&path, token).await;
    assert_eq!(detail["title"], "After");
    let list = app.get_json("/api/v1/risks", token).await;
    assert_eq!(list["items"][0]["title"], "After");
    let matrix = app.get_json("/api/v1/stats/risk-matrix", token).await;
    assert_eq!(matrix["counts"][2][0], 1);
    let trends = app.get_json("/api/v1/stats/trends", token).await;
    let updated: i64 =
        trends["points"].as_array().unwrap().iter().map(|point| point["updated"].as_i64().unwrap()).sum();
    assert_eq!(updated, 1);

    warm().await;
    app.send_json(Method::PATCH, &mitigation_path, token, json!({"status": "DONE"})).await;
    let stats = app.get_json("/api/v1/stats", token).await;
    assert_eq!(stats["mitigations_by_status"]["DONE"], 1);
    assert_eq!(app.get_json(&mitigation_path, token).await["status"], "DONE");
    assert_eq!(app.get_json(&path, token).await["mitigations"][0]["status"], "DONE");

    warm().await;
    app.send_json(Method::PATCH, &asset_path, token, json!({"name": "Renamed"})).await;
    assert_eq!(app.get_json(&asset_path, token).await["name"], "Renamed");
    assert_eq!(app.get_json("/api/v1/assets", token).await["items"][0]["name"], "Renamed");
}

#[tokio::test]
async fn a_risk_detail_is_invalidated_by_changes_to_its_linked_assets_made_by_plain_sql() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let (path, asset) = app.create_linked_risk_and_asset(token, "Linked", "Database", "MEDIUM").await;
    let asset_id = asset["id"].as_str().unwrap();
    app.assert_cached(&path, token).await;

    // Another program renames the asset; only the invalidator (here: drain_outbox) tells Redis.
    app.sql(&format!("UPDATE assets SET name = 'Renamed by SQL' WHERE id = '{asset_id}'")).await;
    app.drain_outbox().await;
    let detail = app.get(&path, token).await;
    assert!(cache_status(&detail).is_miss(), "a change to a linked asset invalidates risk:<id>");
    let detail: Value = detail.json().await.unwrap();
    assert_eq!(detail["assets"][0]["name"], "Renamed by SQL");

    // A sub-action changed by SQL reaches the detail too (through risk:<id>).
    let mitigation = app.create_mitigation(token, &path, "M").await;
    let mitigation_id = mitigation["id"].as_str().unwrap();
    app.assert_cached(&path, token).await;
    app.sql(&format!(
        "INSERT INTO mitigation_subactions (tenant_id, mitigation_id, title) VALUES ('{}', '{mitigation_id}', 'From SQL')",
        app.a.id
    ))
    .await;
    app.drain_outbox().await;
    let detail = app.get(&path, token).await;
    assert!(cache_status(&detail).is_miss(), "a sub-action's change invalidates risk:<id>");
    let detail: Value = detail.json().await.unwrap();
    assert_eq!(detail["mitigations"][0]["subactions"][0]["title"], "From SQL");
}

#[tokio::test]
async fn the_stale_fill_race_never_stores_the_old_value() {
    let (app, gate) = spawn_gated_app(|_| {}).await;
    let risk = app.create_risk(&app.a.analyst, "Old title").await;
    let id = risk["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/risks/{id}");

    for write_through_api in [false, true] {
        // Start from an empty entry (the previous round stored one).
        app.sql(&format!("UPDATE risks SET description = 'round {write_through_api}' WHERE id = '{id}'")).await;
        app.drain_outbox().await;
        // 1. A reader misses and reads the old row, then is held before its fill.
        gate.arm("/api/v1/risks/{id}");
        let reader = {
            let (client, url, token) = (app.client.clone(), format!("{}{path}", app.url), app.a.viewer.clone());
            tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.unwrap() })
        };
        gate.reached().await;
        // 2. A write commits and is invalidated (by the API itself, or by the invalidator).
        let new_title = format!("New title {write_through_api}");
        if write_through_api {
            let response = app.send_json(Method::PATCH, &path, &app.a.analyst, json!({"title": new_title})).await;
            assert_eq!(response.status(), StatusCode::OK);
        } else {
            app.sql(&format!("UPDATE risks SET title = '{new_title}' WHERE id = '{id}'")).await;
            app.drain_outbox().await;
        }
        // 3. The reader fills: refused. It still answers with what it read (its request began
        //    before the write), but nothing stale is stored.
        gate.release();
        let held = reader.await.unwrap();
        assert_eq!(cache_status(&held), CacheStatus::FillRejected);
        assert_ne!(held.json::<Value>().await.unwrap()["title"], new_title);
        // 4. Every later read sees the new value.
        let after = app.get(&path, &app.a.viewer).await;
        assert!(cache_status(&after).is_miss(), "the old value was not stored");
        assert_eq!(after.json::<Value>().await.unwrap()["title"], new_title);
        assert_eq!(app.get_json(&path, &app.a.viewer).await["title"], new_title);
    }
    assert_eq!(app.metric("openrisk_cache_fills_total{outcome=\"rejected\",route=\"/api/v1/risks/{id}\"}").await, 2.0);
}

#[tokio::test]
async fn a_read_that_starts_after_an_invalidation_never_shares_a_read_from_before_it() {
    let (app, gate) = spawn_gated_app(|_| {}).await;
    let path = app.create_risk_path(&app.a.analyst, "Old title").await;
    app.drain_outbox().await;

    // 1. A reader misses, reads the old row, and is held before its fill.
    gate.arm("/api/v1/risks/{id}");
    let (client, url, token) = (app.client.clone(), format!("{}{path}", app.url), app.a.viewer.clone());
    let held = tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.unwrap() });
    gate.reached().await;
    // 2. A write this API process knows nothing of (plain SQL, or another API replica) commits
    //    and is invalidated.
    let id = path.rsplit('/').next().unwrap();
    app.sql(&format!("UPDATE risks SET title = 'New title' WHERE id = '{id}'")).await;
    app.drain_outbox().await;
    // 3. A read that starts now must answer the new title, not join the held read (whose
    //    versions are the ones the write replaced).
    let (client, url, token) = (app.client.clone(), format!("{}{path}", app.url), app.a.viewer.clone());
    let mut after = tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.unwrap() });
    let while_held = tokio::time::timeout(Duration::from_secs(5), &mut after).await;
    gate.release();
    let finished_while_held = while_held.is_ok();
    let after = match while_held {
        Ok(answered) => answered.unwrap(),
        Err(_) => after.await.unwrap(),
    };
    assert_ne!(cache_status(&after), CacheStatus::Collapsed, "joined the read from before the write");
    assert_eq!(after.json::<Value>().await.unwrap()["title"], "New title");
    assert!(finished_while_held, "waited for the held read");
    assert_eq!(cache_status(&held.await.unwrap()), CacheStatus::FillRejected);
}

/// A miss that finds a row's version absent reads the row before it creates the version, and a
/// caller that looks up meanwhile joins it even after a write, since invalidating an absent
/// version changes nothing the two lookups compare. So such a caller never gets that first read:
/// here it found no row, and the caller, whose read began after the row came back, gets the row.
#[tokio::test]
async fn a_caller_that_joins_a_miss_after_a_write_never_gets_the_first_read_from_before_it() {
    let (app, gate) = spawn_gated_app(|_| {}).await;
    let path = app.create_risk_path(&app.a.analyst, "Back again").await;
    let id = common::id_of(&path);
    app.sql(&format!("UPDATE risks SET deleted_at = now() WHERE id = '{id}'")).await;
    app.drain_outbox().await;
    let route = "/api/v1/risks/{id}";
    let get = || {
        let (client, url, token) = (app.client.clone(), format!("{}{path}", app.url), app.a.viewer.clone());
        tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.unwrap() })
    };

    // 1. A reader misses (the risk's version was never created), finds no row, and is held.
    gate.arm_at(route, MissStep::FirstRead);
    let held = get();
    gate.reached().await;
    // 2. The risk comes back (plain SQL) and is invalidated: its version stays absent.
    app.sql(&format!("UPDATE risks SET deleted_at = NULL WHERE id = '{id}'")).await;
    app.drain_outbox().await;
    // 3. A read that starts now joins the held miss, and must still see the risk.
    let waits = format!("openrisk_cache_singleflight_waits_total{{route=\"{route}\"}}");
    let after = get();
    tokio::time::timeout(Duration::from_secs(20), async {
        while app.metric(&waits).await < 1.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the second read joined the held miss");
    gate.release();
    let after = after.await.unwrap();
    assert_eq!(after.status(), StatusCode::OK, "the joined read answered from before the risk came back");
    assert_eq!(cache_status(&after), CacheStatus::Collapsed);
    assert_eq!(after.json::<Value>().await.unwrap()["title"], "Back again");
    assert_eq!(held.await.unwrap().status(), StatusCode::OK, "the held reader's own answer is the newer one too");
}

#[tokio::test]
async fn a_linked_asset_changed_while_the_detail_is_read_rejects_its_fill() {
    let (app, gate) = spawn_gated_app(|_| {}).await;
    let token = &app.a.analyst;
    let (path, asset) = app.create_linked_risk_and_asset(token, "Risk", "Asset", "HIGH").await;
    let asset_id = asset["id"].as_str().unwrap();

    // The asset's change invalidates risk:<id> (the triggers map it to every linked risk), so
    // the change landing between the detail's read and its fill rejects the fill.
    gate.arm("/api/v1/risks/{id}");
    let reader = {
        let (client, url, token) = (app.client.clone(), format!("{}{path}", app.url), app.a.viewer.clone());
        tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.unwrap() })
    };
    gate.reached().await;
    app.sql(&format!("UPDATE assets SET name = 'Changed' WHERE id = '{asset_id}'")).await;
    app.drain_outbox().await;
    gate.release();
    assert_eq!(cache_status(&reader.await.unwrap()), CacheStatus::FillRejected);
    let detail = app.get_json(&path, token).await;
    assert_eq!(detail["assets"][0]["name"], "Changed");
}

#[tokio::test]
async fn concurrent_misses_on_one_key_do_one_database_read() {
    const READERS: usize = 8;
    let (app, gate) = spawn_gated_app(|_| {}).await;
    app.create_risk(&app.a.analyst, "Popular").await;
    let reads_before = app.metric("openrisk_db_query_duration_seconds_count{query=\"risk_list\"}").await;

    gate.arm("/api/v1/risks");
    let spawn_reader = || {
        let (client, url, token) = (app.client.clone(), format!("{}/api/v1/risks", app.url), app.a.viewer.clone());
        tokio::spawn(async move {
            let response = client.get(url).bearer_auth(token).send().await.unwrap();
            (cache_status(&response), response.text().await.unwrap())
        })
    };
    let mut readers = vec![spawn_reader()];
    gate.reached().await;
    readers.extend((1..READERS).map(|_| spawn_reader()));
    let waits = "openrisk_cache_singleflight_waits_total{route=\"/api/v1/risks\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.metric(waits).await < (READERS - 1) as f64 {
        assert!(tokio::time::Instant::now() < deadline, "the other readers never joined the flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.release();

    let mut statuses = Vec::new();
    let mut bodies = Vec::new();
    for reader in readers {
        let (status, body) = reader.await.unwrap();
        statuses.push(status);
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|pair| pair[0] == pair[1]), "everyone got the same answer");
    assert_eq!(statuses.iter().filter(|status| **status == CacheStatus::Stored).count(), 1);
    assert_eq!(statuses.iter().filter(|status| **status == CacheStatus::Collapsed).count(), READERS - 1);
    let reads = app.metric("openrisk_db_query_duration_seconds_count{query=\"risk_list\"}").await - reads_before;
    assert_eq!(reads, 1.0, "one database read for {READERS} concurrent misses");
    assert_eq!(app.metric(waits).await, (READERS - 1) as f64);
}

#[tokio::test]
async fn with_the_cache_disabled_everything_is_served_from_postgres() {
    let app =
        spawn_app_with(RedisNamespace::new(), |settings| settings.cache.enabled = false, AppOptions::default()).await;
    let risk = app.create_risk(&app.a.analyst, "Uncached").await;
    let path = format!("/api/v1/risks/{}", risk["id"].as_str().unwrap());
    for _ in 0..2 {
        let response = app.get(&path, &app.a.viewer).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(cache_status(&response), CacheStatus::Disabled);
    }
    assert!(app.redis.keys().is_empty(), "nothing was written to Redis");
    let ready: Value = app.client.get(format!("{}/readyz", app.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!((ready["status"].as_str(), ready["redis"].as_str()), (Some("ready"), Some("disabled")));
}

#[tokio::test]
async fn reads_of_ids_that_do_not_exist_answer_404_and_leave_no_redis_keys() {
    let app = spawn_app().await;
    let risk = app.create_risk(&app.a.analyst, "Exists").await;
    let risk_id = risk["id"].as_str().unwrap();
    let before = app.redis.keys();
    for _ in 0..100 {
        let invented = uuid::Uuid::new_v4();
        for path in [
            format!("/api/v1/risks/{invented}"),
            format!("/api/v1/assets/{invented}"),
            format!("/api/v1/risks/{risk_id}/mitigations/{invented}"),
            format!("/api/v1/risks/{invented}/mitigations/{invented}"),
        ] {
            assert_eq!(app.get(&path, &app.a.viewer).await.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }
    assert_eq!(app.redis.keys(), before, "404s created no Redis state");
}

#[tokio::test]
async fn a_detail_miss_reads_the_database_once_when_its_versions_exist() {
    let app = spawn_app().await;
    let risk = app.create_risk(&app.a.analyst, "Read once").await;
    let path = format!("/api/v1/risks/{}", risk["id"].as_str().unwrap());
    let reads = || app.metric("openrisk_db_query_duration_seconds_count{query=\"risk_detail\"}");
    let start = reads().await;
    assert_eq!(cache_status(&app.get(&path, &app.a.viewer).await), CacheStatus::Stored);
    assert_eq!(reads().await - start, 2.0, "the first read proves the row exists, the second is filled");

    // A write replaces the versions instead of deleting them: the next miss reads once.
    app.sql(&format!("UPDATE risks SET title = 'Changed' WHERE id = '{}'", risk["id"].as_str().unwrap())).await;
    app.drain_outbox().await;
    let start = reads().await;
    let after = app.get(&path, &app.a.viewer).await;
    assert_eq!(cache_status(&after), CacheStatus::Stored);
    assert_eq!(reads().await - start, 1.0);
    assert_eq!(after.json::<Value>().await.unwrap()["title"], "Changed");
}

/// The tag kinds a generated `cache_tags_<table>` function can emit: its string literals, each
/// a whole collection tag (`risks`) or the prefix of a row tag (`risk:`).
fn kinds_in_trigger_source(source: &str) -> Vec<(String, bool)> {
    source
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(|literal| match literal.strip_suffix(':') {
            Some(kind) => (kind.to_owned(), true),
            None => (literal.to_owned(), false),
        })
        .collect()
}

#[tokio::test]
async fn every_tag_kind_the_triggers_emit_is_one_the_api_registers_and_the_invalidator_accepts() {
    use openrisk_shared::Tag;
    use openrisk_shared::event::{InvalidationEvent, OutboxRow};
    use std::collections::BTreeSet;

    let app = spawn_app().await;
    let db = app.db.connect().await;
    let functions =
        db.query(r"SELECT proname::text, prosrc FROM pg_proc WHERE proname LIKE 'cache\_tags\_%'", &[]).await.unwrap();
    assert!(functions.len() >= 7, "every watched table has a generated tags function");
    let mut emitted = BTreeSet::new();
    for function in &functions {
        let (name, source): (String, String) = (function.get(0), function.get(1));
        for (kind, names_a_row) in kinds_in_trigger_source(&source) {
            assert!(Tag::KINDS.contains(&kind.as_str()), "{name} emits the tag kind {kind:?}, which Tag::KINDS lacks");
            let example = if names_a_row { format!("{kind}:{}", uuid::Uuid::new_v4()) } else { kind.clone() };
            assert_eq!(Tag::parse(&example).map(|tag| tag.names_a_row()), Ok(names_a_row), "{name}: {example}");
            emitted.insert(kind);
        }
    }
    let vocabulary: BTreeSet<String> = Tag::KINDS.iter().map(|kind| kind.to_string()).collect();
    assert_eq!(emitted, vocabulary, "Tag::KINDS names exactly the kinds the triggers emit");

    // A tenant with one of everything, then every cacheable read of it.
    let token = &app.a.analyst;
    let risk_path = app.create_risk_path(token, "Tagged").await;
    let mitigation = app.create_mitigation(token, &risk_path, "M").await;
    let asset = app.create_asset(token, "db", "HIGH").await;
    let asset_path = format!("/api/v1/assets/{}", asset["id"].as_str().unwrap());
    let link = app.request(Method::PUT, &format!("{risk_path}{}", &asset_path["/api/v1".len()..]), token);
    assert!(link.send().await.unwrap().status().is_success());
    for path in [
        "/api/v1/risks".to_owned(),
        risk_path.clone(),
        format!("{risk_path}/mitigations/{}", mitigation["id"].as_str().unwrap()),
        "/api/v1/assets".to_owned(),
        asset_path,
        "/api/v1/stats".to_owned(),
        "/api/v1/stats/risk-matrix".to_owned(),
        "/api/v1/stats/trends".to_owned(),
    ] {
        assert_eq!(app.get(&path, &app.a.viewer).await.status(), StatusCode::OK, "{path}");
    }
    let version_marker = format!("{{{}}}:v:", app.a.id);
    let registered: BTreeSet<String> = app
        .redis
        .keys()
        .iter()
        .filter_map(|key| Some(Tag::parse(key.split_once(&version_marker)?.1).unwrap().kind().to_owned()))
        .collect();
    assert_eq!(registered, emitted, "the API's reads register every kind the triggers emit, and no other");

    // The invalidator accepts every event the writes above left in the outbox.
    let rows = db
        .query("SELECT id, tenant_id, table_name::text, op, tags, created_at FROM cache_outbox ORDER BY id", &[])
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        let outbox_row = OutboxRow {
            id: row.get(0),
            tenant_id: row.get(1),
            table_name: row.get(2),
            op: row.get(3),
            tags: row.get(4),
            created_at: row.get(5),
            table_watched: true,
        };
        let event = InvalidationEvent::try_from(outbox_row.clone());
        assert!(event.is_ok(), "the invalidator refuses {outbox_row:?}: {event:?}");
    }
}

#[tokio::test]
async fn a_body_larger_than_the_cache_keeps_is_read_from_postgres_each_time_and_spends_no_list_budget() {
    const MAX_ENTRY_BYTES: usize = 4096;
    let small = |settings: &mut openrisk_shared::Settings| {
        settings.cache.max_entry_bytes = MAX_ENTRY_BYTES as u32;
        settings.cache.max_entries_per_route = 1;
    };
    let app = spawn_app_with(RedisNamespace::new(), small, AppOptions::default()).await;
    let token = &app.a.analyst;
    let long =
        json!({ "title": "Long", "impact": 3, "probability": 4, "description": "x".repeat(2 * MAX_ENTRY_BYTES) });
    let long = app.send_json(Method::POST, "/api/v1/risks", token, long).await.json::<Value>().await.unwrap();
    let long_path = format!("/api/v1/risks/{}", long["id"].as_str().unwrap());
    let short = json!({ "title": "Short", "impact": 3, "probability": 4, "owner": "short-owner" });
    assert_eq!(app.send_json(Method::POST, "/api/v1/risks", token, short).await.status(), StatusCode::CREATED);

    for read in 0..2 {
        let response = app.get(&long_path, token).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(cache_status(&response), CacheStatus::TooLarge, "read {read}");
        assert!(response.bytes().await.unwrap().len() > MAX_ENTRY_BYTES);
    }
    // Two pages that hold the long risk; neither is stored, so the budget of one entry per route
    // is still there for a page without it.
    for path in ["/api/v1/risks?limit=10", "/api/v1/risks?limit=20"] {
        assert_eq!(cache_status(&app.get(path, token).await), CacheStatus::TooLarge, "{path}");
    }
    let short_page = "/api/v1/risks?owner=short-owner";
    assert_eq!(cache_status(&app.get(short_page, token).await), CacheStatus::Stored);
    let too_large = r#"openrisk_cache_fills_total{outcome="too_large",route="/api/v1/risks/{id}"}"#;
    assert_eq!(common::metric_value(&app.metrics().await, too_large), 2.0);
}
