//! The consistency protocol against a real Redis, including the stale-fill race (reader misses,
//! reads the old row, the write is invalidated, the reader fills) made deterministic by running
//! the steps in that order.

use openrisk_shared::db::Lsn;
use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_shared::protocol::{
    self, BackgroundReclaims, Entry, Fill, InvalidateError, Lookup, Reclaimable, ReplicaAck, Snapshot,
};
use openrisk_shared::redis_connection::RedisConnection;
use openrisk_test_support::{PrivateRedis, RedisNamespace};
use uuid::Uuid;

struct Fixture {
    namespace: RedisNamespace,
    keyspace: Keyspace,
    conn: RedisConnection,
    tenant: Uuid,
}

impl Fixture {
    async fn new() -> Self {
        Self::on(RedisNamespace::new()).await
    }

    async fn on(namespace: RedisNamespace) -> Self {
        let conn = namespace.connect().await;
        Self { keyspace: namespace.keyspace(), namespace, conn, tenant: Uuid::new_v4() }
    }

    /// A fixture in which risk 1's versions have the known replay floor `lsn`; with their tags.
    async fn with_risk_floor(lsn: u64) -> (Self, Vec<Tag>) {
        let mut f = Self::new().await;
        let deps = risk_one();
        f.stamp(&deps, lsn).await;
        (f, deps)
    }

    fn key(&self, resource: &str) -> String {
        self.keyspace.entry_key(self.tenant, 1, resource, &[])
    }

    /// Risk 1's detail: its key and its tags (`all`, `risk:1`).
    fn risk_one_detail(&self) -> (String, Vec<Tag>) {
        (self.key("risk"), risk_one())
    }

    async fn lookup(&mut self, key: &str, tags: &[Tag]) -> Lookup {
        protocol::lookup(&mut self.conn, &self.keyspace, self.tenant, key, tags).await.unwrap()
    }

    /// A miss's snapshot as the lookup returns it (versions it lacks not yet created).
    async fn partial_miss(&mut self, key: &str, tags: &[Tag]) -> Snapshot {
        match self.lookup(key, tags).await {
            Lookup::Miss(snapshot) => snapshot,
            hit => panic!("expected a miss, got {hit:?}"),
        }
    }

    /// A miss whose snapshot is completed, as the API does after its first read found the rows.
    async fn miss(&mut self, key: &str, tags: &[Tag]) -> Snapshot {
        let snapshot = self.partial_miss(key, tags).await;
        self.complete(&snapshot).await
    }

    async fn complete(&mut self, snapshot: &Snapshot) -> Snapshot {
        protocol::create_missing_versions(&mut self.conn, &self.keyspace, self.tenant, snapshot, 120).await.unwrap()
    }

    async fn fill(&mut self, key: &str, snapshot: &Snapshot, body: &str) -> bool {
        let entry =
            Fill { entry_key: key, body: body.as_bytes(), etag: "e1", ttl_secs: 60, dependencies_ttl_secs: 120 };
        protocol::fill(&mut self.conn, &self.keyspace, self.tenant, snapshot, entry).await.unwrap()
    }

    /// Risk 1's detail (under `all` and `risk:1`), missed and filled with `body`: its key, its
    /// tags and the snapshot it was filled under.
    async fn stored_risk(&mut self, body: &str) -> (String, Vec<Tag>, Snapshot) {
        let (key, deps) = self.risk_one_detail();
        let snapshot = self.miss(&key, &deps).await;
        assert!(self.fill(&key, &snapshot, body).await);
        (key, deps, snapshot)
    }

    /// Risk 1's detail missed (its snapshot completed), then its `risk:1` tag invalidated: what a
    /// reader holds when a write lands between its read and its fill. Its key, tags and snapshot.
    async fn snapshot_before_invalidation(&mut self) -> (String, Vec<Tag>, Snapshot) {
        let (key, deps) = self.risk_one_detail();
        let snapshot = self.miss(&key, &deps).await;
        self.invalidate(&tags(&["risk:1"])).await;
        (key, deps, snapshot)
    }

    /// Deletes one Redis key, as eviction or a lost write would.
    async fn delete(&mut self, key: &str) {
        let _: i64 = redis::cmd("DEL").arg(key).query_async(&mut self.conn).await.unwrap();
    }

    /// Milliseconds `key` has left to live.
    async fn pttl(&mut self, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query_async(&mut self.conn).await.unwrap()
    }

    async fn invalidate(&mut self, tags: &[Tag]) -> Reclaimable {
        protocol::invalidate(&mut self.conn, &self.keyspace, self.tenant, tags).await.unwrap()
    }

    async fn invalidate_replayed_by(&mut self, tags: &[Tag], lsn: u64) {
        let ack = ReplicaAck::MASTER_ONLY;
        protocol::invalidate_replicated(&mut self.conn, &self.keyspace, self.tenant, tags, ack, Some(Lsn(lsn)))
            .await
            .unwrap();
    }

    /// The replay floor a miss under `deps` finds now (`None`: unknown).
    async fn floor(&mut self, deps: &[Tag]) -> Option<Lsn> {
        let key = self.key("floor-probe");
        let snapshot = self.miss(&key, deps).await;
        protocol::replay_floor(&mut self.conn, &self.keyspace, self.tenant, &snapshot).await.unwrap().required()
    }

    /// Takes a snapshot under `deps` and records `lsn` for its unknown floors, as a miss does
    /// after asking the primary.
    async fn stamp(&mut self, deps: &[Tag], lsn: u64) {
        let key = self.key("floor-probe");
        let snapshot = self.miss(&key, deps).await;
        self.stamp_snapshot(&snapshot, lsn).await;
    }

    async fn stamp_snapshot(&mut self, snapshot: &Snapshot, lsn: u64) {
        let found = protocol::replay_floor(&mut self.conn, &self.keyspace, self.tenant, snapshot).await.unwrap();
        protocol::stamp_replay_floor(&mut self.conn, &self.keyspace, self.tenant, snapshot, &found, Lsn(lsn))
            .await
            .unwrap();
    }

    async fn reclaim(&mut self, reclaimable: &Reclaimable) -> u64 {
        protocol::reclaim(&mut self.conn, reclaimable).await.unwrap()
    }

    async fn is_hit(&mut self, key: &str, tags: &[Tag]) -> bool {
        matches!(self.lookup(key, tags).await, Lookup::Hit(_))
    }
}

fn tags(list: &[&str]) -> Vec<Tag> {
    list.iter().map(|tag| Tag::parse(tag).unwrap()).collect()
}

/// The tags of risk 1's detail.
fn risk_one() -> Vec<Tag> {
    tags(&["all", "risk:1"])
}

fn hit(body: &str) -> Lookup {
    Lookup::Hit(Entry { body: bytes::Bytes::copy_from_slice(body.as_bytes()), etag: "e1".into() })
}

#[tokio::test]
async fn a_fill_is_served_until_its_tag_is_invalidated() {
    let mut f = Fixture::new().await;
    let (key, deps, _) = f.stored_risk("v1").await;
    assert_eq!(f.lookup(&key, &deps).await, hit("v1"));

    // Another tag leaves it alone; its own tag makes it unreadable at once, and reclaiming
    // then unlinks it.
    f.invalidate(&tags(&["risk:2"])).await;
    assert!(f.is_hit(&key, &deps).await);
    let moved = f.invalidate(&tags(&["risk:1"])).await;
    assert!(!f.is_hit(&key, &deps).await);
    assert_eq!(f.reclaim(&moved).await, 1);
    assert!(!f.namespace.keys().contains(&key), "the entry was unlinked");
}

#[tokio::test]
async fn the_stale_fill_race_cannot_store_the_old_value() {
    let mut f = Fixture::new().await;
    // 1. the reader misses and records versions, 2. reads the old row from Postgres, 3. the
    // write commits and the invalidator processes it,
    let (key, deps, snapshot) = f.snapshot_before_invalidation().await;
    // 4. the reader tries to store the old row: refused.
    assert!(!f.fill(&key, &snapshot, "old").await, "a fill that straddles an invalidation is rejected");
    assert!(!f.is_hit(&key, &deps).await);
    // The next reader reads the new row and may store it, without creating anything: the
    // invalidation left a version in place.
    let fresh = f.partial_miss(&key, &deps).await;
    assert!(fresh.is_complete());
    assert!(f.fill(&key, &fresh, "new").await);
    assert_eq!(f.lookup(&key, &deps).await, hit("new"));
}

#[tokio::test]
async fn a_lookup_writes_nothing_so_invented_ids_leave_no_keys() {
    let mut f = Fixture::new().await;
    for _ in 0..50 {
        let id = Uuid::new_v4();
        let key = f.keyspace.entry_key(f.tenant, 1, "risk", &[("id", id.to_string())]);
        let found = f.lookup(&key, &tags(&["all", &format!("risk:{id}")])).await;
        assert!(matches!(found, Lookup::Miss(snapshot) if !snapshot.is_complete()));
    }
    assert_eq!(f.namespace.keys(), Vec::<String>::new(), "a miss on an unknown id creates no state");
}

#[tokio::test]
async fn a_snapshot_that_lacked_a_version_never_protects_a_fill() {
    let mut f = Fixture::new().await;
    let (key, deps) = f.risk_one_detail();
    let partial = f.partial_miss(&key, &deps).await;
    // An invalidation now finds no version to replace, so nothing records it; the fill of a
    // read made under the partial snapshot must therefore be refused by construction.
    f.invalidate(&deps).await;
    assert!(!f.fill(&key, &partial, "read before the versions existed").await);
    assert!(f.namespace.keys().is_empty(), "the refused fill wrote nothing");
    // Completed (after which the API reads again), it fills.
    let completed = f.complete(&partial).await;
    assert!(f.fill(&key, &completed, "read after").await);
    assert_eq!(f.lookup(&key, &deps).await, hit("read after"));
}

#[tokio::test]
async fn completing_a_snapshot_keeps_versions_other_readers_created() {
    let mut f = Fixture::new().await;
    let (key, deps) = f.risk_one_detail();
    let first = f.partial_miss(&key, &deps).await;
    let second = f.partial_miss(&key, &deps).await;
    let first = f.complete(&first).await;
    let second = f.complete(&second).await;
    assert_eq!(first, second, "the second reader adopts the versions the first created");
    assert!(f.fill(&key, &first, "x").await);
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
        assert!(!f.is_hit(key, &tags(&["all", "risks"])).await);
    }
}

#[tokio::test]
async fn an_entry_whose_member_set_was_lost_is_still_never_served_stale() {
    let mut f = Fixture::new().await;
    let (key, deps, _) = f.stored_risk("v1").await;
    // Simulate eviction of the member set: invalidation can no longer find the entry...
    f.delete(&f.keyspace.members_key(f.tenant, &deps[1])).await;
    let moved = f.invalidate(&tags(&["risk:1"])).await;
    assert_eq!(f.reclaim(&moved).await, 0);
    // ...but the hit compares versions and refuses the entry.
    assert!(!f.is_hit(&key, &deps).await);
}

#[tokio::test]
async fn an_evicted_or_expired_version_acts_as_an_invalidation() {
    let mut f = Fixture::new().await;
    let (key, deps, snapshot) = f.stored_risk("v1").await;
    f.delete(&f.keyspace.version_key(f.tenant, &deps[1])).await;
    assert!(!f.is_hit(&key, &deps).await, "an absent version matches no entry");
    assert!(!f.fill(&key, &snapshot, "old").await, "nor any snapshot");
}

/// Redis full with nothing it may evict answers the hit's reads and refuses the invalidation
/// script's `SET` (`OOM`): the versions are deleted instead, on both the API's and the
/// invalidator's path, so no entry built under them is hit while Redis stays full.
#[tokio::test]
async fn an_invalidation_refused_for_memory_deletes_the_versions() {
    let redis = PrivateRedis::start();
    let mut f = Fixture::on(RedisNamespace::on(&redis.url())).await;
    let (detail, detail_tags, _) = f.stored_risk("v1").await;
    let (list, list_tags) = (f.key("risks"), tags(&["all", "risks"]));
    let snapshot = f.miss(&list, &list_tags).await;
    assert!(f.fill(&list, &snapshot, "page").await);
    for (setting, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        let _: () = redis::cmd("CONFIG").arg("SET").arg(setting).arg(value).query_async(&mut f.conn).await.unwrap();
    }
    let refused: redis::RedisResult<()> = redis::cmd("SET").arg("probe").arg(1).query_async(&mut f.conn).await;
    assert_eq!(refused.unwrap_err().code(), Some("OOM"), "Redis is full");
    assert!(f.is_hit(&detail, &detail_tags).await, "a full Redis still answers hits");

    f.invalidate(&tags(&["risk:1"])).await;
    assert!(!f.is_hit(&detail, &detail_tags).await, "the API's invalidation took effect");
    protocol::invalidate_replicated(
        &mut f.conn,
        &f.keyspace,
        f.tenant,
        &tags(&["risks"]),
        ReplicaAck::MASTER_ONLY,
        None,
    )
    .await
    .expect("the invalidator's invalidation is done");
    assert!(!f.is_hit(&list, &list_tags).await, "the invalidator's invalidation took effect");
}

#[tokio::test]
async fn a_fill_straddling_a_redis_restart_or_flush_is_rejected() {
    let mut redis = PrivateRedis::start();
    let mut f = Fixture::on(RedisNamespace::on(&redis.url())).await;
    let (key, deps) = f.risk_one_detail();

    // FLUSHALL between the reader's snapshot and its fill: versions are gone, the fill fails.
    let snapshot = f.miss(&key, &deps).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut f.conn).await.unwrap();
    assert!(!f.fill(&key, &snapshot, "old").await);

    // A restart (everything lost) between snapshot and fill; a new reader has since recreated
    // the versions with fresh random tokens, which the old snapshot cannot match.
    let snapshot = f.miss(&key, &deps).await;
    redis.restart();
    f.conn = RedisNamespace::on(&redis.url()).connect().await;
    let _ = f.miss(&key, &deps).await;
    assert!(!f.fill(&key, &snapshot, "old").await);
}

#[tokio::test]
async fn invalidating_a_tag_with_thousands_of_entries_makes_all_unreadable_in_one_call() {
    let mut f = Fixture::new().await;
    let deps = tags(&["all", "risks"]);
    let keys: Vec<String> =
        (0..2000).map(|page| f.keyspace.entry_key(f.tenant, 1, "risks", &[("page", page.to_string())])).collect();
    let snapshot = f.miss(&keys[0], &deps).await;
    for key in &keys {
        assert!(f.fill(key, &snapshot, "page").await);
    }
    let moved = f.invalidate(&tags(&["risks"])).await;
    // Before any entry is unlinked, none of them can be hit any more.
    for key in keys.iter().step_by(97) {
        assert!(f.namespace.keys().contains(key), "not yet reclaimed");
        assert!(!f.is_hit(key, &deps).await);
    }
    // Entries filled after the invalidation register in a new member set and survive reclaim,
    // a page read again under its old key among them.
    let later = f.keyspace.entry_key(f.tenant, 1, "risks", &[("page", "2000".into())]);
    let Lookup::Miss(fresh) = f.lookup(&later, &deps).await else { panic!("expected a miss") };
    assert!(f.fill(&later, &fresh, "new page").await);
    assert!(f.fill(&keys[0], &fresh, "page 0 again").await);
    assert_eq!(f.reclaim(&moved).await, 1999, "every old entry but the one filled again is unlinked");
    assert_eq!(f.lookup(&later, &deps).await, hit("new page"));
    assert_eq!(f.lookup(&keys[0], &deps).await, hit("page 0 again"));
}

#[tokio::test]
async fn reclaims_beyond_those_running_at_once_are_not_started_and_a_finished_one_frees_its_slot() {
    let redis = PrivateRedis::start();
    let mut f = Fixture::on(RedisNamespace::on(&redis.url())).await;
    let (key, _, _) = f.stored_risk("v1").await;
    let moved = f.invalidate(&tags(&["risk:1"])).await;
    let reclaims = BackgroundReclaims::new(1);

    // Redis takes no write for a while, so the first reclaim holds the only slot.
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("WRITE").query_async(&mut f.conn).await.unwrap();
    let (first_done, first_unlinked) = tokio::sync::oneshot::channel();
    let send_first = move |outcome: redis::RedisResult<u64>| first_done.send(outcome.unwrap()).unwrap();
    assert!(reclaims.start(f.conn.clone(), moved.clone(), send_first));
    assert!(!reclaims.start(f.conn.clone(), moved.clone(), |_| panic!("started beyond the limit")));
    assert_eq!(first_unlinked.await.unwrap(), 1, "the running one unlinks the entry once Redis writes again");
    assert!(!f.namespace.keys().contains(&key));

    let (again_done, again_unlinked) = tokio::sync::oneshot::channel();
    let send_again = move |outcome: redis::RedisResult<u64>| again_done.send(outcome.unwrap()).unwrap();
    assert!(reclaims.start(f.conn.clone(), moved, send_again), "its slot is free again");
    assert_eq!(again_unlinked.await.unwrap(), 0);
}

#[tokio::test]
async fn every_key_the_protocol_writes_expires() {
    let mut f = Fixture::new().await;
    let key = f.key("risk");
    let deps = tags(&["all", "risk:1", "risks"]);
    let snapshot = f.miss(&key, &deps).await;
    assert!(f.fill(&key, &snapshot, "v1").await);
    f.invalidate(&tags(&["risk:1"])).await;
    let keys = f.namespace.keys();
    assert!(keys.len() >= 5, "entry, three versions, member sets: {keys:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut f.conn).await.unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
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
    assert!(matches!(seen, Lookup::Miss(_)));
    // Invalidating the other tenant's tag leaves this tenant's entry in place.
    protocol::invalidate(&mut f.conn, &f.keyspace, other, &tags(&["risks"])).await.unwrap();
    assert!(f.is_hit(&key, &tags(&["all", "risks"])).await);
}

#[tokio::test]
async fn a_replay_floor_is_unknown_until_a_reader_records_the_primary_position() {
    let mut f = Fixture::new().await;
    let deps = risk_one();
    assert_eq!(f.floor(&deps).await, None, "fresh versions have no floor");
    f.stamp(&deps, 0x500).await;
    assert_eq!(f.floor(&deps).await, Some(Lsn(0x500)));
    f.stamp(&deps, 0x900).await;
    assert_eq!(f.floor(&deps).await, Some(Lsn(0x500)), "a known floor is kept, not raised by readers");
}

#[tokio::test]
async fn an_invalidation_raises_a_known_floor_and_never_lowers_it() {
    let (mut f, deps) = Fixture::with_risk_floor(0x1_0000_0500).await;
    f.invalidate_replayed_by(&tags(&["risk:1"]), 0x1_0000_0700).await;
    assert_eq!(f.floor(&deps).await, Some(Lsn(0x1_0000_0700)));
    // An invalidation that read its position earlier but ran later (another invalidator).
    f.invalidate_replayed_by(&tags(&["risk:1"]), 0x0_ffff_ffff).await;
    assert_eq!(f.floor(&deps).await, Some(Lsn(0x1_0000_0700)), "the floor stays at the later position");
    f.invalidate_replayed_by(&tags(&["risk:1"]), 0x2_0000_0000).await;
    assert_eq!(f.floor(&deps).await, Some(Lsn(0x2_0000_0000)), "compared as 64-bit positions");
}

#[tokio::test]
async fn an_invalidation_without_a_position_or_of_a_version_without_a_floor_leaves_it_unknown() {
    let (mut f, deps) = Fixture::with_risk_floor(0x500).await;
    f.invalidate(&tags(&["risk:1"])).await;
    assert_eq!(f.floor(&deps).await, None, "the API's own invalidation records no position");
    // The invalidator's position alone may be older than a write another invalidation already
    // covered, so a version without a floor does not get one from it.
    f.invalidate_replayed_by(&tags(&["risk:1"]), 0x900).await;
    assert_eq!(f.floor(&deps).await, None);
}

#[tokio::test]
async fn a_lost_floor_or_version_makes_the_floor_unknown_never_lower() {
    let (mut f, deps) = Fixture::with_risk_floor(0x500).await;
    f.invalidate_replayed_by(&tags(&["risk:1"]), 0x700).await;
    f.delete(&f.keyspace.replay_floor_key(f.tenant, &deps[1])).await;
    assert_eq!(f.floor(&deps).await, None, "a lost floor");
    f.stamp(&deps, 0x900).await;
    f.delete(&f.keyspace.version_key(f.tenant, &deps[1])).await;
    assert_eq!(f.floor(&deps).await, None, "the floor of a lost version names a token no version has");
}

#[tokio::test]
async fn a_reader_cannot_record_a_floor_for_a_version_replaced_since_its_snapshot() {
    let mut f = Fixture::new().await;
    let (_, deps, snapshot) = f.snapshot_before_invalidation().await;
    f.stamp_snapshot(&snapshot, 0x100).await;
    assert_eq!(f.floor(&deps).await, None, "the stamp named the replaced version");
}

#[tokio::test]
async fn floors_expire_with_their_versions() {
    let (mut f, deps) = Fixture::with_risk_floor(0x500).await;
    f.invalidate_replayed_by(&tags(&["risk:1"]), 0x700).await;
    for tag in &deps {
        let ttl = f.pttl(&f.keyspace.replay_floor_key(f.tenant, tag)).await;
        let version_ttl = f.pttl(&f.keyspace.version_key(f.tenant, tag)).await;
        assert!(ttl > 0 && ttl <= version_ttl + 1000, "{tag}: floor {ttl} ms, version {version_ttl} ms");
    }
}

#[tokio::test]
async fn an_invalidation_that_no_replica_confirms_is_applied_but_reported_and_its_script_loads_where_missing() {
    let redis = PrivateRedis::start();
    let mut f = Fixture::on(RedisNamespace::on(&redis.url())).await;
    let (key, deps, _) = f.stored_risk("old").await;

    // A node that never ran the script (a new master, a restarted one): the pipelined EVALSHA
    // gets NOSCRIPT and the source is sent instead.
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut f.conn).await.unwrap();
    let ack = ReplicaAck { replicas: 1, timeout: std::time::Duration::from_millis(50) };
    let outcome = protocol::invalidate_replicated(&mut f.conn, &f.keyspace, f.tenant, &deps[1..], ack, None).await;
    assert!(
        matches!(outcome, Err(InvalidateError::NotReplicated { acked: 0, required: 1, .. })),
        "a node without replicas cannot confirm: {outcome:?}"
    );
    assert!(!f.is_hit(&key, &deps).await, "the master applied it all the same");

    let outcome =
        protocol::invalidate_replicated(&mut f.conn, &f.keyspace, f.tenant, &deps[1..], ReplicaAck::MASTER_ONLY, None)
            .await;
    assert!(outcome.is_ok(), "without a replica required it is done: {outcome:?}");
}
