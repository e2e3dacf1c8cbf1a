//! The invalidator under faults and competition: replicas racing for one outbox, a killed
//! LISTEN connection (with or without the worker's), Postgres and Redis restarts, a replica
//! SIGKILLed mid-batch, held tenants' events moved aside and left by a replica that died. After
//! each, every event is applied exactly where it matters and the outbox drains.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Harness, WakeupListener, connect_redis, eventually, http_get, until_batches_failed, wait_until_parked};
use openrisk_shared::config::WakeMode;
use openrisk_test_support::{PrivatePostgres, PrivateRedis, RedisNamespace, TestDatabase, sslrootcert_param};

const WAIT: Duration = Duration::from_secs(30);

/// Fills the outbox with `count` events of one tenant, each invalidating its own risk tag.
async fn flood_outbox(h: &Harness, tenant: uuid::Uuid, count: i32) {
    h.sql
        .execute(
            "INSERT INTO cache_outbox (tenant_id, table_name, op, tags)
             SELECT $1, 'risks', 'UPDATE', ARRAY['risk:' || g, 'risks'] FROM generate_series(1, $2) g",
            &[&tenant, &count],
        )
        .await
        .unwrap();
}

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

/// A claim takes at most its limit, the oldest rows, whatever plan Postgres picks. With the plan
/// that re-runs the picking subquery for every outbox row (Postgres chooses it while the outbox's
/// statistics still say "empty"), a claim written as `id IN (SELECT … LIMIT n FOR UPDATE SKIP
/// LOCKED)` took the whole outbox, in quadratic time.
#[tokio::test]
async fn a_claim_takes_at_most_its_limit_whatever_the_plan() {
    let h = Harness::new().await;
    let tenant = h.tenant("a").await;
    flood_outbox(&h, tenant, 2_000).await;
    let rows = h.outbox_len().await;
    let oldest: i64 = h.sql.query_one("SELECT min(id) FROM cache_outbox", &[]).await.unwrap().get(0);
    let mut client = openrisk_shared::db::connect(&h.db.url, "claim-test", &Default::default()).await.unwrap();
    let claim = openrisk_invalidator::outbox::prepare_claim(&client).await.unwrap();
    let transaction = client.transaction().await.unwrap();
    transaction
        .batch_execute(
            "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; SET LOCAL enable_hashagg = off;
             SET LOCAL enable_sort = off; SET LOCAL enable_material = off",
        )
        .await
        .unwrap();
    let batch = openrisk_invalidator::outbox::claim(&transaction, &claim, 100, &[]).await.unwrap();
    assert_eq!(batch.len(), 100);
    let ids: Vec<i64> = batch.events.iter().map(|claimed| claimed.event.id).collect();
    assert_eq!(ids, (oldest..oldest + 100).collect::<Vec<_>>());
    transaction.rollback().await.unwrap();
    assert_eq!(h.outbox_len().await, rows, "a rolled-back claim gives its rows back");
}

/// A replica holds back the tenants whose invalidations failed (their Redis Cluster shard down):
/// its claim takes the other tenants' events, and moves the held tenants' aside as it meets them,
/// in the same transaction. Once the tenant is not held, a claim takes them back.
#[tokio::test]
async fn a_claim_moves_the_events_of_held_back_tenants_aside_until_they_are_not_held() {
    let h = Harness::new().await;
    let (held, other) = (h.tenant("held").await, h.tenant("other").await);
    h.sql.batch_execute("DELETE FROM cache_outbox").await.unwrap();
    flood_outbox(&h, held, 20).await;
    flood_outbox(&h, other, 5).await;
    let mut client = h.db.connect().await;
    let mut listener = WakeupListener::start(&h).await;
    let claim = openrisk_invalidator::outbox::prepare_claim(&client).await.unwrap();
    let claim_of = async |client: &mut tokio_postgres::Client, held_back: &[uuid::Uuid], commit: bool| {
        let transaction = client.transaction().await.unwrap();
        let batch = openrisk_invalidator::outbox::claim(&transaction, &claim, 30, held_back).await.unwrap();
        if commit { transaction.commit().await } else { transaction.rollback().await }.unwrap();
        let tenants: Vec<uuid::Uuid> = batch.events.iter().map(|claimed| claimed.event.tenant_id).collect();
        (tenants, batch.moved_aside)
    };
    assert_eq!(claim_of(&mut client, &[held], false).await, (vec![other; 5], 20));
    let in_outbox = "SELECT count(*) FROM cache_outbox";
    assert_eq!(h.sql.query_one(in_outbox, &[]).await.unwrap().get::<_, i64>(0), 25, "a rollback moves nothing");
    assert_eq!(listener.notifications().await, 0, "nothing moved aside, nobody woken");
    assert_eq!(claim_of(&mut client, &[held], true).await, (vec![other; 5], 20), "only the other tenant's events");
    assert_eq!(h.sql.query_one(in_outbox, &[]).await.unwrap().get::<_, i64>(0), 0, "the held tenant's moved aside");
    assert_eq!(h.outbox_len().await, 20, "and still pending");
    // For a replica that may reach the tenant's master: parked, it would find them only at its poll.
    assert_eq!(listener.notifications().await, 1, "the other replicas woken at the commit");
    assert_eq!(claim_of(&mut client, &[held], true).await, (vec![], 0), "held, they are not taken back");
    assert_eq!(listener.notifications().await, 0, "a claim that moves none aside wakes nobody");
    assert_eq!(claim_of(&mut client, &[], true).await, (vec![held; 20], 0), "released, they are");
    assert_eq!(h.outbox_len().await, 0);
}

/// Events moved aside belong to no replica: a replica that held their tenant and died (its claims
/// moved them, committed) strands none, since any replica that does not hold the tenant takes
/// them back and applies them.
#[tokio::test]
async fn events_moved_aside_by_a_replica_that_died_are_applied_by_another() {
    let mut h = Harness::new().await;
    let tenant = h.tenant("held-elsewhere").await;
    let tags = vec!["risk:7".to_owned()];
    let key = h.cache(tenant, "detail", &tags).await;
    h.sql.batch_execute("DELETE FROM cache_outbox").await.unwrap();
    flood_outbox(&h, tenant, 10).await;
    {
        let mut replica_that_dies = h.db.connect().await;
        let claim = openrisk_invalidator::outbox::prepare_claim(&replica_that_dies).await.unwrap();
        let transaction = replica_that_dies.transaction().await.unwrap();
        let batch = openrisk_invalidator::outbox::claim(&transaction, &claim, 500, &[tenant]).await.unwrap();
        assert_eq!(batch.moved_aside, 10);
        transaction.commit().await.unwrap();
    }
    assert!(h.is_cached(tenant, &key, &tags).await, "moving aside applies nothing");
    let running = h.start(h.settings()).await;
    h.drained(WAIT).await;
    assert!(!h.is_cached(tenant, &key, &tags).await, "risk:7 was invalidated by the events taken back");
    assert!(running.shutdown(WAIT).await);
}

/// Pages (shared buffers hit or read) that one claim of the events waiting reads, `held` held
/// back, and then the read of `held`'s events moved aside since `since`: as the invalidator runs
/// them (its transaction settings, the claim prepared and its plan made at its first execution).
async fn pages_of_a_claim_and_a_read(client: &mut tokio_postgres::Client, held: uuid::Uuid, since: &str) -> (i64, i64) {
    let pages = |plan: &serde_json::Value| {
        let plan = &plan[0]["Plan"];
        plan["Shared Hit Blocks"].as_i64().unwrap() + plan["Shared Read Blocks"].as_i64().unwrap()
    };
    let transaction = client.transaction().await.unwrap();
    transaction.batch_execute(openrisk_shared::outbox::CLAIMING_TRANSACTION).await.unwrap();
    // EXPLAIN takes no parameters: the values are written in.
    let explain = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE held_backlog_claim(500, '{{{held}}}')");
    let claim: serde_json::Value = transaction.query_one(&explain, &[]).await.unwrap().get(0);
    let explain =
        format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE held_backlog_peek('{{{held}}}', '{{{since}}}')");
    let read: serde_json::Value = transaction.query_one(&explain, &[]).await.unwrap().get(0);
    transaction.commit().await.unwrap();
    (pages(&claim), pages(&read))
}

/// A held tenant's backlog costs the other tenants' claims nothing: with 20,000 of its events
/// waiting, a claim of ten new events and the read of the held tenant's new events read no more
/// pages than they did before it had any (plus two, should an index have grown a level). Before
/// the events moved aside, every claim walked the primary key past them and every read scanned
/// them all: the pages grew with the backlog. Counted with `EXPLAIN (ANALYZE, BUFFERS)`, not
/// timed; both tables vacuumed and analysed between, as autovacuum leaves them once 5,000 rows
/// have come or gone (with statistics that count the held events, the read once walked them all).
#[tokio::test]
async fn a_claim_and_a_read_beside_a_held_backlog_read_no_more_pages_than_beside_none() {
    let h = Harness::new().await;
    let (held, other) = (h.tenant("held").await, h.tenant("other").await);
    h.sql.batch_execute("DELETE FROM cache_outbox").await.unwrap();
    let mut client = h.db.connect().await;
    let prepare = format!(
        "PREPARE held_backlog_claim (bigint, uuid[]) AS {}; PREPARE held_backlog_peek (uuid[], text[]) AS {}",
        openrisk_shared::outbox::CLAIM,
        openrisk_shared::outbox::PEEK
    );
    client.batch_execute(&prepare).await.unwrap();
    let position = "SELECT pg_current_xact_id()::text";
    flood_outbox(&h, other, 10).await;
    let since: String = h.sql.query_one(position, &[]).await.unwrap().get(0);
    let (claim_before, read_before) = pages_of_a_claim_and_a_read(&mut client, held, &since).await;
    flood_outbox(&h, held, 20_000).await;
    let claim = openrisk_invalidator::outbox::prepare_claim(&client).await.unwrap();
    let (moved, _) = openrisk_invalidator::outbox::move_all_aside(&mut client, &claim, 500, &[held]).await.unwrap();
    assert_eq!(moved, 20_000, "the held tenant's events moved aside");
    assert_eq!(h.outbox_len().await, 20_000, "the held tenant's events wait");
    h.sql.batch_execute("VACUUM ANALYZE cache_outbox, cache_outbox_held").await.unwrap();
    flood_outbox(&h, other, 10).await;
    let since: String = h.sql.query_one(position, &[]).await.unwrap().get(0);
    let (claim_after, read_after) = pages_of_a_claim_and_a_read(&mut client, held, &since).await;
    assert!(
        claim_after <= claim_before + 2,
        "a claim read {claim_after} pages beside 20,000 held events, {claim_before} beside none"
    );
    assert!(read_after <= read_before + 2, "a read found nothing in {read_after} pages, against {read_before}");
}

/// The settings a claim's transaction makes ([`openrisk_shared::outbox::CLAIMING_TRANSACTION`]).
const CLAIM_SETTINGS: &str = "SELECT current_setting('synchronous_commit'), current_setting('plan_cache_mode'),
                                     current_setting('enable_seqscan'), current_setting('jit')";

/// What a claim sets ends with its transaction: through a transaction pooler the session is
/// handed to other clients next, and an API writer that inherited `synchronous_commit = off`
/// could lose a write it had acknowledged in a crash. Inside, the settings hold.
#[tokio::test]
async fn a_claim_leaves_no_setting_on_its_session_for_a_pooler_to_hand_on() {
    let h = Harness::new().await;
    let tenant = h.tenant("a").await;
    flood_outbox(&h, tenant, 3).await;
    let show = async |client: &tokio_postgres::Client| {
        let row = client.query_one(CLAIM_SETTINGS, &[]).await.unwrap();
        (0..4).map(|column| row.get::<_, String>(column)).collect::<Vec<_>>()
    };
    let untouched = show(&h.sql).await;
    let mut client = h.db.connect().await;
    let claim = openrisk_invalidator::outbox::prepare_claim(&client).await.unwrap();
    assert_eq!(show(&client).await, untouched, "preparing sets nothing");
    let transaction = client.transaction().await.unwrap();
    let waiting = usize::try_from(h.outbox_len().await).unwrap();
    assert_eq!(openrisk_invalidator::outbox::claim(&transaction, &claim, 10, &[]).await.unwrap().len(), waiting);
    let inside = transaction.query_one(CLAIM_SETTINGS, &[]).await.unwrap();
    let inside: Vec<&str> = (0..4).map(|column| inside.get(column)).collect();
    assert_eq!(inside, ["off", "force_generic_plan", "off", "off"]);
    transaction.commit().await.unwrap();
    assert_eq!(show(&client).await, untouched, "the session is as it was once the claim committed");
}

/// A claim finds its rows by primary key under either plan Postgres may use for the prepared
/// claim, never by scanning the outbox's heap, which keeps every claimed row as a dead row until
/// vacuum removes it: a claim that scanned it grew slower with every event. Checked with
/// `EXPLAIN` (plan nodes, not times) after a backlog of 30,000 events was drained by claims, the
/// statistics that once led Postgres to a hash join over a sequential scan, with a tenant held
/// back (the claim's filter then has work to do).
#[tokio::test]
async fn a_claim_finds_its_rows_by_primary_key_whatever_the_outbox_heap_holds() {
    let h = Harness::new().await;
    let tenant = h.tenant("a").await;
    h.sql.batch_execute("ALTER TABLE cache_outbox SET (autovacuum_enabled = off)").await.unwrap();
    flood_outbox(&h, tenant, 30_000).await;
    // Drained as a replica drains it: claims of 500, each committed.
    let mut client = h.db.connect().await;
    let claim = openrisk_invalidator::outbox::prepare_claim(&client).await.unwrap();
    while h.outbox_len().await > 0 {
        let transaction = client.transaction().await.unwrap();
        openrisk_invalidator::outbox::claim(&transaction, &claim, 500, &[]).await.unwrap();
        transaction.commit().await.unwrap();
    }
    flood_outbox(&h, tenant, 10).await;
    for plan in ["force_custom_plan", "force_generic_plan"] {
        let transaction = client.transaction().await.unwrap();
        transaction.batch_execute(&format!("SET LOCAL plan_cache_mode = {plan}")).await.unwrap();
        let explain = format!("EXPLAIN {}", openrisk_shared::outbox::CLAIM);
        let lines: Vec<String> = transaction
            .query(&explain, &[&500_i64, &vec![tenant]])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let plan_text = lines.join("\n");
        assert!(!plan_text.contains("Seq Scan on cache_outbox"), "{plan}: the claim scans the heap:\n{plan_text}");
        transaction.rollback().await.unwrap();
    }
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
    let mut replica_a = Command::new(env!("CARGO_BIN_EXE_openrisk-invalidator"))
        .arg("run")
        .env("DATABASE_URL", &h.db.url)
        .env("REDIS_URL", redis.url())
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("OPENRISK_CACHE__KEY_PREFIX", &h.namespace.prefix)
        .env("OPENRISK_INVALIDATOR__MODE", "poll")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start replica A");
    h.until_a_replica_holds_a_claim(WAIT).await;
    replica_a.kill().expect("SIGKILL replica A");
    replica_a.wait().unwrap();
    let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query_async(&mut h.redis).await.unwrap();

    let running = h.start(h.settings()).await;
    h.drained(WAIT).await;
    assert_eq!(running.metrics.events_processed.get(), events, "replica B applied every event A had claimed");
    assert!(!h.risk_list_is_cached(tenant, &key).await);
    assert!(running.shutdown(WAIT).await);
}
