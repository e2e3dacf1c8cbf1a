//! A rolling upgrade runs the previous protocol (entries as hashes under `e:`, a Lua lookup that
//! creates versions, an invalidation that deletes them) beside this one, on the same Redis. The
//! two never read each other's entries (the entry format is part of the key), and each one's
//! invalidation must still make the other's entries unreadable and refuse its in-flight fills,
//! in both directions. The previous protocol's scripts are kept in `previous_protocol/`, exactly
//! as released, as the fixture that stands for the old processes.

use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_shared::protocol::{self, Fill, Lookup};
use openrisk_shared::redis_connection::RedisConnection;
use openrisk_test_support::RedisNamespace;
use redis::Script;
use uuid::Uuid;

/// The previous lookup: returns the entry when every stored version is current, otherwise
/// creates the missing versions and returns them.
const OLD_LOOKUP: &str = include_str!("previous_protocol/lookup.lua");

/// The previous fill.
const OLD_FILL: &str = include_str!("previous_protocol/fill.lua");

/// The previous invalidation.
const OLD_INVALIDATE: &str = include_str!("previous_protocol/invalidate.lua");

/// What the previous lookup answered: a hit's body, or the versions to fill under.
enum OldLookup {
    Hit,
    Miss(Vec<(String, String)>),
}

/// Processes of both releases on one Redis namespace, serving one tenant: `new_*` runs this
/// protocol, `old_*` the previous one.
struct Fleet {
    _namespace: RedisNamespace,
    conn: RedisConnection,
    keyspace: Keyspace,
    tenant: Uuid,
}

impl Fleet {
    async fn new() -> Self {
        let namespace = RedisNamespace::new();
        let conn = namespace.connect().await;
        Self { keyspace: namespace.keyspace(), _namespace: namespace, conn, tenant: Uuid::new_v4() }
    }

    fn new_key(&self) -> String {
        self.keyspace.entry_key(self.tenant, 1, "risk", &[])
    }

    async fn new_lookup(&mut self, key: &str, tags: &[Tag]) -> Lookup {
        protocol::lookup(&mut self.conn, &self.keyspace, self.tenant, key, tags).await.unwrap()
    }

    /// A miss in this protocol, its snapshot completed, ready to fill.
    async fn new_miss(&mut self, key: &str, tags: &[Tag]) -> protocol::Snapshot {
        let Lookup::Miss(snapshot) = self.new_lookup(key, tags).await else { panic!("expected a miss") };
        protocol::create_missing_versions(&mut self.conn, &self.keyspace, self.tenant, &snapshot, 120).await.unwrap()
    }

    async fn new_fill(&mut self, key: &str, snapshot: &protocol::Snapshot, body: &str) -> bool {
        let fill = Fill { entry_key: key, body: body.as_bytes(), etag: "e", ttl_secs: 60, dependencies_ttl_secs: 120 };
        protocol::fill(&mut self.conn, &self.keyspace, self.tenant, snapshot, fill).await.unwrap()
    }

    /// The previous entry key: `e:<schema>:…` instead of this format's.
    fn old_entry_key(&self, resource: &str) -> String {
        format!("{}e:1:{resource}:0", self.keyspace.tenant_base(self.tenant))
    }

    async fn old_lookup(&mut self, key: &str, tags: &[&str]) -> OldLookup {
        let script = Script::new(OLD_LOOKUP);
        let mut call = script.key(key);
        call.arg(self.keyspace.tenant_base(self.tenant)).arg(Uuid::new_v4().simple().to_string());
        for tag in tags {
            call.arg(*tag);
        }
        let reply: Vec<Vec<u8>> = call.invoke_async(&mut self.conn).await.unwrap();
        if reply[0] == b"hit" {
            return OldLookup::Hit;
        }
        let tokens = reply[1..].iter().map(|token| String::from_utf8(token.clone()).unwrap());
        OldLookup::Miss(tags.iter().map(|tag| (*tag).to_owned()).zip(tokens).collect())
    }

    async fn old_fill(&mut self, key: &str, versions: &[(String, String)], body: &str) -> bool {
        let script = Script::new(OLD_FILL);
        let mut call = script.key(key);
        call.arg(self.keyspace.tenant_base(self.tenant)).arg(body).arg("etag").arg(60).arg(120);
        for (tag, token) in versions {
            call.arg(tag).arg(token);
        }
        let stored: i64 = call.invoke_async(&mut self.conn).await.unwrap();
        stored == 1
    }

    async fn old_invalidate(&mut self, tags: &[&str]) {
        let script = Script::new(OLD_INVALIDATE);
        let mut call = script.prepare_invoke();
        call.arg(self.keyspace.tenant_base(self.tenant));
        for tag in tags {
            call.arg(*tag);
        }
        let _: i64 = call.invoke_async(&mut self.conn).await.unwrap();
    }
}

fn tags(list: &[&str]) -> Vec<Tag> {
    list.iter().map(|tag| Tag::parse(tag).unwrap()).collect()
}

#[tokio::test]
async fn a_new_invalidator_makes_entries_of_old_apis_unreadable_and_refuses_their_fills() {
    let mut fleet = Fleet::new().await;
    let deps = ["all", "risk:1"];
    let stored = fleet.old_entry_key("stored");
    let in_flight = fleet.old_entry_key("in-flight");
    let OldLookup::Miss(versions) = fleet.old_lookup(&stored, &deps).await else { panic!() };
    assert!(fleet.old_fill(&stored, &versions, "old row").await);
    let OldLookup::Miss(pending) = fleet.old_lookup(&in_flight, &deps).await else { panic!() };

    let moved = protocol::invalidate(&mut fleet.conn, &fleet.keyspace, fleet.tenant, &tags(&["risk:1"])).await.unwrap();

    assert!(matches!(fleet.old_lookup(&stored, &deps).await, OldLookup::Miss(_)));
    assert!(!fleet.old_fill(&in_flight, &pending, "old row").await);
    assert_eq!(protocol::reclaim(&mut fleet.conn, &moved).await.unwrap(), 0, "the old lookup already unlinked it");
}

#[tokio::test]
async fn an_old_invalidator_makes_new_entries_unreadable_and_refuses_new_fills() {
    let mut fleet = Fleet::new().await;
    let deps = tags(&["all", "risk:1"]);
    let stored = fleet.new_key();
    let in_flight = fleet.keyspace.entry_key(fleet.tenant, 1, "risk", &[("id", "2".into())]);
    let snapshot = fleet.new_miss(&stored, &deps).await;
    assert!(fleet.new_fill(&stored, &snapshot, "old row").await);
    let pending = fleet.new_miss(&in_flight, &deps).await;

    fleet.old_invalidate(&["risk:1"]).await;

    assert!(matches!(fleet.new_lookup(&stored, &deps).await, Lookup::Miss(_)));
    assert!(!fleet.new_fill(&in_flight, &pending, "old row").await);
}

#[tokio::test]
async fn the_two_formats_never_read_each_others_entries() {
    let mut fleet = Fleet::new().await;
    let deps = tags(&["all", "risk:1"]);
    let key = fleet.new_key();
    let old_key = fleet.old_entry_key("risk");
    assert_ne!(key, old_key);
    let snapshot = fleet.new_miss(&key, &deps).await;
    assert!(fleet.new_fill(&key, &snapshot, "new").await);
    let OldLookup::Miss(versions) = fleet.old_lookup(&old_key, &["all", "risk:1"]).await else {
        panic!("the old process finds no entry of its own")
    };
    assert_eq!(versions.len(), 2);
    assert!(fleet.old_fill(&old_key, &versions, "old").await);
    assert!(matches!(fleet.old_lookup(&old_key, &["all", "risk:1"]).await, OldLookup::Hit));
    // Versions the old lookup would create already exist: both processes share them.
    assert!(matches!(fleet.new_lookup(&key, &deps).await, Lookup::Hit(_)), "sharing the versions keeps hits");
}

#[tokio::test]
async fn an_old_invalidator_leaves_the_new_versions_replay_floor_unknown() {
    let mut fleet = Fleet::new().await;
    let deps = tags(&["all", "risk:1"]);
    let key = fleet.new_key();
    let snapshot = fleet.new_miss(&key, &deps).await;
    let found = protocol::replay_floor(&mut fleet.conn, &fleet.keyspace, fleet.tenant, &snapshot).await.unwrap();
    let primary = openrisk_shared::db::Lsn(0x500);
    protocol::stamp_replay_floor(&mut fleet.conn, &fleet.keyspace, fleet.tenant, &snapshot, &found, primary)
        .await
        .unwrap();

    fleet.old_invalidate(&["risk:1"]).await;

    let after = fleet.new_miss(&key, &deps).await;
    let found = protocol::replay_floor(&mut fleet.conn, &fleet.keyspace, fleet.tenant, &after).await.unwrap();
    assert_eq!(found.required(), None, "a version the old process wrote has no floor, so misses ask the primary");
}
