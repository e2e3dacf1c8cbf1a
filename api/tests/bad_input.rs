//! Bad input gets a clear 4xx problem+json, never a 500 and never a partial write.

mod common;

use std::time::Duration;

use common::{Paths, assert_problem, spawn_app, spawn_app_with};
use openrisk_api::AppOptions;
use openrisk_test_support::RedisNamespace;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn malformed_mistyped_unknown_and_out_of_range_bodies_are_400() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let path = app.create_risk_path(token, "Existing").await;
    let risks_before = app.count("SELECT count(*) FROM risks").await;

    let raw = |method: Method, path: &str, body: &'static str| {
        app.request(method, path, token).header("content-type", "application/json").body(body).send()
    };
    for body in ["{", "not json", "", "[]", "null"] {
        assert_problem(raw(Method::POST, "/api/v1/risks", body).await.unwrap(), StatusCode::BAD_REQUEST).await;
    }
    let invalid = [
        json!({"title": "x", "impact": "high", "probability": 2}),
        json!({"title": "x", "impact": 3}),
        json!({"title": "x", "impact": 6, "probability": 2}),
        json!({"title": "x", "impact": 0, "probability": 2}),
        json!({"title": "", "impact": 3, "probability": 2}),
        json!({"title": "x".repeat(256), "impact": 3, "probability": 2}),
        json!({"title": "x", "impact": 3, "probability": 2, "unknown": true}),
        json!({"title": "x", "impact": 3, "probability": 2, "status": "OPEN"}),
        json!({"title": "x", "impact": 3, "probability": 2, "tags": ["a", "a"]}),
        json!({"title": "x", "impact": 3, "probability": 2, "tags": (0..51).map(|i| i.to_string()).collect::<Vec<_>>()}),
        json!({"title": "x", "impact": 3, "probability": 2, "tags": ["a", ""]}),
        json!({"title": "x", "impact": 3, "probability": 2, "tags": ["x".repeat(65)]}),
        json!({"title": "x", "impact": 3, "probability": 2, "frameworks": [""]}),
        json!({"title": "x", "impact": 3, "probability": 2, "custom_fields": [1, 2]}),
        json!({"title": "x", "impact": 3, "probability": 2, "score": 99}),
    ];
    for body in invalid {
        let response = app.send_json(Method::POST, "/api/v1/risks", token, body.clone()).await;
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
    let no_type = app.request(Method::POST, "/api/v1/risks", token).body("{\"title\":\"x\"}").send().await.unwrap();
    assert!(no_type.status().is_client_error());

    // A PATCH with one good and one bad field changes nothing.
    for body in [
        json!({"title": "Changed", "impact": 9}),
        json!({"title": "Changed", "bogus": 1}),
        json!({"title": "Changed", "status": 5}),
        json!({"title": "Changed", "tags": [""]}),
        json!({"title": "Changed", "frameworks": ["x".repeat(65)]}),
    ] {
        assert_problem(app.send_json(Method::PATCH, &path, token, body).await, StatusCode::BAD_REQUEST).await;
    }
    assert_eq!(app.get_json(&path, token).await["title"], "Existing");
    // `null` on a field that cannot be empty is refused, not read as "leave it".
    for body in [json!({"owner": null}), json!({"title": "Changed", "tags": null}), json!({"custom_fields": null})] {
        let refused = app.send_json(Method::PATCH, &path, token, body).await;
        let problem = assert_problem(refused, StatusCode::BAD_REQUEST).await;
        assert!(problem["detail"].as_str().unwrap().contains("null cannot clear this field"), "{problem}");
    }
    let cleared = app.send_json(Method::PATCH, &path, token, json!({"external_id": null})).await;
    assert_eq!(cleared.status(), StatusCode::OK, "a nullable field is cleared by null");
    let longest = json!({"tags": ["x".repeat(64)], "frameworks": ["é".repeat(64)]});
    assert_eq!(app.send_json(Method::PATCH, &path, token, longest).await.status(), StatusCode::OK, "64 characters fit");

    for body in [
        json!({"title": "m", "progress": 101}),
        json!({"title": "m", "cost": 4}),
        json!({"title": "m", "due_date": "tomorrow"}),
    ] {
        let response = app.send_json(Method::POST, &format!("{path}/mitigations"), token, body).await;
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
    assert_problem(
        app.send_json(
            Method::POST,
            "/api/v1/assets",
            token,
            json!({"name": "a", "asset_type": "x", "criticality": "HUGE"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(app.count("SELECT count(*) FROM risks").await, risks_before, "no partial write");
    assert_eq!(app.count("SELECT count(*) FROM mitigations").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM assets").await, 0);
}

/// A string field takes a JSON string and nothing else: a number or a boolean is the wrong type
/// (poem-openapi's own `String` kept its text: `"title": 123` stored "123"), on every create
/// and change, and nothing is written.
#[tokio::test]
async fn numbers_and_booleans_sent_for_string_fields_are_400_naming_the_type() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let Paths { risk, asset, .. } = app.create_risk_mitigation_and_asset("Existing").await;
    let mitigations = format!("{risk}/mitigations");
    let risk_before = app.get_json(&risk, token).await;
    let cases = [
        (Method::POST, "/api/v1/risks", json!({"title": 123, "impact": 1, "probability": 1}), token),
        (Method::POST, "/api/v1/risks", json!({"title": "x", "impact": 1, "probability": 1, "tags": [1, true]}), token),
        (Method::POST, "/api/v1/risks", json!({"title": "x", "impact": 1, "probability": 1, "owner": 5}), token),
        (Method::PATCH, &risk, json!({"owner": 42}), token),
        (Method::PATCH, &risk, json!({"external_id": false}), token),
        (Method::POST, "/api/v1/assets", json!({"name": 7, "asset_type": true}), token),
        (Method::PATCH, &asset, json!({"asset_type": 1}), token),
        (Method::POST, &mitigations, json!({"title": 1}), token),
        (Method::POST, "/api/v1/tokens", json!({"name": 99, "role": "viewer"}), &app.a.admin),
    ];
    for (method, path, body, caller) in cases {
        let refused = app.send_json(method, path, caller, body.clone()).await;
        let problem = assert_problem(refused, StatusCode::BAD_REQUEST).await;
        assert!(problem["detail"].as_str().unwrap().contains("string"), "{body}: {problem}");
    }
    assert_eq!(app.get_json(&risk, token).await, risk_before, "nothing written");
    let rows =
        "SELECT (SELECT count(*) FROM risks) + (SELECT count(*) FROM mitigations) + (SELECT count(*) FROM assets)";
    assert_eq!(app.count(rows).await, 3, "nothing written");
}

#[tokio::test]
async fn bad_parameters_unknown_ids_and_conflicts_are_clear_4xx() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    for query in [
        "limit=0",
        "limit=201",
        "limit=100000000",
        "page=0",
        "page=-1",
        "limit=ten",
        "status=OPEN",
        "sort_by=owner",
        "min_score=-1",
    ] {
        assert_problem(app.get(&format!("/api/v1/risks?{query}"), token).await, StatusCode::BAD_REQUEST).await;
    }
    let long_type = "t".repeat(65);
    for (path, says) in [
        ("/api/v1/assets?limit=201", "`201` is not a whole number from 1 to 200"),
        ("/api/v1/risks?min_score=-1", "`-1` is not a number from 0 to 1000"),
        ("/api/v1/risks?max_score=inf", "`inf` is not a number from 0 to 1000"),
        ("/api/v1/risks?tag=", "0 characters, where 1 to 64 are allowed"),
        (&format!("/api/v1/assets?asset_type={long_type}"), "65 characters, where 1 to 64 are allowed"),
    ] {
        let body = assert_problem(app.get(path, token).await, StatusCode::BAD_REQUEST).await;
        assert!(body["detail"].as_str().unwrap().contains(says), "{path}: {body}");
    }
    // A parameter given twice would otherwise be read as its first value, silently.
    for (path, named) in [
        ("/api/v1/risks?status=DRAFT&status=ACTIVE", "`status` is given more than once"),
        ("/api/v1/assets?page=1&pag%65=2", "`page` is given more than once"),
        ("/api/v1/stats/trends?days=7&days=7", "`days` is given more than once"),
    ] {
        let body = assert_problem(app.get(path, token).await, StatusCode::BAD_REQUEST).await;
        assert!(body["detail"].as_str().unwrap().contains(named), "{path}: {body}");
    }
    assert_eq!(app.get("/api/v1/risks?status=DRAFT&utm=1&utm=2", token).await.status(), StatusCode::OK);
    // Only what the operation documents: elsewhere a repeat is ignored, as any unknown parameter.
    let detail = format!("/api/v1/risks/{}?page=1&page=2", uuid::Uuid::new_v4());
    assert_eq!(app.get(&detail, token).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.get("/api/v1/nothing?limit=1&limit=2", token).await.status(), StatusCode::NOT_FOUND);
    assert_problem(app.get("/api/v1/risks/not-a-uuid", token).await, StatusCode::BAD_REQUEST).await;
    let unknown = uuid::Uuid::new_v4();
    let body = assert_problem(app.get(&format!("/api/v1/risks/{unknown}"), token).await, StatusCode::NOT_FOUND).await;
    assert!(body["detail"].as_str().unwrap().contains(&unknown.to_string()));
    assert_problem(
        app.send_json(Method::PATCH, &format!("/api/v1/risks/{unknown}"), token, json!({})).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_problem(app.get(&format!("/api/v1/assets/{unknown}"), token).await, StatusCode::NOT_FOUND).await;
    assert_problem(
        app.request(Method::DELETE, &format!("/api/v1/assets/{unknown}"), token).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;

    // A duplicate external id (unique per tenant and source) is a conflict, and writes nothing.
    let body = json!({"title": "x", "impact": 1, "probability": 1, "external_id": "EXT-7"});
    assert_eq!(app.send_json(Method::POST, "/api/v1/risks", token, body.clone()).await.status(), StatusCode::CREATED);
    let problem =
        assert_problem(app.send_json(Method::POST, "/api/v1/risks", token, body).await, StatusCode::CONFLICT).await;
    assert!(problem["detail"].as_str().unwrap().contains("external_id"), "the conflict names its field: {problem}");
    assert_eq!(app.count("SELECT count(*) FROM risks").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM cache_outbox WHERE table_name = 'risks'").await,
        1,
        "the failed insert left no event"
    );
}

#[tokio::test]
async fn huge_bodies_are_413() {
    let app = spawn_app().await;
    let huge = json!({"title": "x", "impact": 1, "probability": 1, "description": "d".repeat(200_000)});
    assert_problem(
        app.send_json(Method::POST, "/api/v1/risks", &app.a.analyst, huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    // Without a Content-Length (chunked), the limit still holds.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..100).map(|_| Ok(vec![b' '; 4096])).collect();
    let streamed = app
        .request(Method::POST, "/api/v1/risks", &app.a.analyst)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_problem(streamed, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(app.count("SELECT count(*) FROM risks").await, 0);
}

#[tokio::test]
async fn missing_bad_and_revoked_tokens_are_401_and_weak_roles_403() {
    let app =
        spawn_app_with(RedisNamespace::new(), |settings| settings.cache.token_cache_secs = 1, AppOptions::default())
            .await;
    let no_token = app.client.get(format!("{}/api/v1/risks", app.url)).send().await.unwrap();
    let body = assert_problem(no_token, StatusCode::UNAUTHORIZED).await;
    assert!(!body["detail"].as_str().unwrap().is_empty());
    for token in ["nope", "ort_0000000000000000000000000000000000000000000000000000000000000000", &"x".repeat(5000)] {
        assert_problem(app.get("/api/v1/risks", token).await, StatusCode::UNAUTHORIZED).await;
    }
    let basic =
        app.client.get(format!("{}/api/v1/risks", app.url)).basic_auth("user", Some("pw")).send().await.unwrap();
    assert_problem(basic, StatusCode::UNAUTHORIZED).await;

    // Roles: viewers read, analysts write, admins manage tokens.
    let create = json!({"title": "x", "impact": 1, "probability": 1});
    assert_problem(
        app.send_json(Method::POST, "/api/v1/risks", &app.a.viewer, create.clone()).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_problem(app.get("/api/v1/tokens", &app.a.analyst).await, StatusCode::FORBIDDEN).await;
    assert_eq!(app.count("SELECT count(*) FROM risks").await, 0);
    assert_eq!(app.send_json(Method::POST, "/api/v1/risks", &app.a.admin, create).await.status(), StatusCode::CREATED);

    // Revoked outside the API (as `openrisk-api token revoke` does): refused once announced, and
    // within the cache TTL at the latest.
    assert_eq!(app.get("/api/v1/risks", &app.a.viewer).await.status(), StatusCode::OK);
    let hash = openrisk_api::auth::hash_token(&app.a.viewer).to_vec();
    app.db
        .connect()
        .await
        .execute("UPDATE api_tokens SET revoked_at = now() WHERE token_hash = $1", &[&hash])
        .await
        .unwrap();
    until_refused(
        &app.client,
        &app.url,
        "/api/v1/risks",
        &app.a.viewer,
        StatusCode::UNAUTHORIZED,
        Duration::from_secs(15),
    )
    .await;
}

#[tokio::test]
async fn token_verification_is_cached_and_stamps_last_used_only_on_refresh() {
    let app = spawn_app().await;
    for _ in 0..5 {
        assert_eq!(app.get("/api/v1/risks", &app.a.viewer).await.status(), StatusCode::OK);
    }
    assert_eq!(app.metric("openrisk_auth_token_cache_total{result=\"miss\"}").await, 1.0);
    assert_eq!(app.metric("openrisk_auth_token_cache_total{result=\"hit\"}").await, 4.0);
    // Stamped in the background, off the request path.
    let stamped = "SELECT count(*) FROM api_tokens WHERE last_used_at IS NOT NULL";
    for _ in 0..200 {
        if app.count(stamped).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.count(stamped).await, 1);
}

#[tokio::test]
async fn text_with_a_nul_character_is_refused_not_a_server_error() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let before = app.count("SELECT count(*) FROM risks").await;
    // A text field names itself, as any other field the body gets wrong.
    let bodies = [
        ("title", json!({"title": "a\u{0}b", "impact": 1, "probability": 1})),
        ("owner", json!({"title": "ok", "impact": 1, "probability": 1, "owner": "a\u{0}b"})),
        ("tags", json!({"title": "ok", "impact": 1, "probability": 1, "tags": ["a\u{0}b"]})),
    ];
    for (field, body) in bodies {
        let response = app.send_json(Method::POST, "/api/v1/risks", token, body.clone()).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("`{field}`")) && detail.contains("NUL"), "{body}: {problem}");
    }
    let asset = json!({"name": "a\u{0}b", "asset_type": "server", "criticality": "LOW"});
    let problem =
        assert_problem(app.send_json(Method::POST, "/api/v1/assets", token, asset).await, StatusCode::BAD_REQUEST)
            .await;
    assert!(problem["detail"].as_str().unwrap().contains("`name`"), "{problem}");
    // custom_fields, a JSON object of anything, is checked as a whole (its other limits are too).
    for fields in [json!({"k": "a\u{0}b"}), json!({"a\u{0}b": 1}), json!({"k": {"a\u{0}b": [1]}})] {
        let body = json!({"title": "ok", "impact": 1, "probability": 1, "custom_fields": fields});
        let response = app.send_json(Method::POST, "/api/v1/risks", token, body.clone()).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("custom_fields") && detail.contains("NUL"), "{body}: {problem}");
    }
    // Refused as the query is read, before any of it reaches Postgres.
    for path in ["/api/v1/risks?q=a%00b", "/api/v1/assets?q=a%00b", "/api/v1/risks?owner=a%00b"] {
        let body = assert_problem(app.get(path, token).await, StatusCode::BAD_REQUEST).await;
        assert!(body["detail"].as_str().unwrap().contains("must not contain the NUL character"), "{path}: {body}");
    }
    assert_eq!(app.count("SELECT count(*) FROM risks").await, before, "nothing was written");
}

#[tokio::test]
async fn custom_field_numbers_that_could_not_be_read_back_are_refused() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let path = app.create_risk_path(token, "fields").await;
    let body = json!({"custom_fields": {"k": [1.7976931348623155e308]}});
    assert_problem(app.send_json(Method::PATCH, &path, token, body).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fine = json!({"custom_fields": {"k": [1.5e12, -3, {"nested": 2.5}]}});
    assert_eq!(app.send_json(Method::PATCH, &path, token, fine).await.status(), StatusCode::OK);
    assert_eq!(app.get(&path, token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn custom_field_numbers_that_would_swell_once_stored_are_refused() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let path = app.create_risk_path(token, "fields").await;
    let patch = |custom_fields: String| {
        app.request(Method::PATCH, &path, token)
            .header("content-type", "application/json")
            .body(format!(r#"{{"custom_fields": {{"k": {custom_fields}}}}}"#))
            .send()
    };
    // Each prints as 16,387 characters: 2,000 of them would make one risk 33 MB.
    let tiny = format!("[{}]", vec!["1e-16383"; 2_000].join(","));
    assert_problem(patch(tiny).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    let huge = format!("[{}]", vec!["1e300"; 300].join(","));
    assert_problem(patch(huge).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    let edges = r#"[1e300, -1e300, 1e-300, 1.50e1]"#.to_owned();
    assert_eq!(patch(edges).await.unwrap().status(), StatusCode::OK);
    let read = app.get_json(&path, token).await;
    let values = read["custom_fields"]["k"].as_array().unwrap().iter().map(|v| v.to_string().len()).collect::<Vec<_>>();
    assert_eq!(values, [301, 302, 302, 4], "stored without exponents: {values:?}");
}

/// GETs `path` from `url` with `token` until the answer is `refusal` (200 until then); panics
/// when that takes longer than `bound`.
async fn until_refused(
    client: &reqwest::Client,
    url: &str,
    path: &str,
    token: &str,
    refusal: StatusCode,
    bound: Duration,
) {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let status = client.get(format!("{url}{path}")).bearer_auth(token).send().await.unwrap().status();
        if status == refusal {
            return;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(tokio::time::Instant::now() < deadline, "{path} is still served after {bound:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_revocation_or_another_role_committed_anywhere_takes_effect_at_once_in_every_api_process() {
    let trust_a_minute = |settings: &mut openrisk_shared::Settings| settings.cache.token_cache_secs = 60;
    let app = spawn_app_with(RedisNamespace::new(), trust_a_minute, AppOptions::default()).await;
    let other = openrisk_api::Application::spawn(app.app.state.settings.clone(), AppOptions::default()).await.unwrap();
    let listening = async {
        while !other.state.render_metrics().contains("openrisk_auth_revocations_heard 1") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), listening).await.expect("the other process listens");
    // The other process has verified (and so trusts for a minute) every token, the admin's as
    // an admin.
    let read = |path: &'static str, token: &String| app.client.get(format!("{}{path}", other.url())).bearer_auth(token);
    for token in [&app.a.viewer, &app.a.analyst] {
        assert_eq!(read("/api/v1/risks", token).send().await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(read("/api/v1/tokens", &app.a.admin).send().await.unwrap().status(), StatusCode::OK);

    // An announcement of a token that did not change (anyone connected may NOTIFY) costs a
    // lookup and locks nobody out; then the viewer's token is revoked by hand, as `openrisk-api
    // token revoke` does.
    let other_url = other.url();
    let refused_by_other = async |path: &str, token: &str, refusal: StatusCode| {
        until_refused(&app.client, &other_url, path, token, refusal, Duration::from_secs(5)).await
    };
    let sql = app.db.connect().await;
    let spoofed = hex::encode(openrisk_api::auth::hash_token(&app.a.analyst));
    sql.execute("SELECT pg_notify(api_token_channel(), $1)", &[&spoofed]).await.unwrap();
    let hash = openrisk_api::auth::hash_token(&app.a.viewer).to_vec();
    sql.execute("UPDATE api_tokens SET revoked_at = now() WHERE token_hash = $1", &[&hash]).await.unwrap();
    refused_by_other("/api/v1/risks", &app.a.viewer, StatusCode::UNAUTHORIZED).await;
    let analyst_reads = read("/api/v1/risks", &app.a.analyst).send().await.unwrap();
    assert_eq!(analyst_reads.status(), StatusCode::OK, "announced before the viewer's revocation, and still valid");
    // Revoked through the first process's API.
    let hash = openrisk_api::auth::hash_token(&app.a.analyst).to_vec();
    let id: uuid::Uuid =
        sql.query_one("SELECT id FROM api_tokens WHERE token_hash = $1", &[&hash]).await.unwrap().get(0);
    let revoked = app.request(Method::DELETE, &format!("/api/v1/tokens/{id}"), &app.a.admin).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    refused_by_other("/api/v1/risks", &app.a.analyst, StatusCode::UNAUTHORIZED).await;
    // The admin demoted by hand: still a valid token, no longer an admin's.
    let hash = openrisk_api::auth::hash_token(&app.a.admin).to_vec();
    sql.execute("UPDATE api_tokens SET role = 'viewer' WHERE token_hash = $1", &[&hash]).await.unwrap();
    refused_by_other("/api/v1/tokens", &app.a.admin, StatusCode::FORBIDDEN).await;
    assert_eq!(read("/api/v1/risks", &app.a.admin).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_body_that_does_not_fit_its_type_is_told_which_field_to_fix() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let path = app.create_risk_path(token, "Existing").await;
    let cases = [
        (Method::POST, "/api/v1/risks", json!({"title": "t", "impact": 3}), "field `probability` is required"),
        (
            Method::POST,
            "/api/v1/risks",
            json!({"title": "t", "impact": "3", "probability": 4}),
            "field `impact` must be an integer, not a string",
        ),
        (
            Method::POST,
            "/api/v1/risks",
            json!({"title": null, "impact": 3, "probability": 4}),
            "field `title` must not be null",
        ),
        (
            Method::POST,
            "/api/v1/risks",
            json!({"title": "t", "impact": 3, "probability": 4, "status": "BOGUS"}),
            "field `status` must be one of",
        ),
        (
            Method::PATCH,
            path.as_str(),
            json!({"probability": "2"}),
            "field `probability` must be an integer, not a string",
        ),
        (Method::PATCH, path.as_str(), json!({"tags": "one"}), "field `tags` must be an array, not a string"),
        // poem reports no value for these: the only field that does not fit is named.
        (
            Method::POST,
            "/api/v1/risks",
            json!({"title": "t", "impact": 3.5, "probability": 2, "owner": null}),
            "field `impact` must be an integer, not a number",
        ),
        (
            Method::POST,
            "/api/v1/risks",
            json!({"title": "t", "impact": 70000, "probability": 2}),
            "field `impact` must be an integer from 1 to 5",
        ),
        (Method::PATCH, path.as_str(), json!({"impact": 2.5}), "field `impact` must be an integer, not a number"),
        (Method::PATCH, path.as_str(), json!({"title": null}), "field `title` must not be null"),
        (Method::PATCH, path.as_str(), json!({"tags": null, "external_id": null}), "field `tags` must not be null"),
    ];
    for (method, path, body, named) in cases {
        let problem =
            assert_problem(app.send_json(method, path, token, body.clone()).await, StatusCode::BAD_REQUEST).await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.starts_with(named), "{body}: {detail}");
    }
    assert_eq!(app.count("SELECT count(*) FROM risks").await, 1, "nothing was written");
    // A date poem could not read is reported without its value: no later field is blamed for it.
    let body = json!({"title": "t", "due_date": "2027-02-30", "mitigation_time_days": "10"});
    let refused = app.send_json(Method::POST, &format!("{path}/mitigations"), token, body).await;
    let problem = assert_problem(refused, StatusCode::BAD_REQUEST).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(!detail.contains("mitigation_time_days") && detail.contains("2027-02-30"), "{detail}");
    // Parameter types are named as the document names them too.
    let problem = assert_problem(app.get("/api/v1/stats/trends?days=abc", token).await, StatusCode::BAD_REQUEST).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("failed to parse \"integer\""), "{detail}");
}
