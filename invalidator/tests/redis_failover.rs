//! A Redis Cluster master failing over: an invalidation the invalidator acknowledged must be on
//! the replica that takes over (the master is cut off from its replica so the replica cannot
//! receive what the master applies); while no replica confirms, the master still sees every
//! write; and a master that stops answering is left for the replica that replaces it. Each test
//! runs its own private cluster (it kills or freezes a master). `shard_down.rs` has the shards
//! down and frozen without a failover.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, until_batches_failed};
use openrisk_invalidator::Running;
use openrisk_shared::keys::Tag;
use openrisk_shared::protocol::{self, Lookup};
use openrisk_test_support::{PrivateRedisCluster, RedisNamespace, TestDatabase, is_master, node_command};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// A cluster, a tenant, and the master and replica serving its slot.
struct Failover {
    cluster: PrivateRedisCluster,
    h: Harness,
    tenant: Uuid,
    master: u16,
    replica: u16,
}

impl Failover {
    async fn new() -> Self {
        let cluster = PrivateRedisCluster::start();
        let h = Harness::with(TestDatabase::create().await, RedisNamespace::on(&cluster.url())).await;
        let tenant = h.tenant("a").await;
        let master = cluster.master_of(&h.keyspace.version_key(tenant, &Tag::parse(common::RISK_LIST_TAG).unwrap()));
        let replica = cluster.replicas_of(master)[0];
        Self { cluster, h, tenant, master, replica }
    }

    /// Caches the tenant's risk list, once the tenant's own creation has been invalidated, and
    /// waits until the replica holds the entry too (what the failover must then bring back).
    async fn cache_list(&mut self) {
        self.h.drained(WAIT).await;
        self.h.cache_risk_list(self.tenant).await;
        assert!(self.list_is_cached().await);
        self.cluster.wait_until_replicated(self.master);
    }

    /// Freezes the replica and closes its replication link, so nothing the master applies from
    /// now on reaches it.
    fn cut_off_replica(&self) {
        self.cluster.cut_off_replica(self.replica, self.master);
    }

    /// SIGKILLs the master, lets the replica run again and makes it take the slots over.
    async fn fail_over(&mut self) {
        self.cluster.kill(self.master);
        self.cluster.resume(self.replica);
        let taken = node_command(&self.cluster.node_url(self.replica), &["CLUSTER", "FAILOVER", "TAKEOVER"]);
        assert_eq!(taken.as_deref(), Some("OK"), "replica takes over");
        self.until_promoted().await;
    }

    /// Waits until the replica serves as a master, while the invalidator replica runs on.
    async fn until_promoted(&self) {
        let replica = self.replica;
        for _ in 0..400 {
            if is_master(replica) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("replica {replica} was not promoted");
    }

    /// A replica running, the tenant's replica cut off, and a first write whose invalidation
    /// failed its `WAIT`: the tenant is held back for a missing replica acknowledgement.
    async fn held_for_a_missing_replica() -> (Self, Running) {
        let mut f = Self::new().await;
        let running = f.h.start(f.h.settings()).await;
        f.cache_list().await;
        f.cut_off_replica();
        f.h.risk(f.tenant, "first written while the replica is cut off").await;
        until_batches_failed(&running, "redis_replication", 1, WAIT).await;
        (f, running)
    }

    /// A replica running whose replica wait is longer than the test's bound, the tenant's list
    /// cached, its master SIGKILLed and a write held back, then applied on the promoted replica.
    async fn held_on_the_promoted_replica() -> (Self, Running) {
        let mut f = Self::new().await;
        let mut settings = f.h.settings();
        settings.invalidator.redis_replicas_ack_timeout_ms = 2 * WAIT.as_millis() as u64;
        let running = f.h.start(settings).await;
        f.cache_list().await;

        f.cluster.kill(f.master);
        f.h.risk(f.tenant, "written while the master is down").await;
        until_batches_failed(&running, "redis", 1, WAIT).await;
        f.until_promoted().await;
        f.until_dropped_on_the_promoted_replica().await;
        (f, running)
    }

    /// A replica running that acknowledges what the master applied without waiting for a Redis
    /// replica, and the tenant's risk list cached and replicated.
    async fn cached_without_replica_acks() -> (Self, Running) {
        let mut f = Self::new().await;
        let mut settings = f.h.settings();
        settings.invalidator.redis_replicas_ack = Some(0);
        let running = f.h.start(settings).await;
        f.cache_list().await;
        (f, running)
    }

    /// Caches `tenant`'s risk list once nothing applies earlier events to it any more (the first
    /// read of a held tenant's events starts from its first transaction, so it applies again
    /// what had failed): cached again until it is still served 200 ms later.
    async fn cache_list_settled(&mut self, tenant: Uuid) -> String {
        for _ in 0..50 {
            let list = self.h.cache_risk_list(tenant).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            if self.h.risk_list_is_cached(tenant, &list).await {
                return list;
            }
        }
        panic!("the risk list never stayed cached");
    }

    /// Waits until `tenant`'s risk list cached as `list` is no longer served, after `what`.
    async fn until_dropped(&mut self, tenant: Uuid, list: &str, what: &str) {
        let deadline = Instant::now() + WAIT;
        while self.h.risk_list_is_cached(tenant, list).await {
            assert!(Instant::now() < deadline, "{what} was not invalidated on the master");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Another tenant whose keys the tenant's master (the replica, once promoted) serves, with a
    /// slug beginning with `slug`.
    async fn another_tenant_of_its_master(&self, slug: &str) -> Uuid {
        let master_of = |tenant| self.cluster.master_of(&self.h.keyspace.version_key(tenant, &Tag::all()));
        let master = master_of(self.tenant);
        self.h.tenant_where(slug, |other| master_of(other) == master).await
    }

    /// Waits, from the promotion, until the promoted replica no longer serves the list the write
    /// made stale, although no replica confirms there (so nothing is acknowledged).
    async fn until_dropped_on_the_promoted_replica(&mut self) {
        let promoted = Instant::now();
        while self.list_is_cached().await {
            assert!(promoted.elapsed() < WAIT, "the promoted replica still serves the list the write made stale");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("the list was dropped on the promoted replica {:?} after its promotion", promoted.elapsed());
        assert!(self.h.outbox_len().await > 0, "nothing is acknowledged while no replica confirms");
    }

    /// Whether the list is served, retrying while the client learns the new topology.
    async fn list_is_cached(&mut self) -> bool {
        let tags = common::with_all(&[common::RISK_LIST_TAG.into()]);
        let key = self.h.risk_list_key(self.tenant);
        for _ in 0..100 {
            let lookup = protocol::lookup(&mut self.h.redis, &self.h.keyspace, self.tenant, &key, &tags);
            match tokio::time::timeout(Duration::from_secs(2), lookup).await {
                Ok(Ok(found)) => return matches!(found, Lookup::Hit(_)),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("the cluster did not answer a lookup after the failover");
    }
}

#[tokio::test]
async fn an_invalidation_is_acknowledged_only_once_a_replica_holds_it_so_a_failover_cannot_undo_it() {
    let mut f = Failover::new().await;
    let settings = f.h.settings();
    assert_eq!(settings.replica_ack().replicas, 1, "a cluster waits for one replica by default");
    let running = f.h.start(settings).await;
    f.cache_list().await;

    f.cut_off_replica();
    f.h.risk(f.tenant, "written while the replica is cut off").await;
    until_batches_failed(&running, "redis_replication", 2, WAIT).await;
    assert!(f.h.outbox_len().await > 0, "the event stays in the outbox while no replica has it");

    f.fail_over().await;
    // The old master comes back empty and rejoins as the new master's replica; only then can
    // the re-applied invalidation be confirmed.
    f.cluster.restart(f.master);
    f.cluster.wait_until_healthy(3);
    f.h.drained(WAIT).await;
    assert!(!f.list_is_cached().await, "the invalidation survived the failover");
    assert!(running.shutdown(WAIT).await);
}

/// While no replica confirms, the tenant's events stay in the outbox, and each write after the first
/// is still invalidated on the master, which serves the reads: they stay fresh.
#[tokio::test]
async fn while_no_replica_confirms_every_write_is_still_invalidated_on_the_master() {
    let (mut f, running) = Failover::held_for_a_missing_replica().await;
    for written in 1..=3 {
        let list = f.cache_list_settled(f.tenant).await;
        f.h.risk(f.tenant, &format!("written while the replica is cut off, {written}")).await;
        f.until_dropped(f.tenant, &list, &format!("write {written}")).await;
    }
    assert!(f.h.outbox_len().await >= 4, "nothing is acknowledged while no replica confirms");
    assert!(running.shutdown(WAIT).await);
}

/// Outbox ids are taken at insert, so a write can commit after one with a larger id was read: its
/// event must still reach the master (read from a transaction id, not past the last row read).
#[tokio::test]
async fn while_no_replica_confirms_a_write_that_commits_after_a_later_one_is_still_invalidated_on_the_master() {
    let (mut f, running) = Failover::held_for_a_missing_replica().await;
    let mut slow = f.h.db.connect().await;
    let slow_write = slow.transaction().await.unwrap();
    let insert = "INSERT INTO risks (tenant_id, title, impact, probability) VALUES ($1, 'slow', 3, 3)";
    slow_write.execute(insert, &[&f.tenant]).await.unwrap();
    let list = f.cache_list_settled(f.tenant).await;
    f.h.risk(f.tenant, "inserted after the slow one, committed before it").await;
    f.until_dropped(f.tenant, &list, "the write committed first").await;
    let list = f.cache_list_settled(f.tenant).await;
    slow_write.commit().await.unwrap();
    f.until_dropped(f.tenant, &list, "the write committed last").await;
    assert!(running.shutdown(WAIT).await);
}

/// A failover, while the tenant waits for a replica, to the replica that was cut off: it never
/// received what the old master applied alone, so the list the first write dropped is back. The
/// tenant's master changed (as the cluster watch sees it), so its events are applied again from
/// its first, on the new master, although no replica confirms there either.
#[tokio::test]
async fn a_failover_while_no_replica_confirms_applies_the_tenants_events_again_on_the_new_master() {
    let (mut f, running) = Failover::held_for_a_missing_replica().await;
    f.fail_over().await;
    f.until_dropped_on_the_promoted_replica().await;
    assert!(running.shutdown(WAIT).await);
}

/// A write of a tenant whose master was SIGKILLed is held back; the cluster promotes the master's
/// replica, which has no replica of its own. The promoted master is probed alone before any
/// probe waits for a replica, so the write is applied there while it serves the tenant's reads,
/// rather than once a probe's `WAIT` (made longer than the test's bound here) has timed out.
#[tokio::test]
async fn a_write_held_while_its_master_is_down_is_applied_on_the_promoted_replica_without_waiting_for_a_replica() {
    let (_f, running) = Failover::held_on_the_promoted_replica().await;
    assert!(running.shutdown(WAIT).await);
}

/// Once the promoted master answered, the tenant's probes wait for a replica it does not have
/// (longer than the test's bound). Such a probe blocks the connection it is sent on, and goes on
/// one of its own: a later write of the tenant is applied on the master meanwhile, as it reads.
#[tokio::test]
async fn a_probe_waiting_for_a_replica_holds_up_no_invalidation_of_its_master() {
    let (mut f, running) = Failover::held_on_the_promoted_replica().await;
    let deadline = Instant::now() + WAIT;
    while f.cluster.blocked_clients(f.replica).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no probe waited for a replica on the promoted master");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = f.cache_list_settled(f.tenant).await;
    f.h.risk(f.tenant, "written while a probe waits for a replica").await;
    f.until_dropped(f.tenant, &list, "the write made while a probe waits for a replica").await;
    assert!(f.cluster.blocked_clients(f.replica).unwrap_or(0) > 0, "the probe still waits");
    assert!(running.shutdown(WAIT).await);
}

/// While a tenant waits for a replica its master does not have (the promoted replica of a killed
/// master; the replica wait longer than the test's bound), another tenant of that master writes:
/// its events are applied on the master alone and it is held the same way, rather than waiting
/// for a replica in a `WAIT` that holds up every later invalidation of that master, its own too.
#[tokio::test]
async fn a_tenant_of_a_master_that_another_waits_for_a_replica_of_is_applied_there_without_waiting() {
    let (mut f, running) = Failover::held_on_the_promoted_replica().await;
    let other = f.another_tenant_of_its_master("same-master").await;
    // The test's own connection may still send the other tenant's slot to the killed master
    // (it followed the tenant's slot alone): a new one reads the cluster.
    f.h.redis = common::connect_redis(&f.h.namespace.url).await;
    for written in 1..=2 {
        let list = f.cache_list_settled(other).await;
        f.h.risk(other, &format!("written by another tenant of the master, {written}")).await;
        f.until_dropped(other, &list, &format!("the other tenant's write {written}")).await;
    }
    assert!(running.shutdown(WAIT).await);
}

/// Four tenants of one master write in one transaction while its replica is cut off. The master's
/// connection runs the batch's `WAIT`s one after another, so they share the replica wait: all
/// four come back unconfirmed within it. Each waiting the whole of it would take four times as
/// long, past the reply timeout: the later tenants would time out as if the master were down.
#[tokio::test]
async fn tenants_of_a_master_without_replica_written_together_share_one_replica_wait() {
    let f = Failover::new().await;
    let mut tenants = vec![f.tenant];
    for other in 1..=3 {
        tenants.push(f.another_tenant_of_its_master(&format!("same-master-{other}")).await);
    }
    let mut settings = f.h.settings();
    // Longer than a reply may take besides it (`redis_timeout_ms`), so that two whole waits one
    // after the other already miss the deadline of the second call.
    settings.invalidator.redis_replicas_ack_timeout_ms = 3 * settings.invalidator.redis_timeout_ms;
    let running = f.h.start(settings).await;
    f.h.drained(WAIT).await;
    f.cut_off_replica();
    let inserts: Vec<String> = tenants
        .iter()
        .map(|tenant| {
            format!("INSERT INTO risks (tenant_id, title, impact, probability) VALUES ('{tenant}', 'together', 2, 2);")
        })
        .collect();
    f.h.sql.batch_execute(&format!("BEGIN; {} COMMIT;", inserts.concat())).await.unwrap();
    let errors = running.metrics.errors.clone();
    let failed = |kind: &str| errors.with_label_values(&[kind]).get();
    common::eventually("a batch failed", WAIT, || async { failed("redis") + failed("redis_replication") > 0 }).await;
    assert_eq!(failed("redis"), 0, "no tenant of the batch timed out waiting behind the others");
    assert!(running.shutdown(WAIT).await);
}

/// The broken variant the default guards against: acknowledging once the master applied it.
#[tokio::test]
async fn without_waiting_for_a_replica_a_failover_brings_an_invalidated_entry_back() {
    let (mut f, running) = Failover::cached_without_replica_acks().await;

    f.cut_off_replica();
    f.h.risk(f.tenant, "written while the replica is cut off").await;
    f.h.drained(WAIT).await;
    // The invalidation's reclaim unlinks the old entry in the background; one still running at
    // the failover would go on on the new master and unlink the entry there too.
    let unlinked = running.metrics.keys_deleted.clone();
    common::eventually("the invalidated entry reclaimed", WAIT, || {
        let unlinked = unlinked.clone();
        async move { unlinked.get() >= 1 }
    })
    .await;
    f.fail_over().await;
    assert!(f.list_is_cached().await, "the acknowledged invalidation was lost with the master");
    assert_eq!(f.h.outbox_len().await, 0, "and nothing is left to apply it again");
    assert!(running.shutdown(WAIT).await);
}

/// A master that stops answering and is replaced by its replica, as when its host drops off the
/// network: no call to it fails fast and none is redirected, so only the cluster watch, which sees
/// the failover, can tell the replica's cluster connection to read the new topology. The tenant's
/// invalidations then reach the promoted replica while the old master is still frozen.
#[tokio::test]
async fn a_master_that_stops_answering_and_fails_over_is_left_for_its_replica() {
    // The promoted replica has no replica of its own to confirm a write.
    let (mut f, running) = Failover::cached_without_replica_acks().await;

    // Frozen, the master is failed over by the cluster itself (its node timeout is a second).
    f.cluster.pause(f.master);
    f.until_promoted().await;
    f.h.risk(f.tenant, "written once the replica took over").await;
    let written = Instant::now();
    f.h.drained(WAIT).await;
    eprintln!("the write was applied on the promoted replica {:?} after it", written.elapsed());
    // The test's own connection still points at the frozen master: a new one reads the cluster.
    f.h.redis = common::connect_redis(&f.h.namespace.url).await;
    assert!(!f.list_is_cached().await, "the write was not invalidated on the promoted replica");

    f.cluster.resume(f.master);
    assert!(running.shutdown(WAIT).await);
}
