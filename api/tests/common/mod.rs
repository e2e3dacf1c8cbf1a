//! `spawn_app()`: the API in-process on 127.0.0.1:0 against its own database and Redis
//! namespace, with two tenants and tokens of every role.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use openrisk_shared::CacheStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use openrisk_api::auth::{Role, create_token};
use openrisk_api::cache::{MissHook, MissStep};
use openrisk_api::{AppOptions, Application};
use openrisk_shared::protocol;
use openrisk_shared::{Settings, Tag};
use openrisk_test_support::{PrivateRedisCluster, RedisNamespace, TestDatabase};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

/// One tenant and a token per role.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Uuid,
    pub viewer: String,
    pub analyst: String,
    pub admin: String,
}

/// The paths of a risk, one of its mitigations and an asset.
pub struct Paths {
    pub risk: String,
    pub mitigation: String,
    pub asset: String,
}

pub struct TestApp {
    pub app: Application,
    pub url: String,
    pub client: reqwest::Client,
    pub db: TestDatabase,
    pub redis: RedisNamespace,
    pub a: Tenant,
    pub b: Tenant,
}

/// Settings for a test: its own database and Redis prefix, port 0, short timeouts.
pub fn test_settings(db: &TestDatabase, redis: &RedisNamespace) -> Settings {
    let mut settings = openrisk_test_support::settings_for(db, redis);
    settings.pool.max_connections = Some(10);
    settings.pool.min_idle = Some(0);
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(RedisNamespace::new(), |_| {}, AppOptions::default()).await
}

/// Far above the 250 ms Redis timeout: a request slower than this hung on a Redis outage.
pub const HANG_BOUND: Duration = Duration::from_secs(5);

/// Spawns the app on `redis` (a server the test will take down) with a breaker that opens after
/// two failures and probes again after 300 ms, and caches one risk's detail for tenant A's
/// analyst. Returns the app and the detail's path.
pub async fn spawn_app_with_cached_risk(redis: RedisNamespace, title: &str) -> (TestApp, String) {
    let app = spawn_app_with(
        redis,
        |settings| {
            settings.cache.breaker_failure_threshold = 2;
            settings.cache.breaker_open_ms = 300;
        },
        AppOptions::default(),
    )
    .await;
    let path = app.create_risk_path(&app.a.analyst, title).await;
    app.assert_cached(&path, &app.a.analyst).await;
    (app, path)
}

/// Spawns the app on `cluster` with breakers that open after two failures and stay open for
/// `breaker_open_ms`, and waits for the cluster watch's first look: until then every tenant
/// shares one breaker instead of its master's.
pub async fn spawn_app_with_a_breaker_per_master(cluster: &PrivateRedisCluster, breaker_open_ms: u64) -> TestApp {
    let breakers = |settings: &mut Settings| {
        settings.cache.breaker_failure_threshold = 2;
        settings.cache.breaker_open_ms = breaker_open_ms;
    };
    let app = spawn_app_with(RedisNamespace::on(&cluster.url()), breakers, AppOptions::default()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.app.state.cluster.latest().is_none() {
        assert!(std::time::Instant::now() < deadline, "the cluster watch never looked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app
}

/// Spawns the app with a [`MissGate`] on every miss, adjusting the settings with `configure`.
pub async fn spawn_gated_app(configure: impl FnOnce(&mut Settings)) -> (TestApp, MissGate) {
    let gate = MissGate::default();
    let options = AppOptions { miss_hook: Some(gate.hook()), ..AppOptions::default() };
    (spawn_app_with(RedisNamespace::new(), configure, options).await, gate)
}

/// Spawns the app on `redis`, letting the test adjust settings and options.
pub async fn spawn_app_with(
    redis: RedisNamespace,
    configure: impl FnOnce(&mut Settings),
    options: AppOptions,
) -> TestApp {
    spawn_app_on(TestDatabase::create().await, redis, configure, options).await
}

/// Spawns the app on the database `db` (on a private server, say) and `redis`.
pub async fn spawn_app_on(
    db: TestDatabase,
    redis: RedisNamespace,
    configure: impl FnOnce(&mut Settings),
    options: AppOptions,
) -> TestApp {
    openrisk_shared::telemetry::init(&Default::default());
    let mut settings = test_settings(&db, &redis);
    configure(&mut settings);
    let app = Application::spawn(settings, options).await.expect("app starts");
    let a = create_tenant(&app, "tenant-a").await;
    let b = create_tenant(&app, "tenant-b").await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    TestApp { url: app.url(), app, client, db, redis, a, b }
}

/// A new tenant with a token of each role.
pub async fn create_tenant(app: &Application, slug: &str) -> Tenant {
    let conn = &app.state.db.conn;
    let client =
        openrisk_shared::db::connect(&app.state.settings.database_url, "tests", &Default::default()).await.unwrap();
    let row =
        client.query_one("INSERT INTO tenants (slug, name) VALUES ($1, $1) RETURNING id", &[&slug]).await.unwrap();
    let id: Uuid = row.get(0);
    let token = |role| async move { create_token(conn, id, role, "test").await.unwrap().1 };
    Tenant {
        id,
        viewer: token(Role::Viewer).await,
        analyst: token(Role::Analyst).await,
        admin: token(Role::Admin).await,
    }
}

impl TestApp {
    pub fn request(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.url)).bearer_auth(token)
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, token).send().await.unwrap()
    }

    /// GETs `path` and returns the body as JSON (whatever the status).
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        self.get(path, token).await.json().await.unwrap()
    }

    /// The `ETag` a viewer's GET of `path` answers with (asserting a 200).
    pub async fn etag(&self, path: &str) -> String {
        let response = self.get(path, &self.a.viewer).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.headers()["etag"].to_str().unwrap().to_owned()
    }

    /// Reads `path` twice and asserts that the second read is a cache hit.
    pub async fn assert_cached(&self, path: &str, token: &str) {
        self.get(path, token).await;
        assert_eq!(cache_status(&self.get(path, token).await), CacheStatus::Hit, "{path} is cached");
    }

    /// Links `asset` (its JSON) to the risk at `risk_path`; the answer is the test's to check.
    pub async fn link_asset(&self, token: &str, risk_path: &str, asset: &Value) -> Response {
        let path = format!("{risk_path}/assets/{}", asset["id"].as_str().unwrap());
        self.request(Method::PUT, &path, token).send().await.unwrap()
    }

    /// Creates a risk titled `title` and an asset named `asset_name` and links them; returns the
    /// risk's path and the asset's JSON.
    pub async fn create_linked_risk_and_asset(
        &self,
        token: &str,
        title: &str,
        asset_name: &str,
        criticality: &str,
    ) -> (String, Value) {
        let path = self.create_risk_path(token, title).await;
        let asset = self.create_asset(token, asset_name, criticality).await;
        assert_eq!(self.link_asset(token, &path, &asset).await.status(), StatusCode::NO_CONTENT);
        (path, asset)
    }

    pub async fn send_json(&self, method: Method, path: &str, token: &str, body: Value) -> Response {
        self.request(method, path, token).json(&body).send().await.unwrap()
    }

    /// Creates a risk as tenant A's analyst (or `token`) and returns its JSON.
    pub async fn create_risk(&self, token: &str, title: &str) -> Value {
        let response = self
            .send_json(Method::POST, "/api/v1/risks", token, json!({"title": title, "impact": 3, "probability": 4}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    /// Creates a risk as [`Self::create_risk`] does and returns its path, `/api/v1/risks/<id>`.
    pub async fn create_risk_path(&self, token: &str, title: &str) -> String {
        format!("/api/v1/risks/{}", self.create_risk(token, title).await["id"].as_str().unwrap())
    }

    /// A mitigation titled `title` of the risk at `risk_path` (`/api/v1/risks/<id>`).
    pub async fn create_mitigation(&self, token: &str, risk_path: &str, title: &str) -> Value {
        let response =
            self.send_json(Method::POST, &format!("{risk_path}/mitigations"), token, json!({"title": title})).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    /// Made by tenant A's analyst: a risk titled `name`, its mitigation "M" and an asset named
    /// `name` (LOW), as the paths of their `GET`s.
    pub async fn create_risk_mitigation_and_asset(&self, name: &str) -> Paths {
        let token = &self.a.analyst;
        let risk = self.create_risk_path(token, name).await;
        let mitigation = self.create_mitigation(token, &risk, "M").await;
        let mitigation = format!("{risk}/mitigations/{}", mitigation["id"].as_str().unwrap());
        let asset = format!("/api/v1/assets/{}", self.create_asset(token, name, "LOW").await["id"].as_str().unwrap());
        Paths { risk, mitigation, asset }
    }

    /// A sub-action titled `title` of the mitigation at `mitigation_path`, as the path of its
    /// `PATCH` (`<mitigation_path>/subactions/<id>`).
    pub async fn create_subaction(&self, token: &str, mitigation_path: &str, title: &str) -> String {
        let subactions = format!("{mitigation_path}/subactions");
        let response = self.send_json(Method::POST, &subactions, token, json!({"title": title})).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        format!("{subactions}/{}", created["id"].as_str().unwrap())
    }

    pub async fn create_asset(&self, token: &str, name: &str, criticality: &str) -> Value {
        let response = self
            .send_json(
                Method::POST,
                "/api/v1/assets",
                token,
                json!({"name": name, "asset_type": "server", "criticality": criticality}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    /// Runs SQL on the test database, as another program would.
    pub async fn sql(&self, sql: &str) {
        self.db.connect().await.batch_execute(sql).await.unwrap();
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.db.connect().await.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// Does what the invalidator does: applies and deletes every outbox row.
    pub async fn drain_outbox(&self) {
        let client = self.db.connect().await;
        let rows = client.query("DELETE FROM cache_outbox RETURNING tenant_id, tags", &[]).await.unwrap();
        let mut conn = self.redis.connect().await;
        let keyspace = self.redis.keyspace();
        for row in rows {
            let tenant: Uuid = row.get(0);
            let tags: Vec<String> = row.get(1);
            let tags: Vec<Tag> = tags.iter().map(|tag| Tag::parse(tag).unwrap()).collect();
            protocol::invalidate(&mut conn, &keyspace, tenant, &tags).await.unwrap();
        }
    }

    /// The Prometheus text of the app (from `METRICS_ADDR`).
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.app.metrics_addr);
        self.client.get(url).send().await.unwrap().text().await.unwrap()
    }

    /// The value of one metric sample (0 when absent), e.g. `openrisk_cache_fills_total{outcome="stored",route="/api/v1/risks"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// The response's `Cache-Status`, which every cacheable GET carries with one of the known values.
pub fn cache_status(response: &Response) -> CacheStatus {
    let value = response.headers().get("cache-status").map(|value| value.to_str().unwrap()).unwrap_or_default();
    CacheStatus::parse(value).unwrap_or_else(|| panic!("unknown Cache-Status {value:?}"))
}

/// Asserts a problem+json error with `status` and returns its body.
pub async fn assert_problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    let content_type = response.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/problem+json"), "content type {content_type}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16(), "{body}");
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "problem without {field}: {body}");
    }
    body
}

/// A miss hook that, once armed, holds the next miss on `route` at one [`MissStep`] (between its
/// database read and its fill, unless told otherwise) until released.
#[derive(Clone)]
pub struct MissGate {
    armed: Arc<AtomicBool>,
    reached: Arc<Notify>,
    release: Arc<Semaphore>,
    at: Arc<std::sync::Mutex<(String, MissStep)>>,
}

impl Default for MissGate {
    fn default() -> Self {
        Self {
            armed: Arc::default(),
            reached: Arc::default(),
            release: Arc::new(Semaphore::new(0)),
            at: Arc::new(std::sync::Mutex::new((String::new(), MissStep::Fill))),
        }
    }
}

impl MissGate {
    pub fn hook(&self) -> MissHook {
        let gate = self.clone();
        Arc::new(move |step, route, _key| {
            let gate = gate.clone();
            async move {
                let matches = *gate.at.lock().unwrap() == (route.to_owned(), step);
                if matches && gate.armed.swap(false, Ordering::SeqCst) {
                    gate.reached.notify_one();
                    gate.release.acquire().await.unwrap().forget();
                }
            }
            .boxed()
        })
    }

    /// Holds the next miss on `route` before its fill.
    pub fn arm(&self, route: &str) {
        self.arm_at(route, MissStep::Fill);
    }

    /// Holds the next miss on `route` at `step`.
    pub fn arm_at(&self, route: &str, step: MissStep) {
        *self.at.lock().unwrap() = (route.to_owned(), step);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits until an armed miss is held at the gate.
    pub async fn reached(&self) {
        tokio::time::timeout(Duration::from_secs(20), self.reached.notified()).await.expect("reader reached the gate");
    }

    pub fn release(&self) {
        self.release.add_permits(1);
    }
}

/// The id at the end of a resource's path (`/api/v1/risks/<id>`).
pub fn id_of(path: &str) -> Uuid {
    path.rsplit('/').next().unwrap().parse().unwrap()
}

/// Begins a transaction on `session` that locks the row of the risk at `risk_path`, so the API's
/// writes of it wait until the session commits or rolls back.
pub async fn hold_risk(session: &tokio_postgres::Client, risk_path: &str) {
    session.batch_execute("BEGIN").await.unwrap();
    session.execute("SELECT 1 FROM risks WHERE id = $1 FOR UPDATE", &[&id_of(risk_path)]).await.unwrap();
}

/// How many sessions of the API wait for a lock in the test's database (`session`'s).
pub async fn api_sessions_waiting_for_a_lock(session: &tokio_postgres::Client) -> i64 {
    let waiting = "SELECT count(*) FROM pg_stat_activity
                   WHERE application_name = 'openrisk-api' AND datname = current_database()
                     AND wait_event_type = 'Lock'";
    session.query_one(waiting, &[]).await.unwrap().get(0)
}

/// Returns once a session of the API waits for a lock in the test's database (`session`'s);
/// panics when none has after 30 s.
pub async fn until_the_api_waits_for_a_lock(session: &tokio_postgres::Client) {
    let waited = async {
        while api_sessions_waiting_for_a_lock(session).await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), waited)
        .await
        .expect("no session of the API waited for a lock in 30 s");
}
