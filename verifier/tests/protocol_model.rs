//! Model-based property test of the cache protocol (MGET lookup, version creation, Lua fill,
//! invalidation, reclaim) against a real (private) Redis: random interleavings of several
//! readers (lookup → read the "database" → create missing versions and read again → fill),
//! writes, invalidations, reclaims, FLUSHALL and evictions of any key. The cache must never
//! return a value older than the last invalidated version of any tag the value depends on, and
//! once every write is invalidated, every hit equals the database. A reader that skips the
//! second read (fills what it read before its versions existed) is caught.

use std::sync::atomic::{AtomicU64, Ordering};

use openrisk_shared::keys::{Keyspace, Tag};
use openrisk_shared::protocol::{self, Fill, Lookup, Reclaimable, Snapshot};
use openrisk_test_support::PrivateRedis;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use redis::aio::MultiplexedConnection;
use uuid::Uuid;

/// Tags of the model; index 0 is the tenant-wide `all`.
const TAGS: [&str; 4] = ["all", "risk:1", "risk:2", "risks"];
/// Cached responses and the tags (indexes into `TAGS`) each is built from.
const KEYS: [(&str, &[usize]); 3] = [("risk1", &[0, 1]), ("risk2", &[0, 2]), ("list", &[0, 1, 2, 3])];
const READERS: usize = 3;

/// Over all cases: hits served and fills refused (the test must reach both to mean anything).
static HITS: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
enum Op {
    /// Advance reader r (when idle, it starts a read of key k).
    Step(usize, usize),
    /// A write to the database touching tag t commits (not yet invalidated).
    Write(usize),
    /// The invalidator applies tag t.
    Invalidate(usize),
    /// The member sets moved aside by earlier invalidations are reclaimed.
    Reclaim,
    Flush,
    /// Eviction (any policy) or expiry of a member set, an entry or a version.
    EvictMembers(usize),
    EvictEntry(usize),
    EvictVersion(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..READERS, 0..KEYS.len()).prop_map(|(r, k)| Op::Step(r, k)),
        2 => (0..TAGS.len()).prop_map(Op::Write),
        2 => (0..TAGS.len()).prop_map(Op::Invalidate),
        1 => Just(Op::Reclaim),
        1 => Just(Op::Flush),
        1 => (1..TAGS.len()).prop_map(Op::EvictMembers),
        1 => (0..KEYS.len()).prop_map(Op::EvictEntry),
        1 => (0..TAGS.len()).prop_map(Op::EvictVersion),
    ]
}

#[derive(Debug, Clone)]
enum Reader {
    Idle,
    LookedUp {
        key: usize,
        snapshot: Snapshot,
    },
    /// Read the database under a snapshot that lacked versions: must create them and read again.
    ReadTooEarly {
        key: usize,
        snapshot: Snapshot,
        values: Vec<u64>,
    },
    /// Created the missing versions; the next step reads the database again.
    Completed {
        key: usize,
        snapshot: Snapshot,
        early: Vec<u64>,
    },
    Read {
        key: usize,
        snapshot: Snapshot,
        values: Vec<u64>,
    },
}

/// How the reader behaves: as the API does, or deliberately broken to show the test can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Correct,
    /// Fills the values it read before its versions existed, skipping the second read.
    FillsTheFirstRead,
}

fn tags_of(key: usize) -> Vec<Tag> {
    KEYS[key].1.iter().map(|&t| Tag::parse(TAGS[t]).unwrap()).collect()
}

fn encode(values: &[u64]) -> Vec<u8> {
    values.iter().map(u64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

fn decode(body: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(body).split(',').map(|v| v.parse().expect("model body")).collect()
}

struct Model {
    conn: MultiplexedConnection,
    keyspace: Keyspace,
    tenant: Uuid,
    /// Writes committed per tag (the database).
    written: [u64; TAGS.len()],
    /// `written` as of the last invalidation of each tag.
    invalidated: [u64; TAGS.len()],
    readers: Vec<Reader>,
    reclaimable: Reclaimable,
    variant: Variant,
}

impl Model {
    fn read_database(&self, key: usize) -> Vec<u64> {
        KEYS[key].1.iter().map(|&t| self.written[t]).collect()
    }

    fn entry_key(&self, key: usize) -> String {
        self.keyspace.entry_key(self.tenant, 1, KEYS[key].0, &[])
    }

    async fn lookup_checked(&mut self, key: usize) -> Result<Option<Snapshot>, TestCaseError> {
        let entry_key = self.entry_key(key);
        let found =
            protocol::lookup(&mut self.conn, &self.keyspace, self.tenant, &entry_key, &tags_of(key)).await.unwrap();
        match found {
            Lookup::Hit(entry) => {
                HITS.fetch_add(1, Ordering::Relaxed);
                let values = decode(&entry.body);
                for (position, &tag) in KEYS[key].1.iter().enumerate() {
                    prop_assert!(
                        values[position] >= self.invalidated[tag],
                        "{} served {} of tag {} but write {} of it was already invalidated",
                        KEYS[key].0,
                        values[position],
                        TAGS[tag],
                        self.invalidated[tag]
                    );
                }
                Ok(None)
            }
            Lookup::Miss(snapshot) => Ok(Some(snapshot)),
        }
    }

    async fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let base = self.keyspace.tenant_base(self.tenant);
        match op.clone() {
            Op::Step(r, k) => match std::mem::replace(&mut self.readers[r], Reader::Idle) {
                Reader::Idle => {
                    if let Some(snapshot) = self.lookup_checked(k).await? {
                        self.readers[r] = Reader::LookedUp { key: k, snapshot };
                    }
                }
                Reader::LookedUp { key, snapshot } => {
                    let values = self.read_database(key);
                    self.readers[r] = if snapshot.is_complete() {
                        Reader::Read { key, snapshot, values }
                    } else {
                        Reader::ReadTooEarly { key, snapshot, values }
                    };
                }
                Reader::ReadTooEarly { key, snapshot, values } => {
                    let snapshot =
                        protocol::create_missing_versions(&mut self.conn, &self.keyspace, self.tenant, &snapshot, 700)
                            .await
                            .unwrap();
                    self.readers[r] = Reader::Completed { key, snapshot, early: values };
                }
                Reader::Completed { key, snapshot, early } => {
                    let values = match self.variant {
                        Variant::Correct => self.read_database(key),
                        Variant::FillsTheFirstRead => early,
                    };
                    self.readers[r] = Reader::Read { key, snapshot, values };
                }
                Reader::Read { key, snapshot, values } => {
                    let entry_key = self.entry_key(key);
                    let body = encode(&values);
                    let fill = Fill {
                        entry_key: &entry_key,
                        body: &body,
                        etag: "e",
                        ttl_secs: 600,
                        dependencies_ttl_secs: 700,
                    };
                    if !protocol::fill(&mut self.conn, &self.keyspace, self.tenant, &snapshot, fill).await.unwrap() {
                        REFUSED.fetch_add(1, Ordering::Relaxed);
                    }
                }
            },
            Op::Write(t) => self.written[t] += 1,
            Op::Invalidate(t) => {
                let moved =
                    protocol::invalidate(&mut self.conn, &self.keyspace, self.tenant, &[Tag::parse(TAGS[t]).unwrap()])
                        .await
                        .unwrap();
                self.reclaimable.extend(moved);
                self.invalidated[t] = self.written[t];
            }
            Op::Reclaim => {
                let reclaimable = std::mem::take(&mut self.reclaimable);
                protocol::reclaim(&mut self.conn, &reclaimable).await.unwrap();
            }
            Op::Flush => {
                let _: () = redis::cmd("FLUSHALL").query_async(&mut self.conn).await.unwrap();
            }
            Op::EvictMembers(t) => {
                let _: () =
                    redis::cmd("DEL").arg(format!("{base}m:{}", TAGS[t])).query_async(&mut self.conn).await.unwrap();
            }
            Op::EvictEntry(k) => {
                let _: () = redis::cmd("DEL").arg(self.entry_key(k)).query_async(&mut self.conn).await.unwrap();
            }
            Op::EvictVersion(t) => {
                let _: () =
                    redis::cmd("DEL").arg(format!("{base}v:{}", TAGS[t])).query_async(&mut self.conn).await.unwrap();
            }
        }
        Ok(())
    }
}

async fn run_case(url: &str, ops: Vec<Op>, variant: Variant) -> Result<(), TestCaseError> {
    let client = redis::Client::open(url).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut model = Model {
        conn,
        keyspace: Keyspace::new("pm"),
        tenant: Uuid::new_v4(),
        written: [0; TAGS.len()],
        invalidated: [0; TAGS.len()],
        readers: vec![Reader::Idle; READERS],
        reclaimable: Reclaimable::default(),
        variant,
    };
    for op in &ops {
        model.apply(op).await?;
    }
    // Let every reader finish, then invalidate every tag: no lasting staleness.
    for r in 0..READERS {
        for _ in 0..4 {
            model.apply(&Op::Step(r, 0)).await?;
        }
    }
    for t in 0..TAGS.len() {
        model.apply(&Op::Invalidate(t)).await?;
    }
    for (k, (name, tags)) in KEYS.iter().enumerate() {
        let entry_key = model.entry_key(k);
        if let Lookup::Hit(entry) =
            protocol::lookup(&mut model.conn, &model.keyspace, model.tenant, &entry_key, &tags_of(k)).await.unwrap()
        {
            let current: Vec<u64> = tags.iter().map(|&t| model.written[t]).collect();
            prop_assert_eq!(decode(&entry.body), current, "{} after every write was invalidated", name);
        }
    }
    Ok(())
}

#[test]
fn the_cache_never_serves_a_value_older_than_the_last_invalidation() {
    // A Redis of its own (the cases FLUSHALL it), stopped when the test ends.
    let server = PrivateRedis::start();
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut runner = TestRunner::new(ProptestConfig::with_cases(400));
    let result =
        runner.run(&prop::collection::vec(op(), 1..80), |ops| runtime.block_on(run_case(&url, ops, Variant::Correct)));
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let (hits, refused) = (HITS.load(Ordering::Relaxed), REFUSED.load(Ordering::Relaxed));
    assert!(hits > 100 && refused > 50, "the interleavings reached too few hits ({hits}) or refused fills ({refused})");
}

/// The classic race (miss, read old, write + invalidate, fill), as a fixed sequence the property
/// test's interleavings include.
fn classic_race() -> Vec<Op> {
    vec![
        Op::Step(0, 0),    // reader 0 misses key risk1 (no versions yet)
        Op::Step(0, 0),    // reads the database too early (risk:1 = 0)
        Op::Step(0, 0),    // creates the versions
        Op::Step(0, 0),    // reads again (risk:1 = 0)
        Op::Write(1),      // a write to risk:1 commits
        Op::Invalidate(1), // and is invalidated
        Op::Step(0, 0),    // the reader fills with the old value: must be refused
        Op::Step(1, 0),    // another reader must not hit the old value
    ]
}

/// The same race with the write landing before the versions exist: the invalidation finds no
/// version to replace, so only the second read keeps the old value out.
fn race_before_the_versions_exist() -> Vec<Op> {
    vec![
        Op::Step(0, 0),    // reader 0 misses key risk1 (no versions yet)
        Op::Step(0, 0),    // reads the database (risk:1 = 0)
        Op::Write(1),      // a write to risk:1 commits
        Op::Invalidate(1), // and is invalidated: nothing to replace
        Op::Step(0, 0),    // the reader creates the versions
        Op::Step(0, 0),    // reads again (correct) or keeps its first read (broken)
        Op::Step(0, 0),    // fills
        Op::Step(1, 0),    // another reader must not hit the old value
    ]
}

#[test]
fn the_classic_races_are_among_the_interleavings_and_hold() {
    let server = PrivateRedis::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for ops in [classic_race(), race_before_the_versions_exist()] {
        runtime.block_on(run_case(&server.url(), ops, Variant::Correct)).unwrap();
    }
}

/// The test can fail: a reader that fills what it read before its versions existed serves an
/// invalidated value, and both the fixed sequence and the random search find it.
#[test]
fn a_reader_that_skips_the_second_read_is_caught() {
    let server = PrivateRedis::start();
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let fixed = runtime.block_on(run_case(&url, race_before_the_versions_exist(), Variant::FillsTheFirstRead));
    assert!(fixed.is_err(), "the broken reader must be caught on the fixed sequence");
    let mut runner = TestRunner::new(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(400) });
    let found = runner.run(&prop::collection::vec(op(), 1..80), |ops| {
        runtime.block_on(run_case(&url, ops, Variant::FillsTheFirstRead))
    });
    assert!(found.is_err(), "the random interleavings must find the broken reader too");
}
