//! The claim: how many rows it takes and how it finds them whatever the plan and the heap, the
//! held tenants' events it moves aside and takes back (and the replicas it wakes doing so), what
//! it leaves on its session, and events moved aside by a replica that died.

mod common;

use std::time::Duration;

use common::{Harness, WakeupListener, flood_outbox};

const WAIT: Duration = Duration::from_secs(30);

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
