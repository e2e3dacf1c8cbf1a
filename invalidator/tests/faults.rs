//! The invalidator under faults and competition: replicas racing for one outbox, a killed
//! LISTEN connection (with or without the worker's), Postgres and Redis restarts, a replica
//! SIGKILLed mid-batch or failing its batches. After each, every event is applied exactly where
//! it matters and the outbox drains. (The claim itself is tested in `claims.rs`.)

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{
    Harness, WakeupListener, connect_redis, eventually, flood_outbox, http_get, until_batches_failed, wait_until_parked,
};
use openrisk_shared::config::WakeMode;
use openrisk_test_support::{PrivatePostgres, PrivateRedis, RedisNamespace, TestDatabase, sslrootcert_param};

const WAIT: Duration = Duration::from_secs(30);

async fn replicas_share_the_outbox(replicas: usize) {
    let mut h = Harness::new().await;
    let tenant = h.tenant("a").await;
    let sample: Vec<String> = (1..=20_000).step_by(997).map(|i| format!("risk:{i}")).collect();
    let mut keys = Vec::new();
    for tag in &sample {
        keys.push((h.cache(tenant, tag, std::slice::from_ref(tag)).await, tag.clone()));
    }
    flood_outbox(&h, tenant, 20_000).await;
    let events = h.outbox_len().await as u64;
    let mut settings = h.settings();
    settings.invalidator.mode = WakeMode::Poll;
    settings.invalidator.poll_interval_ms = 20;
    settings.invalidator.batch_size = 200;
    let mut running = Vec::new();
    for _ in 0..replicas {
        running.push(h.start(settings.clone()).await);
    }
    h.drained(WAIT).await;
    let processed: Vec<u64> = running.iter().map(|r| r.metrics.events_processed.get()).collect();
    assert_eq!(processed.iter().sum::<u64>(), events, "each event processed exactly once: {processed:?}");
    assert!(processed.iter().filter(|&&n| n > 0).count() >= 2, "replicas shared the work: {processed:?}");
    for (key, tag) in &keys {
        assert!(!h.is_cached(tenant, key, std::slice::from_ref(tag)).await, "{tag} invalidated");
    }
    for replica in running {
        assert!(replica.shutdown(WAIT).await);
    }
}

/// A database whose default ends transactions idle for 300 ms: a parked replica's wake-up
/// transaction idles for as long as the park lasts, and each batch's while Redis answers. The
/// replica's transactions opt out, so a write after a long park is applied at once, without a
/// failed claim and a reconnection first.
#[tokio::test]
async fn a_short_idle_in_transaction_timeout_of_the_database_does_not_end_a_parked_replicas_session() {
    let mut h = Harness::new().await;
    let database = h.sql.query_one("SELECT current_database()", &[]).await.unwrap().get::<_, String>(0);
    let set = format!("ALTER DATABASE \"{database}\" SET idle_in_transaction_session_timeout = '300ms'");
    h.sql.batch_execute(&set).await.unwrap();
    let running = h.start_parked(WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tenant = h.tenant("a").await;
    h.assert_a_new_risk_invalidates_the_risk_list(tenant, "after a long park", WAIT).await;
    let (errors, reconnects) = (
        running.metrics.errors.with_label_values(&["postgres"]).get(),
        running.metrics.reconnects.with_label_values(&["postgres"]).get(),
    );
    assert_eq!((errors, reconnects), (0, 0), "failed batches and reconnections to Postgres");
    assert!(running.shutdown(WAIT).await);
}

/// A lock on the outbox (a migration altering it, a `VACUUM FULL`) holds up the backlog's sample
/// along with every claim. The sample is cancelled after a few seconds and counts as none, so
/// `/readyz` stops answering 200 from the last good sample, and answers it again once the lock
/// is gone; meanwhile the oldest event's age keeps growing from the last good sample, as the
/// bound on it that it is, so the age alert can fire.
#[tokio::test]
async fn a_replica_that_cannot_sample_its_backlog_stops_saying_ready() {
    let h = Harness::new().await;
    let running = h.start(h.settings()).await;
    let addr = running.metrics_addr;
    let status = || async move { http_get(addr, "/readyz").await.0 };
    eventually("ready", WAIT, || async { status().await == 200 }).await;

    let locker = h.db.connect().await;
    locker.batch_execute("BEGIN; LOCK TABLE cache_outbox_held IN ACCESS EXCLUSIVE MODE").await.unwrap();
    eventually("/readyz says 503 while the outbox is locked", WAIT, || async { status().await == 503 }).await;
    let age = || async move { oldest_event_age(addr).await };
    let unsampled = age().await;
    eventually("the age grows while samples fail", WAIT, || async { age().await > unsampled + 1.0 }).await;
    locker.batch_execute("COMMIT").await.unwrap();
    eventually("ready again once the lock is gone", WAIT, || async { status().await == 200 }).await;
    assert!(running.shutdown(WAIT).await);
}

/// A replica started behind such a lock has no good sample to bound the age from: it exports
/// `+Inf`, not the gauge's initial 0, so a fleet restarted behind a lock still fires the alert.
#[tokio::test]
async fn a_replica_that_never_sampled_its_backlog_shows_no_bound_on_the_oldest_events_age() {
    let h = Harness::new().await;
    let locker = h.db.connect().await;
    locker.batch_execute("BEGIN; LOCK TABLE cache_outbox_held IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let running = h.start(h.settings()).await;
    let addr = running.metrics_addr;
    let age = || async move { oldest_event_age(addr).await };
    eventually("the age is +Inf once the first sample fails", WAIT, || async { age().await == f64::INFINITY }).await;
    locker.batch_execute("COMMIT").await.unwrap();
    eventually("a finite age once a sample succeeds", WAIT, || async { age().await.is_finite() }).await;
    assert!(running.shutdown(WAIT).await);
}

/// The `openrisk_invalidator_oldest_event_age_seconds` a replica exports.
async fn oldest_event_age(addr: std::net::SocketAddr) -> f64 {
    let metrics = http_get(addr, "/metrics").await.1;
    let sample = metrics.lines().find_map(|line| line.strip_prefix("openrisk_invalidator_oldest_event_age_seconds "));
    sample.expect("the age gauge is exported").trim().parse::<f64>().unwrap()
}

#[tokio::test]
async fn two_replicas_drain_a_large_outbox_without_loss_or_duplicates() {
    replicas_share_the_outbox(2).await;
}

#[tokio::test]
async fn four_replicas_drain_a_large_outbox_without_loss_or_duplicates() {
    replicas_share_the_outbox(4).await;
}

#[tokio::test]
async fn a_killed_listener_connection_is_replaced_and_nothing_is_lost() {
    let mut h = Harness::new().await;
    let running = h.start_parked(WAIT).await;
    let listener = running.metrics.listener_connected.clone();
    h.sql
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name IN ('openrisk-invalidator-listener', 'openrisk-invalidator') AND datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    let tenant = h.tenant("a").await;
    let key = h.cache_risk_list(tenant).await;
    h.risk(tenant, "after the kill").await;
    // The replica notices the dead connection, reconnects, catches up from the outbox.
    h.drained(WAIT).await;
    assert!(!h.risk_list_is_cached(tenant, &key).await);
    eventually("listener back", WAIT, || {
        let listener = listener.clone();
        async move { listener.get() == 1 }
    })
    .await;
    assert!(running.metrics.reconnects.with_label_values(&["postgres"]).get() >= 1);
    let listener_target = openrisk_invalidator::metrics::RECONNECT_LISTENER;
    assert!(running.metrics.reconnects.with_label_values(&[listener_target]).get() >= 1);
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn the_listen_task_replaces_its_killed_connection_alone_and_the_new_one_wakes_the_parked_worker() {
    let mut h = Harness::new().await;
    let running = h.start(h.settings_without_polling()).await;
    wait_until_parked(&running, WAIT).await;
    let killed: i32 = h
        .sql
        .query_one(
            "SELECT pg_terminate_backend(pid)::int * pid FROM pg_stat_activity
             WHERE application_name = 'openrisk-invalidator-listener' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed > 0, "one LISTEN backend terminated");
    let (harness, metrics) = (&h, &running.metrics);
    let listener_target = openrisk_invalidator::metrics::RECONNECT_LISTENER;
    eventually("a new LISTEN session, parked on again", WAIT, || async move {
        let pids: Vec<i32> = harness
            .sql
            .query(
                "SELECT pid FROM pg_stat_activity
                 WHERE application_name = 'openrisk-invalidator-listener' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        pids.len() == 1
            && pids[0] != killed
            && metrics.reconnects.with_label_values(&[listener_target]).get() >= 1
            && metrics.parked.get() == 1
    })
    .await;

    let tenant = h.tenant("a").await;
    h.assert_a_new_risk_invalidates_the_risk_list(tenant, "notified on the new session", WAIT).await;
    assert_eq!(
        running.metrics.reconnects.with_label_values(&["postgres"]).get(),
        0,
        "the worker's own outbox connection was never touched"
    );
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn a_postgres_restart_loses_nothing() {
    let mut postgres = PrivatePostgres::start();
    let db = TestDatabase::create_on(&postgres.admin_url()).await;
    let mut h = Harness::with(db, RedisNamespace::new()).await;
    let running = h.start(h.settings()).await;
    let tenant = h.tenant("a").await;
    let key = h.cache_risk_list(tenant).await;
    h.drained(WAIT).await;

    postgres.restart();
    h.sql = h.db.connect().await;
    h.risk(tenant, "after the restart").await;
    h.drained(WAIT).await;
    assert!(!h.risk_list_is_cached(tenant, &key).await);
    assert!(running.metrics.reconnects.with_label_values(&["postgres"]).get() >= 1);
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn a_postgres_that_takes_only_tls_is_reached_with_its_certificate_checked_and_invalidates_as_any() {
    let postgres = PrivatePostgres::start_tls_only();
    let mut h = Harness::with(TestDatabase::create_on(&postgres.admin_url()).await, RedisNamespace::new()).await;
    let mut settings = h.settings_without_polling();
    let ca = sslrootcert_param(&postgres.ca_certificate());
    settings.database_url = format!("{}?sslmode=verify-full&{ca}", settings.database_url);
    let running = h.start(settings).await;
    let tenant = h.tenant("a").await;
    let key = h.cache_risk_list(tenant).await;
    h.drained(WAIT).await;

    h.risk(tenant, "written over TLS").await;
    h.drained(WAIT).await;
    assert!(!h.risk_list_is_cached(tenant, &key).await);
    let sessions = h
        .sql
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name LIKE 'openrisk-invalidator%'",
            &[],
        )
        .await
        .unwrap();
    let names: Vec<String> = sessions.iter().map(|row| row.get(0)).collect();
    assert!(names.iter().any(|name| name == "openrisk-invalidator-listener"), "{names:?}");
    assert!(sessions.iter().all(|row| row.get::<_, bool>(1)), "every session encrypted: {names:?}");
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn events_wait_out_a_redis_outage_and_apply_after_it() {
    let mut redis = PrivateRedis::start();
    let mut h = Harness::with(TestDatabase::create().await, RedisNamespace::on(&redis.url())).await;
    let running = h.start(h.settings()).await;
    let tenant = h.tenant("a").await;
    h.drained(WAIT).await;

    redis.kill();
    h.risk(tenant, "written while Redis is down").await;
    until_batches_failed(&running, "redis", 1, WAIT).await;
    assert!(h.outbox_len().await > 0, "events are kept while Redis is down");

    redis.restart();
    h.redis = connect_redis(&redis.url()).await;
    h.drained(WAIT).await;
    assert!(running.metrics.reconnects.with_label_values(&["redis"]).get() >= 1);
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn a_park_leader_that_loses_redis_hands_the_park_to_a_replica_that_can_apply() {
    let mut h = Harness::new().await;
    let tenant = h.tenant("a").await;
    // Replica A leads the park, on a Redis of its own, which goes away; A fails its next batch.
    let mut lost = PrivateRedis::start();
    let mut on_lost = h.settings_without_polling();
    on_lost.redis_url = lost.url();
    let a = h.start(on_lost).await;
    wait_until_parked(&a, WAIT).await;
    lost.kill();
    h.risk(tenant, "written after A lost Redis").await;
    until_batches_failed(&a, "redis", 1, WAIT).await;
    // Replica B, on the shared Redis, polls too rarely to matter: it applies what A left, and
    // then only a notification, which writers send only while a replica is parked, gets a
    // write applied in time. B can park only if A gave up leading.
    let b = h.start(h.settings_without_polling()).await;
    h.drained(WAIT).await;
    h.assert_a_new_risk_invalidates_the_risk_list(tenant, "written once B could lead", WAIT).await;
    assert!(b.shutdown(WAIT).await);
    a.abort();
}

/// A replica that does not lead the park (here it never parks: it polls) and fails a batch wakes
/// the others once its rollback has freed the events, as a leader does when it resigns: a parked
/// replica that can apply them takes them then, not at its poll.
#[tokio::test]
async fn a_replica_that_fails_a_batch_wakes_the_others_though_it_does_not_lead_the_park() {
    let h = Harness::new().await;
    let tenant = h.tenant("a").await;
    let mut lost = PrivateRedis::start();
    let mut polling = h.settings();
    polling.redis_url = lost.url();
    polling.invalidator.mode = WakeMode::Poll;
    let replica = h.start(polling).await;
    h.drained(WAIT).await;
    let mut listener = WakeupListener::start(&h).await;
    lost.kill();
    h.risk(tenant, "written after the replica lost Redis").await;
    until_batches_failed(&replica, "redis", 1, WAIT).await;
    let deadline = std::time::Instant::now() + WAIT;
    while listener.notifications().await == 0 {
        assert!(std::time::Instant::now() < deadline, "the failed batch's events were handed on to nobody");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.outbox_len().await > 0, "the events wait in the outbox");
    replica.abort();
}

/// A master that answers with an error (here a tenant's version key holds a hash) has answered:
/// the tenant is held back while the others are applied, and the replica neither says Redis is
/// lost nor replaces its connection, as it does when the master does not answer.
#[tokio::test]
async fn an_error_reply_holds_its_tenant_back_without_counting_redis_lost() {
    let mut h = Harness::new().await;
    let running = h.start(h.settings()).await;
    let (bad, good) = (h.tenant("bad").await, h.tenant("good").await);
    h.drained(WAIT).await;
    let corrupt = h.keyspace.version_key(bad, &openrisk_shared::Tag::parse("risks").unwrap());
    let _: () = redis::cmd("HSET").arg(&corrupt).arg("not").arg("a version").query_async(&mut h.redis).await.unwrap();
    h.risk(bad, "its invalidation meets a hash").await;
    until_batches_failed(&running, "redis", 2, WAIT).await;
    let key = h.cache_risk_list(good).await;
    h.risk(good, "applied meanwhile").await;
    let deadline = std::time::Instant::now() + WAIT;
    while h.risk_list_is_cached(good, &key).await {
        assert!(std::time::Instant::now() < deadline, "the other tenant's write was never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running.metrics.reconnects.with_label_values(&["redis"]).get(), 0, "the connection was replaced");
    let ready: serde_json::Value = serde_json::from_str(&http_get(running.metrics_addr, "/readyz").await.1).unwrap();
    assert_eq!(ready["redis"], true, "{ready}");

    let _: () = redis::cmd("DEL").arg(&corrupt).query_async(&mut h.redis).await.unwrap();
    h.drained(WAIT).await;
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn a_replica_killed_mid_batch_leaves_its_events_to_another() {
    let redis = PrivateRedis::start();
    let mut h = Harness::with(TestDatabase::create().await, RedisNamespace::on(&redis.url())).await;
    let tenant = h.tenant("a").await;
    let key = h.cache_risk_list(tenant).await;
    flood_outbox(&h, tenant, 1_000).await;
    let events = h.outbox_len().await as u64;

    // Writes to Redis are paused, so replica A claims a batch and hangs applying it.
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(60_000).arg("WRITE").query_async(&mut h.redis).await.unwrap();
    // Killed on drop too, so that a failure below leaves no invalidator running.
    let mut replica_a = tokio::process::Command::new(env!("CARGO_BIN_EXE_openrisk-invalidator"))
        .arg("run")
        .env("DATABASE_URL", &h.db.url)
        .env("REDIS_URL", redis.url())
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("OPENRISK_CACHE__KEY_PREFIX", &h.namespace.prefix)
        .env("OPENRISK_INVALIDATOR__MODE", "poll")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start replica A");
    h.until_a_replica_holds_a_claim(WAIT).await;
    replica_a.kill().await.expect("SIGKILL replica A");
    let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query_async(&mut h.redis).await.unwrap();

    let running = h.start(h.settings()).await;
    h.drained(WAIT).await;
    assert_eq!(running.metrics.events_processed.get(), events, "replica B applied every event A had claimed");
    assert!(!h.risk_list_is_cached(tenant, &key).await);
    assert!(running.shutdown(WAIT).await);
}
