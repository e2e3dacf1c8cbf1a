//! The hit path answers hits of plain cacheable GETs before the router. It must look up exactly
//! the entry the route's handler fills (or a hit would serve another request's answer), send
//! exactly what the handler sends, and hand every other request to the router with its lookup
//! done once.

mod common;

use std::sync::{Arc, Mutex};

use common::{cache_status, spawn_app, spawn_app_with};
use futures::FutureExt;
use openrisk_api::AppOptions;
use openrisk_api::cache::MissStep;
use openrisk_api::hit_path::answer_hits_first;
use openrisk_api::routes::cacheable::PlainRead;
use openrisk_shared::CacheStatus;
use openrisk_test_support::RedisNamespace;
use poem::endpoint::make_sync;
use poem::http::StatusCode as PoemStatus;
use poem::{Request, Response};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// The entry keys the handlers filled, in order.
type Filled = Arc<Mutex<Vec<String>>>;

/// A risk detail's path with its id in upper case: the same entry, but not a plain read, so
/// the router (and the handler) answers it.
fn with_upper_case_id(path: &str) -> String {
    let (collection, id) = path.rsplit_once('/').expect("a detail path");
    format!("{collection}/{}", id.to_uppercase())
}

#[tokio::test]
async fn the_hit_path_looks_up_the_entry_the_handler_fills_for_every_plain_read() {
    let filled = Filled::default();
    let hook_filled = filled.clone();
    let options = AppOptions {
        miss_hook: Some(Arc::new(move |step, _route, key: &str| {
            if step == MissStep::Fill {
                hook_filled.lock().unwrap().push(key.to_owned());
            }
            async {}.boxed()
        })),
        ..AppOptions::default()
    };
    let app = spawn_app_with(RedisNamespace::new(), |_| {}, options).await;
    let token = &app.a.analyst;
    let risk = app.create_risk(token, "Flooding").await["id"].as_str().unwrap().to_owned();
    let mitigation = app
        .send_json(Method::POST, &format!("/api/v1/risks/{risk}/mitigations"), token, json!({"title": "Pumps"}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let asset = app.create_asset(token, "Basement", "HIGH").await["id"].as_str().unwrap().to_owned();

    let urls = [
        format!("/api/v1/risks/{risk}"),
        format!("/api/v1/risks/{risk}/mitigations/{mitigation}"),
        format!("/api/v1/assets/{asset}"),
        "/api/v1/stats".to_owned(),
        "/api/v1/stats/risk-matrix".to_owned(),
        "/api/v1/risks".to_owned(),
        "/api/v1/risks?page=1&limit=10".to_owned(),
        "/api/v1/risks?status=ACTIVE&sort_by=score&sort_dir=asc&page=2&limit=50".to_owned(),
        "/api/v1/risks?severity=HIGH&min_score=7.123&max_score=19.999&tag=flood&owner=ops".to_owned(),
    ];
    for url in &urls {
        let (path, query) = url.split_once('?').map_or((url.as_str(), None), |(path, query)| (path, Some(query)));
        let plain = PlainRead::of(path, query).unwrap_or_else(|| panic!("{url} is a plain read"));
        let (expected, _) = app.app.state.cache.key_and_tags(&plain.read(app.a.id));

        let first = app.get(url, token).await;
        assert_eq!(first.status(), StatusCode::OK, "{url}");
        assert_eq!(cache_status(&first), CacheStatus::Stored, "{url}");
        assert_eq!(filled.lock().unwrap().pop().as_deref(), Some(expected.as_str()), "{url}: another entry");
        let second = app.get(url, token).await;
        assert_eq!(cache_status(&second), CacheStatus::Hit, "{url}");
    }
    // One lookup per request: the miss's lookup was handed to the handler, not repeated.
    let metrics = app.metrics().await;
    let count = |result: &str| -> f64 {
        metrics
            .lines()
            .filter(|line| line.starts_with("openrisk_cache_requests_total{") && line.contains(result))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(count("result=\"miss\""), urls.len() as f64);
    assert_eq!(count("result=\"hit\""), urls.len() as f64);
}

#[tokio::test]
async fn a_hit_is_answered_without_the_router_and_a_miss_is_handed_to_it() {
    let app = spawn_app().await;
    let token = &app.a.viewer;
    let path = app.create_risk_path(&app.a.analyst, "Fire").await;
    app.get(&path, token).await;

    // An endpoint that stands for the router and answers 418: it is reached only on a miss.
    let router = Arc::new(make_sync(|_| Response::builder().status(PoemStatus::IM_A_TEAPOT).finish()));
    let request = |path: &str| {
        let mut request =
            Request::builder().uri(path.parse().unwrap()).header("authorization", format!("Bearer {token}"));
        request = request.header("accept", "application/json");
        let mut request = request.finish();
        request.set_data(app.app.state.clone());
        request
    };
    let hit = answer_hits_first(router.clone(), request(&path)).await.unwrap();
    assert_eq!(hit.status(), PoemStatus::OK);
    assert_eq!(hit.headers()["cache-status"], CacheStatus::Hit.header_value());
    let other = format!("/api/v1/risks/{}", uuid::Uuid::new_v4());
    assert_eq!(answer_hits_first(router.clone(), request(&other)).await.unwrap().status(), PoemStatus::IM_A_TEAPOT);
    let unknown = request(&with_upper_case_id(&path));
    assert_eq!(answer_hits_first(router, unknown).await.unwrap().status(), PoemStatus::IM_A_TEAPOT, "not plain");
}

#[tokio::test]
async fn a_hit_before_the_router_sends_what_the_handler_sends() {
    let app = spawn_app().await;
    let token = &app.a.viewer;
    let plain = app.create_risk_path(&app.a.analyst, "Fire").await;
    // The same entry through the router: an upper-case id is not plain, the handler reads it.
    let routed = with_upper_case_id(&plain);
    app.get(&plain, token).await;
    let (a, b) = (app.get(&plain, token).await, app.get(&routed, token).await);
    assert_eq!((cache_status(&a), cache_status(&b)), (CacheStatus::Hit, CacheStatus::Hit));
    for header in ["etag", "cache-status", "cache-control", "content-type", "x-content-type-options"] {
        assert_eq!(a.headers().get(header), b.headers().get(header), "{header}");
    }
    assert!(a.headers().contains_key("x-request-id"));
    let etag = a.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(a.bytes().await.unwrap(), b.bytes().await.unwrap());

    for path in [&plain, &routed] {
        let revalidated = app.request(Method::GET, path, token).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(revalidated.headers()["etag"].to_str().unwrap(), etag);
    }
    let unauthorized = app.get(&plain, "ort_0000000000000000000000000000000000000000000000000000000000000000").await;
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED, "an unknown token is the router's to refuse");
    let other_tenant = app.get(&plain, &app.b.viewer).await;
    assert_eq!(other_tenant.status(), StatusCode::NOT_FOUND, "another tenant's key, never this entry");
}
