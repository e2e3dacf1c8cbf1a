//! A Redis Cluster master failing over: an invalidation the invalidator acknowledged must be on
//! the replica that takes over (the master is cut off from its replica so the replica cannot
//! receive what the master applies); and a master down holds back only its own tenants. Each
//! test runs its own private cluster (it kills a master).

mod common;

use std::time::Duration;

use common::{Harness, until_batches_failed};
use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_shared::protocol::{self, Lookup};
use openrisk_test_support::{PrivateRedisCluster, RedisNamespace, TestDatabase, node_command};
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
    fn fail_over(&mut self) {
        self.cluster.kill(self.master);
        self.cluster.resume(self.replica);
        let taken = node_command(&self.cluster.node_url(self.replica), &["CLUSTER", "FAILOVER", "TAKEOVER"]);
        assert_eq!(taken.as_deref(), Some("OK"), "replica takes over");
        let replica = self.replica;
        let cluster = &self.cluster;
        let promoted = || {
            node_command(&cluster.node_url(replica), &["INFO", "replication"])
                .is_some_and(|info| info.contains("role:master"))
        };
        for _ in 0..200 {
            if promoted() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("replica {replica} was not promoted");
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

    f.fail_over();
    // The old master comes back empty and rejoins as the new master's replica; only then can
    // the re-applied invalidation be confirmed.
    f.cluster.restart(f.master);
    f.cluster.wait_until_healthy(3);
    f.h.drained(WAIT).await;
    assert!(!f.list_is_cached().await, "the invalidation survived the failover");
    assert!(running.shutdown(WAIT).await);
}

/// The broken variant the default guards against: acknowledging once the master applied it.
#[tokio::test]
async fn without_waiting_for_a_replica_a_failover_brings_an_invalidated_entry_back() {
    let mut f = Failover::new().await;
    let mut settings = f.h.settings();
    settings.invalidator.redis_replicas_ack = Some(0);
    let running = f.h.start(settings).await;
    f.cache_list().await;

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
    f.fail_over();
    assert!(f.list_is_cached().await, "the acknowledged invalidation was lost with the master");
    assert_eq!(f.h.outbox_len().await, 0, "and nothing is left to apply it again");
    assert!(running.shutdown(WAIT).await);
}

/// Batches of four: the tenant whose shard is down has more events than a batch holds, ahead of
/// the other's, so its first batch fails as a whole (the replica backs off and reconnects).
#[tokio::test]
async fn a_tenant_whose_shard_is_down_does_not_hold_back_the_tenants_of_the_other_shards() {
    only_the_tenant_whose_shard_is_down_is_held_back(4, 1).await;
}

/// One batch holds both tenants' events: it fails in part, is rolled back, and is claimed again
/// without the tenant whose shard is down, with no reconnection.
#[tokio::test]
async fn a_batch_that_fails_for_some_tenants_is_acknowledged_for_the_others() {
    only_the_tenant_whose_shard_is_down_is_held_back(100, 0).await;
}

/// A master down with no replica to take over while the other masters serve (the cluster does
/// not require every slot covered): what one shard looks like while it is down or failing over.
/// The invalidator claims `batch_size` events at a time and never polls, so only a write or a
/// hold's end makes it look at the outbox. Its Redis connection is replaced `reconnects` times:
/// once for a first batch that fails whole, never for one that fails in part, and never for a
/// retry of the held tenant that fails again.
async fn only_the_tenant_whose_shard_is_down_is_held_back(batch_size: u32, reconnects: u64) {
    let mut cluster = PrivateRedisCluster::start_with(3, 0);
    for port in cluster.master_ports() {
        let set = node_command(&cluster.node_url(port), &["CONFIG", "SET", "cluster-require-full-coverage", "no"]);
        assert_eq!(set.as_deref(), Some("OK"));
    }
    let mut h = Harness::with(TestDatabase::create().await, RedisNamespace::on(&cluster.url())).await;
    let master_of = |keyspace: &Keyspace, tenant| {
        cluster.master_of(&keyspace.version_key(tenant, &Tag::parse(common::RISK_LIST_TAG).unwrap()))
    };
    let down = h.tenant("down").await;
    let down_master = master_of(&h.keyspace, down);
    let mut up = h.tenant("up-0").await;
    for attempt in 1.. {
        if master_of(&h.keyspace, up) != down_master {
            break;
        }
        up = h.tenant(&format!("up-{attempt}")).await;
    }
    let mut settings = h.settings_without_polling();
    settings.invalidator.batch_size = batch_size;
    settings.invalidator.redis_replicas_ack = Some(0);
    let running = h.start(settings).await;
    h.drained(WAIT).await;
    let up_list = h.cache_risk_list(up).await;

    cluster.kill(down_master);
    // One transaction: the first claim sees every event, the down tenant's first.
    let risks = "INSERT INTO risks (tenant_id, title, impact, probability)
                 SELECT $1::uuid, 'risk ' || n, 3, 3 FROM generate_series(1, $2::int) n";
    let transaction = h.sql.transaction().await.unwrap();
    transaction.execute(risks, &[&down, &12_i32]).await.unwrap();
    transaction.execute(risks, &[&up, &1_i32]).await.unwrap();
    transaction.commit().await.unwrap();
    let left_of = async |h: &Harness, tenant: Uuid| -> i64 {
        let count = "SELECT count(*) FROM cache_outbox WHERE tenant_id = $1";
        h.sql.query_one(count, &[&tenant]).await.unwrap().get(0)
    };
    let written_while_down = left_of(&h, down).await;
    assert!(written_while_down >= 12);
    let deadline = std::time::Instant::now() + WAIT;
    while left_of(&h, up).await > 0 || h.risk_list_is_cached(up, &up_list).await {
        assert!(std::time::Instant::now() < deadline, "the other shard's tenant was held back with the one down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = left_of(&h, down).await;
    assert_eq!(left, written_while_down, "nothing is acknowledged for the tenant whose shard is down");
    assert_eq!(running.metrics.tenants_held_back.get(), 1);
    until_batches_failed(&running, "redis", 4, WAIT).await;
    let reconnected = running.metrics.reconnects.with_label_values(&["redis"]).get();
    assert_eq!(reconnected, reconnects, "Redis connections replaced while the held tenant's retries failed");

    cluster.restart(down_master);
    cluster.wait_until_healthy(0);
    h.drained(WAIT).await;
    let held = running.metrics.tenants_held_back.clone();
    common::eventually("no tenant held back once its shard is back", WAIT, || {
        let held = held.clone();
        async move { held.get() == 0 }
    })
    .await;
    assert!(running.shutdown(WAIT).await);
}
