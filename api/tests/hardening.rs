//! What an abusive or careless client can make the API do: Redis memory, metric series and
//! database work it can cause, answers it can corrupt, and the HTTP details clients rely on
//! (caching headers, `Allow`). Connections are in `connections.rs`, conditional requests in
//! `conditional_requests.rs`.

mod common;

use std::time::Duration;

use common::{TestApp, assert_problem, cache_status, spawn_app, spawn_app_with};
use openrisk_api::AppOptions;
use openrisk_api::db::risks::ScoreBound;
use openrisk_shared::CacheStatus;
use openrisk_test_support::RedisNamespace;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The cached entries of `resource` (`risks`, `risk`, …) under the test's prefix.
fn entry_keys(app: &TestApp, resource: &str) -> Vec<String> {
    let marker = format!(":{}:{resource}:", openrisk_api::cache::RESPONSE_SCHEMA_VERSION);
    app.redis.keys().into_iter().filter(|key| key.contains(&marker)).collect()
}

fn redis_connection(app: &TestApp) -> Box<dyn redis::ConnectionLike> {
    app.redis.blocking_connection()
}

/// Bytes Redis spends on every key under the test's prefix (`MEMORY USAGE`).
fn redis_bytes(app: &TestApp) -> u64 {
    let mut conn = redis_connection(app);
    app.redis
        .keys()
        .iter()
        .map(|key| redis::cmd("MEMORY").arg("USAGE").arg(key).query::<Option<u64>>(&mut *conn).unwrap().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn every_key_the_api_writes_expires_and_reads_of_invented_ids_write_none() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let path = app.create_risk_path(token, "Expiring").await;
    for read in [path.as_str(), "/api/v1/risks", "/api/v1/stats"] {
        assert_eq!(app.get(read, token).await.status(), StatusCode::OK);
    }
    let (keys, bytes) = (app.redis.keys().len(), redis_bytes(&app));
    for _ in 0..200 {
        let invented = uuid::Uuid::new_v4();
        assert_eq!(app.get(&format!("/api/v1/risks/{invented}"), token).await.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!((app.redis.keys().len(), redis_bytes(&app)), (keys, bytes), "404s cost Redis nothing");

    let patched = app.send_json(Method::PATCH, &path, token, json!({"title": "T"})).await;
    assert_eq!(patched.status(), StatusCode::OK);
    assert_eq!(app.get(&path, token).await.status(), StatusCode::OK);
    let mut conn = redis_connection(&app);
    assert!(!app.redis.keys().is_empty(), "the reads above stored entries and versions");
    for key in app.redis.keys() {
        let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut *conn).unwrap();
        assert!(ttl > 0, "{key} never expires (TTL {ttl})");
    }
}

#[tokio::test]
async fn score_bounds_that_select_the_same_risks_share_one_cache_entry() {
    let app = spawn_app().await;
    let token = &app.a.viewer;
    app.create_risk(&app.a.analyst, "Scored").await;
    let groups: [(&str, &[&str]); 3] = [
        ("min_score", &["0", "-0", "0.0", "0e0", "0.000"]),
        ("min_score", &["0.000000123", "0.001", "0.0099999", "0.01"]),
        ("max_score", &["12.509", "12.5", "12.50000001", "12.500"]),
    ];
    for (group, (name, values)) in groups.iter().enumerate() {
        let mut etags = Vec::new();
        for value in *values {
            let response = app.get(&format!("/api/v1/risks?{name}={value}"), token).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}={value}");
            etags.push(response.headers()["etag"].to_str().unwrap().to_owned());
        }
        etags.dedup();
        assert_eq!(etags.len(), 1, "one answer for every spelling of {values:?}");
        assert_eq!(entry_keys(&app, "risks").len(), group + 1, "one entry for every spelling of {values:?}");
    }
}

#[tokio::test]
async fn normalised_score_bounds_select_what_postgres_selected_for_the_bounds_sent() {
    let app = spawn_app().await;
    let client = app.db.connect().await;
    let mut bounds = vec![0.0, -0.0, 5e-324, 1.23e-7, 0.001, 0.005, 0.01, 0.58, 0.29, 12.5, 12.505, 999.999, 1000.0];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..300 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        bounds.push((seed >> 11) as f64 / (1u64 << 53) as f64 * 1000.0);
    }
    for bound in bounds {
        let (at_least, at_most) = (ScoreBound::at_least(bound).to_string(), ScoreBound::at_most(bound).to_string());
        let same: bool = client
            .query_one(
                "SELECT bool_and((s >= $1::float8::numeric) = (s >= $2::text::numeric) \
                                AND (s <= $1::float8::numeric) = (s <= $3::text::numeric)) \
                 FROM (SELECT (g / 100.0)::numeric(6, 2) AS s \
                       FROM generate_series(greatest(0, floor($1::float8 * 100)::int - 3), \
                                            floor($1::float8 * 100)::int + 3) g) grid",
                &[&bound, &at_least, &at_most],
            )
            .await
            .unwrap()
            .get(0);
        assert!(same, "bound {bound:e}: normalised to >= {at_least} and <= {at_most} selects other scores");
    }
}

#[tokio::test]
async fn free_text_searches_and_far_pages_are_answered_but_never_stored() {
    let app = spawn_app().await;
    let token = &app.a.viewer;
    app.create_risk(&app.a.analyst, "Searchable").await;
    for path in [
        "/api/v1/risks?q=search".to_owned(),
        "/api/v1/assets?q=search".to_owned(),
        format!("/api/v1/risks?page={}", openrisk_api::routes::MAX_CACHED_PAGE + 1),
        "/api/v1/assets?page=5000".to_owned(),
    ] {
        for _ in 0..2 {
            let response = app.get(&path, token).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(cache_status(&response), CacheStatus::Uncacheable, "{path}");
        }
    }
    assert!(entry_keys(&app, "risks").is_empty() && entry_keys(&app, "assets").is_empty());
    let near = app.get(&format!("/api/v1/risks?page={}", openrisk_api::routes::MAX_CACHED_PAGE), token).await;
    assert_eq!(cache_status(&near), CacheStatus::Stored);
    assert_eq!(entry_keys(&app, "risks").len(), 1);
}

#[tokio::test]
async fn a_tenant_past_its_entry_budget_stores_no_more_list_entries_while_others_still_do() {
    let app = spawn_app_with(
        RedisNamespace::new(),
        |settings| settings.cache.max_entries_per_route = 5,
        AppOptions::default(),
    )
    .await;
    app.create_risk(&app.a.analyst, "Budgeted").await;
    let mut statuses = Vec::new();
    for limit in 1..=40 {
        statuses.push(cache_status(&app.get(&format!("/api/v1/risks?limit={limit}"), &app.a.viewer).await));
    }
    assert_eq!(statuses.iter().filter(|status| **status == CacheStatus::Stored).count(), 5);
    assert_eq!(statuses.iter().filter(|status| **status == CacheStatus::OverBudget).count(), 35);
    assert_eq!(entry_keys(&app, "risks").len(), 5, "tenant A holds its budget of list entries and no more");
    let bytes = redis_bytes(&app);
    for limit in 41..=80 {
        app.get(&format!("/api/v1/risks?limit={limit}"), &app.a.viewer).await;
    }
    assert_eq!(redis_bytes(&app), bytes, "more variants cost Redis nothing");
    let other = app.get("/api/v1/risks?limit=7", &app.b.viewer).await;
    assert_eq!(cache_status(&other), CacheStatus::Stored, "tenant B has a budget of its own");
}

/// Lists read at once count against the budget before they are read, so concurrent misses cannot
/// all pass the check and store past it.
#[tokio::test]
async fn concurrent_misses_of_a_tenant_store_no_more_list_entries_than_its_budget() {
    let budget = |settings: &mut openrisk_shared::Settings| settings.cache.max_entries_per_route = 5;
    let app = spawn_app_with(RedisNamespace::new(), budget, AppOptions::default()).await;
    app.create_risk(&app.a.analyst, "Budgeted").await;
    let paths: Vec<String> = (1..=30).map(|limit| format!("/api/v1/risks?limit={limit}")).collect();
    let reads = paths.iter().map(|path| app.get(path, &app.a.viewer));
    let statuses: Vec<CacheStatus> = futures::future::join_all(reads).await.iter().map(cache_status).collect();
    let stored = statuses.iter().filter(|status| **status == CacheStatus::Stored).count();
    assert!(stored <= 5, "{stored} entries stored at once: {statuses:?}");
    assert!(entry_keys(&app, "risks").len() <= 5, "{:?}", entry_keys(&app, "risks"));
}

/// Series of `openrisk_http_requests_total` in the metrics text.
fn http_series(metrics: &str) -> usize {
    metrics.lines().filter(|line| line.starts_with("openrisk_http_requests_total{")).count()
}

#[tokio::test]
async fn invented_methods_and_unmatched_paths_add_no_metric_series() {
    let app = spawn_app().await;
    assert_eq!(app.get("/api/v1/risks", &app.a.viewer).await.status(), StatusCode::OK);
    let before = http_series(&app.metrics().await);
    for i in 0..50 {
        let method = Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
        app.request(method.clone(), "/api/v1/risks", &app.a.viewer).send().await.unwrap();
        app.request(method, &format!("/nowhere/{i}"), &app.a.viewer).send().await.unwrap();
        app.get(&format!("/nowhere/{i}"), &app.a.viewer).await;
    }
    let added = http_series(&app.metrics().await) - before;
    // At most: (other, /api/v1/risks, 405), (other, unmatched, 404), (GET, unmatched, 404) and
    // (other, unmatched, 405).
    assert!(added <= 4, "150 invented requests added {added} series");
}

#[tokio::test]
async fn malformed_bearer_tokens_are_refused_before_any_database_query() {
    let app = spawn_app().await;
    let hex = "0123456789abcdef".repeat(4);
    let mut junk: Vec<String> = (0..20).map(|i| format!("junk{i}")).collect();
    junk.extend((0..10).map(|i| format!("ort_{}{i}", &hex[..63])).map(|token| token.to_uppercase()));
    junk.extend((0..10).map(|i| format!("ort_{hex}{i}")));
    junk.extend((0..10).map(|i| format!("xyz_{}{i}", &hex[..63])));
    for token in &junk {
        assert_problem(app.get("/api/v1/risks", token).await, StatusCode::UNAUTHORIZED).await;
    }
    let misses = "openrisk_auth_token_cache_total{result=\"miss\"}";
    assert_eq!(app.metric(misses).await, 0.0, "no malformed token reached Postgres");
    let unknown = format!("ort_{}", "f".repeat(64));
    assert_problem(app.get("/api/v1/risks", &unknown).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(app.metric(misses).await, 1.0, "a well-formed unknown token is looked up once");
}

#[tokio::test]
async fn a_write_whose_database_session_ends_mid_statement_is_answered_503_and_changes_nothing() {
    let app = spawn_app().await;
    let path = app.create_risk_path(&app.a.analyst, "Before").await;
    // A session of the test's own holds the risk's row, so the API's write waits for it.
    let holder = app.db.connect().await;
    common::hold_risk(&holder, &path).await;
    let patch = app.send_json(Method::PATCH, &path, &app.a.analyst, json!({"title": "After"}));
    // Then the API's waiting backend is terminated, as a server shutdown would.
    let terminate = async {
        let waiting = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                       WHERE application_name = 'openrisk-api' AND datname = current_database()
                         AND wait_event_type = 'Lock'";
        while holder.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (response, ()) = tokio::join!(patch, terminate);
    let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(problem["detail"].as_str().unwrap().contains("retry"), "{problem}");
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(app.get_json(&path, &app.a.analyst).await["title"], "Before", "nothing was changed");
    let again = app.send_json(Method::PATCH, &path, &app.a.analyst, json!({"title": "After"})).await;
    assert_eq!(again.status(), StatusCode::OK, "the same request succeeds when sent again");
}

#[tokio::test]
async fn custom_field_numbers_round_trip_exactly_on_every_path() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let risk = app.create_risk(token, "Numbers").await;
    let id = risk["id"].as_str().unwrap();
    let path = format!("/api/v1/risks/{id}");
    let text = r#"{"custom_fields":{"big":12345678901234567890123,"max":18446744073709551615,"neg":-9223372036854775808,"fine":0.1}}"#;
    let response = app
        .request(Method::PATCH, &path, token)
        .header("content-type", "application/json")
        .body(text)
        .send()
        .await
        .unwrap();
    let expected = ["12345678901234567890123", "18446744073709551615", "-9223372036854775808", "0.1"];
    let stored = |body: &str| expected.iter().all(|number| body.contains(number));
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(stored(&body), "the write's answer rounded a number: {body}");
    for read in ["uncached or stored", "cached"] {
        let body = app.get(&path, token).await.text().await.unwrap();
        assert!(stored(&body), "the {read} read rounded a number: {body}");
    }
    app.sql(&format!("UPDATE risks SET custom_fields = '{{\"sql\": 98765432109876543210987}}' WHERE id = '{id}'"))
        .await;
    app.drain_outbox().await;
    let body = app.get(&path, token).await.text().await.unwrap();
    assert!(body.contains("98765432109876543210987"), "a number written by SQL read back rounded: {body}");
}

#[tokio::test]
async fn searches_find_titles_by_their_exact_non_ascii_text() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    for title in ["ΚΑΛΟΣ ΣΤΑΘΜΟΣ", "İstanbul office", "Straße ÜBER alles"] {
        app.create_risk(token, title).await;
    }
    app.create_asset(token, "ÜRÜN sunucusu", "HIGH").await;
    for (query, title) in [
        ("ΚΑΛΟΣ", "ΚΑΛΟΣ ΣΤΑΘΜΟΣ"),
        ("ΣΤΑΘΜΟΣ", "ΚΑΛΟΣ ΣΤΑΘΜΟΣ"),
        ("İstanbul", "İstanbul office"),
        ("ÜBER", "Straße ÜBER alles"),
        ("über", "Straße ÜBER alles"),
    ] {
        let page = app.get_json(&format!("/api/v1/risks?q={query}"), token).await;
        let titles: Vec<&str> =
            page["items"].as_array().unwrap().iter().map(|r| r["title"].as_str().unwrap()).collect();
        assert_eq!(titles, [title], "q={query}");
    }
    let page = app.get_json("/api/v1/assets?q=ÜRÜN", token).await;
    assert_eq!(page["total"], 1);
}

#[tokio::test]
async fn a_search_matches_a_title_or_a_description_never_text_spanning_the_two() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let created = app.send_json(
        Method::POST,
        "/api/v1/risks",
        token,
        json!({"title": "alpha", "description": "bravo", "impact": 1, "probability": 1}),
    );
    assert_eq!(created.await.status(), StatusCode::CREATED);
    for (query, total) in [("pha", 1), ("rav", 1), ("ALPHA", 1), ("ha br", 0), ("ha%20br", 0), ("alphabravo", 0)] {
        let page = app.get_json(&format!("/api/v1/risks?q={query}"), token).await;
        assert_eq!(page["total"], total, "q={query}");
    }
}

#[tokio::test]
async fn a_deleted_risk_frees_its_external_id() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let body = json!({"title": "Imported", "impact": 2, "probability": 2, "source": "THEHIVE", "external_id": "EXT-1"});
    let first = app.send_json(Method::POST, "/api/v1/risks", token, body.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    assert_problem(app.send_json(Method::POST, "/api/v1/risks", token, body.clone()).await, StatusCode::CONFLICT).await;
    let path = format!("/api/v1/risks/{}", first["id"].as_str().unwrap());
    assert_eq!(app.request(Method::DELETE, &path, token).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(app.send_json(Method::POST, "/api/v1/risks", token, body).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn json_bodies_with_a_repeated_key_are_refused() {
    let app = spawn_app().await;
    let risk = app.create_risk(&app.a.analyst, "Once").await;
    let risk_path = format!("/api/v1/risks/{}", risk["id"].as_str().unwrap());
    let tokens_before = app.count("SELECT count(*) FROM api_tokens").await;
    for (method, path, token, body) in [
        (Method::POST, "/api/v1/tokens", &app.a.admin, r#"{"name":"x","role":"viewer","role":"admin"}"#),
        (Method::POST, "/api/v1/risks", &app.a.analyst, r#"{"title":"a","title":"b","impact":1,"probability":1}"#),
        (Method::PATCH, risk_path.as_str(), &app.a.analyst, r#"{"custom_fields":{"k":1,"k":2}}"#),
    ] {
        let response = app
            .request(method, path, token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert!(problem["detail"].as_str().unwrap().contains("twice"), "{problem}");
    }
    assert_eq!(app.count("SELECT count(*) FROM api_tokens").await, tokens_before);
    assert_eq!(app.count("SELECT count(*) FROM risks").await, 1);
}

#[tokio::test]
async fn responses_carry_cache_control_nosniff_and_the_http_details_clients_expect() {
    let app = spawn_app().await;
    let token = &app.a.viewer;
    let list = app.get("/api/v1/risks", token).await;
    assert_eq!(list.headers()["cache-control"], "private, no-cache");
    assert_eq!(list.headers()["x-content-type-options"], "nosniff");
    let length = list.bytes().await.unwrap().len();
    let missing = app.get(&format!("/api/v1/risks/{}", uuid::Uuid::new_v4()), token).await;
    assert_eq!(missing.headers()["cache-control"], "no-store");
    assert_eq!(missing.headers()["x-content-type-options"], "nosniff");

    let head = app.request(Method::HEAD, "/api/v1/risks", token).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers().get("content-length").map(|v| v.to_str().unwrap().to_owned()), Some(length.to_string()));

    let refused = app.request(Method::PUT, "/api/v1/risks", token).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        refused.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()).as_deref(),
        Some("GET, HEAD, POST")
    );
    let refused =
        app.request(Method::POST, &format!("/api/v1/risks/{}", uuid::Uuid::new_v4()), token).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        refused.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()).as_deref(),
        Some("DELETE, GET, HEAD, PATCH")
    );

    // Every spelling the router reads as the same path gets the same headers.
    for docs_page in ["/docs", "/docs/", "//docs"] {
        let docs = app.client.get(format!("{}{docs_page}", app.url)).send().await.unwrap();
        assert_eq!(docs.status(), StatusCode::OK, "{docs_page}");
        let policy = docs.headers().get("content-security-policy").map(|v| v.to_str().unwrap().to_owned());
        assert!(policy.is_some_and(|policy| policy.contains("default-src 'none'")), "{docs_page} has a CSP");
    }
    for (page, allowed) in [
        ("/docs", "GET, HEAD"),
        ("/docs/", "GET, HEAD"),
        ("/openapi.json", "GET, HEAD"),
        ("/openapi.json/", "GET, HEAD"),
        ("/api//v1/risks", "GET, HEAD, POST"),
        ("//api/v1/risks//", "GET, HEAD, POST"),
    ] {
        let refused = app.request(Method::PUT, page, token).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED, "{page}");
        assert_eq!(refused.headers().get("allow").map(|v| v.to_str().unwrap()), Some(allowed), "{page}");
    }

    // Repeated If-None-Match lines are one list, whether the hit path or the router answers (an
    // encoded parameter is left to the router).
    for list in ["/api/v1/risks?limit=20", "/api/v1/risks?limit=%320"] {
        let current = app.get(list, token).await.headers()["etag"].to_str().unwrap().to_owned();
        let lines = app.request(Method::GET, list, token).header("if-none-match", "\"stale\"");
        let answer = lines.header("if-none-match", &current).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_MODIFIED, "{list}");
    }

    // A 304 to HEAD carries no length; a 412 is an error, stored by no cache.
    let path = app.create_risk_path(&app.a.analyst, "Headers").await;
    let etag = app.get(&path, token).await.headers()["etag"].to_str().unwrap().to_owned();
    let head = app.request(Method::HEAD, &path, token).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(head.headers().get("content-length"), None);
    let stale =
        app.request(Method::PATCH, &path, &app.a.analyst).header("if-match", "\"stale\"").json(&json!({"title": "x"}));
    let stale = stale.send().await.unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn a_key_twice_in_a_body_is_refused_whatever_the_case_of_its_media_type() {
    let app = spawn_app().await;
    for content_type in ["application/json", "Application/JSON", "APPLICATION/JSON; charset=utf-8"] {
        let response = app
            .request(Method::POST, "/api/v1/tokens", &app.a.admin)
            .header("content-type", content_type)
            .body(r#"{"name":"x","role":"viewer","role":"admin"}"#)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert!(problem["detail"].as_str().unwrap().contains("twice"), "{content_type}: {problem}");
    }
}

#[tokio::test]
async fn blank_titles_and_dates_outside_years_one_to_9999_are_refused() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    // Blank is white space in either reading of the document's pattern: the server's regex engine
    // (Unicode White_Space, which has U+0085) and ECMAScript's (which has U+FEFF instead).
    for title in ["   ", "\t\n", "\u{85}", " \u{feff} "] {
        let body = json!({"title": title, "impact": 1, "probability": 1});
        assert_problem(app.send_json(Method::POST, "/api/v1/risks", token, body).await, StatusCode::BAD_REQUEST).await;
    }
    let mitigations = format!("{}/mitigations", app.create_risk_path(token, "Dated").await);
    let refused =
        app.send_json(Method::POST, &mitigations, token, json!({"title": "m", "due_date": "-0001-01-01"})).await;
    let problem = assert_problem(refused, StatusCode::BAD_REQUEST).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("`-0001-01-01` is not a date from 0001-01-01 to 9999-12-31 written YYYY-MM-DD"),
        "{detail}"
    );
    assert!(detail.contains("\"date\"") && !detail.contains("string_date"), "{detail}");
    let created =
        app.send_json(Method::POST, &mitigations, token, json!({"title": "m", "due_date": "2030-01-01"})).await;
    let created: Value = created.json().await.unwrap();
    let path = format!("{mitigations}/{}", created["id"].as_str().unwrap());
    let refused = app.send_json(Method::PATCH, &path, token, json!({"due_date": "-0001-12-31"})).await;
    assert_problem(refused, StatusCode::BAD_REQUEST).await;
    let refused = app.send_json(Method::PATCH, &path, token, json!({"title": " "})).await;
    assert_problem(refused, StatusCode::BAD_REQUEST).await;
    assert_eq!(app.count("SELECT count(*) FROM risks").await, 1);
}

#[tokio::test]
async fn error_details_name_documented_parameters_and_types_not_internals() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let risk_path = app.create_risk_path(token, "Details").await;
    let mut details = Vec::new();
    for response in [
        app.get("/api/v1/risks/not-a-uuid", token).await,
        app.get("/api/v1/risks?limit=abc", token).await,
        app.get("/api/v1/risks?min_score=x", token).await,
        app.send_json(Method::PATCH, &risk_path, token, json!({"impact": 100000})).await,
        app.send_json(
            Method::POST,
            &format!("{risk_path}/mitigations"),
            token,
            json!({"title": "m", "progress": 70000}),
        )
        .await,
    ] {
        let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
        details.push(problem["detail"].as_str().unwrap().to_owned());
    }
    for detail in &details {
        for internal in ["param0", "param1", "integer_int", "number_double", "string_uuid"] {
            assert!(!detail.contains(internal), "{detail:?} names {internal}");
        }
    }
    assert!(details[0].contains("`id`"), "{:?}", details[0]);
}

#[tokio::test]
async fn metrics_are_served_on_their_own_address_and_not_on_the_api_port() {
    let app = spawn_app().await;
    assert_eq!(app.get("/api/v1/risks", &app.a.viewer).await.status(), StatusCode::OK);
    let on_api_port = app.client.get(format!("{}/metrics", app.url)).send().await.unwrap();
    assert_problem(on_api_port, StatusCode::NOT_FOUND).await;
    assert_ne!(app.app.metrics_addr.port(), app.app.addr.port());
    let metrics = app.client.get(format!("http://{}/metrics", app.app.metrics_addr)).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics.text().await.unwrap().contains("openrisk_http_requests_total{"));
}

#[tokio::test]
async fn a_stored_enum_value_this_build_does_not_know_fails_the_read_with_500_and_the_process_serves_on() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let odd = app.create_risk(token, "Written by a newer build").await;
    let fine = app.create_risk(token, "Ordinary").await;
    let (odd_path, fine_path) = (
        format!("/api/v1/risks/{}", odd["id"].as_str().unwrap()),
        format!("/api/v1/risks/{}", fine["id"].as_str().unwrap()),
    );
    // What a newer migration could allow: a status this build has no variant for.
    app.sql(&format!(
        "DO $$ DECLARE name text; BEGIN
           FOR name IN SELECT conname FROM pg_constraint WHERE conrelid = 'risks'::regclass AND contype = 'c'
                         AND pg_get_constraintdef(oid) LIKE '%status%' LOOP
             EXECUTE format('ALTER TABLE risks DROP CONSTRAINT %I', name);
           END LOOP;
         END $$;
         UPDATE risks SET status = 'ARCHIVED' WHERE id = '{}';",
        odd["id"].as_str().unwrap()
    ))
    .await;
    assert_problem(app.get(&odd_path, token).await, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_problem(app.get("/api/v1/risks", token).await, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(app.get(&fine_path, token).await.status(), StatusCode::OK, "the process is still up");
}

#[tokio::test]
async fn a_token_whose_stored_role_this_build_does_not_know_is_refused_with_500_and_never_read_as_a_viewer() {
    let app = spawn_app().await;
    // What a newer migration could allow: a role this build has no variant for.
    app.sql(&format!(
        "ALTER TABLE api_tokens DROP CONSTRAINT IF EXISTS api_tokens_role_check;
         UPDATE api_tokens SET role = 'auditor' WHERE tenant_id = '{}' AND role = 'viewer';",
        app.a.id
    ))
    .await;
    assert_problem(app.get("/api/v1/stats", &app.a.viewer).await, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_problem(app.get("/api/v1/stats", &app.a.viewer).await, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(app.get("/api/v1/stats", &app.a.analyst).await.status(), StatusCode::OK, "other tokens still work");
}
