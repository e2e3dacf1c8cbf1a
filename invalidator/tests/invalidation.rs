//! What the invalidator deletes: exactly the keys each change affects, in every tenant-safe way,
//! woken by NOTIFY when parked and by polling otherwise.

mod common;

use std::time::Duration;

use common::{Harness, WakeupListener, eventually, http_get};
use openrisk_shared::config::WakeMode;
use openrisk_shared::db::Lsn;
use openrisk_shared::protocol::{self, Lookup};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

/// Cached responses of one tenant, named after what they show, with the tags they depend on.
struct Cached {
    tenant: Uuid,
    entries: Vec<(&'static str, Vec<String>, String)>,
}

impl Cached {
    async fn fill(h: &mut Harness, tenant: Uuid, specs: &[(&'static str, Vec<String>)]) -> Self {
        let mut entries = Vec::new();
        for (name, tags) in specs {
            let key = h.cache(tenant, name, tags).await;
            entries.push((*name, tags.clone(), key));
        }
        Self { tenant, entries }
    }

    async fn still_cached(&self, h: &mut Harness) -> Vec<&'static str> {
        let mut names = Vec::new();
        for (name, tags, key) in &self.entries {
            if h.is_cached(self.tenant, key, tags).await {
                names.push(*name);
            }
        }
        names
    }
}

#[tokio::test]
async fn every_watched_table_and_change_removes_exactly_the_affected_keys() {
    let mut h = Harness::new().await;
    let running = h.start(h.settings()).await;
    let (a, b) = (h.tenant("a").await, h.tenant("b").await);
    let (r1, r2) = (h.risk(a, "r1").await, h.risk(a, "r2").await);
    let asset = h
        .id("INSERT INTO assets (tenant_id, name, asset_type, criticality) VALUES ($1, 'db', 'server', 'HIGH') RETURNING id", &[&a])
        .await;
    h.sql
        .execute("INSERT INTO risk_assets (tenant_id, risk_id, asset_id) VALUES ($1, $2, $3)", &[&a, &r1, &asset])
        .await
        .unwrap();
    let m =
        h.id("INSERT INTO mitigations (tenant_id, risk_id, title) VALUES ($1, $2, 'm') RETURNING id", &[&a, &r1]).await;
    let sub = h
        .id(
            "INSERT INTO mitigation_subactions (tenant_id, mitigation_id, title) VALUES ($1, $2, 's') RETURNING id",
            &[&a, &m],
        )
        .await;
    h.drained(WAIT).await;

    let specs = |r1: Uuid, r2: Uuid, asset: Uuid, m: Uuid| {
        vec![
            ("detail r1", vec![format!("risk:{r1}"), format!("asset:{asset}")]),
            ("detail r2", vec![format!("risk:{r2}")]),
            ("risk list", vec!["risks".to_string()]),
            ("stats", vec!["risks".to_string(), "mitigations".to_string()]),
            ("trends", vec!["risk_history".to_string()]),
            ("asset list", vec!["assets".to_string()]),
            ("asset", vec![format!("asset:{asset}")]),
            ("mitigation", vec![format!("mitigation:{m}")]),
        ]
    };
    let steps: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "sub-action toggled",
            format!("UPDATE mitigation_subactions SET completed = true WHERE id = '{sub}'"),
            vec!["detail r1", "mitigation"],
        ),
        (
            "asset renamed",
            format!("UPDATE assets SET name = 'db2' WHERE id = '{asset}'"),
            vec!["detail r1", "asset list", "asset"],
        ),
        (
            "risk retitled",
            format!("UPDATE risks SET title = 'new' WHERE id = '{r2}'"),
            vec!["detail r2", "risk list", "stats"],
        ),
        (
            "risk rescored",
            format!("UPDATE risks SET impact = 5 WHERE id = '{r2}'"),
            vec!["detail r2", "risk list", "stats", "trends"],
        ),
        (
            "risk soft-deleted",
            format!("UPDATE risks SET deleted_at = now() WHERE id = '{r2}'"),
            vec!["detail r2", "risk list", "stats", "trends"],
        ),
        (
            "mitigation moved",
            format!("UPDATE mitigations SET risk_id = '{r2}' WHERE id = '{m}'"),
            vec!["detail r1", "detail r2", "stats", "mitigation"],
        ),
        ("no-op update", format!("UPDATE risks SET title = title WHERE id = '{r1}'"), vec![]),
        (
            "asset unlinked",
            format!("DELETE FROM risk_assets WHERE risk_id = '{r1}'"),
            vec!["detail r1", "risk list", "stats", "asset", "trends"],
        ),
        (
            "history truncated",
            "TRUNCATE risk_history".to_string(),
            vec!["detail r1", "detail r2", "risk list", "stats", "trends", "asset list", "asset", "mitigation"],
        ),
    ];
    for (step, sql, expected_removed) in steps {
        let mine = Cached::fill(&mut h, a, &specs(r1, r2, asset, m)).await;
        let theirs = Cached::fill(&mut h, b, &specs(r1, r2, asset, m)).await;
        h.sql.batch_execute(&sql).await.unwrap_or_else(|error| panic!("{step}: {error}"));
        h.drained(WAIT).await;
        let kept = mine.still_cached(&mut h).await;
        let removed: Vec<&str> = mine.entries.iter().map(|e| e.0).filter(|name| !kept.contains(name)).collect();
        let mut expected = expected_removed.clone();
        expected.sort();
        let mut removed_sorted = removed.clone();
        removed_sorted.sort();
        assert_eq!(removed_sorted, expected, "{step}: removed entries");
        assert_eq!(theirs.still_cached(&mut h).await.len(), theirs.entries.len(), "{step}: other tenant untouched");
    }

    let (status, body) = http_get(running.metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("openrisk_invalidator_events_processed_total"), "{body}");
    assert!(running.shutdown(WAIT).await, "clean shutdown");
}

#[tokio::test]
async fn a_parked_invalidator_is_woken_by_notify_not_by_polling() {
    let mut h = Harness::new().await;
    let running = h.start_parked(WAIT).await;
    let tenant = h.tenant("a").await;
    h.assert_a_new_risk_invalidates_the_risk_list(tenant, "wakes it", WAIT).await;
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn a_parked_replica_waits_in_a_transaction_that_blocks_no_migration_and_holds_back_no_vacuum() {
    let mut h = Harness::new().await;
    let running = h.start_parked(WAIT).await;
    let claiming = "SELECT pid, backend_xid IS NULL AND backend_xmin IS NULL FROM pg_stat_activity
                    WHERE application_name = 'openrisk-invalidator' AND datname = current_database()
                      AND state = 'idle in transaction'";
    let sql = &h.sql;
    eventually("the parked replica waits in its claim's transaction", WAIT, || async move {
        !sql.query(claiming, &[]).await.unwrap().is_empty()
    })
    .await;
    let row = h.sql.query_one(claiming, &[]).await.unwrap();
    let (pid, unversioned): (i32, bool) = (row.get(0), row.get(1));
    assert!(unversioned, "no transaction id and no snapshot while waiting");
    let held: Vec<String> = h
        .sql
        .query("SELECT locktype || ' ' || mode FROM pg_locks WHERE pid = $1 AND locktype <> 'virtualxid'", &[&pid])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(held, Vec::<String>::new(), "locks held while waiting");
    // What a migration of the outbox takes, within far less than the (two-minute) poll.
    h.sql
        .batch_execute(
            "BEGIN; SET LOCAL lock_timeout = '2s';
             LOCK TABLE cache_outbox, cache_watches IN ACCESS EXCLUSIVE MODE; ROLLBACK",
        )
        .await
        .expect("the outbox can be locked while a replica is parked");
    let tenant = h.tenant("a").await;
    h.assert_a_new_risk_invalidates_the_risk_list(tenant, "still woken", WAIT).await;
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn a_lingering_replica_takes_new_events_without_parking() {
    let mut h = Harness::new().await;
    let mut settings = h.settings_without_polling();
    // Longer than WAIT too: only the lingering looks can get the write applied in time.
    settings.invalidator.linger_ms = 120_000;
    let mut listener = WakeupListener::start(&h).await;
    let running = h.start(settings).await;
    let connected = running.metrics.listener_connected.clone();
    eventually("LISTEN session up", WAIT, || {
        let connected = connected.clone();
        async move { connected.get() == 1 }
    })
    .await;
    let tenant = h.tenant("a").await;
    h.assert_a_new_risk_invalidates_the_risk_list(tenant, "picked up while lingering", WAIT).await;
    assert_eq!(listener.notifications().await, 0, "never parked, so writers never notified");
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn writers_notify_only_while_an_invalidator_is_parked() {
    let h = Harness::new().await;
    let tenant = h.tenant("a").await;
    let mut listener = WakeupListener::start(&h).await;

    // Nobody parked: writes stay silent.
    for i in 0..5 {
        h.risk(tenant, &format!("quiet {i}")).await;
    }
    assert_eq!(listener.notifications().await, 0, "no notify while nobody is parked");

    // Someone parked (the park lock held exclusively): a write notifies.
    listener.session().batch_execute("SELECT pg_advisory_lock(cache_park_lock_key())").await.unwrap();
    h.risk(tenant, "loud").await;
    assert_eq!(listener.notifications().await, 1, "the write notified the parked replica");
    listener.session().batch_execute("SELECT pg_advisory_unlock(cache_park_lock_key())").await.unwrap();
}

#[tokio::test]
async fn poll_mode_needs_no_listen() {
    let mut h = Harness::new().await;
    let mut settings = h.settings();
    settings.invalidator.mode = WakeMode::Poll;
    let running = h.start(settings).await;
    let tenant = h.tenant("a").await;
    h.assert_a_new_risk_invalidates_the_risk_list(tenant, "polled", WAIT).await;
    assert_eq!(running.metrics.listener_connected.get(), 0);
    let (status, _) = http_get(running.metrics_addr, "/healthz").await;
    assert_eq!(status, 200);
    let ready_addr = running.metrics_addr;
    eventually(
        "ready (connected and caught up)",
        WAIT,
        || async move { http_get(ready_addr, "/readyz").await.0 == 200 },
    )
    .await;
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn the_health_port_closes_idle_connections_and_serves_at_most_its_connection_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::new().await;
    let mut settings = h.settings();
    (settings.http.idle_timeout_ms, settings.http.request_timeout_ms, settings.http.max_connections) = (300, 200, 1);
    let running = h.start(settings).await;
    let mut idle = tokio::net::TcpStream::connect(running.metrics_addr).await.unwrap();
    let mut waiting = tokio::net::TcpStream::connect(running.metrics_addr).await.unwrap();
    waiting.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(150), waiting.read(&mut first)).await;
    assert!(early.is_err(), "a second connection was served while the first held the only slot");
    let mut received = Vec::new();
    let closed = tokio::time::timeout(WAIT, idle.read_to_end(&mut received)).await;
    assert!(closed.is_ok(), "the idle connection was closed");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, waiting.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "served once the slot was free");
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn poison_events_are_dead_lettered_invalidate_their_tenant_and_never_block_the_queue() {
    let mut h = Harness::new().await;
    let (poisoned, applied, bystander) = (h.tenant("a").await, h.tenant("b").await, h.tenant("c").await);
    let running = h.start(h.settings()).await;
    h.drained(WAIT).await;
    let mut keys = Vec::new();
    for tenant in [poisoned, applied, bystander] {
        keys.push(h.cache_risk_list(tenant).await);
    }
    // Rows written around the triggers. The last three of `applied` cannot be decoded or
    // subtracted as they stand (a null tag, an infinite time, tags in two dimensions, which
    // removing the null from fails); they are applied all the same.
    h.sql
        .execute(
            "INSERT INTO cache_outbox (tenant_id, table_name, op, tags, created_at) VALUES
                 ($1, 'risks', 'UPDATE', ARRAY['not a tag'], now()),
                 ($1, 'no_such_table', 'UPDATE', ARRAY['assets'], now()),
                 ($1, 'risks', 'MERGE', ARRAY['assets'], now()),
                 ($1, 'risks', 'UPDATE', '{}', now()),
                 ($2, 'risks', 'UPDATE', ARRAY[NULL, 'risks'], now()),
                 ($2, 'risks', 'UPDATE', ARRAY['assets'], 'infinity'),
                 ($2, 'risks', 'UPDATE', '{{assets,NULL},{risks,assets}}', now())",
            &[&poisoned, &applied],
        )
        .await
        .unwrap();
    h.drained(WAIT).await;
    let dead: Vec<String> = h
        .sql
        .query("SELECT reason FROM cache_outbox_dead_letter ORDER BY id", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert!(
        dead[0].contains("not a tag") && dead[1].contains("no_such_table") && dead[2].contains("MERGE"),
        "{dead:?}"
    );
    assert_eq!(running.metrics.poison_events.get(), 4);
    assert!(!h.risk_list_is_cached(poisoned, &keys[0]).await, "a poison row invalidates its tenant's whole cache");
    assert!(!h.risk_list_is_cached(applied, &keys[1]).await, "the valid events behind them were applied");
    assert!(h.risk_list_is_cached(bystander, &keys[2]).await, "no other tenant was touched");
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn a_change_to_an_asset_linked_to_more_risks_than_an_event_may_name_invalidates_them_all() {
    let mut h = Harness::new().await;
    let tenant = h.tenant("a").await;
    let asset = h
        .id("INSERT INTO assets (tenant_id, name, asset_type, criticality) VALUES ($1, 'db', 'server', 'HIGH') RETURNING id", &[&tenant])
        .await;
    // Each update of the asset names every linked risk twice (old and new row): 1,206 tags.
    h.sql
        .execute(
            "WITH linked AS (INSERT INTO risks (tenant_id, title, impact, probability)
                             SELECT $1, 'r' || g, 3, 3 FROM generate_series(1, 600) g RETURNING id)
             INSERT INTO risk_assets (tenant_id, risk_id, asset_id) SELECT $1, id, $2 FROM linked",
            &[&tenant, &asset],
        )
        .await
        .unwrap();
    let running = h.start(h.settings()).await;
    h.drained(WAIT).await;
    let linked: Uuid = h.id("SELECT risk_id FROM risk_assets WHERE asset_id = $1 LIMIT 1", &[&asset]).await;
    let detail_tags = [format!("risk:{linked}")];
    let detail = h.cache(tenant, "linked risk's detail", &detail_tags).await;

    h.sql.execute("UPDATE assets SET name = 'renamed' WHERE id = $1", &[&asset]).await.unwrap();
    h.drained(WAIT).await;
    assert!(!h.is_cached(tenant, &detail, &detail_tags).await, "the linked risk's detail was invalidated");
    let dead: i64 = h.sql.query_one("SELECT count(*) FROM cache_outbox_dead_letter", &[]).await.unwrap().get(0);
    assert_eq!(dead, 0, "a valid change is never dead-lettered");
    assert!(running.shutdown(WAIT).await);
}

#[tokio::test]
async fn an_invalidation_records_a_replay_floor_past_the_write_it_applies() {
    let mut h = Harness::new().await;
    let tenant = h.tenant("a").await;
    let risk = h.risk(tenant, "r").await;
    let deps = common::with_all(&[format!("risk:{risk}")]);
    let probe = h.keyspace.entry_key(tenant, 1, "probe", &[]);
    let _running = h.start(h.settings()).await;
    h.drained(WAIT).await;
    // A reader's snapshot, whose versions get the primary's position as their floor.
    let Lookup::Miss(partial) = protocol::lookup(&mut h.redis, &h.keyspace, tenant, &probe, &deps).await.unwrap()
    else {
        panic!("nothing is filled under the probe key")
    };
    let snapshot = protocol::create_missing_versions(&mut h.redis, &h.keyspace, tenant, &partial, 700).await.unwrap();
    let found = protocol::replay_floor(&mut h.redis, &h.keyspace, tenant, &snapshot).await.unwrap();
    protocol::stamp_replay_floor(&mut h.redis, &h.keyspace, tenant, &snapshot, &found, Lsn(0)).await.unwrap();
    let before_write: String = h.sql.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let before_write: Lsn = before_write.parse().unwrap();

    h.sql.execute("UPDATE risks SET title = 'changed' WHERE id = $1", &[&risk]).await.unwrap();
    h.drained(WAIT).await;

    let Lookup::Miss(after) = protocol::lookup(&mut h.redis, &h.keyspace, tenant, &probe, &deps).await.unwrap() else {
        panic!("nothing is filled under the probe key")
    };
    assert_ne!(after, snapshot, "the update was invalidated");
    let floor = protocol::replay_floor(&mut h.redis, &h.keyspace, tenant, &after).await.unwrap().required();
    let floor = floor.expect("the invalidator kept the floor known");
    assert!(floor > before_write, "floor {floor} must lie past the write, which began after {before_write}");
}
