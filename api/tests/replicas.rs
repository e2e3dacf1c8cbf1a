//! Misses served from a streaming read replica, against a private primary and replica shared
//! by this binary's tests (`ReplicaPair`): with replay paused on the replica, a write and its
//! invalidation never let a miss read (or fill) the replica's old rows, while the variant without
//! the replay-floor guard does exactly that; a replica that lags or is down leaves rotation and
//! comes back by itself, and `/readyz` stays ready, degraded.
//!
//! Replay pauses and restarts affect the whole pair, so these tests run one at a time: in one
//! process each holds [`PAIR_TURN`] while it runs, and nextest's processes are kept apart by the
//! `replica-pair` test group.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestApp, spawn_app_on};
use openrisk_api::AppOptions;
use openrisk_shared::protocol::StoredEntry;
use openrisk_shared::{CacheStatus, Settings};
use openrisk_test_support::{RedisNamespace, ReplicaPair, TestDatabase};
use reqwest::StatusCode;
use serde_json::Value;
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(20);

/// Held by the test using the pair, so tests that share one process (`cargo test`) take turns.
static PAIR_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The app on a fresh database of the pair's primary, reading misses from the replica.
struct ReplicaApp {
    app: TestApp,
    replica: Client,
    invalidator: Option<openrisk_invalidator::Running>,
    /// Dropped last: the next test's turn starts once this one's app and invalidator are gone.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl ReplicaApp {
    async fn start(max_lag_ms: u64, options: AppOptions) -> Self {
        Self::start_with(max_lag_ms, options, |_| {}).await
    }

    async fn start_with(max_lag_ms: u64, options: AppOptions, configure: impl FnOnce(&mut Settings)) -> Self {
        let turn = PAIR_TURN.lock().await;
        let pair = ReplicaPair::shared();
        let db = TestDatabase::create_on(&pair.primary_admin_url()).await;
        // A test that failed while replay was paused must not leave it paused for the next.
        let admin = connect_when_replicated(&pair.replica_url("postgres")).await;
        admin.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
        let replica_url = pair.replica_url(&db.name);
        let replica = connect_when_replicated(&replica_url).await;
        let app = spawn_app_on(
            db,
            RedisNamespace::new(),
            |settings| {
                settings.database.replica_urls = vec![replica_url];
                settings.database.replica_max_lag_ms = max_lag_ms;
                settings.database.replica_check_interval_ms = 50;
                configure(settings);
            },
            options,
        )
        .await;
        let started = Self { app, replica, invalidator: None, _turn: turn };
        started.wait_for_replica("in_rotation").await;
        started
    }

    async fn start_invalidator(&mut self) {
        let mut settings = openrisk_test_support::settings_for(&self.app.db, &self.app.redis);
        settings.invalidator.poll_interval_ms = 50;
        self.invalidator = Some(openrisk_invalidator::start(settings).await.expect("invalidator starts"));
    }

    /// Waits until `/readyz` reports the replica with `status`; returns the readiness document.
    async fn wait_for_replica(&self, status: &str) -> Value {
        let started = Instant::now();
        loop {
            let response = self.app.client.get(format!("{}/readyz", self.app.url)).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "the primary works, so the API stays ready");
            let readiness: Value = response.json().await.unwrap();
            if readiness["replicas"][0]["status"] == status {
                return readiness;
            }
            assert!(started.elapsed() < WAIT, "replica never became {status}: {readiness}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn pause_replay(&self) {
        self.replica.batch_execute("SELECT pg_wal_replay_pause()").await.unwrap();
        let started = Instant::now();
        loop {
            let state: String =
                self.replica.query_one("SELECT pg_get_wal_replay_pause_state()", &[]).await.unwrap().get(0);
            if state == "paused" {
                return;
            }
            assert!(started.elapsed() < WAIT, "replay never paused");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resumes replay and waits until the replica has replayed everything the primary has now.
    async fn resume_replay_and_catch_up(&self) {
        self.replica.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
        let primary = self.app.db.connect().await;
        let target: String = primary.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
        let started = Instant::now();
        loop {
            let caught_up: bool = self
                .replica
                .query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&target])
                .await
                .unwrap()
                .get(0);
            if caught_up {
                return;
            }
            assert!(started.elapsed() < WAIT, "replica never replayed {target}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_drained(&self) {
        let started = Instant::now();
        while self.app.count(openrisk_shared::outbox::BACKLOG).await > 0 {
            assert!(started.elapsed() < WAIT, "outbox not drained");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn read(&self, path: &str) -> (CacheStatus, Bytes) {
        let response = self.app.get(path, &self.app.a.viewer).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        (common::cache_status(&response), response.bytes().await.unwrap())
    }

    /// Unlinks every cached entry (as eviction would), keeping versions and floors.
    async fn evict_entries(&self) {
        let entries: Vec<String> = self.app.redis.keys().into_iter().filter(|key| key.contains(":e2:")).collect();
        let mut redis = self.app.redis.connect().await;
        for key in entries {
            let _: i64 = redis::cmd("UNLINK").arg(&key).query_async(&mut redis).await.unwrap();
        }
    }

    /// The bodies of every entry stored in Redis now.
    async fn stored_bodies(&self) -> Vec<Bytes> {
        let mut redis = self.app.redis.connect().await;
        let mut bodies = Vec::new();
        for key in self.app.redis.keys().into_iter().filter(|key| key.contains(":e2:")) {
            let stored: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut redis).await.unwrap();
            if let Some(entry) = stored.and_then(|stored| StoredEntry::decode(Bytes::from(stored))) {
                bodies.push(entry.body);
            }
        }
        bodies
    }
}

/// Connects to `url` on the replica once the replica answers and has replayed the database's
/// creation.
async fn connect_when_replicated(url: &str) -> Client {
    let started = Instant::now();
    loop {
        if let Ok(client) = openrisk_shared::db::connect(url, "openrisk-tests", &Default::default()).await {
            return client;
        }
        assert!(started.elapsed() < WAIT, "the replica never got the test database");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the readers saw after a write that replay had not reached.
struct Observed {
    /// Per URL: whether any read after the invalidation returned the body from before the write.
    stale_reads: Vec<(String, bool)>,
    /// Per URL: whether an entry holding the old body survived replay's resumption.
    stale_entries: Vec<(String, bool)>,
    behind_floor: f64,
}

/// The scenario of the issue, for a risk's detail, the risk list and the stats aggregate:
/// cache every URL (from the replica, under known replay floors), pause replay, write through
/// SQL on the primary, let the invalidator process it, read every URL through the API, resume
/// replay, read again and look at what Redis holds.
async fn write_behind_paused_replay(options: AppOptions) -> Observed {
    let mut app = ReplicaApp::start(3_600_000, options).await;
    app.start_invalidator().await;
    let risk = app.app.create_risk(&app.app.a.analyst, "Before").await;
    let id = risk["id"].as_str().unwrap().to_owned();
    let urls = [format!("/api/v1/risks/{id}"), "/api/v1/risks".to_owned(), "/api/v1/stats".to_owned()];
    app.wait_drained().await;
    app.resume_replay_and_catch_up().await;
    // First misses create the versions; after an eviction the next misses record the primary's
    // position as their floors and read the replica.
    let mut before = Vec::new();
    for url in &urls {
        before.push(app.read(url).await.1);
    }
    app.evict_entries().await;
    let replica_reads = app.app.metric("openrisk_db_reads_total{target=\"replica\"}").await;
    for (url, old) in urls.iter().zip(&before) {
        let (status, body) = app.read(url).await;
        assert_eq!(status, CacheStatus::Stored, "{url}");
        assert_eq!(&body, old, "{url}: nothing changed yet");
        assert_eq!(app.read(url).await.0, CacheStatus::Hit, "{url}");
    }
    assert!(
        app.app.metric("openrisk_db_reads_total{target=\"replica\"}").await >= replica_reads + 3.0,
        "the misses were read from the replica"
    );

    app.pause_replay().await;
    app.app.sql(&format!("UPDATE risks SET title = 'After', status = 'ACTIVE' WHERE id = '{id}'")).await;
    app.wait_drained().await;

    let mut stale_reads = Vec::new();
    for (url, old) in urls.iter().zip(&before) {
        let mut stale = false;
        for _ in 0..3 {
            stale |= app.read(url).await.1 == *old;
        }
        stale_reads.push((url.clone(), stale));
    }
    app.resume_replay_and_catch_up().await;
    let stored = app.stored_bodies().await;
    let mut stale_entries = Vec::new();
    for (url, old) in urls.iter().zip(&before) {
        let stale_now = app.read(url).await.1 == *old;
        stale_entries.push((url.clone(), stale_now || stored.contains(old)));
    }
    let behind_floor = app
        .app
        .metrics()
        .await
        .lines()
        .filter(|line| line.starts_with("openrisk_db_replica_behind_floor_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    Observed { stale_reads, stale_entries, behind_floor }
}

#[tokio::test]
async fn a_write_the_paused_replica_has_not_replayed_is_never_read_or_cached_stale() {
    let observed = write_behind_paused_replay(AppOptions::default()).await;
    for (url, stale) in &observed.stale_reads {
        assert!(!stale, "{url}: a read after the invalidation returned the old body");
    }
    for (url, stale) in &observed.stale_entries {
        assert!(!stale, "{url}: an entry holding the old body survived");
    }
    assert!(observed.behind_floor >= 3.0, "the misses found the replica behind their floor and read the primary");
}

#[tokio::test]
async fn without_the_replay_floor_the_paused_replica_serves_and_caches_the_old_rows() {
    let unguarded = AppOptions { unguarded_replica_reads: true, ..AppOptions::default() };
    let observed = write_behind_paused_replay(unguarded).await;
    for (url, stale) in &observed.stale_reads {
        assert!(stale, "{url}: the unguarded variant should have read the paused replica");
    }
    for (url, stale) in &observed.stale_entries {
        assert!(stale, "{url}: the unguarded variant should have cached the old body until expiry");
    }
}

#[tokio::test]
async fn a_write_through_the_api_is_read_back_while_replay_is_paused() {
    let app = ReplicaApp::start(3_600_000, AppOptions::default()).await;
    let risk = app.app.create_risk(&app.app.a.analyst, "Before").await;
    let path = format!("/api/v1/risks/{}", risk["id"].as_str().unwrap());
    app.resume_replay_and_catch_up().await;
    app.read(&path).await;
    app.evict_entries().await;
    app.read(&path).await;
    app.pause_replay().await;

    let patched = app
        .app
        .send_json(reqwest::Method::PATCH, &path, &app.app.a.analyst, serde_json::json!({"title": "After"}))
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let (_, body) = app.read(&path).await;
    let detail: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(detail["title"], "After", "the writer reads its own write although the replica lags");
    app.resume_replay_and_catch_up().await;
}

#[tokio::test]
async fn a_read_that_bypasses_the_cache_reads_the_replica_only_once_it_has_every_commit() {
    let app = ReplicaApp::start_with(3_600_000, AppOptions::default(), |settings| settings.cache.enabled = false).await;
    app.app.create_risk(&app.app.a.analyst, "Before").await;
    app.resume_replay_and_catch_up().await;
    // Caught up, bypassed reads go to the replica (once it has replayed whatever the primary
    // wrote last, which a request may just have added to).
    let replica_reads = app.app.metric("openrisk_db_reads_total{target=\"replica\"}").await;
    let started = Instant::now();
    while app.app.metric("openrisk_db_reads_total{target=\"replica\"}").await == replica_reads {
        assert_eq!(app.read("/api/v1/risks").await.0, CacheStatus::Disabled);
        assert!(started.elapsed() < WAIT, "no bypassed read went to the caught-up replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.pause_replay().await;

    app.app.create_risk(&app.app.a.analyst, "Written while replay is paused").await;
    let (_, body) = app.read("/api/v1/risks").await;
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["total"], 2, "the bypassed read went to the primary: {page}");
    app.resume_replay_and_catch_up().await;
}

#[tokio::test]
async fn a_lagging_replica_leaves_rotation_and_returns_once_it_catches_up() {
    let app = ReplicaApp::start(200, AppOptions::default()).await;
    app.pause_replay().await;
    let started = Instant::now();
    let readiness = loop {
        app.app.create_risk(&app.app.a.analyst, "Keeps the primary writing").await;
        let readiness: Value =
            app.app.client.get(format!("{}/readyz", app.app.url)).send().await.unwrap().json().await.unwrap();
        if readiness["replicas"][0]["status"] == "lagging" {
            break readiness;
        }
        assert!(started.elapsed() < WAIT, "the replica never left rotation: {readiness}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(readiness["status"], "degraded", "{readiness}");
    assert!(readiness["replicas"][0]["lag_seconds"].as_f64().unwrap() > 0.2, "{readiness}");
    assert!(readiness["replicas"][0]["lag_bytes"].as_u64().unwrap() > 0, "{readiness}");
    let metrics = app.app.metrics().await;
    assert!(
        metrics.lines().any(|line| line.starts_with("openrisk_db_replica_in_rotation{") && line.ends_with(" 0")),
        "{metrics}"
    );
    for series in ["openrisk_db_replica_lag_seconds{", "openrisk_db_replica_lag_bytes{"] {
        assert!(metrics.lines().any(|line| line.starts_with(series)), "{series} missing:\n{metrics}");
    }
    let primary_reads = app.app.metric("openrisk_db_reads_total{target=\"primary\"}").await;
    assert_eq!(app.read("/api/v1/risks").await.0, CacheStatus::Stored);
    assert!(app.app.metric("openrisk_db_reads_total{target=\"primary\"}").await > primary_reads, "read the primary");

    app.resume_replay_and_catch_up().await;
    let readiness = app.wait_for_replica("in_rotation").await;
    assert_eq!(readiness["status"], "ready", "{readiness}");
}

#[tokio::test]
async fn a_replica_that_is_down_leaves_rotation_and_returns_once_it_is_back() {
    let app = ReplicaApp::start(3_600_000, AppOptions::default()).await;
    let pair = ReplicaPair::shared();
    pair.stop_replica();
    let readiness = app.wait_for_replica("down").await;
    assert_eq!(readiness["status"], "degraded", "{readiness}");
    app.app.create_risk(&app.app.a.analyst, "Written while the replica is down").await;
    let (_, body) = app.read("/api/v1/risks").await;
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["total"], 1, "reads go to the primary");

    pair.start_replica();
    let readiness = app.wait_for_replica("in_rotation").await;
    assert_eq!(readiness["status"], "ready", "{readiness}");
}
