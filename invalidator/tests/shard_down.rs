//! A Redis Cluster shard down or frozen holds back only its own tenants: the other masters'
//! tenants are invalidated meanwhile, the down master's once it is back; a cluster down as a
//! whole is reported and caught up with once it is back. Each test runs its own private cluster
//! (it kills or freezes a master).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Harness, until_batches_failed};
use openrisk_invalidator::Running;
use openrisk_shared::Settings;
use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_test_support::{PrivateRedisCluster, RedisNamespace, TestDatabase, node_command};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// A cluster of three masters and no replicas that serves while one is down (it does not require
/// every slot covered): what one shard looks like while it is down or failing over. One tenant
/// lives on the master the test takes down, the other on another master.
struct TwoShards {
    cluster: PrivateRedisCluster,
    h: Harness,
    down: Uuid,
    down_master: u16,
    up: Uuid,
}

impl TwoShards {
    async fn new() -> Self {
        let cluster = PrivateRedisCluster::start_with(3, 0);
        for port in cluster.master_ports() {
            let set = node_command(&cluster.node_url(port), &["CONFIG", "SET", "cluster-require-full-coverage", "no"]);
            assert_eq!(set.as_deref(), Some("OK"));
        }
        let h = Harness::with(TestDatabase::create().await, RedisNamespace::on(&cluster.url())).await;
        let master_of = |keyspace: &Keyspace, tenant| {
            cluster.master_of(&keyspace.version_key(tenant, &Tag::parse(common::RISK_LIST_TAG).unwrap()))
        };
        let down = h.tenant("down").await;
        let down_master = master_of(&h.keyspace, down);
        let up = h.tenant_where("up", |up| master_of(&h.keyspace, up) != down_master).await;
        Self { cluster, h, down, down_master, up }
    }

    /// The shards with an invalidator replica running ([`Self::settings`]) that has caught up and
    /// whose cluster watch has looked (it tells the replica which master serves which tenant).
    async fn running(batch_size: u32) -> (Self, Running) {
        let s = Self::new().await;
        let settings = s.settings(batch_size);
        s.start(settings).await
    }

    /// The shards with an invalidator replica running on `settings`, caught up and looked.
    async fn start(self, settings: Settings) -> (Self, Running) {
        let running = self.h.start(settings).await;
        self.h.drained(WAIT).await;
        let addr = running.metrics_addr;
        common::eventually("the cluster watch's first look", WAIT, || async move {
            common::http_get(addr, "/readyz").await.1.contains("\"known_nodes\"")
        })
        .await;
        (self, running)
    }

    /// Claims of `batch_size` events, no wait for Redis replicas (there are none), no poll (only
    /// a write or a probe that clears a tenant makes the replica look at the outbox), and a
    /// Redis reply timeout of [`REDIS_TIMEOUT`].
    fn settings(&self, batch_size: u32) -> Settings {
        let mut settings = self.h.settings_without_polling();
        settings.invalidator.batch_size = batch_size;
        settings.invalidator.redis_replicas_ack = Some(0);
        settings.invalidator.redis_timeout_ms = REDIS_TIMEOUT.as_millis() as u64;
        settings
    }

    /// Writes `risks` risks for each tenant, in this order, in one transaction.
    async fn write_one_transaction(&mut self, risks: &[(Uuid, i32)]) {
        let insert = "INSERT INTO risks (tenant_id, title, impact, probability)
                      SELECT $1::uuid, 'risk ' || n, 3, 3 FROM generate_series(1, $2::int) n";
        let transaction = self.h.sql.transaction().await.unwrap();
        for (tenant, risks) in risks {
            transaction.execute(insert, &[tenant, risks]).await.unwrap();
        }
        transaction.commit().await.unwrap();
    }

    /// Events of `tenant` still in the outbox.
    async fn left_of(&self, tenant: Uuid) -> i64 {
        let count = "SELECT count(*) FROM cache_outbox_pending WHERE tenant_id = $1";
        self.h.sql.query_one(count, &[&tenant]).await.unwrap().get(0)
    }

    /// A new tenant whose slot is served by the master of `masters` that serves neither `down`
    /// nor `up`.
    async fn tenant_of_the_third_master(&self, masters: &[u16]) -> Uuid {
        let taken = [self.down_master, self.master_of(self.up)];
        let third = *masters.iter().find(|master| !taken.contains(master)).expect("a third master");
        self.h.tenant_where("third", |tenant| self.master_of(tenant) == third).await
    }

    fn master_of(&self, tenant: Uuid) -> u16 {
        self.cluster.master_of(&self.h.keyspace.version_key(tenant, &Tag::parse(common::RISK_LIST_TAG).unwrap()))
    }

    /// Waits until the replica holds `tenants` tenants back.
    async fn until_held(&self, running: &Running, tenants: i64, what: &str) {
        let held = running.metrics.tenants_held_back.clone();
        common::eventually(what, WAIT, || {
            let held = held.clone();
            async move { held.get() == tenants }
        })
        .await;
    }
}

/// Batches of four: the tenant whose shard is down has more events than a batch holds, ahead of
/// the other's, so its first batch fails as a whole.
#[tokio::test]
async fn a_tenant_whose_shard_is_down_does_not_hold_back_the_tenants_of_the_other_shards() {
    only_the_tenant_whose_shard_is_down_is_held_back(4).await;
}

/// One batch holds both tenants' events: it fails in part, is rolled back, and is claimed again
/// without the tenant whose shard is down.
#[tokio::test]
async fn a_batch_that_fails_for_some_tenants_is_acknowledged_for_the_others() {
    only_the_tenant_whose_shard_is_down_is_held_back(100).await;
}

/// A master killed while the other masters serve. The cluster connection is never replaced: not
/// for a batch that fails whole, nor for one that fails in part, nor for the held tenant's probes,
/// which fail again until the master is back.
async fn only_the_tenant_whose_shard_is_down_is_held_back(batch_size: u32) {
    let (mut s, running) = TwoShards::running(batch_size).await;
    let up_list = s.h.cache_risk_list(s.up).await;

    s.cluster.kill(s.down_master);
    // One transaction: the first claim sees every event, the down tenant's first.
    s.write_one_transaction(&[(s.down, 12), (s.up, 1)]).await;
    let written_while_down = s.left_of(s.down).await;
    assert!(written_while_down >= 12);
    let deadline = Instant::now() + WAIT;
    while s.left_of(s.up).await > 0 || s.h.risk_list_is_cached(s.up, &up_list).await {
        assert!(Instant::now() < deadline, "the other shard's tenant was held back with the one down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = s.left_of(s.down).await;
    assert_eq!(left, written_while_down, "nothing is acknowledged for the tenant whose shard is down");
    assert_eq!(running.metrics.tenants_held_back.get(), 1);
    until_batches_failed(&running, "redis", 4, WAIT).await;
    let reconnected = running.metrics.reconnects.with_label_values(&["redis"]).get();
    assert_eq!(reconnected, 0, "Redis connections replaced while one master was down");

    s.cluster.restart(s.down_master);
    s.cluster.wait_until_healthy(0);
    s.h.drained(WAIT).await;
    s.until_held(&running, 0, "no tenant held back once its shard is back").await;
    assert!(running.shutdown(WAIT).await);
}

/// A replica that starts while a master is down: the cluster watch cannot hear every master, yet
/// learns from one node which master serves which slot, so the down master's tenant failing is
/// not Redis lost (it is without that: one tenant and one master were all the replica knew).
#[tokio::test]
async fn a_replica_started_while_a_master_is_down_still_tells_the_masters_apart() {
    let mut s = TwoShards::new().await;
    s.cluster.kill(s.down_master);
    let running = s.h.start(s.settings(100)).await;
    // The watch's first look, which fails, then reads one node's CLUSTER NODES.
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.write_one_transaction(&[(s.down, 1)]).await;
    let held = running.metrics.tenants_held_back.clone();
    // Every tenant of the down master is held (those TwoShards made and passed over too).
    common::eventually("the down master's tenants held", WAIT, || {
        let held = held.get();
        async move { held > 0 }
    })
    .await;
    let connected = running.status.redis_connected.load(Ordering::Relaxed);
    assert!(connected, "one master down reported as Redis lost");
    let list = s.h.cache_risk_list(s.up).await;
    s.h.risk(s.up, "written while the other master is down").await;
    let deadline = Instant::now() + WAIT;
    while s.left_of(s.up).await > 0 || s.h.risk_list_is_cached(s.up, &list).await {
        assert!(Instant::now() < deadline, "the other master's tenant was not invalidated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(running.shutdown(WAIT).await);
}

/// Every master killed at once, with a tenant of each writing: the replica, which keeps its
/// cluster connection, says Redis is lost (`/readyz` and the `connected` gauge: every master's
/// last call failed) and holds every tenant; once the masters are back
/// (empty), the connection finds them again by itself, every event is applied and the replica
/// says so.
#[tokio::test]
async fn a_cluster_down_as_a_whole_is_reported_and_caught_up_with_once_it_is_back() {
    let (mut s, running) = TwoShards::running(100).await;

    let masters = s.cluster.master_ports();
    let third = s.tenant_of_the_third_master(&masters).await;
    // The new tenants' own events applied first: one still in the outbox would be held too.
    s.h.drained(WAIT).await;
    for &port in &masters {
        s.cluster.kill(port);
    }
    s.write_one_transaction(&[(s.down, 1), (s.up, 1), (third, 1)]).await;
    s.until_held(&running, 3, "every tenant held").await;
    let status = running.status.clone();
    common::eventually("Redis reported lost", WAIT, || {
        let lost = !status.redis_connected.load(Ordering::Relaxed);
        async move { lost }
    })
    .await;

    for &port in &masters {
        s.cluster.restart(port);
    }
    s.cluster.wait_until_healthy(0);
    s.h.drained(WAIT).await;
    s.until_held(&running, 0, "no tenant held back once its shard is back").await;
    assert!(running.status.redis_connected.load(Ordering::Relaxed), "Redis still reported lost");
    assert_eq!(running.metrics.reconnects.with_label_values(&["redis"]).get(), 0);
    // The test's own connection lost every node too: a new one finds them.
    s.h.redis = common::connect_redis(&s.h.namespace.url).await;
    for tenant in [s.down, s.up] {
        s.h.assert_a_new_risk_invalidates_the_risk_list(tenant, "written after the outage", WAIT).await;
    }
    assert!(running.shutdown(WAIT).await);
}

/// A master that stops answering without closing its connections, as a host cut off from the
/// network does: the batch that first names its tenant waits out the Redis response timeout
/// (there is no telling a slow master from a gone one sooner); from then on the tenant is only
/// probed, each probe waiting out the timeout on a task of its own, and no other tenant's
/// invalidation waits for one. That first batch names that tenant alone and fails whole, which
/// must not replace the cluster connection: a new one would wait on the frozen master too.
#[tokio::test]
async fn a_master_that_stops_answering_delays_the_other_tenants_invalidations_once_only() {
    let (mut s, running) = TwoShards::running(100).await;

    s.cluster.pause(s.down_master);
    s.write_one_transaction(&[(s.down, 1)]).await;
    let written_while_frozen = s.left_of(s.down).await;
    s.until_held(&running, 1, "the tenant held back once its batch timed out").await;
    let connected = running.status.redis_connected.load(Ordering::Relaxed);
    assert!(connected, "one master frozen reported as Redis lost");
    let (mut slowest, until) = (Duration::ZERO, Instant::now() + PROBED_FOR);
    while Instant::now() < until {
        let written = Instant::now();
        s.h.risk(s.up, "written while the other master is frozen").await;
        while s.left_of(s.up).await > 0 {
            assert!(written.elapsed() < WAIT, "the other tenant's event was never applied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slowest = slowest.max(written.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(slowest < WAITED_FOR_THE_FROZEN_MASTER, "an invalidation of the other tenant waited {slowest:?}");
    assert_eq!(
        s.left_of(s.down).await,
        written_while_frozen,
        "nothing is acknowledged for the tenant whose master is frozen"
    );

    s.cluster.resume(s.down_master);
    s.h.drained(WAIT).await;
    s.until_held(&running, 0, "no tenant held back once its shard is back").await;
    assert!(running.shutdown(WAIT).await);
}

/// The invalidator's Redis reply timeout in the tests of [`TwoShards`]: long enough that waiting
/// for a frozen master stands out from an invalidation's milliseconds.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the other tenant writes while the held one is probed: longer than a probe of a frozen
/// master takes to fail ([`REDIS_TIMEOUT`], at most twice over).
const PROBED_FOR: Duration = Duration::from_secs(12);

/// Half of [`REDIS_TIMEOUT`]: an invalidation that took this long waited for the frozen master
/// (one that did not takes milliseconds).
const WAITED_FOR_THE_FROZEN_MASTER: Duration = Duration::from_millis(2500);

/// `invalidator.redis_timeout_ms` bounds what a frozen master costs the other tenants: the batch
/// that first names its tenant waits for its call there to time out, twice (the client sends it
/// again once). With 200 ms, and no replica to wait for (so the 2 s replica-ack timeout must not
/// count), the other tenant's event, written in the same transaction, is applied after about
/// 400 ms: well under the [`REDIS_TIMEOUT`] this setting replaced, or the 4.4 s the unused
/// replica wait would add.
#[tokio::test]
async fn a_frozen_master_delays_the_other_tenants_invalidations_by_the_redis_timeout_alone() {
    let s = TwoShards::new().await;
    let mut settings = s.settings(100);
    settings.invalidator.redis_timeout_ms = 200;
    settings.invalidator.redis_replicas_ack_timeout_ms = 2000;
    let (mut s, running) = s.start(settings).await;

    s.cluster.pause(s.down_master);
    let written = Instant::now();
    s.write_one_transaction(&[(s.down, 1), (s.up, 1)]).await;
    while s.left_of(s.up).await > 0 {
        assert!(written.elapsed() < WAIT, "the other tenant's event was never applied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delayed = written.elapsed();
    eprintln!("the other tenant's event was applied {delayed:?} after the write");
    assert!(delayed < WAITED_FOR_THE_FROZEN_MASTER, "the other tenant's invalidation waited {delayed:?}");
    s.until_held(&running, 1, "the frozen master's tenant held back").await;

    s.cluster.resume(s.down_master);
    s.h.drained(WAIT).await;
    assert!(running.shutdown(WAIT).await);
}
