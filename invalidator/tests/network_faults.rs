//! Faults that look like a network between the invalidator and a private Postgres inside a
//! network namespace of the test's own: packets dropped silently (no reset, no close) on one
//! replica's connections while it holds a claimed batch, and on a LISTEN connection alone. The
//! dead-peer settings (`[database]` keepalives and TCP user timeout, on both ends) bound how
//! long either goes unnoticed; after each fault the outbox drains and nothing stays cached. And
//! a slow link to Redis, which the lag's stages must put where it is, and a writer's transaction
//! held open, which stays out of the lag where Postgres records commit times.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Harness, eventually, http_get, wait_until_parked};
use openrisk_invalidator::metrics::RECONNECT_LISTENER;
use openrisk_shared::config::{DatabaseSettings, WakeMode};
use openrisk_test_support::{LatencyRelay, NetworkLink, PrivatePostgres, RedisNamespace, TestDatabase, with_database};

const WAIT: Duration = Duration::from_secs(60);
/// Added to the stated bounds for scheduling on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(5);

/// How long a silent peer goes unnoticed with the default `[database]` settings.
fn detection_bound() -> Duration {
    DatabaseSettings::default().link().detection_bound().expect("keepalives and TCP user timeout are on by default")
}

/// A network link with `addresses` server addresses, a private Postgres behind it, and a
/// harness whose database lives there, reached through the link's server address `via`.
async fn harness_behind(addresses: u8, via: u8) -> (NetworkLink, PrivatePostgres, Harness) {
    let link = NetworkLink::create(addresses);
    let postgres = PrivatePostgres::start_behind(&link);
    let db = TestDatabase::create_on(&postgres.admin_url_via(link.server_address(via))).await;
    let harness = Harness::with(db, RedisNamespace::new()).await;
    (link, postgres, harness)
}

/// Sessions of `application` on the harness's database, as `(client port, state)`.
async fn sessions(h: &Harness, application: &str) -> Vec<(i32, String)> {
    let rows = h
        .sql
        .query(
            "SELECT client_port, coalesce(state, '') FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database()",
            &[&application],
        )
        .await
        .unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

#[tokio::test]
async fn a_replica_cut_off_from_postgres_mid_batch_never_acknowledges_and_another_takes_its_events_within_the_bound() {
    let (link, postgres, mut h) = harness_behind(2, 1).await;
    let tenant = h.tenant("a").await;
    let key = h.cache_risk_list(tenant).await;

    // Replica A reaches Postgres through the first address and Redis through a slow relay, so
    // each of its batches spends seconds between the claim and the acknowledgement.
    let relay = LatencyRelay::start(redis_addr(&h.namespace.url), Duration::from_millis(300));
    let mut cut_off = h.settings();
    cut_off.database_url = with_database(&postgres.admin_url_via(link.server_address(0)), &h.db.name);
    cut_off.redis_url = format!("redis://{}", relay.addr);
    let replica_a = h.start(cut_off).await;
    let a = &replica_a;
    eventually("replica A is connected", WAIT, || async move {
        a.status.postgres_connected.load(Ordering::Relaxed) && a.status.redis_connected.load(Ordering::Relaxed)
    })
    .await;

    h.risk(tenant, "claimed by A, then cut off").await;
    h.until_a_replica_holds_a_claim(WAIT).await;
    let claimed = h.outbox_len().await;
    assert!(claimed > 0);
    link.blackhole_address(link.server_address(0));
    let cut_at = Instant::now();

    let b = h.start(h.settings()).await;
    h.drained(WAIT).await;
    let taken_over_after = cut_at.elapsed();
    eprintln!("replica B had A's {claimed} claimed events {taken_over_after:?} after the cut");
    assert!(
        taken_over_after < detection_bound() + SLACK,
        "the server released A's claim after {taken_over_after:?}, past {:?} + slack",
        detection_bound()
    );
    assert_eq!(b.metrics.events_processed.get(), claimed as u64, "B applied every event A had claimed");
    assert!(!h.risk_list_is_cached(tenant, &key).await);

    eventually("A's /readyz reports Postgres lost", WAIT, || async move {
        let (status, body) = http_get(a.metrics_addr, "/readyz").await;
        status == 503 && body.contains("\"postgres\":false")
    })
    .await;
    assert_eq!(a.metrics.events_processed.get(), 0, "A acknowledged nothing it could not commit");
    let connected = &a.metrics.connected;
    eventually("A exports that it is cut off", WAIT, || async move { connected.get() == 0 }).await;

    link.heal();
    eventually("A is ready again", WAIT, || async move { http_get(a.metrics_addr, "/readyz").await.0 == 200 }).await;
    eventually("A exports that it is connected", WAIT, || async move { connected.get() == 1 }).await;
    h.assert_a_new_risk_invalidates_the_risk_list(tenant, "after the partition", WAIT).await;
    assert!(replica_a.shutdown(WAIT).await && b.shutdown(WAIT).await);
}

#[tokio::test]
async fn a_half_open_listen_connection_is_replaced_and_the_poll_bounds_the_window_meanwhile() {
    let (link, _postgres, mut h) = harness_behind(1, 0).await; // The server runs until the test ends.
    let tenant = h.tenant("a").await;
    let mut settings = h.settings();
    settings.invalidator.mode = WakeMode::Listen;
    settings.invalidator.poll_interval_ms = 3000;
    let poll = Duration::from_millis(settings.invalidator.poll_interval_ms);
    let running = h.start(settings).await;
    wait_until_parked(&running, WAIT).await;
    let listeners = sessions(&h, "openrisk-invalidator-listener").await;
    let [(dead_port, _)] = listeners[..] else { panic!("one LISTEN connection: {listeners:?}") };

    // Notifications, and the replica's own statements on that connection, now vanish.
    link.blackhole_connection(u16::try_from(dead_port).unwrap());
    let key = h.cache_risk_list(tenant).await;
    h.risk(tenant, "notified into the void").await;
    let written_at = Instant::now();
    h.drained(WAIT).await;
    let window = written_at.elapsed();
    eprintln!("applied {window:?} after the commit with its notification lost (poll {poll:?})");
    assert!(
        window < poll + detection_bound() + SLACK,
        "the poll and the dead-peer settings bound the window: {window:?}"
    );
    assert!(!h.risk_list_is_cached(tenant, &key).await);

    let (harness, metrics) = (&h, &running.metrics);
    eventually("a new LISTEN connection replaces the half-open one", WAIT, || async move {
        let listeners = sessions(harness, "openrisk-invalidator-listener").await;
        listeners.iter().any(|(port, _)| *port != dead_port) && metrics.listener_connected.get() == 1
    })
    .await;
    assert!(running.metrics.reconnects.with_label_values(&[RECONNECT_LISTENER]).get() >= 1);

    h.assert_a_new_risk_invalidates_the_risk_list(tenant, "after the replacement", WAIT).await;
    link.heal();
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn a_replica_parks_again_as_soon_as_the_backend_of_its_lost_listen_session_is_gone() {
    let (link, _postgres, mut h) = harness_behind(1, 0).await;
    let mut settings = h.settings_without_polling();
    // The server does not look for dead peers: the old session's backend, which holds the park
    // leader's lock, lives on until the test ends it.
    settings.database.server_side_keepalives = false;
    let running = h.start(settings).await;
    wait_until_parked(&running, WAIT).await;
    let listeners = sessions(&h, "openrisk-invalidator-listener").await;
    let [(dead_port, _)] = listeners[..] else { panic!("one LISTEN connection: {listeners:?}") };
    let old_backend: i32 =
        h.sql.query_one("SELECT pid FROM pg_stat_activity WHERE client_port = $1", &[&dead_port]).await.unwrap().get(0);

    link.blackhole_connection(u16::try_from(dead_port).unwrap());
    let (harness, metrics) = (&h, &running.metrics);
    eventually("a new LISTEN session, the replica unparked", WAIT, || async move {
        let listeners = sessions(harness, "openrisk-invalidator-listener").await;
        listeners.iter().any(|(port, _)| *port != dead_port)
            && metrics.listener_connected.get() == 1
            && metrics.parked.get() == 0
    })
    .await;
    // Its try to lead on the new session finds the lock held by the old backend.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(running.metrics.parked.get(), 0, "no replica leads while the old backend lives");

    let ended: bool = h.sql.query_one("SELECT pg_terminate_backend($1)", &[&old_backend]).await.unwrap().get(0);
    assert!(ended, "the old LISTEN backend was terminated");
    // Nothing else wakes the replica: no write, and its poll is two minutes away.
    wait_until_parked(&running, WAIT).await;
    let tenant = h.tenant("a").await;
    h.assert_a_new_risk_invalidates_the_risk_list(tenant, "notified on the new session", WAIT).await;
    link.heal();
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn the_lag_is_reported_by_stage_and_a_slow_redis_link_shows_in_the_redis_stage_alone() {
    let h = Harness::new().await;
    let one_way = Duration::from_millis(100);
    let relay = LatencyRelay::start(redis_addr(&h.namespace.url), one_way);
    let mut settings = h.settings();
    settings.redis_url = format!("redis://{}", relay.addr);
    let running = h.start(settings).await;
    let tenant = h.tenant("a").await;
    let metrics = &running.metrics;
    let batches = metrics.batches.clone();
    eventually("the tenant's creation is applied", WAIT, || {
        let batches = batches.clone();
        async move { batches.get() == 1 }
    })
    .await;
    let stage = |name: &str| metrics.lag_stage_seconds.with_label_values(&[name]);
    let sums =
        || [metrics.lag_seconds.get_sample_sum(), stage("outbox").get_sample_sum(), stage("redis").get_sample_sum()];
    let before = sums();

    // One transaction: its events (the risk's and its history's) are claimed in one batch.
    h.risk(tenant, "one transaction").await;
    h.drained(WAIT).await;
    eventually("the risk's events are applied", WAIT, || {
        let batches = batches.clone();
        async move { batches.get() == 2 }
    })
    .await;
    let events = (metrics.events_processed.get() - 1) as f64;
    let [lag, outbox, redis] = std::array::from_fn(|i| sums()[i] - before[i]);
    assert!(redis >= 2.0 * one_way.as_secs_f64(), "the Redis round trip is in the redis stage: {redis} s");
    assert!(outbox > 0.0, "the outbox stage took time: {outbox} s");
    assert!((lag - (outbox + events * redis)).abs() < 1e-9, "lag {lag} = outbox {outbox} + {events} × redis {redis}");
    assert_eq!(stage("outbox").get_sample_count(), metrics.events_processed.get(), "outbox: one per event");
    for name in ["claim", "redis"] {
        assert_eq!(stage(name).get_sample_count(), 2, "{name}: one per batch");
    }
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn the_lag_and_the_oldest_event_age_start_at_the_commit_where_commit_times_are_recorded() {
    let postgres = PrivatePostgres::start_with_settings(&["track_commit_timestamp=on"]);
    let h = Harness::with(TestDatabase::create_on(&postgres.admin_url()).await, RedisNamespace::new()).await;
    let running = h.start(h.settings()).await;
    let tenant = h.tenant("a").await;
    h.drained(WAIT).await;
    let metrics = &running.metrics;
    let stage = |name: &str| metrics.lag_stage_seconds.with_label_values(&[name]);
    let sums =
        || [metrics.lag_seconds.get_sample_sum(), stage("commit").get_sample_sum(), stage("outbox").get_sample_sum()];
    let processed_before = metrics.events_processed.get();
    let before = sums();

    // A writer that holds its transaction open after the change: no reader sees the change
    // before the commit, so that wait is no part of the lag.
    let held_open = Duration::from_secs(1);
    let writer = h.db.connect().await;
    writer.batch_execute("BEGIN").await.unwrap();
    writer
        .execute("INSERT INTO risks (tenant_id, title, impact, probability) VALUES ($1, 'held open', 3, 3)", &[&tenant])
        .await
        .unwrap();
    let events: i64 = writer.query_one("SELECT count(*) FROM cache_outbox", &[]).await.unwrap().get(0);
    tokio::time::sleep(held_open).await;
    writer.batch_execute("COMMIT").await.unwrap();
    let processed = metrics.events_processed.clone();
    eventually("the transaction's events are applied", WAIT, || {
        let processed = processed.clone();
        async move { processed.get() == processed_before + events as u64 }
    })
    .await;

    let [lag, commit, outbox] = std::array::from_fn(|i| sums()[i] - before[i]);
    let (events, held_open) = (events as f64, held_open.as_secs_f64());
    assert!(commit >= events * held_open, "each event's commit stage holds the open transaction: {commit} s");
    assert!(lag < events * held_open / 2.0, "each event's lag starts at the commit: {lag} s for {events} events");
    assert!(outbox <= lag, "the outbox stage is part of the lag: {outbox} s of {lag} s");
    assert!(running.shutdown(WAIT).await);

    // With no replica running the event stays in the outbox: its age, what pages and what
    // `/readyz` compares, counts from the commit too.
    writer.batch_execute("BEGIN").await.unwrap();
    writer.execute("UPDATE risks SET owner = 'held open' WHERE tenant_id = $1", &[&tenant]).await.unwrap();
    tokio::time::sleep(Duration::from_secs_f64(held_open)).await;
    writer.batch_execute("COMMIT").await.unwrap();
    let (waiting, oldest_age) = openrisk_invalidator::outbox::backlog(&writer).await.unwrap();
    assert!(waiting > 0, "the update waits in the outbox");
    assert!(oldest_age < held_open / 2.0, "the oldest event's age starts at the commit: {oldest_age} s");
}

/// The socket address of a `redis://host:port` URL.
fn redis_addr(url: &str) -> std::net::SocketAddr {
    let authority = url.trim_start_matches("redis://").trim_end_matches('/');
    std::net::ToSocketAddrs::to_socket_addrs(authority).unwrap().next().unwrap()
}
