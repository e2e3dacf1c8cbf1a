//! A tenant's slot migrating from one master to another while its entries are served: Redis
//! refuses a script whose keys are not all on one node (`TRYAGAIN`), and the invalidation script
//! names a key that never exists, so it is refused for the whole migration while lookups whose
//! keys have not moved are still answered. An invalidation must still make every entry of its
//! tags unreadable. And a master that knows none of the scripts (one just promoted or restarted)
//! must run them while another master hangs. A private cluster of its own (3 masters with a
//! replica each).

use std::time::Duration;

use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_shared::protocol::{self, Fill, Lookup, ReplicaAck};
use openrisk_shared::redis_connection::{RedisConnection, RedisTarget, Timeouts};
use openrisk_test_support::{PrivateRedisCluster, RedisNamespace, node_command};
use uuid::Uuid;

/// One tenant's risk detail cached on a private cluster.
struct Cached {
    cluster: PrivateRedisCluster,
    _namespace: RedisNamespace,
    keyspace: Keyspace,
    conn: RedisConnection,
    tenant: Uuid,
    key: String,
    tags: Vec<Tag>,
}

impl Cached {
    async fn new() -> Self {
        let cluster = PrivateRedisCluster::start();
        let namespace = RedisNamespace::on(&cluster.url());
        let target = RedisTarget::parse(&cluster.url()).unwrap();
        let mut conn = target.connect(INVALIDATOR_TIMEOUTS).await.unwrap();
        let (keyspace, tenant) = (namespace.keyspace(), Uuid::new_v4());
        let key = keyspace.entry_key(tenant, 1, "risk", &[]);
        let tags: Vec<Tag> = ["all", "risk:1"].iter().map(|tag| Tag::parse(tag).unwrap()).collect();
        let Lookup::Miss(snapshot) = protocol::lookup(&mut conn, &keyspace, tenant, &key, &tags).await.unwrap() else {
            panic!("a new tenant's entry is a miss");
        };
        let snapshot = protocol::create_missing_versions(&mut conn, &keyspace, tenant, &snapshot, 120).await.unwrap();
        let entry = Fill { entry_key: &key, body: b"v1", etag: "e1", ttl_secs: 60, dependencies_ttl_secs: 120 };
        assert!(protocol::fill(&mut conn, &keyspace, tenant, &snapshot, entry).await.unwrap());
        let cached = Self { cluster, _namespace: namespace, keyspace, conn, tenant, key, tags };
        cached.cluster.wait_until_replicated(cached.cluster.master_of(&cached.key));
        cached
    }

    /// Moves `key` alone from `source` to `target`, as a migration does key by key.
    fn migrate(&self, key: &str, source: u16, target: u16) {
        let port = target.to_string();
        let moved = node_command(&self.cluster.node_url(source), &["MIGRATE", "127.0.0.1", &port, key, "0", "5000"]);
        assert_eq!(moved.as_deref(), Some("OK"), "MIGRATE {key}");
    }

    /// Whether the entry is served; a lookup that fails is no answer and fails the test.
    async fn is_hit(&mut self) -> bool {
        let lookup = protocol::lookup(&mut self.conn, &self.keyspace, self.tenant, &self.key, &self.tags).await;
        matches!(lookup.expect("the lookup is answered"), Lookup::Hit(_))
    }

    async fn invalidate(&mut self, tag: &str, ack: ReplicaAck) -> Result<(), protocol::InvalidateError> {
        let tags = [Tag::parse(tag).unwrap()];
        protocol::invalidate_replicated(&mut self.conn, &self.keyspace, self.tenant, &tags, ack, None).await.map(drop)
    }
}

/// The invalidator's timeouts by default when no replica must confirm: a refusal the client
/// sends again must reach the caller within them (it waited 1.28 s before each of 3 retries).
const INVALIDATOR_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    response: Duration::from_secs(1),
    overall: Duration::from_secs(2),
    refusal_retry: Timeouts::REFUSAL_RETRY,
};

/// What the invalidator waits for on a cluster: one replica.
const ONE_REPLICA: ReplicaAck = ReplicaAck { replicas: 1, timeout: Duration::from_secs(2) };

/// The third master, whose replica is cut off, holds none of the tenant's keys: the versions'
/// replacements are confirmed by the replicas of the masters that hold them, not of every master.
#[tokio::test]
async fn an_invalidation_while_the_tenants_slot_migrates_leaves_no_entry_readable() {
    let mut c = Cached::new().await;
    assert!(c.is_hit().await);
    let mut bystander = None;
    c.cluster.start_migrating(&c.key, |others| {
        bystander = Some(others[1]);
        others[0]
    });
    let bystander = bystander.expect("a third master");
    c.cluster.cut_off_replica(c.cluster.replicas_of(bystander)[0], bystander);
    assert!(c.is_hit().await, "the migration alone changes nothing a lookup sees");

    c.invalidate("risk:1", ONE_REPLICA).await.expect("the invalidation goes through during the migration");
    assert!(!c.is_hit().await, "the entry is still served after its tag was invalidated");
}

#[tokio::test]
async fn an_invalidation_reaches_a_version_already_moved_to_the_importing_master() {
    let mut c = Cached::new().await;
    let migration = c.cluster.start_migrating(&c.key, |others| others[0]);
    // Everything the lookup reads moved, so the importing master serves it.
    for key in
        [c.key.clone(), c.keyspace.version_key(c.tenant, &c.tags[0]), c.keyspace.version_key(c.tenant, &c.tags[1])]
    {
        c.migrate(&key, migration.source, migration.target);
    }
    assert!(c.is_hit().await, "the moved entry is served by the importing master");

    c.invalidate("all", ONE_REPLICA).await.expect("the invalidation and its WAIT follow the moved version");
    assert!(!c.is_hit().await, "the moved entry is still served after its tag was invalidated");
}

/// How many `WAIT`s the node on `port` has run since it started.
fn waits_run(c: &Cached, port: u16) -> u64 {
    let stats = node_command(&c.cluster.node_url(port), &["INFO", "commandstats"]).unwrap_or_default();
    let line = stats.lines().find(|line| line.starts_with("cmdstat_wait:")).unwrap_or("cmdstat_wait:calls=0,");
    line["cmdstat_wait:calls=".len()..].split(',').next().and_then(|calls| calls.parse().ok()).unwrap_or(0)
}

/// With the tenant's own replica cut off, the versions replaced one by one during a migration
/// are not confirmed: the call says so, and waits once, not once per tag (its share of the
/// master's connection holds up every other tenant's invalidation there meanwhile). The refused
/// script's own attempts send their `WAIT`s too, as many for one tag as for four.
#[tokio::test]
async fn an_unconfirmed_invalidation_during_a_migration_waits_once_for_all_its_tags() {
    let mut c = Cached::new().await;
    let migration = c.cluster.start_migrating(&c.key, |others| others[0]);
    c.cluster.cut_off_replica(c.cluster.replicas_of(migration.source)[0], migration.source);
    let short = ReplicaAck { replicas: 1, timeout: Duration::from_millis(200) };
    let mut waits_for = async |tags: &[&str]| {
        let tags: Vec<Tag> = tags.iter().map(|tag| Tag::parse(tag).unwrap()).collect();
        let before = waits_run(&c, migration.source);
        let outcome = protocol::invalidate_replicated(&mut c.conn, &c.keyspace, c.tenant, &tags, short, None).await;
        assert!(matches!(outcome, Err(protocol::InvalidateError::NotReplicated { .. })), "{outcome:?}");
        waits_run(&c, migration.source) - before
    };

    let one_tag = waits_for(&["risk:1"]).await;
    let four_tags = waits_for(&["all", "risk:1", "risk:2", "risk:3"]).await;
    assert_eq!(four_tags, one_tag, "WAITs for four tags against one");
    assert!(!c.is_hit().await, "the master applied it all the same");
}

/// Scripts are not replicated, so a master just promoted knows none of them; loading one must go
/// to that master alone, not to every master (a `SCRIPT LOAD` the cluster client sends to all,
/// which waited for the one that hangs and failed).
#[tokio::test]
async fn a_master_that_knows_no_script_runs_them_while_another_master_hangs() {
    let mut c = Cached::new().await;
    let master = c.cluster.master_of(&c.key);
    let other = c.cluster.master_ports().into_iter().find(|&port| port != master).expect("another master");
    assert_eq!(node_command(&c.cluster.node_url(master), &["SCRIPT", "FLUSH"]).as_deref(), Some("OK"));
    c.cluster.pause(other);

    c.invalidate("risk:1", ReplicaAck::MASTER_ONLY).await.expect("the invalidation script runs by its source");
    assert!(!c.is_hit().await, "the entry is still served after its tag was invalidated");
    let Lookup::Miss(snapshot) = protocol::lookup(&mut c.conn, &c.keyspace, c.tenant, &c.key, &c.tags).await.unwrap()
    else {
        panic!("an invalidated entry is a miss");
    };
    let entry = Fill { entry_key: &c.key, body: b"v2", etag: "e2", ttl_secs: 60, dependencies_ttl_secs: 120 };
    let stored = protocol::fill(&mut c.conn, &c.keyspace, c.tenant, &snapshot, entry).await;
    c.cluster.resume(other);
    assert!(stored.expect("the fill script runs"), "the fill under current versions is stored");
    assert!(c.is_hit().await);
}
