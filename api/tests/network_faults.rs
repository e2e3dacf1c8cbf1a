//! Faults that look like a network, between the API (and an invalidator) and a private Redis
//! inside a network namespace of the test's own: every packet dropped without a reset, then
//! 200 ms more per round trip with 5 % of the packets lost. Reads keep answering, and once the
//! link is healthy every entry the API serves equals the database. And a private Postgres cut
//! off mid-write: the pool gives the connection up instead of waiting on it.

mod common;

use std::time::{Duration, Instant};

use common::{HANG_BOUND, TestApp, cache_status, spawn_app_on, spawn_app_with, until_the_api_waits_for_a_lock};
use openrisk_api::AppOptions;
use openrisk_shared::{CacheStatus, Settings};
use openrisk_test_support::{
    LatencyRelay, NetworkLink, PrivatePostgres, PrivateRedis, RedisNamespace, TestDatabase, with_database,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long the link stays cut (the verifier's full run cuts it for 10 s).
const BLACKHOLE: Duration = Duration::from_secs(3);
/// Longest wait for the cache to be caught up again once the link is healthy.
const RECOVERY: Duration = Duration::from_secs(60);
/// The API's `database.tcp_user_timeout_ms` and `http.request_timeout_ms` (its statement
/// timeout) in the test that cuts its Postgres off.
const TCP_USER_TIMEOUT: Duration = Duration::from_millis(1000);
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);

/// Creates `count` risks and caches their details (reading until a hit: on a loaded machine a
/// fill may meet the Redis timeout).
async fn cached_risks(app: &TestApp, count: usize) -> Vec<String> {
    let mut paths = Vec::new();
    for index in 0..count {
        let risk = app.create_risk(&app.a.analyst, &format!("Risk {index} before")).await;
        let path = format!("/api/v1/risks/{}", risk["id"].as_str().unwrap());
        let deadline = Instant::now() + RECOVERY;
        while cache_status(&app.get(&path, &app.a.analyst).await) != CacheStatus::Hit {
            assert!(Instant::now() < deadline, "{path} was never cached");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        paths.push(path);
    }
    paths
}

/// An invalidator on the API's database and Redis.
async fn start_invalidator(app: &TestApp) -> openrisk_invalidator::Running {
    let settings = Settings { metrics_addr: "127.0.0.1:0".parse().unwrap(), ..app.app.state.settings.clone() };
    openrisk_invalidator::start(settings).await.expect("start invalidator")
}

/// The title the database holds for the risk at `path`.
async fn title_in_database(app: &TestApp, path: &str) -> String {
    let id = common::id_of(path);
    app.db.connect().await.query_one("SELECT title FROM risks WHERE id = $1", &[&id]).await.unwrap().get(0)
}

/// Waits for the outbox to be empty, then for every path to be served from the cache again,
/// and checks each answer against the database: zero stale entries.
async fn assert_fresh_from_the_cache(app: &TestApp, paths: &[String]) {
    let deadline = Instant::now() + RECOVERY;
    while app.count(openrisk_shared::outbox::BACKLOG).await > 0 {
        assert!(Instant::now() < deadline, "the invalidator did not catch up within {RECOVERY:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for path in paths {
        loop {
            let response = app.get(path, &app.a.analyst).await;
            assert_eq!(response.status(), StatusCode::OK);
            let status = cache_status(&response);
            let title = response.json::<Value>().await.unwrap()["title"].as_str().unwrap().to_owned();
            if status == CacheStatus::Hit {
                assert_eq!(title, title_in_database(app, path).await, "{path} served stale from the cache");
                break;
            }
            assert!(Instant::now() < deadline, "{path} never cached again: {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The p99 and maximum of `samples` (sorted in place).
fn p99_and_max(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    (p99, samples[samples.len() - 1])
}

#[tokio::test]
async fn a_redis_link_that_drops_every_packet_hangs_no_read_opens_the_breaker_and_ends_with_no_stale_entry() {
    let link = NetworkLink::create(1);
    let redis = PrivateRedis::start_behind(&link);
    let app = spawn_app_with(RedisNamespace::on(&redis.url()), |_| {}, AppOptions::default()).await;
    let invalidator = start_invalidator(&app).await;
    let paths = cached_risks(&app, 5).await;
    let token = &app.a.analyst;

    link.blackhole();
    let cut_at = Instant::now();
    let (mut latencies, mut writes, mut bypassed) = (Vec::new(), 0, 0);
    while cut_at.elapsed() < BLACKHOLE {
        for (index, path) in paths.iter().enumerate() {
            let started = Instant::now();
            let response = app.get(path, token).await;
            let took = started.elapsed();
            assert!(took < HANG_BOUND, "a read waited {took:?} on a silent Redis");
            latencies.push(took);
            assert_eq!(response.status(), StatusCode::OK);
            bypassed += usize::from(cache_status(&response).is_bypass());
            if index == writes % paths.len() {
                let title = format!("Risk {index} written during the partition ({writes})");
                let written = app.send_json(Method::PATCH, path, token, json!({ "title": title })).await;
                assert_eq!(written.status(), StatusCode::OK, "writes do not need Redis");
                writes += 1;
            }
        }
    }
    // Reported, not asserted (no wall-clock assertions): the slowest read is the Redis timeout
    // plus its Postgres query.
    let (p99, max) = p99_and_max(&mut latencies);
    let redis_timeout = Duration::from_millis(app.app.state.settings.cache.redis_timeout_ms);
    eprintln!(
        "reads during the blackhole: {} (p99 {p99:?}, max {max:?}, Redis timeout {redis_timeout:?}), {bypassed} bypassed the cache",
        latencies.len()
    );
    assert!(bypassed > 0, "reads went to Postgres while Redis was silent");
    let metrics = app.metrics().await;
    assert_eq!(common::metric_value(&metrics, "openrisk_cache_degraded"), 1.0, "the breaker opened");
    let ready: Value = app.client.get(format!("{}/readyz", app.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!((ready["status"].as_str(), ready["redis"].as_str()), (Some("degraded"), Some("down")), "{ready}");
    assert!(app.count(openrisk_shared::outbox::BACKLOG).await > 0, "nothing was acknowledged without Redis");

    link.heal();
    assert_fresh_from_the_cache(&app, &paths).await;
    assert!(invalidator.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test]
async fn a_slow_lossy_redis_link_keeps_reads_answering_and_the_invalidator_caught_up() {
    const ONE_WAY: Duration = Duration::from_millis(100);
    let link = NetworkLink::create(1);
    let redis = PrivateRedis::start_behind(&link);
    let relay = LatencyRelay::start(redis.addr(), ONE_WAY);
    let namespace = RedisNamespace::on(&format!("redis://{}", relay.addr));
    // A timeout above the slow link's round trip plus one retransmission, as docs/operations.md
    // advises, so the cache keeps serving instead of bypassing on every call.
    let app = spawn_app_with(namespace, |settings| settings.cache.redis_timeout_ms = 1500, AppOptions::default()).await;
    let invalidator = start_invalidator(&app).await;
    let paths = cached_risks(&app, 4).await;
    let token = &app.a.analyst;

    link.lose(5);
    let mut windows = Vec::new();
    for round in 0..6 {
        let path = &paths[round % paths.len()];
        let id = common::id_of(path);
        let title = format!("Written by SQL over the slow link ({round})");
        // Another program writes: only the outbox and the invalidator make the cache fresh.
        app.db.connect().await.execute("UPDATE risks SET title = $1 WHERE id = $2", &[&title, &id]).await.unwrap();
        let committed = Instant::now();
        loop {
            let started = Instant::now();
            let response = app.get(path, token).await;
            assert!(started.elapsed() < HANG_BOUND, "a read waited {:?}", started.elapsed());
            assert_eq!(response.status(), StatusCode::OK, "reads keep answering");
            if response.json::<Value>().await.unwrap()["title"] == title.as_str() {
                windows.push(committed.elapsed());
                break;
            }
            assert!(committed.elapsed() < RECOVERY, "write {round} never became visible");
        }
    }
    eprintln!("commit to fresh read over the slow lossy link: {windows:?}");
    let lag = app.count(openrisk_shared::outbox::BACKLOG).await;
    eprintln!("outbox rows left while the link is still slow: {lag}");

    link.heal();
    assert_fresh_from_the_cache(&app, &paths).await;
    assert!(invalidator.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test]
async fn a_postgres_link_cut_mid_write_costs_the_pool_its_connection_for_no_longer_than_the_statement_and_tcp_user_timeouts()
 {
    // The API reaches Postgres through the link's first address, the test through its second.
    let link = NetworkLink::create(2);
    let postgres = PrivatePostgres::start_behind(&link);
    let db = TestDatabase::create_on(&postgres.admin_url_via(link.server_address(0))).await;
    let url_beside = with_database(&postgres.admin_url_via(link.server_address(1)), &db.name);
    let session = openrisk_shared::db::connect(&url_beside, "tests", &Default::default()).await.unwrap();
    let configure = |settings: &mut Settings| {
        settings.pool.max_connections = Some(1);
        settings.database.tcp_user_timeout_ms = TCP_USER_TIMEOUT.as_millis() as u32;
        settings.http.request_timeout_ms = REQUEST_TIMEOUT.as_millis() as u64;
    };
    let app = spawn_app_on(db, RedisNamespace::new(), configure, AppOptions::default()).await;
    let path = app.create_risk_path(&app.a.analyst, "Cut off mid-write").await;
    let pool = app.app.state.db.conn.get_postgres_connection_pool().clone();

    // The write holds the pool's one connection, waiting for a row lock, when the link goes
    // silent; the lock is let go so the server answers into the void.
    common::hold_risk(&session, &path).await;
    let write = app.send_json(Method::PATCH, &path, &app.a.analyst, json!({ "title": "Never answered" }));
    let (answer, ()) = tokio::join!(write, async {
        until_the_api_waits_for_a_lock(&session).await;
        link.blackhole_address(link.server_address(0));
        session.batch_execute("ROLLBACK").await.unwrap();
    });
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "the request timed out");

    // The dropped connection goes back to the pool through a ping that cannot be answered,
    // given the statement timeout (the request timeout) and the TCP user timeout.
    let given_up = Instant::now();
    while pool.size() > 0 {
        assert!(
            given_up.elapsed() < REQUEST_TIMEOUT + TCP_USER_TIMEOUT + Duration::from_secs(5),
            "the pool still held a connection to the silent server after {:?}",
            given_up.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("the pool gave its connection up {:?} after the request's 503", given_up.elapsed());
    link.heal();
    let written = app.send_json(Method::PATCH, &path, &app.a.analyst, json!({ "title": "Answered" })).await;
    assert_eq!(written.status(), StatusCode::OK, "a new connection serves once the link is back");
}
