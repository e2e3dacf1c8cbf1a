//! The consistency protocol's scripts against a real Redis, including the stale-fill race
//! (reader misses, reads the old row, the write is invalidated, the reader fills) made
//! deterministic by running the steps in that order.

use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_shared::protocol::{self, Fill, Lookup, Snapshot};
use openrisk_test_support::{PrivateRedis, RedisNamespace};
use redis::aio::MultiplexedConnection;
use uuid::Uuid;

struct Fixture {
    namespace: RedisNamespace,
    keyspace: Keyspace,
    conn: MultiplexedConnection,
    tenant: Uuid,
}

impl Fixture {
    async fn new() -> Self {
        Self::on(RedisNamespace::new()).await
    }

    async fn on(namespace: RedisNamespace) -> Self {
        let client = redis::Client::open(namespace.url.as_str()).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        let keyspace = Keyspace::new(namespace.prefix.clone());
        Self { namespace, keyspace, conn, tenant: Uuid::new_v4() }
    }

    fn key(&self, resource: &str) -> String {
        self.keyspace.entry_key(self.tenant, 1, resource, &[])
    }

    async fn lookup(&mut self, key: &str, tags: &[Tag]) -> Lookup {
        protocol::lookup(&mut self.conn, &self.keyspace, self.tenant, key, tags).await.unwrap()
    }

    async fn miss(&mut self, key: &str, tags: &[Tag]) -> Snapshot {
        match self.lookup(key, tags).await {
            Lookup::Miss { snapshot } => snapshot,
            hit => panic!("expected a miss, got {hit:?}"),
        }
    }

    async fn fill(&mut self, key: &str, snapshot: &Snapshot, body: &str) -> bool {
        let entry = Fill { entry_key: key, body: body.as_bytes(), etag: "e1", ttl_secs: 60, members_ttl_secs: 120 };
        protocol::fill(&mut self.conn, &self.keyspace, self.tenant, snapshot, entry).await.unwrap()
    }

    async fn invalidate(&mut self, tags: &[Tag]) -> u64 {
        protocol::invalidate(&mut self.conn, &self.keyspace, self.tenant, tags).await.unwrap()
    }
}

fn tags(list: &[&str]) -> Vec<Tag> {
    list.iter().map(|tag| Tag::parse(tag).unwrap()).collect()
}

#[tokio::test]
async fn a_fill_is_served_until_its_tag_is_invalidated() {
    let mut f = Fixture::new().await;
    let key = f.key("risk");
    let deps = tags(&["all", "risk:1"]);
    let snapshot = f.miss(&key, &deps).await;
    assert!(f.fill(&key, &snapshot, "v1").await);
    assert_eq!(f.lookup(&key, &deps).await, Lookup::Hit { body: b"v1".to_vec(), etag: "e1".into() });

    // Another tag leaves it alone; its own tag removes it eagerly.
    assert_eq!(f.invalidate(&tags(&["risk:2"])).await, 0);
    assert!(matches!(f.lookup(&key, &deps).await, Lookup::Hit { .. }));
    assert_eq!(f.invalidate(&tags(&["risk:1"])).await, 1);
    assert!(matches!(f.lookup(&key, &deps).await, Lookup::Miss { .. }));
    assert!(!f.namespace.keys().contains(&key), "the entry was unlinked");
}

#[tokio::test]
async fn the_stale_fill_race_cannot_store_the_old_value() {
    let mut f = Fixture::new().await;
    let key = f.key("risk");
    let deps = tags(&["all", "risk:1"]);
    // 1. the reader misses and records versions, 2. reads the old row from Postgres,
    let snapshot = f.miss(&key, &deps).await;
    // 3. the write commits and the invalidator processes it,
    f.invalidate(&tags(&["risk:1"])).await;
    // 4. the reader tries to store the old row: refused.
    assert!(!f.fill(&key, &snapshot, "old").await, "a fill that straddles an invalidation is rejected");
    assert!(matches!(f.lookup(&key, &deps).await, Lookup::Miss { .. }));
    // The next reader reads the new row and may store it.
    let fresh = f.miss(&key, &deps).await;
    assert!(f.fill(&key, &fresh, "new").await);
    assert!(matches!(f.lookup(&key, &deps).await, Lookup::Hit { body, .. } if body == b"new"));
}

#[tokio::test]
async fn the_tenant_wide_tag_invalidates_every_entry() {
    let mut f = Fixture::new().await;
    let (a, b) = (f.key("a"), f.key("b"));
    for key in [&a, &b] {
        let snapshot = f.miss(key, &tags(&["all", "risks"])).await;
        assert!(f.fill(key, &snapshot, "x").await);
    }
    f.invalidate(&tags(&["all"])).await;
    for key in [&a, &b] {
        assert!(matches!(f.lookup(key, &tags(&["all", "risks"])).await, Lookup::Miss { .. }));
    }
}

#[tokio::test]
async fn an_entry_whose_member_set_was_lost_is_still_never_served_stale() {
    let mut f = Fixture::new().await;
    let key = f.key("risk");
    let deps = tags(&["all", "risk:1"]);
    let snapshot = f.miss(&key, &deps).await;
    assert!(f.fill(&key, &snapshot, "v1").await);
    // Simulate eviction of the member set: invalidation can no longer find the entry...
    let members = f.keyspace.members_key(f.tenant, &deps[1]);
    let _: i64 = redis::cmd("DEL").arg(&members).query_async(&mut f.conn).await.unwrap();
    assert_eq!(f.invalidate(&tags(&["risk:1"])).await, 0);
    // ...but the hit re-checks versions and refuses (and drops) the entry.
    assert!(matches!(f.lookup(&key, &deps).await, Lookup::Miss { .. }));
    assert!(!f.namespace.keys().contains(&key));
}

#[tokio::test]
async fn a_fill_straddling_a_redis_restart_or_flush_is_rejected() {
    let mut redis = PrivateRedis::start();
    let mut f = Fixture::on(RedisNamespace::on(&redis.url())).await;
    let key = f.key("risk");
    let deps = tags(&["all", "risk:1"]);

    // FLUSHALL between the reader's snapshot and its fill: versions are gone, the fill fails.
    let snapshot = f.miss(&key, &deps).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut f.conn).await.unwrap();
    assert!(!f.fill(&key, &snapshot, "old").await);

    // A restart (everything lost) between snapshot and fill; a new reader has since recreated
    // the versions with fresh random tokens, which the old snapshot cannot match.
    let snapshot = f.miss(&key, &deps).await;
    redis.restart();
    let client = redis::Client::open(redis.url()).unwrap();
    f.conn = client.get_multiplexed_async_connection().await.unwrap();
    let _ = f.miss(&key, &deps).await;
    assert!(!f.fill(&key, &snapshot, "old").await);
}

#[tokio::test]
async fn tags_discovered_after_the_first_read_join_the_snapshot() {
    let mut f = Fixture::new().await;
    let key = f.key("risk");
    let mut snapshot = f.miss(&key, &tags(&["all", "risk:1"])).await;
    protocol::extend_snapshot(&mut f.conn, &f.keyspace, f.tenant, &mut snapshot, &tags(&["asset:9", "risk:1"]))
        .await
        .unwrap();
    assert_eq!(snapshot.tags().count(), 3, "risk:1 is not recorded twice");
    f.invalidate(&tags(&["asset:9"])).await;
    assert!(!f.fill(&key, &snapshot, "old").await, "the discovered tag protects the fill too");
}

#[tokio::test]
async fn tenants_never_share_keys() {
    let mut f = Fixture::new().await;
    let key = f.key("risks");
    let snapshot = f.miss(&key, &tags(&["all", "risks"])).await;
    assert!(f.fill(&key, &snapshot, "tenant a").await);
    let other = Uuid::new_v4();
    let other_key = f.keyspace.entry_key(other, 1, "risks", &[]);
    assert_ne!(key, other_key);
    let seen = protocol::lookup(&mut f.conn, &f.keyspace, other, &other_key, &tags(&["all", "risks"])).await.unwrap();
    assert!(matches!(seen, Lookup::Miss { .. }));
    // Invalidating the other tenant's tag leaves this tenant's entry in place.
    protocol::invalidate(&mut f.conn, &f.keyspace, other, &tags(&["risks"])).await.unwrap();
    assert!(matches!(f.lookup(&key, &tags(&["all", "risks"])).await, Lookup::Hit { .. }));
}
