//! A Redis Cluster master failing over: an invalidation the invalidator acknowledged must be on
//! the replica that takes over. Each test runs its own private cluster (it kills a master), cut
//! off from its replica so the replica cannot receive what the master applies.

mod common;

use std::time::Duration;

use common::{Harness, until_batches_failed};
use openrisk_shared::keys::Tag;
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
