//! Every endpoint's happy path, through HTTP against real Postgres and Redis.

mod common;

use common::{assert_problem, cache_status, spawn_app};
use openrisk_shared::CacheStatus;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn risks_can_be_created_listed_filtered_changed_and_deleted() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let created = app
        .send_json(
            Method::POST,
            "/api/v1/risks",
            token,
            json!({"title": "Phishing of finance staff", "description": "Wire fraud", "impact": 4, "probability": 5,
                   "status": "ACTIVE", "tags": ["phishing", "finance"], "owner": "alice", "external_id": "EXT-1",
                   "custom_fields": {"unit": "corporate"}, "frameworks": ["ISO27001"]}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let risk: Value = created.json().await.unwrap();
    assert_eq!(location, format!("/api/v1/risks/{}", risk["id"].as_str().unwrap()));
    assert_eq!(risk["score"], 20.0);
    assert_eq!(risk["severity"], "CRITICAL");
    assert_eq!(risk["custom_fields"]["unit"], "corporate");
    app.create_risk(token, "Unpatched VPN appliance").await;

    let list = app.get_json("/api/v1/risks", &app.a.viewer).await;
    assert_eq!(list["total"], 2);
    assert_eq!((list["page"].as_u64(), list["limit"].as_u64()), (Some(1), Some(20)));

    for (query, expected) in [
        ("q=WIRE", 1),
        ("status=ACTIVE", 1),
        ("severity=HIGH", 1),
        ("min_score=15", 1),
        ("max_score=15", 1),
        ("tag=finance", 1),
        ("owner=alice", 1),
        ("owner=nobody", 0),
        ("limit=1&page=2", 2),
    ] {
        let page = app.get_json(&format!("/api/v1/risks?{query}"), &app.a.viewer).await;
        assert_eq!(page["total"], expected, "{query}: {page}");
    }
    let page: Value =
        app.get("/api/v1/risks?limit=1&page=2&sort_by=title&sort_dir=asc", &app.a.viewer).await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["title"], "Unpatched VPN appliance");
    let past_the_end = app.get_json("/api/v1/risks?limit=1&page=3", &app.a.viewer).await;
    let shown = past_the_end["items"].as_array().map(Vec::len);
    assert_eq!((past_the_end["total"].as_u64(), shown), (Some(2), Some(0)), "a page past the end still counts");
    let by_title = app.get_json("/api/v1/risks?sort_by=title&sort_dir=desc", &app.a.viewer).await;
    let titles: Vec<&str> =
        by_title["items"].as_array().unwrap().iter().map(|r| r["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["Unpatched VPN appliance", "Phishing of finance staff"]);

    let id = risk["id"].as_str().unwrap();
    let patched = app
        .send_json(Method::PATCH, &format!("/api/v1/risks/{id}"), token, json!({"impact": 1, "external_id": null}))
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!((patched["score"].as_f64(), patched["severity"].as_str()), (Some(5.0), Some("LOW")));
    assert_eq!(patched["external_id"], Value::Null);
    assert_eq!(patched["title"], "Phishing of finance staff", "absent fields stay");

    let deleted = app.request(Method::DELETE, &format!("/api/v1/risks/{id}"), token).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_problem(app.get(&format!("/api/v1/risks/{id}"), token).await, StatusCode::NOT_FOUND).await;
    let again = app.request(Method::DELETE, &format!("/api/v1/risks/{id}"), token).send().await.unwrap();
    assert_problem(again, StatusCode::NOT_FOUND).await;
    let list = app.get_json("/api/v1/risks", token).await;
    assert_eq!(list["total"], 1, "soft-deleted risks leave the list");
    let kept = app.count("SELECT count(*) FROM risks WHERE deleted_at IS NOT NULL").await;
    assert_eq!(kept, 1, "soft delete keeps the row");
}

#[tokio::test]
async fn the_risk_detail_embeds_mitigations_sub_actions_and_assets() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let base = app.create_risk_path(token, "Ransomware").await;

    let mitigation = app
        .send_json(
            Method::POST,
            &format!("{base}/mitigations"),
            token,
            json!({"title": "Offline backups", "assignee": "bob", "due_date": "2027-01-31", "cost": 2}),
        )
        .await;
    assert_eq!(mitigation.status(), StatusCode::CREATED);
    let mitigation: Value = mitigation.json().await.unwrap();
    assert_eq!(mitigation["status"], "PLANNED");
    let mitigation_path = format!("{base}/mitigations/{}", mitigation["id"].as_str().unwrap());

    let sub = app
        .send_json(Method::POST, &format!("{mitigation_path}/subactions"), token, json!({"title": "Buy tapes"}))
        .await;
    assert_eq!(sub.status(), StatusCode::CREATED);
    let sub: Value = sub.json().await.unwrap();
    assert_eq!(sub["completed"], false);
    let sub_path = format!("{mitigation_path}/subactions/{}", sub["id"].as_str().unwrap());
    let toggled: Value =
        app.request(Method::POST, &format!("{sub_path}/toggle"), token).send().await.unwrap().json().await.unwrap();
    assert_eq!(toggled["completed"], true);
    let renamed: Value =
        app.send_json(Method::PATCH, &sub_path, token, json!({"title": "Buy LTO tapes"})).await.json().await.unwrap();
    assert_eq!((renamed["title"].as_str(), renamed["completed"].as_bool()), (Some("Buy LTO tapes"), Some(true)));

    let patched =
        app.send_json(Method::PATCH, &mitigation_path, token, json!({"status": "IN_PROGRESS", "progress": 40})).await;
    assert_eq!(patched.status(), StatusCode::OK);
    let fetched = app.get(&mitigation_path, &app.a.viewer).await;
    assert_eq!(fetched.status(), StatusCode::OK);
    let fetched: Value = fetched.json().await.unwrap();
    assert_eq!((fetched["status"].as_str(), fetched["progress"].as_i64()), (Some("IN_PROGRESS"), Some(40)));
    assert_eq!(fetched["subactions"][0]["title"], "Buy LTO tapes");

    let asset = app.create_asset(token, "File server", "CRITICAL").await;
    let link = format!("{base}/assets/{}", asset["id"].as_str().unwrap());
    assert_eq!(app.link_asset(token, &base, &asset).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.link_asset(token, &base, &asset).await.status(), StatusCode::NO_CONTENT, "idempotent");

    let detail = app.get_json(&base, &app.a.viewer).await;
    assert_eq!(detail["title"], "Ransomware");
    assert_eq!(detail["score"], 18.0, "3 × 4 × 1.5 for a CRITICAL asset");
    assert_eq!(detail["assets"][0]["name"], "File server");
    assert_eq!(detail["mitigations"][0]["subactions"][0]["completed"], true);

    let unlinked = app.request(Method::DELETE, &link, token).send().await.unwrap();
    assert_eq!(unlinked.status(), StatusCode::NO_CONTENT);
    assert_problem(app.request(Method::DELETE, &link, token).send().await.unwrap(), StatusCode::NOT_FOUND).await;
    let detail = app.get_json(&base, token).await;
    assert_eq!((detail["score"].as_f64(), detail["assets"].as_array().unwrap().len()), (Some(12.0), 0));

    assert_eq!(app.request(Method::DELETE, &sub_path, token).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.request(Method::DELETE, &mitigation_path, token).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_problem(app.get(&mitigation_path, token).await, StatusCode::NOT_FOUND).await;
    let detail = app.get_json(&base, token).await;
    assert!(detail["mitigations"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_risk_detail_embeds_each_child_as_its_own_endpoint_serves_it_in_order_and_no_other_risks() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let base = app.create_risk_path(token, "Supplier breach").await;
    let post = async |path: String, body: Value| {
        let created = app.send_json(Method::POST, &path, token, body).await;
        assert_eq!(created.status(), StatusCode::CREATED);
        format!("{path}/{}", created.json::<Value>().await.unwrap()["id"].as_str().unwrap())
    };
    let mut mitigations = Vec::new();
    for title in ["First", "Second", "Third"] {
        let body = json!({"title": title, "due_date": "2027-03-31"});
        mitigations.push(post(format!("{base}/mitigations"), body).await);
    }
    // Another risk's children, which the detail leaves out.
    let other = app.create_risk_path(token, "Other risk").await;
    let others = post(format!("{other}/mitigations"), json!({"title": "Not embedded"})).await;
    let mut subactions = Vec::new();
    for title in ["Later letter, made first", "Earlier letter, made second"] {
        subactions.push(post(format!("{}/subactions", mitigations[1]), json!({"title": title})).await);
    }
    post(format!("{others}/subactions"), json!({"title": "Not embedded either"})).await;
    let mut assets = Vec::new();
    for name in ["Zeta", "Alpha", "Mid"] {
        let asset = app.create_asset(token, name, "LOW").await;
        assert_eq!(app.link_asset(token, &base, &asset).await.status(), StatusCode::NO_CONTENT);
        assets.push(asset);
    }
    let unlinked = app.create_asset(token, "Aardvark", "LOW").await;
    assert_eq!(app.link_asset(token, &other, &unlinked).await.status(), StatusCode::NO_CONTENT);

    // A write answers its mitigation from the rows it locked; a read from one statement.
    let patched = app.send_json(Method::PATCH, &mitigations[1], token, json!({"progress": 10})).await;
    assert_eq!(patched.json::<Value>().await.unwrap(), app.get_json(&mitigations[1], &app.a.viewer).await);

    let detail = app.get_json(&base, &app.a.viewer).await;
    let mut served = Vec::new();
    for path in &mitigations {
        served.push(app.get_json(path, &app.a.viewer).await);
    }
    assert_eq!(detail["mitigations"], Value::Array(served), "mitigations oldest first, as their own GET");
    let titles: Vec<&str> = detail["mitigations"][1]["subactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Later letter, made first", "Earlier letter, made second"], "sub-actions oldest first");
    let mut by_name = Vec::new();
    for index in [1, 2, 0] {
        by_name.push(app.get_json(&format!("/api/v1/assets/{}", assets[index]["id"].as_str().unwrap()), token).await);
    }
    assert_eq!(detail["assets"], Value::Array(by_name), "linked assets by name, as their own GET");

    // A soft-deleted risk's mitigations and sub-actions go with it, for reads and writes alike.
    assert_eq!(app.request(Method::DELETE, &base, token).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_problem(app.get(&mitigations[1], &app.a.viewer).await, StatusCode::NOT_FOUND).await;
    let gone = [
        app.send_json(Method::PATCH, &mitigations[1], token, json!({"progress": 20})).await,
        app.send_json(Method::POST, &format!("{}/subactions", mitigations[1]), token, json!({"title": "Late"})).await,
        app.send_json(Method::PATCH, &subactions[0], token, json!({"title": "Renamed"})).await,
        app.request(Method::POST, &format!("{}/toggle", subactions[0]), token).send().await.unwrap(),
    ];
    for answer in gone {
        assert_problem(answer, StatusCode::NOT_FOUND).await;
    }
}

#[tokio::test]
async fn assets_can_be_listed_changed_and_deleted_and_rescore_their_risks() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let asset = app.create_asset(token, "Mail server", "LOW").await;
    app.create_asset(token, "CRM", "HIGH").await;
    let path = format!("/api/v1/assets/{}", asset["id"].as_str().unwrap());
    let risk_path = app.create_risk_path(token, "Spam relay").await;
    app.link_asset(token, &risk_path, &asset).await;

    let list = app.get_json("/api/v1/assets", &app.a.viewer).await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"][0]["name"], "CRM", "by name");
    let filtered = app.get_json("/api/v1/assets?criticality=LOW&q=MAIL", &app.a.viewer).await;
    assert_eq!(filtered["total"], 1);

    let got = app.get_json(&path, &app.a.viewer).await;
    assert_eq!(got["criticality"], "LOW");
    assert_eq!(app.get_json(&risk_path, token).await["score"], 9.6);
    let patched = app.send_json(Method::PATCH, &path, token, json!({"criticality": "CRITICAL", "owner": "ops"})).await;
    assert_eq!(patched.status(), StatusCode::OK);
    assert_eq!(app.get_json(&path, token).await["owner"], "ops");
    assert_eq!(app.get_json(&risk_path, token).await["score"], 18.0, "re-scored");

    assert_eq!(app.request(Method::DELETE, &path, token).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_problem(app.get(&path, token).await, StatusCode::NOT_FOUND).await;
    assert_eq!(app.get_json(&risk_path, token).await["score"], 12.0, "unlinked by the delete");
}

#[tokio::test]
async fn stats_matrix_and_trends_aggregate_live_risks() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let first = app.create_risk(token, "One").await;
    app.create_risk(token, "Two").await;
    let gone = json!({"title": "Gone", "impact": 5, "probability": 5});
    let deleted: Value = app.send_json(Method::POST, "/api/v1/risks", token, gone).await.json().await.unwrap();
    app.request(Method::DELETE, &format!("/api/v1/risks/{}", deleted["id"].as_str().unwrap()), token)
        .send()
        .await
        .unwrap();
    app.send_json(
        Method::POST,
        &format!("/api/v1/risks/{}/mitigations", first["id"].as_str().unwrap()),
        token,
        json!({"title": "Fix"}),
    )
    .await;

    let stats = app.get_json("/api/v1/stats", &app.a.viewer).await;
    assert_eq!(stats["total_risks"], 2);
    assert_eq!(stats["by_status"]["DRAFT"], 2);
    assert_eq!(stats["by_severity"]["HIGH"], 2);
    assert_eq!(stats["average_score"], 12.0);
    assert_eq!(stats["mitigations_by_status"]["PLANNED"], 1);

    let matrix = app.get_json("/api/v1/stats/risk-matrix", &app.a.viewer).await;
    assert_eq!(matrix["total"], 2);
    assert_eq!(matrix["counts"][2][3], 2, "impact 3, probability 4");

    let trends = app.get_json("/api/v1/stats/trends?days=7", &app.a.viewer).await;
    let points = trends["points"].as_array().unwrap();
    assert_eq!(points.len(), 7);
    let total = |field: &str| points.iter().map(|point| point[field].as_i64().unwrap()).sum::<i64>();
    assert_eq!((total("created"), total("deleted")), (3, 1));
    assert_eq!(points[0]["average_score"], Value::Null);
    // Today's mean covers the three creations (12, 12, 25), not the deletion.
    assert_eq!(points[6]["average_score"], 16.33);
    let default = app.get_json("/api/v1/stats/trends", &app.a.viewer).await;
    assert_eq!(default["points"].as_array().unwrap().len(), 30);
    assert_problem(app.get("/api/v1/stats/trends?days=0", token).await, StatusCode::BAD_REQUEST).await;
    assert_problem(app.get("/api/v1/stats/trends?days=366", token).await, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn a_deleted_risk_is_not_rescored_into_the_trends_by_its_assets() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    // MEDIUM weighs 1, so the link itself leaves the score (12) and the history as they were.
    let (risk_path, asset) = app.create_linked_risk_and_asset(token, "Gone", "Mail server", "MEDIUM").await;
    let asset_path = format!("/api/v1/assets/{}", asset["id"].as_str().unwrap());
    let deleted = app.request(Method::DELETE, &risk_path, token).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let patched = app.send_json(Method::PATCH, &asset_path, token, json!({"criticality": "CRITICAL"})).await;
    assert_eq!(patched.status(), StatusCode::OK);
    let gone = app.request(Method::DELETE, &asset_path, token).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT, "the asset's delete removes the link too");

    let trends = app.get_json("/api/v1/stats/trends?days=1", &app.a.viewer).await;
    let today = &trends["points"][0];
    assert_eq!((&today["created"], &today["updated"], &today["deleted"]), (&json!(1), &json!(0), &json!(1)));
    assert_eq!(today["average_score"], 12.0, "the creation's score alone");
}

#[tokio::test]
async fn admins_manage_their_tenants_tokens() {
    let app = spawn_app().await;
    let created =
        app.send_json(Method::POST, "/api/v1/tokens", &app.a.admin, json!({"name": "ci", "role": "viewer"})).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let token = created["token"].as_str().unwrap();
    assert_eq!(app.get("/api/v1/risks", token).await.status(), StatusCode::OK);

    let list = app.get_json("/api/v1/tokens", &app.a.admin).await;
    assert_eq!(list.as_array().unwrap().len(), 4, "three from the harness and the new one");
    assert!(
        list.as_array().unwrap().iter().all(|token| token.get("token").is_none() && token.get("token_hash").is_none())
    );

    let other_tenant =
        app.request(Method::DELETE, &format!("/api/v1/tokens/{}", created["id"].as_str().unwrap()), &app.b.admin);
    assert_problem(other_tenant.send().await.unwrap(), StatusCode::NOT_FOUND).await;
    let revoked =
        app.request(Method::DELETE, &format!("/api/v1/tokens/{}", created["id"].as_str().unwrap()), &app.a.admin);
    assert_eq!(revoked.send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_problem(app.get("/api/v1/risks", token).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(app.count("SELECT count(*) FROM api_tokens WHERE length(token_hash) = 32").await, 7);
}

/// An instance started before `openrisk-api migrate` finished must take no traffic: its queries
/// may need what the missing migrations add.
#[tokio::test]
async fn readiness_fails_while_the_database_lacks_a_migration_this_build_knows() {
    let app = spawn_app().await;
    let readyz = async || app.client.get(format!("{}/readyz", app.url)).send().await.unwrap();
    let ready: Value = readyz().await.json().await.unwrap();
    let expected = ready["schema"]["expected"].as_i64().unwrap();
    assert_eq!(ready["schema"]["applied"].as_i64(), Some(expected), "{ready}");

    let session = app.db.connect().await;
    session.execute("DELETE FROM schema_migrations WHERE version = $1", &[&expected]).await.unwrap();
    let behind = readyz().await;
    assert_eq!(behind.status(), StatusCode::SERVICE_UNAVAILABLE);
    let behind: Value = behind.json().await.unwrap();
    assert_eq!((behind["status"].as_str(), behind["postgres"].as_str()), (Some("unavailable"), Some("up")), "{behind}");
    assert_eq!(behind["schema"]["applied"].as_i64(), Some(expected - 1), "{behind}");
}

#[tokio::test]
async fn health_readiness_metrics_and_docs_are_served() {
    let app = spawn_app().await;
    let get = |path: &str| app.client.get(format!("{}{path}", app.url)).send();
    assert_eq!(get("/healthz").await.unwrap().json::<Value>().await.unwrap()["status"], "ok");
    let ready: Value = get("/readyz").await.unwrap().json().await.unwrap();
    assert_eq!((ready["status"].as_str(), ready["redis"].as_str()), (Some("ready"), Some("up")));
    // Both serve the published document, the one `openrisk-api openapi` prints.
    let published = openrisk_api::app::openapi_json();
    let docs = get("/docs").await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains(&published), "/docs shows another document");
    let spec: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    assert_eq!(spec, serde_json::from_str::<Value>(&published).unwrap());

    let list = app.get("/api/v1/risks", &app.a.viewer).await;
    assert!(cache_status(&list).is_miss());
    let metrics = app.metrics().await;
    for name in [
        "openrisk_http_requests_total{method=\"GET\",route=\"/api/v1/risks\",status=\"200\"}",
        "openrisk_http_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/risks\",status=\"200\"}",
        "openrisk_cache_requests_total{result=\"miss\",route=\"/api/v1/risks\"}",
        "openrisk_cache_fills_total{outcome=\"stored\",route=\"/api/v1/risks\"}",
        "openrisk_redis_command_duration_seconds_count{operation=\"lookup\"}",
        "openrisk_db_query_duration_seconds_count{query=\"risk_list\"}",
        "openrisk_auth_token_cache_total{result=\"miss\"}",
        "openrisk_db_pool_max_connections",
    ] {
        assert!(common::metric_value(&metrics, name) >= 1.0, "{name} missing in\n{metrics}");
    }
    for name in [
        "openrisk_cache_degraded 0",
        "openrisk_db_pool_connections{state=\"idle\"}",
        "openrisk_cache_eviction_policy_ok",
        "openrisk_cache_redis_persistence_off",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    for path in ["/nope", "/api/v2/risks", "/api/v1/risks/00000000-0000-0000-0000-000000000000/nothing"] {
        let unknown = app.client.get(format!("{}{path}", app.url)).send().await.unwrap();
        assert_problem(unknown, StatusCode::NOT_FOUND).await;
    }
    let unmatched = "openrisk_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}";
    assert_eq!(common::metric_value(&app.metrics().await, unmatched), 3.0, "paths no route matches");
}

/// What a test's own subscriber writes, kept to read back.
#[derive(Clone, Default)]
struct LogLines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogLines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_access_log_line_names_its_route_and_tenant_once_whether_missed_or_hit() {
    // The test's runtime runs the app on this thread, so this subscriber sees its spans.
    let lines = LogLines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("openrisk_api=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let app = spawn_app().await;
    let risk = app.create_risk(&app.a.analyst, "Logged").await;
    let path = format!("/api/v1/risks/{}", risk["id"].as_str().unwrap());
    let served: Vec<CacheStatus> = [
        app.get(&path, &app.a.viewer).await,
        app.get(&path, &app.a.viewer).await,
        app.get("/api/v1/risks", &app.a.viewer).await,
    ]
    .iter()
    .map(cache_status)
    .collect();
    assert_eq!(served, [CacheStatus::Stored, CacheStatus::Hit, CacheStatus::Stored]);

    let logged = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let reads: Vec<&str> =
        logged.lines().filter(|line| line.contains("method=GET") && line.contains(": request status=")).collect();
    assert_eq!(reads.len(), served.len(), "one access line per read:\n{logged}");
    let tenant = format!("tenant={}", app.a.id);
    for (line, expected_route) in reads.iter().zip(["/api/v1/risks/{id}", "/api/v1/risks/{id}", "/api/v1/risks"]) {
        assert_eq!(line.matches("route=").count(), 1, "{line}");
        assert!(line.contains(&format!("route=\"{expected_route}\"")), "{line}");
        assert_eq!(line.matches("tenant=").count(), 1, "{line}");
        assert!(line.contains(&tenant), "{line}");
    }
}

#[tokio::test]
async fn every_response_carries_the_clients_request_id_or_a_new_one() {
    let app = spawn_app().await;
    let get = |path: &str, id: Option<&str>| {
        let mut request = app.request(Method::GET, path, &app.a.viewer);
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };
    let request_id = |response: &reqwest::Response| {
        response.headers().get("x-request-id").map(|value| value.to_str().unwrap().to_owned())
    };

    // The client's id comes back, on API routes, errors and operational endpoints alike.
    for path in ["/api/v1/risks", "/api/v1/risks/00000000-0000-0000-0000-000000000000", "/healthz", "/nope"] {
        let response = get(path, Some("client-chosen.id_42")).await.unwrap();
        assert_eq!(request_id(&response).as_deref(), Some("client-chosen.id_42"), "{path}");
    }
    // Without one, or with one that is empty, too long or not plain visible ASCII, the API makes a
    // UUID v4, a different one per request.
    let mut generated = std::collections::HashSet::new();
    for id in [None, Some(""), Some("has space"), Some(&*"x".repeat(129))] {
        let response = get("/api/v1/risks", id).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let returned = request_id(&response).expect("x-request-id on the response");
        let parsed = uuid::Uuid::parse_str(&returned).unwrap_or_else(|_| panic!("{returned:?} is not a UUID"));
        assert_eq!(parsed.get_version_num(), 4);
        assert!(generated.insert(returned), "ids repeat");
    }
    let unauthenticated = app.client.get(format!("{}/api/v1/risks", app.url)).send().await.unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    assert!(request_id(&unauthenticated).is_some());

    // Routes are named as the spec names them (poem-openapi registers `:param0`).
    let metrics = app.metrics().await;
    let detail = "openrisk_http_requests_total{method=\"GET\",route=\"/api/v1/risks/{id}\",status=\"404\"}";
    assert_eq!(common::metric_value(&metrics, detail), 1.0, "{metrics}");
    assert!(!metrics.contains("param0"), "{metrics}");
}

/// A PATCH that changes nothing writes nothing: the resource keeps its `updated_at` and its entity
/// tag, so no other client's `If-Match` goes stale and no cached answer is invalidated.
#[tokio::test]
async fn a_patch_that_changes_nothing_keeps_the_resource_its_updated_at_and_its_entity_tag() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let paths = app.create_risk_mitigation_and_asset("Unchanged").await;
    let subaction_path = app.create_subaction(token, &paths.mitigation, "S").await;
    // Numbers in another notation than the one Postgres prints them in once stored (`15.0`, `0`,
    // `0.00001`) are the same values.
    let custom_fields: Value = serde_json::from_str(r#"{"x": 1.50e1, "y": [-0, 1e-5, {"z": 120e-1}]}"#).unwrap();
    let stored = app.send_json(Method::PATCH, &paths.risk, token, json!({"custom_fields": custom_fields})).await;
    assert_eq!(stored.status(), StatusCode::OK);

    // (what is patched, what shows it, the values it already has)
    for (path, shown_by, same_values) in [
        (&paths.risk, &paths.risk, json!({"title": "Unchanged", "impact": 3, "custom_fields": custom_fields})),
        (&paths.mitigation, &paths.mitigation, json!({"title": "M", "due_date": null})),
        (&subaction_path, &paths.mitigation, json!({"title": "S", "completed": false})),
        (&paths.asset, &paths.asset, json!({"name": "Unchanged", "criticality": "LOW"})),
    ] {
        let (tag, before) = (app.etag(shown_by).await, app.get_json(shown_by, token).await);
        for patch in [json!({}), same_values] {
            let response = app.send_json(Method::PATCH, path, token, patch).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
        }
        assert_eq!(app.get_json(shown_by, token).await, before, "{path}: updated_at and every field as they were");
        assert_eq!(app.etag(shown_by).await, tag, "{path}: the entity tag as it was");
    }
}

/// `updated_at` moves whenever a row's content changes, whoever changes it (a PATCH, a trigger
/// re-scoring a risk for its asset's new criticality, a program writing by SQL), stamped by the
/// database's clock, the one `created_at` takes; an UPDATE that changes nothing keeps it, and one
/// that writes another `updated_at` itself keeps what it writes.
#[tokio::test]
async fn updated_at_moves_with_every_change_of_a_row_whoever_makes_it() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let paths = app.create_risk_mitigation_and_asset("Stamped").await;
    app.create_subaction(token, &paths.mitigation, "S").await;
    let link = format!("{}/assets/{}", paths.risk, common::id_of(&paths.asset));
    assert_eq!(app.request(Method::PUT, &link, token).send().await.unwrap().status(), StatusCode::NO_CONTENT);

    let updated_at = async || {
        let stamp = app.get_json(&paths.risk, token).await["updated_at"].as_str().unwrap().to_owned();
        chrono::DateTime::parse_from_rfc3339(&stamp).unwrap()
    };
    let before = updated_at().await;
    let criticality = app.send_json(Method::PATCH, &paths.asset, token, json!({"criticality": "HIGH"})).await;
    assert_eq!(criticality.status(), StatusCode::OK);
    let rescored = updated_at().await;
    assert!(rescored > before, "re-scored by its asset's new criticality");
    let renamed = app.send_json(Method::PATCH, &paths.risk, token, json!({"title": "Renamed"})).await;
    assert_eq!(renamed.status(), StatusCode::OK);
    let patched = updated_at().await;
    assert!(patched > rescored, "changed by a PATCH");
    // 15.0 over 15: equal as jsonb, but the body (and its entity tag) changes, so it is a change.
    let set_x = async |x: &str| {
        let fields: Value = serde_json::from_str(&format!(r#"{{"custom_fields": {{"x": {x}}}}}"#)).unwrap();
        assert_eq!(app.send_json(Method::PATCH, &paths.risk, token, fields).await.status(), StatusCode::OK);
        (app.etag(&paths.risk).await, updated_at().await)
    };
    let (_, fifteen) = set_x("15").await;
    assert!(fifteen > patched);
    let (tag, renotated) = set_x("15.0").await;
    assert!(renotated > fifteen, "a number written another way is a change");
    assert_eq!(set_x("15.0").await, (tag, renotated), "the same again changes nothing");

    for (table, text) in
        [("risks", "title"), ("assets", "name"), ("mitigations", "title"), ("mitigation_subactions", "title")]
    {
        let moved = format!("SELECT count(*) FROM {table} WHERE updated_at > created_at");
        app.sql(&format!("UPDATE {table} SET updated_at = created_at")).await;
        assert_eq!(app.count(&moved).await, 0, "{table}: an UPDATE of updated_at alone keeps it");
        app.sql(&format!("UPDATE {table} SET {text} = {text}")).await;
        assert_eq!(app.count(&moved).await, 0, "{table}: an UPDATE that changes nothing keeps it");
        let written = format!("UPDATE {table} SET {text} = {text} || '!', updated_at = created_at - interval '1 s'");
        app.sql(&written).await;
        assert_eq!(app.count(&moved).await, 0, "{table}: an UPDATE that writes updated_at keeps what it writes");
        app.sql(&format!("UPDATE {table} SET {text} = {text} || ' by SQL'")).await;
        assert_eq!(app.count(&moved).await, 1, "{table}: a change by SQL moves it");
    }
}
